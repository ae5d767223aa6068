"""The proxy's web API: ``/webapi/ping`` and ``/v1/webapi/ssh/certs`` over httpx.

Wire format: docs/protocol.md §2, §3 and §4. ``[]byte`` fields travel as
base64, durations in requests are integer nanoseconds, ``default_session_ttl``
in ping is a Go duration string, errors are ``{"error": {"message": ...}}`` and
bad credentials come back as HTTP 403.

The parsing helpers are pure (they take decoded JSON and return dataclasses or
raise ProxyResponseError), so unit tests exercise them without sockets; the
:class:`WebClient` accepts an httpx transport so tests can use
``httpx.MockTransport``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from ._exceptions import (
    AccessDeniedError,
    InvalidNameError,
    ProxyConnectionError,
    ProxyResponseError,
    ProxyTLSError,
)
from ._knownhosts import CAKey, parse_ca_key
from ._names import (
    ClusterName,
    HostName,
    validate_cluster_name,
    validate_host,
)
from ._profile import join_host_port, split_host_port

__all__ = [
    "DEFAULT_WEB_PORT",
    "FALLBACK_WEB_PORT",
    "HostSigner",
    "LoginResponse",
    "PingResponse",
    "WebClient",
    "parse_go_duration",
    "parse_login_response",
    "parse_ping",
    "server_major",
]

#: Port tried first when --proxy has none (Teleport Cloud and TLS-routing proxies).
DEFAULT_WEB_PORT = 443
#: Port tried next: a self-hosted proxy's default web listener.
FALLBACK_WEB_PORT = 3080
SSH_PROXY_PORT = 3023
#: A ping or login answer is a few KiB; anything near this is not a Teleport proxy.
MAX_BODY = 1 << 20
#: Seconds one web API call may take in all, connect to last body byte. httpx's
#: timeouts are per network operation, so a proxy that trickles a byte at a
#: time would otherwise hold `tsh login` forever.
DEFAULT_DEADLINE = 30.0
#: Go's longest ``time.Duration`` (int64 nanoseconds), in nanoseconds.
MAX_GO_DURATION_NS = 2**63 - 1

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.Duration`` string such as ``"12h0m0s"`` or ``"1.5h"``.

    Raises ValueError for anything else (including ``"never"``, which has no
    length), and, as Go does, for more than Go's longest duration (about 292 years).
    """
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    for m in _GO_DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or total * 1e9 > MAX_GO_DURATION_NS:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def server_major(version: str) -> int:
    """Major number of a server version like ``"17.0.2"`` or ``"v16.4.0-dev"`` (0 if unknown)."""
    # At most 9 digits: a 5000-digit "major" is unknown, not a ValueError from int().
    m = re.match(r"v?(\d{1,9})(?!\d)", version.strip())
    return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class PingResponse:
    """What ``/webapi/ping`` says about the proxy, checked and resolved."""

    cluster_name: ClusterName
    server_version: str
    auth_type: str
    second_factor: str
    #: Seconds, or None when the proxy did not say.
    default_session_ttl: float | None
    #: host:port of the web API, after ``proxy.ssh.public_addr`` (docs/protocol.md §1).
    web_proxy_addr: str
    #: host:port of the SSH proxy (docs/protocol.md §1 resolution rules).
    ssh_proxy_addr: str
    private_key_policy: str


@dataclass(frozen=True)
class HostSigner:
    """One cluster's host CA as sent in ``host_signers``, checked."""

    domain_name: ClusterName
    #: ``<type> <base64>`` public keys (decoded from base64, comment dropped).
    checking_keys: tuple[CAKey, ...]
    #: PEM certificates of the cluster's TLS CA, one ``BEGIN``/``END`` block each.
    tls_certs: tuple[str, ...]


@dataclass(frozen=True)
class LoginResponse:
    """A decoded ``SSHLoginResponse``."""

    #: The SSH user certificate, authorized_keys format.
    cert: str
    #: The TLS client certificate, PEM.
    tls_cert: str
    host_signers: tuple[HostSigner, ...]


def _bad(what: str, status: int | None = None) -> ProxyResponseError:
    return ProxyResponseError(f"malformed response from the proxy: {what}", status)


def _obj(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{what} is not an object")
    return value


def _str(data: dict[str, Any], key: str, what: str, required: bool = False) -> str:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise _bad(f"{what}.{key} is missing")
        return ""
    if not isinstance(value, str):
        raise _bad(f"{what}.{key} is not a string")
    return value


#: Words that name a mode (auth type, second factor, key policy): they are
#: stored in the profile and compared, never interpreted.
_WORD = re.compile(r"[A-Za-z0-9_.:-]{0,64}", re.ASCII)
_VERSION = re.compile(r"v?[0-9][0-9A-Za-z.+_-]{0,63}", re.ASCII)
_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n(?:[A-Za-z0-9+/=]{1,76}\r?\n)+-----END CERTIFICATE-----\r?\n?",
    re.ASCII,
)


