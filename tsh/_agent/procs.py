"""Stopping a child process: politely, then firmly."""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    import subprocess

__all__ = ["stop_process"]


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM ``proc`` if it still runs, SIGKILL it after ``timeout`` seconds; return its status."""
    import subprocess  # the caller has it loaded already

    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
