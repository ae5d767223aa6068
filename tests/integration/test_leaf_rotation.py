"""CA rotation while a leaf is connected: root + leaf + a real sshd in the leaf.

As in real Teleport, the root pushes its CAs to every connected leaf and takes
the leaf's host CA from it whenever they change (here over the tunnel's
heartbeat session, docs/protocol.md §15). The root records at the proxy, so
its own host CA is also what leaf sessions are terminated with: each root
rotation tests the tunnel, the recording root and the leaf's trust at once.

Each test leaves the clusters in standby with a finished rotation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.launch import Cluster, join_leaf, launch_cluster, wait_tunnel
from tests.cluster.sshd import SSHDNode, find_sshd, start_node
from tests.conftest import LOGIN
from tests.integration._tsh import env_for, login, run_tsh, ssh_with_config, tsh_config_file

pytestmark = pytest.mark.integration

USER = "rot-leaf-tester"
ROOT, LEAF = "rroot.test", "rleaf.test"


@dataclass
class Pair:
    root: Cluster
    leaf: Cluster
    node: SSHDNode  # node2 of the leaf
    node_dir: Path

    @property
    def proxy_host(self) -> str:
        return self.root.web_addr.rsplit(":", 1)[0]


def _reexport_user_cas(pair: Pair) -> None:
    """The leaf node admin's step: the leaf's and the root's user CAs into TrustedUserCAKeys.

    ``auth export --type=user`` of the root, as the seed page says (the leaf's
    own export leaves the root's out, as tctl's); sshd reads the file per login.
    """
    text = pair.leaf.admin("auth", "export", "--type=user") + pair.root.admin(
        "auth", "export", "--type=user")
    (pair.node_dir / "teleport_user_ca.pub").write_text("".join(
        ln.replace("cert-authority ", "", 1) + "\n" for ln in text.splitlines() if ln.strip()))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    clusters: list[Cluster] = []
    made: list[Pair] = []
    try:
        root = launch_cluster(tmp_path_factory.mktemp("rroot") / "data", name=ROOT,
                              recording="proxy")
        clusters.append(root)
        leaf = launch_cluster(tmp_path_factory.mktemp("rleaf") / "data", name=LEAF)
        clusters.append(leaf)
        root.add_user(USER, [LOGIN])
        join_leaf(root, leaf)
        node_dir = tmp_path_factory.mktemp("rleaf-node2")
        node = start_node(leaf.admin, LEAF, "node2", node_dir, sshd=find_sshd() or "",
                          trusted_user_cas=root.admin("auth", "export", "--type=user"),
                          data_dir=leaf.data_dir)
        made.append(Pair(root, leaf, node, node_dir))
        yield made[0]
    finally:
        if made:
            made[0].node.stop()
            clusters.append(made[0].leaf)  # a test may have restarted it
        for c in clusters:
            c.stop()


# --------------------------------------------------------------------------- helpers
def _keys(cluster: Cluster, ca_type: str) -> list[str]:
    """``<type> <base64>`` of each key ``auth export`` lists (trusted now, active first)."""
    out = []
    for line in cluster.admin("auth", "export", f"--type={ca_type}").splitlines():
        parts = line.split()
        i = 2 if parts[0] == "@cert-authority" else 1
        out.append(" ".join(parts[i : i + 2]))
    return out


def _rotate(cluster: Cluster, ca_type: str, phase: str) -> None:
    cluster.admin("auth", "rotate", f"--type={ca_type}", "--manual", f"--phase={phase}",
                  *(["--grace-period=1h"] if phase == "init" else []))


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # the CA push rides the tunnel's 1 s heartbeat


def _leaf_knows_root(pair: Pair, ca_type: str) -> list[str]:
    """The root's CA keys the leaf trusts (``trusted_clusters.json``, as pushed)."""
    data = json.loads((pair.leaf.data_dir / "trusted_clusters.json").read_text())
    return list(data["clusters"][ROOT][f"{ca_type}_ca"]["ssh"])


def _root_knows_leaf(pair: Pair) -> list[str]:
    data = json.loads((pair.root.data_dir / "remote_clusters.json").read_text())
    return list(data["clusters"][LEAF]["host_ca"]["ssh"])


def _expected_known_hosts(pair: Pair, root_keys: list[str], leaf_keys: list[str]) -> list[str]:
    """What the login must leave: the root's keys for its names, the leaf's and the root's
    for the leaf's (a recording root terminates leaf sessions, docs/protocol.md §14.4)."""
    def lines(cluster: str, keys: list[str]) -> list[str]:
        hosts = f"{pair.proxy_host},{cluster},*.{cluster}"
        return [f"@cert-authority {hosts} {k} type=host" for k in keys]

    return lines(ROOT, root_keys) + lines(LEAF, leaf_keys + root_keys)


