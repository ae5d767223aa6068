"""Rendering of `tsh clusters` and `tsh ls` (pure: records in, text out).

Tables are real tsh's asciitable: Go's tabwriter (cells padded to the
column's widest plus one space, at least five), every cell followed by its
padding (so lines end in spaces), a header and a row of dashes unless
headless. JSON and YAML carry the fields real tsh prints under its keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .status import render_json, render_yaml

__all__ = [
    "ClusterInfo",
    "NodeInfo",
    "render_table",
    "format_labels",
    "sorted_labels",
    "render_clusters",
    "render_nodes",
    "fit_to_width",
    "DEFAULT_TERMINAL_WIDTH",
    "EMPTY_NODES_FOOTER",
]

#: What tsh ls prints on stderr when it lists nothing (real tsh's emptyNodesFooter).
EMPTY_NODES_FOOTER = (
    "\n  Not seeing nodes? Either no nodes are available or your user's roles do not match "
    "the labels of at least one node.\n\n  Check with your Teleport cluster administrator that "
    "your user's roles should have nodes available.\n  "
)
TUNNEL_ADDR = "⟵ Tunnel"


class ClusterInfo(NamedTuple):
    """A cluster as `tsh clusters` shows it: the root, or a leaf the root lists.

    ``status`` is ``"online"`` or ``"offline"`` (the root is always online);
    ``cluster_type`` ``"root"`` or ``"leaf"``; ``labels`` None for the root;
    ``selected`` whether it is the profile's cluster.
    """

    name: str
    status: str
    cluster_type: str  # "root" or "leaf"
    labels: Mapping[str, str] | None  # None for the root (real tsh never sets them)
    selected: bool


class NodeInfo(NamedTuple):
    """A node as `tsh ls` shows it: ``id`` (its UUID), ``hostname``, ``addr``, ``labels``.

    ``labels`` holds static and command labels; ``tunnel`` is true for a node
    reached over a reverse tunnel; ``sub_kind`` is ``"openssh"`` for agentless
    OpenSSH nodes.
    """

    id: str
    hostname: str
    addr: str
    labels: Mapping[str, str]
    tunnel: bool = False
    sub_kind: str = ""


def _printable(text: str) -> str:
    """A server's string as the terminal gets it: control characters become ``?``."""
    if text.isprintable():  # the common case, at C speed (10,000-node tables)
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], headless: bool = False) -> str:
    """An asciitable: padded columns, every line ending in its padding."""
    cols = len(headers)
    cells = [[_printable(str(c)) for c in row[:cols]] for row in rows]
    widths = [len(h) if not headless else 0 for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    if not headless:
        lines.append(list(headers))
        lines.append(["-" * w for w in widths])
    lines.extend(cells)
    pads = [max(w + 1, 5) for w in widths]
    return "".join("".join(c.ljust(pads[i]) for i, c in enumerate(line)) + "\n" for line in lines)


def format_labels(labels: Mapping[str, str] | None) -> str:
    """``k=v`` pairs sorted by key, comma-joined (tsh clusters)."""
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def sorted_labels(labels: Mapping[str, str]) -> str:
    """tsh ls's label order: plain keys, then keys with ``/``, then ``teleport.dev/`` keys."""

    def group(key: str) -> int:
        return 2 if key.startswith("teleport.dev/") else 1 if "/" in key else 0

    return ",".join(f"{k}={labels[k]}" for k in sorted(labels, key=lambda k: (group(k), k)))


def render_clusters(rows: Sequence[ClusterInfo], fmt: str = "text", quiet: bool = False) -> str:
    """`tsh clusters` in ``fmt`` (text, json, yaml); ``quiet``: headless, no Selected column."""
    if fmt in ("json", "yaml"):
        data: list[dict[str, Any]] = [
            {
                "cluster_name": r.name,
                "status": r.status,
                "cluster_type": r.cluster_type,
                "labels": dict(r.labels) if r.labels is not None else None,
                "selected": r.selected,
            }
            for r in rows
        ]
        return render_json(data) if fmt == "json" else render_yaml(data)
    headers = ["Cluster Name", "Status", "Cluster Type", "Labels", "Selected"]
    table = [
        [r.name, r.status, r.cluster_type, format_labels(r.labels), "*" if r.selected else ""]
        for r in rows
    ]
    if quiet:
        return render_table(headers[:4], [row[:4] for row in table], headless=True)
    return render_table(headers, table)


def _node_data(node: NodeInfo) -> dict[str, Any]:
    """A node as real tsh's JSON/YAML shows a types.Server (the fields we know)."""
    return {
        "kind": "node",
        "sub_kind": node.sub_kind,
        "version": "v2",
        "metadata": {"name": node.id, "namespace": "default", "labels": dict(node.labels)},
        "spec": {
            "addr": node.addr,
            "hostname": node.hostname,
            **({"use_tunnel": True} if node.tunnel else {}),
        },
    }


#: The width real tsh assumes when it cannot ask the terminal.
DEFAULT_TERMINAL_WIDTH = 80
#: What real tsh's asciitable keeps at least for the column it truncates.
_TRUNCATED_MIN = 16


def fit_to_width(
    headers: Sequence[str], rows: Sequence[Sequence[str]], column: str, width: int
) -> list[list[str]]:
    """``rows`` cut to fit ``width`` as real tsh's asciitable cuts them, ``column`` first.

    Every other column may take an equal share of what is left after 16
    characters for ``column``; a cell longer than its column's limit keeps that
    many characters plus ``...``. ``column`` gets the rest of the line (each
    column also pays its separator, a cut one its ``...``); no room at all
    leaves it uncut, as real tsh does.
    """
    target = list(headers).index(column)
    # (At least one character: a terminal narrower than 16 would make it negative.)
    share = max((width - _TRUNCATED_MIN) // max(len(headers) - 1, 1), 1)
    limits: list[int] = []
    used = 0
    for i, header in enumerate(headers):
        if i == target:
            limits.append(0)
            continue
        longest = max([len(header), *(len(row[i]) for row in rows)])
        if longest > share:
            limits.append(share)
            used += share + 4  # the cell, "..." and the separator
        else:
            limits.append(0)
            used += longest + 1
    limits[target] = max(width - used - 4, 0)
    return [
        [c[:n] + "..." if 0 < n < len(c) else c for c, n in zip(row, limits, strict=False)]
        for row in rows
    ]


def render_nodes(
    nodes: Sequence[NodeInfo], fmt: str = "text", verbose: bool = False, width: int | None = None
) -> str:
    """`tsh ls` in ``fmt`` (text, json, yaml, names), sorted by hostname.

    ``width``: the terminal's, to cut the Labels column to (text without
    ``verbose``, as real tsh); None cuts nothing.
    """
    ordered = sorted(nodes, key=lambda n: (n.hostname, n.id))
    if fmt == "names":
        return "".join(_printable(n.hostname) + "\n" for n in ordered)
    if fmt in ("json", "yaml"):
        data = [_node_data(n) for n in ordered]
        return render_json(data) if fmt == "json" else render_yaml(data)
    rows = []
    for n in ordered:
        addr = TUNNEL_ADDR if n.tunnel else n.addr
        labels = sorted_labels(n.labels)
        rows.append([n.hostname, n.id, addr, labels] if verbose else [n.hostname, addr, labels])
    headers = ["Node Name", "Node ID", "Address", "Labels"] if verbose else ["Node Name", "Address", "Labels"]
    if width is not None and not verbose:
        rows = fit_to_width(headers, [[_printable(c) for c in row] for row in rows], "Labels", width)
    return render_table(headers, rows)
