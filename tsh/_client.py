"""``tsh.Client`` and ``tsh.AsyncClient``: tsh as a Python library.

Both have the same methods. A client owns its profile store (the tsh home),
the web transport (an httpx transport, for tests), the environment it reads
(``SSH_AUTH_SOCK``) and its clock. Nothing is prompted: :meth:`login` takes an
authenticator (a password, an OTP callback, or any object with
``password(user)`` and ``otp()``). Defaults come from the current profile.

``AsyncClient`` keeps one authenticated connection to the proxy (opened on
first use) and opens each node connection as a new ``proxy:`` subsystem
channel on it, so many nodes cost one proxy login (tsh._connect). ``Client``
runs the same code on an event loop of its own in a private thread, so it also
works where the calling thread already runs a loop; it never calls
``asyncio.run`` on the caller's thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._auth.authenticators import PasswordAuthenticator
from ._auth.sso import SSO_CALLBACK_TIMEOUT, SSOAuthenticator
from ._exceptions import UsageError

if TYPE_CHECKING:
    import httpx

    from ._asyncssh import asyncssh
    from ._auth.authenticators import Authenticator, Prompter
    from ._auth.login import LoginResult
    from ._auth.logout import LogoutResult
    from ._connect import NodeConnect, ProxyConnection, RunResult
    from ._core.listing import ClusterInfo, NodeInfo
    from ._core.profile import Profile
    from ._store.store import ProfileStore
    from ._types import AgentMode, ProxyCommandForm

__all__ = ["AsyncClient", "Client", "Password", "SSO"]

T = TypeVar("T")


class Password(PasswordAuthenticator):
    """An authenticator for password (and OTP) logins that never prompts.

    ``password`` is the password, or a callable given the user name; ``otp``
    is a callable returning a fresh one-time code, asked only when the proxy
    requires a second factor.
    """

    def __init__(self, password: str | Callable[[str], str], otp: Callable[[], str] | None = None) -> None:
        def ask_password(user: str) -> str:
            return password(user) if callable(password) else password

        def ask_otp() -> str:
            if otp is None:
                raise UsageError("the proxy requires a one-time code, and no otp callback was given")
            return otp()

        super().__init__(ask_password, ask_otp)


class SSO(SSOAuthenticator):
    """An authenticator for single sign-on (OIDC, SAML, GitHub) that opens no browser.

    ``open_url`` is called with the URL the user must open (show it, or open it
    in a browser of your choosing); :meth:`Client.login` then waits, up to
    ``timeout`` seconds, for the browser to come back to a callback server on
    ``bind_addr`` (default ``127.0.0.1`` on a free port). Pick the connector
    with ``login(..., auth="NAME")``; by default the cluster's is used.
    """

    def __init__(
        self,
        open_url: Callable[[str], None],
        *,
        bind_addr: str | None = None,
        timeout: float = SSO_CALLBACK_TIMEOUT,
    ) -> None:
        super().__init__(open_url, bind_addr=bind_addr, timeout=timeout)


class AsyncClient:
    """An async tsh client: log in, inspect profiles, render OpenSSH config, reach nodes.

    Use it as ``async with tsh.AsyncClient() as client:``; :meth:`aclose` ends
    its proxy connection.

    Args:
        home: the tsh home (default ``$TELEPORT_HOME``, else the platform's data directory).
        proxy: the profile to use (``HOST[:PORT]``); default the current one.
        transport: an httpx transport for the web API (tests: ``httpx.MockTransport``).
        environ: the environment to read ``SSH_AUTH_SOCK`` from (default ``os.environ``).
        clock: seconds since the epoch (default ``time.time``).
        max_handshakes: node handshakes under way at once. sshd's default
            ``MaxStartups 10:30:100`` starts dropping unauthenticated
            connections past 10, so more would fail rather than go faster.
    """

    def __init__(
        self,
        *,
        home: str | os.PathLike[str] | None = None,
        proxy: str | None = None,
        transport: httpx.BaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        max_handshakes: int = 10,
    ) -> None:
        from ._store.store import ProfileStore

        self.store: ProfileStore = ProfileStore(home)
        self.proxy = proxy
        self._transport = transport
        self._environ = environ
        self._clock = clock
        self._proxy_conn: ProxyConnection | None = None
        self._opening: asyncio.Lock | None = None
        self._max_handshakes = max_handshakes
        self._handshakes: asyncio.Semaphore | None = None

    # -- profiles -------------------------------------------------------------

    def profiles(self) -> list[Profile]:
        """Every readable profile, the current one first."""
        return self.store.list()

    def status(self) -> Profile | None:
        """The profile this client uses (its ``proxy``, else the current one), or None."""
        from ._exceptions import NotLoggedInError

        try:
            return self.store.select(self.proxy)
        except NotLoggedInError:
            return None

    def profile(self) -> Profile:
        """The profile this client uses.

        Raises:
            NotLoggedInError: there is none.
        """
        return self.store.select(self.proxy)

    # -- login and logout -----------------------------------------------------

    async def login(
        self,
        proxy: str | None = None,
        *,
        authenticator: Authenticator | Prompter,
        user: str | None = None,
        ttl_minutes: int | None = None,
        cluster: str | None = None,
        insecure: bool = False,
        agent_mode: AgentMode = "auto",
        auth: str | None = None,
    ) -> LoginResult:
        """Log in to ``proxy`` (default: this client's) and store the profile.

        ``authenticator`` answers the proxy's challenge, e.g.
        ``tsh.Password("secret", otp=lambda: totp.now())``, or
        ``tsh.SSO(open_url=print)`` for single sign-on. ``auth`` names the auth
        connector (as `tsh login --auth`). The web API calls run in a worker
        thread, so the event loop is never blocked.

        Raises:
            UsageError, ProxyError, CertificateError, ProfileError, AgentError:
                see :func:`tsh.login`; nothing is changed on failure.
        """
        from ._auth.login import LoginRequest, login

        target = proxy or self.proxy
        if not target:
            raise UsageError("no proxy to log in to")
        request = LoginRequest(
            proxy=target, user=user, ttl_minutes=ttl_minutes, cluster=cluster,
            insecure=insecure, agent_mode=agent_mode, auth=auth,
        )  # fmt: skip
        await self._drop_proxy_connection()  # a new certificate: never ride on the old one

        def run() -> LoginResult:
            return login(request, authenticator, store=self.store, transport=self._transport,
                         environ=self._environ, clock=self._clock)

        result = await asyncio.to_thread(run)
        if proxy:
            self.proxy = proxy
        return result

    async def logout(self, proxy: str | None = None, user: str | None = None) -> LogoutResult:
        """Log out one user of one proxy (both given), or everyone (neither given)."""
        from ._auth.logout import logout_all, logout_user
        from ._core.names import validate_user_name
        from ._store.store import parse_proxy_arg

        await self._drop_proxy_connection()
        if proxy and user:
            host, _ = parse_proxy_arg(proxy)
            name = validate_user_name(user)
            return await asyncio.to_thread(logout_user, self.store, host, name, self._environ)
        if proxy or user:
            raise UsageError("give both a proxy and a user, or neither (everyone)")
        return await asyncio.to_thread(logout_all, self.store, self._environ)

    # -- OpenSSH ----------------------------------------------------------------

    def ssh_config(
        self,
        *,
        port: int | None = None,
        login: str | None = None,
        proxy_command: ProxyCommandForm = "tsh",
    ) -> str:
        """The OpenSSH client configuration `tsh config` prints for this client's profile."""
        from ._openssh.config_file import openssh_version, ssh_config

        return ssh_config(self.profile(), self.store, port=port, login=login,
                          proxy_command=proxy_command, ssh_version=openssh_version())

    def ssh_argv(
        self,
        destination: str,
        command: Sequence[str] = (),
        *,
        login: str | None = None,
        port: int | None = None,
        cluster: str | None = None,
        forward_agent: bool = False,
        options: Sequence[str] = (),
    ) -> list[str]:
        """OpenSSH's ``ssh`` command line reaching ``destination`` through the proxy.

        Run it with :func:`subprocess.run` or :func:`os.execv`; it is what `tsh ssh`
        execs. Its ProxyCommand may be `tsh proxy ssh`, which finds the profile
        through ``TELEPORT_HOME``: set that to :attr:`store` ``.home`` when this
        client's home is not the default.

        Raises:
            UsageError: a bad destination or option, or no OpenSSH client.
            NotLoggedInError: no profile, or its certificate has expired.
        """
        from ._openssh.argv import SSHRequest
        from ._openssh.binary import plan_ssh

        request = SSHRequest(port=port, login=login, cluster=cluster,
                             forward_agent=forward_agent, options=tuple(options))
        return plan_ssh(self.store, self.proxy, request, destination, command)

    # -- nodes through the proxy ---------------------------------------------

    async def _proxy_connection(self) -> ProxyConnection:
        from ._connect import ProxyConnection

        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            pc = self._proxy_conn
            if pc is not None and pc.profile.valid_before <= self._clock():
                await self._drop_proxy_connection()  # never ride on an expired certificate
                pc = None
            if pc is None:
                env = os.environ if self._environ is None else self._environ
                pc = await ProxyConnection.open(
                    self.profile(), self.store, agent_path=env.get("SSH_AUTH_SOCK") or None
                )
                self._proxy_conn = pc
            return pc

    async def _drop_proxy_connection(self) -> None:
        pc, self._proxy_conn = self._proxy_conn, None
        if pc is not None:
            await pc.close()

    def connect(
        self, host: str, *, login: str, port: int | None = None, cluster: str | None = None
    ) -> NodeConnect:
        """An asyncssh connection to node ``host`` through the proxy, in-process.

        ``async with client.connect("node1", login="root") as conn:`` then
        ``await conn.run("uptime")``: ``conn`` is asyncssh's own
        SSHClientConnection. Every node connection of this client shares its one
        proxy connection. The node's host certificate is checked against the
        profile's CAs; the agent is forwarded to the proxy (recording proxies).

        Raises:
            UsageError, NotLoggedInError, SSHError: see tsh._connect.
        """
        from ._connect import NodeConnect

        async def opening() -> asyncssh.SSHClientConnection:
            pc = await self._proxy_connection()
            if self._handshakes is None:
                self._handshakes = asyncio.Semaphore(self._max_handshakes)
            async with self._handshakes:
                return await pc.connect(host, login=login, port=port, cluster=cluster)

        return NodeConnect(opening())

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
        """Run ``command`` on ``host``: ``(exit_status, stdout, stderr)``.

        Raises:
            UsageError, NotLoggedInError, SSHError: see :meth:`connect`.
        """
        from ._connect import run_command

        async with self.connect(host, login=login, port=port, cluster=cluster) as conn:
            return await run_command(conn, host, command, input)

    # -- the auth API -----------------------------------------------------------

    async def clusters(self) -> list[ClusterInfo]:
        """The root cluster and the leaves its auth API lists (what `tsh clusters` shows).

        Raises:
            NotLoggedInError, SSHError: the proxy connection;
            AuthAPIError: the auth API refused or could not be reached.
        """
        from ._authapi.session import cluster_rows

        return await cluster_rows(await self._proxy_connection(), self.store)

    async def nodes(
        self,
        labels: Mapping[str, str] | None = None,
        search: Sequence[str] = (),
        *,
        cluster: str | None = None,
    ) -> list[NodeInfo]:
        """The nodes of ``cluster`` (default the profile's) you may see, as `tsh ls` lists them.

        Only nodes with every label in ``labels`` and every word of ``search``.

        Raises:
            as :meth:`clusters`.
        """
        from ._authapi.client import AuthClient
        from ._core.listing import NodeInfo

        pc = await self._proxy_connection()
        async with AuthClient.for_profile(pc, self.store.paths_for(pc.profile), cluster) as client:
            found = await client.list_nodes(dict(labels or {}), list(search))
        return sorted((NodeInfo(*n) for n in found), key=lambda n: (n.hostname, n.id))

    async def aclose(self) -> None:
        """Close the proxy connection (and every node connection on it)."""
        await self._drop_proxy_connection()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _LoopThread:
    """An event loop running in a daemon thread of its own (for the sync Client)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tsh-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("tsh.Client called from its own event loop; use tsh.AsyncClient")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Client:
    """A blocking tsh client with the methods of :class:`AsyncClient`.

    ``tsh.Client().run("node1", "uptime", login="root")``. Use it as a context
    manager (or call :meth:`close`) to end its proxy connection. Arguments are
    those of :class:`AsyncClient`.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._async = AsyncClient(**kwargs)
        self._loop: _LoopThread | None = None

    @property
    def store(self) -> ProfileStore:
        """The profile store (the tsh home) this client uses."""
        return self._async.store

    def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        if self._loop is None:
            self._loop = _LoopThread()

        async def call() -> T:
            return await make()

        return self._loop.run(call())

    def profiles(self) -> list[Profile]:
        """Every readable profile, the current one first."""
        return self._async.profiles()

    def status(self) -> Profile | None:
        """The profile this client uses, or None."""
        return self._async.status()

    def profile(self) -> Profile:
        """The profile this client uses (NotLoggedInError if none)."""
        return self._async.profile()

    def login(
        self, proxy: str | None = None, *, authenticator: Authenticator | Prompter, **kwargs: Any
    ) -> LoginResult:
        """Log in and store the profile; see :meth:`AsyncClient.login`."""
        return self._run(lambda: self._async.login(proxy, authenticator=authenticator, **kwargs))

    def logout(self, proxy: str | None = None, user: str | None = None) -> LogoutResult:
        """Log out; see :meth:`AsyncClient.logout`."""
        return self._run(lambda: self._async.logout(proxy, user))

    def ssh_config(self, **kwargs: Any) -> str:
        """The OpenSSH client configuration; see :meth:`AsyncClient.ssh_config`."""
        return self._async.ssh_config(**kwargs)

    def ssh_argv(self, destination: str, command: Sequence[str] = (), **kwargs: Any) -> list[str]:
        """OpenSSH's ``ssh`` command line; see :meth:`AsyncClient.ssh_argv`."""
        return self._async.ssh_argv(destination, command, **kwargs)

    def run(self, host: str, command: str, *, login: str, **kwargs: Any) -> RunResult:
        """Run ``command`` on ``host`` through the proxy: ``(exit_status, stdout, stderr)``."""
        return self._run(lambda: self._async.run(host, command, login=login, **kwargs))

    def clusters(self) -> list[ClusterInfo]:
        """The root cluster and its leaves; see :meth:`AsyncClient.clusters`."""
        return self._run(lambda: self._async.clusters())

    def nodes(
        self,
        labels: Mapping[str, str] | None = None,
        search: Sequence[str] = (),
        *,
        cluster: str | None = None,
    ) -> list[NodeInfo]:
        """The nodes you may see; see :meth:`AsyncClient.nodes`."""
        return self._run(lambda: self._async.nodes(labels, search, cluster=cluster))

    def close(self) -> None:
        """Close the proxy connection and the client's event loop."""
        if self._loop is not None:
            self._loop.run(self._async.aclose())
            self._loop.stop()
            self._loop = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
