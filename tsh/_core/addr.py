"""Addresses: the one ``host:port`` parser and the default ports (pure).

Every default port is named here once (docs/protocol.md §1).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_NODE_PORT",
    "DEFAULT_WEB_PORT",
    "FALLBACK_WEB_PORT",
    "SSH_PROXY_PORT",
    "join_host_port",
    "split_host_port",
]

#: Port tried first when --proxy has none (Teleport Cloud and TLS-routing proxies).
DEFAULT_WEB_PORT = 443
#: Port tried next: a self-hosted proxy's default web listener.
FALLBACK_WEB_PORT = 3080
#: The proxy's SSH port (the ``proxy:`` subsystem).
SSH_PROXY_PORT = 3023
#: Teleport's own SSH service on nodes; OpenSSH nodes usually listen on 22.
DEFAULT_NODE_PORT = 3022


def split_host_port(addr: str, default_port: int) -> tuple[str, int]:
    """Split ``host[:port]`` or ``[v6]:port`` into host and port.

    Raises ValueError for an empty host or a port that is not 1-65535.
    """
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest.removeprefix(":")
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid address {addr!r}")
    elif addr.count(":") == 1:
        host, _, port = addr.partition(":")
    else:  # a bare host name, or a bare IPv6 address
        host, port = addr, ""
    if not host:
        raise ValueError(f"missing host in {addr!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid port in {addr!r}")
    return host, int(port)


def join_host_port(host: str, port: int | str) -> str:
    """``host:port``, with brackets around an IPv6 literal (the inverse of split_host_port)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
