"""`tsh clusters`: the root cluster and its leaves, as the root's auth API lists them."""

from __future__ import annotations

import sys

import typer

_FORMATS = ("text", "json", "yaml")


def check_format(value: str, allowed: tuple[str, ...]) -> str:
    """``value`` lower-cased if it is one of ``allowed``; real tsh's error otherwise."""
    from .._exceptions import UsageError

    fmt = value.lower()
    if fmt not in allowed:
        raise UsageError(f'invalid format "{value}", must be one of [{" ".join(allowed)}]')
    return fmt


def clusters(
    format: str = typer.Option(
        "text", "-f", "--format", metavar="text|json|yaml", help="Output format."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No headers (and no Selected column)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Full labels (text format)."),
) -> None:
    """List the root cluster and the leaf clusters you can reach."""
    import asyncio

    from .._authapi.session import cluster_rows, with_proxy
    from .._core.listing import render_clusters
    from .._store.store import ProfileStore

    fmt = check_format(format, _FORMATS)
    store = ProfileStore()
    profile = store.select(None)
    rows = asyncio.run(with_proxy(store, profile, lambda pc: cluster_rows(pc, store)))
    # Labels are never cut (-v is accepted for real tsh's command lines).
    sys.stdout.write(render_clusters(rows, fmt, quiet=quiet))
