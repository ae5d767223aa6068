"""Trust a profile's leaf clusters by hand, until the login learns them from the auth API.

Real tsh learns every leaf's host CA after login from the root's auth API
(``GetCertAuthorities``; trusted-clusters.md §3). Until tsh-py's login does
the same, tests put the leaves into the profile here: the known_hosts lines
from :func:`tsh._core.knownhosts.cluster_trust_lines` with each leaf's
``auth export --type=host``, and ``clusters`` in the profile file. One place,
so the post-login step can replace it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.cluster.launch import Cluster
from tsh._core.knownhosts import cluster_trust_lines, merge_known_hosts


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
