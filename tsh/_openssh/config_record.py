"""What `tsh config --update` wrote where, so `tsh login` can refresh it (pure).

`tsh config --update` records, per proxy, each ssh_config file it wrote the
generated block into, with the options it was rendered with and the
clusters it covered. After a login, a block whose cluster list differs from
the profile's is rendered again with the same options and replaced in place
(docs/protocol.md §14.x "Keeping the --update block current"); a block that
is no longer in the file is left out: tsh never appends one the user removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .config import BEGIN_MARKER, END_MARKER, merge

__all__ = [
    "UPDATE_ENV",
    "ConfigUpdate",
    "has_block",
    "parse_records",
    "refresh_text",
    "refresh_wanted",
    "render_records",
    "with_record",
]

#: Set to a false word (``no``, ``false``, ``0``, ``off``) to keep `tsh login`
#: from refreshing the blocks `tsh config --update` wrote.
UPDATE_ENV = "TELEPORT_UPDATE_SSH_CONFIG"

_FALSE = frozenset({"0", "no", "false", "off"})
_FORMS = frozenset({"tsh", "openssh"})


@dataclass(frozen=True)
class ConfigUpdate:
    """One `tsh config --update`: the file, the options, the clusters its block covers."""

    path: str
    port: int | None
    login: str | None
    proxy_command: str
    clusters: tuple[str, ...]


def refresh_wanted(flag: bool | None, environ_value: str | None) -> bool:
    """Whether login refreshes blocks: the flag if given, else ``TELEPORT_UPDATE_SSH_CONFIG``, else yes."""
    if flag is not None:
        return flag
    return (environ_value or "").strip().lower() not in _FALSE


def parse_records(text: str) -> list[ConfigUpdate]:
    """The records in ``text``; anything malformed is left out (the record is only a hint).

    Values are checked for their types only: the block is rendered again by
    tsh._openssh.config, which validates every name it writes.
    """
    try:
        data = json.loads(text)
    except ValueError:
        return []
    entries = data.get("updates") if isinstance(data, dict) else None
    out: list[ConfigUpdate] = []
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict):
            continue
        path, port, login = e.get("path"), e.get("port"), e.get("login")
        form, clusters = e.get("proxy_command"), e.get("clusters")
        if (
            isinstance(path, str) and path.startswith("/")
            and (port is None or (type(port) is int and 0 < port < 65536))
            and (login is None or isinstance(login, str))
            and form in _FORMS
            and isinstance(clusters, list) and all(isinstance(c, str) for c in clusters)
        ):  # fmt: skip
            out.append(ConfigUpdate(path, port, login, form, tuple(clusters)))
    return out


def render_records(records: list[ConfigUpdate]) -> str:
    """``records`` as the file's JSON text."""
    updates = [
        {
            "path": r.path,
            "port": r.port,
            "login": r.login,
            "proxy_command": r.proxy_command,
            "clusters": list(r.clusters),
        }
        for r in records
    ]
    return json.dumps({"version": 1, "updates": updates}, indent=2) + "\n"


def with_record(records: list[ConfigUpdate], record: ConfigUpdate) -> list[ConfigUpdate]:
    """``records`` with ``record`` in place of the one for the same file (or added)."""
    return [*(r for r in records if r.path != record.path), record]


def has_block(text: str, proxy_host: str) -> bool:
    """Whether ``text`` holds a complete generated block for ``proxy_host``."""
    begin = f"{BEGIN_MARKER}{proxy_host} by tsh"
    lines = [ln.rstrip("\r\n") for ln in text.splitlines()]
    if begin not in lines:
        return False
    return END_MARKER in lines[lines.index(begin) + 1 :]


def refresh_text(existing: str, block: str, proxy_host: str) -> str | None:
    """``existing`` with its generated block for ``proxy_host`` replaced by ``block``.

    None when there is nothing to do: no complete block for ``proxy_host`` (the
    user removed it, or broke its end marker), or the block is already
    ``block``. The bytes outside the block are kept as they are.
    """
    if not has_block(existing, proxy_host):
        return None
    new = merge(existing, block, proxy_host)
    return None if new == existing else new
