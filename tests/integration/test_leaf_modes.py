"""Leaf clusters behind a single-port root (TLS routing), behind an L7 load balancer, and by SSO.

Issue #15 runs the leaf-cluster scenarios in every listener mode of the
*root* (the leaf's own proxy only keeps its reverse tunnel to the root's
tunnel port, so its mode does not matter to the client); issue #16 logs in to
a leaf by SSO (``route_to_cluster``). The separate-port root is
test_trusted_clusters.py's.

One leaf (``leaf.test``, one OpenSSH node ``node2``) is joined to three
roots shared by the module: ``mux.test`` (``--listener-mode=multiplex``),
``l7.test`` (``--behind-l7-lb``) and ``sso.test`` (OIDC, separate ports).
The node trusts the three roots' user CAs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_public_identity

from tests.cluster.launch import Cluster, join_leaf, launch_cluster
from tests.cluster.sshd import SSHDNode, find_sshd, start_node
from tests.conftest import LOGIN
from tests.integration._sso import BackgroundLogin, ScriptedBrowser, issuer, set_idp_user
from tests.integration._tsh import env_for, login, run_tsh, ssh_with_config, tsh_config_file
from tsh._store.store import ProfileStore

pytestmark = pytest.mark.integration

USER = "leaf-tester"
LEAF = "leaf.test"
MODES = {
    "multiplex": ("--listener-mode=multiplex",),
    "l7": ("--behind-l7-lb", "--upgrade-ping-interval=0.2"),
}


@dataclass
class Roots:
    by_mode: dict[str, Cluster]
    sso: Cluster
    leaf: Cluster
    node: SSHDNode


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> Iterator[Roots]:  # type: ignore[no-untyped-def]
    if find_sshd() is None:
        pytest.skip("sshd is missing")
    started: list[Cluster] = []
    node: SSHDNode | None = None

    def launch(name: str, *extra: str) -> Cluster:
        c = launch_cluster(tmp_path_factory.mktemp(name) / "data", name=name, extra_args=extra)
        started.append(c)
        return c

    try:
        by_mode = {mode: launch(f"{'mux' if mode == 'multiplex' else mode}.test", *args)
                   for mode, args in MODES.items()}  # fmt: skip
        sso = launch("sso.test", "--auth=oidc", "--connector-name=okta")
        leaf = launch(LEAF)
        for root in by_mode.values():
            root.add_user(USER, [LOGIN])
        for root in (*by_mode.values(), sso):
            join_leaf(root, leaf)
        exports = "".join(r.admin("auth", "export", "--type=user") for r in started[:-1])
        node = start_node(leaf.admin, LEAF, "node2", tmp_path_factory.mktemp("leaf-node2"),
                          sshd=find_sshd() or "", trusted_user_cas=exports, data_dir=leaf.data_dir)
        yield Roots(by_mode, sso, leaf, node)
    finally:
        if node is not None:
            node.stop()
        for c in started:
            c.stop()


def _server_port(stdout: str) -> int:
    """The node's port from ``echo $SSH_CONNECTION`` (client ip, port, server ip, port)."""
    return int(stdout.split()[3])


def _leaf_cert(env: dict[str, str]) -> tuple[str, bytes]:
    """(the profile's selected cluster, the leaf certificate's route-to-cluster extension)."""
    store = ProfileStore(env["TELEPORT_HOME"])
    profile = store.current()
    assert profile is not None
    cert = load_ssh_public_identity(store.paths_for(profile).ssh_cert(LEAF).read_bytes())
    return profile.cluster, cert.extensions[b"teleport-route-to-cluster"]


