"""`tsh proxy ssh`: the ProxyCommand that carries OpenSSH to a node via the proxy.

OpenSSH starts ``tsh proxy ssh --cluster=C --proxy=P %r@%h:%p`` and speaks
SSH to the node over our stdin/stdout. We log in to the proxy's SSH port with
the profile's certificate, check the proxy's host certificate against the
profile's known_hosts CAs, forward the local agent (a recording proxy needs
it), open the ``proxy:<host>:<port>@<cluster>`` subsystem and copy bytes both
ways (teleport-wire.md section 10.1).

Overload: an sshd over its ``MaxStartups`` (or a busy proxy) drops new
connections before they authenticate. Such a drop is retried with jittered
backoff a bounded number of times: a drop of the proxy connection before our
login, or a node channel that closed before the node sent a single byte (the
bytes ssh already sent are kept and replayed on the new channel, so ssh never
notices). Authentication failures and anything after the node spoke are never
retried.

The top half of this module is pure (target parsing, subsystem name, retry
policy); asyncssh is imported only when a connection is made.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ._exceptions import NotLoggedInError, ProfileError, SSHError, UsageError
from ._names import validate_cluster_name, validate_host, validate_login
from ._profile import Profile, join_host_port, split_host_port

__all__ = [
    "Target",
    "backoff_delays",
    "clean_target_host",
    "parse_target",
    "proxy_ssh",
    "subsystem_name",
]

#: Seconds to set up TCP to the proxy, and then to finish logging in.
CONNECT_TIMEOUT = 15.0
LOGIN_TIMEOUT = 20.0
#: Attempts in all (first try included) for drops before authentication.
MAX_ATTEMPTS = 8
#: Stdin bytes kept for a replay until the node sends its first byte.
REPLAY_LIMIT = 1 << 20
_CHUNK = 1 << 18
_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)
_WINDOW = 8 << 20
_MAX_PACKET = 1 << 17
#: Node output held back while waiting for its "SSH-" version line.
_BANNER_LIMIT = 8192


@dataclass(frozen=True)
class Target:
    """Where ssh wants to go: ``[login@]host:port``."""

    login: str | None
    host: str
    port: str


def parse_target(text: str) -> Target:
    """Parse ``[USER@]HOST:PORT`` (the ``%r@%h:%p`` of ssh_config).

    The port may be empty (``host:``), which the proxy reads as its default.

    Raises:
        UsageError: no ``:PORT`` part, or a bad login, host or port.
    """
    login: str | None = None
    if "@" in text:
        login, _, text = text.rpartition("@")
        validate_login(login)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            port = None
    if port is None or not host:
        raise UsageError(f"invalid target {text!r}: expected [USER@]HOST:PORT")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"invalid port {port!r} in {text!r}")
    return Target(login, validate_host(host, "node host"), port)


def clean_target_host(host: str, proxy_host: str, cluster: str) -> str:
    """Strip a trailing ``.<proxy_host>`` and then ``.<cluster>`` (as tsh does).

    That is what lets ``ssh node1.<cluster>`` reach the node named ``node1``.
    ssh lower-cases host names, so the suffixes match case-insensitively.
    """
    for suffix in (proxy_host, cluster):
        tail = "." + suffix
        if suffix and len(host) > len(tail) and host.lower().endswith(tail.lower()):
            host = host[: -len(tail)]
    return host


def subsystem_name(host: str, port: str, cluster: str) -> str:
    """``proxy:<host>:<port>[@<cluster>]``; IPv6 hosts get brackets."""
    addr = join_host_port(host, port)
    return f"proxy:{addr}@{cluster}" if cluster else f"proxy:{addr}"


def backoff_delays(
    attempts: int = MAX_ATTEMPTS,
    base: float = 0.05,
    cap: float = 2.0,
    rand: Callable[[], float] = random.random,
) -> list[float]:
    """Sleeps before each retry: "full jitter" exponential backoff.

    Delay *i* is uniform in [0, min(cap, base * 2**i)], so many clients that
    were dropped together do not come back together.
    """
    return [rand() * min(cap, base * 2**i) for i in range(attempts - 1)]


class _Retry(Exception):
    """Internal: the attempt was dropped before authentication or before the node spoke."""


# ---------------------------------------------------------------------------
# I/O: everything below talks to the network, the agent and stdio.


def proxy_ssh(
    target: str,
    *,
    cluster: str | None = None,
    proxy: str | None = None,
    stdin: int = 0,
    stdout: int = 1,
    stderr: IO[str] | None = None,
) -> int:
    """Run the ProxyCommand: pipe ``stdin``/``stdout`` to ``target`` via the proxy.

    Returns the exit status (0 after a normal end). The proxy's own error text
    (unknown node, ...) is raised as SSHError.

    Raises:
        NotLoggedInError: no profile for the proxy.
        SSHError: the proxy refused or the connection failed.
        UsageError: a bad target.
    """
    from ._store import ProfileStore

    store = ProfileStore()
    profile = store.select(proxy)
    tgt = parse_target(target)
    root = profile.root_cluster or profile.cluster
    cluster = validate_cluster_name(cluster) if cluster else root
    host = clean_target_host(tgt.host, profile.proxy_host, cluster)
    login = tgt.login or _local_login()
    job = _Job(
        profile=profile,
        store=store,
        login=login,
        subsystem=subsystem_name(host, tgt.port, cluster),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr or sys.stderr,
    )
    return asyncio.run(job.run())


def _local_login() -> str:
    import getpass

    return getpass.getuser()


class _Job:
    def __init__(self, *, profile: Profile, store: Any, login: str, subsystem: str,
                 stdin: int, stdout: int, stderr: IO[str]) -> None:
        self.profile = profile
        self.paths = store.paths_for(profile)
        self.login = login
        self.subsystem = subsystem
        self.stdin_fd = stdin
        self.stdout_fd = stdout
        self.stderr = stderr
        self.agent: Any = None
        self.private_agent: Any = None

    async def run(self) -> int:
        from ._asyncssh import asyncssh

        ssh_host, ssh_port = split_host_port(self.profile.ssh_proxy_addr, 3023)
        known_hosts = self._trusted_cas(asyncssh)
        delays = backoff_delays()
        io: _StdIO | None = None
        conn = None
        last: Exception | None = None
        try:
            # Inside the try: the agent client and a private agent are closed on any failure.
            client_keys = await self._client_keys(asyncssh)
            agent_sock = await self._agent_to_forward(client_keys)
            io = _StdIO(self.stdin_fd, self.stdout_fd)
            for attempt in range(MAX_ATTEMPTS):
                if attempt:
                    await asyncio.sleep(delays[attempt - 1])
                if conn is None:
                    try:
                        conn = await asyncssh.connect(
                            ssh_host,
                            ssh_port,
                            username=self.login,
                            known_hosts=known_hosts,
                            client_keys=client_keys,
                            agent_path=None,
                            agent_forwarding=agent_sock or False,
                            config=None,
                            preferred_auth="publickey",
                            connect_timeout=CONNECT_TIMEOUT,
                            login_timeout=LOGIN_TIMEOUT,
                            keepalive_interval=30,
                            compression_algs=None,
                            # AES-GCM runs in OpenSSL with AES-NI: the fastest
                            # cipher here for bulk data (ssh's own stream is
                            # already encrypted end to end inside it).
                            encryption_algs=_CIPHERS,
                            window=_WINDOW,
                            max_pktsize=_MAX_PACKET,
                            encoding=None,
                        )
                    except asyncssh.PermissionDenied:
                        raise SSHError(
                            f"the proxy {ssh_host}:{ssh_port} refused the certificate for "
                            f"login {self.login!r} (expired, or not one of your logins?)"
                        ) from None
                    except asyncssh.HostKeyNotVerifiable as e:
                        raise SSHError(
                            f"the proxy {ssh_host}:{ssh_port} is not trusted: {e.reason}"
                        ) from None
                    except (asyncssh.ConnectionLost, ConnectionResetError, BrokenPipeError,
                            asyncio.IncompleteReadError) as e:
                        last = e  # dropped before authentication: retry
                        continue
                    except asyncssh.DisconnectError as e:
                        raise SSHError(f"the proxy {ssh_host}:{ssh_port} refused: {e.reason}") from None
                    except (OSError, asyncio.TimeoutError) as e:
                        raise SSHError(
                            f"cannot connect to the proxy {ssh_host}:{ssh_port}: "
                            f"{e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__}"
                        ) from None
                try:
                    return await _pump(conn, self.subsystem, io, self.stderr)
                except _Retry as e:
                    # A fresh connection each time: a proxy may tear down the
                    # old one along with the dropped node channel.
                    last = e
                    conn.abort()
                    conn = None
            said = last.args[0] if isinstance(last, _Retry) and last.args else ""
            raise SSHError(
                f"{self.subsystem}: dropped {MAX_ATTEMPTS} times before the node answered"
                + (f": {said}" if said else f" ({last!r})" if last else "")
            )
        finally:
            if io is not None:
                io.close()
            if conn is not None:
                conn.close()
            if self.agent is not None:
                self.agent.close()
            if self.private_agent is not None:
                self.private_agent.close()

    async def _agent_to_forward(self, client_keys: list[Any]) -> str | None:
        """The agent a recording proxy logs in to the node with (teleport-wire.md 10.1 step 3).

        ``-k only`` keys live in the user's agent already. A key on disk that the
        user's agent lacks goes into a private agent, as real tsh forwards its
        own keyring (see _privagent).
        """
        env_sock = os.environ.get("SSH_AUTH_SOCK") or None
        if self.profile.key_storage == "agent":
            return env_sock
        from ._agent import agent_comment
        from ._privagent import agent_to_forward

        key, cert = client_keys[0]
        root = self.profile.root_cluster or self.profile.cluster
        comment = agent_comment(self.profile.proxy_host, root, self.profile.user)
        sock, self.private_agent = await agent_to_forward(
            env_sock, key, cert, comment, self.profile.valid_before
        )
        return sock

    def _trusted_cas(self, asyncssh: Any) -> Any:
        """([], host CAs for the proxy, revoked keys) from the profile's known_hosts."""
        from . import _fs

        try:
            text = _fs.read_text(self.paths.known_hosts)
        except FileNotFoundError:
            text = ""
        _, cas, revoked, *_ = asyncssh.import_known_hosts(text).match(
            self.profile.proxy_host, "", None
        )
        if not cas:
            raise NotLoggedInError(
                f"{self.paths.known_hosts} has no host CA for {self.profile.proxy_host}; "
                "run tsh login again"
            )
        return ([], list(cas), list(revoked))

    async def _client_keys(self, asyncssh: Any) -> list[Any]:
        root = self.profile.root_cluster or self.profile.cluster
        cert_path = self.paths.ssh_cert(root)
        if self.profile.key_storage != "agent":
            try:
                key = asyncssh.read_private_key(str(self.paths.private_key))
                cert = asyncssh.read_certificate(str(cert_path))
            except FileNotFoundError as e:
                raise NotLoggedInError(f"{e.filename} is missing; run tsh login") from None
            except (ValueError, asyncssh.KeyImportError) as e:
                raise ProfileError(f"cannot read the key or certificate: {e}") from None
            return [(key, cert)]
        # `-k only`: the key is in the agent, next to its certificate. The agent
        # client stays open: it signs during the login.
        try:
            wanted = asyncssh.read_public_key(str(self.paths.public_key)).public_data
        except (OSError, ValueError, asyncssh.KeyImportError):
            wanted = None
        prefix = f"teleport:{self.profile.proxy_host}:".encode()
        agent = None
        try:
            agent = await asyncssh.connect_agent()
            keys = await agent.get_keys()
        except (OSError, ValueError, asyncssh.Error) as e:
            if agent is not None:
                agent.close()
            raise NotLoggedInError(
                f"this profile keeps its key in ssh-agent, which failed: {e}"
            ) from None
        for k in keys:
            if not k.has_cert:
                continue
            if wanted is not None:
                ours = _cert_key(asyncssh, k) == wanted
            else:
                ours = (k.get_comment_bytes() or b"").startswith(prefix)
            if ours:
                self.agent = agent
                return [k]
        agent.close()
        raise NotLoggedInError("ssh-agent holds no certificate for this profile; run tsh login")


