"""Trusted (leaf) clusters end to end: root + leaves + a real sshd in each leaf.

The seed page's "OpenSSH and Trusted Clusters": leaves join a root with a
token, keep a reverse tunnel to it, and the root proxy routes
``proxy:host:port@<leaf>`` over it. Leaf nodes are OpenSSH ``sshd``s that
trust the root's user CA (exported from the root, as tctl's export of the
leaf leaves it out) and ask their leaf which logins the mapped roles allow.

The clusters are shared by the module: ``root.test`` (node recording) and
``rec.test`` (recording proxy), with ``leaf1.test`` joined to both (role
``access`` -> ``access``: the certificate's logins) and ``leaf2.test`` joined
to ``root.test`` (role ``access`` -> ``limited``: only the local user's login).
Each leaf runs a node called ``node2``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.cluster.launch import Cluster, join_leaf, launch_cluster
from tests.cluster.sshd import SSHDNode, find_sshd, start_node
from tests.conftest import LOGIN
from tests.integration._profiles import request_cert
from tests.integration._tsh import (
    env_for,
    login,
    run_tsh,
    ssh_with_config,
    tsh_argv,
    tsh_config_file,
)

pytestmark = pytest.mark.integration

USER = "leaf-tester"
#: A second OS login the root grants; leaf2's role does not (it exists on Debian).
OTHER_LOGIN = "nobody"
OFFLINE_THRESHOLD = "2s"


@dataclass
class Trust:
    root: Cluster
    rec: Cluster
    leaf1: Cluster
    leaf2: Cluster
    nodes: dict[str, SSHDNode]  # leaf name -> its node2


def _node(leaf: Cluster, roots: list[Cluster], workdir) -> SSHDNode:  # type: ignore[no-untyped-def]
    """node2 of ``leaf``: trusts the user CAs of ``roots`` and asks the leaf about logins."""
    exports = "".join(r.admin("auth", "export", "--type=user") for r in roots)
    return start_node(leaf.admin, leaf.name, "node2", workdir, sshd=find_sshd() or "",
                      trusted_user_cas=exports, data_dir=leaf.data_dir)


@pytest.fixture(scope="module")
def trust(tmp_path_factory) -> Iterator[Trust]:  # type: ignore[no-untyped-def]
    started: list[Cluster] = []
    nodes: dict[str, SSHDNode] = {}

    def launch(name: str, recording: str = "node") -> Cluster:
        c = launch_cluster(tmp_path_factory.mktemp(name) / "data", name=name, recording=recording,
                           extra_args=("--offline-threshold", OFFLINE_THRESHOLD))
        started.append(c)
        return c

    try:
        root, rec = launch("root.test"), launch("rec.test", "proxy")
        leaf1, leaf2 = launch("leaf1.test"), launch("leaf2.test")
        for r in (root, rec):
            r.add_user(USER, [LOGIN, OTHER_LOGIN])
        leaf2.admin("roles", "add", "limited", f"--logins={LOGIN}")
        join_leaf(root, leaf1, labels="env=test")
        join_leaf(rec, leaf1)
        join_leaf(root, leaf2, role_map="access:limited")
        nodes[leaf1.name] = _node(leaf1, [root, rec], tmp_path_factory.mktemp("leaf1-node2"))
        nodes[leaf2.name] = _node(leaf2, [root], tmp_path_factory.mktemp("leaf2-node2"))
        yield Trust(root, rec, leaf1, leaf2, nodes)
    finally:
        for n in nodes.values():
            n.stop()
        for c in started:
            c.stop()


def _logged_in(root: Cluster, agent, leaves: list[Cluster]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = env_for(root, agent.sock)
    r = login(root, USER, env)
    assert r.returncode == 0, r.stderr
    # The login learnt every leaf's host CA from the root's auth API.
    profile = json.loads((Path(env["TELEPORT_HOME"]) / f"{root.web_addr.rsplit(':', 1)[0]}.yaml")
                         .read_text())
    assert {leaf.name for leaf in leaves} <= set(profile["clusters"]), profile["clusters"]
    return env


def _server_port(stdout: str) -> int:
    """The node's port from ``echo $SSH_CONNECTION`` (client ip, port, server ip, port)."""
    return int(stdout.split()[3])


