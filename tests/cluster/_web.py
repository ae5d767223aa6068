"""The proxy's HTTPS web API (docs/protocol.md §2, §3 and §4), on aiohttp.

Routes (each also under a leading ``/v1``): ``GET /webapi/ping``,
``GET /webapi/ping/<connector>``, ``GET /webapi/find``, ``POST /webapi/ssh/certs``,
``GET /webapi/auth/export?type=user|host|tls`` (also under ``/webapi/sites/<cluster>``).
Errors are Teleport's ``{"error":{"message":...}}`` body, 4-space indented,
with trace's status codes. Unexpected input always gives a 4xx, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import asyncssh
from aiohttp import web
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from . import _trust
from ._ca import Authority, public_line
from ._config import ServerConfig, parse_version
from ._duration import NS_PER_S, format_go_duration
from ._state import ClusterState

__all__ = ["ApiError", "WebAPI", "make_app"]

log = logging.getLogger("tests.cluster.web")

DEFAULT_TTL_NS = 12 * 3600 * NS_PER_S
BAD_CREDENTIALS = "invalid username, password or second factor"

_SECURITY_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Expires": "0",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}

# Go field kinds of createSSHCertReq; Go matches JSON keys case-insensitively.
_STR, _BYTES, _INT, _ANY = "string", "[]uint8", "time.Duration", "any"
_FIELDS_V16 = {
    "user": _STR, "password": _STR, "otp_token": _STR, "headless_id": _STR,
    "pub_key": _BYTES, "attestation_statement": _ANY, "ttl": _INT,
    "compatibility": _STR, "routetocluster": _STR, "kubernetescluster": _STR,
}
_FIELDS_V17 = {
    **_FIELDS_V16,
    "ssh_pub_key": _BYTES, "tls_pub_key": _BYTES,
    "ssh_attestation_statement": _ANY, "tls_attestation_statement": _ANY,
}


class ApiError(Exception):
    """An error answered as Teleport's JSON error body with ``status``."""

    def __init__(self, status: int, message: str, fields: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields


def error_response(err: ApiError) -> web.Response:
    body: dict[str, Any] = {"error": {"message": err.message}}
    if err.fields:
        body["fields"] = err.fields
    return web.Response(
        status=err.status,
        text=json.dumps(body, indent=4),
        content_type="application/json",
        headers=_SECURITY_HEADERS,
    )


def json_response(obj: Any) -> web.Response:
    return web.Response(
        text=json.dumps(obj, separators=(",", ":")),
        content_type="application/json",
        headers=_SECURITY_HEADERS,
    )


def b64(data: bytes | str) -> str:
    """Go's encoding of a ``[]byte`` JSON field: standard base64."""
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def decode_request(raw: bytes, fields: dict[str, str]) -> dict[str, Any]:
    """Decode a JSON body the way Go's encoding/json fills createSSHCertReq.

    Unknown keys are ignored, known keys match case-insensitively, ``null``
    leaves the zero value. Type mismatches raise ApiError 400 ``request: ...``.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(
            400, f"request: json: cannot unmarshal {_go_kind(data)} into Go value of type "
            "web.createSSHCertReq"
        )
    out: dict[str, Any] = {"ttl": 0}
    for key, value in data.items():
        name = key.lower()
        kind = fields.get(name)
        if kind is None or value is None:
            continue
        if kind == _ANY:
            out[name] = value
        elif kind == _STR:
            if not isinstance(value, str):
                raise _type_error(value, key, kind)
            out[name] = value
        elif kind == _INT:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _type_error(value, key, kind)
            if not -(2**63) <= value < 2**63:
                raise _type_error(value, key, kind)
            out[name] = value
        else:  # []byte: a standard base64 string
            if not isinstance(value, str):
                raise _type_error(value, key, kind)
            try:
                out[name] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, f"request: illegal base64 data in field {key!r}") from None
    return out


def _go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(value: Any, key: str, kind: str) -> ApiError:
    return ApiError(
        400,
        f"request: json: cannot unmarshal {_go_kind(value)} into Go struct field "
        f"createSSHCertReq.{key} of type {kind}",
    )


@dataclass
class _Keys:
    ssh: asyncssh.SSHKey | None
    tls: Any  # a cryptography public key, or None


def _parse_ssh_key(data: bytes) -> asyncssh.SSHKey:
    try:
        key = asyncssh.import_public_key(data)
    except (asyncssh.KeyImportError, ValueError, UnicodeDecodeError):
        raise ApiError(400, "failed to parse SSH public key") from None
    if isinstance(key, asyncssh.SSHCertificate) or not hasattr(key, "pyca_key"):
        raise ApiError(400, "failed to parse SSH public key")
    return key


def _parse_tls_key(data: bytes) -> Any:
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ApiError(400, "failed to parse TLS public key: expected a PEM public key") from None


class WebAPI:
    """Request handlers over one cluster's state."""

    def __init__(self, state: ClusterState, authority: Authority, config: ServerConfig):
        self.state = state
        self.authority = authority
        self.config = config
        self.routes = {
            "/webapi/ping": {"GET": self.ping},
            "/webapi/find": {"GET": self.find},
            "/webapi/ssh/certs": {"POST": self.create_ssh_cert},
            "/webapi/trustedclusters/validate": {"POST": self.validate_trusted_cluster},
            "/webapi/auth/export": {"GET": self.auth_export},
        }

    async def dispatch(self, request: web.Request) -> web.Response:
        try:
            return await self._dispatch(request)
        except ApiError as err:
            return error_response(err)
        except web.HTTPRequestEntityTooLarge:
            return error_response(ApiError(400, "request: body too large"))
        except Exception:  # a bug here must still not leak a traceback to the client
            log.exception("unexpected error on %s %s", request.method, request.path)
            return error_response(ApiError(400, "bad request"))

    async def _dispatch(self, request: web.Request) -> web.Response:
        path = request.path
        if path == "/v1" or path.startswith("/v1/"):
            path = path[3:] or "/"
        path = path.rstrip("/") or "/"
        site_export = f"/webapi/sites/{self.state.name}/auth/export"
        if path == site_export:
            path = "/webapi/auth/export"
        if path.startswith("/webapi/ping/"):
            connector = path[len("/webapi/ping/") :]
            if request.method != "GET":
                raise ApiError(405, "method not allowed")
            return await self.ping_connector(connector)
        methods = self.routes.get(path)
        if methods is None:
            major, minor, patch, pre = parse_version(self.config.server_version)
            raise ApiError(
                404,
                "path not found",
                {"proxyVersion": {"major": major, "minor": minor, "patch": patch,
                                  "preRelease": pre, "string": self.config.server_version}},
            )
        handler = methods.get(request.method)
        if handler is None:
            raise ApiError(405, "method not allowed")
        return await handler(request)

    # ---- ping / find
    def _proxy_settings(self) -> dict[str, Any]:
        ssh: dict[str, Any] = {
            "listen_addr": self.config.ssh_proxy_addr,
            "web_listen_addr": self.config.web_addr,
            "ssh_public_addr": self.config.ssh_public_addr or self.config.ssh_proxy_addr,
            "dial_timeout": 30 * NS_PER_S,
        }
        if self.config.public_addr:
            ssh["public_addr"] = self.config.public_addr
        if self.config.tunnel_addr:  # where leaves' proxies dial (trusted clusters)
            ssh["ssh_tunnel_public_addr"] = self.config.tunnel_addr
        return {
            "kube": {},
            "ssh": ssh,
            "db": {},
            "tls_routing_enabled": False,
        }

    def _auth_settings(self) -> dict[str, Any]:
        return {
            "type": "local",
            "second_factor": self.config.second_factor,
            "local": {"name": ""},
            "private_key_policy": "none",
            "piv_slot": "",
            "piv_pin_cache_duration": 0,
            "device_trust": {},
            "has_motd": False,
            "default_session_ttl": format_go_duration(DEFAULT_TTL_NS),
        }

    def _ping_body(self, auth: dict[str, Any]) -> dict[str, Any]:
        body = {
            "auth": auth,
            "proxy": self._proxy_settings(),
            "server_version": self.config.server_version,
            "min_client_version": self.config.min_client_version,
            "cluster_name": self.state.name,
            "automatic_upgrades": False,
        }
        if self.config.major >= 17:
            body.update({"edition": "oss", "fips": False})
        return body

    async def validate_trusted_cluster(self, request: web.Request) -> web.Response:
        """A leaf joins (trusted-clusters.md §1.1): token check, CA exchange."""
        try:
            body = _trust.validate_trusted_cluster(
                self.state, self.authority, await request.read()
            )
        except _trust.TrustError as e:
            raise ApiError(e.status, str(e)) from None
        return web.Response(body=body, content_type="application/json",
                            headers=_SECURITY_HEADERS)

    async def ping(self, request: web.Request) -> web.Response:
        return json_response(self._ping_body(self._auth_settings()))

    async def ping_connector(self, connector: str) -> web.Response:
        if connector in ("local", "passwordless"):
            return json_response(self._ping_body(self._auth_settings()))
        raise ApiError(400, f"invalid connector name: {connector}; valid options: local")

    async def find(self, request: web.Request) -> web.Response:
        empty_auth = {
            "type": "", "private_key_policy": "", "piv_slot": "", "piv_pin_cache_duration": 0,
            "device_trust": {}, "has_motd": False, "default_session_ttl": "0s",
        }
        return json_response(self._ping_body(empty_auth))

    # ---- public CA export (authExportPublic): no authentication, local CAs only
    async def auth_export(self, request: web.Request) -> web.Response:
        ca_type = request.query.get("type", "")
        exports = {
            "user": self.authority.export_user,
            "host": self.authority.export_host,
            "tls": self.authority.export_tls,
            "tls-host": self.authority.export_tls,
            "": lambda: self.authority.export_host() + self.authority.export_user(),
        }
        if ca_type not in exports:
            raise ApiError(400, f"unsupported --type: {json.dumps(ca_type)}")
        return web.Response(
            text=exports[ca_type](), content_type="text/plain", headers=_SECURITY_HEADERS
        )

    # ---- local login
    async def create_ssh_cert(self, request: web.Request) -> web.Response:
        mime = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if mime != "application/json":
            raise ApiError(400, "invalid request")
        fields = _FIELDS_V17 if self.config.split_keys else _FIELDS_V16
        req = decode_request(await request.read(), fields)

        if not req.get("user"):
            raise ApiError(400, "missing parameter 'username'")
        keys = self._request_keys(req)
        compat = req.get("compatibility", "")
        if compat not in ("", "standard", "oldssh"):
            raise ApiError(400, f"invalid certificate format parameter: {json.dumps(compat)}")
        ttl_ns = req["ttl"] or DEFAULT_TTL_NS
        if ttl_ns < 0:
            raise ApiError(400, "ttl must not be negative")

        user = self.state.check_password(req["user"], req.get("password", ""))
        if user is None or not self._otp_ok(user.otp_secret, req.get("otp_token", "")):
            raise ApiError(403, BAD_CREDENTIALS)

        route = req.get("routetocluster", "")
        if route and route != self.state.name and route not in _trust.remote_host_cas(self.state):
            raise ApiError(404, f"remote cluster {json.dumps(route)} is not found")

        ttl_s = max(min(ttl_ns, user.max_ttl_ns) // NS_PER_S, 1)
        cluster = self.state.name
        host = self.authority.keys("host")  # this cluster's host CA only, active first
        cert = tls_cert = None
        if keys.ssh is not None:
            ssh_cert = self.authority.sign_user(keys.ssh, user, ttl_s, route or cluster)
            cert = b64(ssh_cert.export_certificate("openssh"))
        if keys.tls is not None:
            tls_cert = b64(self.authority.tls_client_cert(keys.tls, user, ttl_s))
        return json_response(
            {
                "username": user.name,
                "cert": cert,
                "tls_cert": tls_cert,
                "host_signers": [
                    {
                        "domain_name": cluster,
                        "checking_keys": [b64(public_line(k) + "\n") for k in host.trusted],
                        "tls_certs": [b64(pem) for pem in host.trusted_tls_pem],
                    }
                ],
            }
        )

    def _request_keys(self, req: dict[str, Any]) -> _Keys:
        pub = req.get("pub_key", b"")
        if not self.config.split_keys:
            if not pub:
                raise ApiError(400, "missing parameter 'public_key'")
            ssh = _parse_ssh_key(pub)
            return _Keys(ssh, ssh.pyca_key)
        ssh_raw, tls_raw = req.get("ssh_pub_key", b""), req.get("tls_pub_key", b"")
        if pub and ssh_raw:
            raise ApiError(400, "'pub_key' and 'ssh_pub_key' cannot both be set")
        if pub and tls_raw:
            raise ApiError(400, "'pub_key' and 'tls_pub_key' cannot both be set")
        if pub:
            ssh = _parse_ssh_key(pub)
            return _Keys(ssh, ssh.pyca_key)
        if not ssh_raw and not tls_raw:
            raise ApiError(400, "'ssh_pub_key' or 'tls_pub_key' must be set")
        return _Keys(
            _parse_ssh_key(ssh_raw) if ssh_raw else None,
            _parse_tls_key(tls_raw) if tls_raw else None,
        )

    def _otp_ok(self, secret: str | None, token: str) -> bool:
        if self.config.second_factor == "off":
            return True
        if not secret or not token:
            return False
        import pyotp

        return pyotp.TOTP(secret).verify(token, valid_window=1)


def make_app(api: WebAPI) -> web.Application:
    """An aiohttp application sending every request to :meth:`WebAPI.dispatch`."""
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", api.dispatch)
    return app


def server_ssl_context(cert_path: Any, key_path: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    return ctx
