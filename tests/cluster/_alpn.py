"""TLS routing on the web port: Teleport's ALPN router and ``/webapi/connectionupgrade``.

``--listener-mode=multiplex``: one port for the web API and SSH. Each
connection's ClientHello is read without consuming it (``MSG_PEEK``), its
ALPN list picks the route (the client's order, as Teleport's router does),
and the TLS handshake is then run with that route's certificate and exactly
one ALPN value (docs/protocol.md §18):

* ``teleport-proxy-ssh``: the proxy's SSH server, behind a *host* identity
  certificate from the cluster's TLS CA (what ``host_signers[].tls_certs``
  carries), not the web certificate;
* ``teleport-reversetunnel``: negotiated and closed (tsh's L7 probe dials it);
* ``http/1.1``, ``h2`` or no ALPN: the web API with the web certificate;
* anything else: closed, as Teleport's "failed to find ALPN handler".

``--behind-l7-lb``: the web port plays a TLS-terminating load balancer in
front of that router: web certificate, no ALPN at all, HTTP only. What gets
through is ``GET /webapi/connectionupgrade``: WebSocket (subprotocol ``alpn``
or ``alpn-ping``, binary frames, pings every ``ping_interval`` seconds) or
the legacy ``Upgrade: alpn``/``alpn-ping`` (raw bytes, or Teleport's pingconn
framing). The tunnelled bytes go back into the router, with the host
certificate for every route, as in Teleport's upgrade handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "ALPN_PROXY_SSH",
    "ALPN_REVERSE_TUNNEL",
    "Hello",
    "Router",
    "buffered",
    "connection_upgrade",
    "create_web_ca",
    "parse_client_hello",
]

log = logging.getLogger("tests.cluster.alpn")

ALPN_PROXY_SSH = "teleport-proxy-ssh"
ALPN_REVERSE_TUNNEL = "teleport-reversetunnel"
_WEB_PROTOCOLS = ("http/1.1", "h2")
_HELLO_LIMIT = 1 << 16
_HELLO_TIMEOUT_S = 10.0
_UPGRADE_TYPES = ("websocket", "alpn-ping", "alpn")  # Teleport's order of preference


# ----------------------------------------------------------------------------- ClientHello
@dataclass(frozen=True)
class Hello:
    """What routing needs from a TLS ClientHello."""

    sni: str
    alpn: tuple[str, ...]


def parse_client_hello(data: bytes) -> Hello | None:
    """The SNI and ALPN list of the ClientHello at the start of ``data``.

    None: more bytes are needed. ValueError: not a TLS ClientHello.
    """
    handshake = bytearray()
    pos = 0
    while True:  # the handshake message may span several records
        if len(data) < pos + 5:
            return None
        kind, length = data[pos], struct.unpack_from(">H", data, pos + 3)[0]
        if kind != 0x16:
            raise ValueError("not a TLS handshake record")
        if len(data) < pos + 5 + length:
            return None
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != 1:
                raise ValueError("not a ClientHello")
            need = 4 + int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= need:
                return _hello_body(bytes(handshake[4:need]))


def _hello_body(body: bytes) -> Hello:
    def take(n: int) -> bytes:
        nonlocal at
        if at + n > len(body):
            raise ValueError("truncated ClientHello")
        chunk = body[at : at + n]
        at += n
        return chunk

    at = 0
    take(2 + 32)  # version, random
    take(take(1)[0])  # session id
    take(int.from_bytes(take(2), "big"))  # cipher suites
    take(take(1)[0])  # compression methods
    sni, alpn = "", ()
    if at == len(body):
        return Hello(sni, alpn)
    end = at + 2 + int.from_bytes(take(2), "big")
    while at < end:
        ext_type = int.from_bytes(take(2), "big")
        ext = take(int.from_bytes(take(2), "big"))
        if ext_type == 0 and len(ext) >= 5 and ext[2] == 0:  # server_name: host_name
            sni = ext[5 : 5 + int.from_bytes(ext[3:5], "big")].decode("ascii", "replace")
        elif ext_type == 16:  # application_layer_protocol_negotiation
            names, i = [], 2
            while i < len(ext):
                n = ext[i]
                names.append(ext[i + 1 : i + 1 + n].decode("ascii", "replace"))
                i += 1 + n
            alpn = tuple(names)
    return Hello(sni, alpn)


# ----------------------------------------------------------------------------- certificates
def create_web_ca(out_dir: Path, cluster: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    """A stand-in for a public CA (Let's Encrypt on Teleport Cloud) for the web certificate.

    Under TLS routing the web certificate and the SSH route's host certificate
    come from different CAs, so a client that verifies the SSH route against
    the web roots (or the web API against the host CA) fails.
    """
    from ._ca import create_tls_ca

    key_path, cert_path = out_dir / "web_ca.key", out_dir / "web_ca.pem"
    if not cert_path.exists():
        create_tls_ca(out_dir, cluster, "web_ca", common_name=f"public web CA for {cluster}")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes()), cert_path


def _context(cert_path: Path, key_path: Path, alpn: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    if alpn:
        ctx.set_alpn_protocols([alpn])
    return ctx


# ----------------------------------------------------------------------------- the router
ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class _Refused(asyncio.Protocol):
    """A route that is negotiated and closed (the reverse tunnel: agents only)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class Router:
    """Routes TLS connections by their ClientHello's ALPN list (Teleport's ALPN router)."""

    def __init__(
        self,
        ssh_factory: ProtocolFactory,
        web_factory: ProtocolFactory,
        host_identity: tuple[Path, Path],
        web_identity: tuple[Path, Path],
    ) -> None:
        self.ssh_factory = ssh_factory  # (public: the upgrade serves this route in-process)
        self._web_factory = web_factory
        self._host_identity = host_identity
        self._web_identity = web_identity
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}

    def _ctx(self, identity: str, alpn: str | None) -> ssl.SSLContext:
        key = (identity, alpn or "")
        if key not in self._contexts:
            cert, priv = self._host_identity if identity == "host" else self._web_identity
            self._contexts[key] = _context(cert, priv, alpn)
        return self._contexts[key]

    def route(self, hello: Hello, upgraded: bool) -> tuple[ProtocolFactory, ssl.SSLContext] | None:
        """The protocol and TLS context for ``hello``; None: no handler (close)."""
        # Behind the connection upgrade every route gets the host certificate.
        web_identity = "host" if upgraded else "web"
        for proto in hello.alpn or ("http/1.1",):  # the client's order, first match wins
            if proto == ALPN_PROXY_SSH:
                return self.ssh_factory, self._ctx("host", proto)
            if proto == ALPN_REVERSE_TUNNEL:
                return _Refused, self._ctx("host", proto)
            if proto in _WEB_PROTOCOLS:
                web_alpn = "http/1.1" if "http/1.1" in hello.alpn else None
                return self._web_factory, self._ctx(web_identity, web_alpn)
        return None

    async def handle(self, sock: socket.socket, upgraded: bool = False) -> None:
        """Serve one accepted (or tunnelled) connection: peek, route, hand over."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        try:
            hello = await asyncio.wait_for(_peek_hello(loop, sock), _HELLO_TIMEOUT_S)
            chosen = self.route(hello, upgraded)
            if chosen is None:
                log.info("no ALPN handler for %s", list(hello.alpn))
                sock.close()
                return
            factory, ctx = chosen
            await loop.connect_accepted_socket(factory, sock, ssl=ctx, ssl_handshake_timeout=_HELLO_TIMEOUT_S)
        except (OSError, ValueError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as e:
            log.info("TLS routing: dropped a connection: %s", e)
            sock.close()


def buffered(factory: ProtocolFactory) -> ProtocolFactory:
    """``factory``'s protocols as BufferedProtocols (for the SSH route: asyncssh's is not)."""
    return lambda: _Buffered(factory())


class _Buffered(asyncio.BufferedProtocol):
    """A protocol as a BufferedProtocol: asyncio's TLS then decrypts every record
    waiting into one buffer and hands the lot over in one call, instead of a new
    256 KiB bytes object per record."""

    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol
        self._view = memoryview(bytearray(1 << 18))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._protocol.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._protocol.data_received(bytes(self._view[:nbytes]))

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _peek_hello(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Hello:
    seen = 0
    while True:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _set_once, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())
        try:
            data = sock.recv(_HELLO_LIMIT, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not data:
            raise ConnectionError("closed before the ClientHello")
        hello = parse_client_hello(data)
        if hello is not None:
            return hello
        if len(data) >= _HELLO_LIMIT:
            raise ValueError("ClientHello too long")
        if len(data) == seen:  # nothing new yet: the peeked bytes stay readable
            await asyncio.sleep(0.002)
        seen = len(data)


async def serve_router(router: Router, port: int) -> asyncio.AbstractServer:
    """Accept TCP connections on 127.0.0.1:``port`` and route each."""
    listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def on_accept() -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        task = loop.create_task(router.handle(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_reader(listener.fileno(), on_accept)
    return _Listener(listener, loop)


class _Listener:
    """Enough of asyncio.AbstractServer for the server's shutdown and readiness line."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sockets = [sock]
        self._loop = loop

    def get_port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.sockets:
            self._loop.remove_reader(self.sockets[0].fileno())
            self.sockets[0].close()
            self.sockets = []

    async def wait_closed(self) -> None:
        return None


