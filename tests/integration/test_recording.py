"""Recording proxy mode end to end: real ssh/scp/sftp, real sshd nodes, the test cluster.

The seed page's scenario: the cluster runs with ``session_recording: proxy``,
so the proxy terminates the user's SSH connection, logs in to the OpenSSH
node with the agent the client forwarded, relays the session and records it.
A few client commands run against both recording modes, to show the client
needs no flags for either.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect
import pytest

from tests.cluster.launch import Cluster, launch_cluster
from tests.conftest import LOGIN, launch_node
from tests.integration._tsh import env_for, login, path_with, run_tsh, ssh_with_config, tsh_config_file
from tsh._agent.private import LazyAgent

pytestmark = pytest.mark.integration

USER = "rec-tester"
PLAIN_HOST_KEY = (
    "ssh: handshake failed: remote host presented a public key, expected a host certificate"
)


def _start(tmp_path_factory, *extra: str) -> Cluster:  # type: ignore[no-untyped-def]
    c = launch_cluster(
        tmp_path_factory.mktemp("rec-cluster") / "data", recording="proxy", extra_args=extra
    )
    c.add_user(USER, [LOGIN])
    return c


@pytest.fixture(scope="module")
def rec_cluster(tmp_path_factory) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    """A cluster in recording proxy mode (strict host key checks), shared by the module."""
    c = _start(tmp_path_factory)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def rec_nodes(rec_cluster, tmp_path_factory):  # type: ignore[no-untyped-def]
    """node1 (host certificate), plain1 (plain host key), forged1 (certificate of another CA)."""
    started = {}
    try:
        for name, kind in (("node1", "cert"), ("plain1", "plain"), ("forged1", "other-ca")):
            started[name] = launch_node(
                rec_cluster, name, tmp_path_factory.mktemp(f"rec-{name}"), kind
            )
        yield started
    finally:
        for n in started.values():
            n.stop()


@pytest.fixture(scope="module")
def node_user(cluster) -> str:  # type: ignore[no-untyped-def]
    cluster.add_user(USER, [LOGIN])
    return USER


@pytest.fixture(params=["node", "proxy"])
def mode(request, openssh):  # type: ignore[no-untyped-def]
    """(cluster, node) of the default node-recording cluster, or of the recording proxy one."""
    if request.param == "node":
        request.getfixturevalue("node_user")
        return request.getfixturevalue("cluster"), request.getfixturevalue("node")
    return request.getfixturevalue("rec_cluster"), request.getfixturevalue("rec_nodes")["node1"]


def _logged_in(cluster, agent) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = env_for(cluster, agent.sock)
    r = login(cluster, USER, env)
    assert r.returncode == 0, r.stderr
    return env


def _recordings(cluster) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return [line.split() for line in cluster.admin("recordings", "ls").splitlines()]


def _ssh(node, *args: str, env, input: str = ""):  # type: ignore[no-untyped-def]
    return run_tsh("ssh", f"--port={node.port}", *args, env=env, input=input)


# --------------------------------------------------------------------------- recording
def test_interactive_session_is_recorded(rec_cluster, rec_nodes, ssh_agent) -> None:
    node = rec_nodes["node1"]
    env = _logged_in(rec_cluster, ssh_agent)
    before = {r[0] for r in _recordings(rec_cluster)}
    child = pexpect.spawn(
        sys.executable, ["-m", "tsh", "ssh", f"--port={node.port}", f"{LOGIN}@{node.name}"],
        env={**env, "TERM": "xterm"}, encoding="utf-8", timeout=20, dimensions=(24, 80),
    )  # fmt: skip
    try:
        child.sendline("echo recorded-$RANDOM")
        child.expect(r"recorded-(\d+)")
        marker = child.match.group(0)
        child.setwinsize(33, 101)  # a window change, relayed to the node's pty
        child.sendline("stty size")
        child.expect("33 101")
        child.sendline("exit 4")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 4

    (new,) = [r for r in _recordings(rec_cluster) if r[0] not in before]
    rec_id, user, login_, node_name, start, end = new
    assert (user, login_, node_name) == (USER, LOGIN, node.name)
    assert end != "-" and end >= start
    shown = rec_cluster.admin("recordings", "show", rec_id)
    assert marker in shown and "33 101" in shown
    cast = (rec_cluster.data_dir / "recordings" / f"{rec_id}.cast").read_text().splitlines()
    header = json.loads(cast[0])
    assert (header["version"], header["width"], header["height"]) == (2, 80, 24)
    assert header["teleport"]["kind"] == "shell" and header["teleport"]["exit"] == 4
    assert _resizes(cast) == ["101x33"]


def _resizes(lines: list[str]) -> list[str]:
    return [e[2] for e in map(json.loads, lines[1:]) if e[1] == "r"]


def test_exec_is_recorded_with_exit_status(rec_cluster, rec_nodes, ssh_agent) -> None:
    node = rec_nodes["node1"]
    env = _logged_in(rec_cluster, ssh_agent)
    before = {r[0] for r in _recordings(rec_cluster)}
    r = _ssh(node, f"{LOGIN}@{node.name}", "echo exec-out; echo exec-err >&2; exit 5", env=env)
    assert (r.returncode, r.stdout) == (5, "exec-out\n")
    assert "exec-err" in r.stderr
    (new,) = [x for x in _recordings(rec_cluster) if x[0] not in before]
    shown = rec_cluster.admin("recordings", "show", new[0])
    assert "exec-out" in shown and "exec-err" in shown


# --------------------------------------------------------------------------- both modes
def test_exec_stdin_and_exit_status(mode, ssh_agent) -> None:  # type: ignore[no-untyped-def]
    cluster, node = mode
    env = _logged_in(cluster, ssh_agent)
    r = _ssh(node, f"{LOGIN}@{node.name}", "cat; exit 7", env=env, input="through-the-proxy")
    assert (r.returncode, r.stdout) == (7, "through-the-proxy"), r.stderr


def test_scp_and_sftp(mode, ssh_agent, openssh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster, node = mode
    env = _logged_in(cluster, ssh_agent)
    src = tmp_path / "payload.bin"
    src.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    remote = tmp_path / "remote"  # the node is this machine: its paths are ours
    remote.mkdir()
    r = run_tsh("scp", "-P", str(node.port), str(src), f"{LOGIN}@{node.name}:{remote}/", env=env)
    assert r.returncode == 0, r.stderr
    assert (remote / "payload.bin").read_bytes() == src.read_bytes()

    # sftp with the ssh_config `tsh config` writes (the all-OpenSSH ProxyCommand form)
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}",
                          "--proxy-command=openssh", env=env)
    batch = f"get {remote}/payload.bin {tmp_path}/back.bin\nput {src} {remote}/up.bin\n"
    s = subprocess.run(
        [openssh.sftp, "-F", str(cfg), "-b", "-", f"{LOGIN}@{node.name}.{cluster.name}"],
        input=batch, capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert s.returncode == 0, s.stderr
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert (remote / "up.bin").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("form", ["tsh", "openssh"])
def test_tsh_config_forms(mode, ssh_agent, openssh, tmp_path, form) -> None:  # type: ignore[no-untyped-def]
    cluster, node = mode
    env = _logged_in(cluster, ssh_agent)
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}",
                          f"--proxy-command={form}", env=env)
    r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@{node.name}.{cluster.name}",
                        "echo", f"via-{form}", env=env)
    assert (r.returncode, r.stdout) == (0, f"via-{form}\n"), r.stderr


# --------------------------------------------------------------------------- agent
def test_agent_forwarding_to_the_node_stays_opt_in(
    rec_cluster, rec_nodes, ssh_agent, openssh
) -> None:
    node = rec_nodes["node1"]
    env = _logged_in(rec_cluster, ssh_agent)
    without = _ssh(node, f"{LOGIN}@{node.name}", 'echo "agent=${SSH_AUTH_SOCK:-none}"', env=env)
    assert without.stdout == "agent=none\n", without.stderr
    with_a = _ssh(node, "-A", f"{LOGIN}@{node.name}", "ssh-add -L", env=env)
    assert with_a.returncode == 0, with_a.stderr
    assert "-cert-v01@openssh.com" in with_a.stdout


def test_proxy_command_without_forward_agent_gets_the_fix(
    rec_cluster, rec_nodes, ssh_agent, openssh, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The seed page's hand-written ProxyCommand, minus its `ForwardAgent yes`."""
    node = rec_nodes["node1"]
    env = _logged_in(rec_cluster, ssh_agent)
    home = Path(env["TELEPORT_HOME"])
    known_hosts = next(home.rglob("known_hosts"))
    host, port = rec_cluster.ssh_proxy_addr.rsplit(":", 1)
    common = f"-o UserKnownHostsFile={known_hosts} -o BatchMode=yes -F /dev/null"
    proxy_cmd = (
        f"ssh {common} -o ForwardAgent=no -o HostKeyAlias={host} -p {port} %r@{host} "
        f"-s proxy:%h:%p@{rec_cluster.name}"
    )
    r = subprocess.run(
        [openssh.ssh, *common.split(), "-o", f"ProxyCommand={proxy_cmd}", "-p", str(node.port),
         "-o", f"HostKeyAlias={node.name}.{rec_cluster.name}", f"{LOGIN}@{node.name}", "true"],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert r.returncode == 255
    assert "no agent was forwarded to the proxy" in r.stderr
    assert "ForwardAgent yes" in r.stderr
    assert r.stderr.count("no agent was forwarded") == 1


@pytest.fixture
def agent_tmpdir() -> Iterator[Path]:
    """A TMPDIR short enough for tsh's agent sockets (tmp_path may not be: tsh then
    falls back to /tmp, and a check of this directory would prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="tsh-t-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _echo_with_key_on_disk(cluster, node, openssh, env, tmp_path: Path, word: str, *config: str) -> None:  # type: ignore[no-untyped-def]
    """`tsh login -k no`, `tsh config CONFIG`, then plain `ssh node.<cluster> echo word` with it."""
    r = login(cluster, USER, env, "--add-keys-to-agent=no")
    assert r.returncode == 0, r.stderr
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}", *config, env=env)
    r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@{node.name}.{cluster.name}", "echo", word, env=env)
    assert (r.returncode, r.stdout) == (0, f"{word}\n"), r.stderr


def test_key_on_disk_and_no_agent(rec_cluster, rec_nodes, openssh, tmp_path, agent_tmpdir) -> None:  # type: ignore[no-untyped-def]
    """`-k no` and no ssh-agent at all: `tsh proxy ssh` forwards a private agent, and
    `tsh ssh` takes `tsh proxy ssh` as its ProxyCommand for such a profile."""
    node = rec_nodes["node1"]
    tmpdir = agent_tmpdir
    env = env_for(rec_cluster, TMPDIR=str(tmpdir))
    _echo_with_key_on_disk(rec_cluster, node, openssh, env, tmp_path, "private-agent")
    assert not list(tmpdir.glob("tsh-agent-*"))  # stopped and removed after the session

    r = _ssh(node, f"{LOGIN}@{node.name}", "echo via-tsh", env=env)
    assert (r.returncode, r.stdout) == (0, "via-tsh\n"), r.stderr
    assert not list(tmpdir.glob("tsh-agent-*"))


@pytest.fixture(scope="module")
def rec_v16(tmp_path_factory):  # type: ignore[no-untyped-def]
    """(cluster, node): a v16 recording proxy (tsh logs in with one RSA key) and a node."""
    c = launch_cluster(
        tmp_path_factory.mktemp("rec-v16") / "data", server_version="16.0.0", recording="proxy"
    )
    node = None
    try:
        c.add_user(USER, [LOGIN])
        node = launch_node(c, "node1", tmp_path_factory.mktemp("rec-v16-node1"), "cert")
        yield c, node
    finally:
        if node is not None:
            node.stop()
        c.stop()


@pytest.mark.parametrize("agent", ["holds-cert", "key-on-disk"])
@pytest.mark.parametrize("version", ["16", "17"])
def test_the_proxy_logs_in_to_the_node_with_either_agent(
    request, version, agent, ssh_agent, openssh, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """v16 (RSA) and v17: with the user's agent holding the certificate (`tsh login`), or
    with `-k no` and an agent without it (`tsh proxy ssh` forwards its private agent,
    which lists the plain key before the certificate, as ssh-add does)."""
    if version == "16":
        cluster, node = request.getfixturevalue("rec_v16")
    else:
        cluster, node = request.getfixturevalue("rec_cluster"), request.getfixturevalue("rec_nodes")["node1"]
    env = env_for(cluster, ssh_agent.sock)
    extra = ("--add-keys-to-agent=no",) if agent == "key-on-disk" else ()
    r = login(cluster, USER, env, *extra)
    assert r.returncode == 0, r.stderr
    held = subprocess.run([openssh.ssh_add, "-L"], env=env, capture_output=True, text=True).stdout
    assert ("-cert-v01@openssh.com" in held) == (agent == "holds-cert")
    cert = next(Path(env["TELEPORT_HOME"]).rglob("*-cert.pub")).read_text()
    assert cert.startswith("ssh-rsa-cert-v01@" if version == "16" else "ssh-ed25519-cert-v01@")
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}", env=env)
    r = ssh_with_config(openssh.ssh, cfg, f"{LOGIN}@{node.name}.{cluster.name}", "echo", "in", env=env)
    assert (r.returncode, r.stdout) == (0, "in\n"), r.stderr


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def _running(pid: int) -> bool:
    """Not gone and not a zombie (an orphan's zombie waits for an init that may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_sigkill_of_proxy_ssh_leaves_no_agent_and_no_sockets(mode, openssh, tmp_path, agent_tmpdir) -> None:  # type: ignore[no-untyped-def]
    """`-k no`: kill -9 of `tsh proxy ssh` mid-session stops the private agent holding the
    key (recording proxy) and removes the socket directory (both modes). (Without hop
    reuse: a shared master's agent lives as long as the master, tests/integration/test_reuse.py.)"""
    cluster, node = mode
    tmpdir = agent_tmpdir
    env = env_for(cluster, TMPDIR=str(tmpdir))
    assert login(cluster, USER, env, "--add-keys-to-agent=no").returncode == 0
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}", "--no-reuse", env=env)
    ssh = subprocess.Popen(
        [openssh.ssh, "-F", str(cfg), "-o", "BatchMode=yes", f"{LOGIN}@{node.name}.{cluster.name}",
         "echo up; exec sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert ssh.stdout is not None
        assert ssh.stdout.readline() == b"up\n"  # the proxy logged in to the node: agent used
        (proxy_cmd,) = _children(ssh.pid)
        agents = [
            pid for pid in _children(proxy_cmd)
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ssh-agent"
        ]  # fmt: skip
        assert len(agents) == (cluster.recording == "proxy")
        assert list(tmpdir.glob("tsh-agent-*"))
        os.kill(proxy_cmd, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(map(_running, agents)) or list(tmpdir.glob("tsh-agent-*")):
            assert time.monotonic() < deadline, (agents, list(tmpdir.iterdir()))
            time.sleep(0.01)
    finally:
        ssh.kill()
        ssh.communicate()


# --------------------------------------------------------------------------- host keys
@pytest.mark.parametrize(
    ("name", "message"),
    [("plain1", PLAIN_HOST_KEY), ("forged1", "ssh: handshake failed: ssh: no authorities for")],
)
def test_untrusted_node_host_keys_are_refused(
    rec_cluster, rec_nodes, ssh_agent, name, message
) -> None:  # type: ignore[no-untyped-def]
    node = rec_nodes[name]
    env = _logged_in(rec_cluster, ssh_agent)
    r = _ssh(node, f"{LOGIN}@{node.name}", "echo should-not-run", env=env)
    assert r.returncode == 255
    assert "should-not-run" not in r.stdout
    assert message in r.stderr, r.stderr
    assert "Accepted publickey" not in node.log()  # the agent was never used on it


def test_proxy_checks_host_keys_no_lets_a_plain_key_through(
    tmp_path_factory, ssh_agent, openssh
) -> None:  # type: ignore[no-untyped-def]
    lax = _start(tmp_path_factory, "--proxy-checks-host-keys", "no")
    node = None
    try:
        node = launch_node(lax, "plain1", tmp_path_factory.mktemp("lax-plain"), "plain")
        env = _logged_in(lax, ssh_agent)
        r = _ssh(node, f"{LOGIN}@{node.name}", "echo let-through", env=env)
        assert (r.returncode, r.stdout) == (0, "let-through\n"), r.stderr
        assert "proxy_checks_host_keys is off" in lax.log()
    finally:
        if node is not None:
            node.stop()
        lax.stop()


def test_recordings_show_unknown_id(rec_cluster) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="no recording"):
        rec_cluster.admin("recordings", "show", "00000000-0000-4000-8000-000000000000")
    with pytest.raises(RuntimeError, match="invalid recording id"):
        rec_cluster.admin("recordings", "show", "../../etc/passwd")
    assert all(
        re.match(r"^[0-9a-f-]{36} ", line)
        for line in rec_cluster.admin("recordings", "ls").splitlines()
    )


@pytest.fixture
def key_and_cert(tmp_path, monkeypatch, agent_tmpdir):  # type: ignore[no-untyped-def]
    """A key and a CA-signed certificate in files (not side by side), TMPDIR agent_tmpdir."""
    import asyncssh

    monkeypatch.setenv("TMPDIR", str(agent_tmpdir))
    ca = asyncssh.generate_private_key("ssh-ed25519")
    key = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.generate_user_certificate(key, "alice", principals=[LOGIN])
    key_path, cert_path = tmp_path / "alice", tmp_path / "alice-cert-elsewhere.pub"
    key.write_private_key(str(key_path))
    key_path.chmod(0o600)
    cert.write_certificate(str(cert_path))
    return key_path, cert_path


def _agent_lists(openssh, sock: str, cert_path: Path) -> bool:  # type: ignore[no-untyped-def]
    listed = subprocess.run(
        [openssh.ssh_add, "-L"], env={**os.environ, "SSH_AUTH_SOCK": sock},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return cert_path.read_text().split()[1] in listed


@contextmanager
def _served_lazy_agent(key_and_cert, user_sock: str | None = None) -> Iterator[LazyAgent]:  # type: ignore[no-untyped-def]
    """A LazyAgent for the key and certificate, answering; closed afterwards."""
    key_path, cert_path = key_and_cert
    lazy = LazyAgent(str(key_path), str(cert_path), 600, user_sock=user_sock)
    try:
        lazy.serve()
        yield lazy
    finally:
        lazy.close()


def test_private_agent_holds_key_and_certificate(openssh, key_and_cert, agent_tmpdir) -> None:  # type: ignore[no-untyped-def]
    """The agent `tsh proxy ssh` forwards for a key on disk; close() leaves nothing behind."""
    from tsh._agent.private import PrivateAgent

    key_path, cert_path = key_and_cert
    agent = PrivateAgent.start(str(key_path), str(cert_path), 600)
    try:
        assert _agent_lists(openssh, agent.sock, cert_path)
    finally:
        agent.close()
    assert agent.proc.poll() is not None
    assert list(agent_tmpdir.iterdir()) == []


def test_private_agent_dies_with_its_owner_even_by_sigkill(openssh, key_and_cert, agent_tmpdir) -> None:  # type: ignore[no-untyped-def]
    """Its reaper kills the agent and removes the directory once the owner is gone."""
    key_path, cert_path = key_and_cert
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from tsh._agent.private import PrivateAgent\n"
         f"a = PrivateAgent.start({str(key_path)!r}, {str(cert_path)!r}, 600)\n"
         "print(a.proc.pid, a.sock, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        pid, sock = owner.stdout.readline().split()
        assert _agent_lists(openssh, sock, cert_path)
        owner.kill()
        deadline = time.monotonic() + 10
        while _running(int(pid)) or list(agent_tmpdir.iterdir()):
            assert time.monotonic() < deadline, list(agent_tmpdir.iterdir())
            time.sleep(0.01)
    finally:
        owner.kill()
        owner.communicate()


def test_lazy_agent_starts_the_private_agent_on_first_use(openssh, key_and_cert, agent_tmpdir) -> None:  # type: ignore[no-untyped-def]
    """No ssh-agent runs until someone uses the forwarded socket; close() leaves nothing."""
    with _served_lazy_agent(key_and_cert) as lazy:
        assert lazy._agent is None  # nothing started yet
        assert _agent_lists(openssh, lazy.sock, key_and_cert[1])
        proc = lazy._agent.proc  # type: ignore[union-attr]
        assert Path(lazy._agent.sock).parent.parent == agent_tmpdir  # type: ignore[union-attr]
    assert proc.poll() is not None
    assert list(agent_tmpdir.iterdir()) == []


def test_lazy_agent_presence_socket_starts_nothing(openssh, key_and_cert, agent_tmpdir) -> None:  # type: ignore[no-untyped-def]
    """The hop's SSH_AUTH_SOCK accepts and hangs up: ssh sees an agent with nothing to offer."""
    with _served_lazy_agent(key_and_cert) as lazy:
        listed = subprocess.run(
            [openssh.ssh_add, "-L"], env={**os.environ, "SSH_AUTH_SOCK": lazy.presence_sock},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert listed.returncode != 0 and listed.stdout == ""
        assert lazy._agent is None
    assert list(agent_tmpdir.iterdir()) == []


def test_lazy_agent_prefers_the_users_agent_holding_the_certificate(
    openssh, key_and_cert, ssh_agent, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    key_path, cert_path = key_and_cert
    side_by_side = tmp_path / "id"
    side_by_side.symlink_to(key_path)
    (tmp_path / "id-cert.pub").symlink_to(cert_path)
    subprocess.run([openssh.ssh_add, "-q", str(side_by_side)], env=ssh_agent.env, check=True)
    with _served_lazy_agent(key_and_cert, user_sock=ssh_agent.sock) as lazy:
        assert _agent_lists(openssh, lazy.sock, cert_path)
        assert lazy._agent is None  # relayed to the user's agent: no private one


def test_an_agent_process_runs_only_for_a_recording_proxy(mode, openssh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`-k no`, no agent: `tsh proxy ssh` alone (no hop reuse) starts ssh-agent only if the
    proxy asks for it. (A shared master always has its own: tests/integration/test_reuse.py.)"""
    cluster, node = mode
    marker = tmp_path / "ssh-agent-ran"
    env = env_for(cluster)
    wrapper = f'echo >> "{marker}"\nexec "{openssh.ssh_agent}" "$@"\n'
    env["PATH"] = path_with(tmp_path / "bin", **{"ssh-agent": wrapper})
    _echo_with_key_on_disk(cluster, node, openssh, env, tmp_path, "ok", "--no-reuse")
    recording_proxy = cluster.recording == "proxy"
    assert marker.exists() == recording_proxy


def test_openssh_without_forward_agent_path_falls_back(rec_cluster, rec_nodes, openssh, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """OpenSSH before 8.2 refuses `ForwardAgent <path>`: the hop forwards SSH_AUTH_SOCK instead."""
    node = rec_nodes["node1"]
    refused = tmp_path / "refused"
    old_ssh = (  # what OpenSSH 7.x says to `-o ForwardAgent="<path>"`
        'for a in "$@"; do case "$a" in ForwardAgent=\\"/*)\n'
        f'  echo >> "{refused}"; p="${{a#ForwardAgent=\\"}}"\n'
        '  echo "command-line line 0: unsupported option \\"${p%\\"}\\"." >&2; exit 255;;\n'
        "esac; done\n"
        f'exec "{openssh.ssh}" "$@"\n'
    )
    env = env_for(rec_cluster)
    env["PATH"] = path_with(tmp_path / "bin", ssh=old_ssh)
    _echo_with_key_on_disk(rec_cluster, node, openssh, env, tmp_path, "old-openssh")
    assert refused.exists()  # the first form was tried, and refused
