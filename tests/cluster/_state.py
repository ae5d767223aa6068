"""The cluster's data directory: identity, users and nodes as JSON files.

Admin commands (``users add``, ``nodes add``) and the running server share the
directory. Every change is a read-modify-write under one file lock and lands
with an atomic rename, so the server only has to notice that a file's inode
changed (``stat`` per request, no polling, no restart) to pick it up.

Layout::

    DIR/cluster.json            {"name": "<cluster>"}
    DIR/users.json              {"users": {name: UserRecord}}
    DIR/nodes.json              {"nodes": {name: {"addr": "host:port"}}}
    DIR/ca/...                  CA keys (see _ca.py)
    DIR/proxy/...               the proxy's own SSH host key and HTTPS certificate
    DIR/.lock
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster._files import atomic_write, ensure_private_dir, locked

__all__ = [
    "ClusterState",
    "StateError",
    "User",
    "Node",
    "hash_password",
    "verify_password",
    "parse_host_port",
    "DEFAULT_MAX_TTL_NS",
]

DEFAULT_MAX_TTL_NS = 30 * 3600 * 1_000_000_000  # Teleport's default role max_session_ttl

_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_LOGIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
_CLUSTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")

# scrypt cost: ~50 ms per check, enough for a test cluster, cheap for 2 cores.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


class StateError(Exception):
    """A data directory problem or an invalid admin request (one-line message)."""


def hash_password(password: str) -> str:
    """Return a salted scrypt hash of ``password`` as ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Check ``password`` against a hash made by :func:`hash_password`, in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@functools.cache
def _dummy_hash() -> str:
    """Checked when a user name is unknown, so that "no such user" and "wrong
    password" take the same time; made on first use, not at import (a 60 ms scrypt)."""
    return hash_password(secrets.token_hex(8))


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (port 1-65535, host non-empty); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class User:
    """A local cluster user."""

    name: str
    password_hash: str
    logins: tuple[str, ...]
    roles: tuple[str, ...] = ("access",)
    max_ttl_ns: int = DEFAULT_MAX_TTL_NS
    otp_secret: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "password": self.password_hash,
            "logins": list(self.logins),
            "roles": list(self.roles),
            "max_ttl_ns": self.max_ttl_ns,
            "otp_secret": self.otp_secret,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> User:
        return cls(
            name=name,
            password_hash=data["password"],
            logins=tuple(data["logins"]),
            roles=tuple(data.get("roles", ["access"])),
            max_ttl_ns=int(data.get("max_ttl_ns", DEFAULT_MAX_TTL_NS)),
            otp_secret=data.get("otp_secret"),
        )


@dataclass(frozen=True)
class Node:
    """A registered node: where the proxy dials for ``proxy:<name>:<port>``."""

    name: str
    host: str
    port: int
    #: ``nodes add --labels``: sorted (key, value) pairs, as the auth API lists them.
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class _Cached:
    signature: tuple[int, int, int] | None = None
    value: Any = None


