"""An in-memory Teleport proxy for login unit tests (httpx.MockTransport, no sockets).

It answers ``/webapi/ping`` and ``/v1/webapi/ssh/certs`` the way
docs/protocol.md §2-§4 describe, signing the posted keys with throw-away CAs made
with cryptography. Tests tweak its answers through ``ping_body``,
``login_hook`` and friends to play a hostile or broken proxy.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

INTERNAL = "-teleport-internal-join"


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def ssh_public_line(key: Any) -> str:
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def sign_user_cert(
    ca: ed25519.Ed25519PrivateKey,
    public_line: str,
    user: str,
    principals: list[str],
    valid_after: int,
    valid_before: int,
    roles: list[str] = ("access",),  # type: ignore[assignment]
    cert_type: serialization.SSHCertificateType = serialization.SSHCertificateType.USER,
) -> str:
    """An OpenSSH certificate line, as Teleport's auth server would issue it."""
    key = serialization.load_ssh_public_key(public_line.encode())
    builder = (
        serialization.SSHCertificateBuilder()
        .public_key(key)  # type: ignore[arg-type]
        .serial(1)
        .type(cert_type)
        .key_id(user.encode())
        .valid_after(valid_after)
        .valid_before(valid_before)
    )
    if principals:
        builder = builder.valid_principals([p.encode() for p in principals])
    else:
        builder = builder.valid_for_all_principals()
    if cert_type == serialization.SSHCertificateType.USER:
        for ext in (b"permit-agent-forwarding", b"permit-port-forwarding", b"permit-pty"):
            builder = builder.add_extension(ext, b"")
        roles_json = json.dumps({"version": "v1", "roles": list(roles)}).encode()
        builder = builder.add_extension(
            b"teleport-roles", len(roles_json).to_bytes(4, "big") + roles_json
        )
    cert = builder.sign(ca)
    return cert.public_bytes().decode() + "\n"


class FakeProxy:
    """A Teleport proxy's web API in memory."""

    def __init__(
        self,
        cluster: str = "example.test",
        server_version: str = "17.0.0",
        second_factor: str = "off",
        password: str = "secret-pw",
        otp: str = "123456",
        logins: tuple[str, ...] = ("root", "alice"),
        default_ttl: str = "12h0m0s",
    ) -> None:
        self.cluster = cluster
        self.server_version = server_version
        self.second_factor = second_factor
        self.password = password
        self.otp = otp
        self.logins = list(logins)
        self.default_ttl = default_ttl
        self.user_ca = ed25519.Ed25519PrivateKey.generate()
        self.host_ca = ed25519.Ed25519PrivateKey.generate()
        self.tls_ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster)])
        now = dt.datetime.now(dt.timezone.utc)
        self.tls_ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.tls_ca_key.public_key())
            .serial_number(1)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.tls_ca_key, hashes.SHA256())
        )
        self.requests: list[httpx.Request] = []
        self.login_bodies: list[dict[str, Any]] = []
        #: Replace the ping answer: (status, body bytes, content type).
        self.ping_raw: tuple[int, bytes, str] | None = None
        #: Replace the login answer entirely.
        self.login_raw: tuple[int, bytes, str] | None = None
        #: Edit the decoded login answer before it is sent: f(answer, request_body).
        self.login_hook: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
        #: Validity window override for the SSH cert: f(now) -> (after, before).
        self.window: Callable[[int, int], tuple[int, int]] | None = None

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def ping_json(self) -> dict[str, Any]:
        return {
            "auth": {
                "type": "local",
                "second_factor": self.second_factor,
                "local": {"name": ""},
                "private_key_policy": "none",
                "piv_slot": "",
                "device_trust": {},
                "has_motd": False,
                "default_session_ttl": self.default_ttl,
            },
            "proxy": {
                "kube": {},
                "ssh": {"listen_addr": "0.0.0.0:3023"},
                "db": {},
                "tls_routing_enabled": False,
            },
            "server_version": self.server_version,
            "min_client_version": "16.0.0",
            "cluster_name": self.cluster,
            "automatic_upgrades": False,
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/webapi/ping" and request.method == "GET":
            if self.ping_raw is not None:
                status, body, ctype = self.ping_raw
                return httpx.Response(status, content=body, headers={"Content-Type": ctype})
            return httpx.Response(200, json=self.ping_json())
        if request.url.path == "/v1/webapi/ssh/certs" and request.method == "POST":
            return self._login(request)
        return self._error(404, "path not found")

    @staticmethod
    def _error(status: int, message: str) -> httpx.Response:
        body = json.dumps({"error": {"message": message}}, indent=4)
        return httpx.Response(
            status, content=body.encode(), headers={"Content-Type": "application/json"}
        )

    def _login(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("content-type") != "application/json":
            return self._error(400, "invalid request")
        body = json.loads(request.content)
        self.login_bodies.append(body)
        if self.login_raw is not None:
            status, raw, ctype = self.login_raw
            return httpx.Response(status, content=raw, headers={"Content-Type": ctype})
        if body.get("password") != self.password:
            return self._error(403, "invalid username or password")
        if self.second_factor != "off" and body.get("otp_token") != self.otp:
            return self._error(403, "invalid username, password or second factor")
        if self.server_version.startswith("17"):
            if "pub_key" in body:
                return self._error(400, "'pub_key' and 'ssh_pub_key' cannot both be set")
            ssh_pub = base64.b64decode(body["ssh_pub_key"]).decode()
            tls_pub = serialization.load_pem_public_key(base64.b64decode(body["tls_pub_key"]))
        else:
            ssh_pub = base64.b64decode(body["pub_key"]).decode()
            tls_pub = serialization.load_ssh_public_key(ssh_pub.encode())
        now = int(time.time())
        ttl = int(body["ttl"] // 1_000_000_000)
        after, before = (now - 60, now + ttl) if self.window is None else self.window(now, ttl)
        cert = sign_user_cert(
            self.user_ca, ssh_pub, body["user"], [*self.logins, INTERNAL], after, before
        )
        tls_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, body["user"])]))
            .issuer_name(self.tls_ca.subject)
            .public_key(tls_pub)  # type: ignore[arg-type]
            .serial_number(2)
            .not_valid_before(dt.datetime.fromtimestamp(now - 60, dt.timezone.utc))
            .not_valid_after(dt.datetime.fromtimestamp(now + ttl, dt.timezone.utc))
            .sign(self.tls_ca_key, hashes.SHA256())
        )
        answer = {
            "username": body["user"],
            "cert": b64(cert),
            "tls_cert": b64(tls_cert.public_bytes(serialization.Encoding.PEM)),
            "host_signers": [
                {
                    "domain_name": self.cluster,
                    "checking_keys": [b64(ssh_public_line(self.host_ca.public_key()) + "\n")],
                    "tls_certs": [b64(self.tls_ca.public_bytes(serialization.Encoding.PEM))],
                }
            ],
        }
        if self.login_hook is not None:
            self.login_hook(answer, body)
        return httpx.Response(200, json=answer)


class ScriptedPrompter:
    """Answers prompts from fixed values and records that it was asked."""

    def __init__(self, password: str = "secret-pw", otp: str = "123456") -> None:
        self._password = password
        self._otp = otp
        self.asked: list[str] = []

    def password(self, user: str) -> str:
        self.asked.append(f"password:{user}")
        return self._password

    def otp(self) -> str:
        self.asked.append("otp")
        return self._otp
