"""`tsh login`: log in to a proxy, store the profile, load the ssh-agent."""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Optional

import typer

from .._exceptions import TshWarning, UsageError
from ._output import print_warnings

if TYPE_CHECKING:
    from .._auth.authenticators import ByAuthType
    from .._auth.login import LoginResult
    from .._types import AgentMode

#: What to do about a login warning, in flags (the library's messages name none).
_HINTS = {
    "agent-unsupported": " To force load the certificate into the running agent, use "
    "the --add-keys-to-agent=yes flag.",
    "agent-failed": " (use --add-keys-to-agent=no, or run OpenSSH's ssh-agent)",
}


def login_warnings(warnings: Iterable[TshWarning], mode: str) -> list[str]:
    """Login's warnings as the CLI prints them: with what to do, for keys kept on disk.

    (With ``-k only`` the key is meant for the agent: ``-k no`` is no advice.)
    """
    if mode == "only":
        return [str(w) for w in warnings]
    return [f"{w}{_HINTS.get(w.code, '')}" for w in warnings]


class TerminalPrompter:
    """The password method's secrets from the terminal (no echo), or from stdin lines when it is not one.

    On a terminal: ``Enter password for Teleport user NAME:`` and ``Enter your
    OTP token:``. Otherwise the first line of stdin is the password and the
    second the OTP, so scripts and tests can log in without a terminal.
    """

    def __init__(self) -> None:
        self._tty = sys.stdin.isatty()

    def _line(self, what: str) -> str:
        line = sys.stdin.readline()
        if not line:
            raise UsageError(f"no {what} on standard input")
        return line.rstrip("\r\n")

    def password(self, user: str) -> str:
        if self._tty:
            return getpass.getpass(f"Enter password for Teleport user {user}:")
        return self._line("password")

    def otp(self) -> str:
        if self._tty:
            return getpass.getpass("Enter your OTP token:")
        return self._line("OTP token")


def terminal_authenticator(browser: str | None = None, bind_addr: str | None = None) -> ByAuthType:
    """The proxy's method: password (and OTP) asked at the terminal (see TerminalPrompter),
    or single sign-on in a browser.

    ``browser`` and ``bind_addr`` default to ``TELEPORT_LOGIN_BROWSER`` and
    ``TELEPORT_LOGIN_BIND_ADDR``. ``TSH_SSO_CALLBACK_TIMEOUT`` (seconds) shortens
    the 180 s wait for the browser, for tests.
    """
    from .._auth.authenticators import ByAuthType, PasswordAuthenticator
    from .._auth.sso import SSO_CALLBACK_TIMEOUT, SSOAuthenticator

    timeout = SSO_CALLBACK_TIMEOUT
    if os.environ.get("TSH_SSO_CALLBACK_TIMEOUT"):
        try:
            timeout = float(os.environ["TSH_SSO_CALLBACK_TIMEOUT"])
            if not 0 < timeout < 1e6:
                raise ValueError
        except ValueError:
            raise UsageError("TSH_SSO_CALLBACK_TIMEOUT must be a positive number of seconds") from None
    sso = SSOAuthenticator(
        browser=browser or os.environ.get("TELEPORT_LOGIN_BROWSER") or None,
        bind_addr=bind_addr or os.environ.get("TELEPORT_LOGIN_BIND_ADDR") or None,
        timeout=timeout,
    )
    return ByAuthType(PasswordAuthenticator.from_prompter(TerminalPrompter()), sso)


def _default_proxy() -> str:
    env = os.environ.get("TELEPORT_PROXY")
    if env:
        return env
    from .._store.store import ProfileStore

    profile = ProfileStore().current()
    if profile is None:
        raise UsageError("--proxy is required (no current profile to log in to again)")
    return profile.web_proxy_addr


def _switch_cluster(cluster: str, proxy: str | None, user: str | None, mode: AgentMode) -> bool:
    """`tsh login <cluster>` on a valid login of the same proxy and user: reissue, no password.

    Returns False when a full login is needed (no such login, it expired, or
    it keeps its key in the agent only, or is to: ``-k only``).
    """
    from .._auth.reissue import switch_cluster
    from .._core.status import render_status
    from .._exceptions import NotLoggedInError
    from .._store.store import ProfileStore

    store = ProfileStore()
    try:
        profile = store.select(proxy)
    except NotLoggedInError:
        return False
    now = time.time()
    if (
        profile is None
        or profile.valid_before <= now
        or (user and user != profile.user)
        or profile.key_storage == "agent"
        or mode == "only"
    ):
        return False
    if cluster != profile.cluster:
        profile, warnings = switch_cluster(store, profile, cluster, agent_mode=mode)
        print_warnings(login_warnings(warnings, mode))
    sys.stdout.write(render_status([profile], profile.name, time.time()))
    return True


