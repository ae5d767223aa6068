"""Trusted clusters: join tokens, the CA exchange, the reverse tunnel, leaf routing.

docs/protocol.md §14 tells the story; trusted-clusters.md is the
reference. Two processes of this test cluster play root and leaf:

* **root**: ``tokens add --type=trusted_cluster`` writes a join token; the web
  API's ``POST /v1/webapi/trustedclusters/validate`` checks it, stores the
  leaf's host CA in ``remote_clusters.json`` and answers with the root's host
  and user CAs (Teleport's request and response shape). The root listens on a
  reverse-tunnel port (``start --tunnel-port``) for its leaves' proxies.
* **leaf**: ``trusted-clusters add`` makes that request and stores the root's
  CAs with the role map in ``trusted_clusters.json``; the running leaf notices
  the file and keeps an SSH connection to the root's tunnel port, sending a
  heartbeat every second.

The tunnel is an SSH connection the leaf opens: it logs in as its cluster name
with a certificate from its *host* CA (the root checks it against the leaf host
CA it stored at the join) and checks the root's certificate against the root
host CA. It then asks for a remote "port forward" on the pseudo host
``teleport-transport``; every dial of the root is a ``forwarded-tcpip`` channel
on it whose originator field carries the request as JSON. The leaf end resolves
the request as a local request at the leaf would (a registered node) and pipes
the channel to it, or refuses the channel with the reason.

Storage (the contract between the helpers of issue #14)::

    root: DIR/remote_clusters.json {"clusters": {NAME: {"labels", "host_ca": {"ssh", "tls"},
                                    "role_map", "last_heartbeat"}}}
          DIR/tokens.json          {"tokens": {TOKEN: {"type": "trusted_cluster", "labels"}}}
    leaf: DIR/trusted_clusters.json {"clusters": {ROOT: {"user_ca", "host_ca", "role_map",
                                    "proxy_addr", "tunnel_addr"}}}
          DIR/roles.json           {"roles": {NAME: {"logins": [...]}}}
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import secrets
import ssl
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncssh
from cryptography.exceptions import UnsupportedAlgorithm

from tests.cluster._files import locked

from ._state import ClusterState, StateError
from ._subsystem import ProxyRequest, SubsystemError, go_quote, resolve_local

if TYPE_CHECKING:
    from ._ca import Authority
    from ._config import ServerConfig

__all__ = [
    "RemoteCluster",
    "TrustError",
    "LeafRoute",
    "add_role",
    "add_token",
    "as_streams",
    "follow_host_ca",
    "allowed_login",
    "join",
    "leaf_route",
    "live_leaves",
    "map_roles",
    "parse_labels",
    "parse_role_map",
    "remote_clusters",
    "remote_host_cas",
    "remove_remote_cluster",
    "remove_trusted_cluster",
    "roles",
    "run_tunnel_agents",
    "start_tunnel_server",
    "trusted_user_ca_ssh",
    "trusted_user_ca_tls",
    "unknown_cluster",
    "validate_trusted_cluster",
]

log = logging.getLogger("tests.cluster.trust")

TOKEN_TYPE = "trusted_cluster"
#: Teleport's preset role: its logins are the certificate's principals.
INTERNAL_LOGINS = "{{internal.logins}}"
BUILTIN_ROLES = {"access": (INTERNAL_LOGINS,)}
DEFAULT_OFFLINE_THRESHOLD_S = 10.0
HEARTBEAT_INTERVAL_S = 1.0
_RECONNECT_S = 0.5
_TRANSPORT_HOST = "teleport-transport"
_TRANSPORT_PORT = 3024
_DIAL_TIMEOUT_S = 10.0
_HIGH_WATER = 256 * 1024


class TrustError(Exception):
    """A refused join or validation; ``status`` is the HTTP status the root answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- contract API
@dataclass(frozen=True)
class RemoteCluster:
    """A leaf as the root sees it (Teleport's ``remote_cluster`` resource)."""

    name: str
    status: Literal["online", "offline"]
    last_heartbeat: dt.datetime | None  # aware UTC
    labels: dict[str, str]


@dataclass
class _Tunnel:
    conn: asyncssh.SSHServerConnection
    last_heartbeat: dt.datetime


@dataclass
class _Live:
    """What the running root knows beyond its files: the connected tunnels."""

    offline_threshold_s: float = DEFAULT_OFFLINE_THRESHOLD_S
    tunnels: dict[str, _Tunnel] = field(default_factory=dict)


_LIVE: dict[Path, _Live] = {}


def _live(state: ClusterState) -> _Live:
    return _LIVE.setdefault(state.data_dir.resolve(), _Live())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _remote_records(state: ClusterState) -> dict[str, Any]:
    return dict((state._cached_json("remote_clusters.json") or {"clusters": {}})["clusters"])


def _trusted_records(state: ClusterState) -> dict[str, Any]:
    return dict((state._cached_json("trusted_clusters.json") or {"clusters": {}})["clusters"])


