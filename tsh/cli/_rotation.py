"""After OpenSSH failed in `tsh ssh`/`tsh scp`: explain a CA rotation, and log in again if that fixes it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._openssh.argv import SSHRequest
    from .._store.store import ProfileStore

#: OpenSSH's exit status for its own errors (host key, authentication, connection).
SSH_FAILED = 255


def explain_failure(
    store: ProfileStore,
    proxy: str | None,
    request: SSHRequest,
    destination: str,
    ssh: str,
    rerun: Callable[[], int],
) -> int:
    """Print the rotation explanation the facts support (if any); return the final status.

    At a terminal, when a fresh login fixes it (the host CA changed, the
    certificate's user CA was rotated away), log in again and run once more.
    """
    import subprocess

    from .._exceptions import TshError
    from .._openssh.explain import explain_ssh_failure
    from ._relogin import terminal_relogin

    try:
        profile = store.select(proxy)
        explanation = explain_ssh_failure(store, profile, request, destination, ssh=ssh)
    except (TshError, OSError, subprocess.SubprocessError):
        return SSH_FAILED  # no better explanation than OpenSSH's own
    if explanation is None:
        return SSH_FAILED
    print(f"error: {explanation.message}", file=sys.stderr)
    relogin = terminal_relogin(reason="was issued before a CA rotation")
    if not explanation.relogin_fixes or relogin is None:
        return SSH_FAILED
    relogin(profile)
    sys.stdout.flush()
    return rerun()


def first_remote(args: Sequence[str]) -> str | None:
    """``[LOGIN@]HOST`` of scp's first remote argument."""
    from .._openssh.argv import parse_scp_arg

    for arg in args:
        remote = parse_scp_arg(arg)
        if remote.host is not None:
            return f"{remote.login}@{remote.host}" if remote.login else remote.host
    return None