def _cert_key(asyncssh: Any, agent_key: Any) -> bytes | None:
    try:
        cert = asyncssh.public_key.decode_ssh_certificate(agent_key.public_data)
    except (ValueError, asyncssh.KeyImportError):
        return None
    return cert.key.public_data  # type: ignore[no-any-return]


class _StdIO:
    """Our stdin/stdout, non-blocking for asyncio; modes restored on close."""

    def __init__(self, stdin: int, stdout: int) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self._flags = {fd: fcntl.fcntl(fd, fcntl.F_GETFL) for fd in {stdin, stdout}}
        #: what ssh sent so far, kept for a replay until the node answers
        self.sent: list[bytes] = []
        self.sent_len = 0
        self.replayable = True
        self.stdin_eof = False

    def close(self) -> None:
        for fd, flags in self._flags.items():
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            except OSError:
                pass


def _pollable(fd: int) -> bool:
    # epoll refuses regular files and devices such as /dev/null; those never
    # block, so they are read and written directly instead.
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


async def _pump(conn: Any, subsystem: str, io: _StdIO, stderr: IO[str]) -> int:
    """One attempt: open ``subsystem`` and copy bytes until the node side ends."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    state: dict[str, Any] = {"got": 0, "err": [], "chan": None, "pre": b"",
                             "replayed": False}

    flushed: asyncio.Future[None] = loop.create_future()

    class Out(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            if not flushed.done():
                flushed.set_result(None)

        def pause_writing(self) -> None:
            if state["chan"] is not None:
                state["chan"].pause_reading()

        def resume_writing(self) -> None:
            if state["chan"] is not None:
                state["chan"].resume_reading()

    out_transport: Any = None
    if _pollable(io.stdout):
        out_transport, _ = await loop.connect_write_pipe(
            Out, os.fdopen(os.dup(io.stdout), "wb", buffering=0)
        )
    try:
        return await _session(conn, subsystem, io, stderr, state, done, out_transport)
    finally:
        if out_transport is not None:
            # A dup of stdout (the real one closes when we exit); close() only
            # starts flushing what ssh has not read yet, so wait for that.
            out_transport.close()
            try:
                await asyncio.wait_for(flushed, CONNECT_TIMEOUT)
            except asyncio.TimeoutError:
                out_transport.abort()


async def _session(conn: Any, subsystem: str, io: _StdIO, stderr: IO[str],
                   state: dict[str, Any], done: asyncio.Future[None], out_transport: Any) -> int:
    from ._asyncssh import asyncssh

    loop = asyncio.get_running_loop()

    def write_out(data: bytes) -> None:
        if out_transport is not None:
            out_transport.write(data)
        else:
            _write_all(io.stdout, data)

    in_transport: Any = None
    in_task: asyncio.Task[None] | None = None

    class Session(asyncssh.SSHClientSession):  # type: ignore[misc,type-arg]
        def connection_made(self, chan: Any) -> None:
            state["chan"] = chan
            # Deliver stderr that arrives before the subsystem reply, so that a
            # refused request still shows the proxy's reason.
            chan.resume_reading()

        def data_received(self, data: bytes, datatype: Any) -> None:
            if datatype == asyncssh.EXTENDED_DATA_STDERR:
                state["err"].append(data)
                return
            if io.replayable:
                # Until the node's "SSH-" version line, hold its output: sshd
                # over MaxStartups says "Exceeded MaxStartups" and hangs up,
                # and ssh must not see that if we retry.
                pre = state["pre"] = state["pre"] + data
                if not (_has_banner(pre) or len(pre) > _BANNER_LIMIT):
                    return
                io.replayable = False  # the node spoke: no retries from now on
                if state["replayed"]:
                    io.sent.clear()
                state["pre"], data = b"", pre
            state["got"] += len(data)
            write_out(data)

        def eof_received(self) -> bool:
            if not done.done():
                done.set_result(None)
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(None)

        def pause_writing(self) -> None:
            if in_transport is not None:
                in_transport.pause_reading()

        def resume_writing(self) -> None:
            if in_transport is not None:
                in_transport.resume_reading()

    try:
        chan, _ = await conn.create_session(Session, subsystem=subsystem, encoding=None)
    except (asyncssh.ChannelOpenError, asyncssh.ConnectionLost, asyncssh.DisconnectError,
            OSError) as e:
        # A refused subsystem comes with the proxy's reason on stderr (and the
        # channel may be torn down before the refusal itself arrives).
        text = b"".join(state["err"]).decode(errors="replace").strip()
        if text:
            raise SSHError(text) from None
        if isinstance(e, asyncssh.ChannelOpenError):
            raise SSHError(f"the proxy refused {subsystem}: {e.reason}") from None
        # Logged in, then dropped: not an overload drop, so no retry.
        raise SSHError(f"the proxy closed the connection when asked for {subsystem}") from None

    def send(data: bytes | None) -> None:
        # The channel may already be closed by the other side; `done` then
        # tells, and the end of this attempt decides about a retry.
        try:
            if data is None:
                chan.write_eof()
            else:
                chan.write(data)
        except (BrokenPipeError, OSError):
            pass

    # Replay what the previous attempt already took from ssh, then go live.
    # (The node may have spoken already: asyncssh delivers data that came
    # with the subsystem reply before create_session returns.)
    for data in io.sent:
        send(data)
    if io.stdin_eof:
        send(None)
    state["replayed"] = True
    if not io.replayable:
        io.sent.clear()

    def from_stdin(data: bytes) -> None:
        if io.replayable:
            io.sent.append(data)
            io.sent_len += len(data)
            if io.sent_len > REPLAY_LIMIT:
                io.replayable = False
                io.sent.clear()
        send(data)

    def stdin_eof() -> None:
        io.stdin_eof = True
        send(None)

    if not io.stdin_eof:
        if _pollable(io.stdin):

            class In(asyncio.Protocol):
                def data_received(self, data: bytes) -> None:
                    from_stdin(data)

                def eof_received(self) -> bool:
                    stdin_eof()
                    return False

            in_transport, _ = await loop.connect_read_pipe(
                In, os.fdopen(os.dup(io.stdin), "rb", buffering=0)
            )
        else:  # a regular file or device: reads never block
            async def read_file() -> None:
                while data := os.read(io.stdin, _CHUNK):
                    from_stdin(data)
                    await asyncio.sleep(0)
                stdin_eof()

            in_task = asyncio.ensure_future(read_file())

    try:
        await done
    finally:
        # The node side ended: stop reading ssh's stdin now, even though ssh
        # keeps it open (it waits for us to close stdout).
        if in_transport is not None:
            in_transport.close()
        if in_task is not None:
            in_task.cancel()
    err = b"".join(state["err"]).decode(errors="replace")
    if io.replayable and _is_drop(err):
        chan.close()
        said = state["pre"].decode(errors="replace").strip()
        raise _Retry(said)
    if state["pre"]:
        write_out(state["pre"])
    if err:
        stderr.write(err)
        stderr.flush()
    chan.close()
    status = chan.get_exit_status()
    if status is None or status < 0:
        return 0 if state["got"] else 1
    return int(status)


def _has_banner(data: bytes) -> bool:
    return data.startswith(b"SSH-") or b"\nSSH-" in data


def _is_drop(err: str) -> bool:
    # No text at all is the MaxStartups case (the node closed without a
    # banner); a recording proxy reports the same as a failed handshake.
    return not err.strip() or "handshake failed" in err


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
