"""Hop reuse (tsh._openssh.reuse): one authenticated proxy connection serves many hops.

Real OpenSSH clients through `tsh config`'s output, the test cluster (which
logs each proxy authentication, so tests count them) and real sshd nodes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cluster.launch import Cluster, launch_cluster
from tests.conftest import LOGIN, launch_node
from tests.integration._profiles import LoggedIn, log_in
from tests.integration._tsh import path_with, read_until, ssh_with_config, tsh_config_file
from tsh import ProfileStore

pytestmark = pytest.mark.integration

FORMS = ("openssh", "tsh")


def _sockets(me: LoggedIn) -> list[Path]:
    mux = me.home / "mux"
    masters = (p for p in mux.iterdir() if p.is_socket() and not p.name.endswith(".agent"))
    return sorted(masters) if mux.is_dir() else []


def _master_pid(sock: Path) -> int:
    r = subprocess.run(["ssh", "-S", str(sock), "-O", "check", "_"], capture_output=True,
                       text=True, timeout=10, check=False)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.split("pid=")[1].split(")")[0])


def _alive(pid: int) -> bool:
    """Is ``pid`` running (a zombie, which init may reap late, is not)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def _config(tmp_path: Path, me: LoggedIn, port: int, form: str, *extra: str) -> Path:
    return tsh_config_file(tmp_path / f"ssh_config-{me.paths.user}-{form}", f"--port={port}",
                           f"--proxy-command={form}", *extra, env=me.env(), installed=True)


