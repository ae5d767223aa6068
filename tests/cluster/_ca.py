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
import hashlib
import ipaddress
import json
import os
import time
import uuid
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

from ._rotation import CARecord, Rotation, advance, expand_types, rotate
from ._state import ClusterState, User

__all__ = ["Authority", "CAKeys", "authority_key_id", "public_line", "INTERNAL_JOIN_PRINCIPAL"]

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


@dataclass(frozen=True)
class CAKeys:
    """What one CA of the cluster trusts and signs with *now* (see :meth:`Authority.keys`)."""

    ca_type: str
    signing: asyncssh.SSHKey  # signs new certificates: the first active key
    trusted: tuple[asyncssh.SSHKey, ...]  # accepted: active then additional
    presented: asyncssh.SSHKey  # what servers sign their own host certificates with
    signing_tls_key: ec.EllipticCurvePrivateKey
    signing_tls_cert: x509.Certificate
    trusted_tls: tuple[x509.Certificate, ...]  # active then additional
    rotation: Rotation
    active_count: int = 1  # how many of ``trusted`` are active keys (the rest: additional)
    # what servers sign their own TLS certificates with now (the auth API's identity)
    presented_tls: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None

    @property
    def trusted_tls_pem(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(serialization.Encoding.PEM) for c in self.trusted_tls)


_INITIAL_SETS = {
    "host": {"ssh": "host_ca", "tls": "tls_ca"},
    "user": {"ssh": "user_ca", "tls": "tls_ca"},
}


