"""tsh-py: a Python client for Teleport-style proxies, driving OpenSSH.

The public library surface is re-exported here; everything in ``_``-modules is
private. The `tsh` command line (``tsh.cli``) is a thin layer over it.

Names other than the exceptions are loaded on first use (PEP 562), so that
importing ``tsh.cli`` for a quick command costs only what that command needs.
"""

from __future__ import annotations

from ._exceptions import (
    AccessDeniedError,
    AgentError,
    CertificateError,
    InvalidNameError,
    NotLoggedInError,
    ProfileError,
    ProxyConnectionError,
    ProxyError,
    ProxyResponseError,
    ProxyTLSError,
    SSHError,
    TshError,
    TshWarning,
    UsageError,
)
from ._version import __version__

#: public name -> private module that defines it
_LAZY = {
    "Profile": "._core.profile",
    "ProfilePaths": "._store.layout",
    "ProfileStore": "._store.store",
    "LoginRequest": "._auth.login",
    "LoginResult": "._auth.login",
    "login": "._auth.login",
    "LogoutResult": "._auth.logout",
    "logout_user": "._auth.logout",
    "logout_all": "._auth.logout",
    "ensure_agent_key": "._agent.agent",
}

__all__ = [
    "__version__",
    *_LAZY,
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
    "CertificateError",
    "AgentError",
    "SSHError",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tsh' has no attribute {name!r}")
    # __import__, not importlib.import_module: importlib (with warnings) costs
    # start-up time that `tsh proxy ssh` pays on every connection.
    value = getattr(__import__(__name__ + module, fromlist=[name]), name)
    globals()[name] = value
    return value
