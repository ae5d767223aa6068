"""`tsh login`: log in to a proxy, store the profile, load the ssh-agent."""

from __future__ import annotations

import getpass
import os
import sys
import time
from typing import Optional

import typer

from .._exceptions import UsageError
from ._output import print_warnings


class TerminalPrompter:
    """Secrets from the terminal (no echo), or from stdin lines when it is not one.

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


def _default_proxy() -> str:
    env = os.environ.get("TELEPORT_PROXY")
    if env:
        return env
    from .._store.store import ProfileStore

    profile = ProfileStore().current()
    if profile is None:
        raise UsageError("--proxy is required (no current profile to log in to again)")
    return profile.web_proxy_addr


def login(
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
    request = LoginRequest(
        proxy=proxy or _default_proxy(),
        user=user,
        ttl_minutes=ttl,
        cluster=cluster,
        insecure=insecure,
        agent_mode=mode,
    )
    result = do_login(request, TerminalPrompter())
    print_warnings(result.warnings)
    sys.stdout.write(render_status([result.profile], result.profile.name, time.time()))