@dataclass
class ClusterState:
    """Access to one cluster data directory (see the module docstring)."""

    data_dir: Path
    _cache: dict[str, _Cached] = field(default_factory=dict, repr=False)

    # ---- paths
    @property
    def lock_path(self) -> Path:
        return self.data_dir / ".lock"

    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def proxy_dir(self) -> Path:
        return self.data_dir / "proxy"

    # ---- identity
    @classmethod
    def init(cls, data_dir: Path, name: str | None) -> ClusterState:
        """Create (or open) the data dir; ``name`` must match a stored name if given."""
        if name is not None and not _CLUSTER_RE.match(name):
            raise StateError(f"invalid cluster name {name!r}")
        ensure_private_dir(data_dir)
        state = cls(data_dir)
        with locked(state.lock_path):
            stored = state._read_json("cluster.json")
            if stored is None:
                state._write_json("cluster.json", {"name": name or "example.test"})
            elif name is not None and stored["name"] != name:
                raise StateError(
                    f"{data_dir} holds cluster {stored['name']!r}, not {name!r}"
                )
            ensure_private_dir(state.ca_dir)
            ensure_private_dir(state.proxy_dir)
        return state

    @classmethod
    def open(cls, data_dir: Path) -> ClusterState:
        """Open an existing data dir (made by ``start``); StateError if there is none."""
        if not (data_dir / "cluster.json").is_file():
            raise StateError(f"no cluster in {data_dir}: run `start --data-dir {data_dir}` first")
        return cls(data_dir)

    @property
    def name(self) -> str:
        data = self._cached_json("cluster.json")
        if data is None:
            raise StateError(f"no cluster in {self.data_dir}")
        return str(data["name"])

    # ---- users
    def users(self) -> dict[str, User]:
        data = self._cached_json("users.json") or {"users": {}}
        return {n: User.from_json(n, u) for n, u in data["users"].items()}

    def add_user(
        self,
        name: str,
        password: str,
        logins: list[str],
        max_ttl_ns: int | None = None,
        otp: bool = False,
        roles: tuple[str, ...] = ("access",),
    ) -> User:
        """Create or replace a user; returns the stored record (with its OTP secret)."""
        if not _USER_RE.match(name):
            raise StateError(f"invalid user name {name!r}")
        if not logins:
            raise StateError("at least one login is required (--logins=a,b)")
        for login in logins:
            if not _LOGIN_RE.match(login):
                raise StateError(f"invalid login {login!r}")
        if not password:
            raise StateError("empty password: give it as the first line of stdin")
        if max_ttl_ns is not None and max_ttl_ns <= 0:
            raise StateError("the maximum TTL must be positive")
        otp_secret = None
        if otp:
            import pyotp

            otp_secret = pyotp.random_base32()
        user = User(
            name=name,
            password_hash=hash_password(password),
            logins=tuple(logins),
            roles=roles,
            max_ttl_ns=max_ttl_ns or DEFAULT_MAX_TTL_NS,
            otp_secret=otp_secret,
        )
        with locked(self.lock_path):
            data = self._read_json("users.json") or {"users": {}}
            data["users"][name] = user.to_json()
            self._write_json("users.json", data)
        return user

    def upsert_sso_user(self, user: User) -> None:
        """Record a user an SSO login made, as Teleport does (so the auth API knows them).

        An SSO user has no password; a local user of the same name is left as is.
        """
        with locked(self.lock_path):
            data = self._read_json("users.json") or {"users": {}}
            old = data["users"].get(user.name)
            if old is not None and old.get("password"):
                return
            data["users"][user.name] = {**user.to_json(), "password": ""}
            self._write_json("users.json", data)

    def check_password(self, name: str, password: str) -> User | None:
        """The user if ``password`` is right, else None (same cost either way)."""
        user = self.users().get(name)
        ok = verify_password(password, user.password_hash if user else _dummy_hash())
        return user if ok and user else None

    # ---- nodes
    def nodes(self) -> dict[str, Node]:
        data = self._cached_json("nodes.json") or {"nodes": {}}
        out = {}
        for n, rec in data["nodes"].items():
            host, port = parse_host_port(rec["addr"])
            out[n] = Node(n, host, port, tuple(sorted(rec.get("labels", {}).items())))
        return out

    def add_node(self, name: str, addr: str, labels: dict[str, str] | None = None) -> Node:
        """Register (or re-register) node ``name`` at ``addr`` (HOST:PORT) with ``labels``."""
        if not _NODE_RE.match(name):
            raise StateError(f"invalid node name {name!r}")
        try:
            host, port = parse_host_port(addr)
        except ValueError as e:
            raise StateError(str(e)) from None
        node = Node(name, host, port, tuple(sorted((labels or {}).items())))
        with locked(self.lock_path):
            data = self._read_json("nodes.json") or {"nodes": {}}
            data["nodes"][name] = {"addr": node.addr, **({"labels": dict(node.labels)} if labels else {})}
            self._write_json("nodes.json", data)
        return node

    # ---- file helpers
    def _read_json(self, name: str) -> Any:
        try:
            return json.loads((self.data_dir / name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StateError(f"cannot read {self.data_dir / name}: {e}") from None

    def _write_json(self, name: str, data: Any) -> None:
        atomic_write(self.data_dir / name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def _cached_json(self, name: str) -> Any:
        """Re-read ``name`` only when its inode, size or mtime changed."""
        cached = self._cache.setdefault(name, _Cached())
        try:
            st = os.stat(self.data_dir / name)
        except FileNotFoundError:
            cached.signature, cached.value = None, None
            return None
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if sig != cached.signature:
            cached.value = self._read_json(name)
            cached.signature = sig
        return cached.value
