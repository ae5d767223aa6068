"""`tsh proxy ssh`: the ProxyCommand that carries OpenSSH to a node via the proxy.

OpenSSH starts ``tsh proxy ssh --cluster=C --proxy=P %r@%h:%p`` and speaks
SSH to the node over our stdin/stdout. The hop to the proxy is OpenSSH's own
``ssh -s`` (tsh._openssh.hop.proxy_hop_argv), run as a child: it logs in to the
proxy's SSH port with the profile's certificate, accepts only a proxy host
certificate from the profile's known_hosts CAs, forwards the agent (a recording
proxy needs it) and opens ``proxy:<host>:<port>@<cluster>`` (docs/protocol.md
§8.1); under TLS routing it reaches that service on the web port through a
ProxyCommand (tsh._proxy.dial, docs/protocol.md §18). Why a child and not an
SSH library: start-up. This runs for every OpenSSH connection through the
generated config, and importing an SSH library costs more than the whole hop.

What tsh adds around the child:

- Overload: an sshd over its ``MaxStartups`` (or a busy proxy) drops new
  connections before they authenticate. Until the node's ``SSH-`` version line
  arrives, its output is held back and what ssh sent is kept; if the attempt is
  dropped, a new child is started after a jittered backoff and the kept bytes
  are replayed, so ssh never notices. Authentication failures, untrusted
  proxies and anything after the node spoke are never retried.
- The agent to forward (tsh._agent.private): with the key on disk, a socket
  behind which, if a recording proxy uses it, is the user's agent when that
  holds the certificate, else a private agent holding the key on disk. The
  hop itself logs in with the key files (OpenSSH 8.2 and later; older ones
  get the lazy socket as their agent, and start what is behind it).
- Exit as soon as the node side ends, even while ssh keeps our stdin open.

Start-up time is part of every connection's set-up, so this module and what
it imports stay lean: no typer (tsh.cli._hotpath), no dataclasses, tempfile
or shutil, no SSH library; random only for a retry. Until the hop is started
not even subprocess, socket.py or threading: the hop is spawned directly
(tsh._proxy.child), and what only the copying needs is imported while the hop
connects. tests/unit/test_cli_hotpath.py pins the tsh modules this loads.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .._agent.private import LazyAgent
from .._core.names import validate_cluster_name, validate_login
from .._core.profile import Profile
from .._exceptions import NotLoggedInError, SSHError
from .._store.layout import ProfilePaths
from .._store.store import ProfileStore
from .dial import Dial, dial_for
from .supervisor import HopSupervisor
from .target import parse_target

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from .mux import Master

__all__ = ["proxy_ssh"]


class _HangUp(Exception):
    """SIGHUP or SIGTERM: OpenSSH ends its ProxyCommand with SIGHUP."""


class _HangUpGuard:
    """SIGHUP/SIGTERM as one :class:`_HangUp`, raised only while armed: inside the
    hop's ``try``, whose ``finally`` stops the child ssh and a private agent. One
    that comes earlier waits for :meth:`arm`; once disarmed (the session is over,
    or cleaning up), they change nothing. Raised anywhere else, it would end
    tsh as an "internal error" just as ssh closes the session."""

    def __init__(self) -> None:
        self._armed = False
        self._pending = False
        self._done = False

    def handler(self, signum: int, frame: object) -> None:
        if self._armed:
            self._armed = False
            raise _HangUp()
        self._pending = not self._done

    def arm(self) -> None:
        if self._pending:
            self._pending = False
            raise _HangUp()
        self._armed = True

    def disarm(self) -> None:
        self._armed, self._pending, self._done = False, False, True


def proxy_ssh(
    target: str,
    *,
    cluster: str | None = None,
    proxy: str | None = None,
    stdin: int = 0,
    stdout: int = 1,
    stderr: int = 2,
    reuse: bool = True,
) -> int:
    """Run the ProxyCommand: pipe ``stdin``/``stdout`` to ``target`` via the proxy.

    ``reuse``: ride (or start) the master connection to the proxy for this
    certificate and login (tsh._proxy.mux); False: log in to the proxy alone.
    Returns the exit status (0 after a normal end).

    Raises:
        NotLoggedInError: no profile for the proxy, or its files are missing.
        ProfileError: the profile's file is corrupt.
        SSHError: the proxy refused, is not trusted, or kept dropping us.
        UsageError: a bad target, or no OpenSSH client.
    """
    from .._openssh.hop import proxy_hop_argv

    store = ProfileStore()
    profile = store.select(proxy)
    tgt = parse_target(target)
    cluster = cluster or os.environ.get("TELEPORT_CLUSTER")  # real tsh's variable
    cluster = validate_cluster_name(cluster) if cluster else (profile.root_cluster or profile.cluster)
    login = tgt.login
    if login is None:  # OpenSSH always passes %r; by hand, the login may be left out
        import getpass

        login = validate_login(getpass.getuser())
    paths = store.paths_for(profile, as_str=True)
    needed = [paths.known_hosts, paths.ssh_cert(profile.cluster)]
    if profile.key_storage != "agent":
        needed.append(paths.private_key)  # the hop logs in with the key file
    for needed_file in needed:
        if not os.path.isfile(needed_file):
            raise NotLoggedInError(f"{needed_file} is missing; run tsh login")

    def hop(agent_sock: str | None = None) -> list[str]:
        # "ssh" is looked up on PATH when started (no shutil import: start-up time).
        return proxy_hop_argv(profile, paths, tgt.host, cluster, login=login, port=tgt.port,
                              ssh="ssh", agent_sock=agent_sock, dial=dial)

    env = dict(os.environ)
    dial = dial_for(profile, paths, env)
    ca_file = os.fspath(paths.tls_ca(profile.root_cluster or profile.cluster))
    web_addr = profile.web_proxy_addr

    def diagnose() -> str | None:  # why the tunnel of a master (which cannot say) failed
        from .tunnel import diagnose

        return diagnose(web_addr, ca_file, dial.upgrade)

    # The same reading of failures whether the hop rides a master or not (a hop
    # whose master is gone dials by itself; under TLS routing its tunnel says
    # what failed, CA file included).
    # ``blind``: the hop's ProxyCommand says nothing (a new master's: OpenSSH
    # sends its stderr to /dev/null with ControlPersist), so drops are diagnosed.
    def run(attempts: HopSupervisor, blind: bool = False) -> int:
        return attempts.run(
            proxy_addr=web_addr if dial.mode != "tcp" else profile.ssh_proxy_addr,
            login=login, known_hosts=os.fspath(paths.known_hosts),
            diagnose=diagnose if blind and dial.mode != "tcp" else None,
        )  # fmt: skip

    with _hangup_raises() as hangup:
        master: Master | None = None
        agent: LazyAgent | None = None
        over = False  # the session ran (or ssh hung up on us): nothing left to say

        def alone_on_old_openssh() -> tuple[list[str], dict[str, str]]:
            # OpenSSH before 8.2 cannot forward a new master's own agent: no
            # master, and the lazy socket as SSH_AUTH_SOCK (see below).
            nonlocal agent
            assert master is not None
            master.release()
            agent = _agent_to_forward(profile, store, paths)
            if agent is None:
                return hop(), env
            agent.serve()
            return hop(), {**env, "SSH_AUTH_SOCK": agent.sock}

        try:
            hangup.arm()
            master = _master(profile, store, paths, login, env, dial) if reuse else None
            if master is not None:  # the master's agent serves the proxy: no agent of ours
                status = run(
                    HopSupervisor(
                        (master.hop_argv(hop()), env), stdin, stdout, stderr,
                        fallback=alone_on_old_openssh if master.agent_sock else None,
                        fallback_sign=f'unsupported option "{master.agent_sock}"',
                        started=master.serve_agent,  # the proxy's agent requests, from now on
                        spoke=master.release,  # waiting hops ride from now on
                    ),
                    blind=master.persist is not None,
                )  # fmt: skip
                hangup.disarm()
                over = True
                return status
            agent = lazy = _agent_to_forward(profile, store, paths)
            if lazy is None:
                attempts = HopSupervisor((hop(), env), stdin, stdout, stderr)
            else:
                attempts = HopSupervisor(
                    (hop(lazy.sock), {**env, "SSH_AUTH_SOCK": lazy.presence_sock}),
                    stdin, stdout, stderr,
                    # OpenSSH before 8.2 has no `ForwardAgent <path>`: forward the
                    # lazy socket as SSH_AUTH_SOCK (its login starts what is behind it).
                    fallback=lambda: (hop(), {**env, "SSH_AUTH_SOCK": lazy.sock}),
                    fallback_sign=f'unsupported option "{lazy.sock}"',
                    started=lazy.serve,  # the sockets listen already; answer from now on
                )  # fmt: skip
            return run(attempts)
        except SSHError as e:
            hangup.disarm()  # (what is left is to say why)
            raise _explained(e, store, profile) from None
        except _HangUp:
            over = True
            return 128 + signal.SIGHUP
        finally:
            hangup.disarm()
            if master is not None:
                master.release()
                if master.agent is not None:  # a new master is up: its agent goes in place
                    if over:  # (an error to print keeps our stderr)
                        _detach(stdin, stdout, stderr)  # before, so that nobody waits for it
                    master.finish()
            if agent is not None:
                agent.close()


def _master(
    profile: Profile, store: ProfileStore, paths: ProfilePaths, login: str, env: dict[str, str],
    dial: Dial,
) -> Master | None:
    """The master connection to ride or become (tsh._proxy.mux), or None to go alone."""
    from .mux import master_for

    if profile.key_storage == "agent":
        _agent_to_forward(profile, store, paths)  # `-k only`: the key must be in the agent
        private_agent = None
    else:
        private_agent = (os.fspath(paths.private_key), os.fspath(paths.ssh_cert(profile.cluster)))
    return master_for(os.fspath(paths.reuse_tag), login, env, private_agent, (dial.mode, dial.upgrade))


def _explained(error: SSHError, store: ProfileStore, profile: Profile) -> SSHError:
    """``error``, or the CA rotation that caused it when the facts say so (only on failure)."""
    text = str(error)
    untrusted, denied = " is not trusted: " in text, " refused the certificate " in text
    if not (untrusted or denied) or os.environ.get("TSH_HOP_ERRORS"):
        return error  # (under `tsh ssh`/`tsh scp`, which explain after ssh's own lines)
    from .._openssh.explain import explain_proxy_failure

    explanation = explain_proxy_failure(store, profile, untrusted, denied)
    return SSHError(explanation.message) if explanation is not None else error


def _detach(*fds: int) -> None:
    """Let go of our stdio (to /dev/null): what is left to do (tsh._proxy.mux.Master.finish)
    is nobody's wait. (The hang-up ssh sends as it ends: the disarmed guard ignores it.)"""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        try:
            os.dup2(devnull, fd)
        except OSError:
            pass
    os.close(devnull)


@contextmanager
def _hangup_raises() -> Iterator[_HangUpGuard]:
    # SIGHUP/SIGTERM as an exception (see _HangUpGuard), so that `finally` blocks
    # stop the child ssh and a private agent instead of leaving them behind.
    guard = _HangUpGuard()
    previous = {sig: signal.signal(sig, guard.handler) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        yield guard
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _agent_to_forward(profile: Profile, store: ProfileStore, paths: ProfilePaths) -> LazyAgent | None:
    """The agent socket to forward (and close), or None to forward ``$SSH_AUTH_SOCK``."""
    if profile.key_storage == "agent":
        from .._agent.agent import ensure_agent_key

        warning = ensure_agent_key(profile, store)  # `-k only`: the agent must hold the key
        if warning:
            raise NotLoggedInError(warning)
        return None
    try:
        return LazyAgent(
            os.fspath(paths.private_key),
            os.fspath(paths.ssh_cert(profile.cluster)),
            int(profile.valid_before - time.time()),
            user_sock=os.environ.get("SSH_AUTH_SOCK"),
        )
    except OSError:
        return None  # a node-recording proxy needs no agent; a recording one says what is missing
