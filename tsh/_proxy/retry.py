"""What is retried, and how long to wait (pure).

An sshd over its ``MaxStartups`` (or a busy proxy) drops new connections
before they authenticate. Such a drop ends an attempt before the node's
``SSH-`` version line arrives with nothing (or OpenSSH's "connection closed")
on the hop's stderr; it is retried after a jittered backoff. Authentication
failures and untrusted proxies are not, and neither is anything after the
node spoke.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "MAX_ATTEMPTS",
    "TUNNEL_PREFIX",
    "backoff_delays",
    "failure_message",
    "has_banner",
    "is_drop",
    "tls_failure",
    "without_mux_fallback",
]

#: Attempts in all (first try included) for drops before the node speaks.
MAX_ATTEMPTS = 8
#: Marks the one-line error of tsh's own TLS tunnel (tsh._proxy.tunnel) on the hop's stderr.
TUNNEL_PREFIX = "tsh-tunnel: "


def backoff_delays(
    attempts: int = MAX_ATTEMPTS,
    base: float = 0.05,
    cap: float = 2.0,
    rand: Callable[[], float] | None = None,
) -> list[float]:
    """Sleeps before each retry: "full jitter" exponential backoff.

    Delay *i* is uniform in [0, min(cap, base * 2**i)], so many clients that
    were dropped together do not come back together. ``rand`` defaults to
    random.random (imported only when a retry is due).
    """
    if rand is None:
        import random

        rand = random.random
    return [rand() * min(cap, base * 2**i) for i in range(attempts - 1)]


def has_banner(data: bytes) -> bool:
    """Has the node's SSH version line (``SSH-...``) arrived in ``data``?"""
    return data.startswith(b"SSH-") or b"\nSSH-" in data


def is_drop(stderr_text: str) -> bool:
    """Was an attempt that ended before the node spoke dropped (so worth a retry)?

    No text at all is the MaxStartups case (the node closed without a banner);
    a recording proxy reports a failed handshake with the node; OpenSSH reports
    a proxy that closed before authentication, or (a proxy that tears down the
    connection with the node's channel) after it.
    """
    if not stderr_text.strip():
        return True
    if tls_failure(stderr_text) is not None:
        return False
    return any(
        sign in stderr_text
        for sign in (
            "handshake failed",
            "kex_exchange_identification",
            "Connection reset by peer",
            "Connection closed by",
            "closed by remote host",
            # The transport under the hop (TLS routing's ProxyCommand) went away.
            "send disconnect: Broken pipe",
        )
    )


def without_mux_fallback(stderr_bytes: bytes) -> bytes:
    """A hop's stderr without OpenSSH's lines about a master that failed it
    (``mux_client_request_session: read from master failed: Broken pipe``).

    A hop riding a master whose connection died falls back to a connection of
    its own, and says so; once the node has spoken through that one, the line
    only alarms (the connection works).
    """
    lines = stderr_bytes.splitlines(keepends=True)
    return b"".join(line for line in lines if not line.startswith(b"mux_client_"))


def tls_failure(stderr_text: str) -> str | None:
    """The one-line reason tsh's TLS tunnel (TLS routing's ProxyCommand) gave on the
    hop's stderr, or None. Never a drop: a wrong certificate stays wrong."""
    for line in stderr_text.splitlines():
        if line.startswith(TUNNEL_PREFIX):
            return line[len(TUNNEL_PREFIX) :].strip()
    return None


def failure_message(
    stderr_text: str, proxy_addr: str, login: str, known_hosts: str
) -> str:
    """One line for an attempt that failed before the node spoke (and is not a drop)."""
    tls = tls_failure(stderr_text)
    if tls is not None:
        return tls
    if "Permission denied" in stderr_text:
        return (
            f"the proxy {proxy_addr} refused the certificate for login {login!r} "
            "(expired, or not one of your logins?)"
        )
    if "Host key verification failed" in stderr_text or "REMOTE HOST IDENTIFICATION" in stderr_text:
        return (
            f"the proxy {proxy_addr} is not trusted: its host certificate is not signed "
            f"by a CA in {known_hosts}; run tsh login again"
        )
    lines = [ln.strip() for ln in stderr_text.splitlines() if ln.strip()]
    return "; ".join(lines) if lines else f"the proxy {proxy_addr} closed the connection"
