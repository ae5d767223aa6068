"""Render and merge the ``@cert-authority`` lines of tsh's known_hosts (pure).

Section 8 of teleport-wire.md: one line per host CA key,

    @cert-authority <proxyhost>,<cluster>,*.<cluster> <keytype> <base64> type=host

with the proxy host first, because that is how tsh attributes a line to a
proxy. A login replaces every line of its proxy with the CA keys it just
received, so re-logins never duplicate lines and rotated-out CA keys go away;
lines of other proxies and anything else in the file are kept as they are.

Every name (through ``_names``) and key is validated before it is written:
the cluster name comes from the proxy, and a name like ``*`` or one with a
space or a newline would make OpenSSH trust the cluster's CA for unrelated hosts.
"""

from __future__ import annotations

import re

from ._exceptions import ProxyResponseError
from ._names import validate_cluster_name, validate_host

__all__ = ["ca_lines", "merge_known_hosts"]

_KEY_TYPE = re.compile(r"(?:ssh|ecdsa-sha2|sk-ssh|sk-ecdsa-sha2)-[a-z0-9@.-]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _check_key(key_line: str, cluster: str) -> str:
    """``<type> <base64>`` of one authorized_keys-format CA key (comment dropped)."""
    parts = key_line.split()
    if (
        len(parts) < 2
        or not _KEY_TYPE.fullmatch(parts[0])
        or not _BASE64.fullmatch(parts[1])
        or "\n" in key_line.strip()
    ):
        raise ProxyResponseError(
            f"malformed response from the proxy: bad host CA key for {cluster}"
        )
    return f"{parts[0]} {parts[1]}"


def ca_lines(proxy_host: str, cluster: str, keys: list[str] | tuple[str, ...]) -> list[str]:
    """The known_hosts lines (without newline) trusting ``keys`` as ``cluster``'s host CA."""
    validate_host(proxy_host, "proxy host")
    validate_cluster_name(cluster)
    hosts = f"{proxy_host},{cluster},*.{cluster}"
    return [f"@cert-authority {hosts} {_check_key(k, cluster)} type=host" for k in keys]


def _proxy_of(line: str) -> str | None:
    """The proxy host a tsh-written ``@cert-authority`` line belongs to (its first host)."""
    parts = line.split()
    if len(parts) >= 3 and parts[0] == "@cert-authority":
        return parts[1].split(",")[0]
    return None


def merge_known_hosts(existing: str, proxy_host: str, new_lines: list[str]) -> str:
    """Replace ``proxy_host``'s lines in ``existing`` with ``new_lines`` (deduplicated).

    Other lines keep their order; the result ends with a newline (or is empty).
    """
    kept: list[str] = []
    seen: set[str] = set()
    for line in existing.splitlines():
        if _proxy_of(line) == proxy_host or not line.strip():
            continue
        if line not in seen:
            kept.append(line)
            seen.add(line)
    for line in new_lines:
        if line not in seen:
            kept.append(line)
            seen.add(line)
    return "".join(f"{line}\n" for line in kept)
