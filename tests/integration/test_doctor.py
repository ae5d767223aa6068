"""`tsh doctor`: every check, each with the failure it diagnoses (the worker in-process, the CLI once)."""

from __future__ import annotations

import itertools
import json
import os
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.launch import Cluster, launch_cluster
from tests.conftest import launch_node
from tests.integration._tsh import env_for, login, run_tsh, tsh_config_file
from tsh._doctor import Doctor, run_checks
from tsh._store.store import ProfileStore

pytestmark = pytest.mark.integration
_users = itertools.count()


@pytest.fixture(scope="module")
def dcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = launch_cluster(tmp_path_factory.mktemp("doc") / "data", name="doc.test")
    yield c
    c.stop()


@pytest.fixture
def me(dcluster: Cluster, login_name: str, ssh_agent, monkeypatch):  # type: ignore[no-untyped-def]
    """A `tsh login` (key in the test's ssh-agent); the process trusts the cluster's TLS CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(dcluster.tls_ca))
    name = f"doc{next(_users)}"
    dcluster.add_user(name, [login_name])
    env = env_for(dcluster, ssh_agent.sock)
    r = login(dcluster, name, env)
    assert r.returncode == 0, r.stderr
    return env


def doctor(env: dict[str, str], **kw) -> Doctor:  # type: ignore[no-untyped-def]
    return Doctor(store=ProfileStore(), env=env, **kw)


def _profile_file() -> Path:
    (path,) = Path(os.environ["TELEPORT_HOME"]).glob("*.yaml")
    return path


def _edit_profile(**fields: object) -> None:
    path = _profile_file()
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


# ---- 1. OpenSSH
def test_openssh_present_and_recent(openssh, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert doctor(dict(os.environ)).openssh().status == "ok"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text("#!/bin/sh\necho 'OpenSSH_6.6p1 Ubuntu, OpenSSL 1.0.1f' >&2\n")
    (fake / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    old = doctor(dict(os.environ)).openssh()
    assert (old.status, old.detail, old.fix) == (
        "fail", "OpenSSH 6.6 is older than 6.9", "install OpenSSH 6.9 or later"
    )
    (fake / "ssh").unlink()
    assert doctor(dict(os.environ)).openssh().detail == "no OpenSSH client (ssh) on PATH"


# ---- 2. the agent
def test_agent_checks(openssh, ssh_agent, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    assert doctor(base).agent().detail == "SSH_AUTH_SOCK is not set"
    gone = doctor({**base, "SSH_AUTH_SOCK": str(tmp_path / "no-agent")}).agent()
    assert gone.status == "fail" and gone.detail.startswith("no agent answers")
    ok = doctor({**base, "SSH_AUTH_SOCK": ssh_agent.sock}).agent()
    assert ok.status == "ok", ok
    assert subprocess.run([openssh.ssh_add, "-L"], env=ssh_agent.env,
                          capture_output=True).returncode == 1  # the probe key was removed
    with ForgetfulAgent() as sock:  # accepts keys, never lists a certificate
        bad = doctor({**base, "SSH_AUTH_SOCK": sock}).agent()
    assert bad.status == "fail" and "does not keep SSH certificates" in bad.detail
    assert bad.fix.startswith("use OpenSSH's ssh-agent")


class ForgetfulAgent:
    """An agent (the protocol's bare minimum) that says yes to every add and lists nothing:
    what some agents do with certificates."""

    def __enter__(self) -> str:
        self._dir = tempfile.mkdtemp(prefix="fake-agent-")
        path = os.path.join(self._dir, "sock")
        self._srv = socket.socket(socket.AF_UNIX)
        self._srv.bind(path)
        self._srv.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()
        return path

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            with conn:
                while True:
                    head = conn.recv(4)
                    if len(head) < 4:
                        break
                    n = int.from_bytes(head, "big")
                    body = b""
                    while len(body) < n:
                        chunk = conn.recv(n - len(body))
                        if not chunk:
                            break
                        body += chunk
                    if body[:1] == b"\x0b":  # REQUEST_IDENTITIES -> IDENTITIES_ANSWER, none
                        reply = b"\x0c" + (0).to_bytes(4, "big")
                    else:  # add, remove, anything: SUCCESS
                        reply = b"\x06"
                    conn.sendall(len(reply).to_bytes(4, "big") + reply)

    def __exit__(self, *exc: object) -> None:
        self._srv.close()
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)


# ---- 3. the certificate
def test_certificate_checks(me, ssh_agent, openssh) -> None:  # type: ignore[no-untyped-def]
    d = doctor(me)
    ok = d.certificate(agent_ok=True)
    assert ok.status == "ok" and ok.detail.endswith(", in the agent"), ok
    subprocess.run([openssh.ssh_add, "-D"], env=ssh_agent.env, capture_output=True, check=True)
    warn = doctor(me).certificate(agent_ok=True)
    assert warn.status == "warn" and warn.detail.endswith("but not in the agent")
    _edit_profile(valid_before=1)
    expired = doctor(me).certificate(agent_ok=True)
    assert expired.status == "fail" and expired.detail.endswith("has expired")
    _profile_file().unlink()
    none = doctor(me).certificate(agent_ok=True)
    assert none.status == "fail" and none.fix == "run tsh login --proxy=PROXY"


# ---- 4. known_hosts against the cluster
def test_known_hosts_check_sees_a_rotation(me, dcluster) -> None:  # type: ignore[no-untyped-def]
    d = doctor(me)
    d.certificate(agent_ok=False)
    assert d.known_hosts().status == "ok"
    dcluster.admin("auth", "rotate", "--type=host", "--manual", "--phase=init")
    try:
        stale = d.known_hosts()
        assert stale.status == "fail"
        assert "trusts a host CA that known_hosts lacks" in stale.detail
        assert stale.fix.endswith("(CA rotation)")
    finally:
        dcluster.admin("auth", "rotate", "--type=host", "--manual", "--phase=rollback")
        dcluster.admin("auth", "rotate", "--type=host", "--manual", "--phase=standby")


# ---- 5. ~/.ssh/config
def test_ssh_config_checks(me, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "config"
    d = doctor(me, ssh_config=cfg)
    d.certificate(agent_ok=False)
    missing = d.ssh_config_block()
    assert missing.status == "fail" and missing.fix == f"tsh config >> {cfg}"
    cfg.write_text("Host other\n  Port 2222\n")
    absent = d.ssh_config_block()
    assert absent.status == "fail" and "has no Teleport block" in absent.detail
    tsh_config_file(cfg, env=me)
    assert d.ssh_config_block().status == "ok"
    tsh_config_file(cfg, "--proxy-command=openssh", env=me)
    assert d.ssh_config_block().status == "ok"  # either form is current
    cfg.write_text(cfg.read_text().replace("CertificateFile ", "CertificateFile /old"))
    stale = d.ssh_config_block()
    assert stale.status == "fail" and "is out of date" in stale.detail
    assert stale.fix == f"tsh config --update={cfg}"


# ---- 6. the proxy
def test_proxy_checks(me, dcluster) -> None:  # type: ignore[no-untyped-def]
    d = doctor(me)
    d.certificate(agent_ok=False)
    ok = d.proxy_reachable()
    assert ok.status == "ok", ok
    with socket.socket() as s:  # the SSH port points at something that is not SSH
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        _edit_profile(ssh_proxy_addr=f"127.0.0.1:{s.getsockname()[1]}")
        def answer() -> None:
            conn, _ = s.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        d.certificate(agent_ok=False)
        not_ssh = d.proxy_reachable()
    assert not_ssh.status == "fail" and not_ssh.detail.endswith("does not speak SSH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        _edit_profile(web_proxy_addr=f"127.0.0.1:{port}")
        d.certificate(agent_ok=False)
        down = d.proxy_reachable()
    assert down.status == "fail" and down.detail.startswith("web API: ")


# ---- 7. a node, hop by hop
def test_node_checks_name_the_failing_hop(me, dcluster, login_name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = launch_node(dcluster, "good", tmp_path / "good")
    rogue = launch_node(dcluster, "rogue", tmp_path / "rogue", "other-ca")
    with socket.socket() as dropper:  # a MaxStartups-like sshd: accepts, then hangs up
        dropper.bind(("127.0.0.1", 0))
        dropper.listen(16)
        dcluster.admin("nodes", "add", "dropper", f"127.0.0.1:{dropper.getsockname()[1]}")

        def drop() -> None:
            while True:
                try:
                    dropper.accept()[0].close()
                except OSError:
                    return

        threading.Thread(target=drop, daemon=True).start()
        try:
            d = doctor(me)
            d.certificate(agent_ok=False)
            ok = d.node(f"{login_name}@good", good.port)
            assert ok.status == "ok", ok
            unknown = d.node(f"{login_name}@nosuchnode", 22)
            assert unknown.status == "fail"
            assert unknown.detail.startswith("the proxy did not connect you to nosuchnode: ")
            host = d.node(f"{login_name}@rogue", rogue.port)
            assert host.status == "fail", host
            assert host.detail.startswith("node rogue's host certificate is not signed by a host "
                                          "CA the cluster trusts now")
            dropped = d.node(f"{login_name}@dropper", dropper.getsockname()[1])
            assert dropped.status == "fail"
            assert "closed the connection before its SSH banner" in dropped.detail
            # a node whose TrustedUserCAKeys lacks the cluster's user CA
            (tmp_path / "good" / "teleport_user_ca.pub").write_text(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMmv0LJUS0lWyBzDvVKHBdTKGeTvPxZDkLLwKqKbNRcB\n"
            )
            user_ca = d.node(f"{login_name}@good", good.port)
            assert user_ca.status == "fail"
            assert user_ca.detail == ("node good does not trust the cluster's current user CA "
                                      "(CA rotation)")
            assert user_ca.fix.startswith("re-export the user CA to the node")
        finally:
            good.stop()
            rogue.stop()


# ---- the command line
def test_cli_json_and_exit_status(me, dcluster, login_name, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**me, "HOME": str(tmp_path)}  # no ~/.ssh/config there: one check fails
    r = run_tsh("doctor", "--format", "json", env=env)
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is False
    names = [c["name"] for c in report["checks"]]
    assert names == ["openssh", "agent", "certificate", "known_hosts", "ssh_config", "proxy"]
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["ssh_config"]["status"] == "fail"
    assert by_name["proxy"]["status"] == "ok"
    (tmp_path / ".ssh").mkdir()
    cfg = tsh_config_file(tmp_path / ".ssh" / "config", env=env, installed=True)
    assert stat.S_ISREG(cfg.stat().st_mode)
    r = run_tsh("doctor", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 6 and all(ln.startswith("[ok  ] ") for ln in lines), r.stdout
    node = launch_node(dcluster, "cli-node", tmp_path / "cli-node")
    try:
        r = run_tsh("doctor", f"{login_name}@cli-node", "-p", str(node.port), env=env)
    finally:
        node.stop()
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1] == "[ok  ] node: logged in to cli-node through the proxy"
    bad = run_tsh("doctor", "--format", "yaml", env=env)
    assert bad.returncode != 0 and "invalid format" in bad.stderr


def test_run_checks_skips_the_node_when_the_proxy_is_down(me) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        _edit_profile(web_proxy_addr=f"127.0.0.1:{s.getsockname()[1]}")
        seen: list[str] = []
        checks = run_checks(doctor(me), "somehost", 22, lambda c: seen.append(c.name))
    assert seen == [c.name for c in checks]
    assert [c.name for c in checks][-2:] == ["proxy", "node"]
    assert (checks[-2].status, checks[-1].status) == ("fail", "skip")
    assert checks[-1].detail == "the proxy is unreachable"
