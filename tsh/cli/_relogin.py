"""Renewing an expired certificate from a command that needs it (tsh ssh, tsh scp)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from ._output import print_warnings

if TYPE_CHECKING:
    from .._core.profile import Profile


def terminal_relogin(reason: str = "has expired") -> Optional[Callable[["Profile"], "Profile"]]:
    """A relogin callback when a person is at a terminal, else None.

    ``reason`` completes "The certificate for USER@PROXY ...": it has expired,
    or (tsh.cli._rotation) it was issued before a CA rotation.

    The callback logs in again to the same proxy as the same user, with the
    same prompts as `tsh login` (or its single sign-on in a browser, when the
    proxy uses it), keeping a `-k only` profile's key out of disk.
    """
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def relogin(profile: "Profile") -> "Profile":
        from .._agent.agent import resolve_agent_mode
        from .._auth.login import LoginRequest, login
        from .login import login_warnings, refresh_ssh_config, terminal_authenticator

        print(
            f"The certificate for {profile.user}@{profile.name} {reason}; logging in again.",
            file=sys.stderr,
        )
        # A `-k only` profile's key stays out of disk.
        mode = "only" if profile.key_storage == "agent" else resolve_agent_mode(None, None, os.environ)
        request = LoginRequest(
            proxy=profile.web_proxy_addr,
            user=profile.user,
            cluster=profile.cluster if profile.cluster != profile.root_cluster else None,
            agent_mode=mode,
            auth=os.environ.get("TELEPORT_AUTH") or None,  # as `tsh login`'s --auth
        )
        result = login(request, terminal_authenticator())
        print_warnings(login_warnings(result.warnings, mode))
        refresh_ssh_config(result)
        return result.profile

    return relogin
