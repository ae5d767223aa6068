"""tsh-py: a Python client for Teleport-style proxies, driving OpenSSH.

Start with :class:`tsh.Client` (blocking) or :class:`tsh.AsyncClient`::

    import tsh

    with tsh.Client() as client:                      # the current profile
        print(client.run("node1", "uptime", login="root").stdout)

The public library surface is re-exported here; everything in ``_``-modules is
private. The `tsh` command line (``tsh.cli``) is a thin layer over it.

Names other than the exceptions are loaded on first use (PEP 562), so that
importing ``tsh.cli`` for a quick command costs only what that command needs.
"""

from __future__ import annotations

from ._exceptions import (
    AccessDeniedError,
    AgentError,
    AuthAPIError,
    CertificateError,
    InvalidNameError,
    NotLoggedInError,
    ProfileError,
    ProxyConnectionError,
    ProxyError,
    ProxyResponseError,
    ProxyTLSError,
    SSHError,
    SSOError,
    TshError,
    TshWarning,
    UsageError,
)
from ._version import __version__

#: public name -> private module that defines it
_LAZY = {
    "AsyncClient": "._client",
    "Client": "._client",
    "Password": "._client",
    "SSO": "._client",
    "ProxyConnection": "._connect",
    "RunResult": "._connect",
    "Profile": "._core.profile",
    "ClusterInfo": "._core.listing",
    "NodeInfo": "._core.listing",
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
    "SSOError",
    "CertificateError",
    "AgentError",
    "SSHError",
    "AuthAPIError",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tsh' has no attribute {name!r}")
    # __import__, not importlib.import_module: importlib (with warnings) costs
    # start-up time that `tsh proxy ssh` pays on every connection.
    value = getattr(__import__(__name__ + module, fromlist=[name]), name)
    _public(value)
    globals()[name] = value
    return value


def _public(value: object) -> None:
    # As httpx does: reprs and help() say tsh.Client, not tsh._client.Client.
    if hasattr(value, "__module__") and not isinstance(value, str):
        try:
            value.__module__ = __name__
        except (AttributeError, TypeError):
            pass


for _name in __all__:
    if _name in globals() and _name != "__version__":
        _public(globals()[_name])
del _name


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
