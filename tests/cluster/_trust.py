"""Trusted clusters as the auth server sees them (PLACEHOLDER, see below).

This is authapi's placeholder of the module the "trust" branch owns (the
contract of issue #14, §2): same names and signatures, reading the same files,
so that the auth gRPC server and the benchmarks can be built and tested before
the merge. The lead replaces it with trust's real module, which also keeps
live heartbeats of the reverse tunnels.

* root: ``DIR/remote_clusters.json``
  ``{"clusters": {NAME: {"labels": {..}, "host_ca": {"ssh": [line], "tls": [pem]},
  "role_map": [..], "last_heartbeat": RFC3339-or-null}}}``
* leaf: ``DIR/trusted_clusters.json``
  ``{"clusters": {ROOT: {"user_ca": {"ssh": [..], "tls": [..]}, "host_ca": {..}, ...}}}``
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

from ._state import ClusterState

__all__ = [
    "RemoteCluster",
    "remote_clusters",
    "remote_host_cas",
    "trusted_user_ca_tls",
    "trusted_user_ca_ssh",
]

#: A leaf whose last heartbeat is older than this is offline.
OFFLINE_THRESHOLD = dt.timedelta(seconds=10)


@dataclass(frozen=True)
class RemoteCluster:
    name: str
    status: Literal["online", "offline"]
    last_heartbeat: dt.datetime | None  # aware UTC
    labels: dict[str, str]


def _read(state: ClusterState, name: str) -> dict[str, Any]:
    try:
        data = json.loads((state.data_dir / name).read_text())
    except FileNotFoundError:
        return {}
    clusters = data.get("clusters") if isinstance(data, dict) else None
    return clusters if isinstance(clusters, dict) else {}


def _parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


def remote_clusters(state: ClusterState) -> list[RemoteCluster]:
    """The root's leaves, sorted by name."""
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for name, rec in sorted(_read(state, "remote_clusters.json").items()):
        beat = _parse_time(rec.get("last_heartbeat"))
        online = beat is not None and now - beat <= OFFLINE_THRESHOLD
        labels = {str(k): str(v) for k, v in (rec.get("labels") or {}).items()}
        out.append(RemoteCluster(name, "online" if online else "offline", beat, labels))
    return out


def remote_host_cas(state: ClusterState) -> dict[str, tuple[list[str], list[bytes]]]:
    """Leaf name -> (host CA SSH public keys, host CA TLS certificate PEMs)."""
    out = {}
    for name, rec in sorted(_read(state, "remote_clusters.json").items()):
        ca = rec.get("host_ca") or {}
        out[name] = ([str(k) for k in ca.get("ssh", [])], [str(p).encode() for p in ca.get("tls", [])])
    return out


def trusted_user_ca_tls(state: ClusterState) -> list[bytes]:
    """On a leaf: the root user CAs' TLS certificate PEMs it trusts."""
    return [
        str(p).encode()
        for rec in _read(state, "trusted_clusters.json").values()
        for p in (rec.get("user_ca") or {}).get("tls", [])
    ]


def trusted_user_ca_ssh(state: ClusterState) -> list[str]:
    """On a leaf: the root user CAs' SSH public keys (authorized_keys lines)."""
    return [
        str(k)
        for rec in _read(state, "trusted_clusters.json").values()
        for k in (rec.get("user_ca") or {}).get("ssh", [])
    ]
