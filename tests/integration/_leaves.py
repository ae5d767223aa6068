"""Leaf clusters for the auth API tests, recorded at the root as a trusted-cluster join
records them (no tunnel: such a leaf is offline). Real joined leaves: tests/cluster/launch.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from tests.cluster._ca import Authority, public_line
from tests.cluster._state import ClusterState
from tests.cluster.launch import Cluster


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
