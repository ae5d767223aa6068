"""The auth gRPC API through the proxy's ``proxy:@<cluster>`` subsystem, against the test cluster.

In-process tsh._authapi calls over a real SSH connection to the proxy, a real
mutual TLS and HTTP/2. Leaves are seeded in the root's remote_clusters.json,
as the trusted-cluster join writes it (issue #14's contract).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_public_identity

from tests.cluster._ca import Authority, public_line
from tests.cluster._state import ClusterState
from tests.cluster.launch import Cluster, launch_cluster
from tests.integration._leaves import seed_leaf
from tests.integration._tsh import PASSWORD, tsh_argv
from tsh._authapi._pb import authservice_pb2 as authpb
from tsh._authapi.client import AuthClient
from tsh._connect import ProxyConnection
from tsh._exceptions import AuthAPIError
from tsh._store.store import ProfileStore

pytestmark = pytest.mark.integration


def tsh_login(cluster: Cluster, home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TELEPORT_HOME=str(home), SSL_CERT_FILE=str(cluster.tls_ca))
    return subprocess.run(
        [*tsh_argv(), "login", f"--proxy={cluster.web_addr}", "--user=alice", *extra],
        input=PASSWORD + "\n", text=True, capture_output=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = launch_cluster(tmp_path_factory.mktemp("root") / "data", name="root.test")
    c.add_user("alice", ["root"])
    yield c
    c.stop()


@pytest.fixture(scope="module")
def home(root: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("tsh-home")
    r = tsh_login(root, home)
    assert r.returncode == 0, r.stderr
    return home


def call(home: Path, fn: Any, cluster: str | None = None) -> Any:
    """``await fn(auth_client)`` on the current profile's cluster (or ``cluster``)."""

    async def main() -> Any:
        store = ProfileStore(home)
        profile = store.current()
        assert profile is not None
        async with await ProxyConnection.open(profile, store) as pc:
            async with AuthClient.for_profile(pc, store.paths_for(profile), cluster) as client:
                return await fn(client)

    return asyncio.run(main())


def test_ping_names_the_cluster(home: Path) -> None:
    ping = call(home, lambda c: c.ping())
    assert ping.ClusterName == "root.test" and ping.ServerVersion == "17.0.0"


def test_host_cert_authorities_list_root_and_leaves(root: Cluster, home: Path, tmp_path: Path) -> None:
    leaf = seed_leaf(root, tmp_path, "leaf-ca.test", online=True, labels={})
    cas = {ca.cluster: ca for ca in call(home, lambda c: c.cert_authorities("host"))}
    assert set(cas) >= {"root.test", "leaf-ca.test"}
    assert cas["leaf-ca.test"].ssh_keys == (public_line(leaf.host_ca),)
    assert cas["leaf-ca.test"].tls_certs == (leaf.tls_ca_pem.decode(),)
    root_ca = Authority.load(ClusterState.open(root.data_dir))
    assert cas["root.test"].ssh_keys == (public_line(root_ca.host_ca),)


def test_remote_clusters_status_and_labels(root: Cluster, home: Path, tmp_path: Path) -> None:
    seed_leaf(root, tmp_path, "leaf-on.test", online=True, labels={"env": "prod"})
    seed_leaf(root, tmp_path, "leaf-off.test", online=False, labels={})
    leaves = {rc.name: rc for rc in call(home, lambda c: c.remote_clusters())}
    # Joined, but no reverse tunnel up: offline whatever the stored heartbeat
    # (tests/integration/test_trusted_clusters.py has leaves with tunnels).
    assert leaves["leaf-on.test"].status == "offline"
    assert leaves["leaf-on.test"].labels == {"env": "prod"}
    assert leaves["leaf-on.test"].last_heartbeat is not None
    assert leaves["leaf-off.test"].status == "offline"
    assert leaves["leaf-off.test"].last_heartbeat is None


def test_list_nodes_pages_filters_and_searches(root: Cluster, home: Path) -> None:
    nodes = {f"n{i:05d}": {"addr": f"10.0.{i // 250}.{i % 250 + 1}:22",
                           "labels": {"env": "prod" if i % 3 == 0 else "dev"}}
             for i in range(2345)}  # fmt: skip
    (root.data_dir / "nodes.json").write_text(json.dumps({"nodes": nodes}))
    listed = call(home, lambda c: c.list_nodes())
    assert [n.hostname for n in listed] == sorted(nodes)  # three pages, nothing lost or repeated
    assert len({n.id for n in listed}) == 2345
    prod = call(home, lambda c: c.list_nodes({"env": "prod"}))
    assert len(prod) == 782 and all(n.labels == {"env": "prod"} for n in prod)
    found = call(home, lambda c: c.list_nodes(None, ["n0123"]))
    assert [n.hostname for n in found] == [f"n0123{i}" for i in range(10)]


