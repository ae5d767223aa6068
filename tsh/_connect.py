"""SSH to nodes through the proxy, in-process, with asyncssh.

One :class:`ProxyConnection` is one authenticated SSH connection to the
proxy's SSH port. Each node connection is a new ``proxy:<host>:<port>@<cluster>``
subsystem channel on it (teleport-wire.md section 10.1), and a second SSH
handshake, with the node, runs inside that channel. So fifty commands on
fifty nodes cost one login to the proxy, not fifty.

What makes it as strict as `tsh ssh` through OpenSSH:

- The proxy must present a host certificate from a CA in the profile's
  known_hosts, for the proxy host name (OpenSSH's ``HostKeyAlias``); a node
  one for ``<host>.<cluster>``. Only that name is looked up, never the
  address the bytes come from (for a node that is the proxy's address).
  A node with a plain host key, or one certified by another CA, is refused.
- The client logs in with the profile's key and certificate: the key file,
  or for a `-k only` profile the agent's identity carrying the certificate.
- The agent is forwarded to the proxy, since a recording proxy
  (``session_recording: proxy``) logs in to the node with it. With the key on
  disk that is tsh._agent.private's LazyAgent: the user's agent if it holds the
  certificate, else a private agent with the key, started only if the proxy asks.

The proxy connection logs in as ``-teleport-internal-join``, the principal
every Teleport user certificate carries for API-only connections, so that one
proxy connection serves every node login.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from ._asyncssh import asyncssh
from ._core.addr import (
    DEFAULT_NODE_PORT,
    FALLBACK_WEB_PORT,
    SSH_PROXY_PORT,
    join_host_port,
    split_host_port,
)
from ._core.names import validate_cluster_name, validate_host, validate_login
from ._core.profile import Profile
from ._exceptions import NotLoggedInError, ProfileError, SSHError, TshError, UsageError
from ._openssh.hop import clean_target_host, subsystem_name
from ._store.layout import ProfilePaths
from ._store.store import ProfileStore

if TYPE_CHECKING:
    from ._authapi.stream import AuthStream

__all__ = ["NodeConnect", "ProxyConnection", "RunResult", "proxy_route", "run_command"]

#: The principal of every Teleport user certificate meant for API-only
#: connections (teleport-wire.md section 10.2, "Principal check").
INTERNAL_LOGIN = "-teleport-internal-join"
#: Seconds for a TCP connect plus SSH handshake (OpenSSH's ConnectTimeout in `tsh ssh`).
CONNECT_TIMEOUT = 15.0
#: Seconds between keepalives on the proxy connection (ServerAliveInterval in `tsh ssh`).
KEEPALIVE_INTERVAL = 30
#: Bytes of the proxy's stderr kept for an error message.
_STDERR_LIMIT = 4096
#: Characters of the proxy's text shown in an error message.
_MESSAGE_LIMIT = 300


class RunResult(NamedTuple):
    """What :meth:`ProxyConnection.run` returns."""

    exit_status: int | None  # None when the command was ended by a signal
    stdout: str
    stderr: str


def _one_line(text: str) -> str:
    """The proxy's text as one short printable line (it is shown to the user)."""
    lines = ["".join(c if c.isprintable() else "?" for c in ln).strip() for ln in text.splitlines()]
    line = "; ".join(ln for ln in lines if ln)
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 3] + "..."


def _host_key_check(known_hosts: asyncssh.SSHKnownHosts, name: str) -> Any:
    """asyncssh's ``known_hosts=`` that matches ``name`` only (OpenSSH's HostKeyAlias).

    Not the address: through the proxy every node's bytes come from the proxy's
    address, and a line for that address must not vouch for a node.
    """
    return lambda _host, _addr, _port: known_hosts.match(name, "", None)


