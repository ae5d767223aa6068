"""The proxy's SSH side (port "3023"): user-certificate auth and the proxy subsystems.

* ``proxy:host:port[@cluster]`` routes to a registered node and hands the
  channel to a *forwarder* picked by the recording mode. ``node`` and ``off``
  use :class:`PipeForwarder` (raw TCP bytes; the client's EOF is passed on,
  the node's ends the channel); ``proxy``
  uses the terminating, recording forwarder of ``_recording.py``.
* ``proxy:host:port@<leaf>`` (and ``proxy:@<leaf>``) for a trusted leaf goes
  over the leaf's reverse tunnel (``_trust.LeafRoute``): piped, or in
  recording mode terminated here and dialled through the tunnel.
* ``proxysites`` writes the JSON list of clusters (this one, then the
  connected leaves) and exits 0.

Agent-forwarding requests are accepted (asyncssh's default), because a
recording proxy needs the user's agent to reach the node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncssh

from . import _trust
from ._auth import UserCertServer
from ._ca import Authority
from ._config import ServerConfig
from ._recording import RecordingForwarder
from ._state import ClusterState, Node
from ._subsystem import (
    ProxyRequest,
    SubsystemError,
    parse_proxy_subsystem,
    proxysites_json,
    resolve_local,
    route,
)

__all__ = [
    "FORWARDERS", "PipeForwarder", "follow_rotation", "proxy_host_identity", "start_ssh_proxy",
]
_ROTATION_POLL_S = 0.2

log = logging.getLogger("tests.cluster.ssh")

_HIGH_WATER = 256 * 1024
_ONLY_SUBSYSTEMS = b"this proxy serves only the proxy: and proxysites subsystems\n"
_DIAL_TIMEOUT_S = 10


class Forwarder(Protocol):
    """Carries one proxy channel to a node. Called from the session's callbacks."""

    async def run(self) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> None: ...
    def resume_writing(self) -> None: ...
    def pause_writing(self) -> None: ...
    def close(self) -> None: ...