def _word(data: dict[str, Any], key: str, what: str, pattern: re.Pattern[str] = _WORD) -> str:
    value = _str(data, key, what)
    if value and not pattern.fullmatch(value):
        raise _bad(f"{what}.{key} {value[:40]!r} is not a valid value")
    return value


def _cluster(value: str, what: str) -> ClusterName:
    try:
        return validate_cluster_name(value)
    except InvalidNameError as e:
        raise _bad(f"{what}: {e}") from None


def _addr(text: str, default_port: int, what: str) -> tuple[HostName, int]:
    """A proxy-sent ``host[:port]``, with the host validated for ssh_config and known_hosts."""
    try:
        host, port = split_host_port(text, default_port)
        return validate_host(host, "host"), port
    except (ValueError, InvalidNameError) as e:
        raise _bad(f"{what}: {e}") from None


def _ca_key(text: str, what: str) -> CAKey:
    try:
        return parse_ca_key(text)
    except ValueError:
        raise _bad(f"{what} is not an SSH public key") from None


def _pem_certs(text: str, what: str) -> str:
    """One or more PEM ``CERTIFICATE`` blocks and nothing else, as they are."""
    pos = 0
    for m in _PEM_CERT.finditer(text):
        if m.start() != pos:
            break
        pos = m.end()
    if not text or pos != len(text):
        raise _bad(f"{what} is not a PEM certificate")
    return text if text.endswith("\n") else text + "\n"