def _ssh(cfg: Path, dest: str, *cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return ssh_with_config("ssh", cfg, dest, *cmd, env=env)


def _open_session(cfg: Path, dest: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """An ssh session through ``cfg`` that is at the node and waits for a line."""
    p = subprocess.Popen(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", dest,
                          'echo ready; read x; echo "got $x"'],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None
    assert read_until(p.stdout.fileno(), b"\n", 30) == b"ready\n", p.poll()
    return p


def _finish(p: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    out, err = p.communicate(b"on\n", timeout=30)
    return p.returncode, out


def _with_a_master(  # type: ignore[no-untyped-def]
    tmp_path: Path, cluster: Cluster, node, form: str
) -> tuple[LoggedIn, Path, str, Path, int]:
    """A new login whose first hop started a master: (login, config, destination, socket, pid)."""
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, form)
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    assert _ssh(cfg, dest, "true", env=me.env()).returncode == 0
    (sock,) = _sockets(me)
    return me, cfg, dest, sock, _master_pid(sock)


@pytest.mark.parametrize("form", FORMS)
def test_hops_share_one_authenticated_connection(cluster, node, tmp_path, form) -> None:
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, form)
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    before = cluster.proxy_authentications()
    for i in range(3):
        r = _ssh(cfg, dest, "echo", f"hop{i}", env=me.env())
        assert (r.returncode, r.stdout, r.stderr) == (0, f"hop{i}\n", "")
    assert cluster.proxy_authentications() - before == 1
    (sock,) = _sockets(me)
    assert stat.S_IMODE((me.home / "mux").stat().st_mode) == 0o700
    assert sock.name[16:] == ("-" if form == "openssh" else "+") + LOGIN


def test_no_reuse_logs_in_every_time(cluster, node, tmp_path) -> None:
    me = log_in(cluster, [LOGIN])
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    for form in FORMS:
        cfg = _config(tmp_path, me, node.port, form, "--no-reuse")
        before = cluster.proxy_authentications()
        for _ in range(2):
            r = _ssh(cfg, dest, "true", env=me.env())
            assert r.returncode == 0, r.stderr
        assert cluster.proxy_authentications() - before == 2
    assert _sockets(me) == []


def test_profiles_logins_and_certificates_never_share_a_master(cluster, node, tmp_path) -> None:
    alice = log_in(cluster, [LOGIN, "nobody-here"])
    cfg = _config(tmp_path, alice, node.port, "openssh")
    assert _ssh(cfg, f"{LOGIN}@{node.name}.{cluster.name}", "true", env=alice.env()).returncode == 0
    # A second login is a second master (the node refuses it; the proxy took it).
    # (Output to /dev/null: only the master it leaves behind matters here.)
    subprocess.run(["ssh", "-F", str(cfg), "-o", "BatchMode=yes",
                    f"nobody-here@{node.name}.{cluster.name}", "true"], env=alice.env(),
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60, check=False)
    names = sorted(p.name for p in _sockets(alice))
    assert len(names) == 2 and {n[17:] for n in names} == {LOGIN, "nobody-here"}
    # Another user of the same proxy, in the same home: its own master.
    bob = log_in(cluster, [LOGIN])
    cfg_bob = _config(tmp_path, bob, node.port, "openssh")
    assert _ssh(cfg_bob, f"{LOGIN}@{node.name}.{cluster.name}", "true", env=bob.env()).returncode == 0
    assert len(_sockets(alice)) == 3  # same home: alice's two, bob's one
    tags = {p.name[:16] for p in _sockets(alice)}
    assert len(tags) == 2


def test_login_stamps_the_tag_so_that_the_openssh_form_needs_no_clock(cluster, node, tmp_path) -> None:
    from tsh._openssh.reuse import PERSIST_SECONDS, fresh_until

    me = log_in(cluster, [LOGIN])
    valid_before = int(me.paths.reuse_tag.read_text().split()[0])
    assert me.paths.reuse_tag.stat().st_mtime == fresh_until(valid_before)
    log = tmp_path / "ssh-args"
    env = me.env(PATH=path_with(tmp_path / "bin", date="exit 1\n",  # a clock that would spoil the hop
                                 ssh=f'echo "$*" >> "{log}"\nexec {_real("ssh")} "$@"\n'))
    cfg = _config(tmp_path, me, node.port, "openssh")
    assert _ssh(cfg, f"{LOGIN}@{node.name}.{cluster.name}", "true", env=env).returncode == 0
    assert len(_sockets(me)) == 1
    assert f"-oControlPersist={PERSIST_SECONDS}" in log.read_text().split()


def _real(name: str) -> str:
    found = shutil.which(name)
    assert found is not None
    return found


def test_persist_is_capped_by_the_certificate(cluster, node, tmp_path) -> None:
    me = log_in(cluster, [LOGIN])
    tag = me.paths.reuse_tag
    valid_before, prefix = tag.read_text().split()
    soon = int(time.time()) + 42
    tag.write_text(f"{soon} {prefix}\n")  # as if the certificate had 42 s left
    cfg = _config(tmp_path, me, node.port, "openssh")
    log = tmp_path / "ssh-args"
    env = me.env(PATH=path_with(tmp_path / "bin", ssh=f'echo "$*" >> "{log}"\nexec {_real("ssh")} "$@"\n'))
    assert _ssh(cfg, f"{LOGIN}@{node.name}.{cluster.name}", "true", env=env).returncode == 0
    assert len(_sockets(me)) == 1
    persist = [int(w.split("=")[1]) for w in log.read_text().split()
               if w.removeprefix("-o").startswith("ControlPersist=")]
    assert persist and all(0 < p <= 42 for p in persist)


@pytest.mark.parametrize("form", FORMS)
def test_an_expired_certificate_never_rides_an_old_master(cluster, node, tmp_path, form) -> None:
    me, cfg, dest, sock, pid = _with_a_master(tmp_path, cluster, node, form)
    session = _open_session(cfg, dest, me.env())
    # The certificate "expires" (its tag says so; the proxy would still take it).
    tag = me.paths.reuse_tag
    _, prefix = tag.read_text().split()
    tag.write_text(f"{int(time.time()) - 1} {prefix}\n")
    before = cluster.proxy_authentications()
    r = _ssh(cfg, dest, "true", env=me.env())
    assert r.returncode == 0, r.stderr
    assert cluster.proxy_authentications() - before == 1  # the hop logged in by itself
    assert _sockets(me) == []  # no hop rides the master any more
    # A session already open on it runs on, as real tsh's sessions outlive
    # their certificate; then the master ends.
    assert _alive(pid)
    assert _finish(session) == (0, b"got on\n")
    assert _wait_gone(pid), "the expired certificate's master still runs"


@pytest.mark.parametrize("form", FORMS)
def test_a_dead_master_falls_back_transparently(cluster, node, tmp_path, form) -> None:
    me, cfg, dest, sock, pid = _with_a_master(tmp_path, cluster, node, form)
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)
    assert sock.is_socket()  # stale: nobody listens
    r = _ssh(cfg, dest, "echo", "again", env=me.env())
    assert (r.returncode, r.stdout, r.stderr) == (0, "again\n", "")
    (sock2,) = _sockets(me)
    assert _master_pid(sock2) != pid  # and a new master took over


