"""Errors raised by the tsh library.

Every error carries a one-line, user-facing message (``str(err)``) and the
exit status the command line uses for it. The library never prints; the CLI
layer prints ``error: <message>`` on stderr and exits with ``exit_code``.

    TshError
    ├── UsageError              bad input from the user (exit 2)
    │   └── InvalidNameError    a name that cannot be written safely into
    │                           ssh_config or known_hosts
    ├── NotLoggedInError        no profile, or its certificate has expired
    ├── ProfileError            a profile on disk is missing, corrupt or unsafe
    ├── ProxyError              the proxy's web API could not be used
    │   ├── ProxyConnectionError    unreachable, refused, timed out
    │   ├── ProxyTLSError           TLS verification failed
    │   ├── ProxyResponseError      not a Teleport proxy, or a malformed answer
    │   └── AccessDeniedError       wrong user name, password or OTP (HTTP 403)
    ├── SSOError                a single sign-on login failed (the identity provider
    │                           refused, its answer was not valid, or no answer came)
    ├── CertificateError        a certificate failed the client's own checks
    ├── AgentError              the ssh-agent could not be used
    ├── SSHError                the SSH proxy refused or dropped a connection
    └── AuthAPIError            a cluster's auth API (gRPC, through the proxy)
                                refused a call or could not be reached

Warnings are not errors: an operation that succeeded returns them as
:class:`TshWarning` values, each with a stable ``code`` a program can test
and a one-line ``message`` (``str(warning)``) for people.
"""

from __future__ import annotations

# namedtuple, not NamedTuple or a dataclass: typing and dataclasses cost
# start-up time, and this module is imported by every command.
from collections import namedtuple

__all__ = [
    "TshWarning",
    "TshError",
    "UsageError",
    "InvalidNameError",
    "NotLoggedInError",
    "ProfileError",
    "ProxyError",
    "ProxyConnectionError",
    "ProxyTLSError",
    "ProxyResponseError",
    "AccessDeniedError",
    "SSOError",
    "CertificateError",
    "AgentError",
    "SSHError",
    "AuthAPIError",
]


class TshError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code = 1


class UsageError(TshError):
    """The user gave an argument that cannot work."""

    exit_code = 2


class InvalidNameError(UsageError):
    """A cluster, host, login or path that is unsafe to write into OpenSSH files."""


class NotLoggedInError(TshError):
    """There is no usable profile (never logged in, logged out, or expired).

    ``proxy`` is the proxy to log in to again (``HOST:PORT``), when known, and
    ``"<proxy>"`` when any will do; None when logging in would not help.
    """

    def __init__(self, message: str, proxy: str | None = None) -> None:
        super().__init__(message)
        self.proxy = proxy


class ProfileError(TshError):
    """A profile on disk is missing, corrupt, or stored unsafely (e.g. via a symlink)."""


class ProxyError(TshError):
    """The proxy's HTTPS API could not be used."""


class ProxyConnectionError(ProxyError):
    """The proxy could not be reached."""


class ProxyTLSError(ProxyError):
    """The proxy's TLS certificate could not be verified (``verification``), or TLS failed."""

    def __init__(self, message: str, verification: bool = False) -> None:
        super().__init__(message)
        self.verification = verification


class ProxyResponseError(ProxyError):
    """The proxy answered with something that is not a valid Teleport response."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AccessDeniedError(ProxyResponseError):
    """The proxy refused the credentials (HTTP 403)."""


class SSOError(TshError):
    """A single sign-on login failed: the identity provider refused (``err=``), its
    answer could not be decrypted or checked, or the browser never came back."""


class CertificateError(TshError):
    """A certificate from the proxy failed the client's checks."""


class AgentError(TshError):
    """The ssh-agent refused or could not hold a key."""


class SSHError(TshError):
    """An SSH connection to the proxy failed."""


class TshWarning(namedtuple("_TshWarningFields", ["code", "message"])):
    """Something that went wrong without failing the operation: ``code`` and ``message``.

    Codes are stable; the messages may be reworded. ``str()`` is the message.

    ``no-agent``           no ssh-agent is running (``SSH_AUTH_SOCK`` is not set)
    ``agent-unsupported``  the agent looks unable to hold certificates (gpg-agent)
    ``agent-failed``       the agent refused or failed; the key is kept elsewhere
    ``no-keyring``         no OS keyring took a key kept off disk (agent only)
    """

    __slots__ = ()
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


class AuthAPIError(TshError):
    """A cluster's auth API refused a call, or could not be reached or trusted.

    ``status`` is the gRPC status name the auth server answered with
    (``"UNIMPLEMENTED"``, ``"NOT_FOUND"``, ``"PERMISSION_DENIED"``, ...), or
    ``"UNAVAILABLE"`` when no answer came.
    """

    def __init__(self, message: str, status: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.status = status
