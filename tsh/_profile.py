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

from ._exceptions import InvalidNameError, ProfileError

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

        Every field tsh-py writes into OpenSSH files or shows is validated
        here, as when it came from the proxy (a profile may have been written
        by another program, or edited).

        Raises:
            ProfileError: not JSON, not an object, a required field missing,
                or a field of the wrong type or with an unsafe value (saying
                how to get rid of the file).
        """
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise _corrupt(source, "it is not a profile written by tsh-py") from None
        if not isinstance(data, dict):
            raise _corrupt(source, "it is not a profile written by tsh-py")
        known = set(cls._fields) - {"extra"}
        kwargs = {name: value for name, value in data.items() if name in known}
        extra = {k: v for k, v in data.items() if k not in known}
        missing = [name for name in _REQUIRED if not kwargs.get(name)]
        if missing:
            raise _corrupt(source, f"it lacks {', '.join(missing)}")
        try:
            return cls(**_checked_fields(kwargs), extra=extra or None)
        except (ValueError, InvalidNameError) as e:
            raise _corrupt(source, f"it is damaged: {e}") from None


def _corrupt(source: str, why: str) -> ProfileError:
    return ProfileError(f"cannot read the profile {source}: {why}; run tsh logout, or delete {source}")


_REQUIRED = ("web_proxy_addr", "ssh_proxy_addr", "user", "cluster")


def _address(value: object, what: str) -> str:
    from ._names import validate_host

    if not isinstance(value, str):
        raise ValueError("not a string")
    host, port = split_host_port(value, 0)
    if not port:
        raise ValueError(f"{value!r} has no port")
    return join_host_port(validate_host(host, what), port)


def _checked_fields(fields: dict[str, object]) -> dict[str, object]:
    """The known fields of a profile file, each validated into what Profile holds.

    Raises:
        ValueError: a field of the wrong type or value (named in the message).
    """
    out: dict[str, object] = {}
    for name, value in fields.items():
        try:
            out[name] = _checked_field(name, value)
        except (ValueError, InvalidNameError) as e:
            raise ValueError(f"its {name} is not valid ({e})") from None
    return out


def _checked_field(name: str, value: object) -> object:
    from ._names import validate_cluster_name, validate_label, validate_user_name

    if name in ("web_proxy_addr", "ssh_proxy_addr"):
        return _address(value, name)
    if name == "user":
        return validate_user_name(value)  # type: ignore[arg-type]
    if name in ("cluster", "root_cluster"):
        return "" if value == "" else validate_cluster_name(value)  # type: ignore[arg-type]
    if name in ("clusters", "principals", "extensions", "roles"):
        if not isinstance(value, list):
            raise ValueError("not a list")
        if name == "clusters":
            return tuple(validate_cluster_name(v) for v in value)
        return tuple(validate_label(v, name) for v in value)
    if name in ("valid_after", "valid_before"):
        # Within what datetime can show (year 9999): `tsh status` prints it.
        if type(value) is not int or not 0 <= value < 253402300800:
            raise ValueError("not a time")
        return value
    if name == "key_storage":
        if value not in ("disk", "agent"):
            raise ValueError(f"{value!r} is neither 'disk' nor 'agent'")
        return value
    # server_version, private_key_policy, piv_slot: shown or compared only.
    if not isinstance(value, str) or (value and not value.isprintable()):
        raise ValueError("not a one-line string")
    return value


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