class CapturedSSHServer:
    """asyncssh's ``tunnel=`` for ``listen``: keeps the connection factory, listens nowhere.

    The router then hands TLS-terminated connections to that factory, so the
    SSH proxy serves them with no TCP port of its own.
    """

    def __init__(self) -> None:
        self.factory: Callable[[str, int], Any] | None = None

    async def create_server(self, factory: Callable[[str, int], Any], host: str, port: int) -> _Listener:
        self.factory = factory
        return _NoListener()  # type: ignore[return-value]

    def protocol(self) -> Any:
        assert self.factory is not None
        return self.factory("", 0)


class _NoListener:
    sockets: list[socket.socket] = []

    def get_port(self) -> int:
        return 0

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        return None


# ----------------------------------------------------------------------------- the upgrade
def _requested(request: web.Request) -> list[str]:
    values = [*request.headers.getall("X-Teleport-Upgrade", []), *request.headers.getall("Upgrade", [])]
    return [v.strip().lower() for value in values for v in value.split(",") if v.strip()]


async def connection_upgrade(
    request: web.Request, router: Router, ping_interval: float, allowed: str
) -> web.StreamResponse:
    """``GET /webapi/connectionupgrade`` (lib/web/conn_upgrade.go)."""
    requested = _requested(request)
    kind = next((t for t in _UPGRADE_TYPES if t in requested), None)
    if allowed == "none" or (allowed == "websocket" and kind != "websocket"):
        # What a load balancer that allows no (or only WebSocket) upgrades answers.
        return web.Response(status=400, text="upgrade not allowed by the load balancer\n")
    if kind is None:
        from ._web import ApiError, error_response

        return error_response(ApiError(404, f"unsupported upgrade types: {requested}"))
    if kind == "websocket":
        return await _websocket(request, router, ping_interval)
    inner, outer = socket.socketpair()
    task = asyncio.get_running_loop().create_task(router.handle(inner, upgraded=True))
    try:
        return await _legacy(request, outer, kind, ping_interval)
    finally:
        outer.close()
        await asyncio.gather(task, return_exceptions=True)


