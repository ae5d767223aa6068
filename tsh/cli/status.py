"""`tsh status`: every profile, the current one first."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import typer

from ._output import print_warnings

if TYPE_CHECKING:
    from .._core.profile import Profile
    from .._store.store import ProfileStore


def status(
    format: str = typer.Option(
        "text", "-f", "--format", metavar="text|json|yaml", help="Output format."
    ),
) -> None:
    """Show the profiles you are logged in with (`Not logged in.` when none).

    Exits 1, after showing them, when the current profile has expired (as real tsh).
    """
    from .._core.status import render_json, render_status, render_yaml, status_data
    from .._exceptions import NotLoggedInError, ProfileError, UsageError
    from .._store.store import ProfileStore

    fmt = format.lower()
    if fmt not in ("text", "json", "yaml"):
        raise UsageError(f'invalid format "{format}", must be one of [text json yaml]')
    store = ProfileStore()
    store.current()  # a corrupt current profile is an error (naming the file), not "Not logged in."
    problems: list[ProfileError] = []
    profiles = store.list(problems)
    print_warnings(str(e) for e in problems)  # the other profiles are still worth showing
    current = store.current_name()
    now = time.time()
    if fmt == "text":
        if not profiles:
            print("Not logged in.", file=sys.stderr)
            raise typer.Exit(1)
        sys.stdout.write(render_status(profiles, current, now))
    else:
        data = status_data(profiles, current, now)
        sys.stdout.write(render_json(data) if fmt == "json" else render_yaml(data))
        if not profiles:
            raise typer.Exit(1)
    for profile in profiles:
        if profile.key_storage == "agent" and profile.valid_before > now:
            # `-k only`: put the key back into a fresh agent (imports asyncssh only here).
            from .._agent.agent import ensure_agent_key

            warning = ensure_agent_key(profile, store)
            print_warnings([warning] if warning else [])
    active = next((p for p in profiles if p.name == current), None)
    if active is not None and active.valid_before > now:
        print_warnings(_rotation_flags(store, active))
    if active is not None and active.valid_before <= now:
        raise NotLoggedInError(
            f"the active profile {active.name} has expired; "
            f"run: tsh login --proxy={active.web_proxy_addr}"
        )


#: Seconds `tsh status` gives the proxy to say which CAs it trusts (the status is shown already).
ONLINE_CHECK_S = 1.5


def _rotation_flags(store: "ProfileStore", profile: "Profile") -> list[str]:
    """Flags for a certificate or known_hosts a CA rotation left behind; [] offline or late.

    Runs after the offline status is printed, in a daemon thread joined for at
    most ONLINE_CHECK_S: a proxy that does not answer (or a name that does not
    resolve) never holds `tsh status` longer. Nothing is imported for it unless
    the profile has a certificate on disk to check.
    """
    import os

    if not os.path.isfile(store.paths_for(profile).ssh_cert(profile.cluster)):
        return []
    import threading

    found: list[str] = []

    def check() -> None:
        from .._openssh.explain import status_warnings

        try:
            found.extend(status_warnings(store, profile, ONLINE_CHECK_S))
        except Exception:  # an online extra must never turn a status into a traceback
            pass

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(ONLINE_CHECK_S)
    return list(found) if not worker.is_alive() else []
