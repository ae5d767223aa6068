"""The recording proxy (``start --recording proxy``): terminate, relay and record.

In this mode the ``proxy:`` subsystem does not pipe bytes to the node. As
Teleport's forwarding server does, it runs an SSH *server* inside the channel
and a second SSH connection, as a client, to the node:

    user ssh ══ outer conn (ProxyCommand) ══ proxy ── subsystem channel
                                                   └─ socketpair ── inner asyncssh server
                                                                    └─ asyncssh client ── node sshd

* Agent: the client must forward its agent on the *outer* connection
  (``ForwardAgent yes`` on the ssh that connects to the proxy): the proxy logs
  in to the node with it. Without one the channel gets a clear error on stderr
  and exit status 1, before any handshake.
* Inner server: presents a host certificate for the node, signed by the host
  CA, with principals ``<node>``, ``<node>.<cluster>`` and whatever the node's
  own certificate lists (read with a key-exchange-only probe), so OpenSSH's
  ``@cert-authority`` check passes as it would against the node. Users log in
  with a user-CA certificate naming the login, as on the outer proxy.
* Node: after the user's login the proxy connects to the node as the same
  login with the keys of the forwarded agent. The node's host key must be a
  certificate from the host CA; a plain key is refused with Teleport's
  ``ssh: handshake failed: remote host presented a public key, expected a host
  certificate`` unless ``--proxy-checks-host-keys no``. Failures reach the user
  as a refused channel (OpenSSH prints ``channel 0: open failed: connect
  failed: <reason>``), as with Teleport.
* Relayed: exec, shell, pty (type, size, modes), env, window changes,
  signals, break, exit status and exit signal, subsystems (sftp, so scp and
  sftp work), direct-tcpip (``-L``). Agent forwarding to the node only for a
  session that asked for it (``ssh -A``): the proxy then opens a second node
  connection that forwards the agent it was given (Teleport also forwards the
  proxy's copy of the user agent).
* Recorded: each session as an asciicast v2 file (see ``_asciicast.py``);
  subsystem sessions get a header but no output (their bytes are a protocol).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncssh

from ._asciicast import CastWriter, RecordingInfo, new_recording_id, recordings_dir
from ._auth import UserCertServer

if TYPE_CHECKING:
    from ._state import Node
    from ._trust import LeafRoute

__all__ = ["NO_AGENT_MESSAGE", "PLAIN_HOST_KEY_MESSAGE", "RecordingForwarder"]

log = logging.getLogger("tests.cluster.recording")

PLAIN_HOST_KEY_MESSAGE = "remote host presented a public key, expected a host certificate"
NO_AGENT_MESSAGE = (
    "this cluster records sessions at the proxy (session_recording: proxy), which logs in to "
    "{node} on your behalf with your SSH agent, but no agent was forwarded to the proxy: "
    "the ssh that connects to the proxy (the ProxyCommand) needs ForwardAgent yes "
    "(ssh -o ForwardAgent=yes ...) and a running ssh-agent (SSH_AUTH_SOCK) that holds your "
    "Teleport certificate (tsh login loads it there; check with ssh-add -L)"
)
_NODE_TIMEOUT_S = 15
_LOGIN_TIMEOUT_S = 30
_DEFAULT_SIZE = (80, 24)


class _NodeError(Exception):
    """Why the proxy could not log in to the node (the text the user sees)."""


class _Context:
    """What every recording forwarder of one proxy shares."""

    def __init__(self, proxy: Any) -> None:
        self.state = proxy.state
        self.authority = proxy.authority
        self.config = proxy.config
        # The proxy's own host key (start_ssh_proxy's), certified per node for the inner servers.
        self.host_key: asyncssh.SSHKey = proxy.host_key


class RecordingForwarder:
    """Terminates one ``proxy:`` channel with an in-process SSH server (see module doc)."""

    def __init__(self, chan: asyncssh.SSHServerChannel, node: Node, *, context: _Context,
                 leaf: LeafRoute | None = None):
        from ._sshproxy import PipeForwarder  # _sshproxy imports this module

        self._chan = chan
        self._node = node
        self._ctx = context
        self._leaf = leaf  # a node of a leaf cluster, reached over its reverse tunnel
        self._inner_sock, self._pipe_sock = socket.socketpair()
        self._pipe = PipeForwarder(
            chan, node, dial=lambda: asyncio.open_connection(sock=self._pipe_sock)
        )
        self._server: _InnerServer | None = None
        self._server_task: asyncio.Task[Any] | None = None
        self._closed = False

    @classmethod
    def bind(cls, proxy: Any) -> Callable[..., RecordingForwarder]:
        """A ``(chan, node[, leaf])`` factory sharing ``proxy``'s state, CAs and settings."""
        context = _Context(proxy)
        return lambda chan, node, leaf=None: cls(chan, node, context=context, leaf=leaf)

    async def run(self) -> None:
        chan, node = self._chan, self._node
        agent_path = chan.get_agent_path()  # agent requests are served before the subsystem
        if agent_path is None:
            log.info("refused %s: no agent forwarded", node.name)
            chan.write_stderr((NO_AGENT_MESSAGE.format(node=node.name) + "\n").encode())
            chan.exit(1)
            self._close_socks()
            return
        outer = chan.get_connection()
        self._server = _InnerServer(self._ctx, node, agent_path, outer.get_extra_info("peername"),
                                    self._leaf)
        principals = await _node_principals(node, self._ctx, self._leaf)
        if self._closed:  # the user went away during the probe
            self._close_socks()
            return
        host_cert = self._ctx.authority.sign_host(
            self._ctx.host_key, principals, f"recording-proxy:{node.name}", 3600,
            self._ctx.authority.keys("host").presented,
        )
        server = self._server
        self._server_task = asyncio.ensure_future(
            asyncssh.run_server(
                sock=self._inner_sock,
                server_factory=lambda: server,
                server_host_keys=[(self._ctx.host_key, host_cert)],
                encoding=None,
                agent_forwarding=True,  # lets us see which sessions asked for -A
                x11_forwarding=False,
                login_timeout=_LOGIN_TIMEOUT_S,
                config=None,
            )
        )
        self._server_task.add_done_callback(_log_server_end)
        try:
            await self._pipe.run()
        finally:
            self.close()

    def data_received(self, data: bytes) -> None:
        self._pipe.data_received(data)

    def eof_received(self) -> None:
        self._pipe.eof_received()

    def pause_writing(self) -> None:
        self._pipe.pause_writing()

    def resume_writing(self) -> None:
        self._pipe.resume_writing()

    def close(self) -> None:
        # Once run() handed the socketpair to asyncio, the transports close it.
        self._closed = True
        self._pipe.close()
        if self._server is not None:
            self._server.close()
        if self._server_task is not None and not self._server_task.done():
            self._server_task.cancel()

    def _close_socks(self) -> None:
        self._inner_sock.close()
        self._pipe_sock.close()