def _proxysites(cluster: Cluster) -> list[dict[str, str]]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    cert = asyncssh.import_certificate(base64.b64decode(request_cert(cluster, USER, key)["cert"]))
    known = asyncssh.import_known_hosts(cluster.admin("auth", "export", "--type=host").replace(
        f"*.{cluster.name} ", f"*.{cluster.name},127.0.0.1 ", 1))

    async def ask() -> bytes:
        async with asyncssh.connect(
            "127.0.0.1", cluster.ssh_proxy_port, username=LOGIN, client_keys=[(key, cert)],
            known_hosts=known, agent_path=None, config=None,
        ) as conn:
            r = await conn.run(subsystem="proxysites", encoding=None, check=True, timeout=20)
            return bytes(r.stdout or b"")

    return list(json.loads(asyncio.run(ask())))


# --------------------------------------------------------------------------- join, proxysites
def test_proxysites_lists_root_and_connected_leaves(trust: Trust) -> None:
    sites = _proxysites(trust.root)
    assert [s["name"] for s in sites] == ["root.test", "leaf1.test", "leaf2.test"]
    assert {s["status"] for s in sites} == {"online"}
    assert [s["name"] for s in _proxysites(trust.rec)] == ["rec.test", "leaf1.test"]


def test_root_stores_the_leaf_with_the_token_labels(trust: Trust) -> None:
    stored = json.loads((trust.root.data_dir / "remote_clusters.json").read_text())["clusters"]
    assert sorted(stored) == ["leaf1.test", "leaf2.test"]
    assert stored["leaf1.test"]["labels"] == {"env": "test"}
    leaf_ca = trust.leaf1.admin("auth", "export", "--type=host").split()[2:4]
    assert stored["leaf1.test"]["host_ca"]["ssh"] == [" ".join(leaf_ca)]
    trusted = json.loads((trust.leaf1.data_dir / "trusted_clusters.json").read_text())
    assert sorted(trusted["clusters"]) == ["rec.test", "root.test"]  # named as the roots say
    root_user_ca = trust.root.admin("auth", "export", "--type=user").split()[1:3]
    assert trusted["clusters"]["root.test"]["user_ca"]["ssh"] == [" ".join(root_user_ca)]


