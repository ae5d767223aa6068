"""Client-side checks of the certificates the proxy issues, before anything is stored.

asyncssh parses and verifies the SSH certificate (signature, type, unknown
critical options); cryptography reads what asyncssh does not keep (the raw
extension names, Teleport's ``teleport-roles`` extension) and the TLS
certificate's issuer. We add the checks a client needs and asyncssh does not
make: the certificate is for *our* key, its principal list is not empty
(asyncssh treats an empty list as "any principal"; OpenSSH refuses it) and it
is valid now, allowing one minute of clock skew.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .._exceptions import CertificateError, InvalidNameError
from .names import ClusterName, Label, validate_cluster_name, validate_label

__all__ = ["CLOCK_SKEW", "CertFacts", "check_user_cert", "check_tls_cert", "describe_skew"]

#: Seconds of disagreement between our clock and the auth server's we tolerate.
CLOCK_SKEW = 60


@dataclass(frozen=True)
class CertFacts:
    """What status and config need to know about a checked SSH user certificate."""

    key_id: str
    principals: tuple[Label, ...]
    valid_after: int
    valid_before: int
    extensions: tuple[Label, ...]
    roles: tuple[Label, ...]


def _labels(kind: str, values: object) -> tuple[Label, ...]:
    """Strings from a certificate that `tsh status` shows: printable, one line each."""
    try:
        return tuple(validate_label(v, kind) for v in values)  # type: ignore[attr-defined]
    except InvalidNameError as e:
        raise CertificateError(f"the proxy issued a certificate with an {e}; refusing it") from None


def describe_skew(seconds: float) -> str:
    """``"3h2m"``-style rendering of a clock difference, for error messages."""
    seconds = int(abs(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _roles(value: bytes) -> tuple[str, ...]:
    """Roles from the ``teleport-roles`` extension: ``{"version":"v1","roles":[...]}``."""
    if len(value) >= 4 and int.from_bytes(value[:4], "big") == len(value) - 4:
        value = value[4:]  # the extension data is itself an SSH string (PROTOCOL.certkeys)
    try:
        data = json.loads(value)
    except ValueError:
        return ()
    roles = data.get("roles") if isinstance(data, dict) else None
    if not isinstance(roles, list):
        return ()
    return tuple(r for r in roles if isinstance(r, str))


def check_user_cert(cert_text: str, public_key_text: str, now: float) -> CertFacts:
    """Check that ``cert_text`` is a usable user certificate for ``public_key_text``.

    Args:
        cert_text: the certificate in authorized_keys format, as the proxy sent it.
        public_key_text: our public key in authorized_keys format.
        now: the current time (seconds since the epoch).

    Raises:
        CertificateError: with a one-line reason for any failed check.
    """
    from cryptography.hazmat.primitives.serialization import (
        SSHCertificate,
        SSHCertificateType,
        load_ssh_public_identity,
    )

    from .._asyncssh import asyncssh

    try:
        cert = asyncssh.import_certificate(cert_text.strip())
    except (asyncssh.KeyImportError, ValueError) as e:
        raise CertificateError(f"the proxy sent an unusable SSH certificate: {e}") from None
    if cert.is_x509:
        raise CertificateError("the proxy sent an X.509 certificate where an SSH one belongs")
    try:
        ours = asyncssh.import_public_key(public_key_text.strip())
    except (asyncssh.KeyImportError, ValueError) as e:  # our own key: a bug, not the proxy
        raise CertificateError(f"cannot read our public key: {e}") from None
    if cert.key.public_data != ours.public_data:
        raise CertificateError(
            "the proxy issued a certificate for a different key than ours; refusing it"
        )
    try:
        raw = load_ssh_public_identity(cert_text.strip().encode())
    except ValueError as e:
        raise CertificateError(f"the proxy sent an unusable SSH certificate: {e}") from None
    if not isinstance(raw, SSHCertificate) or raw.type != SSHCertificateType.USER:
        raise CertificateError("the proxy sent a host certificate where a user one belongs")
    principals = _labels("principal", [p.decode("utf-8", "replace") for p in raw.valid_principals])
    if not principals:
        raise CertificateError("the proxy issued a certificate with no principals; refusing it")

    valid_after, valid_before = int(raw.valid_after), int(raw.valid_before)
    if valid_before <= valid_after:
        raise CertificateError("the proxy issued a certificate with an empty validity period")
    if now >= valid_before + CLOCK_SKEW:
        raise CertificateError(
            "the proxy issued a certificate that has already expired: it ended "
            f"{describe_skew(now - valid_before)} ago by the local clock "
            "(if the clock is wrong, fix it)"
        )
    if now + CLOCK_SKEW < valid_after:
        raise CertificateError(
            "the proxy issued a certificate that is not valid yet: it starts in "
            f"{describe_skew(valid_after - now)}, so the local clock is probably behind: check it"
        )
    extensions = _labels(
        "extension name", sorted(k.decode("utf-8", "replace") for k in raw.extensions)
    )
    roles = _labels("role", _roles(raw.extensions.get(b"teleport-roles", b"")))
    return CertFacts(
        key_id=raw.key_id.decode("utf-8", "replace"),
        principals=principals,
        valid_after=valid_after,
        valid_before=valid_before,
        extensions=extensions,
        roles=roles,
    )


def check_tls_cert(pem: str, public_key_pem: str, now: float) -> ClusterName | None:
    """Check the TLS client certificate is for our key and valid now; return its issuer CN.

    The issuer's Common Name is the root cluster's name (None when absent).

    Raises:
        CertificateError: not PEM, for another key, or outside its validity period.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        ours = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError as e:
        raise CertificateError(f"the proxy sent an unusable TLS certificate: {e}") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != ours.public_bytes(*raw):
        raise CertificateError(
            "the proxy issued a TLS certificate for a different key than ours; refusing it"
        )
    if now >= cert.not_valid_after_utc.timestamp() + CLOCK_SKEW:
        raise CertificateError("the proxy issued a TLS certificate that has already expired")
    if now + CLOCK_SKEW < cert.not_valid_before_utc.timestamp():
        raise CertificateError(
            "the proxy issued a TLS certificate that is not valid yet; check the local clock"
        )
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    value = value if isinstance(value, str) else value.decode("utf-8", "replace")
    if not value:
        return None
    try:
        return validate_cluster_name(value)
    except InvalidNameError as e:
        raise CertificateError(f"the TLS certificate's issuer is not a cluster: {e}") from None