# --------------------------------------------------------------------------- TLS routing roots
@pytest.mark.parametrize("mode", list(MODES))
def test_leaf_through_a_tls_routing_root(roots: Roots, mode: str, ssh_agent, openssh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, node = roots.by_mode[mode], roots.node
    env = env_for(root, ssh_agent.sock)
    r = login(root, USER, env)
    assert r.returncode == 0, r.stderr

    # tsh clusters: ListRemoteClusters on the root, through the TLS-routed proxy:@<root>.
    r = run_tsh("clusters", "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert [ln.split()[:3] for ln in r.stdout.splitlines()] == [
        [root.name, "online", "root"], [LEAF, "online", "leaf"]]

    # tsh ls --cluster: the leaf's own auth server, over the root's reverse tunnel.
    r = run_tsh("ls", f"--cluster={LEAF}", "-f", "names", env=env)
    assert (r.returncode, r.stdout) == (0, "node2\n"), r.stderr

    # tsh ssh --cluster from the root login.
    r = run_tsh("ssh", f"--cluster={LEAF}", f"--port={node.port}", f"{LOGIN}@node2",
                "echo $SSH_CONNECTION", env=env)
    assert r.returncode == 0, r.stderr
    assert _server_port(r.stdout) == node.port

    # Plain OpenSSH through the generated config (tsh form: the web port in --proxy=).
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}", env=env, installed=True)
    text = cfg.read_text()
    assert f"Host *.{LEAF} " in text and f"--proxy='{root.web_addr}' " in text
    r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@node2.{LEAF}", "echo $SSH_CONNECTION", env=env)
    assert r.returncode == 0, r.stderr
    assert _server_port(r.stdout) == node.port
    if mode == "multiplex":  # the all-OpenSSH form: an openssl hop to the web port, then the leaf
        cfg = tsh_config_file(tmp_path / "ssh_config_openssh", "--proxy-command=openssh",
                              f"--port={node.port}", env=env)  # fmt: skip
        assert "s_client" in cfg.read_text()
        r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@node2.{LEAF}", "echo", "openssh-form",
                            env=env)  # fmt: skip
        assert (r.returncode, r.stdout) == (0, "openssh-form\n"), r.stderr

    # tsh login <leaf>: GenerateUserCerts with RouteToCluster, no password (stdin empty).
    r = run_tsh("login", LEAF, env=env, input="")
    assert r.returncode == 0, r.stderr
    assert f"Cluster:            {LEAF}" in r.stdout
    assert _leaf_cert(env) == (LEAF, LEAF.encode())
    r = run_tsh("ssh", f"--port={node.port}", f"{LOGIN}@node2", "echo", "leaf-ok", env=env)
    assert (r.returncode, r.stdout) == (0, "leaf-ok\n"), r.stderr
    r = run_tsh("ls", "-f", "names", env=env)  # the selected cluster: the leaf
    assert (r.returncode, r.stdout) == (0, "node2\n"), r.stderr


# --------------------------------------------------------------------------- SSO to a leaf
def _sso_login(root: Cluster, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`tsh login --browser=none ARGS` completed by the scripted browser as ``alice-sub``."""
    bg = BackgroundLogin(f"--proxy={root.web_addr}", *args, env=env)
    browser = ScriptedBrowser(root.ssl_context())
    try:
        form = browser.open(bg.url())
        final = browser.submit(form, {"sub": "alice-sub"})
        assert "Login Successful" in final.text, final.text[:300]
        return bg.wait()
    finally:
        browser.close()
        bg.kill()


def test_sso_login_to_a_leaf_then_ssh_and_reissue(roots: Roots, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    root, node = roots.sso, roots.node
    set_idp_user(issuer(root), "alice-sub",
                 {"email": "alice", "groups": ["ssh-users"], "logins": [LOGIN]})
    env = env_for(root, ssh_agent.sock)
    rc, out, err = _sso_login(root, env, f"--cluster={LEAF}")
    assert rc == 0, err
    assert f"Cluster:            {LEAF}" in out
    # The console login's route_to_cluster: the answer's certificate is the leaf's.
    assert _leaf_cert(env) == (LEAF, LEAF.encode())
    r = run_tsh("ssh", f"--port={node.port}", f"{LOGIN}@node2", "echo $SSH_CONNECTION", env=env)
    assert r.returncode == 0, r.stderr
    assert _server_port(r.stdout) == node.port

    # Back to the root and to the leaf again: reissued through the auth API, no browser
    # (with --browser=none and nobody to open the URL, an SSO login would time out).
    for cluster in (root.name, LEAF):
        r = run_tsh("login", "--browser=none", cluster, input="",
                    env={**env, "TSH_SSO_CALLBACK_TIMEOUT": "5"})  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "http://" not in r.stderr  # no SSO URL printed
        assert ProfileStore(env["TELEPORT_HOME"]).current().cluster == cluster  # type: ignore[union-attr]
    assert _leaf_cert(env) == (LEAF, LEAF.encode())
    r = run_tsh("ssh", f"--port={node.port}", f"{LOGIN}@node2", "echo", "sso-leaf-ok", env=env)
    assert (r.returncode, r.stdout) == (0, "sso-leaf-ok\n"), r.stderr