def test_a_lock_left_by_a_zombie_is_taken_over(cluster, node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`kill -0` succeeds on a zombie; where nothing reaps them (a container without an
    init), the all-OpenSSH form's lock of a dead hop must not hold cold starts."""
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "openssh")
    _, prefix = me.paths.reuse_tag.read_text().split()
    lock = Path(f"{prefix}-{LOGIN}.lock")
    zombie = subprocess.Popen(["true"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped
        lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock.write_text(f"{zombie.pid}\n")
        r = _ssh(cfg, f"{LOGIN}@{node.name}.{cluster.name}", "echo", "ok", env=me.env())
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
        assert lock.read_text().strip() != str(zombie.pid)  # taken over, not waited out
        assert len(_sockets(me)) == 1
    finally:
        zombie.wait()


def test_a_home_too_long_for_a_socket_means_no_reuse(cluster, node, tmp_path, monkeypatch) -> None:
    home = tmp_path / ("h" * 90)
    monkeypatch.setenv("TELEPORT_HOME", str(home))
    me = log_in(cluster, [LOGIN])
    assert not me.paths.reuse_tag.exists()
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    for form in FORMS:
        cfg = _config(tmp_path, me, node.port, form)
        r = _ssh(cfg, dest, "echo", "ok", env=me.env())
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    assert _sockets(me) == []


def test_a_hundred_parallel_hops_log_in_once(cluster, node, tmp_path) -> None:
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "openssh")
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    before = cluster.proxy_authentications()

    def one(i: int) -> tuple[int, str, str]:
        r = _ssh(cfg, dest, "echo", f"n{i}", env=me.env())
        return r.returncode, r.stdout, r.stderr

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(one, range(100)))
    failures = [(i, r) for i, r in enumerate(results) if r[:2] != (0, f"n{i}\n")]
    assert failures == []
    # Not one hop went alone ("ControlSocket ... already exists, disabling multiplexing").
    assert [r[2] for r in results if "ontrol" in r[2] or "multiplex" in r[2]] == []
    assert cluster.proxy_authentications() - before == 1
    assert len(_sockets(me)) == 1


def test_a_master_whose_proxy_went_silent_ends_and_hops_dial_afresh(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A proxy that stops answering (SIGSTOP here; for a laptop, sleep or another
    network: packets that vanish) under a master that is up: the master ends
    within 30-40 s (its keep-alive), not after TCP's 15 minutes, and the hop
    waiting on it dials afresh: the tsh form's by its retry (alone, this once),
    the openssh form's as OpenSSH does when its master fails it (ControlMaster
    auto: it becomes the new master). A cluster per form, each woken as soon
    as its master is gone: the fresh dial waits 15 s at most (ConnectTimeout)."""
    started: list = []
    try:
        riders, masters, clusters = {}, {}, {}
        for form in FORMS:
            cluster = launch_cluster(tmp_path / f"silent-{form}")
            started.append(cluster)
            node = launch_node(cluster, "node1", tmp_path / f"silent-node-{form}")
            started.append(node)
            home = tempfile.mkdtemp(prefix="tsh-")  # short: a control path has 86 bytes at most
            started.append(home)
            monkeypatch.setenv("TELEPORT_HOME", home)
            me = log_in(cluster, [LOGIN])
            cfg = _config(tmp_path, me, node.port, form)
            dest = f"{LOGIN}@{node.name}.{cluster.name}"
            assert _ssh(cfg, dest, "true", env=me.env()).returncode == 0
            (sock,) = _sockets(me)
            masters[form], clusters[form] = _master_pid(sock), cluster
            os.kill(cluster.proc.pid, signal.SIGSTOP)
            riders[form] = subprocess.Popen(
                ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", dest, "echo", "again"], env=me.env(),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        silent = set(FORMS)
        deadline = time.monotonic() + 60
        while silent and time.monotonic() < deadline:
            for form in [f for f in silent if not _alive(masters[f])]:
                os.kill(clusters[form].proc.pid, signal.SIGCONT)
                silent.discard(form)
            time.sleep(0.02)
        assert not silent  # each master ended by itself
        for form, rider in riders.items():
            out, err = rider.communicate(timeout=60)
            assert (rider.returncode, out) == (0, "again\n"), err
            if form == "tsh":  # (the openssh form shows OpenSSH's "read from master failed")
                assert "mux_client" not in err, err
    finally:
        for thing in reversed(started):
            if isinstance(thing, str):
                shutil.rmtree(thing, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                os.kill(thing.proc.pid, signal.SIGCONT)
            thing.stop()


# --------------------------------------------------------------------------- recording proxy
@pytest.fixture(scope="module")
def rec(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A recording proxy cluster and its node1."""
    c = launch_cluster(tmp_path_factory.mktemp("reuse-rec") / "data", recording="proxy")
    n = None
    try:
        n = launch_node(c, "node1", tmp_path_factory.mktemp("reuse-rec-node"))
        yield c, n
    finally:
        if n is not None:
            n.stop()
        c.stop()