def _log_server_end(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.info("inner SSH server ended before login: %s", exc)


def _host_cas(ctx: _Context, leaf: LeafRoute | None) -> list[asyncssh.SSHKey]:
    """The host CAs a node must be certified by: ours, or its leaf's (trusted-clusters.md §5.3)."""
    if leaf is None:  # every key the host CA trusts now: both during a rotation
        return [k.convert_to_public() for k in ctx.authority.keys("host").trusted]
    return [asyncssh.import_public_key(line) for line in leaf.host_cas]


async def _node_principals(node: Node, ctx: _Context, leaf: LeafRoute | None = None) -> list[str]:
    """``<node>``, ``<node>.<cluster>`` and the principals of the node's host-CA certificate.

    For a leaf node the cluster is the leaf: the certificate comes from *our* host
    CA, but names the node as the user dialled it (Teleport names it
    ``<node>.<root>`` instead, issue #42256).
    """
    names = [node.name, f"{node.name}.{leaf.leaf if leaf else ctx.state.name}"]
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(
                node.host, node.port, tunnel=leaf,
                server_host_key_algs=[
                    "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com",
                    "ssh-ed25519-cert-v01@openssh.com", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
                ],
                config=None,
            ),
            _NODE_TIMEOUT_S,
        )  # fmt: skip
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
        # No certificate (or no node): the login to the node reports it properly.
        log.info("host key probe of %s: %s", node.addr, e)
        return names
    cert = key if isinstance(key, asyncssh.SSHCertificate) else None
    cas = [ca.public_data for ca in _host_cas(ctx, leaf)]
    if cert is not None and cert.signing_key.public_data in cas:
        names += [p for p in cert.principals if p not in names]
    return names


