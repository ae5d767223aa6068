"""The hop: OpenSSH's ssh as a child process with pipes (our ends as descriptors)."""

from __future__ import annotations

import os
import signal
import time

__all__ = ["Child"]


class Child:
    """OpenSSH's ssh, with pipes to its stdin, stdout and stderr (our ends as descriptors).

    Spawned with os.posix_spawnp rather than subprocess, whose import (with
    locale, warnings, selectors and threading) costs more start-up time than
    this class does. As with subprocess, SIGPIPE and SIGXFSZ, which Python
    ignores, are back to their defaults in the child. Descriptors we inherited
    without close-on-exec are passed on, as by a shell's ``exec``; Python opens
    its own with close-on-exec.
    """

    stdin: int | None  # None once closed

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pipes: list[int] = []
        try:
            for _ in range(3):
                pipes += os.pipe()
            in_r, self.stdin, self.stdout, out_w, self.stderr, err_w = pipes
            self.pid = os.posix_spawnp(
                argv[0], argv, env,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate((in_r, out_w, err_w))],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )  # fmt: skip
        except BaseException:
            for fd in pipes:
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w):  # the child's ends
            os.close(fd)
        self.returncode: int | None = None

    def close_stdin(self) -> None:
        """End the child's input (once)."""
        if self.stdin is not None:
            os.close(self.stdin)
            self.stdin = None

    def close(self) -> None:
        """Close our ends of the pipes (once: a number closed twice may be another file's)."""
        self.close_stdin()
        if self.stdout >= 0:
            os.close(self.stdout)
            os.close(self.stderr)
            self.stdout = self.stderr = -1

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (negative: the signal that ended it), or None after ``timeout``."""
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
            assert deadline is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))  # as subprocess does: no portable wait with timeout
            delay = min(delay * 2, 0.05)

    def kill(self) -> int:
        """Kill the child if it still runs; return its exit status."""
        if self.wait(0) is None:
            os.kill(self.pid, signal.SIGKILL)
        status = self.wait()
        assert status is not None
        return status
