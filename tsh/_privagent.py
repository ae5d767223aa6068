"""A private ssh-agent to forward to the proxy when the user's own agent cannot serve.

A proxy in recording mode (``session_recording: proxy``) logs in to the node
with the agent the client forwarded to it. Real tsh forwards its in-process
keyring, so that works even with ``--add-keys-to-agent=no``. `tsh proxy ssh`
does the equivalent with OpenSSH's own tools: when the profile's key is on disk
and the agent at ``SSH_AUTH_SOCK`` is missing or lacks the profile's
certificate, it forwards a private socket instead (:class:`LazyAgent`). Only a
recording proxy ever uses the forwarded agent, so the private ``ssh-agent`` is
started behind that socket on first use, in a 0700 temporary directory, with
the key and certificate loaded by ``ssh-add`` (lifetime: the certificate's).
Everything is stopped when the connection ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

__all__ = ["LazyAgent", "PrivateAgent"]

#: Seconds to wait for the private agent to accept connections.
START_TIMEOUT = 5.0


class PrivateAgent:
    """A private ``ssh-agent -D`` holding one key and certificate; :meth:`close` stops it."""

    def __init__(self, proc: subprocess.Popen[bytes], directory: str, sock: str):
        self.proc = proc
        self.directory = directory
        self.sock = sock

    @classmethod
    def start(cls, key_path: str, cert_path: str, lifetime: int) -> PrivateAgent:
        """Start ssh-agent and add the key at ``key_path`` with the certificate at ``cert_path``.

        Raises:
            OSError: no ssh-agent/ssh-add, the agent did not start, or it refused the key.
        """
        ssh_agent, ssh_add = shutil.which("ssh-agent"), shutil.which("ssh-add")
        if ssh_agent is None or ssh_add is None:
            raise OSError("cannot find OpenSSH's `ssh-agent` and `ssh-add` on PATH")
        directory = tempfile.mkdtemp(prefix="tsh-agent-")  # 0700: only we reach the socket
        sock = os.path.join(directory, "agent.sock")
        proc = subprocess.Popen(
            [ssh_agent, "-D", "-a", sock],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        agent = cls(proc, directory, sock)
        try:
            # ssh-add takes the certificate from "<key>-cert.pub" beside the key:
            # name both through links in the private directory, copying nothing.
            key = os.path.join(directory, "id")
            os.symlink(key_path, key)
            os.symlink(cert_path, key + "-cert.pub")
            agent._wait_ready()
            added = subprocess.run(
                [ssh_add, "-q", "-t", str(max(1, lifetime)), key],
                env={**os.environ, "SSH_AUTH_SOCK": sock},
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=START_TIMEOUT,
            )  # fmt: skip
            if added.returncode != 0:
                raise OSError(f"ssh-add refused the key: {added.stderr.strip()}")
        except BaseException:
            agent.close()
            raise
        return agent

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # readiness: the agent accepts a connection
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(self.sock)
                    return
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise OSError("ssh-agent did not start") from None
            time.sleep(0.005)

    def close(self) -> None:
        """Stop the agent and remove its directory."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class LazyAgent:
    """A socket to forward that starts a :class:`PrivateAgent` when first used.

    With a proxy that does not record, nobody connects and no agent process
    starts. Connections are relayed byte for byte to the private agent by
    daemon threads.
    """

    def __init__(self, key_path: str, cert_path: str, lifetime: int) -> None:
        self._args = (key_path, cert_path, lifetime)
        self._directory = tempfile.mkdtemp(prefix="tsh-agent-")  # 0700
        self.sock = os.path.join(self._directory, "forward.sock")
        self._agent: PrivateAgent | None = None
        self._starting = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX)
        try:
            self._listener.bind(self.sock)
            self._listener.listen(8)
        except OSError:
            self.close()
            raise
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        try:
            with self._starting:
                if self._agent is None:
                    self._agent = PrivateAgent.start(*self._args)
            upstream.connect(self._agent.sock)
        except OSError:
            conn.close()  # the proxy sees a failed agent request
            upstream.close()
            return
        with conn, upstream:
            back = threading.Thread(target=_copy, args=(upstream, conn), daemon=True)
            back.start()
            _copy(conn, upstream)
            back.join()

    def close(self) -> None:
        """Stop listening, stop the private agent if it ran, remove the directory."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self._listener.close()
        with self._starting:
            if self._agent is not None:
                self._agent.close()
        shutil.rmtree(self._directory, ignore_errors=True)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
