"""The test cluster's command line: start flags, admin commands, the demo."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

import asyncssh
import pytest

from tests.cluster._state import ClusterState
from tests.cluster.launch import REPO_ROOT

pytestmark = pytest.mark.integration


def cli(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.cluster", *args], input=input,
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=timeout)


def test_admin_commands_on_a_stopped_data_dir(start_cluster, tmp_path) -> None:
    c = start_cluster(name="cli.test", data_dir=tmp_path / "d")
    assert c.stop() == 0
    d = str(tmp_path / "d")
    user = cli("auth", "export", "--type=user", "--data-dir", d)
    assert user.returncode == 0
    assert re.fullmatch(r"cert-authority ssh-ed25519 \S+ clustername=cli\.test&type=user\n",
                        user.stdout)
    host = cli("auth", "export", "--type=host", "--data-dir", d)
    assert re.fullmatch(r"@cert-authority \*\.cli\.test ssh-ed25519 \S+ type=host\n", host.stdout)

    out = tmp_path / "hostkey"
    r = cli("auth", "sign", "--host=a,b.cli.test,127.0.0.1", "--format=openssh",
            f"--out={out}", "--data-dir", d)
    assert r.returncode == 0, r.stderr
    assert os.stat(out).st_mode & 0o077 == 0
    cert = asyncssh.read_certificate(f"{out}-cert.pub")
    assert cert.principals == ["a", "b.cli.test", "127.0.0.1"]
    assert cert.signing_key.public_data == asyncssh.import_public_key(
        host.stdout.split()[2] + " " + host.stdout.split()[3]).public_data
    assert asyncssh.read_private_key(out).public_data == cert.key.public_data

    otp = cli("users", "add", "eve", "--logins=root,eve", "--otp", "--ttl=2h", "--data-dir", d,
              input="pw-eve\n")
    assert otp.returncode == 0 and re.fullmatch(r"[A-Z2-7]{16,}\n", otp.stdout)
    assert "pw-eve" not in otp.stdout + otp.stderr

    assert cli("nodes", "add", "n1", "127.0.0.1:2022", "--data-dir", d).returncode == 0
    assert cli("nodes", "ls", "--data-dir", d).stdout == "n1 127.0.0.1:2022\n"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["users", "add", "x y", "--logins=root"], "invalid user name"),
        (["users", "add", "x", "--logins=root", "--ttl=soon"], "invalid duration"),
        (["nodes", "add", "n", "nope"], "invalid address"),
        (["auth", "sign", "--host=", "--format=openssh", "--out=/tmp/x"], "at least one"),
    ],
)
def test_admin_errors_are_one_line(tmp_path, args, fragment) -> None:
    ClusterState.init(tmp_path / "d", "err.test")  # admin commands need no running server
    r = cli(*args, "--data-dir", str(tmp_path / "d"), input="pw\n")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and fragment in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_admin_on_missing_data_dir(tmp_path) -> None:
    r = cli("nodes", "ls", "--data-dir", str(tmp_path / "none"))
    assert r.returncode == 1 and "no cluster in" in r.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--ssh-port", "70000"], "invalid port 70000"),
        (["--server-version", "seventeen"], "invalid server version"),
    ],
)
def test_start_refuses_clearly(tmp_path, args, fragment) -> None:
    r = cli("start", "--data-dir", str(tmp_path / "d"), *args, timeout=30)
    assert r.returncode == 1 and r.stdout == ""
    assert fragment in r.stderr and "Traceback" not in r.stderr


def test_start_refuses_another_cluster_name(start_cluster, tmp_path) -> None:
    start_cluster(name="one.test", data_dir=tmp_path / "d").stop()
    r = cli("start", "--data-dir", str(tmp_path / "d"), "--name", "two.test", timeout=30)
    assert r.returncode == 1 and "holds cluster 'one.test'" in r.stderr


def test_demo_runs_the_openssh_flow(openssh) -> None:
    r = cli("demo", timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert re.search(r"^hello from .+ as \S+$", r.stdout, re.M)
    assert '"status":"online"' in r.stdout
    assert "teleport:127.0.0.1:example.test:demo" in r.stdout  # ssh-add -L after tsh login
    assert "Host *.example.test 127.0.0.1" in r.stdout  # tsh config
    # The recording proxy (the default) recorded `tsh ssh ... uname -sr`; show prints it.
    shown = r.stdout.split("recordings show", 1)[1]
    assert (platform.system() + " " + platform.release()) in shown
    # A leaf cluster: connected (proxysites) and reached through the root (tsh ssh --cluster)
    assert '{"name":"leaf.test",' in r.stdout
    assert re.search(r"^hello from the leaf as \S+$", r.stdout, re.M)
    assert r.stdout.rstrip().endswith("The OpenSSH flow works.")


def test_demo_wait_cleans_up_on_sigterm(openssh) -> None:
    """`demo --wait` stopped by kill/timeout (SIGTERM) stops its cluster, node and agent."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster", "demo", "--wait", "--recording", "node"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    workdir = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # readiness: the demo says where its files are, then waits
            found = re.search(r"files in (\S+)\.$", line)
            if found:
                workdir = found.group(1)
            if "Press Ctrl-C to stop." in line:
                break
        else:
            pytest.fail("the demo ended before waiting")
        proc.terminate()
        assert proc.wait(30) == 130
        assert workdir is not None and not os.path.exists(workdir)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
