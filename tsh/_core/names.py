"""Validation of strings that tsh writes into OpenSSH files (pure, no I/O).

Cluster names, proxy and node host names, logins and paths end up inside
ssh_config (``Host`` patterns, ``User``, ``ProxyCommand``) and known_hosts.
There, a newline starts a new directive, whitespace or ``,`` adds a pattern,
``*``/``?``/``!`` widen or negate one, ``%`` is an OpenSSH token and quotes,
``$`` or backquotes reach the shell that runs ProxyCommand. Rather than escape
for every one of those grammars, names are checked against a small allowlist
and refused with InvalidNameError; paths, which users do not choose freely,
may also contain spaces (they are always quoted).

Parse, don't re-check: each validator returns its input as a ``str``
subclass (:class:`ClusterName`, :class:`HostName`, :class:`Login`,
:class:`UserName`, :class:`SafePath`) that only the validator makes. Strings
from the proxy and from profile files are turned into these where they are
parsed; a writer that is handed one again gets it back as it is, and a raw
``str`` is always checked, never trusted.
"""

from __future__ import annotations

import re

from .._exceptions import InvalidNameError

__all__ = [
    "ClusterName",
    "HostName",
    "Label",
    "Login",
    "SafePath",
    "UserName",
    "shell_word",
    "validate_cluster_name",
    "validate_host",
    "validate_label",
    "validate_login",
    "validate_path",
    "validate_port",
    "validate_user_name",
]


class ClusterName(str):
    """A Teleport cluster name that is safe in ssh_config and known_hosts patterns."""

    __slots__ = ()


class HostName(str):
    """A DNS-like host name or an IPv6/IPv4 literal (no scope ID, no brackets)."""

    __slots__ = ()


class Login(str):
    """An OpenSSH login (``User``, ``-l``) with no character ssh_config or a shell reads."""

    __slots__ = ()


class UserName(str):
    """A Teleport user name that is safe as a file name and in an agent key comment."""

    __slots__ = ()


class Label(str):
    """A printable one-line string (a role, principal or version) safe in `tsh status` output."""

    __slots__ = ()


class SafePath(str):
    """An absolute path that can be double-quoted in ssh_config and in a shell line."""

    __slots__ = ()


_MAX_NAME = 253
_DNS_LIKE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*", re.ASCII)
_LOGIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]*", re.ASCII)
#: What an IPv6 literal may hold before ``ipaddress`` reads it. No ``%``: a
#: scope ID (``fe80::1%eth0``) may hold any character but NUL, and OpenSSH has
#: no use for one in a host pattern or a ProxyCommand.
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]+", re.ASCII)
#: Characters a path may not contain: ssh_config quoting has no escape for
#: quotes, %/$ are token/environment expansion, and the rest reaches a shell.
_PATH_FORBIDDEN = set("\"'\\%$`") | {chr(c) for c in range(32)} | {"\x7f"}
#: Characters a word may hold inside single quotes in every shell OpenSSH may
#: run ProxyCommand with (sh, bash, zsh, fish, csh): no quote, no backslash
#: (fish), no ``!`` (csh history), no control characters.
_SHELL_SAFE = re.compile(r"[^'\\!\x00-\x1f\x7f]*")


def _show(s: str) -> str:
    # repr() keeps control characters visible instead of garbling the terminal.
    return repr(s)


def _check_dns_like(kind: str, s: object) -> str:
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


def validate_cluster_name(s: str) -> ClusterName:
    """Return ``s`` as a :class:`ClusterName` if it is safe as a Teleport cluster name.

    Raises:
        InvalidNameError: ``s`` is empty, too long, or contains anything other
            than ASCII letters, digits, ``.``, ``_`` and ``-`` (``-``/``.`` not first).
    """
    if type(s) is ClusterName:
        return s
    return ClusterName(_check_dns_like("cluster name", s))


def validate_host(s: str, kind: str = "host name") -> HostName:
    """Return ``s`` as a :class:`HostName` if it is a host name or IP address safe in ssh_config.

    DNS-like names follow the cluster name rules; IPv6 literals are accepted
    with or without brackets and returned without them, compressed. IPv6
    scope IDs (``%eth0``) are refused.

    Raises:
        InvalidNameError: anything else.
    """
    if type(s) is HostName:
        return s
    if isinstance(s, str) and ":" in s:
        bare = s[1:-1] if s.startswith("[") and s.endswith("]") else s
        if not _IPV6_CHARS.fullmatch(bare):
            why = "IPv6 scope IDs are not supported" if "%" in bare else "not an IPv6 address"
            raise InvalidNameError(f"invalid {kind} {_show(s)}: {why}")
        import ipaddress  # only for IPv6 literals: start-up time

        try:
            return HostName(ipaddress.IPv6Address(bare))
        except ValueError:
            raise InvalidNameError(f"invalid {kind} {_show(s)}") from None
    return HostName(_check_dns_like(kind, s))


