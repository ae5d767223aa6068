"""TLS routing in Python: the inner TLS to ``teleport-proxy-ssh``, directly or upgraded.

Run as a ProxyCommand (``python -m tsh._proxy.tunnel [--upgrade=websocket|legacy]
HOST:PORT CA_FILE``) by the hop's ssh, which cannot speak TLS itself: under
TLS routing, directly or behind an L7 load balancer (TLS terminated before
the proxy, ALPN lost) through the connection upgrade (tsh._proxy.dial).
tsh._connect uses it in-process for the same jobs.

The layers, outermost first (docs/protocol.md §18):

1. TCP to the web address;
2. with an upgrade: TLS verified against the system roots (the load
   balancer's public certificate), no ALPN, then ``GET
   /webapi/connectionupgrade``: WebSocket with subprotocol ``alpn-ping``
   (binary frames; the proxy's pings are answered), or legacy ``Upgrade:
   alpn-ping`` (Teleport's pingconn framing: 4-byte length, 0 = ping);
3. TLS with ALPN ``teleport-proxy-ssh``, SNI the proxy host, verified against
   the cluster's host CA only (``cas/<cluster>.pem``): SSH inside.

WebSocket framing is wsproto's (a sans-I/O library, so it sits on any
stream), imported only when an upgrade is due: it costs start-up time that
the plain paths do not pay. Errors end in one line on stderr, marked with
:data:`MESSAGE_PREFIX` so that `tsh proxy ssh` can show it instead of ssh's own.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import sys
from collections.abc import Callable

from .dial import ALPN_PROXY_SSH
from .retry import TUNNEL_PREFIX as MESSAGE_PREFIX

__all__ = [
    "MESSAGE_PREFIX",
    "UPGRADE_PATH",
    "TunnelError",
    "Tunnel",
    "alpn_refused_message",
    "conn_upgrade_required",
    "main",
    "open_tunnel",
    "untrusted_message",
]

UPGRADE_PATH = "/webapi/connectionupgrade"
#: The ALPN value real tsh's L7 load balancer probe offers.
ALPN_REVERSE_TUNNEL = "teleport-reversetunnel"
#: Bytes per read: big reads mean few WebSocket frames and few passes of the loop.
_CHUNK = 1 << 18
_HEADER_LIMIT = 16384


class TunnelError(Exception):
    """The tunnel could not be opened (the message is one line for the user)."""


def untrusted_message(addr: str, ca_file: str, why: str) -> str:
    """The one line for an SSH route whose TLS certificate the host CA did not sign."""
    return (
        f"the proxy {addr} is not trusted: its TLS certificate is not signed by the "
        f"cluster's host CA in {ca_file} ({why}); run tsh login again"
    )


def alpn_refused_message(addr: str) -> str:
    """The one line for a proxy that claims TLS routing but negotiated no ``teleport-proxy-ssh``."""
    return (
        f"the proxy {addr} claims TLS routing but did not accept ALPN {ALPN_PROXY_SSH} "
        "(a TLS-terminating load balancer in front of it? then set "
        "TELEPORT_TLS_ROUTING_CONN_UPGRADE=true)"
    )


# ----------------------------------------------------------------------------- carriers
class _Raw:
    """The bytes as they are (TLS routing without an upgrade, or legacy ``alpn``)."""

    def __init__(self, sock: socket.socket, early: bytes = b"") -> None:
        self.sock = sock
        self._early = early

    def buffered(self) -> bool:
        return bool(self._early) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes | None:
        """What arrived (b"" at EOF; None: nothing usable yet)."""
        if self._early:
            data, self._early = self._early, b""
            return data
        try:
            return self.sock.recv(_CHUNK)
        except ssl.SSLWantReadError:
            return None


class _PingConn(_Raw):
    """Teleport's pingconn framing (legacy ``alpn-ping``): length-prefixed writes, 0 = ping."""

    def __init__(self, sock: socket.socket, early: bytes = b"") -> None:
        super().__init__(sock)
        self._buf = bytearray(early)

    def buffered(self) -> bool:
        return self._has_frame() or super().buffered()

    def send(self, data: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(data)) + data)

    def _has_frame(self) -> bool:
        return len(self._buf) >= 4 and len(self._buf) >= 4 + struct.unpack_from(">I", self._buf)[0]

    def _frame(self) -> bytes | None:
        if len(self._buf) < 4:
            return None
        n = struct.unpack_from(">I", self._buf)[0]
        if len(self._buf) < 4 + n:
            return None
        frame = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        return frame

    def recv(self) -> bytes | None:
        # Never a socket read while whole frames wait: it could block on a quiet proxy.
        if not self._has_frame():
            data = super().recv()
            if not data:
                return data
            self._buf += data
        out = bytearray()
        while (frame := self._frame()) is not None:
            out += frame  # a ping is an empty frame: nothing to add
        return bytes(out) if out else None