def _agent_with(me: LoggedIn, cluster: Cluster, ssh_agent) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The seed page's case: the user's agent holds key and certificate."""

    key = me.home / "k"
    shutil.copy(me.paths.private_key, key)
    shutil.copy(me.paths.ssh_cert(cluster.name), f"{key}-cert.pub")
    subprocess.run(["ssh-add", str(key)], env=ssh_agent.env, check=True, capture_output=True)
    key.unlink()
    Path(f"{key}-cert.pub").unlink()
    return me.env(SSH_AUTH_SOCK=ssh_agent.sock)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("users_agent", [True, False], ids=["users-agent", "no-agent"])
def test_a_recording_proxy_gets_the_agent_on_every_reused_session(
    rec, ssh_agent, tmp_path, form, users_agent
) -> None:
    cluster, node = rec
    me = log_in(cluster, [LOGIN])
    if users_agent:
        env = _agent_with(me, cluster, ssh_agent)
    elif form == "openssh":
        pytest.skip("the all-OpenSSH form forwards only the user's agent")
    else:
        env = me.env()
    cfg = _config(tmp_path, me, node.port, form)
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    before = cluster.proxy_authentications()
    outs = [_ssh(cfg, dest, 'echo "agent=${SSH_AUTH_SOCK:-none}"', env=env) for _ in range(3)]
    assert [(r.returncode, r.stdout) for r in outs] == [(0, "agent=none\n")] * 3, outs[-1].stderr
    assert cluster.proxy_authentications() - before == 1
    # The node gets an agent only when the user's ssh asks for it.
    if users_agent:
        r = subprocess.run(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", "-A", dest, "ssh-add -L"],
                           capture_output=True, text=True, env=env, timeout=60, check=False)
        assert r.returncode == 0 and "-cert-v01@openssh.com" in r.stdout, r.stderr


def _agents(me: LoggedIn) -> set[Path]:
    """The agent sockets the masters forward (not one still loading, ``.n.agent``)."""
    return {p for p in (me.home / "mux").iterdir()
            if p.name.endswith(".agent") and not p.name.endswith(".n.agent")}


def _guard_of(agent_sock: Path) -> int:
    """The pid of the guard shell of the master's agent at ``agent_sock``."""
    r = subprocess.run(["pgrep", "-f", f"^sh -c .* tsh-agent-guard .* {re.escape(str(agent_sock))} "],
                       capture_output=True, text=True, check=False)
    (pid,) = r.stdout.split()
    return int(pid)


