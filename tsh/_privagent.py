"""An agent to forward to the proxy when the user's own agent cannot serve.

A proxy in recording mode (``session_recording: proxy``) logs in to the node
with the agent the client forwarded to it. Real tsh forwards its in-process
keyring, so that works even with ``--add-keys-to-agent=no``. `tsh proxy ssh`
does the equivalent: when the profile's key is on disk and the agent at
``SSH_AUTH_SOCK`` is missing or does not hold the profile's certificate, it
forwards a private socket instead; the first time the proxy uses it, a private
OpenSSH ``ssh-agent`` holding only that key and certificate is started behind
it. Everything is stopped when the connection ends (or ssh sends SIGHUP).

With a node-recording proxy the forwarded agent is never used, so this changes
nothing there. The user's own agent is still what ``ssh -A`` forwards from the
user's ssh to a node in node-recording mode; in recording mode the proxy
forwards the agent it was given.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["LazyAgent", "PrivateAgent", "agent_to_forward", "holds_certificate"]

#: Seconds to wait for the private agent's socket to appear.
START_TIMEOUT = 5.0


async def holds_certificate(sock: str | None, cert: Any) -> bool:
    """Does the agent at ``sock`` hold ``cert`` (an asyncssh certificate)? False on errors."""
    if not sock:
        return False
    from ._asyncssh import asyncssh

    try:
        agent = await asyncssh.connect_agent(sock)
    except (OSError, ValueError, asyncssh.Error):
        return False
    try:
        keys = await asyncio.wait_for(agent.get_keys(), START_TIMEOUT)
    except (OSError, ValueError, asyncssh.Error, asyncio.TimeoutError):
        return False
    finally:
        agent.close()
    return any(k.public_data == cert.public_data for k in keys)


class PrivateAgent:
    """A private ``ssh-agent -D`` on a 0700 temporary directory; :meth:`close` stops it."""

    def __init__(self, proc: subprocess.Popen[bytes], directory: str, sock: str):
        self.proc = proc
        self.directory = directory
        self.sock = sock

    @classmethod
    async def start(cls, key: Any, cert: Any, comment: str, valid_before: int) -> PrivateAgent:
        """Start ssh-agent and add ``key`` with ``cert`` (lifetime: the certificate's).

        Raises:
            OSError: no ssh-agent binary, or it did not start.
            ValueError: the agent refused the key.
        """
        from ._asyncssh import asyncssh

        binary = shutil.which("ssh-agent")
        if binary is None:
            raise OSError("cannot find OpenSSH's `ssh-agent` on PATH")
        # mkdtemp makes the directory 0700: only this user can reach the socket.
        directory = tempfile.mkdtemp(prefix="tsh-agent-")
        sock = os.path.join(directory, "agent.sock")
        # Popen only forks; close() must stay synchronous (it runs in a signal handler).
        proc = subprocess.Popen(  # noqa: ASYNC220
            [binary, "-D", "-a", sock],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        agent = cls(proc, directory, sock)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:  # readiness: the agent accepts a connection
                try:
                    client = await asyncssh.connect_agent(sock)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise OSError("ssh-agent did not start") from None
                    await asyncio.sleep(0.01)
            try:
                key.set_comment(comment)
                await client.add_keys(
                    [(key, cert)], lifetime=max(1, int(valid_before - time.time()))
                )
            finally:
                client.close()
        except BaseException:
            agent.close()
            raise
        return agent

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
    """A socket to forward that starts a :class:`PrivateAgent` only when first used.

    Only a recording proxy ever opens the forwarded agent, so with any other
    proxy no ssh-agent process is started at all. Connections are piped, byte
    for byte, to the private agent.
    """

    def __init__(self, key: Any, cert: Any, comment: str, valid_before: int):
        self._args = (key, cert, comment, valid_before)
        self._directory = tempfile.mkdtemp(prefix="tsh-agent-")  # 0700
        self.sock = os.path.join(self._directory, "forward.sock")
        self._server: asyncio.AbstractServer | None = None
        self._agent: PrivateAgent | None = None
        self._starting: asyncio.Lock | None = None

    async def listen(self) -> None:
        """Start listening (call once, from the event loop)."""
        self._starting = asyncio.Lock()
        self._server = await asyncio.start_unix_server(self._serve, path=self.sock)
        self._stop_on_signals()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._starting is not None
        try:
            async with self._starting:
                if self._agent is None:
                    self._agent = await PrivateAgent.start(*self._args)
            up_reader, up_writer = await asyncio.open_unix_connection(self._agent.sock)
        except (OSError, ValueError):
            writer.close()  # the proxy sees a failed agent request
            return

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def _stop_on_signals(self) -> None:
        # OpenSSH ends its ProxyCommand with SIGHUP when it exits, so no
        # `finally` of ours runs: stop the agent first, then die of the signal.
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            self.close()
            signal.signal(signum, previous[signum])
            os.kill(os.getpid(), signum)

        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)

    def close(self) -> None:
        """Stop listening, stop the private agent if it ran, remove the directory."""
        if self._server is not None:
            self._server.close()
        if self._agent is not None:
            self._agent.close()
        shutil.rmtree(self._directory, ignore_errors=True)


async def agent_to_forward(
    env_sock: str | None, key: Any, cert: Any, comment: str, valid_before: int
) -> tuple[str | None, LazyAgent | None]:
    """The agent socket to forward to the proxy, and what to close afterwards.

    The user's agent when it holds ``cert``; else a :class:`LazyAgent` for the
    key. If that cannot listen, the user's socket (possibly None): a
    node-recording proxy does not need an agent anyway.
    """
    if await holds_certificate(env_sock, cert):
        return env_sock, None
    lazy = LazyAgent(key, cert, comment, valid_before)
    try:
        await lazy.listen()
    except OSError:
        lazy.close()
        return env_sock, None
    return lazy.sock, lazy
