"""TLS routing: the scenarios of a separate-port proxy, on a single-port one and behind an L7 LB.

The ``mode`` fixture runs a representative set of the integration scenarios
(login, tsh ssh, tsh scp, both `tsh config` forms, the Python API, drops at a
busy node) against three clusters: separate SSH port, ``multiplex`` (TLS
routing by ALPN on the web port, no SSH port) and ``behind-l7-lb`` (no ALPN
on the web port; SSH only through ``/webapi/connectionupgrade``). Under TLS
routing the web certificate is from its own CA, so the SSH route verifies
against the cluster's host CA or not at all. The error cases run once, in
the mode they concern.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cluster import sshd as sshd_launcher
from tests.cluster.launch import Cluster, launch_cluster
from tests.conftest import LOGIN, launch_node
from tests.integration._profiles import log_in, tsh
from tests.integration._tsh import env_for, login, run_tsh, ssh_with_config, tsh_config_file

pytestmark = pytest.mark.integration

MODES = {
    "separate": (),
    "multiplex": ("--listener-mode=multiplex",),
    # Pings every 0.2 s, so that every session here answers some.
    "l7": ("--behind-l7-lb", "--upgrade-ping-interval=0.2"),
}


def _start(tmp_path_factory, mode: str, *extra: str, recording: str = "node") -> Cluster:  # type: ignore[no-untyped-def]
    return launch_cluster(
        tmp_path_factory.mktemp(f"cluster-{mode}") / "data", recording=recording,
        extra_args=(*MODES[mode], *extra),
    )  # fmt: skip


@pytest.fixture(scope="module", params=list(MODES))
def mode_cluster(request, tmp_path_factory) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    c = _start(tmp_path_factory, request.param)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def mode_node(mode_cluster, tmp_path_factory) -> Iterator[sshd_launcher.SSHDNode]:  # type: ignore[no-untyped-def]
    if sshd_launcher.find_sshd() is None:
        pytest.skip("sshd is missing")
    node = launch_node(mode_cluster, "node1", tmp_path_factory.mktemp("node"))
    yield node
    node.stop()


def _mode(cluster: Cluster) -> str:
    if cluster.info.get("behind_l7_lb"):
        return "l7"
    return str(cluster.info.get("listener_mode"))


def _env(me, cluster: Cluster) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The profile's environment; the web CA trusted as system roots would be (the L7
    load balancer's certificate is checked against them)."""
    return me.env(SSL_CERT_FILE=str(cluster.tls_ca))  # type: ignore[no-any-return]


def _profile_json(home: Path) -> dict[str, object]:
    (path,) = [p for p in home.glob("*.yaml")]
    return json.loads(path.read_text())  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- every mode
