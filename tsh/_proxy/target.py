"""Where ssh wants to go: the ``%r@%h:%p`` of ssh_config, parsed (pure)."""

from __future__ import annotations

from collections import namedtuple

from .._core.names import validate_host, validate_login
from .._exceptions import UsageError

__all__ = ["Target", "parse_target"]


class Target(namedtuple("_TargetFields", ["login", "host", "port"])):
    """Where ssh wants to go: ``[login@]host:port`` (login None if not given)."""

    __slots__ = ()


def parse_target(text: str) -> Target:
    """Parse ``[USER@]HOST:PORT`` (the ``%r@%h:%p`` of ssh_config).

    The port may be empty (``host:``) or ``0``, which the proxy reads as the
    node's registered port (`tsh ssh` without ``--port`` asks for ``0``).

    Raises:
        UsageError: no ``:PORT`` part, or a bad login, host or port.
    """
    login: str | None = None
    if "@" in text:
        login, _, text = text.rpartition("@")
        validate_login(login)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            port = None
    if port is None or not host:
        raise UsageError(f"invalid target {text!r}: expected [USER@]HOST:PORT")
    if port and not (port.isascii() and port.isdigit() and int(port) < 65536):
        raise UsageError(f"invalid port {port!r} in {text!r}")
    return Target(login, validate_host(host, "node host"), port)
