"""`tsh login`: ping, keys, authentication, checks, storage, agent.

The order matters and is the point of this module:

1. ping the proxy over verified TLS, so that a wrong address, an untrusted
   certificate or something that is not a Teleport proxy fails before any
   password is asked;
2. generate fresh keys;
3. let the Authenticator (tsh._auth.authenticators: password and OTP, for
   now) prove the user and get certificates for the keys' public halves;
4. check the certificates (for our keys, principals, validity);
5. save every file through the ProfileStore, all or nothing, and load the
   agent. Any failure before the files replace the old ones leaves the
   existing profile, keys, keyring and agent as they were.
"""

from __future__ import annotations

import getpass
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._core.addr import join_host_port
from .._core.names import validate_cluster_name, validate_user_name
from .._core.profile import Profile
from .._exceptions import (
    AgentError,
    InvalidNameError,
    ProxyConnectionError,
    ProxyResponseError,
    TshWarning,
    UsageError,
)
from .._web.wire import SSO_TYPES
from .authenticators import Authenticator, PasswordAuthenticator, Prompter, PublicKeys

if TYPE_CHECKING:
    import httpx

    from .._store.store import ProfileStore
    from .._types import AgentMode
    from .._web.client import WebClient
    from .._web.wire import LoginResponse, PingResponse

__all__ = ["LoginRequest", "LoginResult", "Prompter", "login"]  # Prompter: for old callers

#: What ``--auth`` may name: a connector (or ``local``), as it goes into a URL path.
_CONNECTOR_ARG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}", re.ASCII)
#: Used when neither --ttl nor the proxy's default_session_ttl says otherwise.
DEFAULT_TTL = 12 * 3600
#: The longest ttl in minutes: Go's longest time.Duration (int64 nanoseconds),
#: about 292 years. The auth server caps any ttl it can decode at the role's
#: max_session_ttl (30h by default) without complaint, but cannot decode more
#: than this: it answers with a raw JSON unmarshalling error. (Real tsh reads
#: --ttl as an int32 of minutes and lets larger values wrap around.)
MAX_TTL_MINUTES = (2**63 - 1) // (60 * 1_000_000_000)
GPG_WARNING = TshWarning(
    "agent-unsupported",
    "Certificate was not loaded into agent because the agent at SSH_AUTH_SOCK does not appear "
    "to support SSH certificates.",
)


@dataclass(frozen=True)
class LoginRequest:
    """What the user asked for (already parsed, not yet validated against the proxy)."""

    proxy: str
    user: str | None = None
    ttl_minutes: int | None = None
    cluster: str | None = None
    insecure: bool = False
    #: A resolved mode: auto, no, yes or only (see _agent.resolve_agent_mode).
    agent_mode: AgentMode = "auto"
    #: ``--auth``: the auth connector to use (ping ``/webapi/ping/<auth>``); None: the cluster's.
    auth: str | None = None


@dataclass
class LoginResult:
    """The stored profile and the warnings the CLI should print."""

    profile: Profile
    warnings: list[TshWarning] = field(default_factory=list)


def _ping(
    host: str,
    port: int | None,
    insecure: bool,
    transport: httpx.BaseTransport | None,
    connector: str | None = None,
) -> tuple[WebClient, PingResponse]:
    """Ping the proxy; without an explicit port try 443, then 3080 (as real tsh does)."""
    from .._core.addr import DEFAULT_WEB_PORT, FALLBACK_WEB_PORT
    from .._web.client import WebClient

    if port:
        client = WebClient(join_host_port(host, port), insecure=insecure, transport=transport)
        try:
            return client, client.ping(connector)
        except BaseException:
            client.close()
            raise
    try:
        return _ping(host, DEFAULT_WEB_PORT, insecure, transport, connector)
    except ProxyConnectionError:
        pass  # only "nothing answers": a TLS or protocol error on 443 is final
    try:
        return _ping(host, FALLBACK_WEB_PORT, insecure, transport, connector)
    except ProxyConnectionError as e:
        raise ProxyConnectionError(
            f"{e} (and on port {DEFAULT_WEB_PORT}; give the port as HOST:PORT)"
        ) from None


