"""tsh._proxy.supervisor's retry and replay, against a scripted fake of the hop's ssh.

The fake (a sh script) counts its attempts in a file, records what it read on
stdin, and per attempt either drops (reads ssh's first line, then exits with
no output and, optionally, OpenSSH's words for a closed connection) or acts
as the node (prints its ``SSH-2.0`` version line and echoes its input). The
backoff sleeps are recorded instead of slept, so these run in milliseconds.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tsh import SSHError, UsageError
from tsh._proxy import supervisor
from tsh._proxy.retry import MAX_ATTEMPTS, failure_message
from tsh._proxy.supervisor import REPLAY_LIMIT, HopSupervisor

BANNER = b"SSH-2.0-fake\r\n"
KEX_CLOSED = "kex_exchange_identification: Connection closed by remote host\r\n"
PROXY, LOGIN, KNOWN_HOSTS = "proxy.example.com:3023", "root", "/h/known_hosts"

# FAKE_DROPS: attempts that drop first; then FAKE_NODE says what the attempt does.
FAKE_SSH = r"""
n=$(( $(cat "$FAKE_DIR/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$FAKE_DIR/count"
echo "$FAKE_ROLE" >> "$FAKE_DIR/roles"
if [ "$n" -gt 20 ]; then  # a supervisor that would retry for ever: fail, not hang
    echo "attempt $n: too many" >&2
    exit 1
fi
if [ "$n" -le "$FAKE_DROPS" ]; then
    # ssh's version line reached the hop (the timeout: a missing replay fails, not hangs)
    timeout 5 head -n 1 > "$FAKE_DIR/stdin.$n"
    printf '%s' "$FAKE_DROP_ERR" >&2
    exit 255
fi
case "$FAKE_NODE" in
node)  # the node: its version line, then an echo of everything ssh sends
    printf 'SSH-2.0-fake\r\n'
    exec tee "$FAKE_DIR/stdin.$n" ;;
until-eof)  # a node that speaks only once ssh's input has ended
    timeout 5 cat > "$FAKE_DIR/stdin.$n" || echo "(no EOF)" >> "$FAKE_DIR/stdin.$n"
    printf 'SSH-2.0-fake\r\n'
    cat "$FAKE_DIR/stdin.$n" ;;
banner-then-close)  # the node spoke, then the connection went away
    printf 'SSH-2.0-fake\r\n'
    printf 'Connection closed by remote host\r\n' >&2
    exit 255 ;;
fail)  # OpenSSH's own failure, before anything reached the node
    printf '%s' "$FAKE_ERR" >&2
    exit 255 ;;
esac
"""


class FakeHop:
    """The fake's files, and the supervisor's ends: a stdin pipe, a stdout pipe, a stderr file."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.script = tmp_path / "ssh"
        self.script.write_text(FAKE_SSH)
        self.stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, self.stdout_w = os.pipe()
        self.stderr_file = tmp_path / "stderr"
        self.stderr_fd = os.open(self.stderr_file, os.O_WRONLY | os.O_CREAT, 0o600)

    def child(self, role: str = "main", drops: int = 0, drop_err: str = "", node: str = "node",
              err: str = "") -> tuple[list[str], dict[str, str]]:  # fmt: skip
        """(argv, env) of the fake for HopSupervisor."""
        env = {"PATH": os.environ["PATH"], "FAKE_DIR": str(self.dir), "FAKE_ROLE": role,
               "FAKE_DROPS": str(drops), "FAKE_DROP_ERR": drop_err, "FAKE_NODE": node,
               "FAKE_ERR": err}  # fmt: skip
        return ["/bin/sh", str(self.script)], env

    def supervisor(self, child: tuple[list[str], dict[str, str]], **kw: Any) -> HopSupervisor:
        return HopSupervisor(child, self.stdin_r, self.stdout_w, self.stderr_fd, **kw)

    def run(self, sup: HopSupervisor) -> int:
        return sup.run(proxy_addr=PROXY, login=LOGIN, known_hosts=KNOWN_HOSTS)

    def attempts(self) -> int:
        return int((self.dir / "count").read_text())

    def roles(self) -> list[str]:
        return (self.dir / "roles").read_text().split()

    def stdin_of(self, attempt: int) -> bytes:
        return (self.dir / f"stdin.{attempt}").read_bytes()

    def stderr(self) -> str:
        return self.stderr_file.read_bytes().decode()

    def read_stdout(self, size: int) -> bytes:
        """Exactly ``size`` bytes of what the supervisor gave ssh (fewer only at EOF)."""
        data = b""
        while len(data) < size:
            assert select.select([self.stdout_r], [], [], 10)[0], f"no more output after {data!r}"
            if not (chunk := os.read(self.stdout_r, size - len(data))):
                break
            data += chunk
        return data

    def all_stdout(self) -> bytes:
        """The rest of what the supervisor gave ssh, once it is done (our end closed, as at exit)."""
        self.close_stdout()
        return b"".join(iter(lambda: os.read(self.stdout_r, 1 << 16), b""))

    def end_stdin(self) -> None:
        """ssh's end of its output (once: a number closed twice may be another file's)."""
        if self.stdin_w >= 0:
            os.close(self.stdin_w)
            self.stdin_w = -1

    def close_stdout(self) -> None:
        if self.stdout_w >= 0:
            os.close(self.stdout_w)
            self.stdout_w = -1

    def close(self) -> None:
        self.end_stdin()
        self.close_stdout()
        for fd in (self.stdin_r, self.stdout_r, self.stderr_fd):
            os.close(fd)