class _NodeClient(asyncssh.SSHClient):
    """Host key policy for the node: host-CA certificates, plain keys only if allowed."""

    def __init__(self, checks_host_keys: bool, node: Node):
        self._checks = checks_host_keys
        self._node = node
        self.refusal: str | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if self._checks:
            self.refusal = PLAIN_HOST_KEY_MESSAGE
            return False
        log.warning(
            "insecure configuration: proxy_checks_host_keys is off, trusting the plain %s "
            "host key of %s", key.get_algorithm(), self._node.addr,
        )  # fmt: skip
        return True

    def validate_host_ca_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # Go's CertChecker refuses a certificate from an unknown CA whatever
        # proxy_checks_host_keys says (that setting only covers plain keys).
        self.refusal = f"ssh: no authorities for hostname: {host}:{port}"
        return False


def _sha2_rsa_cert(
    agent: asyncssh.SSHAgentClient, key: asyncssh.SSHKeyPair
) -> asyncssh.SSHKeyPair:
    """``key``, with an RSA certificate offered as ``rsa-sha2-256-cert-v01`` from the start.

    Teleport's forwarder (Go's x/crypto, with every signer of the agent) offers
    an RSA certificate under the first SHA-2 name the node's server-sig-algs
    allow, whatever the keys' order. asyncssh offers it as the SHA-1 name
    ``ssh-rsa-cert-v01`` first, which OpenSSH 8.8+ refuses, and retries with
    the SHA-2 name only if another key follows: so an agent listing the plain
    key before the certificate (what ``ssh-add`` of a key with its
    ``-cert.pub`` gives) or holding only the certificate failed here.
    """
    if key.algorithm != b"ssh-rsa-cert-v01@openssh.com":
        return key
    return asyncssh.SSHAgentKeyPair(
        agent, b"rsa-sha2-256-cert-v01@openssh.com", key.public_data, key.get_comment_bytes() or b""
    )


def _key_id(key_data: bytes) -> str:
    """The key id of an OpenSSH certificate blob ("" if it is not one)."""
    from cryptography.hazmat.primitives.serialization import (
        SSHCertificate,
        load_ssh_public_identity,
    )

    try:
        cert = asyncssh.public_key.decode_ssh_certificate(key_data)
        raw = load_ssh_public_identity(cert.export_certificate("openssh"))
    except (asyncssh.KeyImportError, ValueError):
        return ""
    return raw.key_id.decode("utf-8", "replace") if isinstance(raw, SSHCertificate) else ""