def test_unknown_method_is_unimplemented_as_grpc_go_says(home: Path) -> None:
    async def unknown(c: AuthClient) -> Any:
        return await c._call("/proto.AuthService/GetNodes", authpb.PingRequest(), authpb.PingResponse)

    with pytest.raises(AuthAPIError) as err:
        call(home, unknown)
    assert err.value.status == "UNIMPLEMENTED"  # not UNKNOWN: the answer had a content-type
    assert "unknown method GetNodes for service proto.AuthService" in str(err.value)

    async def unknown_service(c: AuthClient) -> Any:
        return await c._call("/teleport.nope.v1.X/Y", authpb.PingRequest(), authpb.PingResponse)

    with pytest.raises(AuthAPIError, match="unknown service teleport.nope.v1.X") as err:
        call(home, unknown_service)
    assert err.value.status == "UNIMPLEMENTED"


def _reissue(home: Path, route: str) -> Any:
    store = ProfileStore(home)
    profile = store.current()
    assert profile is not None
    paths = store.paths_for(profile)

    async def go(c: AuthClient) -> Any:
        return await c.generate_user_certs(
            ssh_public_key=paths.public_key.read_text(),
            tls_public_key=None,
            username="alice",
            expires=profile.valid_before,
            route_to_cluster=route,
            split_keys=True,
        )

    return call(home, go), profile


def test_generate_user_certs_routes_to_a_known_leaf(root: Cluster, home: Path, tmp_path: Path) -> None:
    seed_leaf(root, tmp_path, "leaf-route.test", online=True, labels={})
    certs, profile = _reissue(home, "leaf-route.test")
    cert = load_ssh_public_identity(certs.ssh.encode())
    assert cert.extensions[b"teleport-route-to-cluster"] == b"leaf-route.test"
    assert abs(cert.valid_before - profile.valid_before) <= 2  # expires with the root login
    assert cert.valid_principals[0] == b"root"


def test_generate_user_certs_unknown_leaf_is_not_found(home: Path) -> None:
    with pytest.raises(AuthAPIError, match='remote cluster "nope.test" is not found') as err:
        _reissue(home, "nope.test")
    assert err.value.status == "NOT_FOUND"


def test_an_auth_server_signed_by_another_ca_is_not_trusted(home: Path, tmp_path: Path) -> None:
    other = Authority.load(ClusterState.init(tmp_path / "other", "root.test"))
    store = ProfileStore(home)
    profile = store.current()
    assert profile is not None
    ca_file = store.paths_for(profile).tls_ca("root.test")
    saved = ca_file.read_bytes()
    ca_file.write_bytes(other.tls_ca_pem)
    try:
        with pytest.raises(AuthAPIError, match="root.test is not trusted") as err:
            call(home, lambda c: c.ping())
    finally:
        ca_file.write_bytes(saved)
    assert err.value.status == "UNAVAILABLE"


def test_an_unknown_cluster_gets_the_proxys_text(home: Path, tmp_path: Path) -> None:
    store = ProfileStore(home)
    profile = store.current()
    assert profile is not None
    ca = store.paths_for(profile).tls_ca("ghost.test")
    ca.write_bytes(store.paths_for(profile).tls_ca("root.test").read_bytes())
    try:
        with pytest.raises(AuthAPIError, match='unknown cluster "ghost.test"'):
            call(home, lambda c: c.ping(), cluster="ghost.test")
    finally:
        ca.unlink()


def test_login_trusts_every_cluster_the_auth_api_lists(root: Cluster, tmp_path: Path) -> None:
    leaf = seed_leaf(root, tmp_path, "leaf-login.test", online=False, labels={})
    home = tmp_path / "home"
    r = tsh_login(root, home)
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr
    store = ProfileStore(home)
    profile = store.current()
    assert profile is not None
    assert profile.clusters[0] == "root.test" and "leaf-login.test" in profile.clusters
    assert list(profile.clusters[1:]) == sorted(profile.clusters[1:])
    paths = store.paths_for(profile)
    assert paths.tls_ca("leaf-login.test").read_text() == leaf.tls_ca_pem.decode()
    known = paths.known_hosts.read_text().splitlines()
    host = profile.proxy_host
    assert (f"@cert-authority {host},leaf-login.test,*.leaf-login.test "
            f"{public_line(leaf.host_ca)} type=host") in known  # fmt: skip
    assert any(line.startswith(f"@cert-authority {host},root.test,*.root.test ") for line in known)
    env = dict(os.environ, TELEPORT_HOME=str(home))
    config = subprocess.run([*tsh_argv(), "config"], capture_output=True, text=True, env=env)
    assert config.returncode == 0 and "leaf-login.test" in config.stdout