def test_an_old_masters_agent_exiting_leaves_the_new_masters_alone(rec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each master forwards its own agent socket: the previous master's guard
    stops its agent within 10 s of that master's end, although a new master
    listens on the same socket by then, and removes only its own."""
    cluster, node = rec
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "tsh")
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    assert _ssh(cfg, dest, "true", env=me.env()).returncode == 0
    (sock,) = _sockets(me)
    (old_agent,) = _agents(me)
    old_guard = _guard_of(old_agent)
    subprocess.run(["ssh", "-S", str(sock), "-O", "exit", "_"], capture_output=True, timeout=10, check=False)
    assert _ssh(cfg, dest, "true", env=me.env()).returncode == 0  # a new master
    (new_agent,) = _agents(me) - {old_agent}
    assert _wait_gone(old_guard, timeout=15)  # its check every 10 s sees another master
    assert not old_agent.exists() and new_agent.is_socket()
    r = _ssh(cfg, dest, "echo", "recorded", env=me.env())  # the recording proxy uses the agent
    assert (r.returncode, r.stdout) == (0, "recorded\n"), r.stderr


def _ssh_add_once_the_master_is_up(tmp_path: Path, *, fails: bool = False) -> dict[str, str]:
    """PATH with an ``ssh-add`` that waits until the hop has logged in (the master's
    socket, named by the key's link ``<socket>.<random>.id``, listens) and half a
    second more; then fails, or adds the key. Were the agent loaded before the hop
    started, it would wait in vain (and fail)."""
    then = "exit 1" if fails else f'exec {_real("ssh-add")} "$@"'
    return {"PATH": path_with(tmp_path / "slow-bin", **{"ssh-add": (
        'eval link=\\${$#}; master=${link%.*.id}; i=0\n'
        'until [ -S "$master" ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.05; done\n'
        f"sleep 0.5\n{then}\n")})}  # fmt: skip


def test_a_new_masters_agent_is_loaded_while_the_hop_logs_in(rec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ssh-add runs once the hop has logged in; the recording proxy asks for the
    agent before it is done: the gate holds the request until the agent is in
    place, and the hops waiting for the master ride it only then."""
    cluster, node = rec
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "tsh")
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    env = me.env(**_ssh_add_once_the_master_is_up(tmp_path))
    before = cluster.proxy_authentications()
    with ThreadPoolExecutor(3) as pool:  # the first becomes the master, two wait for it
        outs = list(pool.map(lambda _: _ssh(cfg, dest, "echo", "recorded", env=env), range(3)))
    assert [(r.returncode, r.stdout) for r in outs] == [(0, "recorded\n")] * 3, outs[0].stderr
    assert cluster.proxy_authentications() - before == 1
    (agent,) = _agents(me)
    r = subprocess.run(["ssh-add", "-L"], env={"SSH_AUTH_SOCK": str(agent)}, capture_output=True,
                       text=True, check=False)
    assert "-cert-v01@openssh.com" in r.stdout  # the agent itself, not the gate
    assert not list((me.home / "mux").glob("*.id*"))  # the key's links are gone


def test_a_new_masters_agent_starts_after_a_session_that_did_not_need_it(cluster, node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A proxy that does not record never asks: ssh-agent and ssh-add run after the
    first session (not in its set-up), and the agent is in place for the next."""
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "tsh")
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    ended, mark = tmp_path / "session-ended", tmp_path / "ssh-add-ran"
    env = me.env(PATH=path_with(tmp_path / "bin", **{"ssh-add": (
        f'[ -e {ended} ] && echo after > {mark} || echo during > {mark}\n'
        f'exec {_real("ssh-add")} "$@"\n')}))  # fmt: skip
    before = cluster.proxy_authentications()
    r = _ssh(cfg, dest, "touch", str(ended), env=env)  # the node is this machine
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 10
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mark.read_text() == "after\n"
    (agent,) = _agents(me)
    while time.monotonic() < deadline:
        r = subprocess.run(["ssh-add", "-L"], env={"SSH_AUTH_SOCK": str(agent)},
                           capture_output=True, text=True, check=False)
        if "-cert-v01@openssh.com" in r.stdout:
            break
        time.sleep(0.02)
    assert "-cert-v01@openssh.com" in r.stdout
    assert _ssh(cfg, dest, "true", env=env).returncode == 0
    assert cluster.proxy_authentications() - before == 1


def test_a_master_that_never_came_up_leaves_no_agent_behind(cluster, node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "tsh")
    r = _ssh(cfg, f"not-a-login@{node.name}.{cluster.name}", "true", env=me.env())
    assert r.returncode != 0  # the proxy refuses a login the certificate does not allow
    deadline = time.monotonic() + 5  # the guard exits at once (SIGTERM while it waits)
    while (left := [p.name for p in (me.home / "mux").iterdir() if not p.name.endswith(".lock")]):
        assert time.monotonic() < deadline, left
        time.sleep(0.02)
    assert not _sockets(me)


def test_a_new_masters_agent_is_set_up_even_if_tsh_is_killed(cluster, node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`kill -9` of the first hop's tsh during a session that never needed the agent:
    the guard's pipe closes with it (nothing else holds it), so the guard still puts
    the agent in place for the hops to come."""
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "tsh")
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    env = me.env()
    first = subprocess.Popen(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", dest, "sleep 30"],
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not _sockets(me):  # the master is up
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        hop_argv = f"tsh proxy ssh .*--proxy={re.escape(cluster.web_addr)} .*{node.name}"
        (hop,) = subprocess.run(["pgrep", "-f", hop_argv], capture_output=True,
                                text=True, check=False).stdout.split()
        os.kill(int(hop), signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    (agent,) = _agents(me)
    while time.monotonic() < deadline:
        r = subprocess.run(["ssh-add", "-L"], env={"SSH_AUTH_SOCK": str(agent)}, capture_output=True,
                           text=True, check=False)
        if "-cert-v01@openssh.com" in r.stdout:
            break
        time.sleep(0.05)
    assert "-cert-v01@openssh.com" in r.stdout
    before = cluster.proxy_authentications()
    assert _ssh(cfg, dest, "true", env=env).returncode == 0
    assert cluster.proxy_authentications() == before  # it rode the master


def test_a_master_that_comes_up_after_tsh_was_killed_keeps_its_agent(cluster, node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`kill -9` of the first hop's tsh before its ssh has logged in: the master
    comes up all the same, so the guard, which finds no master yet when it starts,
    must not take that for the master's end; it stops the agent only once the
    master it first sees is gone."""
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "tsh")
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    late = f'case "$*" in *ControlMaster=yes*) sleep 1;; esac\nexec {_real("ssh")} "$@"\n'
    env = me.env(PATH=path_with(tmp_path / "slow-bin", ssh=late))  # the master's hop starts late
    first = subprocess.Popen(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", dest, "true"], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        hop_argv = f"tsh proxy ssh .*--proxy={re.escape(cluster.web_addr)} .*{node.name}"
        deadline = time.monotonic() + 20
        guard_argv = f"^sh -c read -r _; exec ssh-agent .* {re.escape(str(me.home))}/"  # waiting
        while not (guards := subprocess.run(["pgrep", "-f", guard_argv], capture_output=True,
                                            text=True, check=False).stdout.split()):  # fmt: skip
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        (hop,) = subprocess.run(["pgrep", "-f", hop_argv], capture_output=True,
                                text=True, check=False).stdout.split()
        assert not _sockets(me)  # still sleeping: no master yet
        os.kill(int(hop), signal.SIGKILL)
        while not _sockets(me):  # the master comes up without its tsh
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait(10)
    (guard,) = guards
    assert not _wait_gone(int(guard), timeout=12)  # past its first check: it keeps the agent
    (agent,) = _agents(me)
    r = subprocess.run(["ssh-add", "-L"], env={"SSH_AUTH_SOCK": str(agent)}, capture_output=True,
                       text=True, check=False)
    assert "-cert-v01@openssh.com" in r.stdout
    (sock,) = _sockets(me)
    subprocess.run(["ssh", "-S", str(sock), "-O", "exit", "_"], capture_output=True, timeout=10,
                   check=False)
    assert _wait_gone(int(guard), timeout=15)  # and ends with its master


def test_no_hop_rides_a_master_whose_agent_failed(rec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster, node = rec
    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "tsh")
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    env = me.env(**_ssh_add_once_the_master_is_up(tmp_path, fails=True))
    before = cluster.proxy_authentications()
    first = _ssh(cfg, dest, "echo", "recorded", env=env)
    assert first.returncode != 0  # the recording proxy found no agent
    assert not _agents(me) and not list((me.home / "mux").glob("*.id*"))
    (tmp_path / "slow-bin" / "ssh-add").unlink()  # ssh-add works again
    r = _ssh(cfg, dest, "echo", "recorded", env=env)
    assert (r.returncode, r.stdout) == (0, "recorded\n"), r.stderr
    assert cluster.proxy_authentications() - before == 2  # a new master: none to ride


# --------------------------------------------------------------------------- login, logout
def _refusing_user_config(tmp_path: Path) -> str:
    """PATH with an ``ssh`` that fails each ``-O`` command without ``-F /dev/null``,
    as OpenSSH does with a user's ssh_config it refuses (``UseKeychain yes``, from
    a Mac, on Linux without ``IgnoreUnknown``) written after the masters started:
    the ssh commands that started them had read it fine."""
    return path_with(tmp_path / "refusing-bin", ssh=(
        'case " $* " in *" -O "*) case " $* " in *" -F /dev/null "*) ;; *)\n'
        'echo "~/.ssh/config: line 1: Bad configuration option: usekeychain" >&2; exit 255;;\n'
        f'esac;; esac\nexec {_real("ssh")} "$@"\n'))  # fmt: skip


@pytest.mark.parametrize("user_config", ["fine", "refused"])
def test_relogin_and_logout_stop_the_profiles_masters(cluster, node, tmp_path, user_config) -> None:  # type: ignore[no-untyped-def]
    """No new session rides them, the running ones finish (as with real tsh's
    logout, which leaves open sessions alone), then the masters exit."""
    from tests.integration._tsh import env_for, login, run_tsh

    user = f"reuser-{user_config}"
    cluster.add_user(user, [LOGIN])
    env = env_for(cluster)
    if user_config == "refused":
        env["PATH"] = _refusing_user_config(tmp_path)
    assert login(cluster, user, env).returncode == 0
    store = ProfileStore(env["TELEPORT_HOME"])
    me = LoggedIn(store.home, store.paths_for(store.select(None)))
    dest = f"{LOGIN}@{node.name}.{cluster.name}"
    cfgs = {form: _config(tmp_path, me, node.port, form) for form in FORMS}

    def masters() -> tuple[dict[str, int], list[subprocess.Popen[bytes]]]:
        for cfg in cfgs.values():
            r = _ssh(cfg, dest, "true", env=env)
            assert r.returncode == 0, r.stderr
        found = {p.name: _master_pid(p) for p in _sockets(me)}
        assert len(found) == 2  # one per form
        return found, [_open_session(cfg, dest, env) for cfg in cfgs.values()]

    def hop_files() -> set[str]:  # the hops' start-up locks and "now" stamps
        mux = me.home / "mux"
        if not mux.is_dir():  # (logout removes it)
            return set()
        return {p.name for p in mux.iterdir() if p.name.endswith((".lock", ".now"))}

    def stopped(found: dict[str, int], sessions: list[subprocess.Popen[bytes]]) -> None:
        assert not set(found) & {p.name for p in _sockets(me)}  # no new session rides them
        assert not hop_files() & old_files
        assert all(_alive(pid) for pid in found.values())  # while their sessions run
        assert [_finish(p) for p in sessions] == [(0, b"got on\n")] * 2
        assert all(_wait_gone(pid) for pid in found.values())

    first, riding = masters()
    old_files = hop_files()
    assert {n.rsplit(".", 1)[1] for n in old_files} == {"lock", "now"}  # (both forms' kinds)
    r = login(cluster, user, env)  # a new certificate
    assert r.returncode == 0, r.stderr
    stopped(first, riding)
    second, riding = masters()
    assert set(second).isdisjoint(first)  # the new certificate's own masters
    old_files = hop_files()
    assert old_files
    r = run_tsh("logout", env=env)
    assert r.returncode == 0, r.stderr
    stopped(second, riding)
    assert not hop_files()


# --------------------------------------------------------------------------- tsh ssh, tsh scp
def test_tsh_ssh_and_scp_ride_one_master(cluster, node, tmp_path) -> None:
    from tests.integration._tsh import run_tsh

    me = log_in(cluster, [LOGIN])
    before = cluster.proxy_authentications()
    for i in range(2):
        r = run_tsh("ssh", f"--port={node.port}", f"{LOGIN}@{node.name}", "echo", f"s{i}",
                    env=me.env())
        assert (r.returncode, r.stdout) == (0, f"s{i}\n"), r.stderr
    src = tmp_path / "f.txt"
    src.write_text("payload\n")
    r = run_tsh("scp", "-P", str(node.port), str(src), f"{LOGIN}@{node.name}:{tmp_path}/g.txt",
                env=me.env())
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.txt").read_text() == "payload\n"
    assert cluster.proxy_authentications() - before == 1
    r = run_tsh("ssh", "--no-reuse", f"--port={node.port}", f"{LOGIN}@{node.name}", "true",
                env=me.env())
    assert r.returncode == 0, r.stderr
    assert cluster.proxy_authentications() - before == 2


def test_a_dropped_first_master_connection_is_retried(cluster, node, tmp_path) -> None:
    """sshd's MaxStartups drops the master's first connection: `tsh proxy ssh` tries again."""
    from tests.integration._tsh import ssh_dropping_the_first_master

    me = log_in(cluster, [LOGIN])
    cfg = _config(tmp_path, me, node.port, "tsh")
    dropping, mark = ssh_dropping_the_first_master(tmp_path)
    env = me.env(**dropping)
    before = cluster.proxy_authentications()
    r = _ssh(cfg, f"{LOGIN}@{node.name}.{cluster.name}", "echo", "retried", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "retried\n", "")
    assert mark.exists()  # the first master was dropped
    assert len(_sockets(me)) == 1  # the second one listens
    assert cluster.proxy_authentications() - before == 1