def test_login_then_tsh_ssh_and_scp(openssh, mode_cluster, mode_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mode = _mode(mode_cluster)
    mode_cluster.add_user("joe", [LOGIN])
    env = env_for(mode_cluster)
    r = login(mode_cluster, "joe", env, "-k", "no")
    assert r.returncode == 0, r.stderr
    profile = _profile_json(Path(env["TELEPORT_HOME"]))
    assert profile.get("tls_routing_enabled", False) is (mode != "separate")
    assert profile.get("tls_routing_conn_upgrade_required", False) is (mode == "l7")
    if mode != "separate":  # no SSH port: SSH is on the web address
        assert profile["ssh_proxy_addr"] == mode_cluster.web_addr

    # The web API's CA is not trusted for the SSH route: tsh ssh does not need it.
    ssh_env = {k: v for k, v in env.items() if k != "SSL_CERT_FILE"} if mode != "l7" else env
    r = run_tsh("ssh", f"--port={mode_node.port}", f"{LOGIN}@node1", "echo", "ssh-ok", env=ssh_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ssh-ok\n"

    src = tmp_path / "up.txt"
    src.write_text("scp through " + mode)
    back = tmp_path / "back.txt"
    remote = f"{LOGIN}@node1:{tmp_path / 'remote.txt'}"
    r = run_tsh("scp", f"--port={mode_node.port}", str(src), remote, env=ssh_env)
    assert r.returncode == 0, r.stderr
    r = run_tsh("scp", f"--port={mode_node.port}", remote, str(back), env=ssh_env)
    assert r.returncode == 0, r.stderr
    assert back.read_text() == "scp through " + mode


def test_tsh_config_tsh_form(openssh, mode_cluster, mode_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    me = log_in(mode_cluster, [LOGIN])
    cfg = tsh_config_file(tmp_path / "cfg", f"--port={mode_node.port}", env=_env(me, mode_cluster),
                          installed=True)
    assert f"--proxy='{mode_cluster.web_addr}' " in cfg.read_text()  # the web port, as real tsh
    r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@node1.{mode_cluster.name}", "echo", "cfg-ok",
                        env=_env(me, mode_cluster))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (r.stdout, r.stderr) == ("cfg-ok\n", "")  # nothing from the TLS hop on stderr


def test_tsh_config_openssh_form(openssh, mode_cluster, mode_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    me = log_in(mode_cluster, [LOGIN])
    args = ["config", "--proxy-command=openssh", f"--port={mode_node.port}"]
    if _mode(mode_cluster) == "l7":
        r = tsh(*args, env=_env(me, mode_cluster))
        assert r.returncode == 2  # a usage error: this form cannot exist here
        err = r.stderr.decode()
        assert err.count("\n") == 1 and "load balancer" in err and "--proxy-command=tsh" in err
        return
    cfg = tsh_config_file(tmp_path / "cfg", *args[1:], env=_env(me, mode_cluster))
    command = cfg.read_text().split("ProxyCommand", 1)[1].split("\n", 1)[0]
    assert " proxy ssh " not in command  # OpenSSH (and OpenSSL) only
    assert ('"s_client"' in command) is (_mode(mode_cluster) == "multiplex")
    r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@node1.{mode_cluster.name}", "echo", "plain-ok",
                        env=_env(me, mode_cluster))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "plain-ok\n"


def test_python_api(mode_cluster, mode_node, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import tsh

    me = log_in(mode_cluster, [LOGIN])
    monkeypatch.setenv("TELEPORT_HOME", str(me.home))
    monkeypatch.setenv("SSL_CERT_FILE", str(mode_cluster.tls_ca))

    async def run() -> tsh.RunResult:
        async with tsh.AsyncClient() as client:
            return await client.run("node1", "echo api-ok", login=LOGIN, port=mode_node.port)

    result = asyncio.run(run())
    assert (result.exit_status, result.stdout) == (0, "api-ok\n")


def test_drops_at_a_busy_node_are_retried(openssh, mode_cluster, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = sshd_launcher._config_text
    monkeypatch.setattr(sshd_launcher, "_config_text", lambda *a, **kw: "".join(
        ln for ln in real(*a, **kw).splitlines(True) if not ln.startswith("MaxStartups")))
    with launch_node(mode_cluster, "busy", tmp_path / "busy") as busy:
        me = log_in(mode_cluster, [LOGIN])
        cfg = tsh_config_file(tmp_path / "cfg", f"--port={busy.port}", env=_env(me, mode_cluster),
                              installed=True)

        def one(i: int) -> subprocess.CompletedProcess[str]:
            return ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@busy.{mode_cluster.name}",
                                   "echo", f"run-{i}", env=_env(me, mode_cluster), timeout=120)

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(16)))
        log = busy.log()
    failed = [(r.returncode, r.stderr[:600]) for r in results if r.returncode != 0]
    assert not failed, (failed, mode_cluster.log()[-3000:])
    assert [r.stdout for r in results] == [f"run-{i}\n" for i in range(16)]
    assert "past MaxStartups" in log or "drop connection" in log
