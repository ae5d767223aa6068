"""`tsh ssh` and `tsh scp` against a real sshd node through the test cluster.

`tsh ssh` runs OpenSSH's ssh on the user's terminal and passes its exit status
on, so these tests see exactly what a user sees: the remote exit status,
stdin/stdout passing through, forwarding,
agent forwarding, and scp copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest

from tests.conftest import LOGIN
from tests.integration._profiles import log_in
from tests.integration._tsh import PASSWORD, agent_lines, env_for, login, run_tsh, tsh_argv

pytestmark = pytest.mark.integration

USER = "ssh-tester"


@pytest.fixture(scope="module")
def ssh_user(cluster) -> str:  # type: ignore[no-untyped-def]
    cluster.add_user(USER, [LOGIN])
    return USER


@pytest.fixture
def logged_in(cluster, node, ssh_user, ssh_agent, openssh):  # type: ignore[no-untyped-def]
    """Environment of a user logged in to ``cluster`` with a real ssh-agent."""
    env = env_for(cluster, ssh_agent.sock)
    r = login(cluster, ssh_user, env)
    assert r.returncode == 0, r.stderr
    return env


def tsh_ssh(node, login_name, command: str, *flags: str, env, input: str = ""):  # type: ignore[no-untyped-def]
    return run_tsh(
        "ssh", f"--port={node.port}", *flags, f"{login_name}@{node.name}", command,
        env=env, input=input,
    )  # fmt: skip


def test_exit_status_and_output_pass_through(node, login_name, logged_in) -> None:  # type: ignore[no-untyped-def]
    r = tsh_ssh(node, login_name, "echo hi; echo oops >&2; exit 7", env=logged_in)
    assert r.returncode == 7
    assert r.stdout == "hi\n"
    assert "oops" in r.stderr


def test_stdin_passes_through(node, login_name, logged_in) -> None:  # type: ignore[no-untyped-def]
    r = tsh_ssh(node, login_name, "cat", env=logged_in, input="data")
    assert (r.returncode, r.stdout) == (0, "data")


def test_fqdn_and_login_flag(cluster, node, login_name, logged_in) -> None:  # type: ignore[no-untyped-def]
    r = run_tsh(
        "ssh", "-p", str(node.port), "-l", login_name, f"{node.name}.{cluster.name}",
        "id", "-un", env=logged_in,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, f"{login_name}\n"), r.stderr


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_local_forwarding(node, login_name, logged_in) -> None:  # type: ignore[no-untyped-def]
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local_port = _free_port()
    spec = f"127.0.0.1:{local_port}:127.0.0.1:{server.server_address[1]}"
    proc = subprocess.Popen(
        [*tsh_argv(installed=False), "ssh", f"--port={node.port}", "-N", "-L", spec,
         "-o", "ExitOnForwardFailure=yes", f"{login_name}@{node.name}"],
        env=logged_in, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:  # readiness: the forwarded port accepts and echoes through the node
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", local_port), timeout=5) as c:
                    c.sendall(b"ping through the node")
                    assert c.recv(100) == b"ping through the node"
                    break
            except (ConnectionRefusedError, ConnectionResetError):
                assert time.monotonic() < deadline, "forwarded port never came up"
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        server.shutdown()
        server.server_close()


def test_agent_forwarding_is_opt_in(node, login_name, logged_in, openssh) -> None:  # type: ignore[no-untyped-def]
    ours = [line for line in agent_lines(openssh, logged_in["SSH_AUTH_SOCK"]) if "-cert-v01@" in line]
    assert ours
    with_a = tsh_ssh(node, login_name, "ssh-add -L", "-A", env=logged_in)
    assert with_a.returncode == 0, with_a.stderr
    assert ours[0].split()[1] in with_a.stdout
    without = tsh_ssh(node, login_name, 'echo "agent=${SSH_AUTH_SOCK:-none}"', env=logged_in)
    assert without.stdout == "agent=none\n"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_scp_file_and_directory_round_trip(node, login_name, logged_in, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(10 * 1024 * 1024))
    remote_dir = tmp_path / "remote"  # the node is this machine: its paths are ours
    remote_dir.mkdir()
    target = f"{login_name}@{node.name}:{remote_dir}/"
    up = run_tsh("scp", "-P", str(node.port), str(src), target, env=logged_in)
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back.bin"
    down = run_tsh(
        "scp", "--port", str(node.port), f"{login_name}@{node.name}:{remote_dir}/big.bin",
        str(back), env=logged_in,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert _sha256(back) == _sha256(src)

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    r = run_tsh("scp", "-r", "-P", str(node.port), str(tree), target, env=logged_in)
    assert r.returncode == 0, r.stderr
    assert (remote_dir / "tree" / "sub" / "b.txt").read_text() == "b"
    assert (remote_dir / "tree" / "a.txt").read_text() == "a"


def test_interactive_session_in_a_terminal(node, login_name, logged_in) -> None:  # type: ignore[no-untyped-def]
    child = pexpect.spawn(
        sys.executable, ["-m", "tsh", "ssh", f"--port={node.port}", f"{login_name}@{node.name}"],
        env={**logged_in, "TERM": "xterm", "PS1": "$ "}, encoding="utf-8", timeout=20,
        dimensions=(24, 80),
    )  # fmt: skip
    try:
        child.sendline("echo interactive-$((6*7)); tty")
        child.expect("interactive-42")
        child.expect("/dev/pts/")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3


def test_ssh_escape_suspend_stops_the_job_and_fg_resumes_it(node, login_name, logged_in) -> None:  # type: ignore[no-untyped-def]
    """ssh's ``~^Z`` stops ssh; tsh, which waits for it, stops too, so the shell gets its job back."""
    tsh = " ".join([sys.executable, "-m", "tsh", "ssh", f"--port={node.port}", f"{login_name}@{node.name}"])
    child = pexpect.spawn(
        "bash", ["--norc", "--noprofile", "-i"],
        env={**logged_in, "TERM": "xterm", "PS1": "local$ "}, encoding="utf-8", timeout=20,
        dimensions=(24, 80),
    )  # fmt: skip
    try:
        child.expect_exact("local$ ")
        child.sendline(f"PS1='remote$ ' {tsh}")
        child.sendline("echo in-$((6*7))")
        child.expect("in-42")
        child.send("\r~\x1a")  # ssh's escape: suspend
        child.expect("Stopped")
        child.expect_exact("local$ ")
        child.sendline("echo local-$((2*3))")
        child.expect("local-6")
        child.sendline("fg")
        child.sendline("echo back-$((5*5))")
        child.expect("back-25")
        child.sendline("exit 4")
        child.expect_exact("local$ ")
        child.sendline("echo status=$?")
        child.expect("status=4")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def _expire(env: dict[str, str]) -> None:
    home = Path(env["TELEPORT_HOME"])
    (profile,) = home.glob("*.yaml")
    data = json.loads(profile.read_text())
    data["valid_before"] = int(time.time()) - 60
    profile.write_text(json.dumps(data))