@pytest.fixture
def hop(tmp_path: Path) -> Iterator[FakeHop]:
    fake = FakeHop(tmp_path)
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff's sleeps, recorded instead of slept (distinct values, to see which ran)."""
    slept: list[float] = []
    monkeypatch.setattr(supervisor, "backoff_delays", lambda: [i / 1000 for i in range(1, 9)])
    monkeypatch.setattr(supervisor, "time", SimpleNamespace(monotonic=time.monotonic,
                                                            sleep=slept.append))  # fmt: skip
    return slept


def _send_and_end(hop: FakeHop, data: bytes) -> None:
    os.write(hop.stdin_w, data)
    hop.end_stdin()


def _in_thread(hop: FakeHop, sup: HopSupervisor) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def target() -> None:
        try:
            result.append(hop.run(sup))
        except BaseException as e:
            result.append(e)
        finally:
            hop.close_stdout()  # as when tsh exits: ssh sees the end

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("drop_err", ["", KEX_CLOSED], ids=["silent", "kex-closed"])
def test_drops_are_retried_and_what_ssh_sent_is_replayed(hop: FakeHop, sleeps: list[float],
                                                         drop_err: str) -> None:  # fmt: skip
    thread, result = _in_thread(hop, hop.supervisor(hop.child(drops=3, drop_err=drop_err)))
    os.write(hop.stdin_w, b"SSH-2.0-client\r\n")  # sent before the node spoke
    assert hop.read_stdout(len(BANNER) + 16) == BANNER + b"SSH-2.0-client\r\n"
    os.write(hop.stdin_w, b"after the banner\n")  # relayed, as anything after it
    assert hop.read_stdout(17) == b"after the banner\n"
    hop.end_stdin()
    thread.join(10)
    assert result == [0]
    assert hop.attempts() == 4
    # Each dropped attempt and the one that got through had the same start: the replay.
    assert [hop.stdin_of(n) for n in (1, 2, 3)] == [b"SSH-2.0-client\r\n"] * 3
    assert hop.stdin_of(4) == b"SSH-2.0-client\r\nafter the banner\n"
    assert sleeps == [0.001, 0.002, 0.003]  # one backoff before each retry, in order
    assert hop.stderr() == ""  # ssh never hears of the drops


def test_the_attempt_limit_ends_with_an_error_naming_it(hop: FakeHop, sleeps: list[float]) -> None:
    _send_and_end(hop, b"SSH-2.0-client\r\n")
    with pytest.raises(SSHError) as e:
        hop.run(hop.supervisor(hop.child(drops=99, drop_err=KEX_CLOSED)))
    assert str(e.value) == f"dropped {MAX_ATTEMPTS} times before the node answered: {KEX_CLOSED.strip()}"
    assert hop.attempts() == MAX_ATTEMPTS == 8
    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_the_attempt_limit_without_words_from_ssh(hop: FakeHop) -> None:
    _send_and_end(hop, b"SSH-2.0-client\r\n")
    with pytest.raises(SSHError, match=rf"^dropped {MAX_ATTEMPTS} times before the node answered$"):
        hop.run(hop.supervisor(hop.child(drops=99)))


@pytest.mark.parametrize(
    "err",
    ["root@proxy: Permission denied (publickey).\r\n", "Host key verification failed.\r\n"],
    ids=["refused", "untrusted"],
)
def test_a_failure_that_is_not_a_drop_is_not_retried(hop: FakeHop, sleeps: list[float], err: str) -> None:
    _send_and_end(hop, b"SSH-2.0-client\r\n")
    with pytest.raises(SSHError) as e:
        hop.run(hop.supervisor(hop.child(node="fail", err=err)))
    assert str(e.value) == failure_message(err, PROXY, LOGIN, KNOWN_HOSTS)
    assert "refused the certificate" in str(e.value) or "is not trusted" in str(e.value)
    assert hop.attempts() == 1
    assert sleeps == []


def test_a_failure_after_drops_is_not_retried_either(hop: FakeHop) -> None:
    _send_and_end(hop, b"SSH-2.0-client\r\n")
    with pytest.raises(SSHError, match="refused the certificate for login 'root'"):
        hop.run(hop.supervisor(hop.child(drops=2, node="fail", err="Permission denied (publickey).\n")))
    assert hop.attempts() == 3


