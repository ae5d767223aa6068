"""`tsh logout`: remove one user's keys from a proxy, or everything."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ._output import print_warnings


def logout(
    proxy: Optional[str] = typer.Option(
        None, "--proxy", metavar="HOST[:PORT]", help="Proxy to log out from (with --user)."
    ),
    user: Optional[str] = typer.Option(None, "--user", help="User to log out (with --proxy)."),
) -> None:
    """Remove keys, certificates, keyring entries and tsh's ssh-agent keys.

    With --proxy and --user, only that user's keys for that proxy; with
    neither, every profile.
    """
    from .._auth.logout import logout_all, logout_user
    from .._core.names import validate_user_name
    from .._store.store import ProfileStore, parse_proxy_arg

    store = ProfileStore()
    if proxy and user:
        host = parse_proxy_arg(proxy)[0]
        result = logout_user(store, host, validate_user_name(user))
        print_warnings(result.warnings)
        if not result.removed:
            print(f"User {user} already logged out from {host}.")
            raise typer.Exit(1)
        print(f"Logged out {user} from {host}.")
    elif proxy or user:
        print(
            "Specify --proxy and --user to remove keys for specific user from a proxy "
            "or neither to log out all users from all proxies.",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    else:
        result = logout_all(store)
        print_warnings(result.warnings)
        print(
            "Logged out all users from all proxies." if result.removed else "All users logged out."
        )
