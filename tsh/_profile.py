"""Profiles: what `tsh login` leaves behind for one proxy and user (pure, no I/O).

A profile is stored as ``<home>/<proxyhost>.yaml``. We write it as JSON, which
is also valid YAML, so tools that read tsh profiles can read ours while we
parse it with the standard library (start-up time: `tsh status` must not pay
for a YAML parser).

The on-disk layout mirrors real tsh's ``~/.tsh`` (Teleport's keypaths), so the
paths that `tsh config` puts into ssh_config look like real tsh's.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple

from ._exceptions import ProfileError

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Profile", "ProfilePaths", "join_host_port", "split_host_port"]

#: Principals Teleport adds for its own use; never shown as logins.
INTERNAL_PRINCIPAL_PREFIXES = ("-teleport-internal-join", "-teleport-nologin-")


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


# Named tuples, not dataclasses: `tsh proxy ssh` reads a profile on every
# OpenSSH connection, and importing dataclasses (it imports inspect) costs more
# than the rest of that command's start-up.
_ProfileFields = namedtuple(
    "_ProfileFields",
    [
        "web_proxy_addr",
        "ssh_proxy_addr",
        "user",
        "cluster",
        "root_cluster",
        "clusters",  # root cluster first, then every leaf whose host CA the proxy sent
        "valid_after",
        "valid_before",
        "principals",
        "extensions",
        "roles",
        "key_storage",  # "disk": private key under keys/; "agent": `-k only`, agent and keyring
        "server_version",
        "private_key_policy",
        "piv_slot",
        "extra",  # fields of the file that tsh-py does not know, written back unchanged
    ],
    defaults=["", (), 0, 0, (), (), (), "disk", "", "none", "", None],
)


class Profile(_ProfileFields):
    """One logged-in proxy and user (immutable; ``_replace`` makes a changed copy).

    The certificate facts (validity, principals, extensions, roles) are those of
    ``<user>-ssh/<cluster>-cert.pub``, recorded when login checked that
    certificate, so that status and config need no certificate parser at start-up.
    """

    __slots__ = ()

    # As when this was a dataclass with ``extra`` out of comparison: fields
    # tsh-py does not know play no part in equality, and only a Profile can
    # equal a Profile.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Profile) and self[:-1] == other[:-1]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:-1])

    @property
    def proxy_host(self) -> str:
        """Host part of the web proxy address; also the profile's name."""
        return split_host_port(self.web_proxy_addr, 3080)[0]

    @property
    def name(self) -> str:
        """The profile's name: its proxy host (``<home>/<name>.yaml``)."""
        return self.proxy_host

    @property
    def logins(self) -> tuple[str, ...]:
        """Principals a user may log in as (Teleport-internal ones removed)."""
        return tuple(
            p for p in self.principals if not p.startswith(INTERNAL_PRINCIPAL_PREFIXES)
        )

    def to_json(self) -> str:
        """The profile file's text; keys we do not know (``extra``) are written back."""
        data = self._asdict()
        extra = data.pop("extra") or {}
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
        return json.dumps({**extra, **data}, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "profile") -> Profile:
        """Parse a profile file's text; ``source`` names it in errors.

        Raises:
            ProfileError: not JSON, not an object, a required field missing,
                or a field of the wrong type (saying how to get rid of the file).
        """
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise _corrupt(source, "it is not a profile written by tsh-py") from None
        if not isinstance(data, dict):
            raise _corrupt(source, "it is not a profile written by tsh-py")
        known = set(cls._fields) - {"extra"}
        kwargs = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in data.items()
            if name in known
        }
        extra = {k: v for k, v in data.items() if k not in known}
        missing = [name for name in _REQUIRED if not kwargs.get(name)]
        if missing:
            raise _corrupt(source, f"it lacks {', '.join(missing)}")
        bad = next((name for name, value in kwargs.items() if not _FIELD_CHECKS[name](value)), None)
        if bad is not None:
            raise _corrupt(source, f"its {bad} is not valid")
        return cls(**kwargs, extra=extra or None)