def _b64_text(value: Any, what: str) -> str:
    """A Go ``[]byte`` field: standard base64 of UTF-8 text."""
    if not isinstance(value, str) or not value:
        raise _bad(f"{what} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise _bad(f"{what} is not base64-encoded text") from None


def _resolve_ssh_proxy(ssh: dict[str, Any], web_host: HostName, web_port: int, tls_routing: bool) -> str:
    """docs/protocol.md §1: ``ssh_public_addr`` overrides, ``listen_addr`` gives only the port."""
    if tls_routing:
        return join_host_port(web_host, web_port)
    public = _str(ssh, "ssh_public_addr", "proxy.ssh")
    if public:
        return join_host_port(*_addr(public, SSH_PROXY_PORT, "proxy.ssh.ssh_public_addr"))
    listen = _str(ssh, "listen_addr", "proxy.ssh")
    port = SSH_PROXY_PORT
    if listen:  # only its port counts: the host is where the proxy listens (often 0.0.0.0)
        try:
            port = split_host_port(listen, SSH_PROXY_PORT)[1]
        except ValueError as e:
            raise _bad(f"proxy.ssh.listen_addr: {e}") from None
    return join_host_port(web_host, port)


def parse_ping(data: Any, web_proxy_addr: str) -> PingResponse:
    """Check and resolve a decoded ping answer from ``web_proxy_addr`` (host:port).

    Every string that the profile, ssh_config or known_hosts will hold is
    validated here (names through tsh._names), so a hostile proxy gets a
    ProxyResponseError and nothing it sent is written anywhere.
    """
    data = _obj(data, "ping response")
    auth = _obj(data.get("auth"), "auth")
    proxy = _obj(data.get("proxy"), "proxy")
    ssh = _obj(proxy.get("ssh"), "proxy.ssh")
    cluster = _cluster(_str(data, "cluster_name", "ping", required=True), "cluster_name")
    version = _word(data, "server_version", "ping", _VERSION)
    if not version:
        raise _bad("ping.server_version is missing")
    ttl_text = _str(auth, "default_session_ttl", "auth")
    ttl: float | None = None
    if ttl_text and ttl_text != "never":
        try:
            ttl = parse_go_duration(ttl_text)
        except ValueError:
            raise _bad(f"auth.default_session_ttl {ttl_text[:40]!r} is not a duration") from None
        if ttl <= 0:
            ttl = None
    tls_routing = proxy.get("tls_routing_enabled", False)
    if not isinstance(tls_routing, bool):
        raise _bad("proxy.tls_routing_enabled is not a boolean")

    web_host, web_port = _addr(web_proxy_addr, FALLBACK_WEB_PORT, "web proxy address")
    public = _str(ssh, "public_addr", "proxy.ssh")
    if public:  # the web address real tsh switches to (and names the profile after)
        web_host, web_port = _addr(public, FALLBACK_WEB_PORT, "proxy.ssh.public_addr")
    # Checked, not used: tsh-py's version is not comparable to Teleport's.
    _str(data, "min_client_version", "ping")
    return PingResponse(
        cluster_name=cluster,
        server_version=version,
        auth_type=_word(auth, "type", "auth") or "local",
        second_factor=_word(auth, "second_factor", "auth") or "off",
        default_session_ttl=ttl,
        web_proxy_addr=join_host_port(web_host, web_port),
        ssh_proxy_addr=_resolve_ssh_proxy(ssh, web_host, web_port, tls_routing),
        private_key_policy=_word(auth, "private_key_policy", "auth") or "none",
    )


def parse_login_response(data: Any) -> LoginResponse:
    """Check and decode an ``SSHLoginResponse`` (base64 fields decoded)."""
    data = _obj(data, "login response")
    signers_raw = data.get("host_signers")
    if not isinstance(signers_raw, list) or not signers_raw:
        raise _bad("expected at least one host CA in host_signers, got none")
    signers = []
    for i, raw in enumerate(signers_raw):
        raw = _obj(raw, f"host_signers[{i}]")
        keys = raw.get("checking_keys")
        tls = raw.get("tls_certs") or []
        if not isinstance(keys, list) or not keys:
            raise _bad(f"host_signers[{i}].checking_keys is empty")
        if not isinstance(tls, list):
            raise _bad(f"host_signers[{i}].tls_certs is not a list")
        what = f"host_signers[{i}]"
        signers.append(
            HostSigner(
                domain_name=_cluster(_str(raw, "domain_name", what, required=True), what),
                checking_keys=tuple(
                    _ca_key(_b64_text(k, f"{what}.checking_keys[{j}]"), f"{what}.checking_keys[{j}]")
                    for j, k in enumerate(keys)
                ),
                tls_certs=tuple(
                    _pem_certs(_b64_text(c, f"{what}.tls_certs[{j}]"), f"{what}.tls_certs[{j}]")
                    for j, c in enumerate(tls)
                ),
            )
        )
    _str(data, "username", "login response")  # checked, not used: the profile keeps the name asked for
    return LoginResponse(
        cert=_b64_text(data.get("cert"), "cert"),
        tls_cert=_b64_text(data.get("tls_cert"), "tls_cert"),
        host_signers=tuple(signers),
    )


def _error_message(body: bytes) -> str | None:
    """``error.message`` of a trace error body, if it is one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(data.get("message"), str):
            return data["message"]
    return None


def _tls_failure(exc: BaseException) -> tuple[bool, str] | None:
    """(is_verification_failure, reason) of a TLS error in an httpx exception chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True, seen.verify_message or str(seen)
        if isinstance(seen, ssl.SSLError):
            return False, seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return True, text
    return None


class _Deadline:
    """Ends one request when its total time is up, by shutting its socket down.

    httpx's timeouts bound each network operation, not the request, and offer
    no total timeout; httpcore's ``trace`` extension hands over each new
    connection's stream, whose socket a timer can shut down (which wakes a
    blocked read). A connection is never reused (see WebClient), so every
    request's connection passes through :meth:`trace`.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        # The TCP stream first; after the handshake, the TLS stream owns the descriptor.
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            sock = info["return_value"].get_extra_info("socket")
            with self._lock:
                self._socket = sock
                if self.expired:
                    self._shut_down()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut_down()

    def _shut_down(self) -> None:
        if self._socket is not None:
            try:
                # socket.socket's own shutdown: SSLSocket's would also drop its TLS state
                # under the reading thread.
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed, or handed over to the TLS stream


class WebClient:
    """A client for one proxy's web API.

    TLS is verified against the system trust store (``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` honoured) unless ``insecure`` is set; the caller is
    responsible for warning the user about ``insecure``. Redirects are never
    followed; bodies are capped at 1 MiB. ``timeout`` bounds each network
    operation, ``deadline`` each call (connect, request and the whole answer).
    """

    def __init__(
        self,
        web_proxy_addr: str,
        *,
        insecure: bool = False,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 15.0,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.web_proxy_addr = web_proxy_addr
        self.deadline = deadline
        # Built by us so OpenSSL's SSL_CERT_FILE/SSL_CERT_DIR apply, not certifi's bundle.
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.host, port = split_host_port(web_proxy_addr, FALLBACK_WEB_PORT)
        self.base_url = f"https://{join_host_port(self.host, port)}"
        self._client = httpx.Client(
            base_url=self.base_url,
            verify=context,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0, deadline)),
            # A new connection per call, so that _Deadline sees each call's socket
            # (login makes two calls: one more TLS handshake).
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> WebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        deadline = _Deadline(self.deadline)
        request = self._client.build_request(
            method,
            path,
            content=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"} if body is not None else None,
            extensions={"trace": deadline.trace},
        )
        too_slow = ProxyConnectionError(
            f"the proxy at {self.base_url} did not answer {path} within {deadline.seconds:g} s"
        )
        try:
            with deadline:
                response = self._client.send(request, stream=True)
                try:
                    content = bytearray()
                    for chunk in response.iter_bytes():
                        content += chunk
                        if len(content) > MAX_BODY:
                            raise ProxyResponseError(
                                f"the answer from {self.base_url}{path} is too large; "
                                f"is {self.base_url} a Teleport proxy?"
                            )
                        if deadline.expired:  # no socket to shut down (e.g. a mock transport)
                            raise too_slow
                finally:
                    response.close()
        except httpx.TimeoutException:
            if deadline.expired:
                raise too_slow from None
            raise ProxyConnectionError(
                f"timed out talking to the proxy at {self.base_url}"
            ) from None
        except httpx.TransportError as e:
            if deadline.expired:  # the read that _Deadline ended
                raise too_slow from None
            failure = _tls_failure(e)
            if failure is not None and failure[0]:
                raise ProxyTLSError(
                    f"TLS verification of {self.host} failed: {failure[1]} "
                    "(trust its CA via SSL_CERT_FILE, or use --insecure in test setups)"
                ) from None
            if failure is not None:
                raise ProxyTLSError(
                    f"TLS handshake with {self.base_url} failed: {failure[1]}; "
                    "is it a Teleport proxy's HTTPS port?"
                ) from None
            raise ProxyConnectionError(
                f"cannot reach the proxy at {self.base_url}: {e or type(e).__name__}"
            ) from None
        except httpx.DecodingError:  # e.g. a body that is not the gzip it claims to be
            raise ProxyResponseError(
                f"cannot decode the answer from {self.base_url}{path}; is it a Teleport proxy?"
            ) from None
        return self._decode(response.status_code, bytes(content), path)

    def _decode(self, status: int, body: bytes, path: str) -> Any:
        not_teleport = (
            f"cannot parse the answer from {self.base_url}{path}; is it a Teleport proxy?"
        )
        if status == 200:
            try:
                return json.loads(body)
            except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
                raise ProxyResponseError(not_teleport, status) from None
        message = _error_message(body)
        if message is None:
            raise ProxyResponseError(f"{not_teleport} (HTTP {status})", status)
        message = message.strip().splitlines()[0][:300] if message.strip() else f"HTTP {status}"
        if status == 403:
            raise AccessDeniedError(f"access denied: {message}", status)
        raise ProxyResponseError(
            f"the proxy refused the request: {message} (HTTP {status})", status
        )

    def ping(self) -> PingResponse:
        """``GET /webapi/ping``: check the proxy is a Teleport proxy and learn its settings."""
        try:
            data = self._request("GET", "/webapi/ping")
        except ProxyResponseError as e:
            if isinstance(e, AccessDeniedError) or e.status_code == 200:
                raise
            raise ProxyResponseError(
                f"proxy service returned unsuccessful ping response: {e}", e.status_code
            ) from None
        return parse_ping(data, self.web_proxy_addr)

    def ssh_certs(
        self,
        *,
        user: str,
        password: str,
        otp_token: str = "",
        ttl_seconds: float,
        ssh_pub_key: str | None = None,
        tls_pub_key: str | None = None,
        pub_key: str | None = None,
        route_to_cluster: str = "",
    ) -> LoginResponse:
        """``POST /v1/webapi/ssh/certs``: exchange a password (and OTP) for certificates.

        Pass ``ssh_pub_key`` and ``tls_pub_key`` to v17+ servers, ``pub_key`` to
        older ones (docs/protocol.md §3.2: sending both is a 400).
        """
        body: dict[str, Any] = {
            "user": user,
            "password": password,
            "otp_token": otp_token,
            "ttl": int(ttl_seconds * 1_000_000_000),
            "RouteToCluster": route_to_cluster,  # no JSON tag on the Go side: exact casing
            "KubernetesCluster": "",
        }

        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        if pub_key is not None:
            body["pub_key"] = b64(pub_key)
        else:
            if ssh_pub_key is None or tls_pub_key is None:
                raise ValueError("ssh_pub_key and tls_pub_key are both needed")
            body["ssh_pub_key"] = b64(ssh_pub_key)
            body["tls_pub_key"] = b64(tls_pub_key)
        return parse_login_response(self._request("POST", "/v1/webapi/ssh/certs", body))
