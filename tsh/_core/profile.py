"""Profiles: what `tsh login` leaves behind for one proxy and user (pure, no I/O).

A profile is stored as ``<home>/<proxyhost>.yaml``. We write it as JSON, which
is also valid YAML, so tools that read tsh profiles can read ours while we
parse it with the standard library (start-up time: `tsh status` must not pay
for a YAML parser).
Where a profile's files live is tsh._store.layout's business.
"""

from __future__ import annotations

import json
from collections import namedtuple

from .._exceptions import InvalidNameError, ProfileError
from .addr import FALLBACK_WEB_PORT, join_host_port, split_host_port

TYPE_CHECKING = False  # typing itself costs start-up time
if TYPE_CHECKING:
    from .._types import KeyStorage

__all__ = ["Profile"]

#: Principals Teleport adds for its own use; never shown as logins.
INTERNAL_PRINCIPAL_PREFIXES = ("-teleport-internal-join", "-teleport-nologin-")


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
        # TLS routing (docs/protocol.md §18): SSH goes to the web port inside TLS,
        # through a connection upgrade when an L7 load balancer is in front.
        "tls_routing_enabled",
        "tls_routing_conn_upgrade_required",
        "extra",  # fields of the file that tsh-py does not know, written back unchanged
    ],
    defaults=["", (), 0, 0, (), (), (), "disk", "", "none", "", False, False, None],
)


class Profile(_ProfileFields):
    """One logged-in proxy and user (immutable; ``_replace`` makes a changed copy).

    The certificate facts (validity, principals, extensions, roles) are those of
    ``<user>-ssh/<cluster>-cert.pub``, recorded when login checked that
    certificate, so that status and config need no certificate parser at start-up.
    """

    __slots__ = ()

    if TYPE_CHECKING:  # the fields' types, for type checkers (typing costs start-up time)
        web_proxy_addr: str
        ssh_proxy_addr: str
        user: str
        cluster: str
        root_cluster: str
        clusters: tuple[str, ...]
        valid_after: int
        valid_before: int
        principals: tuple[str, ...]
        extensions: tuple[str, ...]
        roles: tuple[str, ...]
        key_storage: KeyStorage
        server_version: str
        private_key_policy: str
        piv_slot: str
        tls_routing_enabled: bool
        tls_routing_conn_upgrade_required: bool
        extra: dict[str, object] | None

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
        return split_host_port(self.web_proxy_addr, FALLBACK_WEB_PORT)[0]

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
    from .names import validate_host

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
    from .names import validate_cluster_name, validate_label, validate_user_name

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
    if name in ("tls_routing_enabled", "tls_routing_conn_upgrade_required"):
        if type(value) is not bool:
            raise ValueError("not a boolean")
        return value
    if name == "key_storage":
        if value not in ("disk", "agent"):
            raise ValueError(f"{value!r} is neither 'disk' nor 'agent'")
        return value
    # server_version, private_key_policy, piv_slot: shown or compared only.
    if not isinstance(value, str) or (value and not value.isprintable()):
        raise ValueError("not a one-line string")
    return value