class _WebSocket(_Raw):
    """Binary WebSocket messages (wsproto); pings answered, a close is EOF."""

    def __init__(self, sock: socket.socket, ws: object, early: bytes) -> None:
        super().__init__(sock)
        self.ws = ws
        self._pending = early

    def buffered(self) -> bool:
        return bool(self._pending) or super().buffered()

    def send(self, data: bytes) -> None:
        from wsproto.events import Message

        self.sock.sendall(self.ws.send(Message(data=data)))  # type: ignore[attr-defined]

    def recv(self) -> bytes | None:
        from wsproto.events import BytesMessage, CloseConnection, Ping

        if self._pending:
            data, self._pending = self._pending, b""
        else:
            data = super().recv()  # type: ignore[assignment]
            if data is None:
                return None
        self.ws.receive_data(data or None)  # type: ignore[attr-defined]
        out = bytearray()
        for event in self.ws.events():  # type: ignore[attr-defined]
            if isinstance(event, BytesMessage):
                out += event.data
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))  # type: ignore[attr-defined]
            elif isinstance(event, CloseConnection):
                return bytes(out) or b""
        if not data:
            return b""
        return bytes(out) if out else None


# ----------------------------------------------------------------------------- opening
def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _tcp(addr: str, timeout: float) -> socket.socket:
    host, port = _split_addr(addr)
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise TunnelError(f"cannot connect to the proxy {addr}: {e.strerror or e}") from None


def _outer_tls(sock: socket.socket, addr: str, insecure: bool) -> ssl.SSLSocket:
    host, _ = _split_addr(addr)
    ctx = ssl.create_default_context()  # the load balancer's certificate: system roots
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        raise TunnelError(
            f"the web certificate of {addr} is not trusted: {e.verify_message}"
        ) from None
    except (OSError, ssl.SSLError) as e:
        raise TunnelError(f"TLS to {addr} failed: {e}") from None