class _InnerServer(UserCertServer):
    """The SSH server the user's ssh talks to inside the ``proxy:`` channel."""

    def __init__(self, ctx: _Context, node: Node, agent_path: str, peer: object,
                 leaf: LeafRoute | None = None):
        super().__init__(lambda: ctx.authority.keys("user").trusted)
        self._ctx = ctx
        self.node = node
        self._leaf = leaf
        self._agent_path = agent_path
        self._peer = peer
        self._conn: asyncssh.SSHServerConnection | None = None
        self.user = ""  # the Teleport user: the key id of the login certificate
        self.login = ""
        self.node_conn: asyncssh.SSHClientConnection | None = None
        self._dial_task: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._extra_conns: list[asyncssh.SSHClientConnection] = []
        self._closed = False

    # ---- authentication (as the outer proxy: user-CA certificates only)
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:  # type: ignore[override]
        self._conn = conn
        # asyncssh hands validate_ca_key only the CA key; the key id (the
        # Teleport user) is in the certificate, so note it when one is accepted.
        validate = conn.validate_public_key

        async def validate_and_note(username: str, key_data: bytes, msg: bytes, sig: bytes) -> bool:
            ok = await validate(username, key_data, msg, sig)
            if ok and msg:
                self.user = _key_id(key_data)
            return ok

        conn.validate_public_key = validate_and_note  # type: ignore[method-assign]

    def auth_completed(self) -> None:
        assert self._conn is not None
        self.login = self._conn.get_extra_info("username")
        log.info(
            "recording proxy: %s logged in as %s for %s", self.user, self.login, self.node.name
        )
        self._dial_task = asyncio.ensure_future(self.dial())
        # Retrieve the exception so that a failed dial is not "never retrieved".
        self._dial_task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # ---- the node side
    async def dial(self, forward_agent: bool = False) -> asyncssh.SSHClientConnection:
        """Log in to the node as ``self.login`` with the forwarded agent's keys."""
        node = self.node
        try:
            agent = await asyncssh.connect_agent(self._agent_path)
        except (OSError, asyncssh.Error) as e:
            raise _NodeError(f"cannot use the SSH agent forwarded to the proxy: {e}") from None
        try:
            keys = [_sha2_rsa_cert(agent, key) for key in await agent.get_keys()]
            client = _NodeClient(self._ctx.config.proxy_checks_host_keys, node)
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    node.host, node.port,
                    username=self.login,
                    client_factory=lambda: client,
                    known_hosts=([], _host_cas(self._ctx, self._leaf), []),
                    tunnel=self._leaf,
                    server_host_key_algs="default",
                    client_keys=keys,
                    agent_path=None,
                    agent_forwarding=self._agent_path if forward_agent else False,
                    preferred_auth="publickey",
                    config=None,
                    encoding=None,
                    login_timeout=_LOGIN_TIMEOUT_S,
                ),
                _NODE_TIMEOUT_S,
            )  # fmt: skip
        except asyncssh.HostKeyNotVerifiable as e:
            raise _NodeError(f"ssh: handshake failed: {client.refusal or e.reason}") from None
        except asyncssh.PermissionDenied:
            raise _NodeError(
                "ssh: handshake failed: ssh: unable to authenticate, attempted methods "
                f"[none publickey], no supported methods remain (login {self.login!r} on "
                f"{node.name} with the {len(keys)} key(s) of your forwarded agent: does "
                "ssh-add -L list your Teleport certificate? tsh login loads it there)"
            ) from None
        except (asyncssh.ConnectionLost, asyncio.IncompleteReadError, ConnectionResetError):
            raise _NodeError("ssh: handshake failed: EOF") from None
        except asyncssh.Error as e:
            raise _NodeError(f"ssh: handshake failed: {e.reason}") from None
        except (OSError, asyncio.TimeoutError) as e:
            reason = (e.strerror if isinstance(e, OSError) else None) or str(e) or "timed out"
            raise _NodeError(
                f"failed connecting to node {node.name} at {node.addr}: {reason}"
            ) from None
        finally:
            agent.close()
        if self._closed:
            conn.close()
            raise _NodeError("the user's connection closed")
        if forward_agent:
            self._extra_conns.append(conn)
        else:
            self.node_conn = conn
        return conn

    async def _node(self) -> asyncssh.SSHClientConnection:
        assert self._dial_task is not None
        try:
            return await asyncio.shield(self._dial_task)
        except _NodeError as e:
            log.info("recording proxy: %s", e)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(e)) from None

    def session_requested(self) -> Any:
        # A coroutine: asyncssh waits for it before confirming the channel, so a
        # node we cannot reach turns into a refused channel with the reason.
        async def open_session() -> _RelaySession:
            await self._node()
            return _RelaySession(self)

        return open_session()

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        # ssh -L: asyncssh tunnels the channel over the node connection.
        return self.node_conn if self.node_conn is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        if self._dial_task is not None and not self._dial_task.done():
            self._dial_task.cancel()
        for conn in [self.node_conn, *self._extra_conns]:
            if conn is not None:
                conn.close()
        if self._conn is not None:
            self._conn.close()

    # ---- recordings
    def recorder(
        self, kind: str, command: str | None, size: tuple[int, int], term: str | None
    ) -> CastWriter:
        info = RecordingInfo(
            id=new_recording_id(), user=self.user or "?", login=self.login,
            node=self.node.name, cluster=self._ctx.state.name, kind=kind, command=command,
        )  # fmt: skip
        env = {"TERM": term} if term else {}
        return CastWriter(recordings_dir(self._ctx.state.data_dir), info, size[0], size[1], env)


