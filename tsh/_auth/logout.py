"""`tsh logout`: remove one user's or every profile's files, keyring entries and agent keys.

Only what tsh-py created goes: agent keys whose comment is
``teleport:<proxy>:<cluster>:<user>`` for a proxy we have a profile or keys
for, keyring entries under our service name, and files in tsh's home (for
"log out everything", every entry except ``config/`` and ``azure/``, as real
tsh does). Agent trouble is a warning, never a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._core.profile import Profile
from .._exceptions import AgentError, ProfileError, TshWarning
from .._store import fs as _fs
from .._store.store import ProfileStore

__all__ = ["LogoutResult", "logout_user", "logout_all"]

#: Entries of tsh's home that "log out everything" keeps (real tsh's list, plus our lock).
_KEEP = {"config", "azure", ".lock"}


@dataclass
class LogoutResult:
    """Whether anything was logged out, and warnings for the CLI to print."""

    removed: bool
    warnings: list[TshWarning] = field(default_factory=list)


def _remove_tree(path: Path) -> bool:
    """Remove a file, symlink or directory tree (never following a symlink)."""
    if path.is_symlink() or path.is_file():
        return _fs.remove_file(path)
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False


def _cert_clusters(ssh_cert_dir: Path) -> set[str]:
    """Cluster names of the ``<cluster>-cert.pub`` files in a ``<user>-ssh`` directory."""
    if ssh_cert_dir.is_symlink() or not ssh_cert_dir.is_dir():
        return set()
    return {p.name[: -len("-cert.pub")] for p in ssh_cert_dir.glob("*-cert.pub")}


def _forget_keys(store: ProfileStore, proxy: str, user: str, clusters: set[str]) -> None:
    """Delete ``user``'s keyring entries, if they have any: call before removing key files.

    Only a `-k only` login (no private key on disk) puts a key into the keyring.
    """
    if not clusters or store.paths(proxy, user).private_key.exists():
        return
    from .._store import secrets as _secrets

    for cluster in clusters:
        _secrets.delete_key(proxy, user, cluster)


def _unload(sock: str, match: Callable[[str], bool], warnings: list[TshWarning]) -> int:
    from .._agent import agent as _agent

    if not sock:
        return 0
    try:
        return _agent.remove_from_agent(sock, match)
    except AgentError as e:
        warnings.append(TshWarning("agent-failed", f"{e}; our keys may still be in the ssh-agent"))
        return 0


def _load_profile(store: ProfileStore, proxy: str) -> Profile | None:
    try:
        return store.load(proxy)
    except ProfileError:
        return None


def logout_user(
    store: ProfileStore, proxy_host: str, user: str, environ: Mapping[str, str] | None = None
) -> LogoutResult:
    """Remove ``user``'s keys for ``proxy_host`` from disk, keyring and agent.

    ``removed`` is False when that user was not logged in to that proxy.
    """
    from .._agent import agent as _agent
    from .._core.knownhosts import merge_known_hosts

    environ = os.environ if environ is None else environ
    result = LogoutResult(removed=False)
    if not store.home.is_dir():
        return result
    paths = store.paths(proxy_host, user)
    with store.transaction():
        profile = _load_profile(store, proxy_host)
        ours = profile is not None and profile.user == user
        clusters = _cert_clusters(paths.ssh_cert_dir)
        if ours:
            assert profile is not None
            clusters |= {profile.cluster, *profile.clusters}
        _forget_keys(store, proxy_host, user, clusters)
        files = [
            paths.private_key,
            paths.public_key,
            paths.tls_key,
            paths.tls_cert,
            paths.tls_cert_legacy,
            paths.ssh_cert_dir,
        ]
        for path in files:
            result.removed |= _remove_tree(path)
        if ours:
            result.removed |= _fs.remove_file(paths.profile_file)
            if store.current_name() == proxy_host:
                _fs.remove_file(paths.current_profile)
        others = paths.keys_dir.is_dir() and any(
            p.name.endswith("-ssh") for p in paths.keys_dir.iterdir()
        )
        if not others and paths.keys_dir.is_dir() and not paths.keys_dir.is_symlink():
            shutil.rmtree(paths.keys_dir)
            try:
                known = _fs.read_text(paths.known_hosts)
            except FileNotFoundError:
                pass
            else:
                _fs.atomic_write(paths.known_hosts, merge_known_hosts(known, proxy_host, []))

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
    with store.transaction():
        profiles = store.list()
        identities: set[tuple[str, str, str]] = set()
        for profile in profiles:
            for cluster in {profile.cluster, *profile.clusters}:
                identities.add((profile.proxy_host, profile.user, cluster))
        keys_root = store.home / "keys"
        proxies = {p.proxy_host for p in profiles}
        if keys_root.is_dir() and not keys_root.is_symlink():
            for proxy_dir in keys_root.iterdir():
                if not proxy_dir.is_dir() or proxy_dir.is_symlink():
                    continue
                proxies.add(proxy_dir.name)
                for ssh_dir in proxy_dir.glob("*-ssh"):
                    user = ssh_dir.name[: -len("-ssh")]
                    for cluster in _cert_clusters(ssh_dir):
                        identities.add((proxy_dir.name, user, cluster))
        for proxy, user, cluster in identities:
            _forget_keys(store, proxy, user, {cluster})

        def match(comment: str) -> bool:
            parsed = _agent.parse_agent_comment(comment)
            return parsed is not None and parsed[0] in proxies

        removed = _unload(environ.get("SSH_AUTH_SOCK", ""), match, result.warnings) > 0
        for entry in store.home.iterdir():
            if entry.name not in _KEEP:
                removed |= _remove_tree(entry)
        result.removed = removed
    return result
