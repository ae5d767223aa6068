"""Leaf clusters for the tests: joined by hand-written records, or trusted by hand.

``seed_leaf`` records a leaf at the root as a trusted-cluster join does (no tunnel),
for the auth API tests. ``trust_leaves`` puts real, joined leaves into a profile.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from tests.cluster._ca import Authority, public_line
from tests.cluster._state import ClusterState
from tests.cluster.launch import Cluster
from tsh._core.knownhosts import cluster_trust_lines, merge_known_hosts


def seed_leaf(root: Cluster, workdir: Path, name: str, *, online: bool, labels: dict[str, str]
              ) -> Authority:
    """A leaf's CAs (made in its own data dir) recorded at the root as a joined leaf."""
    leaf = Authority.load(ClusterState.init(workdir / name, name))
    path = root.data_dir / "remote_clusters.json"
    data = json.loads(path.read_text()) if path.exists() else {"clusters": {}}
    beat = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z") if online else None
    data["clusters"][name] = {
        "labels": labels,
        "host_ca": {"ssh": [public_line(leaf.host_ca)], "tls": [leaf.tls_ca_pem.decode()]},
        "role_map": [{"remote": "access", "local": ["access"]}],
        "last_heartbeat": beat,
    }
    path.write_text(json.dumps(data))
    return leaf



def _host_ca_keys(cluster: Cluster) -> list[str]:
    # `@cert-authority *.<cluster> <type> <base64> type=host`
    return [" ".join(line.split()[2:4]) for line in cluster.admin(
        "auth", "export", "--type=host").splitlines() if line.strip()]


def trust_leaves(root: Cluster, leaves: list[Cluster]) -> None:
    """Add ``leaves`` to the current profile (of ``root``) as a login would."""
    home = Path(os.environ["TELEPORT_HOME"])
    proxy_host = root.web_addr.rsplit(":", 1)[0]
    host_cas = {root.name: _host_ca_keys(root)}
    host_cas.update({leaf.name: _host_ca_keys(leaf) for leaf in leaves})
    known_hosts = home / "known_hosts"
    old = known_hosts.read_text() if known_hosts.exists() else ""
    lines = cluster_trust_lines(proxy_host, root.name, host_cas)
    known_hosts.write_text(merge_known_hosts(old, proxy_host, lines))
    profile_path = home / f"{proxy_host}.yaml"
    profile = json.loads(profile_path.read_text())
    profile["clusters"] = list(host_cas)
    profile_path.write_text(json.dumps(profile, indent=2) + "\n")
