"""The hop's supervisor: start it, retry drops with a replay, then relay until the end.

Until the node's ``SSH-`` version line arrives, the node's output is held back
and what ssh sent is kept; if the attempt is dropped (tsh._proxy.retry), a new
hop is started after a backoff and the kept bytes are replayed, so ssh never
notices. Once the node spoke there are no more retries.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from .._exceptions import SSHError, UsageError
from .child import Child
from .relay import CHUNK, end_input, grow_pipe, pump, write_all
from .retry import MAX_ATTEMPTS, backoff_delays, failure_message, has_banner, is_drop, without_mux_fallback

__all__ = ["REPLAY_LIMIT", "HopSupervisor"]

#: Stdin bytes kept for a replay until the node speaks (ssh's version line and
#: KEXINIT are a few KiB; past this, an attempt is no longer replayable).
REPLAY_LIMIT = 1 << 16
#: Node output held back while waiting for its "SSH-" version line.
_BANNER_LIMIT = 8192
#: Seconds to wait for the child ssh to end once the node side has ended.
_EXIT_TIMEOUT = 10.0


class HopSupervisor:
    """Start the child ssh, retry drops with a replay, then copy bytes both ways."""

    def __init__(
        self,
        child: tuple[list[str], dict[str, str]],
        stdin: int,
        stdout: int,
        stderr: int,
        fallback: Callable[[], tuple[list[str], dict[str, str]]] | None = None,
        fallback_sign: str = "",
        started: Callable[[], None] | None = None,
        spoke: Callable[[], None] | None = None,
    ) -> None:
        # (argv, env) of the child; the fallback makes the one that replaces
        # it once if the child's stderr shows fallback_sign (an ssh refusing an option).
        (self.argv, self.env), self.fallback, self.fallback_sign = child, fallback, fallback_sign
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.started = started  # called once, after the first child started
        self.spoke = spoke  # called once, when the node has spoken (no more retries)
        self.sent = bytearray()  # what ssh sent, kept for a replay until the node speaks
        self.stdin_eof = False
        self.child: Child | None = None

    def run(
        self,
        *,
        proxy_addr: str,
        login: str,
        known_hosts: str,
        diagnose: Callable[[], str | None] | None = None,
    ) -> int:
        """Run attempts until the node speaks, then relay; the exit status.

        ``diagnose`` is asked once, at the first drop, whether something other
        than a drop is wrong (under TLS routing: a proxy ignoring the ALPN).
        """
        drops = 0
        delays: list[float] = []
        try:
            while True:
                self.child = self._start()
                if self.started is not None:
                    self.started()
                    self.started = None
                spoke, held, err = self._until_node_speaks(self.child)
                if spoke:
                    if self.spoke is not None:
                        self.spoke()
                    return self._copy_both_ways(self.child, held, err)
                err += self._finish(self.child)
                text = err.decode(errors="replace")
                if self.fallback is not None and self.fallback_sign in text:
                    (self.argv, self.env), self.fallback = self.fallback(), None
                    continue
                if not is_drop(text) or len(self.sent) > REPLAY_LIMIT:
                    raise SSHError(failure_message(text, proxy_addr, login, known_hosts))
                if diagnose is not None:
                    why, diagnose = diagnose(), None
                    if why:
                        raise SSHError(why)
                drops += 1
                if drops == MAX_ATTEMPTS:
                    said = held.decode(errors="replace").strip() or text.strip()
                    raise SSHError(
                        f"dropped {MAX_ATTEMPTS} times before the node answered"
                        + (f": {said}" if said else "")
                    )
                delays = delays or backoff_delays()
                time.sleep(delays[drops - 1])
        finally:
            if self.child is not None:
                self.child.kill()

    def _start(self) -> Child:
        try:
            return Child(self.argv, self.env)
        except FileNotFoundError:
            raise UsageError(
                f"cannot find OpenSSH's `{self.argv[0]}` on PATH; install the OpenSSH client"
            ) from None

    def _until_node_speaks(self, child: Child) -> tuple[bool, bytes, bytes]:
        """Replay, then relay ssh's bytes until the node's version line (or the end)."""
        assert child.stdin is not None
        child_in = child.stdin
        try:
            write_all(child_in, bytes(self.sent))  # a few KiB at most: fits the pipe
        except BrokenPipeError:
            pass
        if self.stdin_eof:
            child.close_stdin()
        held, err = b"", b""
        # select(), not epoll: our stdin may be a regular file or /dev/null.
        readers = {child.stdout: "out", child.stderr: "err"}
        if not self.stdin_eof:
            readers[self.stdin] = "in"
        while True:
            for fd in select.select(list(readers), [], [])[0]:
                data = os.read(fd, CHUNK)
                kind = readers[fd]
                if kind == "out":
                    if not data:
                        return False, held, err
                    held += data
                    if has_banner(held) or len(held) > _BANNER_LIMIT:
                        return True, held, err
                elif kind == "err":
                    if not data:
                        del readers[fd]
                    err += data
                elif not data:
                    self.stdin_eof = True
                    del readers[fd]
                    child.close_stdin()
                else:
                    self.sent += data
                    try:
                        write_all(child_in, data)
                    except BrokenPipeError:
                        pass  # the child is ending: its stdout tells how

    def _finish(self, child: Child) -> bytes:
        """End a failed attempt; return the rest of its stderr."""
        child.close_stdin()  # ssh ends its session once its stdin ends
        err = b""
        deadline = time.monotonic() + _EXIT_TIMEOUT
        while select.select([child.stderr], [], [], max(0.0, deadline - time.monotonic()))[0]:
            data = os.read(child.stderr, CHUNK)
            if not data:
                break
            err += data
        if child.wait(max(0.0, deadline - time.monotonic())) is None:
            child.kill()
        child.close()
        return err

    def _copy_both_ways(self, child: Child, held: bytes, err: bytes) -> int:
        """The node spoke: no more retries. Copy until the node side ends."""
        import threading

        self.sent.clear()
        err = without_mux_fallback(err)
        if err:
            write_all(self.stderr, err)
        threads = [threading.Thread(target=pump, args=(child.stderr, self.stderr), daemon=True)]
        child_in = child.stdin  # None once our stdin ended (stdin_eof)
        if child_in is not None:
            # A daemon thread: when the node side ends we exit, even though ssh
            # still holds our stdin open (it waits for us to close stdout).
            threads.append(threading.Thread(target=pump, args=(self.stdin, child_in),
                                          kwargs={"at_eof": lambda: end_input(child_in)},
                                          daemon=True))
        for fd in (self.stdin, self.stdout, child.stdout, child_in):
            grow_pipe(fd)
        for thread in threads:
            thread.start()
        try:
            write_all(self.stdout, held)
            pump(child.stdout, self.stdout)
        except BrokenPipeError:
            pass  # ssh went away
        if child_in is not None:
            end_input(child_in)  # the stdin pump may still hold it: no close() under it
        status = child.wait(_EXIT_TIMEOUT)
        if status is None:
            status = child.kill()
        threads[0].join(_EXIT_TIMEOUT)  # the rest of the proxy's messages
        return 0 if status < 0 else status