@dataclass(frozen=True)
class _Keys:
    # Private keys stay out of repr(), so no traceback or log can show them.
    ssh_private: str = field(repr=False)
    ssh_public: str
    #: v17+: the separate TLS key; None when the SSH key doubles as the TLS key.
    tls_private: str | None = field(repr=False)
    tls_public: str


def _new_keys(server_version: str) -> _Keys:
    """Fresh keys: Ed25519 + ECDSA P-256 for v17+, one RSA-2048 key for older servers."""
    from .._asyncssh import asyncssh
    from .._web.wire import server_major

    if server_major(server_version) >= 17:
        ssh = asyncssh.generate_private_key("ssh-ed25519")
        tls = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
        return _Keys(
            ssh_private=ssh.export_private_key().decode(),
            ssh_public=ssh.export_public_key().decode(),
            tls_private=tls.export_private_key("pkcs8-pem").decode(),
            tls_public=tls.export_public_key("pkcs8-pem").decode(),
        )
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    return _Keys(
        ssh_private=rsa.export_private_key("pkcs1-pem").decode(),
        ssh_public=rsa.export_public_key().decode(),
        tls_private=None,
        tls_public=rsa.export_public_key("pkcs8-pem").decode(),
    )


def login(
    request: LoginRequest,
    authenticator: Authenticator | Prompter,
    *,
    store: ProfileStore | None = None,
    transport: httpx.BaseTransport | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
    trust_leaves: bool | None = None,
) -> LoginResult:
    """Log in to ``request.proxy`` and store the profile; see the module docstring.

    ``authenticator`` proves the user (e.g. a PasswordAuthenticator); a
    Prompter (``password(user)`` and ``otp()``) means the password method.

    ``trust_leaves``: after saving, ask the root's auth API for every
    cluster's host CA (leaves included) and trust them, as real tsh does; a
    failure there is a warning, the login stands. Default: on, unless a web
    ``transport`` is given (a test double: the auth API goes over SSH). Never
    for ``-k only``: its TLS key is kept nowhere, and the auth API's mutual
    TLS needs it (such a profile covers the root cluster only).

    Raises:
        UsageError, ProxyError (and subclasses), CertificateError, ProfileError:
            with nothing on disk, in the keyring or in the agent changed.
        AgentError: only for ``-k only`` when neither agent nor keyring took the key.
    """
    from .._core.certs import check_tls_cert, check_user_cert
    from .._store.store import ProfileStore, parse_proxy_arg

    environ = os.environ if environ is None else environ
    store = store or ProfileStore()
    host, port = parse_proxy_arg(request.proxy)
    user = validate_user_name(request.user or getpass.getuser())
    if request.cluster:
        validate_cluster_name(request.cluster)
    if request.auth is not None and not _CONNECTOR_ARG.fullmatch(request.auth):
        raise UsageError(f"invalid --auth {request.auth[:64]!r}: expected an auth connector name")
    if request.ttl_minutes is not None:
        if request.ttl_minutes <= 0:
            raise UsageError("ttl must be a positive number of minutes")
        if request.ttl_minutes > MAX_TTL_MINUTES:
            raise UsageError(
                f"ttl must be at most {MAX_TTL_MINUTES} minutes (about 292 years, the longest "
                "the cluster can read; it caps certificates at its max_session_ttl anyway)"
            )

    if not hasattr(authenticator, "authenticate"):
        authenticator = PasswordAuthenticator.from_prompter(authenticator)
    client, ping = _ping(host, port, request.insecure, transport, request.auth)
    warnings: list[TshWarning] = []
    sso = ping.auth_type in SSO_TYPES
    if sso and request.user:
        warnings.append(
            TshWarning(
                "sso-user-ignored",
                f"Ignoring Teleport user ({user}) for Single Sign-On (SSO) login.",
            )
        )
    with client:
        keys = _new_keys(ping.server_version)
        if request.ttl_minutes is not None:
            ttl = request.ttl_minutes * 60.0
        else:
            ttl = ping.default_session_ttl or DEFAULT_TTL
        response = authenticator.authenticate(
            ping,
            user,
            client,
            PublicKeys(keys.ssh_public, None if keys.tls_private is None else keys.tls_public),
            ttl,
            request.cluster or "",
        )

    if sso:  # the identity provider says who the user is
        try:
            user = validate_user_name(response.username)
        except InvalidNameError as e:
            raise ProxyResponseError(f"malformed response from the proxy: username: {e}") from None
    now = clock()
    facts = check_user_cert(response.cert, keys.ssh_public, now)
    issuer = check_tls_cert(response.tls_cert, keys.tls_public, now)
    clusters = [s.domain_name for s in response.host_signers]  # validated by parse_login_response
    root = issuer or clusters[0]
    clusters = [root, *[c for c in dict.fromkeys(clusters) if c != root]]
    cluster = request.cluster or root

    profile = Profile(
        web_proxy_addr=ping.web_proxy_addr,
        tls_routing_enabled=ping.tls_routing_enabled,
        tls_routing_conn_upgrade_required=ping.tls_routing_enabled
        and _conn_upgrade_required(ping.web_proxy_addr, request.insecure, environ),
        ssh_proxy_addr=ping.ssh_proxy_addr,
        user=user,
        cluster=cluster,
        root_cluster=root,
        clusters=tuple(clusters),
        valid_after=facts.valid_after,
        valid_before=facts.valid_before,
        principals=facts.principals,
        extensions=facts.extensions,
        roles=facts.roles,
        key_storage="agent" if request.agent_mode == "only" else "disk",
        server_version=ping.server_version,
        private_key_policy=ping.private_key_policy,
    )
    _save(store, profile, keys, response, request.agent_mode, environ, warnings, now)
    if trust_leaves if trust_leaves is not None else transport is None:
        if profile.key_storage != "agent":  # -k only keeps no TLS key to call the auth API with
            profile = _trust_leaves(store, profile, warnings)
    return LoginResult(profile, warnings)


