"""tsh._core.certs: the client's own checks of issued certificates."""

from __future__ import annotations

import time

import asyncssh
import pytest
from _login_fakes import FakeProxy, sign_user_cert
from cryptography.hazmat.primitives import serialization

from tsh import CertificateError
from tsh._core.certs import CLOCK_SKEW, check_user_cert

NOW = int(time.time())


@pytest.fixture(scope="module")
def ca():  # type: ignore[no-untyped-def]
    return FakeProxy().user_ca


@pytest.fixture(scope="module")
def key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


def test_good_cert_facts(ca, key: str) -> None:  # type: ignore[no-untyped-def]
    cert = sign_user_cert(
        ca,
        key,
        "alice",
        ["root", "-teleport-internal-join"],
        NOW - 60,
        NOW + 3600,
        roles=["access", "editor"],
    )
    facts = check_user_cert(cert, key, NOW)
    assert facts.principals == ("root", "-teleport-internal-join")
    assert facts.roles == ("access", "editor")
    assert facts.key_id == "alice"
    assert facts.valid_before == NOW + 3600
    assert "permit-pty" in facts.extensions and "teleport-roles" in facts.extensions


def test_someone_elses_key(ca, key: str) -> None:  # type: ignore[no-untyped-def]
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    cert = sign_user_cert(ca, other, "alice", ["root"], NOW - 60, NOW + 3600)
    with pytest.raises(CertificateError, match="different key"):
        check_user_cert(cert, key, NOW)


def test_no_principals(ca, key: str) -> None:  # type: ignore[no-untyped-def]
    cert = sign_user_cert(ca, key, "alice", [], NOW - 60, NOW + 3600)
    with pytest.raises(CertificateError, match="no principals"):
        check_user_cert(cert, key, NOW)


def test_host_cert(ca, key: str) -> None:  # type: ignore[no-untyped-def]
    cert = sign_user_cert(
        ca,
        key,
        "alice",
        ["root"],
        NOW - 60,
        NOW + 3600,
        cert_type=serialization.SSHCertificateType.HOST,
    )
    with pytest.raises(CertificateError, match="host certificate"):
        check_user_cert(cert, key, NOW)


@pytest.mark.parametrize(
    ("after", "before", "ok"),
    [
        (NOW - 3600, NOW - CLOCK_SKEW - 1, False),  # expired beyond the skew
        (NOW - 3600, NOW - CLOCK_SKEW + 5, True),  # expired within the skew
        (NOW + CLOCK_SKEW - 5, NOW + 3600, True),  # starts within the skew
        (NOW + CLOCK_SKEW + 5, NOW + 3600, False),  # starts later: our clock is behind
    ],
    # Names, not the times: each pytest-xdist worker collects at its own NOW.
    ids=["expired-beyond-skew", "expired-within-skew", "starts-within-skew", "starts-later"],
)
def test_validity_window(ca, key: str, after: int, before: int, ok: bool) -> None:  # type: ignore[no-untyped-def]
    cert = sign_user_cert(ca, key, "alice", ["root"], after, before)
    if ok:
        check_user_cert(cert, key, NOW)
    else:
        with pytest.raises(CertificateError, match="clock"):
            check_user_cert(cert, key, NOW)


@pytest.mark.parametrize("junk", ["", "ssh-ed25519-cert-v01@openssh.com AAAA", "hello world"])
def test_garbage(key: str, junk: str) -> None:
    with pytest.raises(CertificateError):
        check_user_cert(junk, key, NOW)


def test_tampered_signature(ca, key: str) -> None:  # type: ignore[no-untyped-def]
    import base64

    cert = sign_user_cert(ca, key, "alice", ["root"], NOW - 60, NOW + 3600)
    kind, blob = cert.split()[:2]
    raw = bytearray(base64.b64decode(blob))
    raw[-5] ^= 1
    with pytest.raises(CertificateError):
        check_user_cert(f"{kind} {base64.b64encode(bytes(raw)).decode()}", key, NOW)