def test_expired_certificate_offers_login_on_a_terminal(node, login_name, logged_in, ssh_user) -> None:  # type: ignore[no-untyped-def]
    _expire(logged_in)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tsh", "ssh", f"--port={node.port}", f"{login_name}@{node.name}", "echo renewed"],
        env=logged_in, encoding="utf-8", timeout=20,
    )  # fmt: skip
    try:
        child.expect("has expired; logging in again")
        child.expect(f"Enter password for Teleport user {ssh_user}:")
        child.sendline(PASSWORD)
        child.expect("renewed")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    status = run_tsh("status", env=logged_in)
    assert "EXPIRED" not in status.stdout


@pytest.fixture
def fake_ssh(tmp_path, cluster):  # type: ignore[no-untyped-def]
    """A profile (written, no `tsh login`: these tests never reach ssh) and PATH with an
    `ssh`/`scp` that only records that it was started, writing its arguments one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ssh-was-started"
    for name in ("ssh", "scp"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{marker}'\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = log_in(cluster, [LOGIN]).env()
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}"}, marker


@pytest.mark.parametrize(
    "args, message",
    [
        (["--", "-oProxyCommand=touch /tmp/pwned", "true"], "must not start with '-'"),
        (["-l", "root x", "node1", "true"], "whitespace"),
        (["root@no\tde", "true"], "whitespace"),
        (["ro\x1bot@node1", "true"], "control"),
        (["--cluster=*", "node1", "true"], "invalid cluster name"),
        (["-t", "-T", "node1", "true"], "cannot be used together"),
    ],
)
def test_bad_input_starts_no_ssh(fake_ssh, args, message) -> None:  # type: ignore[no-untyped-def]
    env, marker = fake_ssh
    r = run_tsh("ssh", *args, env=env)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "args, remote",
    [
        (["node1", "--", "ls", "-l"], ["ls", "-l"]),
        (["-p", "22", "--", "node1", "ls", "--", "x"], ["ls", "--", "x"]),
        (["node1", "--", "--", "x"], ["--", "x"]),  # as `ssh node1 -- -- x`
    ],
)
def test_double_dash_is_not_sent_to_the_node(fake_ssh, args, remote) -> None:  # type: ignore[no-untyped-def]
    env, marker = fake_ssh
    r = run_tsh("ssh", *args, env=env)
    assert r.returncode == 0, r.stderr
    argv = marker.read_text().splitlines()
    assert argv[argv.index("node1") - 1 :] == ["--", "node1", *remote]


def test_help_documents_double_dash() -> None:
    r = run_tsh("ssh", "--help", env=dict(os.environ, COLUMNS="200"))
    assert "Usage: tsh ssh [OPTIONS] [--] [LOGIN@]HOST [COMMAND]..." in r.stdout
    assert "Put -- before HOST" in r.stdout


def test_bad_scp_input_starts_no_scp(fake_ssh) -> None:  # type: ignore[no-untyped-def]
    env, marker = fake_ssh
    r = run_tsh("scp", "--", "a", "-oProxyCommand=x:/b", env=env)
    assert r.returncode != 0 and "must not start with '-'" in r.stderr
    assert not marker.exists()


def test_expired_without_terminal_says_run_tsh_login(fake_ssh) -> None:  # type: ignore[no-untyped-def]
    env, marker = fake_ssh
    _expire(env)
    r = run_tsh("ssh", "node1", "true", env=env)
    assert r.returncode == 1
    assert "has expired; run: tsh login" in r.stderr
    assert not marker.exists()


def test_not_logged_in(fake_ssh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env, marker = fake_ssh
    env = {**env, "TELEPORT_HOME": str(tmp_path / "empty")}
    r = run_tsh("ssh", "node1", "true", env=env)
    assert r.returncode == 1 and r.stderr == "error: not logged in; run: tsh login --proxy=<proxy>\n"
    assert not marker.exists()


def test_no_ssh_binary(logged_in, tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "nobin"
    empty.mkdir()
    env = {**logged_in, "PATH": str(empty)}
    r = run_tsh("ssh", "node1", "true", env=env)
    assert r.returncode != 0 and "cannot find OpenSSH's `ssh`" in r.stderr


def test_key_only_on_disk_goes_through_tsh_proxy_ssh(cluster, node, ssh_user, login_name) -> None:  # type: ignore[no-untyped-def]
    """No agent holds the certificate: the ProxyCommand is `tsh proxy ssh`, which still works."""
    env = env_for(cluster)  # no SSH_AUTH_SOCK at all
    assert login(cluster, ssh_user, env, "--add-keys-to-agent=no").returncode == 0
    r = tsh_ssh(node, login_name, "echo on-disk-key", "-o", "LogLevel=DEBUG1", env=env)
    assert (r.returncode, r.stdout) == (0, "on-disk-key\n"), r.stderr
    assert "proxy ssh --cluster=" in r.stderr  # ssh -v shows the ProxyCommand it ran


@pytest.mark.parametrize("hop", ["openssh", "tsh-proxy-ssh"])
def test_proxy_refusal_is_the_last_thing_said(cluster, ssh_user, ssh_agent, hop) -> None:  # type: ignore[no-untyped-def]
    """An unknown node: the proxy's reason comes last, after ssh's own two lines about the hop."""
    if hop == "openssh":  # the user's agent holds the certificate: an all-OpenSSH hop
        env = env_for(cluster, ssh_agent.sock)
        assert login(cluster, ssh_user, env).returncode == 0
    else:
        env = env_for(cluster)
        assert login(cluster, ssh_user, env, "--add-keys-to-agent=no").returncode == 0
    r = run_tsh("ssh", f"{LOGIN}@no-such-node", "true", env=env)
    assert r.returncode == 255, r.stderr
    lines = r.stderr.splitlines()
    assert "no-such-node" in lines[-1] and "Connection closed" not in lines[-1], lines
    assert any("Connection closed" in ln for ln in lines[:-1]), lines


@pytest.mark.parametrize("hop", ["openssh", "tsh-proxy-ssh"])
def test_no_port_reaches_the_node_at_its_registered_port(cluster, node, ssh_user, ssh_agent, hop,
                                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without --port the proxy is asked for port 0 and dials the node where it registered
    (this node's sshd is on a random port, not 3022 or 22), as with real tsh."""
    if hop == "openssh":
        env = env_for(cluster, ssh_agent.sock)
        assert login(cluster, ssh_user, env).returncode == 0
    else:
        env = env_for(cluster)
        assert login(cluster, ssh_user, env, "--add-keys-to-agent=no").returncode == 0
    assert node.port not in (22, 3022)
    r = run_tsh("ssh", f"{LOGIN}@{node.name}", "echo registered", env=env)
    assert (r.returncode, r.stdout) == (0, "registered\n"), r.stderr
    (tmp_path / "f").write_text("copied")
    r = run_tsh("scp", str(tmp_path / "f"), f"{LOGIN}@{node.name}:{tmp_path}/g", env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g").read_text() == "copied"
    # A port that is not the registered one is refused by the proxy, by name.
    r = run_tsh("ssh", "--port=1", f"{LOGIN}@{node.name}", "true", env=env)
    assert r.returncode == 255