def remote_clusters(state: ClusterState) -> list[RemoteCluster]:
    """The leaves that joined this (root) cluster, sorted by name.

    A leaf is online while its tunnel is up and its last heartbeat is younger
    than the offline threshold; the running root reports its live heartbeats.
    """
    live = _live(state)
    now = _now()
    out = []
    for name, rec in sorted(_remote_records(state).items()):
        tunnel = live.tunnels.get(name)
        heartbeat = tunnel.last_heartbeat if tunnel else _parse_time(rec.get("last_heartbeat"))
        online = tunnel is not None and (now - tunnel.last_heartbeat).total_seconds() < (
            live.offline_threshold_s
        )
        out.append(RemoteCluster(name, "online" if online else "offline", heartbeat,
                                 dict(rec.get("labels") or {})))
    return out


def remote_host_cas(state: ClusterState) -> dict[str, tuple[list[str], list[bytes]]]:
    """Leaf name -> (its host CA SSH keys as authorized_keys lines, its host CA TLS PEMs)."""
    return {
        name: (list(rec["host_ca"]["ssh"]), [p.encode() for p in rec["host_ca"]["tls"]])
        for name, rec in sorted(_remote_records(state).items())
    }


def trusted_user_ca_tls(state: ClusterState) -> list[bytes]:
    """On a leaf: the TLS certificates (PEM) of the root user CAs it trusts."""
    return [p.encode() for rec in _trusted_records(state).values() for p in rec["user_ca"]["tls"]]


def trusted_user_ca_ssh(state: ClusterState) -> list[str]:
    """On a leaf: the SSH public keys (authorized_keys lines) of the root user CAs it trusts."""
    return [line for rec in _trusted_records(state).values() for line in rec["user_ca"]["ssh"]]


def live_leaves(state: ClusterState) -> list[tuple[str, dt.datetime, str]]:
    """(name, last heartbeat, status) of every leaf with a tunnel up (``proxysites``)."""
    by_name = {rc.name: rc for rc in remote_clusters(state)}
    out = []
    for name, tunnel in sorted(_live(state).tunnels.items()):
        rc = by_name.get(name)
        if rc is not None:  # Teleport skips a "dangling" site without a remote cluster
            out.append((name, tunnel.last_heartbeat, rc.status))
    return out


def unknown_cluster(cluster: str) -> SubsystemError:
    """Teleport's answer to ``proxy:...@X`` for an unknown, offline or forbidden cluster."""
    return SubsystemError(f"invalid format for proxy request: unknown cluster {go_quote(cluster)}")


# --------------------------------------------------------------------------- tokens, roles
def add_token(state: ClusterState, token_type: str, labels: dict[str, str]) -> str:
    """A new join token (``tctl tokens add --type=trusted_cluster``)."""
    if token_type != TOKEN_TYPE:
        raise StateError(f"unsupported token type {token_type!r}: only {TOKEN_TYPE!r}")
    token = secrets.token_hex(16)
    with locked(state.lock_path):
        data = state._read_json("tokens.json") or {"tokens": {}}
        data["tokens"][token] = {"type": token_type, "labels": labels}
        state._write_json("tokens.json", data)
    return token