def test_join_with_a_bad_token_is_refused(trust: Trust, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = (trust.leaf2.data_dir / "trusted_clusters.json").read_bytes()
    with pytest.raises(RuntimeError, match="the remote server denied access: invalid cluster token"):
        trust.leaf2.admin(
            "trusted-clusters", "add", f"--root-proxy={trust.rec.web_addr}",
            f"--root-ca={trust.rec.tls_ca}", "--token=not-a-token", "--role-map=access:access",
        )  # fmt: skip
    assert (trust.leaf2.data_dir / "trusted_clusters.json").read_bytes() == before
    assert "leaf2.test" not in (trust.rec.data_dir / "remote_clusters.json").read_text()


def test_join_checks_the_roots_tls_certificate(trust: Trust) -> None:
    token = trust.rec.admin("tokens", "add", "--type=trusted_cluster").strip()
    with pytest.raises(RuntimeError, match="misconfigured HTTP/TLS certificate"):
        trust.leaf2.admin(
            "trusted-clusters", "add", f"--root-proxy={trust.rec.web_addr}",
            f"--root-ca={trust.root.tls_ca}", f"--token={token}", "--role-map=access:access",
        )  # fmt: skip


def test_join_refuses_an_undefined_local_role(trust: Trust) -> None:
    token = trust.rec.admin("tokens", "add", "--type=trusted_cluster").strip()
    with pytest.raises(RuntimeError, match='a role "ghost" referenced in a mapping'):
        trust.leaf2.admin(
            "trusted-clusters", "add", f"--root-proxy={trust.rec.web_addr}",
            f"--root-ca={trust.rec.tls_ca}", f"--token={token}", "--role-map=access:ghost",
        )  # fmt: skip


# --------------------------------------------------------------------------- tsh ssh
def test_tsh_ssh_to_leaf_nodes_by_flag_and_environment(trust: Trust, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    env = _logged_in(trust.root, ssh_agent, [trust.leaf1, trust.leaf2])
    for leaf, extra, flags in (
        (trust.leaf1, {}, ["--cluster=leaf1.test"]),
        (trust.leaf2, {"TELEPORT_CLUSTER": "leaf2.test"}, []),
    ):
        node = trust.nodes[leaf.name]
        r = run_tsh("ssh", *flags, f"--port={node.port}", f"{LOGIN}@node2", "echo $SSH_CONNECTION",
                    env={**env, **extra})
        assert r.returncode == 0, r.stderr
        assert _server_port(r.stdout) == node.port  # the same name, each leaf's own node


def test_tsh_proxy_ssh_takes_the_cluster_from_the_environment(
    trust: Trust, ssh_agent, openssh
) -> None:  # type: ignore[no-untyped-def]
    env = _logged_in(trust.root, ssh_agent, [trust.leaf1, trust.leaf2])
    node = trust.nodes[trust.leaf2.name]
    known_hosts = os.path.join(env["TELEPORT_HOME"], "known_hosts")
    hop = " ".join(tsh_argv(installed=False)) + " proxy ssh %r@%h:%p"
    r = subprocess.run(
        [openssh.ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"ProxyCommand={hop}",
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-p", str(node.port), f"{LOGIN}@node2.leaf2.test", "echo $SSH_CONNECTION"],
        capture_output=True, text=True, env={**env, "TELEPORT_CLUSTER": "leaf2.test"},
        stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _server_port(r.stdout) == node.port


def test_login_to_a_leaf_makes_it_the_default_cluster(trust: Trust, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    env = env_for(trust.root, ssh_agent.sock)
    r = login(trust.root, USER, env, "--cluster=leaf2.test")
    assert r.returncode == 0, r.stderr
    node = trust.nodes[trust.leaf2.name]
    r = run_tsh("ssh", f"--port={node.port}", f"{LOGIN}@node2", "echo $SSH_CONNECTION", env=env)
    assert r.returncode == 0, r.stderr
    assert _server_port(r.stdout) == node.port


def test_tsh_ls_cluster_asks_the_leafs_auth_server_over_the_tunnel(trust: Trust, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    # proxy:@<leaf>: the root proxy pipes the stream over the leaf's reverse tunnel to the
    # leaf's own auth server, which lists the leaf's nodes (the root has none).
    env = _logged_in(trust.root, ssh_agent, [trust.leaf1, trust.leaf2])
    for leaf in (trust.leaf1, trust.leaf2):
        r = run_tsh("ls", f"--cluster={leaf.name}", "-f", "json", env=env)
        assert r.returncode == 0, r.stderr
        (row,) = json.loads(r.stdout)
        assert row["spec"]["hostname"] == "node2", row
        assert row["spec"]["addr"].endswith(f":{trust.nodes[leaf.name].port}"), row
    r = run_tsh("ls", "-f", "names", env=env)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr


def test_unknown_leaf_gives_teleports_text(trust: Trust, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    env = _logged_in(trust.root, ssh_agent, [trust.leaf1])
    r = run_tsh("ssh", "--cluster=nowhere.test", f"{LOGIN}@node2", "true", env=env)
    assert r.returncode != 0
    assert 'invalid format for proxy request: unknown cluster "nowhere.test"' in r.stderr


def test_leaf_node_refuses_a_login_the_mapped_role_does_not_allow(trust: Trust, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    env = _logged_in(trust.root, ssh_agent, [trust.leaf1, trust.leaf2])
    node = trust.nodes[trust.leaf2.name]
    refused = run_tsh("ssh", "--cluster=leaf2.test", f"--port={node.port}",
                      f"{OTHER_LOGIN}@node2", "true", env=env)
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr
    # leaf1 maps to `access`, whose logins are the certificate's: the same login gets in
    # (the account has no shell, so it fails after the login, not at it).
    node1 = trust.nodes[trust.leaf1.name]
    allowed = run_tsh("ssh", "--cluster=leaf1.test", f"--port={node1.port}",
                      f"{OTHER_LOGIN}@node2", "true", env=env)
    assert "Permission denied" not in allowed.stderr, allowed.stderr
    ok = run_tsh("ssh", "--cluster=leaf2.test", f"--port={node.port}", f"{LOGIN}@node2", "true",
                 env=env)
    assert ok.returncode == 0, ok.stderr


# --------------------------------------------------------------------------- plain OpenSSH
@pytest.mark.parametrize("root_name", ["root.test", "rec.test"], ids=["node-recording",
                                                                      "proxy-recording"])
def test_plain_ssh_to_a_leaf_node_with_the_generated_config(
    trust: Trust, ssh_agent, openssh, tmp_path, root_name: str
) -> None:  # type: ignore[no-untyped-def]
    root = trust.root if root_name == "root.test" else trust.rec
    env = _logged_in(root, ssh_agent, [trust.leaf1])
    node = trust.nodes[trust.leaf1.name]
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}", env=env)
    text = cfg.read_text()
    assert "Host *.leaf1.test " in text and "--cluster='leaf1.test'" in text
    before = root.admin("recordings", "ls")
    r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@node2.leaf1.test", "echo $SSH_CONNECTION",
                        env=env)
    assert r.returncode == 0, r.stderr
    assert _server_port(r.stdout) == node.port
    recordings = root.admin("recordings", "ls")
    if root is trust.rec:  # the root terminated and recorded the leaf session
        new = [line for line in recordings.splitlines() if line not in before.splitlines()]
        assert len(new) == 1 and " node2 " in f" {new[0]} ", recordings
    else:
        assert recordings == before


@pytest.mark.parametrize("root_name", ["root.test", "rec.test"], ids=["node-recording",
                                                                      "proxy-recording"])
def test_tsh_scp_to_a_leaf_node(trust: Trust, ssh_agent, tmp_path, root_name: str) -> None:  # type: ignore[no-untyped-def]
    root = trust.root if root_name == "root.test" else trust.rec
    env = _logged_in(root, ssh_agent, [trust.leaf1])
    node = trust.nodes[trust.leaf1.name]
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(1 << 20))
    remote = tmp_path / "remote"  # the node is this machine: its paths are ours
    remote.mkdir()
    r = run_tsh("scp", "--cluster=leaf1.test", "-P", str(node.port), str(src),
                f"{LOGIN}@node2:{remote}/", env=env)
    assert r.returncode == 0, r.stderr
    assert (remote / "payload.bin").read_bytes() == src.read_bytes()


def test_tsh_config_cluster_flag_keeps_one_block_pair(trust: Trust, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    env = _logged_in(trust.root, ssh_agent, [trust.leaf1, trust.leaf2])
    full = run_tsh("config", env=env)
    assert full.returncode == 0, full.stderr
    assert [ln for ln in full.stdout.splitlines() if ln.startswith("# Common flags")] == [
        "# Common flags for all root.test hosts", "# Common flags for all leaf1.test hosts",
        "# Common flags for all leaf2.test hosts",
    ]
    # the root's certificate for every block, as real tsh (the proxy routes it to any leaf)
    certs = {ln.strip() for ln in full.stdout.splitlines() if "CertificateFile" in ln}
    assert len(certs) == 1 and certs.pop().endswith('root.test-cert.pub"')
    one = run_tsh("config", "--cluster=leaf2.test", env=env)
    assert one.returncode == 0, one.stderr
    assert "Host *.leaf2.test" in one.stdout and "root.test hosts" not in one.stdout
    bad = run_tsh("config", "--cluster=ghost.test", env=env)
    assert bad.returncode != 0 and "unknown cluster 'ghost.test'" in bad.stderr


# --------------------------------------------------------------------------- a leaf goes away
def _wait_absent(root: Cluster, leaf: str) -> None:
    deadline = time.monotonic() + 20
    while leaf in [s["name"] for s in _proxysites(root)]:
        assert time.monotonic() < deadline, f"{leaf} is still in proxysites"
        time.sleep(0.1)  # the root drops the site when the tunnel's TCP connection closes



def test_stopped_leaf_goes_offline_then_away(trust: Trust, ssh_agent, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    leaf = launch_cluster(tmp_path_factory.mktemp("leaf3") / "data", name="leaf3.test")
    try:
        join_leaf(trust.root, leaf)
        assert "leaf3.test" in [s["name"] for s in _proxysites(trust.root)]
        # The leaf leaves (trusted-clusters rm): its tunnel closes at once...
        leaf.admin("trusted-clusters", "rm", "root.test")
        _wait_absent(trust.root, "leaf3.test")
        # ...and comes back with a new join.
        join_leaf(trust.root, leaf)
        assert "leaf3.test" in [s["name"] for s in _proxysites(trust.root)]
        # A frozen leaf keeps its TCP connection but sends no heartbeat: offline.
        os.kill(leaf.proc.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                status = {s["name"]: s["status"] for s in _proxysites(trust.root)}
                if status.get("leaf3.test") == "offline":
                    break
                time.sleep(0.2)  # the threshold is 2s
            assert status.get("leaf3.test") == "offline"
        finally:
            os.kill(leaf.proc.pid, signal.SIGCONT)
    finally:
        leaf.stop()
    # Stopped: the tunnel is gone, the leaf leaves proxysites and cannot be reached.
    _wait_absent(trust.root, "leaf3.test")
    env = _logged_in(trust.root, ssh_agent, [trust.leaf1])
    r = run_tsh("ssh", "--cluster=leaf3.test", f"{LOGIN}@node2", "true", env=env)
    assert r.returncode != 0
    assert 'unknown cluster "leaf3.test"' in r.stderr


@pytest.mark.parametrize("form", ["openssh", "tsh"])
def test_one_root_proxy_connection_serves_every_clusters_nodes(
    trust: Trust, ssh_agent, openssh, tmp_path, form: str
) -> None:  # type: ignore[no-untyped-def]
    """Hop reuse (docs/protocol.md §19): the cluster is in the subsystem, not the socket's name."""
    root = trust.root
    env = _logged_in(root, ssh_agent, [trust.leaf1, trust.leaf2])
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={trust.nodes[trust.leaf1.name].port}",
                          f"--proxy-command={form}", env=env)
    before = root.proxy_authentications()
    for leaf in (trust.leaf1, trust.leaf2, trust.leaf1):
        node = trust.nodes[leaf.name]
        r = subprocess.run(
            [openssh.ssh, "-F", str(cfg), "-o", "BatchMode=yes", "-p", str(node.port),
             f"{LOGIN}@node2.{leaf.name}", "echo $SSH_CONNECTION"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert _server_port(r.stdout) == node.port
    assert root.proxy_authentications() - before == 1
    mux = os.path.join(env["TELEPORT_HOME"], "mux")
    masters = [n for n in os.listdir(mux)
               if stat.S_ISSOCK(os.lstat(os.path.join(mux, n)).st_mode) and not n.endswith(".agent")]
    assert len(masters) == 1, masters


# --------------------------------------------------------------------------- config --update stays current
def _proxy_command(cfg: Path, host: str, env: dict[str, str]) -> str:
    """The oracle: what ``ssh -G`` makes of ``host`` with ``cfg``."""
    out = subprocess.run(["ssh", "-F", str(cfg), "-G", host], capture_output=True, text=True,
                         env=env, check=True).stdout
    return next((ln for ln in out.splitlines() if ln.startswith("proxycommand ")), "")


def test_login_keeps_the_config_update_block_current(trust: Trust, ssh_agent, tmp_path,
                                                     tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    env = _logged_in(trust.root, ssh_agent, [trust.leaf1, trust.leaf2])
    cfg = tmp_path / "ssh_config"
    mine = b"# mine\r\nHost work\n    User me\n"
    cfg.write_bytes(mine)
    r = run_tsh("config", f"--update={cfg}", "--port=2222", env=env)
    assert r.returncode == 0, r.stderr
    written = cfg.read_bytes()
    assert "leaf4.test" not in written.decode()
    assert "--cluster='leaf4.test'" not in _proxy_command(cfg, "node2.leaf4.test", env)

    leaf = launch_cluster(tmp_path_factory.mktemp("leaf4") / "data", name="leaf4.test")
    try:
        join_leaf(trust.root, leaf)
        # A new leaf: the login rewrites the block in place, with the options it had.
        r = login(trust.root, USER, env)
        assert r.returncode == 0, r.stderr
        assert f"Updated the Teleport block in {cfg}" in r.stderr
        text = cfg.read_bytes()
        assert text.startswith(mine + b"\n")
        assert b"Host *.leaf4.test !" in text and text.count(b"    Port 2222\n") == text.count(
            b"# Flags for all ")
        command = _proxy_command(cfg, "node2.leaf4.test", env)
        assert "--cluster='leaf4.test'" in command, command
        again = login(trust.root, USER, env)  # nothing changed since: the file stays as it is
        assert again.returncode == 0 and "Updated the Teleport block" not in again.stderr
        assert cfg.read_bytes() == text

        # The leaf removed at the root: opted out, the file is left byte for byte...
        trust.root.admin("remote-clusters", "rm", "leaf4.test")
        for extra, opt_env in (("--no-update-ssh-config", env),
                               ("--proxy=" + trust.root.web_addr,
                                dict(env, TELEPORT_UPDATE_SSH_CONFIG="no"))):
            r = login(trust.root, USER, opt_env, extra)
            assert r.returncode == 0, r.stderr
            assert "Updated the Teleport block" not in r.stderr
            assert cfg.read_bytes() == text
        # ...else the leaf leaves the block: back to what --update wrote.
        r = login(trust.root, USER, env)
        assert r.returncode == 0, r.stderr
        assert f"Updated the Teleport block in {cfg}" in r.stderr
        assert cfg.read_bytes() == written
        assert "--cluster='leaf4.test'" not in _proxy_command(cfg, "node2.leaf4.test", env)
    finally:
        leaf.stop()