def _recordings(pair: Pair) -> set[str]:
    """The root's recordings of sessions on node2 (``recordings ls``, one line each)."""
    return {ln for ln in pair.root.admin("recordings", "ls").splitlines() if " node2 " in f" {ln} "}


def _known_hosts(env: dict[str, str]) -> list[str]:
    return (Path(env["TELEPORT_HOME"]) / "known_hosts").read_text().splitlines()


def _cert_authorities(env: dict[str, str]) -> dict[str, list[str]]:
    """GetCertAuthorities (host) on the root's auth API, as the login calls it."""
    from tsh._authapi.client import AuthClient
    from tsh._connect import ProxyConnection
    from tsh._store.store import ProfileStore

    async def main() -> Any:
        store = ProfileStore(Path(env["TELEPORT_HOME"]))
        profile = store.current()
        assert profile is not None
        async with await ProxyConnection.open(profile, store, agent_path=env["SSH_AUTH_SOCK"]) as pc:
            async with AuthClient.for_profile(pc, store.paths_for(profile), ROOT) as client:
                return await client.cert_authorities("host")

    return {ca.cluster: list(ca.ssh_keys) for ca in asyncio.run(main())}


class Session:
    """One user's profile at the root, and the two ways to reach node2 of the leaf."""

    def __init__(self, pair: Pair, agent_sock: str, ssh: str, tmp_path: Path):
        self.pair = pair
        self.env = env_for(pair.root, agent_sock)
        self.ssh = ssh
        self.tmp_path = tmp_path

    def login(self) -> None:
        r = login(self.pair.root, USER, self.env)
        assert r.returncode == 0, r.stderr
        assert "leaf clusters were not fetched" not in r.stderr, r.stderr

    def reaches_node(self, plain_ssh: bool = True) -> None:
        """``tsh ssh --cluster=<leaf>`` to node2, then (``plain_ssh``) OpenSSH's ``ssh
        node2.<leaf>`` through a fresh ``tsh config`` (each a root-recorded session)."""
        node = self.pair.node
        r = run_tsh("ssh", f"--cluster={LEAF}", f"--port={node.port}", f"{LOGIN}@node2",
                    "echo ok", env=self.env)
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
        if not plain_ssh:
            return
        cfg = tsh_config_file(self.tmp_path / "ssh_config", f"--port={node.port}", env=self.env)
        r = ssh_with_config(self.ssh, cfg, f"{LOGIN}@node2.{LEAF}", "echo ok", env=self.env)
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr

    def root_cert_b64(self) -> str:
        (cert,) = Path(self.env["TELEPORT_HOME"]).glob(f"keys/*/{USER}-ssh/{ROOT}-cert.pub")
        return cert.read_text().split()[1]


@pytest.fixture
def session(pair: Pair, ssh_agent, openssh, tmp_path: Path) -> Session:  # type: ignore[no-untyped-def]
    return Session(pair, ssh_agent.sock, openssh.ssh, tmp_path)


# --------------------------------------------------------------------------- the tests
def test_root_host_rotation_reaches_the_leaf_and_the_client(pair: Pair, session: Session) -> None:
    leaf_key = _keys(pair.leaf, "host")
    (old,) = _keys(pair.root, "host")
    session.login()
    assert _known_hosts(session.env) == _expected_known_hosts(pair, [old], leaf_key)
    before = _recordings(pair)

    _rotate(pair.root, "host", "init")
    old_, new = _keys(pair.root, "host")
    assert old_ == old
    _wait_for("the leaf to learn the root's new host CA",
              lambda: _leaf_knows_root(pair, "host") == [old, new])
    session.login()
    # GetCertAuthorities follows the phase (both keys, active first); the login writes
    # exactly those lines.
    assert _cert_authorities(session.env) == {ROOT: [old, new], LEAF: leaf_key}
    assert _known_hosts(session.env) == _expected_known_hosts(pair, [old, new], leaf_key)
    session.reaches_node(plain_ssh=False)

    _rotate(pair.root, "host", "update_clients")
    _rotate(pair.root, "host", "update_servers")  # the proxy and the tunnel present new certs
    _wait_for("the leaf to learn the swapped key sets",
              lambda: _leaf_knows_root(pair, "host") == [new, old])
    session.login()
    assert _cert_authorities(session.env) == {ROOT: [new, old], LEAF: leaf_key}
    assert _known_hosts(session.env) == _expected_known_hosts(pair, [new, old], leaf_key)
    session.reaches_node()

    _rotate(pair.root, "host", "standby")
    _wait_for("the leaf to drop the root's old host CA",
              lambda: _leaf_knows_root(pair, "host") == [new])
    session.login()
    assert _cert_authorities(session.env) == {ROOT: [new], LEAF: leaf_key}
    assert _known_hosts(session.env) == _expected_known_hosts(pair, [new], leaf_key)
    session.reaches_node()
    # the recording root terminated (and recorded) every one of those leaf sessions
    _wait_for("the recordings", lambda: len(_recordings(pair) - before) == 5)


