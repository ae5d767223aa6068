"""Certificate authorities of the test cluster.

* user CA and host CA: OpenSSH certificates, made with asyncssh (Ed25519 CA keys;
  they sign RSA keys from v16-style clients just as well);
* TLS CA: X.509, made with cryptography. It signs the proxy's HTTPS certificate
  and the users' TLS client certificates, and is what ``host_signers[].tls_certs``
  lists (subject and issuer CN = the cluster name, as Teleport's).

Keys live in ``DIR/ca`` (0600) and are created once, under the data dir lock.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.public_key import (
    CERT_TYPE_USER,
    SSHOpenSSHCertificateV01,
    _certificate_version_map,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cluster._files import atomic_write, locked

from ._state import ClusterState, User

__all__ = ["Authority", "public_line", "INTERNAL_JOIN_PRINCIPAL"]

INTERNAL_JOIN_PRINCIPAL = "-teleport-internal-join"
_BACKDATE_S = 60  # certificates are valid from one minute ago, as Teleport's
_HOST_KEY_ALG = "ssh-rsa"  # tctl auth sign and v16 `tsh config` expect RSA host keys


def _encode_str(value: object) -> bytes:
    # Extension data with a value is itself an SSH string (PROTOCOL.certkeys).
    return asyncssh.packet.String(str(value))


class _TeleportUserCert(SSHOpenSSHCertificateV01):
    """A v01 user certificate that also carries Teleport's own extensions.

    asyncssh's public API only writes the five ``permit-*`` flags; Teleport
    clients read ``teleport-roles`` (and ``teleport-route-to-cluster``), so we
    add encoders for them. OpenSSH wants the extensions in lexical order.
    """

    _user_extension_encoders = tuple(
        sorted(
            SSHOpenSSHCertificateV01._user_extension_encoders
            + (("teleport-roles", _encode_str), ("teleport-route-to-cluster", _encode_str)),
            key=lambda enc: enc[0].encode(),
        )
    )


def public_line(key: asyncssh.SSHKey) -> str:
    """``<type> <base64>`` of a key, without comment (authorized_keys style)."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def _cluster_name(cluster: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, cluster),
        ]
    )


@dataclass
class Authority:
    """The cluster's CAs, loaded from (or created in) a data directory."""

    cluster: str
    user_ca: asyncssh.SSHKey
    host_ca: asyncssh.SSHKey
    tls_ca_key: ec.EllipticCurvePrivateKey
    tls_ca_cert: x509.Certificate
    tls_ca_path: Path

    @classmethod
    def load(cls, state: ClusterState) -> Authority:
        """Load the CAs, creating any that are missing."""
        ca = state.ca_dir
        with locked(state.lock_path):
            for name in ("user_ca", "host_ca"):
                if not (ca / name).exists():
                    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{name}")
                    atomic_write(ca / name, key.export_private_key("openssh"), 0o600)
            if not (ca / "tls_ca.pem").exists():
                _create_tls_ca(ca, state.name)
        return cls(
            cluster=state.name,
            user_ca=asyncssh.read_private_key(ca / "user_ca"),
            host_ca=asyncssh.read_private_key(ca / "host_ca"),
            tls_ca_key=serialization.load_pem_private_key(
                (ca / "tls_ca.key").read_bytes(), password=None
            ),
            tls_ca_cert=x509.load_pem_x509_certificate((ca / "tls_ca.pem").read_bytes()),
            tls_ca_path=ca / "tls_ca.pem",
        )

    # ---- exports (tctl auth export)
    def export_user(self) -> str:
        """``cert-authority <key> clustername=<c>&type=user`` (sshd TrustedUserCAKeys after sed)."""
        return f"cert-authority {public_line(self.user_ca)} clustername={self.cluster}&type=user\n"

    def export_host(self) -> str:
        """``@cert-authority *.<cluster> <key> type=host`` for known_hosts."""
        return f"@cert-authority *.{self.cluster} {public_line(self.host_ca)} type=host\n"

    @property
    def tls_ca_pem(self) -> bytes:
        return self.tls_ca_cert.public_bytes(serialization.Encoding.PEM)

    # ---- SSH certificates
    def sign_user(
        self, key: asyncssh.SSHKey, user: User, ttl_s: int, route_to_cluster: str
    ) -> asyncssh.SSHCertificate:
        """A Teleport-style user certificate for ``key`` (principals = logins + internal join)."""
        now = int(time.time())
        principals = [*user.logins, INTERNAL_JOIN_PRINCIPAL]
        options = {
            "permit-X11-forwarding": True,
            "permit-agent-forwarding": True,
            "permit-port-forwarding": True,
            "permit-pty": True,
            "permit-user-rc": True,
            "teleport-roles": json.dumps({"version": "v1", "roles": list(user.roles)},
                                         separators=(",", ":")),
            "teleport-route-to-cluster": route_to_cluster,
        }
        try:
            cert_alg, _ = _certificate_version_map[key.algorithm, 1]
        except KeyError:
            raise ValueError(f"cannot certify a {key.get_algorithm()} key") from None
        return _TeleportUserCert.generate(
            self.user_ca,
            cert_alg,
            key,
            0,
            CERT_TYPE_USER,
            user.name,
            principals,
            now - _BACKDATE_S,
            now + ttl_s,
            options,
            self.user_ca.sig_algorithms[0],
            None,
        )

    def sign_host(
        self, key: asyncssh.SSHKey, principals: list[str], key_id: str, ttl_s: int
    ) -> asyncssh.SSHCertificate:
        """A host certificate for ``key`` valid for exactly ``principals``."""
        now = int(time.time())
        return self.host_ca.generate_host_certificate(
            key, key_id, principals=principals, valid_after=now - _BACKDATE_S,
            valid_before=now + ttl_s, comment=None,
        )

    @staticmethod
    def new_host_key() -> asyncssh.SSHKey:
        return asyncssh.generate_private_key(_HOST_KEY_ALG, key_size=2048)

    # ---- X.509
    def tls_client_cert(self, public_key: object, user: User, ttl_s: int) -> bytes:
        """PEM client certificate for ``public_key``; subject CN = user, O = roles."""
        now = dt.datetime.now(dt.timezone.utc)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, user.name)]
            + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, r) for r in user.roles]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.tls_ca_cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=_BACKDATE_S))
            .not_valid_after(now + dt.timedelta(seconds=ttl_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
            .sign(self.tls_ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def https_identity(
        self, out_dir: Path, name: str = "https", issuer: tuple[Any, x509.Certificate] | None = None
    ) -> tuple[Path, Path]:
        """Write a fresh HTTPS key + certificate for 127.0.0.1/localhost; return their paths.

        Signed by the cluster's TLS CA, or by ``issuer`` (key, certificate);
        written as ``<name>.key`` and ``<name>.pem``.
        """
        issuer_key, issuer_cert = issuer or (self.tls_ca_key, self.tls_ca_cert)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName(self.cluster),
        ]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=_BACKDATE_S))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(issuer_key, hashes.SHA256())
        )
        key_path, cert_path = out_dir / f"{name}.key", out_dir / f"{name}.pem"
        atomic_write(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            0o600,
        )
        atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert_path, key_path


def _create_tls_ca(ca_dir: Path, cluster: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = _cluster_name(cluster)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=_BACKDATE_S))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    atomic_write(
        ca_dir / "tls_ca.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    atomic_write(ca_dir / "tls_ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