async def _websocket(request: web.Request, router: Router, ping_interval: float) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=("alpn", "alpn-ping"), autoping=True, max_msg_size=0)
    await ws.prepare(request)
    if ws.ws_protocol not in ("alpn", "alpn-ping"):  # as gorilla's upgrader: close
        await ws.close()
        return ws
    sent = 0

    async def pings() -> None:
        nonlocal sent
        while True:
            await asyncio.sleep(ping_interval)
            await ws.ping(b"teleport")
            sent += 1

    pinger = asyncio.ensure_future(pings()) if ws.ws_protocol == "alpn-ping" else None
    try:
        early, hello = bytearray(), None
        async for msg in ws:  # the ClientHello first: it picks the route
            if msg.type == web.WSMsgType.BINARY:  # Teleport drops text frames
                early += msg.data
                hello = parse_client_hello(bytes(early))
                if hello is not None or len(early) > _HELLO_LIMIT:
                    break
        chosen = router.route(hello, upgraded=True) if hello is not None else None
        if chosen is None:
            log.info("no ALPN handler behind the upgrade for %s", hello and list(hello.alpn))
        elif chosen[0] is router.ssh_factory:
            await _ssh_in_process(request, ws, chosen[0], chosen[1], bytes(early))
        else:
            await _through_router(ws, router, bytes(early))
    except (ConnectionError, OSError, ValueError) as e:
        log.info("websocket upgrade: %s", e)
    finally:
        # Logged first: aiohttp may cancel this handler while it waits below.
        log.info("websocket upgrade (%s) ended after %d pings", ws.ws_protocol, sent)
        if pinger is not None:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
        await ws.close()
    return ws


async def _ssh_in_process(
    request: web.Request, ws: web.WebSocketResponse, factory: ProtocolFactory, ctx: ssl.SSLContext,
    early: bytes,
) -> None:
    """The upgraded connection's TLS and SSH in this event loop, with no socket in between.

    As Teleport's upgrade handler hands the connection to its ALPN router
    in-process. asyncio's own TLS layer (what ``connect_accepted_socket``
    builds) sits on the WebSocket through :class:`_UpgradedTransport`.
    """
    from asyncio.sslproto import SSLProtocol  # (not in asyncio's __all__; stable since 3.7)

    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    transport = _UpgradedTransport(ws, peer)
    tls = SSLProtocol(asyncio.get_running_loop(), factory(), ctx, None, server_side=True,
                      ssl_handshake_timeout=_HELLO_TIMEOUT_S)  # fmt: skip
    transport.set_protocol(tls)
    tls.connection_made(transport)
    try:
        transport.feed(early)
        async for msg in ws:
            if msg.type == web.WSMsgType.BINARY:
                await transport.reading()
                transport.feed(msg.data)
    finally:
        await transport.finish()


