"""`tsh status`: every profile, the current one first."""

from __future__ import annotations

import sys
import time

import typer

from ._output import print_warnings


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
    if active is not None and active.valid_before <= now:
        raise NotLoggedInError(
            f"the active profile {active.name} has expired; "
            f"run: tsh login --proxy={active.web_proxy_addr}"
        )
