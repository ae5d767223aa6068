"""Pure parsing and routing for the proxy's SSH subsystems (docs/protocol.md §8.2).

Kept apart from the SSH server so the grammar and the exact error texts are
unit-tested without sockets.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._state import Node

__all__ = [
    "DEFAULT_NODE_PORT",
    "SubsystemError",
    "ProxyRequest",
    "go_quote",
    "split_host_port",
    "parse_proxy_subsystem",
    "route",
    "proxysites_json",
]

DEFAULT_NODE_PORT = 3022


class SubsystemError(Exception):
    """A subsystem request the proxy refuses; ``str()`` is the text sent to the client."""


@dataclass(frozen=True)
class ProxyRequest:
    """A parsed ``proxy:host:port[@namespace]@cluster`` request (empty strings = not given)."""

    host: str
    port: str
    cluster: str
    namespace: str = "default"


def go_quote(text: str) -> str:
    """Quote like Go's ``%q``: double quotes, backslash escapes, non-printables as \\x/\\u."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def split_host_port(text: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort`` plus Teleport's non-empty host rule; ValueError on failure.

    The port may be empty (``"host:"``) and is not checked to be numeric.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']' in address")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":") or "[" in host:
            raise ValueError("missing port in address")
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("missing port in address")
        if ":" in host:
            raise ValueError("too many colons in address")
    if "[" in host or "]" in host or "[" in port or "]" in port or ":" in port:
        raise ValueError("unexpected bracket or colon in address")
    if not host:
        raise ValueError("empty hostname")
    return host, port


def parse_proxy_subsystem(request: str) -> ProxyRequest:
    """Parse a ``proxy:`` subsystem name as Teleport's ``parseProxySubsysRequest`` does."""
    bad = SubsystemError(
        f"invalid format for proxy request: {go_quote(request)}, "
        "expected 'proxy:host:port@cluster'"
    )
    prefix = "proxy:"
    if not request.startswith(prefix):
        raise bad
    parts = request[len(prefix) :].split("@")
    host = port = cluster = ""
    namespace = "default"
    try:
        if len(parts) == 1:
            host, port = split_host_port(parts[0])
        elif len(parts) == 2:
            if parts[0]:
                host, port = split_host_port(parts[0])
            cluster = parts[1]
            if not cluster and not host:
                raise SubsystemError(
                    "invalid format for proxy request: missing cluster name or target host "
                    f"in {go_quote(request)}"
                )
        else:
            cluster = "@".join(parts[2:])
            namespace = parts[1]
            host, port = split_host_port(parts[0])
    except ValueError:
        raise bad from None
    return ProxyRequest(host=host, port=port, cluster=cluster, namespace=namespace)


def route(req: ProxyRequest, local_cluster: str, nodes: Mapping[str, Node]) -> Node:
    """The node ``req`` names in ``local_cluster``; SubsystemError with a clear text otherwise.

    A node matches by name, or by its registered host; a port that is given
    (non-empty and not ``"0"``) must equal the registered one. An empty or zero
    port means the default node port, 3022, when the name matches nothing
    better. Requests for a leaf cluster never get here: the SSH proxy sends
    them over the leaf's reverse tunnel (``_trust``), whose leaf end routes
    them as local requests.
    """
    if req.cluster and req.cluster != local_cluster:
        raise SubsystemError(f"unknown cluster {go_quote(req.cluster)}")
    if not req.host:
        raise SubsystemError(
            f"connecting to the auth server of cluster {go_quote(req.cluster)} "
            "is not supported by this test cluster"
        )
    port_given = req.port not in ("", "0")
    candidates = [n for n in nodes.values() if req.host in (n.name, n.host)]
    if port_given:
        candidates = [n for n in candidates if str(n.port) == req.port]
    else:
        by_name = [n for n in candidates if n.name == req.host]
        candidates = by_name or [n for n in candidates if n.port == DEFAULT_NODE_PORT]
    if len(candidates) == 1:
        return candidates[0]
    target = f"{req.host}:{req.port or DEFAULT_NODE_PORT}"
    if not candidates:
        raise SubsystemError(
            f"failed connecting to node {target}: no node named {go_quote(req.host)} "
            f"{'with port ' + req.port + ' ' if port_given else ''}is registered in cluster "
            f"{go_quote(local_cluster)} (register it with `nodes add`)"
        )
    raise SubsystemError(
        f"failed connecting to node {target}: ambiguous host, "
        f"{len(candidates)} registered nodes match"
    )


def proxysites_json(
    cluster: str,
    now: dt.datetime | None = None,
    leaves: Sequence[tuple[str, dt.datetime, str]] = (),
) -> bytes:
    """The ``proxysites`` answer: the online local cluster, then each connected leaf
    ``(name, last heartbeat, status)``; Go's RFC 3339 time format."""
    now = now or dt.datetime.now(dt.timezone.utc)

    def stamp(t: dt.datetime) -> str:
        return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")

    sites = [{"name": cluster, "lastconnected": stamp(now), "status": "online"}]
    sites += [{"name": n, "lastconnected": stamp(t), "status": s} for n, t, s in leaves]
    return json.dumps(sites, separators=(",", ":")).encode()
