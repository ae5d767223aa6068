"""The proxy's web API messages, checked and decoded (pure: JSON in, dataclasses out).

Wire format: docs/protocol.md §2, §3 and §4. ``[]byte`` fields travel as
base64, durations in requests are integer nanoseconds, ``default_session_ttl``
in ping is a Go duration string, errors are ``{"error": {"message": ...}}``.
Every string that the profile, ssh_config or known_hosts will hold is
validated here, where it is parsed (tsh._core.names); a hostile or broken
proxy gets a ProxyResponseError and nothing it sent is written anywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from .._core.addr import FALLBACK_WEB_PORT, SSH_PROXY_PORT, join_host_port, split_host_port
from .._core.knownhosts import CAKey, parse_ca_key
from .._core.names import ClusterName, HostName, validate_cluster_name, validate_host
from .._exceptions import InvalidNameError, ProxyResponseError

__all__ = [
    "HostSigner",
    "LoginResponse",
    "PingResponse",
    "SSO_TYPES",
    "error_message",
    "parse_go_duration",
    "parse_login_response",
    "parse_ping",
    "parse_sso_redirect",
    "server_major",
]

#: A ping or login answer is a few KiB; anything near this is not a Teleport proxy.
MAX_BODY = 1 << 20
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
    #: The auth connector's name for SSO types (``auth.<type>.name``), else "".
    connector_name: str = ""
    #: Its display name (``auth.<type>.display``), for messages only.
    connector_display: str = ""
    #: ``proxy.tls_routing_enabled``: SSH is on the web port, inside TLS (docs/protocol.md §18).
    tls_routing_enabled: bool = False


#: Ping's ``auth.type`` values that log in through an identity provider (docs/protocol.md §16).
SSO_TYPES = ("oidc", "saml", "github")


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
    #: The Teleport user the proxy certified ("" if it did not say); SSO logins use it.
    username: str = ""


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
_CONNECTOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}", re.ASCII)
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
    validated here (names through tsh._core.names), so a hostile proxy gets a
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
    auth_type = _word(auth, "type", "auth") or "local"
    connector_name = connector_display = ""
    if auth_type in SSO_TYPES:
        settings = _obj(auth.get(auth_type), f"auth.{auth_type}")
        # The name goes into a URL path segment and a request: a plain word only.
        connector_name = _word(settings, "name", f"auth.{auth_type}", _CONNECTOR)
        if not connector_name:
            raise _bad(f"auth.{auth_type}.name is missing")
        display = _str(settings, "display", f"auth.{auth_type}")
        connector_display = "".join(c for c in display if c.isprintable())[:64]
    return PingResponse(
        cluster_name=cluster,
        server_version=version,
        auth_type=auth_type,
        second_factor=_word(auth, "second_factor", "auth") or "off",
        default_session_ttl=ttl,
        web_proxy_addr=join_host_port(web_host, web_port),
        ssh_proxy_addr=_resolve_ssh_proxy(ssh, web_host, web_port, tls_routing),
        private_key_policy=_word(auth, "private_key_policy", "auth") or "none",
        connector_name=connector_name,
        connector_display=connector_display,
        tls_routing_enabled=tls_routing,
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
    # Password logins keep the name asked for; SSO logins take this one (validated by login()).
    username = _str(data, "username", "login response")
    return LoginResponse(
        cert=_b64_text(data.get("cert"), "cert"),
        tls_cert=_b64_text(data.get("tls_cert"), "tls_cert"),
        host_signers=tuple(signers),
        username=username,
    )


#: An IdP URL the browser may be sent to: http(s), no spaces or control characters.
_SSO_URL = re.compile(r"https?://[!-~]{1,65536}", re.ASCII)


def parse_sso_redirect(data: Any) -> str:
    """The IdP URL of an ``SSOLoginConsoleResponse`` (``{"redirect_url": ...}``), checked.

    It goes into a ``Location`` header of the local callback server and to a
    browser, so it must be a plain http(s) URL (not ``javascript:`` or
    ``file:``, no header-splitting characters).
    """
    data = _obj(data, "SSO login response")
    url = _str(data, "redirect_url", "SSO login response", required=True)
    if not _SSO_URL.fullmatch(url):
        raise _bad("redirect_url is not an http(s) URL")
    return url


def error_message(body: bytes) -> str | None:
    """``error.message`` of a trace error body, if it is one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    if isinstance(data, dict):
        err = data.get("error")
        message = err.get("message") if isinstance(err, dict) else data.get("message")
        if isinstance(message, str):
            return message
    return None
