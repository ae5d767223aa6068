"""Validation of names that tsh writes into OpenSSH files (pure, no I/O).

Cluster names, proxy and node host names, logins and paths end up inside
ssh_config (``Host`` patterns, ``User``, ``ProxyCommand``) and known_hosts.
There, a newline starts a new directive, whitespace or ``,`` adds a pattern,
``*``/``?``/``!`` widen or negate one, ``%`` is an OpenSSH token and quotes,
``$`` or backquotes reach the shell that runs ProxyCommand. Rather than escape
for every one of those grammars, names are checked against a small allowlist
and refused with InvalidNameError; paths, which users do not choose freely,
may also contain spaces (they are always quoted).
"""

from __future__ import annotations

import re

from ._exceptions import InvalidNameError

__all__ = [
    "validate_cluster_name",
    "validate_host",
    "validate_login",
    "validate_path",
    "validate_port",
]

_MAX_NAME = 253
_DNS_LIKE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*", re.ASCII)
_LOGIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]*", re.ASCII)
#: Characters a path may not contain: ssh_config quoting has no escape for
#: quotes, %/$ are token/environment expansion, and the rest reaches a shell.
_PATH_FORBIDDEN = set("\"'\\%$`") | {chr(c) for c in range(32)} | {"\x7f"}


def _show(s: str) -> str:
    # repr() keeps control characters visible instead of garbling the terminal.
    return repr(s)


def _check_dns_like(kind: str, s: str) -> str:
    if not isinstance(s, str) or not s:
        raise InvalidNameError(f"{kind} must not be empty")
    if len(s) > _MAX_NAME:
        raise InvalidNameError(f"{kind} {_show(s[:40] + '...')} is longer than {_MAX_NAME} characters")
    if not _DNS_LIKE.fullmatch(s) or s.endswith("."):
        raise InvalidNameError(
            f"invalid {kind} {_show(s)}: use only letters, digits, '.', '_' and '-' "
            "(not first, and no trailing '.')"
        )
    return s


def validate_cluster_name(s: str) -> str:
    """Return ``s`` if it is safe as a Teleport cluster name in ssh_config.

    Raises:
        InvalidNameError: ``s`` is empty, too long, or contains anything other
            than ASCII letters, digits, ``.``, ``_`` and ``-`` (``-``/``.`` not first).
    """
    return _check_dns_like("cluster name", s)


def validate_host(s: str, kind: str = "host name") -> str:
    """Return ``s`` if it is a host name or IP address safe in ssh_config.

    DNS-like names follow the cluster name rules; IPv6 literals are accepted
    with or without brackets and returned without them.

    Raises:
        InvalidNameError: anything else.
    """
    if isinstance(s, str) and ":" in s:
        import ipaddress  # only for IPv6 literals: start-up time

        bare = s[1:-1] if s.startswith("[") and s.endswith("]") else s
        try:
            return str(ipaddress.IPv6Address(bare))
        except ValueError:
            raise InvalidNameError(f"invalid {kind} {_show(s)}") from None
    return _check_dns_like(kind, s)


def validate_login(s: str) -> str:
    """Return ``s`` if it is safe as an OpenSSH login (``User``, ``-l``).

    Raises:
        InvalidNameError: ``s`` is empty, too long, or contains anything other
            than ASCII letters, digits, ``.``, ``_``, ``@`` and ``-`` (``-`` not first).
    """
    if not isinstance(s, str) or not s:
        raise InvalidNameError("login must not be empty")
    if len(s) > _MAX_NAME or not _LOGIN.fullmatch(s):
        raise InvalidNameError(
            f"invalid login {_show(s)}: use only letters, digits, '.', '_', '@' and '-' "
            "(not first)"
        )
    return s


def validate_path(s: str) -> str:
    """Return ``s`` if it is an absolute path that can be quoted in ssh_config.

    Spaces are fine (tsh always quotes paths); quotes, backslashes, ``%``,
    ``$``, backquotes and control characters are refused because ssh_config and
    the shell running ProxyCommand would interpret them.

    Raises:
        InvalidNameError: relative path or a refused character.
    """
    if not s.startswith("/"):
        raise InvalidNameError(f"path {_show(s)} is not absolute")
    bad = sorted(set(s) & _PATH_FORBIDDEN)
    if bad:
        raise InvalidNameError(
            f"path {_show(s)} contains {', '.join(_show(c) for c in bad)}, which cannot be "
            "written safely into ssh_config; set TELEPORT_HOME to a plainer directory"
        )
    return s


def validate_port(port: int) -> int:
    """Return ``port`` if it is a TCP port number (1-65535).

    Raises:
        InvalidNameError: out of range.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidNameError(f"invalid port {port!r}: must be 1-65535")
    return port