def parse_labels(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; StateError on a malformed pair."""
    out: dict[str, str] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StateError(f"invalid label {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def roles(state: ClusterState) -> dict[str, tuple[str, ...]]:
    """Role name -> logins (``{{internal.logins}}`` = the certificate's principals)."""
    data = state._cached_json("roles.json") or {"roles": {}}
    out = dict(BUILTIN_ROLES)
    out.update({n: tuple(r["logins"]) for n, r in data["roles"].items()})
    return out


def add_role(state: ClusterState, name: str, logins: list[str]) -> None:
    """Create or replace a role with these logins (``tctl create role.yaml``, reduced)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise StateError(f"invalid role name {name!r}")
    if not logins:
        raise StateError("a role needs at least one login (--logins=a,b)")
    with locked(state.lock_path):
        data = state._read_json("roles.json") or {"roles": {}}
        data["roles"][name] = {"logins": logins}
        state._write_json("roles.json", data)


def parse_role_map(text: str) -> list[dict[str, Any]]:
    """``REMOTE:LOCAL[,REMOTE:LOCAL...]`` -> Teleport's ``role_map`` list."""
    out: dict[str, list[str]] = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        remote, sep, local = pair.partition(":")
        if not sep or not remote.strip() or not local.strip():
            raise StateError(f"invalid role mapping {pair!r}: expected REMOTE:LOCAL")
        out.setdefault(remote.strip(), []).append(local.strip())
    if not out:
        raise StateError("--role-map needs at least one REMOTE:LOCAL mapping")
    return [{"remote": r, "local": locals_} for r, locals_ in out.items()]


def map_roles(role_map: list[dict[str, Any]], remote_roles: list[str]) -> list[str]:
    """Teleport's ``MapRoles``: the local roles for these remote ones (``*`` matches any)."""
    out: list[str] = []
    for remote in remote_roles:
        for mapping in role_map:
            if mapping["remote"] in (remote, "*"):
                out += [r for r in mapping["local"] if r not in out]
    return out


# --------------------------------------------------------------------------- CA resources
def _ca_resource(cluster: str, ca_type: str, ssh_lines: list[str], tls_pems: list[bytes],
                 additional: tuple[list[str], list[bytes]] = ([], []),
                 rotation: dict[str, Any] | None = None) -> bytes:
    """A ``cert_authority`` v2 resource as Teleport marshals it (public parts only).

    ``additional``: the ``additional_trusted_keys`` (SSH lines, TLS PEMs) of a
    CA in rotation; ``rotation``: its ``spec.rotation``.
    """
    def key_set(lines: list[str], pems: list[bytes]) -> dict[str, Any]:
        return {
            "ssh": [{"public_key": base64.b64encode(line.encode()).decode()} for line in lines],
            "tls": [{"cert": base64.b64encode(pem).decode()} for pem in pems],
        }

    spec: dict[str, Any] = {
        "type": ca_type,
        "cluster_name": cluster,
        "active_keys": key_set(ssh_lines, tls_pems),
    }
    if additional[0] or additional[1]:
        spec["additional_trusted_keys"] = key_set(*additional)
    if rotation:
        spec["rotation"] = rotation
    resource = {
        "kind": "cert_authority",
        "sub_kind": ca_type,
        "version": "v2",
        "metadata": {"name": cluster},
        "spec": spec,
    }
    return json.dumps(resource, separators=(",", ":")).encode()


def _local_ca(authority: Authority, ca_type: str) -> bytes:
    """Our ``host`` or ``user`` CA as a resource: active keys, additional keys, rotation.

    What the join's exchange and the tunnel's CA push carry, so a peer trusts
    exactly what we trust now (both key sets while rotating, active first).
    """
    keys = authority.keys(ca_type)
    n = keys.active_count
    lines = [_ssh_line(k) for k in keys.trusted]
    pems = list(keys.trusted_tls_pem)
    rot = keys.rotation
    return _ca_resource(authority.cluster, ca_type, lines[:n], pems[:n], (lines[n:], pems[n:]),
                        {"state": rot.state, "phase": rot.phase, "mode": rot.mode,
                         "current_id": rot.current_id})


@dataclass(frozen=True)
class _CA:
    cluster: str
    type: str
    ssh: list[str]
    tls: list[str]


def _parse_ca(raw: Any) -> _CA:
    """A ``cert_authority`` resource from a ``[]byte`` JSON field (base64 of its JSON)."""
    try:
        data = json.loads(base64.b64decode(raw, validate=True))
        spec = data["spec"]
        ssh: list[str] = []
        tls: list[str] = []
        # trusted = active then additional (GetTrustedSSHKeyPairs)
        for keys in (spec.get("active_keys") or {}, spec.get("additional_trusted_keys") or {}):
            ssh += [base64.b64decode(k["public_key"]).decode().strip() for k in keys.get("ssh") or []]
            tls += [base64.b64decode(k["cert"]).decode() for k in keys.get("tls") or []]
        ca = _CA(str(spec["cluster_name"]), str(spec["type"]), ssh, tls)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        raise TrustError("bad parameter: malformed certificate authority") from None
    for line in ca.ssh:
        try:
            asyncssh.import_public_key(line)
        except (asyncssh.KeyImportError, ValueError):
            raise TrustError("bad parameter: malformed certificate authority key") from None
    return ca


def _ssh_line(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


# --------------------------------------------------------------------------- root: validate
def validate_trusted_cluster(state: ClusterState, authority: Authority, body: bytes) -> bytes:
    """The root's ``/webapi/trustedclusters/validate``: check, store, answer with our CAs.

    Raises:
        TrustError: a bad token (403) or a malformed request (400), Teleport's texts.
    """
    try:
        req = json.loads(body)
        if not isinstance(req, dict):
            raise ValueError
    except ValueError:
        raise TrustError("bad parameter: malformed request") from None
    token = req.get("token")
    tokens = (state._read_json("tokens.json") or {"tokens": {}})["tokens"]
    record = tokens.get(token) if isinstance(token, str) else None
    if record is None:
        raise TrustError("invalid cluster token", 403)
    if record.get("type") != TOKEN_TYPE:
        raise TrustError("role does not match", 403)
    raw_cas = req.get("certificate_authorities")
    if not isinstance(raw_cas, list) or len(raw_cas) != 1:
        raise TrustError(
            f"expected exactly one certificate authority, received {len(raw_cas or [])}"
        )
    ca = _parse_ca(raw_cas[0])
    if ca.type != "host":
        raise TrustError(f"expected host certificate authority, received CA with type {ca.type!r}")
    if ca.cluster == state.name:
        raise TrustError(f"remote cluster has same name as this cluster: {ca.cluster}")
    if not ca.ssh:
        raise TrustError("bad parameter: the certificate authority has no SSH key")
    with locked(state.lock_path):
        data = state._read_json("remote_clusters.json") or {"clusters": {}}
        old = data["clusters"].get(ca.cluster, {})
        data["clusters"][ca.cluster] = {
            "labels": dict(record.get("labels") or {}),
            "host_ca": {"ssh": ca.ssh, "tls": ca.tls},
            "role_map": old.get("role_map", []),
            "last_heartbeat": old.get("last_heartbeat"),
        }
        state._write_json("remote_clusters.json", data)
    log.info("trusted cluster %s joined", ca.cluster)
    answer = [_local_ca(authority, "host"), _local_ca(authority, "user")]
    return json.dumps(
        {"certificate_authorities": [base64.b64encode(r).decode() for r in answer]}
    ).encode()


# --------------------------------------------------------------------------- leaf: join
def join(
    state: ClusterState,
    authority: Authority,
    root_proxy: str,
    root_ca: Path,
    token: str,
    role_map: list[dict[str, Any]],
    tunnel_addr: str | None = None,
    server_version: str = "17.0.0",
) -> str:
    """``trusted-clusters add`` on the leaf: ask the root to validate, store its CAs.

    Returns the root's cluster name (the trusted cluster's name, whatever the
    admin called it: Teleport forces it).
    """
    known = roles(state)
    for mapping in role_map:
        for local in mapping["local"]:
            if local not in known and "{{" not in local:
                raise StateError(
                    f"a role {go_quote(local)} referenced in a mapping "
                    f"{mapping['remote']}:{local} is not defined"
                )
    try:
        ctx = ssl.create_default_context(cafile=str(root_ca))
    except (OSError, ssl.SSLError) as e:
        raise StateError(f"cannot read the root CA {root_ca}: {e}") from None
    own = _local_ca(authority, "host")
    body = json.dumps({
        "token": token,
        "certificate_authorities": [base64.b64encode(own).decode()],
        "teleport_version": server_version,
    }).encode()
    answer = _post(f"https://{root_proxy}/v1/webapi/trustedclusters/validate", body, ctx)
    try:
        raw = json.loads(answer)["certificate_authorities"]
        cas = [_parse_ca(r) for r in raw]
    except (ValueError, KeyError, TypeError, TrustError):
        raise StateError("the root answered the validation with a malformed body") from None
    by_type = {ca.type: ca for ca in cas}
    if "host" not in by_type or "user" not in by_type:
        raise StateError("the root answered without its host and user CAs")
    root = by_type["host"].cluster
    if root == state.name:
        raise StateError(f"remote cluster has same name as this cluster: {root}")
    if tunnel_addr is None:
        tunnel_addr = _tunnel_addr_of(root_proxy, ctx)
    with locked(state.lock_path):
        data = state._read_json("trusted_clusters.json") or {"clusters": {}}
        data["clusters"][root] = {
            "user_ca": {"ssh": by_type["user"].ssh, "tls": by_type["user"].tls},
            "host_ca": {"ssh": by_type["host"].ssh, "tls": by_type["host"].tls},
            "role_map": role_map,
            "proxy_addr": root_proxy,
            "tunnel_addr": tunnel_addr,
        }
        state._write_json("trusted_clusters.json", data)
    return root


def remove_trusted_cluster(state: ClusterState, name: str) -> None:
    """``trusted-clusters rm NAME`` on the leaf: forget the root; the tunnel goes down."""
    with locked(state.lock_path):
        data = state._read_json("trusted_clusters.json") or {"clusters": {}}
        if name not in data["clusters"]:
            raise StateError(f"trusted cluster {go_quote(name)} is not found")
        del data["clusters"][name]
        state._write_json("trusted_clusters.json", data)


def remove_remote_cluster(state: ClusterState, name: str) -> None:
    """``tctl rm rc/NAME`` on the root: forget the leaf and its host CA.

    A tunnel the leaf still keeps up is no longer listed or routed to (a
    "dangling" site, as Teleport calls it).
    """
    with locked(state.lock_path):
        data = state._read_json("remote_clusters.json") or {"clusters": {}}
        if name not in data["clusters"]:
            raise StateError(f"remote cluster {go_quote(name)} is not found")
        del data["clusters"][name]
        state._write_json("remote_clusters.json", data)


def _post(url: str, body: bytes, ctx: ssl.SSLContext) -> bytes:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=30) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as e:
        message = _error_message(e.read())
        if e.code == 403:
            raise StateError(f"the remote server denied access: {message}") from None
        raise StateError(f"the root refused the join: {message}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise StateError("the trusted cluster uses misconfigured HTTP/TLS certificate.") from None
        raise StateError(f"cannot reach the root proxy at {url}: {e.reason}") from None


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip() or "no reason given"


def _tunnel_addr_of(root_proxy: str, ctx: ssl.SSLContext) -> str:
    """The root's reverse-tunnel address, from its ping (``ssh_tunnel_public_addr``)."""
    try:
        with urllib.request.urlopen(f"https://{root_proxy}/webapi/ping", context=ctx,
                                    timeout=30) as resp:
            addr = json.loads(resp.read())["proxy"]["ssh"].get("ssh_tunnel_public_addr", "")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StateError(f"cannot ask the root proxy for its tunnel address: {e}") from None
    if not addr:
        raise StateError("the root proxy has no reverse tunnel address; give --tunnel-addr")
    return str(addr)


# --------------------------------------------------------------------------- leaf: logins
def allowed_login(state: ClusterState, authority: Authority, login: str, cert_b64: str) -> bool:
    """May ``login`` be used with this user certificate on a node of this cluster?

    A certificate of our own user CA: yes (sshd still wants the login among its
    principals). One of a trusted root's user CA: only if a leaf role its
    roles map to grants the login (``{{internal.logins}}`` grants the
    principals), as Teleport's leaf does (trusted-clusters.md §2.5).
    """
    # cryptography, not asyncssh: asyncssh drops the extensions it does not know.
    from cryptography.hazmat.primitives import serialization as ser

    try:
        blob = base64.b64decode(cert_b64, validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        cert = ser.load_ssh_public_identity(blob[4 : 4 + n] + b" " + cert_b64.encode())
    except (ValueError, struct.error, UnsupportedAlgorithm):
        return False
    if not isinstance(cert, ser.SSHCertificate):
        return False
    signer = " ".join(
        cert.signature_key()
        .public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
        .decode()
        .split()[:2]
    )
    principals = [p.decode(errors="replace") for p in cert.valid_principals]
    if signer in {_ssh_line(k) for k in authority.keys("user").trusted}:  # both while rotating
        return login in principals
    for rec in _trusted_records(state).values():
        if signer in rec["user_ca"]["ssh"]:
            known = roles(state)
            for role in map_roles(rec["role_map"], _cert_roles(cert.extensions)):
                logins = known.get(role, ())
                granted = [p for x in logins for p in (principals if x == INTERNAL_LOGINS else [x])]
                if login in granted:
                    return login in principals
            return False
    return False


def _cert_roles(extensions: dict[bytes, bytes]) -> list[str]:
    """The role names of a Teleport certificate's ``teleport-roles`` extension."""
    try:  # cryptography has already unwrapped the extension's SSH string
        return [str(r) for r in json.loads(extensions.get(b"teleport-roles", b""))["roles"]]
    except (ValueError, KeyError, TypeError):
        return []


# --------------------------------------------------------------------------- root: tunnel server
class _TransportListener(asyncssh.SSHListener):
    """The root's end of the leaf's "remote port forward": no socket, only a name."""

    def get_port(self) -> int:
        return _TRANSPORT_PORT

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


# --------------------------------------------------------------------------- the CA push
# Real Teleport's root watches its CAs and pushes them to every connected leaf
# (RotateExternalCertAuthority on the leaf's auth), and watches the leaf's host
# CA and upserts it at the root (lib/reversetunnel/remotesite.go,
# watchCertAuthorities). Here both ride the tunnel's heartbeat session: a line
# is "ping" or a JSON {"cert_authorities": [base64 resource, ...]} (which is
# a heartbeat too), sent when what the sender trusts changed.
_MAX_LINE = 1 << 20


def _cas_message(authority: Authority, ca_types: tuple[str, ...]) -> bytes:
    resources = [base64.b64encode(_local_ca(authority, t)).decode() for t in ca_types]
    return json.dumps({"cert_authorities": resources}, separators=(",", ":")).encode() + b"\n"


def _parse_cas_message(line: bytes, cluster: str, ca_types: tuple[str, ...]) -> dict[str, _CA]:
    """The CAs a peer pushed: ``ca_types`` of ``cluster``, each exactly once; TrustError else."""
    try:
        raw = json.loads(line)["cert_authorities"]
        if not isinstance(raw, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise TrustError("malformed certificate authority push") from None
    cas = [_parse_ca(r) for r in raw]
    by_type = {ca.type: ca for ca in cas}
    if len(cas) != len(ca_types) or set(by_type) != set(ca_types):
        raise TrustError(f"expected the {'/'.join(ca_types)} CAs, got {sorted(by_type)}")
    for ca in cas:
        if ca.cluster != cluster:
            raise TrustError(f"a CA of cluster {ca.cluster!r} pushed by {cluster!r}")
        if not ca.ssh:
            raise TrustError("bad parameter: the certificate authority has no SSH key")
    return by_type


def _store_leaf_host_ca(state: ClusterState, leaf: str, ca: _CA) -> None:
    """At the root: the leaf's host CA as it trusts it now (what GetCertAuthorities lists)."""
    with locked(state.lock_path):
        data = state._read_json("remote_clusters.json") or {"clusters": {}}
        rec = data["clusters"].get(leaf)
        new = {"ssh": ca.ssh, "tls": ca.tls}
        if rec is not None and rec["host_ca"] != new:
            rec["host_ca"] = new
            state._write_json("remote_clusters.json", data)
            log.info("leaf %s host CA updated (%d SSH keys)", leaf, len(ca.ssh))


def _store_root_cas(state: ClusterState, root: str, cas: dict[str, _CA]) -> None:
    """At the leaf: the root's host and user CAs as it trusts them now."""
    with locked(state.lock_path):
        data = state._read_json("trusted_clusters.json") or {"clusters": {}}
        rec = data["clusters"].get(root)
        if rec is None:
            return
        new = {t: {"ssh": cas[t].ssh, "tls": cas[t].tls} for t in ("host", "user")}
        if any(rec[f"{t}_ca"] != new[t] for t in new):
            rec["host_ca"], rec["user_ca"] = new["host"], new["user"]
            state._write_json("trusted_clusters.json", data)
            log.info("root %s CAs updated (user CA: %d SSH keys, host CA: %d)", root,
                     len(new["user"]["ssh"]), len(new["host"]["ssh"]))


class _LineBuffer:
    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > _MAX_LINE:
            raise TrustError("certificate authority push too long")
        return lines


class _HeartbeatSession(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """The root's end: heartbeats and the leaf's host CA in, the root's CAs out."""

    def __init__(self, server: _TunnelServer):
        self._server = server
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._lines = _LineBuffer()
        self._pushed = b""

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:  # type: ignore[override]
        self._chan = chan

    def exec_requested(self, command: str) -> bool:
        return command == "heartbeat"

    def session_started(self) -> None:
        self._push()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        try:
            for line in self._lines.feed(data):
                if line.startswith(b"{"):
                    leaf = self._server.leaf
                    _store_leaf_host_ca(self._server.state, leaf,
                                        _parse_cas_message(line, leaf, ("host",))["host"])
                self._server.heartbeat()
            self._push()
        except (TrustError, OSError) as e:
            log.warning("tunnel from %s: %s", self._server.leaf, e)
            if self._chan is not None:
                self._chan.close()

    def _push(self) -> None:
        """Send our host and user CAs when they changed since the last push."""
        message = _cas_message(self._server.authority, ("host", "user"))
        if message != self._pushed and self._chan is not None:
            self._chan.write(message)
            self._pushed = message


class _TunnelServer(asyncssh.SSHServer):
    """One leaf's tunnel at the root: login with a leaf-host-CA certificate."""

    def __init__(self, state: ClusterState, authority: Authority):
        self._state = state
        self.authority = authority
        self._conn: asyncssh.SSHServerConnection | None = None
        self._leaf = ""

    @property
    def state(self) -> ClusterState:
        return self._state

    @property
    def leaf(self) -> str:
        return self._leaf

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:  # type: ignore[override]
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # asyncssh checks the validity window and that `username` is a principal.
        rec = _remote_records(self._state).get(username)
        if rec is None or _ssh_line(key) not in rec["host_ca"]["ssh"]:
            log.info("tunnel login as %r refused: cluster %s has no matching CA keys", username, username)
            return False
        self._leaf = username
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        if listen_host != _TRANSPORT_HOST or not self._leaf or self._conn is None:
            return False
        live = _live(self._state)
        old = live.tunnels.get(self._leaf)
        if old is not None and old.conn is not self._conn:
            old.conn.close()
        live.tunnels[self._leaf] = _Tunnel(self._conn, _now())
        _store_heartbeat(self._state, self._leaf, _now())
        log.info("reverse tunnel from %s is up", self._leaf)
        return _TransportListener()

    def session_requested(self) -> _HeartbeatSession:
        return _HeartbeatSession(self)

    def heartbeat(self) -> None:
        tunnel = _live(self._state).tunnels.get(self._leaf)
        if tunnel is not None and tunnel.conn is self._conn:
            tunnel.last_heartbeat = _now()

    def connection_lost(self, exc: Exception | None) -> None:
        live = _live(self._state)
        tunnel = live.tunnels.get(self._leaf)
        if tunnel is not None and tunnel.conn is self._conn:
            del live.tunnels[self._leaf]
            _store_heartbeat(self._state, self._leaf, tunnel.last_heartbeat)
            log.info("reverse tunnel from %s is gone", self._leaf)


def _store_heartbeat(state: ClusterState, leaf: str, when: dt.datetime) -> None:
    with locked(state.lock_path):
        data = state._read_json("remote_clusters.json") or {"clusters": {}}
        if leaf in data["clusters"]:
            data["clusters"][leaf]["last_heartbeat"] = _rfc3339(when)
            state._write_json("remote_clusters.json", data)


async def start_tunnel_server(
    state: ClusterState, authority: Authority, host_key: asyncssh.SSHKey, port: int,
    offline_threshold_s: float = DEFAULT_OFFLINE_THRESHOLD_S,
) -> asyncssh.SSHAcceptor:
    """Listen for leaves' reverse tunnels on 127.0.0.1:``port`` (0 = a free port)."""
    _live(state).offline_threshold_s = offline_threshold_s
    return await asyncssh.listen(
        "127.0.0.1", port,
        server_factory=lambda: _TunnelServer(state, authority),
        server_host_keys=[_tunnel_identity(state, authority, host_key)],
        encoding=None, agent_forwarding=False, allow_scp=False, x11_forwarding=False,
        login_timeout=30, keepalive_interval=0,
    )  # fmt: skip


def _tunnel_identity(state: ClusterState, authority: Authority, host_key: asyncssh.SSHKey
                     ) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    """The tunnel listener's host key, certified by the host CA key servers present now."""
    cert = authority.sign_host(
        host_key, ["127.0.0.1", "localhost", "::1", state.name], f"tunnel.{state.name}",
        365 * 86400, authority.keys("host").presented,
    )
    return host_key, cert


async def follow_host_ca(acceptor: asyncssh.SSHAcceptor, state: ClusterState,
                         authority: Authority, host_key: asyncssh.SSHKey) -> None:
    """Run until cancelled: re-certify the tunnel listener when the presented host CA key
    changes (``update_servers``), so leaves that learnt only the new CA still connect."""
    presented = authority.keys("host").presented.public_data
    while True:
        await asyncio.sleep(0.2)
        try:
            now = authority.keys("host").presented.public_data
        except (OSError, ValueError) as e:
            log.warning("cannot read the rotation state: %s", e)
            continue
        if now != presented:
            acceptor.update(server_host_keys=[_tunnel_identity(state, authority, host_key)])
            presented = now


# --------------------------------------------------------------------------- root: dialing leaves
@dataclass(frozen=True)
class LeafRoute:
    """How the root reaches one connected leaf: dial requests, its host CAs."""

    leaf: str
    conn: asyncssh.SSHServerConnection
    host_cas: tuple[str, ...]
    root: str = ""

    async def open(self, req: ProxyRequest) -> tuple[asyncssh.SSHReader[bytes],
                                                      asyncssh.SSHWriter[bytes]]:
        """A channel to what ``req`` names in the leaf; SubsystemError with the leaf's reason."""
        reader, writer = await self._call(
            self.conn.open_connection(_TRANSPORT_HOST, _TRANSPORT_PORT, _encode_request(req), 0)
        )
        return reader, writer

    async def create_connection(
        self, session_factory: Callable[[], Any], host: str, port: int
    ) -> tuple[Any, Any]:
        """asyncssh's tunnel protocol (``connect(tunnel=...)``): dial node ``host:port``."""
        req = ProxyRequest(host, str(port), self.leaf)
        return await self._call(self.conn.create_connection(
            session_factory, _TRANSPORT_HOST, _TRANSPORT_PORT, _encode_request(req), 0
        ))  # fmt: skip

    async def _call(self, aw: Any) -> Any:
        try:
            return await asyncio.wait_for(aw, _DIAL_TIMEOUT_S)
        except asyncssh.ChannelOpenError as e:
            raise SubsystemError(e.reason) from None
        except (asyncssh.Error, OSError, asyncio.TimeoutError):
            raise SubsystemError(
                f"{self.leaf} is offline: no active tunnels to {self.root} found"
            ) from None


class _ChannelWriter:
    """An asyncssh channel writer with the asyncio StreamWriter surface PipeForwarder uses."""

    def __init__(self, writer: asyncssh.SSHWriter[bytes]):
        self._writer = writer
        self.transport = self

    def get_write_buffer_size(self) -> int:
        return self._writer.channel.get_write_buffer_size()

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def can_write_eof(self) -> bool:
        return self._writer.can_write_eof()

    def write_eof(self) -> None:
        self._writer.write_eof()

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()


async def as_streams(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> Any:
    """An open leaf channel as the (reader, writer) pair a PipeForwarder dial returns."""
    return reader, _ChannelWriter(writer)


def leaf_route(state: ClusterState, cluster: str) -> LeafRoute | None:
    """The route to ``cluster`` if it is a leaf whose tunnel is up, else None."""
    tunnel = _live(state).tunnels.get(cluster)
    rec = _remote_records(state).get(cluster)
    if tunnel is None or rec is None:
        return None
    return LeafRoute(cluster, tunnel.conn, tuple(rec["host_ca"]["ssh"]), state.name)


def _encode_request(req: ProxyRequest) -> str:
    return json.dumps({"host": req.host, "port": req.port}, separators=(",", ":"))


# --------------------------------------------------------------------------- leaf: tunnel agent
class _TCPRelay(asyncssh.SSHTCPSession):  # type: ignore[type-arg]
    """The leaf end of one dial: the channel piped to a TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader, self._writer = reader, writer
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:  # type: ignore[override]
        self._chan = chan
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        assert self._chan is not None
        try:
            while data := await self._reader.read(65536):
                self._chan.write(data)
                await self._can_write.wait()
            self._chan.write_eof()
        except (OSError, asyncssh.Error):
            self._chan.close()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._writer.write(data)
        if self._chan is not None and self._writer.transport.get_write_buffer_size() > _HIGH_WATER:
            self._chan.pause_reading()  # the node is slow: hold the root's bytes
            asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError:
            return
        if self._chan is not None:
            self._chan.resume_reading()

    def eof_received(self) -> bool:
        if self._writer.can_write_eof():
            self._writer.write_eof()
        return True

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._can_write.set()
        self._writer.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _AgentClient(asyncssh.SSHClient):
    pass


class _AgentSession(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """The leaf's end of the heartbeat session: stores the CAs the root pushes."""

    def __init__(self, state: ClusterState, root: str):
        self._state, self._root = state, root
        self._lines = _LineBuffer()
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:  # type: ignore[override]
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        try:
            for line in self._lines.feed(data):
                _store_root_cas(self._state, self._root,
                                _parse_cas_message(line, self._root, ("host", "user")))
        except (TrustError, OSError) as e:
            log.warning("tunnel to %s: %s", self._root, e)
            if self._chan is not None:
                self._chan.close()


async def _agent_once(state: ClusterState, authority: Authority, config: ServerConfig,
                      root: str, host_key: asyncssh.SSHKey) -> None:
    rec = _trusted_records(state).get(root)
    if rec is None:
        return
    host, _, port = rec["tunnel_addr"].rpartition(":")
    now = int(time.time())
    cert = authority.host_ca.generate_user_certificate(
        host_key, f"tunnel.{state.name}", principals=[state.name],
        valid_after=now - 60, valid_before=now + 86400,
    )
    root_cas = [asyncssh.import_public_key(line) for line in rec["host_ca"]["ssh"]]

    def handle(orig_host: str, orig_port: int) -> Any:
        return _handle_dial(state, config, orig_host)

    async with asyncssh.connect(
        host.strip("[]"), int(port), username=state.name, client_keys=[(host_key, cert)],
        known_hosts=([], root_cas, []), agent_path=None, config=None,
        client_factory=_AgentClient, encoding=None, keepalive_interval=0,
    ) as conn:  # fmt: skip
        await conn.create_server(handle, _TRANSPORT_HOST, _TRANSPORT_PORT)
        chan, _ = await conn.create_session(lambda: _AgentSession(state, root), "heartbeat")
        log.info("reverse tunnel to %s at %s is up", root, rec["tunnel_addr"])
        pushed = b""
        while root in _trusted_records(state):
            if conn.is_closed() or chan.is_closing():
                return  # the root went away: _agent_loop dials again
            # a heartbeat; our host CA instead when it changed (the root stores it)
            message = _cas_message(authority, ("host",))
            chan.write(message if message != pushed else b"ping\n")
            pushed = message
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
        log.info("trusted cluster %s removed: closing its tunnel", root)


async def _handle_dial(state: ClusterState, config: ServerConfig, orig: str) -> _TCPRelay:
    try:
        data = json.loads(orig)
        req = ProxyRequest(str(data["host"]), str(data["port"]), state.name)
    except (ValueError, KeyError, TypeError):
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_CONNECT_FAILED, "malformed dial request"
        ) from None
    try:
        host, port = resolve_local(req, state, config)
    except SubsystemError as e:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(e)) from None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                _DIAL_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError) as e:
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e) or "timed out"
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_CONNECT_FAILED,
            f"failed connecting to node {req.host} at {host}:{port}: {reason}",
        ) from None
    return _TCPRelay(reader, writer)


async def _agent_loop(state: ClusterState, authority: Authority, config: ServerConfig,
                      root: str, host_key: asyncssh.SSHKey) -> None:
    while root in _trusted_records(state):
        try:
            await _agent_once(state, authority, config, root, host_key)
        except (OSError, asyncssh.Error, ValueError) as e:
            log.info("reverse tunnel to %s: %s", root, e)
        await asyncio.sleep(_RECONNECT_S)


async def run_tunnel_agents(state: ClusterState, authority: Authority, config: ServerConfig,
                            host_key: asyncssh.SSHKey) -> None:
    """Keep one reverse tunnel per trusted root in ``trusted_clusters.json`` (until cancelled)."""
    agents: dict[str, asyncio.Task[None]] = {}
    try:
        while True:
            for root in _trusted_records(state):
                task = agents.get(root)
                if task is None or task.done():
                    agents[root] = asyncio.ensure_future(
                        _agent_loop(state, authority, config, root, host_key)
                    )
            await asyncio.sleep(0.2)
    finally:
        for task in agents.values():
            task.cancel()
