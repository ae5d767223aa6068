"""The hop's host cleaning and subsystem name (tsh._openssh.hop), tsh._proxy's relay and child.

What is retried, target parsing and the dial: test_proxy_policy.py; the supervisor:
test_proxy_supervisor.py.
"""

from __future__ import annotations

import fcntl
import os
import signal

import pytest

from tsh._openssh.hop import clean_target_host, subsystem_name


def test_clean_target_host() -> None:
    assert clean_target_host("node1.example.test", "proxy.example.com", "example.test") == "node1"
    assert clean_target_host("node1.proxy.example.com", "proxy.example.com", "c") == "node1"
    assert clean_target_host("NODE1.Example.Test", "p", "example.test") == "NODE1"
    assert clean_target_host("node1", "p", "example.test") == "node1"
    # The suffix alone is a host name, not something to strip down to "".
    assert clean_target_host("example.test", "p", "example.test") == "example.test"
    assert clean_target_host("xexample.test", "p", "example.test") == "xexample.test"


def test_subsystem_name() -> None:
    assert subsystem_name("node1", "3022", "example.test") == "proxy:node1:3022@example.test"
    assert subsystem_name("node1", "", "") == "proxy:node1:"
    assert subsystem_name("::1", "22", "c") == "proxy:[::1]:22@c"


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are a Linux feature")
def test_grow_pipe_enlarges_pipes_and_leaves_other_files_alone(tmp_path) -> None:
    from tsh._proxy.relay import _PIPE_SIZE, grow_pipe

    r, w = os.pipe()
    try:
        grow_pipe(w)
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) >= _PIPE_SIZE
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "f", "wb") as f:
        grow_pipe(f.fileno())  # not a pipe: no error
    grow_pipe(None)


def _through_pump(src_pair: tuple[int, int], dst_pair: tuple[int, int], data: bytes) -> bytes:
    """Run pump from src_pair's read end to dst_pair's write end; what came out."""
    import threading

    from tsh._proxy.relay import pump

    (src_r, src_w), (dst_r, dst_w) = src_pair, dst_pair
    out = bytearray()

    def feed() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(src_w, view):]
        os.close(src_w)

    def drain() -> None:
        while chunk := os.read(dst_r, 1 << 16):
            out.extend(chunk)

    threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    ended = []
    pump(src_r, dst_w, at_eof=lambda: ended.append(True))
    os.close(dst_w)
    for t in threads:
        t.join(10)
    os.close(src_r)
    os.close(dst_r)
    assert ended == [True]
    return bytes(out)


def _socket_pair() -> tuple[int, int]:
    import socket

    a, b = socket.socketpair()
    return a.detach(), b.detach()


DATA = os.urandom(3 << 20)  # more than the pipes hold: the pump must keep going


@pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux's")
def test_pump_moves_pipe_to_pipe_with_splice(monkeypatch) -> None:
    spliced = []
    real_splice = os.splice

    def counting_splice(src: int, dst: int, count: int) -> int:
        spliced.append(real_splice(src, dst, count))
        return spliced[-1]

    monkeypatch.setattr(os, "splice", counting_splice)
    assert _through_pump(os.pipe(), os.pipe(), DATA) == DATA
    assert sum(spliced) == len(DATA)  # all of it moved in the kernel


def test_pump_copies_where_splice_cannot() -> None:
    # Sockets on both sides: splice refuses (EINVAL), read and write take over.
    assert _through_pump(_socket_pair(), _socket_pair(), DATA) == DATA


def test_private_dir_is_new_and_private(monkeypatch) -> None:
    import shutil
    import tempfile

    from tsh._agent.private import _private_dir

    short = tempfile.mkdtemp(prefix="pd-")  # a TMPDIR short enough for sockets (<= 64)
    try:
        monkeypatch.setenv("TMPDIR", short)
        a, b = _private_dir("tsh-agent-"), _private_dir("tsh-agent-")
        assert a != b and os.path.dirname(a) == short
        assert os.stat(a).st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(short)


def test_private_dir_avoids_a_tmpdir_openssh_would_expand(tmp_path, monkeypatch) -> None:
    from tsh._agent.private import _private_dir

    odd = tmp_path / "a%d"
    odd.mkdir()
    monkeypatch.setenv("TMPDIR", str(odd))
    made = _private_dir("tsh-test-")
    try:
        assert os.path.dirname(made) == "/tmp"
    finally:
        os.rmdir(made)


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_child_gets_pipes_and_default_sigpipe() -> None:
    # Python ignores SIGPIPE and SIGXFSZ; ssh must not inherit that (as with subprocess).
    from tsh._proxy.child import Child

    child = Child(["cat", "/proc/self/status"], dict(os.environ))
    child.close_stdin()
    status = _read_all(child.stdout).decode()
    assert child.wait() == 0
    child.close()
    ignored = int(next(ln for ln in status.splitlines() if ln.startswith("SigIgn:")).split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), sig


def test_child_wait_times_out_and_kill_ends_it() -> None:
    from tsh._proxy.child import Child

    child = Child(["sh", "-c", "echo oops >&2; exec sleep 30"], dict(os.environ))
    assert os.read(child.stderr, 100) == b"oops\n"
    assert child.wait(0.05) is None
    assert child.kill() == -signal.SIGKILL
    assert child.wait(0) == -signal.SIGKILL
    child.close()


def test_child_missing_program_leaves_no_descriptors() -> None:
    from tsh._proxy.child import Child

    before = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(FileNotFoundError):
        Child(["tsh-no-such-program"], dict(os.environ))
    if before is not None:
        assert set(os.listdir("/proc/self/fd")) <= before


def test_a_hang_up_is_raised_once_and_only_where_the_hop_can_clean_up() -> None:
    """`tsh proxy ssh`'s SIGHUP guard: ssh hangs up on its ProxyCommand as the
    session ends, while tsh may be in its cleanup (which must not be cut short)."""
    from tsh._proxy.command import _HangUp, _HangUpGuard

    early = _HangUpGuard()
    early.handler(signal.SIGHUP, None)  # before the hop's `try`: kept
    with pytest.raises(_HangUp):
        early.arm()

    armed = _HangUpGuard()
    armed.arm()
    with pytest.raises(_HangUp):
        armed.handler(signal.SIGHUP, None)
    armed.handler(signal.SIGTERM, None)  # once only: the `finally` runs in peace

    done = _HangUpGuard()
    done.arm()
    done.disarm()  # the session is over
    done.handler(signal.SIGHUP, None)
    done.arm()  # (nothing was kept)
    done.disarm()