class _UpgradedTransport(asyncio.Transport):
    """A WebSocket as the transport under asyncio's TLS: what TLS writes goes out
    in binary frames (what is queued at once in one frame), what arrives is fed in."""

    _start_tls_compatible = True
    _HIGH_WATER, _LOW_WATER = 1 << 20, 1 << 18

    def __init__(self, ws: web.WebSocketResponse, peername: Any) -> None:
        super().__init__({"peername": peername})
        self._ws = ws
        self._protocol: Any = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._queue: list[bytes] = []
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = self._writing_paused = self._lost = False
        self._sender = asyncio.ensure_future(self._send())

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def reading(self) -> None:
        await self._reading.wait()

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._lost:
            buf = self._protocol.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self._protocol.buffer_updated(n)
            view = view[n:]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self._wake.set()
        if self._queued > self._HIGH_WATER and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._queued

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return False

    async def _send(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        break
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                await self._ws.send_bytes(data)
                if self._writing_paused and self._queued < self._LOW_WATER:
                    self._writing_paused = False
                    self._protocol.resume_writing()
        except (ConnectionError, OSError):
            self._closing = True
        finally:
            await self._ws.close()  # the TLS layer closed: the client sees the WebSocket end

    async def finish(self) -> None:
        """The WebSocket ended (or the TLS layer closed it): end the TLS layer, once."""
        self.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._sender
        if not self._lost:
            self._lost = True
            self._protocol.connection_lost(None)


async def _through_router(ws: web.WebSocketResponse, router: Router, early: bytes) -> None:
    """Any other route: the bytes through a socketpair into the router."""
    inner, outer = socket.socketpair()
    task = asyncio.get_running_loop().create_task(router.handle(inner, upgraded=True))
    reader, writer = await asyncio.open_connection(sock=outer)

    async def to_client() -> None:
        while data := await reader.read(1 << 16):
            await ws.send_bytes(data)
        await ws.close()

    copier = asyncio.ensure_future(to_client())
    try:
        writer.write(early)
        async for msg in ws:
            if msg.type == web.WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
    finally:
        copier.cancel()
        with contextlib.suppress(OSError):
            writer.close()
        await asyncio.gather(copier, task, return_exceptions=True)


class _RawProtocol(asyncio.Protocol):
    """Takes the connection over from aiohttp after a legacy 101 (aiohttp upgrades
    only to WebSocket itself): the raw bytes go to a queue, b"" at the end."""

    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self._queue = queue

    def data_received(self, data: bytes) -> None:
        self._queue.put_nowait(data)

    def eof_received(self) -> bool:
        self._queue.put_nowait(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._queue.put_nowait(b"")


async def _legacy(
    request: web.Request, outer: socket.socket, kind: str, ping_interval: float
) -> web.StreamResponse:
    transport = request.transport
    assert transport is not None
    # The client waits for the 101 before it sends a byte, so aiohttp holds none of them.
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    transport.set_protocol(_RawProtocol(queue))
    if not transport.is_reading():  # aiohttp may have paused it while the handler runs
        transport.resume_reading()
    transport.write(
        f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {kind}\r\nX-Teleport-Upgrade: {kind}\r\n"
        "Connection: Upgrade\r\n\r\n".encode()
    )
    resp = web.Response(status=101)  # never sent: the transport is closed by then
    reader, writer = await asyncio.open_connection(sock=outer)
    framed = kind == "alpn-ping"

    async def to_client() -> None:
        while data := await reader.read(1 << 16):
            transport.write(struct.pack(">I", len(data)) + data if framed else data)
        transport.close()

    sent = 0

    async def pings() -> None:
        nonlocal sent
        while True:
            await asyncio.sleep(ping_interval)
            transport.write(b"\0\0\0\0")  # pingconn: a zero length is a ping
            sent += 1

    tasks = [asyncio.ensure_future(to_client())]
    if framed:
        tasks.append(asyncio.ensure_future(pings()))
    buf = b""
    try:
        while data := await queue.get():
            if not framed:
                writer.write(data)
            else:
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + (n := struct.unpack_from(">I", buf)[0]):
                    if n:
                        writer.write(buf[4 : 4 + n])
                    buf = buf[4 + n :]
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        log.info("legacy upgrade (%s) ended after %d pings", kind, sent)
        for t in tasks:
            t.cancel()
        with contextlib.suppress(OSError):
            writer.close()
        transport.close()
        await asyncio.gather(*tasks, return_exceptions=True)
    return resp