class _RelaySession(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """One user session, relayed to a session on the node and recorded."""

    def __init__(self, server: _InnerServer):
        self._server = server
        self._chan: asyncssh.SSHServerChannel | None = None
        self._kind = "shell"
        self._command: str | None = None
        self._subsystem: str | None = None
        self._pty: tuple[str, tuple[int, int, int, int], dict[int, int]] | None = None
        self._upstream: asyncssh.SSHClientChannel | None = None
        self._pending: list[bytes] = []
        self._eof = False
        self._task: asyncio.Task[None] | None = None
        self.cast: CastWriter | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # type: ignore[override]
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: dict[int, int]
    ) -> bool:
        self._pty = (term_type, term_size, term_modes)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._kind, self._command = "exec", command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self._kind, self._subsystem = "subsystem", subsystem
        return True  # the node says whether it has it

    def session_started(self) -> None:
        self._task = asyncio.ensure_future(self._start())

    async def _start(self) -> None:
        chan, server = self._chan, self._server
        assert chan is not None
        # The user's -A arrives (and is served) before shell/exec/subsystem.
        forward_agent = chan.get_agent_path() is not None
        term_type, term_size, term_modes = self._pty or (None, None, None)
        try:
            conn = await server.dial(forward_agent=True) if forward_agent else server.node_conn
            assert conn is not None
            self._upstream, _ = await conn.create_session(
                lambda: _Upstream(self),
                command=self._command,
                subsystem=self._subsystem,
                env=dict(chan.get_environment_bytes()),
                request_pty=self._pty is not None,
                term_type=term_type,
                term_size=term_size,
                term_modes=term_modes or {},
                encoding=None,
            )
        except (_NodeError, asyncssh.Error, OSError) as e:
            reason = str(e) if isinstance(e, _NodeError) else getattr(e, "reason", str(e))
            chan.write_stderr(f"{server.node.name}: {reason}\n".encode())
            chan.exit(255)
            return
        if self._subsystem is None:
            size = term_size[:2] if term_size else _DEFAULT_SIZE
            self.cast = server.recorder(self._kind, self._command, size, term_type)
        else:
            self.cast = server.recorder("subsystem", self._subsystem, _DEFAULT_SIZE, None)
        for data in self._pending:
            self._upstream.write(data)
        self._pending.clear()
        if self._eof:
            self._upstream.write_eof()

    # user -> node
    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._upstream is None:
            self._pending.append(data)
        else:
            self._upstream.write(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self._upstream is not None:
            self._upstream.write_eof()
        return True  # half-open: the node still answers

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._upstream is not None:
            self._upstream.change_terminal_size(width, height, pixwidth, pixheight)
        if self.cast is not None:
            self.cast.resize(width, height)

    def signal_received(self, signal: str) -> None:
        if self._upstream is not None:
            self._upstream.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self._upstream is None:
            return False
        self._upstream.send_break(msec)
        return True

    def pause_writing(self) -> None:  # the user is slow: slow the node down
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._upstream is not None:
            self._upstream.close()
        self.finish(None)

    # node -> user
    def output(self, data: bytes, stderr: bool) -> None:
        chan = self._chan
        assert chan is not None
        if stderr:
            chan.write_stderr(data)
        else:
            chan.write(data)
        if self.cast is not None and self._subsystem is None:
            self.cast.output(data)

    def finish(self, exit: int | str | None) -> None:
        if self.cast is not None:
            try:
                path = self.cast.close(exit)
                log.info("recorded %s", path.name)
            except OSError as e:
                log.warning("could not finish recording: %s", e)
            self.cast = None


class _Upstream(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """The node side of a relayed session."""

    def __init__(self, relay: _RelaySession):
        self._relay = relay
        self._status: int | None = None
        self._signal: tuple[str, bool, str, str] | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._relay.output(data, datatype == asyncssh.EXTENDED_DATA_STDERR)

    def eof_received(self) -> bool:
        chan = self._relay._chan
        if chan is not None:
            chan.write_eof()
        return True  # wait for the exit status

    def exit_status_received(self, status: int) -> None:
        self._status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._signal = (signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:  # the node is slow: slow the user down
        if self._relay._chan is not None:
            self._relay._chan.pause_reading()

    def resume_writing(self) -> None:
        if self._relay._chan is not None:
            self._relay._chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        chan = self._relay._chan
        if self._signal is not None:
            self._relay.finish(f"signal {self._signal[0]}")
            if chan is not None:
                chan.exit_with_signal(*self._signal)
        else:
            self._relay.finish(self._status)
            if chan is not None:
                if self._status is not None:
                    chan.exit(self._status)
                else:
                    chan.close()