class _ChannelTransport:
    """The transport asyncssh's node connection writes to: a subsystem channel.

    Only what an SSH connection uses of a transport. ``get_extra_info`` knows
    nothing: the channel would answer with the proxy connection's socket,
    whose options the node connection would then change.
    """

    def __init__(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._chan = chan

    def write(self, data: bytes) -> None:
        self._chan.write(data)

    def close(self) -> None:
        self._chan.close()

    def abort(self) -> None:
        self._chan.abort()

    def is_closing(self) -> bool:
        return self._chan.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _TunnelSession(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """The subsystem channel's session: stdout goes to the node connection.

    The proxy's stderr (its refusals, such as an unknown node) is kept for the
    error message, and never reaches the node connection's SSH parser.
    """

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol  # asyncssh's SSHClientConnection to the node
        self.stderr = bytearray()
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._started = False

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan
        # The channel is open and asyncssh sends the subsystem request next,
        # without yielding to the loop: start the node handshake right after
        # it instead of after the proxy's answer, as OpenSSH's `ssh -s` does.
        # One round trip to the proxy less per node; the proxy reads the
        # channel only once it has accepted the subsystem.
        asyncio.get_running_loop().call_soon(self._start)

    def session_started(self) -> None:
        self._start()

    def _start(self) -> None:
        if not self._started and self.chan is not None:
            self._started = True
            self.protocol.connection_made(_ChannelTransport(self.chan))

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.stderr += data[: _STDERR_LIMIT - len(self.stderr)]
        else:
            self.protocol.data_received(data)

    def eof_received(self) -> bool:
        self.protocol.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def proxy_said(self) -> str:
        return _one_line(self.stderr.decode("utf-8", "replace"))


class _Tunnel:
    """asyncssh's ``tunnel=`` for one node: opens the ``proxy:`` subsystem on the proxy connection."""

    def __init__(self, proxy: asyncssh.SSHClientConnection, subsystem: str) -> None:
        self._proxy = proxy
        self._subsystem = subsystem
        self.session: _TunnelSession | None = None
        self.refused = ""  # why the proxy refused the subsystem request, if it did

    async def create_connection(
        self, protocol_factory: Any, _host: str, _port: int
    ) -> tuple[asyncssh.SSHClientChannel[bytes], Any]:
        def session_factory() -> _TunnelSession:
            self.session = _TunnelSession(protocol_factory())
            return self.session

        try:
            await self._proxy.create_session(session_factory, subsystem=self._subsystem, encoding=None)
        except asyncssh.ChannelOpenError as e:
            if self.session is None or self.session.chan is None:  # no channel at all
                raise SSHError(f"the proxy refused a channel: {_one_line(e.reason)}") from None
            # The node handshake has started on the channel, which is closing
            # now: asyncssh reports that, and connect() adds what the proxy said.
            self.refused = f"the proxy refused {self._subsystem}: {_one_line(e.reason)}"
        assert self.session is not None and self.session.chan is not None
        return self.session.chan, self.session.protocol  # asyncssh waits on the protocol it made

    def proxy_said(self) -> str:
        said = self.session.proxy_said() if self.session else ""
        return said or self.refused


class NodeConnect:
    """A node connection being opened: await it, or use it with ``async with`` (closes it)."""

    def __init__(self, opening: Any) -> None:
        self._opening = opening
        self._conn: asyncssh.SSHClientConnection | None = None

    def __await__(self) -> Generator[Any, None, asyncssh.SSHClientConnection]:
        conn: asyncssh.SSHClientConnection = yield from self._opening.__await__()
        return conn

    async def __aenter__(self) -> asyncssh.SSHClientConnection:
        self._conn = await self._opening
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()


class ProxyConnection:
    """One authenticated SSH connection to the proxy, carrying any number of node connections.

    Open it with :meth:`open` (or ``async with await ProxyConnection.open(...)``),
    then :meth:`connect` to nodes, as many at once as wanted. :meth:`close`
    ends it and every node connection on it.
    """

    def __init__(
        self,
        profile: Profile,
        paths: ProfilePaths,
        conn: asyncssh.SSHClientConnection,
        client_keys: list[Any],
        known_hosts: asyncssh.SSHKnownHosts,
        closers: list[Any],
    ) -> None:
        self.profile = profile
        self._paths = paths
        self._conn = conn
        self._client_keys = client_keys
        self._known_hosts = known_hosts
        self._closers = closers  # agent client, LazyAgent: closed after the connection

    @classmethod
    async def open(
        cls, profile: Profile, store: ProfileStore | None = None, *, agent_path: str | None = None
    ) -> ProxyConnection:
        """Log in to ``profile``'s SSH proxy with its key and certificate.

        ``agent_path`` is the user's agent (default ``$SSH_AUTH_SOCK``): for a
        `-k only` profile the one holding the key, else the one forwarded to a
        recording proxy if it holds the certificate.

        Raises:
            NotLoggedInError: the certificate expired, or a file or agent key is missing.
            ProfileError: the key or certificate on disk cannot be read.
            SSHError: the proxy is unreachable, not trusted, or refused the certificate.
        """
        store = store or ProfileStore()
        paths = store.paths_for(profile)
        if profile.valid_before <= time.time():
            raise NotLoggedInError(f"the certificate for {profile.name} has expired; log in again")
        ssh_host, ssh_port, route = proxy_route(profile, paths)
        proxy_host = validate_host(profile.proxy_host, "proxy host")
        if agent_path is None:
            agent_path = os.environ.get("SSH_AUTH_SOCK") or None
        known_hosts = _read_known_hosts(paths)
        cert = _read(asyncssh.read_certificate, paths.ssh_cert(profile.cluster))
        closers: list[Any] = []
        try:
            if profile.key_storage == "agent":
                client_keys, agent = await _agent_identity(profile, store, cert, agent_path)
                closers.append(agent)
                forward: str | None = agent_path
            else:
                key = _read(asyncssh.read_private_key, paths.private_key)
                client_keys = list(asyncssh.load_keypairs([(key, cert)]))
                lazy = _lazy_agent(profile, paths, agent_path)
                if lazy is not None:
                    closers.append(lazy)
                forward = lazy.sock if lazy is not None else None
            login = INTERNAL_LOGIN if INTERNAL_LOGIN in profile.principals else _first_login(profile)
            addr = profile.ssh_proxy_addr
            try:
                conn = await asyncssh.connect(
                    ssh_host, ssh_port,
                    **({"tunnel": route} if route is not None else {}),
                    username=login,
                    client_keys=client_keys,
                    agent_path=None,  # log in with exactly the profile's identity
                    agent_forwarding=forward or False,
                    known_hosts=_host_key_check(known_hosts, proxy_host),
                    host_key_alias=proxy_host,
                    server_host_key_algs="default",  # as for nodes, see there
                    config=[], preferred_auth="publickey", gss_kex=False, gss_auth=False,
                    connect_timeout=CONNECT_TIMEOUT,
                    keepalive_interval=KEEPALIVE_INTERVAL,
                )  # fmt: skip
            except asyncssh.HostKeyNotVerifiable:
                raise SSHError(
                    f"the proxy {addr} is not trusted: its host certificate is not signed "
                    f"by a CA in {paths.known_hosts}; log in again"
                ) from None
            except asyncssh.PermissionDenied:
                raise SSHError(
                    f"the proxy {addr} refused the certificate (expired, or revoked?)"
                ) from None
            except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
                raise SSHError(f"cannot connect to the proxy {addr}: {_reason(e)}") from None
        except BaseException:
            await _close_all(closers)
            raise
        return cls(profile, paths, conn, client_keys, known_hosts, closers)

    def connect(
        self,
        host: str,
        *,
        login: str,
        port: int | None = None,
        cluster: str | None = None,
        **options: Any,
    ) -> NodeConnect:
        """An SSH connection to node ``host`` as ``login``, through this proxy connection.

        Await it, or ``async with pc.connect("node1", login="root") as conn``
        (closed at the end). ``port`` None lets the proxy use the node's
        registered port. ``cluster`` defaults to the profile's cluster; a
        trailing ``.<proxy host>`` or ``.<cluster>`` on ``host`` is dropped, as
        tsh does. ``options`` go to asyncssh's connection options.

        Raises:
            UsageError: a bad host, login, port or cluster (InvalidNameError for names).
            SSHError: the proxy refused the node (its message), the node's host
                key is not certified by the cluster's CA, or the node refused the login.
        """
        return NodeConnect(self._connect_node(host, login, port, cluster, options))

    async def _connect_node(
        self, host: str, login: str, port: int | None, cluster: str | None, options: dict[str, Any]
    ) -> asyncssh.SSHClientConnection:
        cluster = validate_cluster_name(cluster or self.profile.cluster)
        node = validate_host(clean_target_host(host, self.profile.proxy_host, cluster), "host")
        validate_login(login)
        if port is not None and (isinstance(port, bool) or not 0 < port < 65536):
            raise UsageError(f"invalid node port {port!r}")
        alias = node if node.lower().endswith("." + cluster.lower()) else f"{node}.{cluster}"
        # No port: "0", as real tsh sends (net.JoinHostPort(host, "0")); the
        # proxy then dials the node's registered port, whatever it is.
        tunnel = _Tunnel(self._conn, subsystem_name(node, "0" if port is None else str(port), cluster))
        try:
            return await asyncssh.connect(
                node, port or DEFAULT_NODE_PORT,
                tunnel=tunnel,
                username=login,
                client_keys=self._client_keys,
                agent_path=None,
                known_hosts=_host_key_check(self._known_hosts, alias),
                host_key_alias=alias,
                # Offer plain host keys too (as OpenSSH does), so that a node
                # without a certificate fails the host check, not the key exchange.
                server_host_key_algs="default",
                config=[], preferred_auth="publickey", gss_kex=False, gss_auth=False,
                connect_timeout=CONNECT_TIMEOUT,
                **options,
            )  # fmt: skip
        except TshError:
            raise
        except asyncssh.HostKeyNotVerifiable:
            raise SSHError(
                f"{alias} is not trusted: its host key is not certified by a CA of cluster "
                f"{cluster} in {self._paths.known_hosts}"
            ) from None
        except asyncssh.PermissionDenied:
            raise SSHError(f"{alias} refused the certificate for login {login!r}") from None
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
            said = tunnel.proxy_said()  # e.g. the proxy's "no node named ..." before it hung up
            raise SSHError(said or f"cannot connect to {alias} through the proxy: {_reason(e)}") from None

    async def run(
        self,
        host: str,
        command: str,
        *,
        login: str,
        port: int | None = None,
        cluster: str | None = None,
        input: str | None = None,
    ) -> RunResult:
        """Run ``command`` on ``host``; its exit status (None if killed by a signal), stdout, stderr.

        Raises:
            as :meth:`connect`.
        """
        async with self.connect(host, login=login, port=port, cluster=cluster) as conn:
            return await run_command(conn, host, command, input)

    async def dial_auth(self, cluster: str) -> AuthStream:
        """A byte stream to ``cluster``'s auth server: the ``proxy:@<cluster>`` subsystem.

        tsh._authapi's client runs TLS and gRPC on it (the AuthDialer seam).

        Raises:
            SSHError: the proxy refused the subsystem (its text).
        """
        from ._authapi.stream import subsystem_stream

        return await subsystem_stream(self._conn, f"proxy:@{validate_cluster_name(cluster)}")

    async def read_subsystem(self, subsystem: str, limit: int = 1 << 20) -> bytes:
        """The output of a subsystem that answers and exits (``proxysites``), at most ``limit`` bytes.

        Raises:
            SSHError: the proxy refused it or failed (its text).
        """
        try:
            proc = await self._conn.create_process(subsystem=subsystem, encoding=None)
            out, err = await asyncio.wait_for(proc.communicate(), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError, asyncssh.Error) as e:
            raise SSHError(f"the proxy refused {subsystem}: {_reason(e)}") from None
        if proc.exit_status not in (0, None) or len(out) > limit:
            said = _one_line(bytes(err).decode("utf-8", "replace"))
            raise SSHError(f"the proxy's {subsystem} failed: {said or proc.exit_status}")
        return bytes(out)

    async def close(self) -> None:
        """Close the proxy connection (and with it every node connection on it)."""
        self._conn.close()
        await self._conn.wait_closed()
        await _close_all(self._closers)
        self._closers = []

    async def __aenter__(self) -> ProxyConnection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def run_command(
    conn: asyncssh.SSHClientConnection, host: str, command: str, input: str | None = None
) -> RunResult:
    """Run ``command`` on the open node connection ``conn`` (to ``host``, for messages).

    Raises:
        SSHError: the session could not be run.
    """
    try:
        done = await conn.run(command, input=input)
    except (OSError, asyncssh.Error) as e:
        raise SSHError(f"running a command on {host} failed: {_reason(e)}") from None
    return RunResult(done.exit_status, str(done.stdout or ""), str(done.stderr or ""))


# ---------------------------------------------------------------------------


def proxy_route(profile: Profile, paths: ProfilePaths) -> tuple[str, int, Any]:
    """Where asyncssh connects for ``profile``'s proxy: ``(host, port, tunnel)``.

    ``tunnel`` is None for TCP to the SSH port; under TLS routing it is
    asyncssh's ``tunnel=`` that opens the TLS (and, behind an L7 load
    balancer, the connection upgrade) to the web port (tsh._proxy.dial;
    docs/protocol.md §18). Every SSH connection to the proxy goes through here.

    Raises:
        InvalidNameError: an unsafe proxy host or path.
    """
    from ._proxy.dial import tls_route

    route = tls_route(profile, os.environ)
    if route is None:
        host, port = split_host_port(profile.ssh_proxy_addr, SSH_PROXY_PORT)
        return validate_host(host, "SSH proxy host"), port, None
    host, port = split_host_port(profile.web_proxy_addr, FALLBACK_WEB_PORT)
    validate_host(host, "proxy host")
    ca_file = str(paths.tls_ca(profile.root_cluster or profile.cluster))
    return host, port, _TLSRoute(join_host_port(host, port), ca_file, None if route == "tls" else route)


class _TLSRoute:
    """asyncssh's ``tunnel=`` under TLS routing: TLS with ALPN ``teleport-proxy-ssh``
    to the web port, or the same inside a connection upgrade (tsh._proxy.tunnel)."""

    def __init__(self, addr: str, ca_file: str, upgrade: str | None) -> None:
        self._addr = addr
        self._ca_file = ca_file
        self._upgrade = upgrade

    async def create_connection(self, protocol_factory: Any, host: str, port: int) -> tuple[Any, Any]:
        import ssl

        from ._proxy.dial import ALPN_PROXY_SSH
        from ._proxy.tunnel import TunnelError, alpn_refused_message, open_tunnel, untrusted_message

        loop = asyncio.get_running_loop()
        if self._upgrade is not None:
            try:
                tunnel = await asyncio.to_thread(open_tunnel, self._addr, self._ca_file, self._upgrade)
            except TunnelError as e:
                raise SSHError(str(e)) from None
            ours, theirs = socket.socketpair()

            def relay() -> None:
                try:
                    tunnel.relay(theirs.fileno(), theirs.fileno())
                finally:
                    tunnel.close()
                    theirs.close()

            threading.Thread(target=relay, daemon=True).start()
            return await loop.create_connection(protocol_factory, sock=ours)
        try:
            ctx = ssl.create_default_context(cafile=self._ca_file)  # the host CA only
        except FileNotFoundError:
            raise NotLoggedInError(f"{self._ca_file} is missing; log in again") from None
        ctx.set_alpn_protocols([ALPN_PROXY_SSH])
        try:
            transport, protocol = await loop.create_connection(
                protocol_factory, host, port, ssl=ctx, server_hostname=host
            )
        except ssl.SSLCertVerificationError as e:
            raise SSHError(untrusted_message(self._addr, self._ca_file, e.verify_message)) from None
        tls = transport.get_extra_info("ssl_object")
        if tls is None or tls.selected_alpn_protocol() != ALPN_PROXY_SSH:
            transport.abort()
            raise SSHError(alpn_refused_message(self._addr))
        return transport, protocol


def _reason(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, asyncssh.Error):
        return _one_line(e.reason) or type(e).__name__
    return _one_line(str(e)) or type(e).__name__


def _read(reader: Any, path: Any) -> Any:
    """``reader(path)``: an asyncssh key or certificate from the profile's files."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise NotLoggedInError(f"{path} is missing; log in again") from None
    except (OSError, ValueError, asyncssh.KeyImportError) as e:
        raise ProfileError(f"cannot read {path}: {e}") from None


def _read_known_hosts(paths: ProfilePaths) -> asyncssh.SSHKnownHosts:
    try:
        return asyncssh.read_known_hosts(str(paths.known_hosts))
    except FileNotFoundError:
        raise NotLoggedInError(f"{paths.known_hosts} is missing; log in again") from None
    except (OSError, ValueError, asyncssh.KeyImportError) as e:
        raise ProfileError(f"cannot read {paths.known_hosts}: {e}") from None


def _first_login(profile: Profile) -> str:
    if not profile.logins:
        raise NotLoggedInError(f"the certificate for {profile.name} names no logins")
    return profile.logins[0]


async def _agent_identity(
    profile: Profile, store: ProfileStore, cert: Any, agent_path: str | None
) -> tuple[list[Any], Any]:
    """A `-k only` profile's identity: the agent's key carrying the profile's certificate.

    Put back from the OS keyring first if the agent lost it (as `tsh ssh` does).
    Returns the key pair and the agent client, which must stay open while it signs.
    """
    from ._agent.agent import ensure_agent_key

    if not agent_path:
        raise NotLoggedInError(
            f"the key of {profile.name} is kept in the ssh-agent, but no agent is running"
        )
    # ensure_agent_key runs its own event loop: give it a thread.
    warning = await asyncio.to_thread(ensure_agent_key, profile, store, agent_path)
    if warning:
        raise NotLoggedInError(warning)
    try:
        agent = await asyncssh.connect_agent(agent_path)
        keys = await agent.get_keys()
    except (OSError, ValueError, asyncssh.Error) as e:
        raise NotLoggedInError(f"cannot use the ssh-agent at {agent_path}: {e}") from None
    held = [k for k in keys if k.public_data == cert.public_data]
    if not held:
        agent.close()
        raise NotLoggedInError(f"the ssh-agent at {agent_path} lacks the key of {profile.name}")
    return held[:1], agent


def _lazy_agent(profile: Profile, paths: ProfilePaths, user_sock: str | None) -> Any:
    """The agent to forward with the key on disk (tsh._agent.private.LazyAgent), or None."""
    from ._agent.private import LazyAgent

    try:
        lazy = LazyAgent(
            str(paths.private_key),
            str(paths.ssh_cert(profile.cluster)),
            int(profile.valid_before - time.time()),
            user_sock=user_sock,
        )
    except OSError:
        return None  # only a recording proxy needs it; it says so if it is missing
    lazy.serve()
    return lazy


async def _close_all(closers: list[Any]) -> None:
    for closer in closers:
        if hasattr(closer, "wait_closed"):  # the agent client
            closer.close()
            await closer.wait_closed()
        else:  # LazyAgent: may stop a private ssh-agent, which waits
            await asyncio.to_thread(closer.close)
