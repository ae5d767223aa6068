"""TLS routing: the scenarios of a separate-port proxy, on a single-port one and behind an L7 LB.

The ``mode`` fixture runs a representative set of the integration scenarios
(login, tsh ssh, tsh scp, both `tsh config` forms, the Python API, drops at a
busy node) against three clusters: separate SSH port, ``multiplex`` (TLS
routing by ALPN on the web port, no SSH port) and ``behind-l7-lb`` (no ALPN
on the web port; SSH only through ``/webapi/connectionupgrade``). Under TLS
routing the web certificate is from its own CA, so the SSH route verifies
against the cluster's host CA or not at all. The error cases run once, in
the mode they concern (``indirect`` parametrization reuses the module's cluster).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cluster import sshd as sshd_launcher
from tests.cluster.launch import Cluster, launch_cluster
from tests.conftest import LOGIN, launch_node
from tests.integration._profiles import log_in, tsh
from tests.integration._tsh import (
    env_for,
    login,
    run_tsh,
    ssh_dropping_the_first_master,
    ssh_with_config,
    tsh_config_file,
)

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


def _log_with(cluster: Cluster, text: str, timeout: float = 10.0) -> str:
    """The cluster's log once it holds ``text`` (it logs an upgrade's end as that ends)."""
    deadline = time.monotonic() + timeout
    while text not in (log := cluster.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def _masters(me) -> list[Path]:  # type: ignore[no-untyped-def]
    """The control sockets of hop reuse's masters (tsh._openssh.reuse) under ``me``'s home."""
    mux = me.home / "mux"
    return sorted(p for p in mux.iterdir() if p.is_socket() and not p.name.endswith(".agent")) \
        if mux.is_dir() else []  # fmt: skip


def _end_masters(me) -> None:  # type: ignore[no-untyped-def]
    """Make ``me``'s masters exit (the cluster logs an upgrade's end only as its master ends)."""
    for sock in _masters(me):
        subprocess.run(["ssh", "-S", str(sock), "-O", "exit", "_"], capture_output=True, timeout=10,
                       check=False)  # fmt: skip


def _profile_json(home: Path) -> dict[str, object]:
    (path,) = [p for p in home.glob("*.yaml")]
    return json.loads(path.read_text())  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- every mode
def test_login_then_tsh_ssh_and_scp(openssh, mode_cluster, mode_node, ssh_agent, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The agent holds the certificate: tsh ssh's hop is all OpenSSH (and OpenSSL).
    mode = _mode(mode_cluster)
    mode_cluster.add_user("joe", [LOGIN])
    env = env_for(mode_cluster, agent_sock=ssh_agent.sock)
    r = login(mode_cluster, "joe", env)
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


# Separate ports: test_proxy_ssh's fifty parallel runs.
@pytest.mark.parametrize("mode_cluster", ["multiplex", "l7"], indirect=True)
def test_drops_at_a_busy_node_are_retried(openssh, mode_cluster, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A low MaxStartups (drops from the 6th unauthenticated connection on, at
    # 30 % and more), so that 16 parallel runs see drops for certain even when
    # the hop is fast (hop reuse); sshd's default 10:30:100 might drop none.
    real = sshd_launcher._config_text
    monkeypatch.setattr(sshd_launcher, "_config_text", lambda *a, **kw: "".join(
        ln for ln in real(*a, **kw).splitlines(True) if not ln.startswith("MaxStartups")
    ) + "MaxStartups 5:30:30\n")
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


# --------------------------------------------------------------------------- one mode each
def _ssh_via_config(openssh, cluster: Cluster, node, tmp_path: Path, me, *cmd: str, **env: str):  # type: ignore[no-untyped-def]
    cfg = tsh_config_file(tmp_path / "cfg", f"--port={node.port}", env=_env(me, cluster),
                          installed=True)  # fmt: skip
    return ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@node1.{cluster.name}", *cmd,
                           env={**_env(me, cluster), **env})  # fmt: skip


@pytest.mark.parametrize("mode_cluster", ["multiplex"], indirect=True)
def test_ssh_route_signed_by_another_ca_is_refused(openssh, mode_cluster, mode_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    me = log_in(mode_cluster, [LOGIN])
    ca_file = me.paths.tls_ca(mode_cluster.name)
    ca_file.write_bytes(mode_cluster.tls_ca.read_bytes())  # the web CA, not the host CA
    r = _ssh_via_config(openssh, mode_cluster, mode_node, tmp_path, me, "echo", "no")
    assert r.returncode == 255 and "no\n" not in r.stdout
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"error: the proxy {mode_cluster.web_addr} is not trusted: its TLS")
    assert str(ca_file) in first

    import tsh

    async def connect() -> None:
        async with tsh.AsyncClient(home=me.home) as client:
            await client.run("node1", "true", login=LOGIN, port=mode_node.port)

    with pytest.raises(tsh.SSHError, match="not signed by the cluster's host CA"):
        asyncio.run(connect())


@pytest.mark.parametrize("mode_cluster", ["multiplex"], indirect=True)
def test_upgrade_forced_by_the_environment(openssh, mode_cluster, mode_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A single-port proxy serves /webapi/connectionupgrade too: the override reaches it,
    # also when a master dialled with plain TLS routing is up (it is not ridden).
    me = log_in(mode_cluster, [LOGIN])
    before = mode_cluster.proxy_authentications()
    r = _ssh_via_config(openssh, mode_cluster, mode_node, tmp_path, me, "echo", "plain")
    assert (r.returncode, r.stdout) == (0, "plain\n"), r.stderr
    r = _ssh_via_config(openssh, mode_cluster, mode_node, tmp_path, me, "echo", "forced",
                        TELEPORT_TLS_ROUTING_CONN_UPGRADE=f"{mode_cluster.web_addr}=yes")
    assert (r.returncode, r.stdout) == (0, "forced\n"), r.stderr
    assert [p.name[16:] for p in _masters(me)] == [f"+t+{LOGIN}", f"+w+{LOGIN}"]
    assert mode_cluster.proxy_authentications() - before == 2
    _end_masters(me)
    assert "websocket upgrade (alpn-ping) ended" in _log_with(mode_cluster, "websocket upgrade")


def test_proxy_that_ignores_the_alpn(openssh, cluster, node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A separate-port proxy's web port, named by a profile that claims TLS routing.
    me = log_in(cluster, [LOGIN])
    path = me.paths.profile_file
    data = json.loads(path.read_text())
    data.update(tls_routing_enabled=True, ssh_proxy_addr=cluster.web_addr)
    path.write_text(json.dumps(data))
    r = _ssh_via_config(openssh, cluster, node, tmp_path, me, "true")
    assert r.returncode == 255
    assert r.stderr.splitlines()[0] == (
        f"error: the proxy {cluster.web_addr} claims TLS routing but did not accept ALPN "
        "teleport-proxy-ssh (a TLS-terminating load balancer in front of it? then set "
        "TELEPORT_TLS_ROUTING_CONN_UPGRADE=true)"
    )


@pytest.mark.parametrize("mode_cluster", ["l7"], indirect=True)
def test_the_web_route_behind_the_websocket_upgrade(mode_cluster) -> None:  # type: ignore[no-untyped-def]
    """Behind the upgrade every route is served (the SSH route in-process, others through
    the router), each with the host certificate: here HTTP to the web API."""
    import ssl

    from tsh._proxy import tunnel

    me = log_in(mode_cluster, [LOGIN])
    addr = mode_cluster.web_addr
    sock = tunnel._outer_tls(tunnel._tcp(addr, 10), addr, insecure=True)
    try:
        carrier = tunnel._upgrade_websocket(sock, addr)
        ctx = ssl.create_default_context(cafile=str(me.paths.tls_ca(mode_cluster.name)))
        ctx.set_alpn_protocols(["http/1.1"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        inner = ctx.wrap_bio(incoming, outgoing, server_hostname=addr.rsplit(":", 1)[0])

        def pump() -> None:
            if out := outgoing.read():
                carrier.send(out)
            data = carrier.recv()
            if data == b"":
                raise ConnectionError("closed")
            incoming.write(data or b"")

        while True:
            try:
                inner.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
        assert inner.selected_alpn_protocol() == "http/1.1"
        inner.write(f"GET /webapi/ping HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                answer += inner.read(65536)
            except ssl.SSLWantReadError:
                pump()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        sock.close()


@pytest.mark.parametrize("mode_cluster", ["l7"], indirect=True)
def test_keepalive_pings_and_the_legacy_upgrade(openssh, mode_cluster, mode_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    me = log_in(mode_cluster, [LOGIN])
    # Pings every 0.2 s arrive while the session sleeps; they must not disturb it.
    for kind, env in (("websocket", {}), ("legacy", {"TELEPORT_TLS_ROUTING_CONN_UPGRADE_MODE": "legacy"})):
        r = _ssh_via_config(openssh, mode_cluster, mode_node, tmp_path, me,
                            "sleep 1; echo", kind, **env)  # fmt: skip
        assert (r.returncode, r.stdout, r.stderr) == (0, f"{kind}\n", ""), kind
    assert [p.name[16:] for p in _masters(me)] == [f"+l+{LOGIN}", f"+w+{LOGIN}"]  # one per upgrade
    _end_masters(me)
    for kind in ("websocket upgrade (alpn-ping)", "legacy upgrade (alpn-ping)"):
        log = _log_with(mode_cluster, kind)
        counts = [int(line.rsplit(" after ", 1)[1].split()[0]) for line in log.splitlines()
                  if kind in line]  # fmt: skip
        assert counts and max(counts) >= 2, (kind, counts, log[-1500:])


@pytest.mark.parametrize("blocked", ["none", "websocket"])
def test_load_balancer_refusing_the_upgrade(openssh, tmp_path_factory, tmp_path, blocked) -> None:  # type: ignore[no-untyped-def]
    c = _start(tmp_path_factory, "l7", f"--lb-upgrades={blocked}")
    try:
        with launch_node(c, "node1", tmp_path / "node") as node:
            me = log_in(c, [LOGIN])
            env = {"TELEPORT_TLS_ROUTING_CONN_UPGRADE_MODE": "legacy"} if blocked == "websocket" else {}
            r = _ssh_via_config(openssh, c, node, tmp_path, me, "true", **env)
    finally:
        c.stop()
    assert r.returncode == 255
    assert r.stderr.splitlines()[0].startswith(
        f"error: the connection upgrade at {c.web_addr} was refused (HTTP 400): a load balancer"
    )


@pytest.mark.parametrize("mode", ["multiplex", "l7"])
def test_recording_proxy(openssh, tmp_path_factory, tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    c = _start(tmp_path_factory, mode, recording="proxy")
    try:
        with launch_node(c, "node1", tmp_path / "node") as node:
            me = log_in(c, [LOGIN])  # key on disk, no agent: tsh proxy ssh's private agent
            r = _ssh_via_config(openssh, c, node, tmp_path, me, "echo", "recorded-" + mode)
            listing = c.admin("recordings", "ls")
    finally:
        c.stop()
    assert (r.returncode, r.stdout) == (0, f"recorded-{mode}\n"), r.stderr
    assert LOGIN in listing and "node1" in listing


@pytest.mark.parametrize("mode_cluster", ["multiplex"], indirect=True)
def test_all_openssh_hop_explains_a_tls_failure_in_one_line(mode_cluster, mode_node, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    me = log_in(mode_cluster, [LOGIN], agent_only_sock=ssh_agent.sock)
    me.paths.tls_ca(mode_cluster.name).write_bytes(mode_cluster.tls_ca.read_bytes())
    # --no-reuse: tsh ssh's hop is OpenSSH's with tsh's tunnel, which says why (with
    # reuse it is `tsh proxy ssh`, which asks the master's first drop why: the same line).
    for no_reuse in ["--no-reuse"], []:
        r = run_tsh("ssh", *no_reuse, f"--port={mode_node.port}", f"{LOGIN}@node1", "true",
                    env=me.env(SSH_AUTH_SOCK=ssh_agent.sock))  # fmt: skip
        assert r.returncode == 255
        last = r.stderr.splitlines()[-1]
        assert last.startswith(f"error: the proxy {mode_cluster.web_addr} is not trusted: its TLS "
                               "certificate"), r.stderr
        assert "is not signed by the cluster's host CA" in last


# --------------------------------------------------------------------------- hop reuse
@pytest.mark.parametrize(
    ("mode_cluster", "form"), [("multiplex", "openssh"), ("multiplex", "tsh"), ("l7", "tsh")],
    indirect=["mode_cluster"],
)  # (behind an L7 load balancer the openssh form is refused: test_tsh_config_openssh_form)
def test_reuse_one_login_under_tls_routing(openssh, mode_cluster, mode_node, tmp_path, form) -> None:  # type: ignore[no-untyped-def]
    me = log_in(mode_cluster, [LOGIN])
    cfg = tsh_config_file(tmp_path / "cfg", f"--port={mode_node.port}", f"--proxy-command={form}",
                          env=_env(me, mode_cluster), installed=True)  # fmt: skip
    before = mode_cluster.proxy_authentications()
    for i in range(3):
        r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@node1.{mode_cluster.name}", "echo", f"hop{i}",
                            env=_env(me, mode_cluster))  # fmt: skip
        assert (r.returncode, r.stdout, r.stderr) == (0, f"hop{i}\n", "")
    assert mode_cluster.proxy_authentications() - before == 1
    mark = {"openssh": "-", "tsh": "+t+" if _mode(mode_cluster) == "multiplex" else "+w+"}[form]
    assert [p.name[16:] for p in _masters(me)] == [mark + LOGIN]


@pytest.mark.parametrize("mode_cluster", ["multiplex", "l7"], indirect=True)
def test_reuse_first_drop_retried_under_tls_routing(openssh, mode_cluster, mode_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The master's first connection is dropped (as sshd's MaxStartups would): tsh proxy ssh
    # starts it again, dialled the same way.
    me = log_in(mode_cluster, [LOGIN])
    dropping, mark = ssh_dropping_the_first_master(tmp_path)
    before = mode_cluster.proxy_authentications()
    r = _ssh_via_config(openssh, mode_cluster, mode_node, tmp_path, me, "echo", "retried", **dropping)
    assert (r.returncode, r.stdout, r.stderr) == (0, "retried\n", "")
    assert mark.exists()  # the first master was dropped
    assert len(_masters(me)) == 1  # the second one listens
    assert mode_cluster.proxy_authentications() - before == 1