def _corrupt(source: str, why: str) -> ProfileError:
    return ProfileError(f"cannot read the profile {source}: {why}; run tsh logout, or delete {source}")


def _is_addr(value: object) -> bool:
    try:
        return isinstance(value, str) and bool(split_host_port(value, 3080))
    except ValueError:
        return False


def _is_name(value: object) -> bool:
    """A name that is safe as one path component (user and cluster names name files)."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not any(c in value for c in "/\\\0")
    )


def _is_time(value: object) -> bool:
    # Within what datetime can show (year 9999): `tsh status` prints it.
    return type(value) is int and 0 <= value < 253402300800


def _is_strs(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, str) for v in value)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


_REQUIRED = ("web_proxy_addr", "ssh_proxy_addr", "user", "cluster")
#: What each field of a profile file may hold (lists are tuples by then).
_FIELD_CHECKS = {
    "web_proxy_addr": _is_addr,
    "ssh_proxy_addr": _is_addr,
    "user": _is_name,
    "cluster": _is_name,
    "root_cluster": lambda v: v == "" or _is_name(v),
    "clusters": lambda v: isinstance(v, tuple) and all(_is_name(c) for c in v),
    "valid_after": _is_time,
    "valid_before": _is_time,
    "principals": _is_strs,
    "extensions": _is_strs,
    "roles": _is_strs,
    "key_storage": lambda v: v in ("disk", "agent"),
    "server_version": _is_str,
    "private_key_policy": _is_str,
    "piv_slot": _is_str,
}


class ProfilePaths(namedtuple("_ProfilePathsFields", ["home", "proxy_host", "user"])):
    """Where one profile's files live, following real tsh's ~/.tsh layout.

    ``home`` is a Path, and then so is every path here; or a str, and then
    every path is a str (for `tsh proxy ssh`, which does not import pathlib:
    start-up time). ``proxy_host`` and ``user`` name the profile.
    """

    __slots__ = ()

    def _path(self, *parts: str) -> Path:
        home = self.home
        return os.path.join(home, *parts) if isinstance(home, str) else home.joinpath(*parts)  # type: ignore[return-value]

    def _in_keys(self, *parts: str) -> Path:
        """A path under ``keys/<proxy_host>``."""
        return self._path("keys", self.proxy_host, *parts)

    @property
    def profile_file(self) -> Path:
        return self._path(f"{self.proxy_host}.yaml")

    @property
    def current_profile(self) -> Path:
        return self._path("current-profile")

    @property
    def known_hosts(self) -> Path:
        return self._path("known_hosts")

    @property
    def keys_dir(self) -> Path:
        return self._in_keys()

    @property
    def private_key(self) -> Path:
        return self._in_keys(self.user)

    @property
    def public_key(self) -> Path:
        return self._in_keys(f"{self.user}.pub")

    @property
    def tls_key(self) -> Path:
        """v17+: the separate TLS private key."""
        return self._in_keys(f"{self.user}.key")

    @property
    def tls_cert(self) -> Path:
        """v17+ name of the TLS client certificate."""
        return self._in_keys(f"{self.user}.crt")

    @property
    def tls_cert_legacy(self) -> Path:
        """Up to v16: TLS client certificate for the single key."""
        return self._in_keys(f"{self.user}-x509.pem")

    @property
    def ssh_cert_dir(self) -> Path:
        return self._in_keys(f"{self.user}-ssh")

    def ssh_cert(self, cluster: str) -> Path:
        return self._in_keys(f"{self.user}-ssh", f"{cluster}-cert.pub")

    @property
    def cas_dir(self) -> Path:
        return self._in_keys("cas")

    def tls_ca(self, cluster: str) -> Path:
        return self._in_keys("cas", f"{cluster}.pem")

    @property
    def certs_pem(self) -> Path:
        return self._in_keys("certs.pem")
