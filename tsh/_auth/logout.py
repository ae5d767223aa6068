"""`tsh logout`: remove one user's or every profile's files, keyring entries and agent keys.

Only what tsh-py created goes: agent keys whose comment is
``teleport:<proxy>:<cluster>:<user>`` for a proxy we have a profile or keys
for, keyring entries under our service name, and files in tsh's home (for
"log out everything", every entry except ``config/`` and ``azure/``, as real
tsh does). The files and keyring entries are ProfileStore's to remove; agent
trouble is a warning, never a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .._exceptions import AgentError, TshWarning
from .._openssh.reuse import close_masters
from .._store.store import ProfileStore

__all__ = ["LogoutResult", "logout_user", "logout_all"]


@dataclass
class LogoutResult:
    """Whether anything was logged out, and warnings for the CLI to print."""

    removed: bool
    warnings: list[TshWarning] = field(default_factory=list)


def _unload(sock: str, match: Callable[[str], bool], warnings: list[TshWarning]) -> int:
    from .._agent import agent as _agent

    if not sock:
        return 0
    try:
        return _agent.remove_from_agent(sock, match)
    except AgentError as e:
        warnings.append(TshWarning("agent-failed", f"{e}; our keys may still be in the ssh-agent"))
        return 0


def logout_user(
    store: ProfileStore, proxy_host: str, user: str, environ: Mapping[str, str] | None = None
) -> LogoutResult:
    """Remove ``user``'s keys for ``proxy_host`` from disk, keyring and agent.

    ``removed`` is False when that user was not logged in to that proxy.
    """
    from .._agent import agent as _agent

    environ = os.environ if environ is None else environ
    result = LogoutResult(removed=False)
    if not store.home.is_dir():
        return result
    paths = store.paths(proxy_host, user)
    if paths.reuse_tag.is_file():  # its hop masters take no new session (running ones finish)
        close_masters(str(paths.mux_dir), paths.reuse_tag.read_text())
    result.removed = store.remove_user(proxy_host, user) is not None

    def match(comment: str) -> bool:
        parsed = _agent.parse_agent_comment(comment)
        return parsed is not None and parsed[0] == proxy_host and parsed[2] == user

    result.removed |= _unload(environ.get("SSH_AUTH_SOCK", ""), match, result.warnings) > 0
    return result


def logout_all(store: ProfileStore, environ: Mapping[str, str] | None = None) -> LogoutResult:
    """Remove every profile, key, keyring entry and our agent keys.

    ``removed`` is False when there was nothing to remove.
    """
    from .._agent import agent as _agent

    environ = os.environ if environ is None else environ
    result = LogoutResult(removed=False)
    if not store.home.is_dir():
        return result
    close_masters(os.path.join(store.home, "mux"))  # before their sockets go
    proxies = store.remove_all()
    result.removed = proxies is not None

    def match(comment: str) -> bool:
        parsed = _agent.parse_agent_comment(comment)
        return parsed is not None and proxies is not None and parsed[0] in proxies

    result.removed |= _unload(environ.get("SSH_AUTH_SOCK", ""), match, result.warnings) > 0
    return result
