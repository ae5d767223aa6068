"""CA rotation facts a client can check, and what to tell the user (pure).

docs/protocol.md §14. During a rotation a cluster trusts two keys per CA;
after it only the new one. The client can learn what the cluster trusts *now*
from the public export (``GET /webapi/auth/export?type=host|user``, no
credentials) and compare it with what it holds: the host CA lines of its
known_hosts, the CA that signed its user certificate, and (from ``ssh -v``)
the CA that signed a node's host certificate. Every explanation here is
decided from such facts, never guessed from an error text alone.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .knownhosts import CAKey, parse_ca_key

__all__ = [
    "Explanation",
    "Facts",
    "explain",
    "fingerprint",
    "known_host_cas",
    "parse_export",
    "trust_warnings",
]

#: What went wrong, for callers that act on it (a relogin fixes the first two).
Kind = Literal["host-ca-changed", "user-ca-rotated", "node-host-cert-stale", "node-user-ca-stale"]

_RELOGIN: frozenset[Kind] = frozenset({"host-ca-changed", "user-ca-rotated"})


@dataclass(frozen=True)
class Explanation:
    """One line for the user and whether a fresh login fixes it."""

    kind: Kind
    message: str

    @property
    def relogin_fixes(self) -> bool:
        return self.kind in _RELOGIN


def fingerprint(key: str) -> str:
    """OpenSSH's ``SHA256:<base64, unpadded>`` fingerprint of a ``<type> <base64>`` key."""
    blob = base64.b64decode(parse_ca_key(key).split(" ")[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_export(text: str) -> tuple[CAKey, ...]:
    """The keys of a ``tctl auth export`` / ``/webapi/auth/export`` answer, in order.

    Lines are ``cert-authority <key> <comment>`` (user) or ``@cert-authority
    <hosts> <key> <comment>`` (host); anything else is refused.

    Raises:
        ValueError: a line that is neither.
    """
    keys: list[CAKey] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "cert-authority" and len(parts) >= 3:
            keys.append(parse_ca_key(" ".join(parts[1:3])))
        elif parts[0] == "@cert-authority" and len(parts) >= 4:
            keys.append(parse_ca_key(" ".join(parts[2:4])))
        else:
            raise ValueError("not a CA export line")
    return tuple(keys)


def known_host_cas(known_hosts: str, cluster: str) -> tuple[CAKey, ...]:
    """The host CA keys a known_hosts text trusts for ``*.<cluster>`` (in file order)."""
    wanted = f"*.{cluster}"
    keys: list[CAKey] = []
    for line in known_hosts.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "@cert-authority" and wanted in parts[1].split(","):
            try:
                keys.append(parse_ca_key(" ".join(parts[2:4])))
            except ValueError:
                continue
    return tuple(keys)


@dataclass(frozen=True)
class Facts:
    """What the client found out; None where it could not tell.

    ``trusted_host`` / ``trusted_user``: the cluster's export now (None: the
    proxy could not be asked). ``known_host``: our known_hosts keys for the
    cluster. ``cert_ca``: the key that signed our user certificate.
    ``node_host_ca``: fingerprint of the CA of the node's host certificate
    (``ssh -v``). ``proxy_untrusted``: the hop refused the proxy's host key.
    ``host_refused``: ssh refused the node's host key. ``node_denied``: the
    node (not the proxy) refused our certificate although its login matched.
    ``proxy_denied``: the proxy refused our certificate.
    """

    trusted_host: Sequence[str] | None
    trusted_user: Sequence[str] | None
    known_host: Sequence[str] = ()
    cert_ca: str | None = None
    node: str = "the node"
    node_host_ca: str | None = None
    proxy_untrusted: bool = False
    host_refused: bool = False
    proxy_denied: bool = False
    node_denied: bool = False


def _fps(keys: Iterable[str]) -> set[str]:
    return {fingerprint(k) for k in keys}


def explain(f: Facts) -> Explanation | None:
    """The rotation explanation the facts support, or None (not a rotation problem)."""
    if f.trusted_host is not None and (f.proxy_untrusted or f.host_refused):
        trusted, known = _fps(f.trusted_host), _fps(f.known_host)
        node_ca = f.node_host_ca
        if f.host_refused and node_ca is not None and node_ca not in trusted:
            return Explanation(
                "node-host-cert-stale",
                f"{f.node}'s host certificate is not signed by a host CA the cluster trusts now "
                "(left on a rotated-away CA?): the node's admin must re-sign it "
                "(tctl auth sign --host=... --format=openssh) and restart sshd",
            )
        if (node_ca is not None and node_ca in trusted and node_ca not in known) or (
            f.proxy_untrusted and not trusted <= known
        ):
            return Explanation(
                "host-ca-changed", "the cluster's host CA has changed (CA rotation): run tsh login"
            )
    if f.trusted_user is not None and f.cert_ca is not None and (f.proxy_denied or f.node_denied):
        if fingerprint(f.cert_ca) not in _fps(f.trusted_user):
            return Explanation(
                "user-ca-rotated",
                "your certificate is signed by a user CA the cluster no longer trusts "
                "(CA rotation): run tsh login",
            )
        if f.node_denied:
            return Explanation(
                "node-user-ca-stale",
                f"{f.node} does not trust the cluster's current user CA (CA rotation): "
                "re-export the user CA to the node with `tctl auth export --type=user` "
                "(its TrustedUserCAKeys file)",
            )
    return None


def trust_warnings(
    who: str,
    cert_ca: str | None,
    known_host: Sequence[str],
    trusted_host: Sequence[str],
    trusted_user: Sequence[str],
) -> list[str]:
    """`tsh status`'s flags for one profile (``who`` = ``user@proxy``), from the cluster's export.

    A certificate whose CA the cluster no longer trusts is dead; a host CA the
    cluster trusts and known_hosts lacks means the proxy and nodes will soon
    (or already) present certificates this profile refuses.
    """
    warnings = []
    if cert_ca is not None and fingerprint(cert_ca) not in _fps(trusted_user):
        warnings.append(
            f"the certificate for {who} is signed by a user CA the cluster no longer trusts "
            "(CA rotation): run tsh login"
        )
    if trusted_host and not _fps(trusted_host) <= _fps(known_host):
        warnings.append(
            f"the cluster of {who} trusts a host CA that known_hosts lacks (CA rotation): "
            "run tsh login"
        )
    return warnings
