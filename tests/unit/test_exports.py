"""The public surface of ``import tsh``: pinned, documented, discoverable (as httpx's test)."""

from __future__ import annotations

import inspect

import tsh

PUBLIC = [
    "AccessDeniedError", "AgentError", "AsyncClient", "AuthAPIError", "CertificateError", "Client",
    "ClusterInfo", "NodeInfo",
    "InvalidNameError", "LoginRequest", "LoginResult", "LogoutResult", "NotLoggedInError",
    "Password", "Profile", "ProfileError", "ProfilePaths", "ProfileStore", "ProxyConnection",
    "ProxyConnectionError", "ProxyError", "ProxyResponseError", "ProxyTLSError", "RunResult",
    "SSHError", "SSO", "SSOError", "TshError", "TshWarning", "UsageError", "__version__",
    "ensure_agent_key", "login", "logout_all", "logout_user",
]  # fmt: skip


def test_all_is_pinned() -> None:
    assert sorted(tsh.__all__) == sorted(PUBLIC)


def test_every_public_name_resolves_is_documented_and_says_tsh() -> None:
    for name in tsh.__all__:
        if name == "__version__":
            continue
        value = getattr(tsh, name)
        assert inspect.getdoc(value), f"tsh.{name} has no docstring"
        assert value.__module__ == "tsh", (name, value.__module__)


def test_public_methods_are_documented() -> None:
    for cls in (tsh.Client, tsh.AsyncClient, tsh.ProxyConnection, tsh.ProfileStore):
        for name, member in vars(cls).items():
            if not name.startswith("_") and callable(member):
                assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"


def test_dir_lists_the_lazy_names() -> None:
    assert set(tsh.__all__) <= set(dir(tsh))


def test_client_and_async_client_have_the_same_methods() -> None:
    def methods(cls: type) -> set[str]:
        return {n for n, m in vars(cls).items() if not n.startswith("_") and callable(m)}

    # connect() hands out asyncssh's (async) connection objects, so only the async client has it.
    assert methods(tsh.AsyncClient) - {"connect", "aclose"} == methods(tsh.Client) - {"close"}