def refresh_ssh_config(result: LoginResult, wanted: bool | None = None) -> None:
    """After a login: refresh the blocks `tsh config --update` wrote, if the clusters
    changed (tsh._openssh.config_file.refresh_after_login); one stderr line per file."""
    from .._openssh.config_file import refresh_after_login

    changed, problems = refresh_after_login(result, wanted)
    profile = result.profile
    for path in changed:
        print(
            f"Updated the Teleport block in {path}: the clusters of {profile.name} changed "
            f"(now {', '.join(profile.clusters or (profile.root_cluster,))}).",
            file=sys.stderr,
        )
    print_warnings(problems)


def login(
    cluster_arg: Optional[str] = typer.Argument(
        None, metavar="[CLUSTER]",
        help="Cluster to select: the root or a leaf (env TELEPORT_CLUSTER). With a valid "
        "login no password is asked.",
    ),
    proxy: Optional[str] = typer.Option(
        None,
        "--proxy",
        metavar="HOST[:PORT]",
        help="Proxy web address; without a port 443 is tried, then 3080.",
    ),
    user: Optional[str] = typer.Option(
        None, "--user", help="Teleport user name (default: the local user name)."
    ),
    ttl: Optional[int] = typer.Option(
        None,
        "--ttl",
        metavar="MINUTES",
        help="Certificate lifetime in minutes (default: the proxy's session TTL).",
    ),
    cluster: Optional[str] = typer.Option(
        None, "--cluster", help="Cluster to log in to (default: the root cluster)."
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Do not verify the proxy's TLS certificate (test setups only; never saved).",
    ),
    add_keys_to_agent: Optional[str] = typer.Option(
        None,
        "-k",
        "--add-keys-to-agent",
        metavar="auto|yes|no|only",
        help="Load the key into the ssh-agent: auto (default), yes, no, or only "
        "(agent and OS keyring, never on disk). Env: TELEPORT_ADD_KEYS_TO_AGENT.",
    ),
    use_local_ssh_agent: Optional[bool] = typer.Option(
        None,
        "--use-local-ssh-agent/--no-use-local-ssh-agent",
        help="Use the local ssh-agent at all (env TELEPORT_USE_LOCAL_SSH_AGENT; default yes).",
    ),
    auth: Optional[str] = typer.Option(
        None,
        "--auth",
        envvar="TELEPORT_AUTH",
        metavar="NAME",
        help="Auth connector to use (default: the cluster's).",
    ),
    browser: Optional[str] = typer.Option(
        None,
        "--browser",
        metavar="none|COMMAND",
        help="SSO: 'none' prints the URL instead of opening a browser; a command opens it. "
        "Env: TELEPORT_LOGIN_BROWSER.",
    ),
    bind_addr: Optional[str] = typer.Option(
        None,
        "--bind-addr",
        metavar="HOST:PORT",
        help="SSO: where the browser's callback is received (default 127.0.0.1, a free port). "
        "Env: TELEPORT_LOGIN_BIND_ADDR.",
    ),
    update_ssh_config: Optional[bool] = typer.Option(
        None,
        "--update-ssh-config/--no-update-ssh-config",
        help="Refresh the block `tsh config --update` wrote when the cluster list changed "
        "(env TELEPORT_UPDATE_SSH_CONFIG; default yes).",
    ),
) -> None:
    """Log in to a Teleport proxy: certificates on disk and in the ssh-agent."""
    from .._agent.agent import resolve_agent_mode
    from .._auth.login import LoginRequest
    from .._auth.login import login as do_login
    from .._core.status import render_status

    mode = resolve_agent_mode(add_keys_to_agent, use_local_ssh_agent, os.environ)
    if insecure:
        print(
            "WARNING: --insecure: the proxy's TLS certificate is NOT verified; anyone on the "
            "network path can impersonate the proxy and capture your password.",
            file=sys.stderr,
        )
    cluster = cluster_arg or cluster or os.environ.get("TELEPORT_CLUSTER") or None
    if cluster and _switch_cluster(cluster, proxy, user, mode):
        return
    request = LoginRequest(
        proxy=proxy or _default_proxy(),
        user=user,
        ttl_minutes=ttl,
        cluster=cluster,
        insecure=insecure,
        agent_mode=mode,
        auth=auth or None,
    )
    result = do_login(request, terminal_authenticator(browser, bind_addr))
    print_warnings(login_warnings(result.warnings, mode))
    refresh_ssh_config(result, update_ssh_config)
    sys.stdout.write(render_status([result.profile], result.profile.name, time.time()))
