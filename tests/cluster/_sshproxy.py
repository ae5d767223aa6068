"""The proxy's SSH side (port "3023"): user-certificate auth and the proxy subsystems.

* ``proxy:host:port[@cluster]`` routes to a registered node and hands the
  channel to a *forwarder* picked by the recording mode. ``node`` and ``off``
  use :class:`PipeForwarder` (raw TCP bytes; the client's EOF is passed on,
  the node's ends the channel); ``proxy``
  uses the terminating, recording forwarder of ``_recording.py``.
* ``proxysites`` writes the JSON list of clusters and exits 0.

Agent-forwarding requests are accepted (asyncssh's default), because a
recording proxy needs the user's agent to reach the node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncssh

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
    route,
)

__all__ = ["FORWARDERS", "PipeForwarder", "start_ssh_proxy"]

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
            self._chan.write(proxysites_json(self._proxy.state.name))
            self._chan.exit(0)
            return
        if self._request is None:  # a shell or exec request: nothing to run here
            self._chan.write_stderr(_ONLY_SUBSYSTEMS)
            self._chan.exit(1)
            return
        try:
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

    def shell_requested(self) -> bool:
        return True  # answered in session_started with a clear error

    def exec_requested(self, command: str) -> bool:
        return True  # idem

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._forwarder is not None and datatype is None:
            self._forwarder.data_received(data)

    def eof_received(self) -> bool:
        if self._forwarder is not None:
            self._forwarder.eof_received()
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
        super().__init__(proxy.authority.user_ca)
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


async def start_ssh_proxy(
    state: ClusterState, authority: Authority, config: ServerConfig, port: int
) -> asyncssh.SSHAcceptor:
    """Listen on 127.0.0.1:``port`` (0 = any free port) with the proxy's certified host key."""
    key_path = state.proxy_dir / "ssh_host_key"
    if key_path.exists():
        host_key = asyncssh.read_private_key(key_path)
    else:
        from tests.cluster._files import atomic_write

        host_key = authority.new_host_key()
        atomic_write(key_path, host_key.export_private_key("openssh"), 0o600)
    principals = ["127.0.0.1", "localhost", "::1", state.name]
    host_cert = authority.sign_host(host_key, principals, f"proxy.{state.name}", 365 * 86400)
    proxy = _Proxy(state, authority, config, host_key)
    return await asyncssh.listen(
        "127.0.0.1",
        port,
        server_factory=lambda: _ProxyServer(proxy),
        server_host_keys=[(host_key, host_cert)],
        encoding=None,
        agent_forwarding=True,
        allow_scp=False,
        x11_forwarding=False,
        login_timeout=30,
    )
