"""Render and merge the ``@cert-authority`` lines of tsh's known_hosts (pure).

docs/protocol.md §6: one line per host CA key,

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
from collections.abc import Mapping, Sequence

from .._exceptions import ProxyResponseError
from .names import validate_cluster_name, validate_host

__all__ = ["CAKey", "ca_lines", "cluster_trust_lines", "merge_known_hosts", "parse_ca_key"]

_KEY_TYPE = re.compile(r"(?:ssh|ecdsa-sha2|sk-ssh|sk-ecdsa-sha2)-[a-z0-9@.-]{1,60}", re.ASCII)
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)


class CAKey(str):
    """``<keytype> <base64>`` of one CA public key: safe as the key part of a known_hosts line."""

    __slots__ = ()


def parse_ca_key(text: str) -> CAKey:
    """The ``<type> <base64>`` of an authorized_keys-format key line (its comment dropped).

    Raises:
        ValueError: not one line of ``<type> <base64> [comment]``.
    """
    if type(text) is CAKey:
        return text
    parts = text.strip().split(" ")
    if (
        len(parts) not in (2, 3)
        or not _KEY_TYPE.fullmatch(parts[0])
        or not _BASE64.fullmatch(parts[1])
        or (len(parts) == 3 and not parts[2].isprintable())
    ):
        raise ValueError("not an SSH public key")
    return CAKey(f"{parts[0]} {parts[1]}")


def ca_lines(proxy_host: str, cluster: str, keys: Sequence[str]) -> list[str]:
    """The known_hosts lines (without newline) trusting ``keys`` as ``cluster``'s host CA.

    Names and keys arrive parsed (HostName, ClusterName, CAKey) from the login
    answer; raw strings are checked here the same way.

    Raises:
        InvalidNameError: an unsafe proxy host or cluster name.
        ProxyResponseError: a key that is not ``<type> <base64>``.
    """
    hosts = f"{validate_host(proxy_host, 'proxy host')},{validate_cluster_name(cluster)},*.{cluster}"
    lines = []
    for key in keys:
        try:
            lines.append(f"@cert-authority {hosts} {parse_ca_key(key)} type=host")
        except ValueError:
            raise ProxyResponseError(
                f"malformed response from the proxy: bad host CA key for {cluster}"
            ) from None
    return lines


def cluster_trust_lines(
    proxy_host: str, root: str, host_cas: Mapping[str, Sequence[str]]
) -> list[str]:
    """The known_hosts lines for a root cluster and its leaves (docs/protocol.md §14.4).

    ``host_cas`` maps each cluster (the root and every leaf) to its host CA
    keys. Every cluster's CA is trusted for its own names, as real tsh does;
    the **root's** CA is trusted for every leaf's names too. That second part
    is what makes OpenSSH work with leaf nodes when the root proxy records
    sessions: it then terminates the connection itself and shows a host
    certificate from the root host CA for the leaf node (Teleport issue
    #42256). It widens trust to no new party: the root's auth server already
    holds the keys that leaf nodes accept users by.

    Raises:
        InvalidNameError: an unsafe proxy host or cluster name.
        ProxyResponseError: a malformed key, or no keys for ``root``.
    """
    root_keys = list(host_cas.get(root, ()))
    if not root_keys:
        raise ProxyResponseError(f"malformed response from the proxy: no host CA for {root}")
    lines = ca_lines(proxy_host, root, root_keys)
    for cluster, keys in host_cas.items():
        if cluster != root:
            lines += ca_lines(proxy_host, cluster, [*keys, *root_keys])
    return lines


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
