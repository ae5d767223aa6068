"""`tsh clusters`, `tsh login <leaf>` and `tsh ls` against the test cluster's auth API.

The root's leaves are seeded in its remote_clusters.json, as the trusted
cluster join records them (issue #14's contract); nodes with labels come from
`nodes add --labels`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_public_identity

from tests.cluster.launch import Cluster, launch_cluster
from tests.integration._leaves import seed_leaf
from tests.integration._tsh import agent_lines, env_for, login
from tests.integration._tsh import run_tsh as tsh
from tsh._store.store import ProfileStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("root")
    c = launch_cluster(work / "data", name="root.test")
    c.add_user("alice", ["root", "ubuntu"])
    seed_leaf(c, work, "leaf-a.test", online=True, labels={"env": "prod", "team": "x"})
    seed_leaf(c, work, "leaf-b.test", online=False, labels={})
    c.admin("nodes", "add", "web1", "127.0.0.1:2201", "--labels", "env=prod,team=a")
    c.admin("nodes", "add", "web2", "127.0.0.1:2202", "--labels", "env=dev,teleport.dev/origin=x,a/b=c")
    c.admin("nodes", "add", "db1", "127.0.0.1:2203")
    yield c
    c.stop()


@pytest.fixture
def env(root: Cluster) -> dict[str, str]:
    env = env_for(root)
    r = login(root, "alice", env)
    assert r.returncode == 0, r.stderr
    return env


def test_clusters_text_lists_root_and_leaves(env: dict[str, str]) -> None:
    r = tsh("clusters", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "Cluster Name Status  Cluster Type Labels          Selected \n"
        "------------ ------- ------------ --------------- -------- \n"
        "root.test    online  root                         *        \n"
        "leaf-a.test  offline leaf         env=prod,team=x          \n"
        "leaf-b.test  offline leaf                                  \n"
    )
    quiet = tsh("clusters", "-q", env=env)
    assert quiet.stdout.splitlines()[0].split() == ["root.test", "online", "root"]
    assert "Selected" not in quiet.stdout and "*" not in quiet.stdout


def test_clusters_json_and_yaml(env: dict[str, str]) -> None:
    import yaml

    r = tsh("clusters", "--format", "json", env=env)
    data = json.loads(r.stdout)
    assert data[0] == {"cluster_name": "root.test", "status": "online", "cluster_type": "root",
                       "labels": None, "selected": True}  # fmt: skip
    assert data[1]["labels"] == {"env": "prod", "team": "x"} and data[2]["status"] == "offline"
    assert yaml.safe_load(tsh("clusters", "-f", "yaml", env=env).stdout) == data
    bad = tsh("clusters", "--format", "xml", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith('error: invalid format "xml"')


def test_login_leaf_reissues_without_a_password(root: Cluster, env: dict[str, str]) -> None:
    home = Path(env["TELEPORT_HOME"])
    store = ProfileStore(home)
    before = store.current()
    assert before is not None
    private_key = store.paths_for(before).private_key.read_bytes()
    r = tsh("login", "leaf-a.test", env=env, input="")  # stdin empty: no password to give
    assert r.returncode == 0, r.stderr
    assert "Cluster:            leaf-a.test" in r.stdout
    after = store.current()
    assert after is not None and after.cluster == "leaf-a.test" and after.root_cluster == "root.test"
    paths = store.paths_for(after)
    assert paths.private_key.read_bytes() == private_key  # same keys
    cert = load_ssh_public_identity(paths.ssh_cert("leaf-a.test").read_bytes())
    assert cert.extensions[b"teleport-route-to-cluster"] == b"leaf-a.test"
    assert abs(cert.valid_before - before.valid_before) <= 2  # same expiry as the root login
    root_cert = load_ssh_public_identity(paths.ssh_cert("root.test").read_bytes())
    assert root_cert.extensions[b"teleport-route-to-cluster"] == b"root.test"
    status = tsh("status", env=env)
    assert "Cluster:            leaf-a.test" in status.stdout
    assert "*" in [line.split()[-1] for line in tsh("clusters", env=env).stdout.splitlines()
                   if line.startswith("leaf-a.test")]  # fmt: skip
    back = tsh("login", "root.test", env=env)
    assert back.returncode == 0 and store.current().cluster == "root.test"  # type: ignore[union-attr]


def test_login_leaf_loads_its_certificate_into_the_agent(root: Cluster, openssh, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    """As real tsh (LocalKeyAgent.AddKey on reissue): the leaf's certificate joins the
    root's in the agent, each under its cluster's comment; -k no leaves the agent alone;
    logout takes both."""
    env = env_for(root, ssh_agent.sock)
    assert login(root, "alice", env).returncode == 0
    host = ProfileStore(env["TELEPORT_HOME"]).current().proxy_host  # type: ignore[union-attr]

    def certs() -> dict[str, bytes]:  # agent comment -> the certificate's route
        out = {}
        for line in agent_lines(openssh, ssh_agent.sock):
            if "-cert-v01@" in line:
                cert = load_ssh_public_identity(" ".join(line.split()[:2]).encode())
                out[line.split()[2]] = cert.extensions[b"teleport-route-to-cluster"]
        return out

    assert certs() == {f"teleport:{host}:root.test:alice": b"root.test"}
    r = tsh("login", "leaf-a.test", env=env, input="")
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr
    assert certs() == {f"teleport:{host}:root.test:alice": b"root.test",
                       f"teleport:{host}:leaf-a.test:alice": b"leaf-a.test"}  # fmt: skip
    r = tsh("login", "-k", "no", "leaf-b.test", env=env, input="")
    assert r.returncode == 0, r.stderr
    assert f"teleport:{host}:leaf-b.test:alice" not in certs()
    r = tsh("logout", env=env)
    assert r.returncode == 0, r.stderr
    assert certs() == {}


def test_login_leaf_from_the_environment(env: dict[str, str]) -> None:
    r = tsh("login", env={**env, "TELEPORT_CLUSTER": "leaf-b.test"})
    assert r.returncode == 0, r.stderr
    assert ProfileStore(env["TELEPORT_HOME"]).current().cluster == "leaf-b.test"  # type: ignore[union-attr]


def test_login_unknown_leaf_is_one_clear_line(env: dict[str, str]) -> None:
    home = Path(env["TELEPORT_HOME"])
    before = {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and p.name != ".lock"}
    r = tsh("login", "nope.test", env=env)
    assert r.returncode == 1
    assert r.stderr == 'error: unknown cluster "nope.test": root.test has no leaf cluster of that name\n'
    after = {p: p.read_bytes() for p in home.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_login_leaf_with_an_expired_login_uses_the_password(root: Cluster, env: dict[str, str]) -> None:
    store = ProfileStore(env["TELEPORT_HOME"])
    profile = store.current()
    assert profile is not None
    # An expired profile, as the clock sees it a day later.
    expired = profile._replace(valid_before=1)
    store.paths_for(profile).profile_file.write_text(expired.to_json())
    r = tsh("login", "leaf-a.test", "--user=alice", env=env, input="secret-pw\n")
    assert r.returncode == 0, r.stderr
    fresh = store.current()
    assert fresh is not None and fresh.cluster == "leaf-a.test" and fresh.valid_before > 1
    cert = load_ssh_public_identity(store.paths_for(fresh).ssh_cert("leaf-a.test").read_bytes())
    assert cert.extensions[b"teleport-route-to-cluster"] == b"leaf-a.test"  # the web login's route


def test_ls_table_sorted_with_sorted_labels(env: dict[str, str]) -> None:
    r = tsh("ls", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "Node Name Address        Labels                              \n"
        "--------- -------------- ----------------------------------- \n"
        "db1       127.0.0.1:2203                                     \n"
        "web1      127.0.0.1:2201 env=prod,team=a                     \n"
        "web2      127.0.0.1:2202 env=dev,a/b=c,teleport.dev/origin=x \n"
    )
    assert r.stderr == ""
    verbose = tsh("ls", "-v", env=env).stdout.splitlines()
    assert verbose[0].split() == ["Node", "Name", "Node", "ID", "Address", "Labels"]
    assert len(verbose[2].split()[1]) == 36  # a UUID


def test_ls_filters_formats_and_footer(env: dict[str, str]) -> None:
    assert tsh("ls", "env=prod", "--format", "names", env=env).stdout == "web1\n"
    assert tsh("ls", "--search", "web,dev", "-f", "names", env=env).stdout == "web2\n"
    data = json.loads(tsh("ls", "-f", "json", env=env).stdout)
    assert [n["spec"]["hostname"] for n in data] == ["db1", "web1", "web2"]
    assert data[1]["metadata"]["labels"] == {"env": "prod", "team": "a"}
    empty = tsh("ls", "--search", "nothing-matches", env=env)
    assert empty.returncode == 0
    assert empty.stdout == "Node Name Address Labels \n--------- ------- ------ \n"
    assert "Not seeing nodes?" in empty.stderr
    assert tsh("ls", "-f", "json", "env=none", env=env).stdout == "[]\n"
    bad = tsh("ls", "env", env=env)
    assert bad.returncode == 2 and bad.stderr == "error: invalid label 'env': expected key=value\n"


def test_not_logged_in_is_one_line(root: Cluster) -> None:
    env = env_for(root)
    for cmd in (["ls"], ["clusters"]):
        r = tsh(*cmd, env=env)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:"), r.stderr


def test_python_api_lists_clusters_and_nodes(env: dict[str, str]) -> None:
    import tsh

    with tsh.Client(home=env["TELEPORT_HOME"]) as client:
        clusters = client.clusters()
        assert [c.name for c in clusters] == ["root.test", "leaf-a.test", "leaf-b.test"]
        assert clusters[0] == tsh.ClusterInfo("root.test", "online", "root", None, True)
        assert clusters[1].labels == {"env": "prod", "team": "x"}
        nodes = client.nodes({"env": "prod"})
        assert [(n.hostname, n.addr) for n in nodes] == [("web1", "127.0.0.1:2201")]
        assert isinstance(nodes[0], tsh.NodeInfo)
        assert [n.hostname for n in client.nodes(search=["web"])] == ["web1", "web2"]


@pytest.fixture(scope="module")
def old_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A v16 root without the presence service and ListUnifiedResources (older servers)."""
    work = tmp_path_factory.mktemp("old-root")
    c = launch_cluster(work / "data", name="old.test", server_version="16.4.0",
                       extra_args=("--auth-unimplemented", "ListRemoteClusters,ListUnifiedResources"))
    c.add_user("alice", ["root"])
    seed_leaf(c, work, "leaf-old.test", online=True, labels={"env": "prod"})
    c.admin("nodes", "add", "web1", "127.0.0.1:2201", "--labels", "env=prod")
    yield c
    c.stop()


def test_older_servers_fall_back_and_v16_keys_reissue(old_root: Cluster) -> None:
    env = env_for(old_root)
    assert login(old_root, "alice", env).returncode == 0
    clusters = tsh("clusters", "-f", "json", env=env)
    assert clusters.returncode == 0, clusters.stderr
    # proxysites: the names, no labels (this test cluster's proxysites lists only itself)
    assert [c["cluster_name"] for c in json.loads(clusters.stdout)] == ["old.test"]
    listed = tsh("ls", "-f", "names", env=env)  # ListResources instead
    assert listed.returncode == 0 and listed.stdout == "web1\n", listed.stderr
    r = tsh("login", "leaf-old.test", env=env)  # v16: PublicKey (field 1), the one RSA key
    assert r.returncode == 0, r.stderr
    store = ProfileStore(env["TELEPORT_HOME"])
    profile = store.current()
    assert profile is not None and profile.cluster == "leaf-old.test"
    cert = load_ssh_public_identity(store.paths_for(profile).ssh_cert("leaf-old.test").read_bytes())
    assert cert.extensions[b"teleport-route-to-cluster"] == b"leaf-old.test"
