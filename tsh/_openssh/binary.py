"""Hand over to OpenSSH: a usable profile, the binary, and exec.

`tsh ssh` and `tsh scp` end here. Before ssh runs, the profile must be usable:
logged in, the certificate still valid (or renewed through a caller-supplied
relogin, which needs a terminal), and for `-k only` profiles the key back in
the agent. Then OpenSSH runs on the user's terminal, with this process only
waiting for it (to show the hop's messages last). No Python is in the data
path unless the profile needs it: when the user's agent does not hold the
profile's certificate, a recording proxy could not use the forwarded agent, so
the ProxyCommand becomes `tsh proxy ssh` (see proxy_via).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from .._agent.probe import agent_holds_certificate
from .._core.profile import Profile
from .._exceptions import NotLoggedInError, UsageError
from .._store.store import ProfileStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .argv import SSHRequest

__all__ = ["find_binary", "plan_scp", "plan_ssh", "proxy_via", "run_explained", "usable_profile"]


def usable_profile(
    store: ProfileStore,
    proxy: str | None,
    relogin: Callable[[Profile], Profile] | None = None,
) -> Profile:
    """The profile for ``proxy`` (or the current one), ready for OpenSSH.

    An expired certificate is renewed with ``relogin`` when given. A `-k only`
    profile's key must be in the agent (put back from the keyring if need be):
    without it, OpenSSH has nothing to log in with.

    Raises:
        NotLoggedInError: no profile, an expired one and no ``relogin``, or
            a `-k only` key that is neither in the agent nor in the keyring.
    """
    profile = store.select(proxy)
    if profile.valid_before <= time.time():
        if relogin is None:
            raise NotLoggedInError(
                f"the certificate for {profile.name} has expired", profile.web_proxy_addr
            )
        profile = relogin(profile)
    if profile.key_storage == "agent":
        from .._agent.agent import ensure_agent_key

        problem = ensure_agent_key(profile, store)
        if problem:
            raise NotLoggedInError(problem)
    return profile


def find_binary(name: str) -> str:
    """Absolute path of the OpenSSH program ``name``.

    Raises:
        UsageError: it is not on PATH.
    """
    import shutil

    path = shutil.which(name)
    if path is None:
        raise UsageError(f"cannot find OpenSSH's `{name}` on PATH; install the OpenSSH client")
    return path


def proxy_via(profile: Profile, store: ProfileStore) -> tuple[str, ...]:
    """How OpenSSH should reach the proxy for ``profile``.

    ``()``: a plain OpenSSH ProxyCommand, forwarding the user's agent (it holds
    the certificate). Otherwise the command that runs tsh, for a `tsh proxy ssh`
    ProxyCommand, which forwards a private agent holding the on-disk key.
    """
    if profile.key_storage == "agent":
        return ()  # the key exists only in the agent; ensure_agent_key put it there
    cert = store.paths_for(profile).ssh_cert(profile.cluster)
    if agent_holds_certificate(cert, os.environ.get("SSH_AUTH_SOCK")):
        return ()
    from .config_file import tsh_executable

    return tsh_executable()


def _via(profile: Profile, store: ProfileStore, reuse: bool) -> tuple[str, ...]:
    """:func:`proxy_via`, but always `tsh proxy ssh` when the hop is to be reused."""
    if reuse and store.paths_for(profile).reuse_tag.is_file():
        from .config_file import tsh_executable

        return tsh_executable()
    return proxy_via(profile, store)


def plan_ssh(
    store: ProfileStore,
    proxy: str | None,
    request: SSHRequest,
    destination: str,
    command: Sequence[str] = (),
    relogin: Callable[[Profile], Profile] | None = None,
    hop_errors: bool = False,
    reuse: bool = True,
) -> list[str]:
    """The complete ``ssh`` command line for `tsh ssh` (argv[0] is an absolute path).

    Bad input fails before the profile is looked at (and before any relogin
    prompt). ``hop_errors``: for :func:`run_explained`. ``reuse``: the hop is
    `tsh proxy ssh`, which rides the master connection to the proxy
    (tsh._openssh.reuse); False: as :func:`proxy_via` decides, alone.

    Raises:
        UsageError: a bad destination or option, or no OpenSSH client.
        NotLoggedInError: see :func:`usable_profile`.
    """
    from .argv import parse_destination, ssh_argv

    parse_destination(destination, request.login)
    profile = usable_profile(store, proxy, relogin)
    return ssh_argv(
        profile, store.paths_for(profile), request, destination, command,
        ssh=find_binary("ssh"), via_tsh=_via(profile, store, reuse), hop_errors=hop_errors,
        reuse=reuse,
    )  # fmt: skip


def plan_scp(
    store: ProfileStore,
    proxy: str | None,
    args: Sequence[str],
    *,
    port: int | None = None,
    cluster: str | None = None,
    recursive: bool = False,
    preserve: bool = False,
    relogin: Callable[[Profile], Profile] | None = None,
    hop_errors: bool = False,
    reuse: bool = True,
) -> list[str]:
    """The complete ``scp`` command line for `tsh scp` (argv[0] is an absolute path).

    ``reuse``: as for :func:`plan_ssh`.

    Raises:
        UsageError: bad sources or target, or no OpenSSH client.
        NotLoggedInError: see :func:`usable_profile`.
    """
    from .argv import scp_argv, scp_remote_host

    scp_remote_host(args)
    profile = usable_profile(store, proxy, relogin)
    return scp_argv(
        profile, store.paths_for(profile), args, port=port, cluster=cluster,
        recursive=recursive, preserve=preserve, scp=find_binary("scp"),
        via_tsh=_via(profile, store, reuse), hop_errors=hop_errors, reuse=reuse,
    )  # fmt: skip


def run_explained(argv: Sequence[str]) -> int:
    """Run ``argv`` (built with ``hop_errors``) and show the hop's messages after ssh's.

    When the proxy refuses (an unknown node, say), ssh itself then adds two
    lines that only say the hop ended (``kex_exchange_identification: ...``,
    ``Connection closed by UNKNOWN port 65535``). The hop's messages go to a
    private file instead of the terminal and are written last, so the cause is
    the last thing the user reads. Otherwise ssh runs as if exec'd: the same
    terminal, its exit status (128+N for signal N), and job control
    (Ctrl-Z stops this process too; ``fg`` resumes both).

    Returns:
        ssh's exit status.
    """
    import signal
    import tempfile

    from .argv import HOP_ERRORS_ENV

    with tempfile.TemporaryDirectory(prefix="tsh-hop-") as tmp:  # 0700
        errors = os.path.join(tmp, "errors")
        env = {**os.environ, HOP_ERRORS_ENV: errors}
        # The terminal's Ctrl-C and Ctrl-\ reach ssh (same process group): ssh
        # decides. A SIGTERM or SIGHUP sent to us alone is passed on to ssh.
        pid = 0

        def pass_on(signum: int, frame: object) -> None:
            if pid:
                os.kill(pid, signum)

        caught = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in caught[:2]}
        previous.update({sig: signal.signal(sig, pass_on) for sig in caught[2:]})
        try:
            pid = os.posix_spawn(argv[0], list(argv), env, setsigdef=caught)
            status = _wait_like_a_shell(pid)
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        try:
            with open(errors, "rb") as f:
                said = f.read()
        except FileNotFoundError:
            said = b""
    if said:
        from .._proxy.retry import tls_failure

        # Under TLS routing the hop's own hop (tsh's tunnel) may be what failed.
        why = tls_failure(said.decode(errors="replace"))
        if why is not None:
            said = f"error: {why}".encode()
        os.write(2, said if said.endswith(b"\n") else said + b"\n")
    return status


def _wait_like_a_shell(pid: int) -> int:
    """Wait for ``pid``; stop with it (Ctrl-Z, ssh's ``~^Z``) and resume it with us."""
    import signal

    while True:
        try:
            _, status = os.waitpid(pid, os.WUNTRACED)
        except InterruptedError:
            continue
        if os.WIFSTOPPED(status):
            os.kill(os.getpid(), signal.SIGSTOP)  # our shell sees the job stop
            os.kill(pid, signal.SIGCONT)  # `fg` continued us: continue ssh
            continue
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code