def test_the_fallback_replaces_a_child_that_refuses_an_option_once(hop: FakeHop, sleeps: list[float]) -> None:
    sign = 'unsupported option "/tmp/tsh-x/agent.sock"'
    primary = hop.child(role="primary", node="fail", err=f"command-line line 0: {sign}.\r\n")
    _send_and_end(hop, b"SSH-2.0-client\r\n")
    sup = hop.supervisor(primary, fallback=lambda: hop.child(role="fallback"), fallback_sign=sign)
    assert hop.run(sup) == 0
    assert hop.roles() == ["primary", "fallback"]
    assert hop.stdin_of(2) == b"SSH-2.0-client\r\n"  # the fallback got the replay
    assert hop.all_stdout() == BANNER + b"SSH-2.0-client\r\n"
    assert sleeps == []  # not a drop: no backoff


def test_the_fallback_is_used_only_once(hop: FakeHop) -> None:
    sign = 'unsupported option "/tmp/tsh-x/agent.sock"'
    refusing = hop.child(role="refusing", node="fail", err=f"command-line line 0: {sign}.\r\n")
    _send_and_end(hop, b"")
    sup = hop.supervisor(refusing, fallback=lambda: hop.child(role="fallback", node="fail",
                                                      err=f"command-line line 0: {sign}.\r\n"),
                         fallback_sign=sign)  # fmt: skip
    with pytest.raises(SSHError) as e:
        hop.run(sup)
    assert str(e.value) == f"command-line line 0: {sign}."
    assert hop.roles() == ["refusing", "fallback"]


def test_drops_after_the_fallback_are_retried_with_the_fallback(hop: FakeHop) -> None:
    sign = 'unsupported option "/s"'
    _send_and_end(hop, b"SSH-2.0-client\r\n")
    sup = hop.supervisor(hop.child(role="primary", node="fail", err=sign),
                         fallback=lambda: hop.child(role="fallback", drops=3),
                         fallback_sign=sign)  # fmt: skip
    assert hop.run(sup) == 0
    assert hop.roles() == ["primary", "fallback", "fallback", "fallback"]


def test_nothing_after_the_banner_is_retried(hop: FakeHop, sleeps: list[float]) -> None:
    _send_and_end(hop, b"SSH-2.0-client\r\n")
    # The hop's words are those of a drop, but the node had spoken: ssh must see the end.
    assert hop.run(hop.supervisor(hop.child(node="banner-then-close"))) == 255
    assert hop.attempts() == 1
    assert sleeps == []
    assert hop.all_stdout() == BANNER
    assert hop.stderr() == "Connection closed by remote host\r\n"


def test_stdin_ending_before_the_banner_is_replayed_with_its_end(hop: FakeHop) -> None:
    _send_and_end(hop, b"SSH-2.0-client\r\nall of it\n")
    assert hop.run(hop.supervisor(hop.child(drops=2, node="until-eof"))) == 0
    assert hop.attempts() == 3
    # The node got the bytes and then their end, on the replay as on the first try.
    assert hop.stdin_of(3) == b"SSH-2.0-client\r\nall of it\n"
    assert hop.all_stdout() == BANNER + b"SSH-2.0-client\r\nall of it\n"


def test_empty_stdin_before_the_banner(hop: FakeHop) -> None:
    _send_and_end(hop, b"")
    assert hop.run(hop.supervisor(hop.child(drops=1))) == 0
    assert hop.attempts() == 2
    assert hop.stdin_of(2) == b""
    assert hop.all_stdout() == BANNER


def test_a_drop_past_the_replay_limit_is_not_retried(hop: FakeHop, tmp_path: Path) -> None:
    # More than REPLAY_LIMIT sent before the node spoke: no replay can be trusted.
    big = tmp_path / "big"
    big.write_bytes(b"x" * (REPLAY_LIMIT + 1) + b"\n")
    with open(big, "rb") as stdin:
        sup = HopSupervisor(hop.child(drops=99), stdin.fileno(), hop.stdout_w, hop.stderr_fd)
        with pytest.raises(SSHError, match=f"^the proxy {PROXY} closed the connection$"):
            hop.run(sup)
    assert hop.attempts() == 1


def test_a_missing_ssh_is_a_usage_error(hop: FakeHop) -> None:
    with pytest.raises(UsageError, match="cannot find OpenSSH's `/nonexistent/ssh` on PATH"):
        hop.run(hop.supervisor((["/nonexistent/ssh"], {})))


def test_started_is_called_once_after_the_first_child(hop: FakeHop) -> None:
    calls: list[bool] = []
    sup: HopSupervisor | None = None
    _send_and_end(hop, b"SSH-2.0-client\r\n")
    sup = hop.supervisor(
        hop.child(drops=2), started=lambda: calls.append(sup is not None and sup.child is not None)
    )
    assert hop.run(sup) == 0
    assert calls == [True]  # a private agent starts answering once, not per attempt
    assert hop.attempts() == 3