def _read_head(sock: socket.socket, addr: str) -> tuple[int, str, bytes]:
    """(status, head, rest) of an HTTP/1.1 response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise TunnelError(
                f"{addr} closed the connection during the connection upgrade "
                "(a load balancer that drops upgrades?)"
            )
        data += chunk
        if len(data) > _HEADER_LIMIT:
            raise TunnelError(f"{addr} answered the connection upgrade with an oversized header")
    head, _, rest = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    parts = text.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise TunnelError(f"{addr} answered the connection upgrade with no HTTP status")
    return int(parts[1]), text, rest


def _refused(addr: str, status: int) -> TunnelError:
    if status == 404:
        return TunnelError(
            f"the proxy {addr} does not serve {UPGRADE_PATH} (a proxy older than Teleport 13?): "
            "upgrade it, or unset TELEPORT_TLS_ROUTING_CONN_UPGRADE"
        )
    return TunnelError(
        f"the connection upgrade at {addr} was refused (HTTP {status}): a load balancer "
        "between tsh and the proxy may not allow it; TELEPORT_TLS_ROUTING_CONN_UPGRADE_MODE="
        "legacy tries the other kind"
    )


def _upgrade_websocket(sock: socket.socket, addr: str) -> _WebSocket:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, RejectConnection, Request
    from wsproto.utilities import LocalProtocolError, RemoteProtocolError

    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=addr, target=UPGRADE_PATH, subprotocols=["alpn-ping"])))
    while True:
        data = sock.recv(_CHUNK)
        try:
            ws.receive_data(data or None)
            events = list(ws.events())
        except (LocalProtocolError, RemoteProtocolError) as e:
            raise TunnelError(f"the WebSocket connection upgrade at {addr} failed: {e}") from None
        for event in events:
            if isinstance(event, AcceptConnection):
                if event.subprotocol != "alpn-ping":
                    raise TunnelError(
                        f"the WebSocket connection upgrade at {addr} failed: the proxy chose "
                        f"subprotocol {event.subprotocol!r}, not 'alpn-ping'"
                    )
                return _WebSocket(sock, ws, b"")
            if isinstance(event, RejectConnection):
                raise _refused(addr, event.status_code)
        if not data:
            raise TunnelError(
                f"{addr} closed the connection during the connection upgrade "
                "(a load balancer that drops upgrades?)"
            )


def _upgrade_legacy(sock: socket.socket, addr: str) -> _PingConn:
    kind = "alpn-ping"
    sock.sendall(
        f"GET {UPGRADE_PATH} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: {kind}\r\n"
        f"X-Teleport-Upgrade: {kind}\r\nConnection: Upgrade\r\n\r\n".encode()
    )
    status, _, rest = _read_head(sock, addr)
    if status != 101:
        raise _refused(addr, status)
    return _PingConn(sock, rest)


class Tunnel:
    """An open tunnel: the inner TLS (with SSH inside) over its carrier."""

    def __init__(
        self, carrier: _Raw, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self._carrier = carrier
        self._tls = tls
        self._in = incoming
        self._out = outgoing

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._carrier.send(data)

    def _feed(self) -> bool:
        """Carrier bytes into the inner TLS; False at EOF."""
        data = self._carrier.recv()
        if data is None:
            return True
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    def handshake(self, addr: str, ca_file: str) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._feed():
                    raise TunnelError(
                        f"the proxy {addr} closed the connection during the TLS handshake"
                    ) from None
            except ssl.SSLCertVerificationError as e:
                raise TunnelError(untrusted_message(addr, ca_file, e.verify_message)) from None
            except (OSError, ssl.SSLError) as e:
                raise TunnelError(f"TLS with the proxy {addr} failed: {e}") from None
        self._flush()
        if self._tls.selected_alpn_protocol() != ALPN_PROXY_SSH:
            raise TunnelError(alpn_refused_message(addr))

    def _plain_out(self, write: Callable[[bytes], None]) -> None:
        out = bytearray()  # one write for all the records that arrived
        try:
            while True:
                try:
                    data = self._tls.read(_CHUNK)
                except ssl.SSLWantReadError:
                    return
                except ssl.SSLZeroReturnError:
                    raise EOFError from None
                if not data:
                    raise EOFError
                out += data
        finally:
            if out:
                write(bytes(out))

    def relay(self, fd_in: int, fd_out: int) -> None:
        """Copy ``fd_in`` into the tunnel and the tunnel to ``fd_out`` until the proxy side ends."""
        sock = self._carrier.sock
        readers = [fd_in, sock.fileno()]

        def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(fd_out, view) :]

        try:
            while True:
                ready = [sock.fileno()] if self._carrier.buffered() else select.select(readers, [], [])[0]
                if sock.fileno() in ready:
                    alive = self._feed()
                    self._plain_out(write)
                    self._flush()
                    if not alive:
                        return
                if fd_in in ready:
                    data = os.read(fd_in, _CHUNK)
                    if not data:  # ssh closes its ProxyCommand's input only when it is done
                        return
                    self._tls.write(data)
                    self._flush()
        except (EOFError, OSError, ssl.SSLError):
            return

    def close(self) -> None:
        try:
            self._carrier.sock.close()
        except OSError:
            pass


def open_tunnel(
    addr: str,
    ca_file: str,
    upgrade: str | None = None,
    *,
    timeout: float = 15.0,
    insecure_outer: bool = False,
) -> Tunnel:
    """Open the tunnel to ``addr`` (the web address, ``host:port``); see the module docstring.

    ``upgrade``: None (direct TLS routing), ``"websocket"`` or ``"legacy"``.

    Raises:
        TunnelError: what failed, as one line for the user.
    """
    sock = _tcp(addr, timeout)
    try:
        carrier: _Raw
        if upgrade:
            outer = _outer_tls(sock, addr, insecure_outer)
            sock = outer
            try:
                if upgrade == "websocket":
                    carrier = _upgrade_websocket(outer, addr)
                else:
                    carrier = _upgrade_legacy(outer, addr)
            except OSError as e:
                raise TunnelError(f"the connection upgrade at {addr} failed: {e}") from None
        else:
            carrier = _Raw(sock)
        ctx = ssl.create_default_context(cafile=ca_file)  # the host CA only
        ctx.set_alpn_protocols([ALPN_PROXY_SSH])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        host, _ = _split_addr(addr)
        tunnel = Tunnel(carrier, ctx.wrap_bio(incoming, outgoing, server_hostname=host), incoming, outgoing)
        tunnel.handshake(addr, ca_file)
        sock.settimeout(None)
        return tunnel
    except (OSError, ValueError) as e:
        sock.close()
        if isinstance(e, FileNotFoundError):
            raise TunnelError(f"{ca_file} is missing; run tsh login") from None
        raise TunnelError(f"cannot open the tunnel to {addr}: {e}") from None
    except BaseException:
        sock.close()
        raise


def conn_upgrade_required(addr: str, insecure: bool = False, timeout: float = 5.0) -> bool:
    """Does an L7 load balancer stand between us and the proxy at ``addr``? (as real tsh probes)

    A TLS dial offering ALPN ``teleport-reversetunnel``: no ALPN in the answer,
    or an alert refusing it, means something that does not route ALPN
    terminates TLS. Any other failure means "no" (the dial that matters says why).
    """
    host, port = _split_addr(addr)
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([ALPN_REVERSE_TUNNEL])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                return tls.selected_alpn_protocol() is None
    except ssl.SSLError as e:
        text = str(e).lower()
        return "no application protocol" in text or "no_application_protocol" in text
    except (OSError, ValueError):
        return False


def diagnose(addr: str, ca_file: str, upgrade: str | None = None) -> str | None:
    """Why TLS routing to ``addr`` fails, found by trying it here; None if it works.

    For a hop becoming the master (``upgrade`` as its tunnel's), whose
    ProxyCommand's stderr OpenSSH sends to /dev/null.
    """
    try:
        open_tunnel(addr, ca_file, upgrade, timeout=5.0).close()
    except TunnelError as e:
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m tsh._proxy.tunnel [--upgrade=websocket|legacy] HOST:PORT CA_FILE``."""
    args = sys.argv[1:] if argv is None else argv
    upgrade = None
    if args and args[0].startswith("--upgrade="):
        upgrade = args.pop(0).partition("=")[2]
    if len(args) != 2 or upgrade not in (None, "websocket", "legacy"):
        sys.stderr.write(f"{MESSAGE_PREFIX}usage: python -m tsh._proxy.tunnel "
                         "[--upgrade=websocket|legacy] HOST:PORT CA_FILE\n")
        return 2
    if upgrade == "websocket":  # this process only: frames masked in C (tsh._proxy.wsmask)
        from .wsmask import use_c_masker

        use_c_masker()
    try:
        tunnel = open_tunnel(args[0], args[1], upgrade)
    except TunnelError as e:
        sys.stderr.write(f"{MESSAGE_PREFIX}{e}\n")
        return 1
    try:
        tunnel.relay(0, 1)
    finally:
        tunnel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