class Authority:
    """The cluster's CAs, loaded from (or created in) a data directory.

    **One function answers "which keys does the cluster trust and sign with
    now":** :meth:`keys`. Every endpoint (login answer, exports, the SSH proxy's
    user-CA check and host certificate, ``auth sign``, the auth API's
    GetCertAuthorities) asks it on each use, so they all follow a rotation
    (``ca/rotation.json``, see ``_rotation.py``) made by another process: the
    file is re-read when its inode/size/mtime change, and automatic rotations
    advance when their time has come. The HTTPS certificate is the exception:
    it comes from the original ``tls_ca`` (``tls_ca_path``), which stands for a
    web PKI that a CA rotation does not touch.
    """

    def __init__(self, state: ClusterState):
        self.cluster = state.name
        self._state = state
        self._ssh_keys: dict[str, asyncssh.SSHKey] = {}
        self._tls: dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = {}
        self._sig: tuple[int, int, int] | None = None
        self._records: dict[str, CARecord] = {}
        self.tls_ca_path = state.ca_dir / "tls_ca.pem"

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
                create_tls_ca(ca, state.name)
        authority = cls(state)
        authority.keys("host")  # fail early on unreadable keys
        return authority

    # ---- the one source of truth
    def keys(self, ca_type: str, now: float | None = None) -> CAKeys:
        """The ``host`` or ``user`` CA's signing, trusted and server-presented keys now."""
        record = self.records(now)[ca_type]
        trusted = record.trusted
        signing_tls = self._tls_pair(record.active[0]["tls"])
        return CAKeys(
            ca_type=ca_type,
            signing=self._ssh(record.active[0]["ssh"]),
            trusted=tuple(self._ssh(k["ssh"]) for k in trusted),
            presented=self._ssh(record.presented["ssh"]),
            signing_tls_key=signing_tls[0],
            signing_tls_cert=signing_tls[1],
            trusted_tls=tuple(self._tls_pair(k["tls"])[1] for k in trusted),
            rotation=record.rotation,
            active_count=len(record.active),
            presented_tls=self._tls_pair(record.presented["tls"]),
        )

    def records(self, now: float | None = None) -> dict[str, CARecord]:
        """Every CA's record, re-read if the file changed, auto transitions applied."""
        now = time.time() if now is None else now
        self._reload()
        if any(advance(r, now) != r for r in self._records.values()):
            with locked(self._state.lock_path):
                self._reload()
                self._write({t: advance(r, now) for t, r in self._records.items()})
        return dict(self._records)

    def rotate(self, ca_type: str, phase: str, mode: str, grace_s: float,
               now: float | None = None) -> None:
        """``tctl auth rotate`` for one type or ``all``; RotationError if refused (nothing changes)."""
        now = time.time() if now is None else now
        types = expand_types(ca_type)
        with locked(self._state.lock_path):
            self._reload()
            records = {t: advance(r, now) for t, r in self._records.items()}
            for t in types:  # check every type before making keys for any
                rotate(records[t], phase, mode, grace_s, now, lambda: ("", {}))
            for t in types:
                records[t] = rotate(records[t], phase, mode, grace_s, now,
                                    lambda t=t: self._new_key_set(t))  # type: ignore[misc]
            self._write(records)

    def _rotation_path(self) -> Path:
        return self._state.ca_dir / "rotation.json"

    def _reload(self) -> None:
        path = self._rotation_path()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._sig = None
            self._records = {t: CARecord(active=(dict(k),)) for t, k in _INITIAL_SETS.items()}
            return
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if sig != self._sig or not self._records:
            data = json.loads(path.read_text())
            self._records = {t: CARecord.from_json(data[t]) for t in _INITIAL_SETS}
            self._sig = sig

    def _write(self, records: dict[str, CARecord]) -> None:
        text = json.dumps({t: r.to_json() for t, r in records.items()}, indent=2, sort_keys=True)
        atomic_write(self._rotation_path(), text + "\n", 0o600)
        self._reload()

    def _new_key_set(self, ca_type: str) -> tuple[str, dict[str, str]]:
        rotation_id = str(uuid.uuid4())
        ssh_stem, tls_stem = f"{ca_type}_ca.{rotation_id[:8]}", f"tls_{ca_type}_ca.{rotation_id[:8]}"
        key = asyncssh.generate_private_key("ssh-ed25519", comment=ssh_stem)
        atomic_write(self._state.ca_dir / ssh_stem, key.export_private_key("openssh"), 0o600)
        create_tls_ca(self._state.ca_dir, self.cluster, tls_stem)
        return rotation_id, {"ssh": ssh_stem, "tls": tls_stem}

    def _ssh(self, stem: str) -> asyncssh.SSHKey:
        if stem not in self._ssh_keys:
            self._ssh_keys[stem] = asyncssh.read_private_key(self._state.ca_dir / stem)
        return self._ssh_keys[stem]

    def _tls_pair(self, stem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if stem not in self._tls:
            ca = self._state.ca_dir
            key = serialization.load_pem_private_key((ca / f"{stem}.key").read_bytes(), None)
            cert = x509.load_pem_x509_certificate((ca / f"{stem}.pem").read_bytes())
            self._tls[stem] = (key, cert)  # type: ignore[assignment]
        return self._tls[stem]

    # ---- the signing keys, by their historical names
    @property
    def user_ca(self) -> asyncssh.SSHKey:
        """The user CA's current signing key."""
        return self.keys("user").signing

    @property
    def host_ca(self) -> asyncssh.SSHKey:
        """The host CA's current signing key."""
        return self.keys("host").signing

    @property
    def tls_ca_key(self) -> ec.EllipticCurvePrivateKey:
        return self.keys("host").signing_tls_key

    @property
    def tls_ca_cert(self) -> x509.Certificate:
        return self.keys("host").signing_tls_cert

    @property
    def tls_ca_pem(self) -> bytes:
        return self.tls_ca_cert.public_bytes(serialization.Encoding.PEM)

    # ---- exports (tctl auth export): one line per trusted key, active first
    def export_user(self) -> str:
        """``cert-authority <key> clustername=<c>&type=user`` (sshd TrustedUserCAKeys after sed)."""
        return "".join(
            f"cert-authority {public_line(k)} clustername={self.cluster}&type=user\n"
            for k in self.keys("user").trusted
        )

    def export_host(self) -> str:
        """``@cert-authority *.<cluster> <key> type=host`` for known_hosts."""
        return "".join(
            f"@cert-authority *.{self.cluster} {public_line(k)} type=host\n"
            for k in self.keys("host").trusted
        )

    def export_tls(self) -> str:
        """The host CA's TLS certificates (PEM), active first."""
        return b"".join(self.keys("host").trusted_tls_pem).decode()

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
        user_ca = self.user_ca
        return _TeleportUserCert.generate(
            user_ca,
            cert_alg,
            key,
            0,
            CERT_TYPE_USER,
            user.name,
            principals,
            now - _BACKDATE_S,
            now + ttl_s,
            options,
            user_ca.sig_algorithms[0],
            None,
        )

    def sign_host(
        self, key: asyncssh.SSHKey, principals: list[str], key_id: str, ttl_s: int,
        ca: asyncssh.SSHKey | None = None,
    ) -> asyncssh.SSHCertificate:
        """A host certificate for ``key`` valid for exactly ``principals``.

        Signed by the host CA's signing key, or by ``ca`` (a server's own
        certificate: ``keys("host").presented``).
        """
        now = int(time.time())
        return (ca or self.host_ca).generate_host_certificate(
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
        keys = self.keys("user")
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(keys.signing_tls_cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=_BACKDATE_S))
            .not_valid_after(now + dt.timedelta(seconds=ttl_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
            .add_extension(authority_key_id(keys.signing_tls_cert), critical=False)
            .sign(keys.signing_tls_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def https_identity(
        self, out_dir: Path, name: str = "https", issuer: tuple[Any, x509.Certificate] | None = None
    ) -> tuple[Path, Path]:
        """Write a fresh HTTPS key + certificate for 127.0.0.1/localhost; return their paths.

        Signed by the cluster's web TLS CA (not rotated: see the class
        docstring), or by ``issuer`` (key, certificate); written as
        ``<name>.key`` and ``<name>.pem``.
        """
        issuer_key, issuer_cert = issuer or self._tls_pair("tls_ca")
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


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AuthorityKeyIdentifier extension naming ``issuer`` (as Go's x509 always adds).

    Every TLS CA of a cluster has the same subject (a rotation's old and new
    ones too), so this is what lets a verifier pick the right one of two.
    """
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def create_tls_ca(ca_dir: Path, cluster: str, stem: str = "tls_ca", common_name: str | None = None) -> None:
    """A self-signed TLS CA as ``<stem>.key``/``<stem>.pem`` in ``ca_dir``; named as the
    cluster (what Teleport's TLS CAs are), or ``common_name`` (another CA's stand-in)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = _cluster_name(cluster) if common_name is None else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )
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
        ca_dir / f"{stem}.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    atomic_write(ca_dir / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _rotation_text(rotation: Rotation) -> str:
    """A CA's rotation as ``tctl status`` shows it."""
    if rotation.state == "in_progress":
        return f"in progress (mode: {rotation.mode}, phase: {rotation.phase})"
    if not rotation.last_rotated:
        return "standby (never rotated)"
    when = dt.datetime.fromtimestamp(rotation.last_rotated, dt.timezone.utc)
    return f"standby (last rotated: {when:%Y-%m-%d %H:%M:%S} UTC)"


def _tls_pin(cert: x509.Certificate) -> str:
    """Teleport's CA pin: ``sha256:`` + hex SHA-256 of the SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def format_status(authority: Authority) -> str:
    """``tctl status``: the cluster, its CA pins, each CA's rotation and key rows."""
    host = authority.keys("host")
    rows = [("Cluster", authority.cluster)]
    rows += [("CA pins" if i == 0 else "", _tls_pin(c)) for i, c in enumerate(host.trusted_tls)]
    width = max(len(r[0]) for r in rows) + 1
    out = [f"{a:<{width}} {b}".rstrip() for a, b in rows]
    out.append("")
    for ca_type in ("host", "user"):
        keys = authority.keys(ca_type)
        out.append(f"{ca_type:<5} {_rotation_text(keys.rotation)}")
        n_active = len(authority.records()[ca_type].active)
        for i, key in enumerate(keys.trusted):
            role = "active" if i < n_active else "trusted"
            fp = key.get_fingerprint("sha256")
            out.append(f"      SSH {role:<7} {key.get_algorithm()} {fp}")
    return "\n".join(out) + "\n"