def _trust_leaves(store: ProfileStore, profile: Profile, warnings: list[TshWarning]) -> Profile:
    """The login's last step: every cluster's host CA from the root's auth API (a warning if not)."""
    from .._authapi.session import call_auth, trust_cluster_cas
    from .._exceptions import TshError

    try:
        return call_auth(store, profile, lambda c: trust_cluster_cas(c, store, profile),
                         cluster=profile.root_cluster)
    except TshError as e:
        warnings.append(TshWarning(
            "leaf-cas-unavailable",
            f"the host CAs of leaf clusters were not fetched ({e}); `tsh config` and "
            "known_hosts cover the root cluster only until the next login",
        ))  # fmt: skip
        return profile


def _conn_upgrade_required(web_proxy_addr: str, insecure: bool, environ: Mapping[str, str]) -> bool:
    """Is an L7 load balancer in front of the proxy? The override, else real tsh's probe.

    Asked only under TLS routing, the one case where the answer is used.
    """
    from .._proxy.dial import UPGRADE_ENV, conn_upgrade_override
    from .._proxy.tunnel import conn_upgrade_required

    override = conn_upgrade_override(environ.get(UPGRADE_ENV, ""), web_proxy_addr)
    if override is not None:
        return override
    return conn_upgrade_required(web_proxy_addr, insecure)


def _save(
    store: ProfileStore,
    profile: Profile,
    keys: _Keys,
    response: LoginResponse,
    mode: AgentMode,
    environ: Mapping[str, str],
    warnings: list[TshWarning],
    now: float,
) -> None:
    """Save the files (for ``only``, place the key just before they commit), then load the agent."""
    from .._agent import agent as _agent
    from .._store.store import LoginFiles

    keep_private = mode != "only"
    files = LoginFiles(
        private_key=keys.ssh_private if keep_private else None,
        public_key=keys.ssh_public,
        ssh_cert=response.cert,
        tls_cert=response.tls_cert,
        tls_key=keys.tls_private if keep_private else None,
        single_key=keys.tls_private is None,
        host_signers=response.host_signers,
    )
    comment = _agent.agent_comment(profile.proxy_host, profile.cluster, profile.user)
    sock = environ.get("SSH_AUTH_SOCK", "")
    added: list[frozenset[bytes]] = []

    def place_key() -> Callable[[], None]:
        in_agent, undo = _place_agent_only_key(profile, keys, response, comment, sock, warnings)
        if in_agent:
            added.append(in_agent)
        return undo

    paths = store.paths_for(profile)
    old_tag = paths.reuse_tag.read_text() if paths.reuse_tag.is_file() else None
    store.save_login(profile, files, before_commit=None if keep_private else place_key)
    if old_tag is not None and paths.reuse_tag.is_file() and paths.reuse_tag.read_text() != old_tag:
        # The old certificate's masters take no new sessions (hop reuse, docs/protocol.md §19).
        from .._openssh.reuse import close_masters

        close_masters(str(paths.mux_dir), old_tag)
    if added:
        # Committed: now the keys of the login this one replaces can go.
        try:
            _agent.remove_from_agent(sock, lambda c: c == comment, keep=added[0])
        except AgentError as e:
            warnings.append(
                TshWarning("agent-failed", f"{e}; the previous key stays until it expires")
            )
    load_key(mode, sock, keys.ssh_private, response.cert, comment, profile.valid_before, now, warnings)


