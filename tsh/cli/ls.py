"""`tsh ls`: the nodes of the selected cluster, as its auth API lists them."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from .clusters import check_format

_FORMATS = ("text", "json", "yaml", "names")


def parse_label_args(words: List[str]) -> dict[str, str]:
    """``["env=prod,team=a", "os=linux"]`` -> a label map; UsageError on a word without ``=``."""
    from .._exceptions import UsageError

    labels: dict[str, str] = {}
    for word in words:
        for pair in word.split(","):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"invalid label {pair!r}: expected key=value")
            labels[key.strip()] = value.strip()
    return labels


def parse_search(text: str | None) -> list[str]:
    """``--search=foo,bar,"some phrase"``: comma-separated words, quotes keep commas."""
    import csv

    if not text:
        return []
    return [w.strip() for w in next(csv.reader([text], skipinitialspace=True)) if w.strip()]


def terminal_width() -> int:
    """The terminal's width as real tsh reads it (on stdin), else its 80 columns."""
    import os

    from .._core.listing import DEFAULT_TERMINAL_WIDTH

    try:
        return os.get_terminal_size(sys.stdin.fileno()).columns or DEFAULT_TERMINAL_WIDTH
    except (OSError, ValueError, AttributeError):  # not a terminal; no stdin at all
        return DEFAULT_TERMINAL_WIDTH


def ls(
    labels: Optional[List[str]] = typer.Argument(
        None, metavar="[LABEL=VALUE,...]", help="Only nodes with these labels."
    ),
    search: Optional[str] = typer.Option(
        None, "--search", metavar="WORDS",
        help='Comma-separated search keywords or quoted phrases (e.g. --search=foo,bar,"a b").',
    ),
    format: str = typer.Option(
        "text", "-f", "--format", metavar="text|json|yaml|names", help="Output format."
    ),
    verbose: bool = typer.Option(
        False, "-v", "--verbose", help="Also show node IDs; labels uncut (else cut to the terminal)."
    ),
    cluster: Optional[str] = typer.Option(
        None, "-c", "--cluster", help="Cluster to list (default: the selected one). Env TELEPORT_CLUSTER."
    ),
) -> None:
    """List the nodes of the selected cluster (or --cluster) that you may see."""
    import asyncio
    import os

    from .._authapi.session import with_auth
    from .._core.listing import EMPTY_NODES_FOOTER, NodeInfo, render_nodes
    from .._store.store import ProfileStore

    fmt = check_format(format, _FORMATS)
    wanted = parse_label_args(labels or [])
    words = parse_search(search)
    store = ProfileStore()
    profile = store.select(None)
    target = cluster or os.environ.get("TELEPORT_CLUSTER") or profile.cluster
    nodes = asyncio.run(with_auth(store, profile, lambda c: c.list_nodes(wanted, words), target))
    rows = [NodeInfo(n.id, n.hostname, n.addr, n.labels, n.tunnel, n.sub_kind) for n in nodes]
    sys.stdout.write(render_nodes(rows, fmt, verbose=verbose, width=terminal_width()))
    if not rows and fmt == "text":
        print(EMPTY_NODES_FOOTER, file=sys.stderr)