class PipeForwarder:
    """Pipes the channel to a TCP connection to the node, both ways, with half-close."""

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel,
        node: Node,
        dial: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
        | None = None,
    ):
        self._chan = chan
        self._node = node
        # The recording forwarder pipes to an in-process SSH server instead.
        self._dial = dial or (lambda: asyncio.open_connection(node.host, node.port))
        self._writer: asyncio.StreamWriter | None = None
        self._pending: list[bytes] = []
        self._client_eof = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()

    async def run(self) -> None:
        chan, node = self._chan, self._node
        chan.pause_reading()  # hold client bytes until the node answers
        try:
            reader, self._writer = await asyncio.wait_for(self._dial(), _DIAL_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as e:
            reason = str(e) or type(e).__name__
            msg = f"failed connecting to node {node.name} at {node.addr}: {reason}\n"
            chan.write_stderr(msg.encode())
            chan.exit(1)
            return
        for data in self._pending:
            self._writer.write(data)
        self._pending.clear()
        if self._client_eof.is_set():
            self._writer.write_eof()
        chan.resume_reading()
        try:
            while data := await reader.read(65536):
                chan.write(data)
                if chan.get_write_buffer_size() > _HIGH_WATER:
                    self._can_write.clear()
                    await self._can_write.wait()
            # The node is done: end the channel, as Teleport's proxy does (its
            # utils.ProxyConn closes both sides once either copy stops). A hop
            # multiplexed on a master sees its stdout end only then.
            chan.write_eof()
            chan.exit(0)
        except (OSError, asyncssh.Error, BrokenPipeError) as e:
            log.info("pipe to %s ended: %s", node.addr, e)
            chan.close()
        finally:
            self._writer.close()

    def data_received(self, data: bytes) -> None:
        if self._writer is None:
            self._pending.append(data)
            return
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() > _HIGH_WATER:
            self._chan.pause_reading()
            asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        assert self._writer is not None
        try:
            await self._writer.drain()
        except OSError:
            return
        self._chan.resume_reading()

    def eof_received(self) -> None:
        self._client_eof.set()
        if self._writer is not None and self._writer.can_write_eof():
            self._writer.write_eof()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def close(self) -> None:
        self._client_eof.set()
        self._can_write.set()
        if self._writer is not None:
            self._writer.close()


# Recording mode -> forwarder class, called as cls(chan, node). A class with a
# `bind(proxy)` classmethod gets the proxy's state, CAs and settings that way.
FORWARDERS: dict[str, type[Forwarder]] = {
    "node": PipeForwarder,
    "off": PipeForwarder,
    "proxy": RecordingForwarder,
}


class _ProxySession(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    def __init__(self, proxy: _Proxy):
        self._proxy = proxy
        self._chan: asyncssh.SSHServerChannel | None = None
        self._subsystem: str | None = None
        self._request: ProxyRequest | None = None
        self._forwarder: Forwarder | None = None
        self._task: asyncio.Task[None] | None = None
        # Client bytes (and EOF) that arrive while a leaf is still answering the dial.
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # type: ignore[override]
        self._chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        assert self._chan is not None
        if subsystem == "proxysites":
            self._subsystem = subsystem
            return True
        if not subsystem.startswith("proxy:"):
            self._chan.write_stderr(f"unsupported subsystem {subsystem!r}\n".encode())
            return False
        try:
            self._request = parse_proxy_subsystem(subsystem)
        except SubsystemError as e:
            # As Teleport: the text on stderr and a failed request (OpenSSH then
            # exits 255, usually before printing the text).
            self._chan.write_stderr(f"{e}\n".encode())
            log.info("refused subsystem %r: %s", subsystem, e)
            return False
        self._subsystem = subsystem
        return True

    def session_started(self) -> None:
        assert self._chan is not None
        if self._subsystem == "proxysites":
            state = self._proxy.state
            self._chan.write(proxysites_json(state.name, leaves=_trust.live_leaves(state)))
            self._chan.exit(0)
            return
        if self._request is None:  # a shell or exec request: nothing to run here
            self._chan.write_stderr(_ONLY_SUBSYSTEMS)
            self._chan.exit(1)
            return
        req = self._request
        if req.cluster and req.cluster != self._proxy.state.name:
            leaf = _trust.leaf_route(self._proxy.state, req.cluster)
            if leaf is None:
                self._refuse(_trust.unknown_cluster(req.cluster))
                return
            self._chan.pause_reading()  # until the leaf answered the dial
            self._task = asyncio.ensure_future(self._run_leaf(leaf, req))
            return
        try:
            if not self._request.host:  # proxy:@<cluster>: a raw stream to its auth server
                host, port = resolve_local(self._request, self._proxy.state, self._proxy.config)
                self._forwarder = PipeForwarder(self._chan, Node("auth", host, port))
                self._task = asyncio.ensure_future(self._forwarder.run())
                return
            node = route(self._request, self._proxy.state.name, self._proxy.state.nodes())
        except SubsystemError as e:
            # Routing errors come after the request was accepted, so that every
            # client sees the text on stderr together with exit status 1.
            log.info("no route for %r: %s", self._subsystem, e)
            self._chan.write_stderr(f"{e}\n".encode())
            self._chan.exit(1)
            return
        self._forwarder = self._proxy.forwarder_cls(self._chan, node)
        self._task = asyncio.ensure_future(self._forwarder.run())

    def _refuse(self, e: SubsystemError) -> None:
        assert self._chan is not None
        log.info("no route for %r: %s", self._subsystem, e)
        self._chan.write_stderr(f"{e}\n".encode())
        self._chan.exit(1)

    async def _run_leaf(self, leaf: _trust.LeafRoute, req: ProxyRequest) -> None:
        """Route to a leaf over its reverse tunnel (docs/protocol.md, trusted clusters)."""
        assert self._chan is not None
        port = int(req.port) if req.port.isdigit() else 0
        node = Node(req.host or "auth", req.host or leaf.leaf, port)  # names it in errors
        forwarder: Forwarder
        if self._proxy.config.recording == "proxy" and req.host:
            # The root records: it terminates the session and dials the leaf node
            # itself, through the tunnel (trusted-clusters.md §5).
            forwarder = self._proxy.forwarder_cls(self._chan, node, leaf)  # type: ignore[call-arg]
            self._start_forwarder(forwarder)
            await forwarder.run()
            return
        try:
            streams = await leaf.open(req)
        except SubsystemError as e:
            self._refuse(e)
            return
        forwarder = PipeForwarder(self._chan, node, dial=lambda: _trust.as_streams(*streams))
        self._start_forwarder(forwarder)
        await forwarder.run()

    def _start_forwarder(self, forwarder: Forwarder) -> None:
        """Hand ``forwarder`` the channel, with what the client sent in the meantime."""
        for data in self._early:
            forwarder.data_received(data)
        if self._early_eof:
            forwarder.eof_received()
        self._early.clear()
        self._forwarder = forwarder

    def shell_requested(self) -> bool:
        return True  # answered in session_started with a clear error

    def exec_requested(self, command: str) -> bool:
        return True  # idem

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype is not None:
            return
        if self._forwarder is not None:
            self._forwarder.data_received(data)
        elif self._task is not None:
            self._early.append(data)

    def eof_received(self) -> bool:
        if self._forwarder is not None:
            self._forwarder.eof_received()
        else:
            self._early_eof = True
        return True  # stay half-open: the node may still be talking

    def pause_writing(self) -> None:
        if self._forwarder is not None:
            self._forwarder.pause_writing()

    def resume_writing(self) -> None:
        if self._forwarder is not None:
            self._forwarder.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._forwarder is not None:
            self._forwarder.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _Proxy:
    def __init__(self, state: ClusterState, authority: Authority, config: ServerConfig,
                 host_key: asyncssh.SSHKey):
        self.state = state
        self.authority = authority
        self.config = config
        self.host_key = host_key  # the proxy's own, which the recording forwarders certify
        self.authentications = 0  # successful user logins, logged one by one
        cls = FORWARDERS[config.recording]
        bind = getattr(cls, "bind", None)
        self.forwarder_cls: Callable[[asyncssh.SSHServerChannel, Node], Forwarder] = (
            bind(self) if bind is not None else cls
        )


class _ProxyServer(UserCertServer):
    def __init__(self, proxy: _Proxy):
        super().__init__(lambda: proxy.authority.keys("user").trusted)
        self._proxy = proxy
        self._username = ""

    def begin_auth(self, username: str) -> bool:
        self._username = username
        return super().begin_auth(username)

    def auth_completed(self) -> None:
        # Tests count the proxy's logins in its log (hop reuse: one, not one per hop).
        self._proxy.authentications += 1
        log.info("proxy authentication #%d: login %s", self._proxy.authentications, self._username)

    def session_requested(self) -> _ProxySession:
        return _ProxySession(self._proxy)


def proxy_host_identity(
    state: ClusterState, authority: Authority, host_key: asyncssh.SSHKey
) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    """The proxy's host key with a certificate from the host CA key servers present now.

    The server re-asks this whenever the rotation moves (:func:`follow_rotation`):
    from ``update_servers`` on, the proxy presents a new-CA certificate.
    """
    principals = ["127.0.0.1", "localhost", "::1", state.name]
    presented = authority.keys("host").presented
    cert = authority.sign_host(host_key, principals, f"proxy.{state.name}", 365 * 86400, presented)
    return host_key, cert


async def follow_rotation(
    acceptor: asyncssh.SSHAcceptor, state: ClusterState, authority: Authority
) -> None:
    """Run until cancelled: advance automatic rotations and re-certify the proxy's host key
    when the host CA key servers present changes (new connections get the new certificate)."""
    host_key = asyncssh.read_private_key(state.proxy_dir / "ssh_host_key")
    presented = authority.keys("host").presented.public_data
    while True:
        await asyncio.sleep(_ROTATION_POLL_S)
        try:
            authority.records()  # takes due automatic transitions even when nobody asks
            now = authority.keys("host").presented.public_data
        except (OSError, ValueError) as e:  # a half-edited data dir: try again later
            log.warning("cannot read the rotation state: %s", e)
            continue
        if now != presented:
            acceptor.update(server_host_keys=[proxy_host_identity(state, authority, host_key)])
            presented = now
            log.info("proxy host certificate re-issued by the current host CA")


async def start_ssh_proxy(
    state: ClusterState, authority: Authority, config: ServerConfig, port: int,
    tunnel: object | None = None,
) -> asyncssh.SSHAcceptor:
    """Listen on 127.0.0.1:``port`` (0 = any free port) with the proxy's certified host key.

    ``tunnel``: asyncssh's listener tunnel instead of a TCP port (TLS routing
    hands connections to it; tests/cluster/_alpn.py).
    """
    key_path = state.proxy_dir / "ssh_host_key"
    if key_path.exists():
        host_key = asyncssh.read_private_key(key_path)
    else:
        from tests.cluster._files import atomic_write

        host_key = authority.new_host_key()
        atomic_write(key_path, host_key.export_private_key("openssh"), 0o600)
    proxy = _Proxy(state, authority, config, host_key)
    return await asyncssh.listen(
        "127.0.0.1",
        port,
        server_factory=lambda: _ProxyServer(proxy),
        server_host_keys=[proxy_host_identity(state, authority, host_key)],
        encoding=None,
        agent_forwarding=True,
        allow_scp=False,
        x11_forwarding=False,
        login_timeout=30,
        **({"tunnel": tunnel} if tunnel is not None else {}),
    )