def load_key(
    mode: AgentMode, sock: str, private_key_pem: str, cert: str, comment: str, valid_before: int,
    now: float, warnings: list[TshWarning],
) -> None:  # fmt: skip
    """Load a key kept on disk and its certificate into the agent at ``sock`` if
    ``mode`` is ``auto`` or ``yes``; what went wrong becomes a warning, never an error."""
    from .._agent import agent as _agent

    if mode not in ("auto", "yes") or (mode == "auto" and not sock):
        return
    if not sock:
        warnings.append(
            TshWarning(
                "no-agent",
                "no ssh-agent is running (SSH_AUTH_SOCK is not set); "
                "the certificate was not loaded into an agent",
            )
        )
        return
    if mode == "auto" and _agent.suspect_agent(sock):
        warnings.append(GPG_WARNING)
        return
    try:
        _agent.load_into_agent(sock, private_key_pem, cert, comment, valid_before, now)
    except AgentError as e:
        warnings.append(TshWarning("agent-failed", f"{e}; the keys stay on disk"))


def _place_agent_only_key(
    profile: Profile,
    keys: _Keys,
    response: LoginResponse,
    comment: str,
    sock: str,
    warnings: list[TshWarning],
) -> tuple[frozenset[bytes], Callable[[], None]]:
    """``-k only``: the key goes to the keyring and the agent; one of them must take it.

    Returns what the agent took (empty if nothing) and a function that puts
    agent and keyring back as they were, for when the files fail to commit.
    Our older agent keys stay until the caller removes them after the commit.
    """
    from .._agent import agent as _agent
    from .._store import secrets as _secrets

    account = (profile.proxy_host, profile.user, profile.cluster)
    previous = _secrets.load_key(*account)
    problem = _secrets.store_key(*account, keys.ssh_private)
    agent_problem: str | None = None
    agent_code = "agent-failed"
    in_agent: frozenset[bytes] = frozenset()
    if not sock:
        agent_problem = "no ssh-agent is running (SSH_AUTH_SOCK is not set)"
        agent_code = "no-agent"
    else:
        try:
            in_agent = _agent.load_into_agent(
                sock, keys.ssh_private, response.cert, comment, profile.valid_before, replace=False
            )
        except AgentError as e:
            agent_problem = str(e)
    if problem and agent_problem:
        raise AgentError(
            f"the key is kept off disk, but {agent_problem}, and {problem}; nothing was saved"
        )

    def undo() -> None:
        if in_agent:
            try:
                _agent.drop_from_agent(sock, in_agent)
            except AgentError:
                pass  # the agent drops it when its certificate expires
        if problem is None:
            if previous is None:
                _secrets.delete_key(*account)
            else:
                _secrets.store_key(*account, previous)

    if problem:
        warnings.append(
            TshWarning(
                "no-keyring",
                f"{problem}; the key is kept in the ssh-agent only and will be lost "
                "when the agent stops",
            )
        )
    if agent_problem:
        warnings.append(
            TshWarning(
                agent_code,
                f"{agent_problem}; the key is in the OS keyring and `tsh status` "
                "will load it into the next agent",
            )
        )
    return in_agent, undo
