"""`tsh proxy ssh`: the ProxyCommand helper against the test cluster and real sshd nodes."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cluster import sshd as sshd_launcher
from tests.integration._profiles import log_in, tsh
from tests.integration._tsh import read_until, ssh_with_config, tsh_argv, tsh_config_file

pytestmark = pytest.mark.integration


def test_pipes_to_node_and_exits_when_server_closes_with_stdin_open(
    cluster, node, login_name
) -> None:
    """Regression: the node hangs up while ssh still holds our stdin open."""
    me = log_in(cluster, [login_name])
    proc = subprocess.Popen(
        [*tsh_argv(), "proxy", "ssh", f"--cluster={cluster.name}",
         f"{login_name}@{node.name}.{cluster.name}:{node.port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=me.env(),
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        banner = read_until(proc.stdout.fileno(), b"\r\n", 30)
        assert banner.startswith(b"SSH-2.0-OpenSSH")  # only the node's bytes on stdout
        proc.stdin.write(b"this is not ssh\r\n")  # sshd answers by closing
        proc.stdin.flush()
        t = time.monotonic()
        rc = proc.wait(10)  # stdin stays open all along
        assert time.monotonic() - t < 5
        assert rc == 0
    finally:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f:
                f.close()


def test_unknown_node_shows_the_proxys_error(cluster, login_name) -> None:
    me = log_in(cluster, [login_name])
    r = tsh("proxy", "ssh", f"{login_name}@nosuchnode.{cluster.name}:3022", env=me.env(),
            input=b"")
    assert r.returncode != 0
    assert r.stdout == b""
    err = r.stderr.decode()
    assert 'no node named "nosuchnode"' in err, err
    assert "Traceback" not in err


def test_missing_key_file_is_a_clear_error(cluster, login_name) -> None:
    me = log_in(cluster, [login_name])
    key = next(p for p in (me.home / "keys").glob("*/*") if p.is_file() and not p.suffix)
    key.unlink()
    r = tsh("proxy", "ssh", f"{login_name}@node1.{cluster.name}:3022", env=me.env(), input=b"")
    assert r.returncode != 0 and r.stdout == b""
    assert r.stderr.decode() == f"error: {key} is missing; run tsh login\n"


def test_no_ssh_on_path_is_a_clear_error_and_leaves_nothing(cluster, login_name, tmp_path) -> None:
    # The agent sockets were made before the (failed) start of the hop: they go too.
    me = log_in(cluster, [login_name])
    (tmp_path / "nobin").mkdir()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmpdir:  # short: tsh uses it for sockets
        env = me.env(PATH=str(tmp_path / "nobin"), TMPDIR=tmpdir)
        r = tsh("proxy", "ssh", f"{login_name}@node1.{cluster.name}:3022", env=env, input=b"")
        assert r.returncode == 2 and r.stdout == b""
        assert r.stderr.decode() == (
            "error: cannot find OpenSSH's `ssh` on PATH; install the OpenSSH client\n"
        )
        assert os.listdir(tmpdir) == []


def test_login_not_allowed_is_not_retried(cluster, login_name) -> None:
    me = log_in(cluster, [login_name])
    t = time.monotonic()
    r = tsh("proxy", "ssh", f"not-my-login@node1.{cluster.name}:3022", env=me.env(), input=b"")
    assert r.returncode != 0 and r.stdout == b""
    assert "refused the certificate" in r.stderr.decode()
    assert time.monotonic() - t < 10


def test_proxy_signed_by_unknown_ca_is_refused(cluster, login_name, tmp_path) -> None:
    me = log_in(cluster, [login_name])
    # Replace the host CA in known_hosts with an unrelated key.
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    host = cluster.web_addr.rsplit(":", 1)[0]
    me.paths.known_hosts.write_text(
        f"@cert-authority {host},{cluster.name},*.{cluster.name} "
        f"{Path(f'{other}.pub').read_text().strip()} type=host\n"
    )
    r = tsh("proxy", "ssh", f"{login_name}@node1:3022", env=me.env(), input=b"")
    assert r.returncode != 0 and r.stdout == b""
    assert "not trusted" in r.stderr.decode()


def test_agent_only_profile(openssh, cluster, node, login_name, ssh_agent, tmp_path) -> None:
    """`-k only`: no private key on disk; tsh and OpenSSH both use the agent's key."""
    me = log_in(cluster, [login_name], agent_only_sock=ssh_agent.sock)
    assert not me.paths.private_key.exists()
    env = me.env(SSH_AUTH_SOCK=ssh_agent.sock)
    cfg = tsh_config_file(tmp_path / "cfg", f"--port={node.port}", env=env, installed=True)
    assert f'IdentityFile "{me.paths.public_key}"' in cfg.read_text()
    r2 = ssh_with_config(openssh.ssh, cfg, f"{login_name}@{node.name}.{cluster.name}",
                         "echo", "agent-only-ok", env=env)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == "agent-only-ok\n"


@pytest.fixture
def default_maxstartups(monkeypatch):
    """Nodes started in this test keep sshd's default MaxStartups (10:30:100)."""
    real = sshd_launcher._config_text

    def config_text(*args, **kwargs):
        text = real(*args, **kwargs)
        return "".join(ln for ln in text.splitlines(True) if not ln.startswith("MaxStartups"))

    monkeypatch.setattr(sshd_launcher, "_config_text", config_text)


def test_fifty_parallel_ssh_runs_at_default_maxstartups(
    openssh, cluster, start_node, login_name, default_maxstartups, tmp_path
) -> None:
    busy = start_node(cluster, "busy")
    assert "MaxStartups" not in (busy.workdir / "sshd_config").read_text()
    me = log_in(cluster, [login_name])
    cfg = tsh_config_file(tmp_path / "cfg", f"--port={busy.port}", env=me.env(), installed=True)

    def one(i: int) -> subprocess.CompletedProcess[str]:
        return ssh_with_config(openssh.ssh, cfg, f"{login_name}@busy.{cluster.name}",
                               "echo", f"run-{i}", env=me.env(), timeout=120)

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    failed = [(r.returncode, r.stderr[-300:]) for r in results if r.returncode != 0]
    assert not failed, failed
    assert [r.stdout for r in results] == [f"run-{i}\n" for i in range(50)]
    # sshd really was over MaxStartups: the retries were needed.
    assert "past MaxStartups" in busy.log() or "drop connection" in busy.log()
