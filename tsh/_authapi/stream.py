"""The byte stream to a cluster's auth server: the seam the auth client dials through.

An :data:`AuthDialer` returns a connected socket whose peer is the raw TCP
stream of a cluster's auth server; the client runs TLS and gRPC on it. Today
it is the proxy's ``proxy:@<cluster>`` SSH subsystem (every Teleport proxy
serves it and pipes it to that cluster's auth server, as its Router.DialSite
does); TLS routing will plug in its own dialer (teleport-auth@ ALPN on the web
port) without the client changing.

The subsystem channel is bridged to one end of a socketpair, so asyncio's own
TLS (``create_connection(sock=...)``) runs over it with no private API.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from .._asyncssh import asyncssh
from .._exceptions import SSHError

__all__ = ["AuthDialer", "AuthStream", "AuthStreamError", "subsystem_stream"]


class AuthStream(NamedTuple):
    """A socket connected to an auth server, and what the way there said (for errors)."""

    sock: socket.socket
    said: Callable[[], str]  # e.g. the proxy's refusal text; "" when it said nothing
    aclose: Callable[[], Awaitable[None]]  # tear down what carries the socket's bytes, and wait


#: ``dialer(cluster)`` -> a stream to that cluster's auth server.
AuthDialer = Callable[[str], Awaitable[AuthStream]]

_STDERR_LIMIT = 4096
_HIGH_WATER = 1 << 20


class AuthStreamError(SSHError):
    """The proxy refused the stream to the auth server (its text), or it broke."""


class _Bridge(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """Carries bytes between the subsystem channel and our end of the socketpair."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[bytes] = []
        self.stderr = bytearray()
        self.eof = False  # the proxy's EOF, kept for a writer attached later
        self.closed = asyncio.Event()
        self.can_write = asyncio.Event()  # the channel's window is open (asyncssh's flow control)
        self.can_write.set()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def attach(self, writer: asyncio.StreamWriter) -> None:
        """Start writing to our end of the socketpair: what came before, then as it comes.

        The proxy may answer (a refusal on stderr, then EOF and close) before
        there is a writer: its EOF and close must reach the socket too, or the
        TLS handshake on it waits for bytes that never come.
        """
        self.writer = writer
        for data in self.pending:
            writer.write(data)
        self.pending.clear()
        if self.eof and writer.can_write_eof():
            writer.write_eof()
        if self.closed.is_set():
            writer.close()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr += data[: _STDERR_LIMIT - len(self.stderr)]
        elif self.writer is None:
            self.pending.append(data)
        else:
            self.writer.write(data)
            if self.chan is not None and self.writer.transport.get_write_buffer_size() > _HIGH_WATER:
                self.chan.pause_reading()  # the TLS side reads slower than the proxy sends
                asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        assert self.writer is not None and self.chan is not None
        try:
            await self.writer.drain()
        except OSError:
            return
        self.chan.resume_reading()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def eof_received(self) -> bool:
        self.eof = True
        if self.writer is not None and self.writer.can_write_eof():
            self.writer.write_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.can_write.set()
        if self.writer is not None:
            self.writer.close()

    def proxy_said(self) -> str:
        text = self.stderr.decode("utf-8", "replace")
        lines = ["".join(c if c.isprintable() else "?" for c in ln).strip() for ln in text.splitlines()]
        return "; ".join(ln for ln in lines if ln)[:300]


async def subsystem_stream(conn: asyncssh.SSHClientConnection, subsystem: str) -> AuthStream:
    """A socket whose peer is the ``subsystem`` channel on the SSH connection ``conn``.

    The channel closes with the socket; the proxy's refusal text (stderr)
    becomes the AuthStreamError's message.

    Raises:
        AuthStreamError: the proxy refused the channel or the subsystem.
    """
    bridge = _Bridge()
    try:
        chan, _ = await conn.create_session(lambda: bridge, subsystem=subsystem, encoding=None)
    except asyncssh.ChannelOpenError as e:
        raise AuthStreamError(f"the proxy refused {subsystem}: {e.reason}") from None
    except (OSError, asyncssh.Error) as e:
        said = bridge.proxy_said()
        raise AuthStreamError(said or f"the proxy refused {subsystem}: {e}") from None
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    bridge.attach(writer)
    task = asyncio.ensure_future(_pump(reader, chan, bridge))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    theirs.setblocking(False)

    async def aclose() -> None:
        writer.close()
        chan.close()
        await chan.wait_closed()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await writer.wait_closed()
        except OSError:
            pass

    return AuthStream(theirs, bridge.proxy_said, aclose)


#: Keeps the pump tasks referenced (asyncio holds tasks weakly).
_TASKS: set[asyncio.Future[Any]] = set()


async def _pump(
    reader: asyncio.StreamReader, chan: asyncssh.SSHClientChannel[bytes], bridge: _Bridge
) -> None:
    """Socket -> channel, until the TLS side closes; then close the channel."""
    try:
        while data := await reader.read(65536):
            chan.write(data)
            await bridge.can_write.wait()
        chan.write_eof()
    except (OSError, asyncssh.Error):
        pass
    finally:
        chan.close()