def validate_login(s: str) -> Login:
    """Return ``s`` as a :class:`Login` if it is safe as an OpenSSH login (``User``, ``-l``).

    Raises:
        InvalidNameError: ``s`` is empty, too long, or contains anything other
            than ASCII letters, digits, ``.``, ``_``, ``@`` and ``-`` (``-`` not first).
    """
    if type(s) is Login:
        return s
    if not isinstance(s, str) or not s:
        raise InvalidNameError("login must not be empty")
    if len(s) > _MAX_NAME or not _LOGIN.fullmatch(s):
        raise InvalidNameError(
            f"invalid login {_show(s)}: use only letters, digits, '.', '_', '@' and '-' "
            "(not first)"
        )
    return Login(s)


def validate_user_name(s: str) -> UserName:
    """Return ``s`` as a :class:`UserName` if it can name files and an agent key comment.

    Teleport user names are freer than logins (e-mail addresses, SSO names),
    so only what breaks a path, a comment or a terminal line is refused.

    Raises:
        InvalidNameError: empty, longer than 255, ``.``/``..``, or a ``/``,
            ``\\``, ``:``, whitespace or control character.
    """
    if type(s) is UserName:
        return s
    if (
        not isinstance(s, str)
        or not s
        or len(s) > 255
        or s in (".", "..")
        or any(c in s for c in "/\\:")
        or any(ord(c) < 32 or ord(c) == 127 or c.isspace() for c in s)
    ):
        raise InvalidNameError(f"invalid user name {_show(s) if isinstance(s, str) else s!r}")
    return UserName(s)


def validate_label(s: str, kind: str) -> Label:
    """Return ``s`` as a :class:`Label` if it is printable text of one line (at most 255).

    For strings that are only shown or compared (roles, principals,
    certificate extensions, versions): no control character can rewrite the
    terminal or start a line that looks like tsh's own output.

    Raises:
        InvalidNameError: not a str, empty, too long, or not printable.
    """
    if type(s) is Label:
        return s
    if not isinstance(s, str) or not s or len(s) > 255 or not s.isprintable():
        raise InvalidNameError(f"invalid {kind} {_show(s) if isinstance(s, str) else s!r}")
    return Label(s)


def shell_word(s: str) -> str:
    """``s`` single-quoted for the shell OpenSSH runs a ProxyCommand with.

    Single quotes mean the same in sh, bash, zsh, fish and csh as long as the
    word holds no quote, backslash, ``!`` or control character; validated names
    and paths never do, and anything else is refused rather than escaped.

    Raises:
        InvalidNameError: ``s`` holds one of those characters.
    """
    if not _SHELL_SAFE.fullmatch(s):
        raise InvalidNameError(f"{_show(s)} cannot be quoted safely for a shell")
    return f"'{s}'"


def validate_path(s: str) -> SafePath:
    """Return ``s`` as a :class:`SafePath` if it is an absolute path that can be quoted in ssh_config.

    Spaces are fine (tsh always quotes paths); quotes, backslashes, ``%``,
    ``$``, backquotes and control characters are refused because ssh_config and
    the shell running ProxyCommand would interpret them.

    Raises:
        InvalidNameError: relative path or a refused character.
    """
    if type(s) is SafePath:
        return s
    if not isinstance(s, str) or not s.startswith("/"):
        raise InvalidNameError(f"path {_show(s)} is not absolute")
    bad = sorted(set(s) & _PATH_FORBIDDEN)
    if bad:
        raise InvalidNameError(
            f"path {_show(s)} contains {', '.join(_show(c) for c in bad)}, which cannot be "
            "written safely into ssh_config; set TELEPORT_HOME to a plainer directory"
        )
    return SafePath(s)


def validate_port(port: int) -> int:
    """Return ``port`` if it is a TCP port number (1-65535).

    Raises:
        InvalidNameError: out of range.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidNameError(f"invalid port {port!r}: must be 1-65535")
    return port