def test_tunnel_reconnects_trusting_only_the_roots_new_host_ca(pair: Pair, session: Session
                                                                ) -> None:
    """After a root host rotation the leaf knows only the new CA: a fresh tunnel still
    comes up, since the root's tunnel listener presents a new-CA certificate."""
    (current,) = _leaf_knows_root(pair, "host")
    assert _keys(pair.root, "host") == [current]
    started = time.time()
    pair.leaf.stop()
    pair.leaf = launch_cluster(pair.leaf.data_dir, name=LEAF)  # the same leaf, started again
    wait_tunnel(pair.root, LEAF, since=started)
    session.login()
    session.reaches_node(plain_ssh=False)


def test_root_user_rotation_keeps_root_users_on_leaf_nodes(pair: Pair, session: Session) -> None:
    (old,) = _keys(pair.root, "user")
    session.login()
    old_cert = session.root_cert_b64()

    def leaf_allows(cert: str) -> bool:  # the leaf's login check for its OpenSSH nodes
        return pair.leaf.admin("auth", "principals", LOGIN, cert).strip() == LOGIN

    _rotate(pair.root, "user", "init")
    old_, new = _keys(pair.root, "user")
    assert old_ == old
    _wait_for("the leaf to learn the root's new user CA",
              lambda: _leaf_knows_root(pair, "user") == [old, new])
    _reexport_user_cas(pair)  # before update_clients signs with the new key
    _rotate(pair.root, "user", "update_clients")
    _wait_for("the leaf to learn the swapped key sets",
              lambda: _leaf_knows_root(pair, "user") == [new, old])
    session.reaches_node(plain_ssh=False)  # the old certificate during the grace period
    session.login()  # a certificate from the new key: the leaf's auth and node accept it
    assert session.root_cert_b64() != old_cert
    session.reaches_node()
    assert leaf_allows(old_cert) and leaf_allows(session.root_cert_b64())
    r = run_tsh("login", LEAF, env=session.env)  # GenerateUserCerts at the root, no password
    assert r.returncode == 0, r.stderr
    r = run_tsh("login", ROOT, env=session.env)
    assert r.returncode == 0, r.stderr

    _rotate(pair.root, "user", "update_servers")
    _rotate(pair.root, "user", "standby")
    _wait_for("the leaf to drop the root's old user CA",
              lambda: _leaf_knows_root(pair, "user") == [new])
    assert not leaf_allows(old_cert) and leaf_allows(session.root_cert_b64())
    _reexport_user_cas(pair)  # drop the old CA from the node too
    session.reaches_node()


def test_leaf_host_rotation_reaches_the_root(pair: Pair, session: Session) -> None:
    (root_key,) = _keys(pair.root, "host")
    (old,) = _keys(pair.leaf, "host")
    _rotate(pair.leaf, "host", "init")
    old_, new = _keys(pair.leaf, "host")
    assert old_ == old
    _wait_for("the root to learn the leaf's new host CA",
              lambda: _root_knows_leaf(pair) == [old, new])
    session.login()
    assert _cert_authorities(session.env) == {ROOT: [root_key], LEAF: [old, new]}
    assert _known_hosts(session.env) == _expected_known_hosts(pair, [root_key], [old, new])

    _rotate(pair.leaf, "host", "update_clients")
    _rotate(pair.leaf, "host", "update_servers")  # the leaf's auth API presents a new-CA cert
    _rotate(pair.leaf, "host", "standby")
    _wait_for("the root to drop the leaf's old host CA", lambda: _root_knows_leaf(pair) == [new])
    session.login()
    assert _known_hosts(session.env) == _expected_known_hosts(pair, [root_key], [new])
    # the leaf's auth API through the tunnel, trusted by the new CA only (cas/<leaf>.pem)
    r = run_tsh("ls", f"--cluster={LEAF}", "--format=names", env=session.env)
    assert (r.returncode, r.stdout) == (0, "node2\n"), r.stderr
