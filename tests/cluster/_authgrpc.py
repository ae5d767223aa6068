"""The cluster's auth gRPC server (grpclib), as Teleport's auth service answers tsh.

Reached through the proxy's ``proxy:@<cluster>`` subsystem, which pipes to this
loopback TLS listener (docs/protocol.md, "The auth API"). TLS identity as a
real auth server: a certificate from the cluster's host CA for
``*.teleport.cluster.local`` and ``teleport.cluster.local``, a client
certificate required, the CA pool chosen by the SNI (hex of the caller's
root cluster): the local CA, plus the trusted roots' user CAs on a leaf.

Served: ``proto.AuthService`` Ping, GenerateUserCerts, ListResources,
ListUnifiedResources; ``teleport.trust.v1.TrustService/GetCertAuthorities``;
``teleport.presence.v1.PresenceService/ListRemoteClusters``. Any other method
gets what grpc-go sends: a response with a content-type and status
UNIMPLEMENTED, ``unknown method M for service S`` (grpclib's own reply has no
content-type, which clients report as UNKNOWN).
"""

from __future__ import annotations

import bisect
import datetime as dt
import ipaddress
import json
import logging
import os
import ssl
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from tests.cluster._files import atomic_write

from . import _trust
from ._authpb import authservice_pb2 as authpb
from ._authpb import presence_service_pb2 as presencepb
from ._authpb import trust_service_pb2 as trustpb
from ._authpb import types_pb2 as typespb
from ._ca import Authority, authority_key_id, public_line
from ._config import ServerConfig
from ._state import ClusterState, Node, User

__all__ = ["start_auth_server", "encode_cluster_name", "decode_cluster_name", "node_uuid",
           "filter_nodes"]

log = logging.getLogger("tests.cluster.auth")

API_DOMAIN = "teleport.cluster.local"
#: Teleport's defaults.MaxIterationLimit / the page size when a request gives none.
MAX_PAGE = 1000
_BACKDATE_S = 60


def encode_cluster_name(name: str) -> str:
    return f"{name.encode().hex()}.{API_DOMAIN}"


def decode_cluster_name(sni: str | None) -> str | None:
    """The cluster an SNI names (``<hex>.teleport.cluster.local``), or None."""
    if not sni or not sni.endswith("." + API_DOMAIN):
        return None
    try:
        return bytes.fromhex(sni[: -len(API_DOMAIN) - 1]).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def node_uuid(cluster: str, node: str) -> str:
    """A registered node's stable UUID (Teleport names nodes by UUID; tsh ls -v shows it)."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}.{cluster}"))


# ---- TLS


def _server_identity(authority: Authority, out_dir: Path,
                     issuer: tuple[Any, x509.Certificate] | None = None) -> tuple[Path, Path]:
    """The auth server's key and certificate from the cluster's host CA (TLS), for the API domain.

    ``issuer``: the host CA's TLS key servers present now (``keys("host").presented_tls``).
    """
    issuer_key, issuer_cert = issuer or (authority.tls_ca_key, authority.tls_ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    names: list[x509.GeneralName] = [
        x509.DNSName(f"*.{API_DOMAIN}"),
        x509.DNSName(API_DOMAIN),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, authority.cluster)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=_BACKDATE_S))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(authority_key_id(issuer_cert), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    key_path, cert_path = out_dir / "auth.key", out_dir / "auth.pem"
    atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _context(cert: Path, key: Path, cas: Iterable[bytes]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata="".join(c.decode() for c in cas))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def server_ssl_context(state: ClusterState, authority: Authority) -> ssl.SSLContext:
    """The listener's context; per handshake, the client CA pool is picked from the SNI.

    Both follow a CA rotation, as a real auth server reloads: the server
    certificate comes from the host CA's TLS key servers present now (the new
    one from ``update_servers`` on), and the pool holds every user CA TLS
    certificate trusted now (ours, both while rotating; a trusted root's, as it
    last pushed them over the tunnel, tests/cluster/_trust.py).
    """
    identities: dict[bytes, tuple[Path, Path]] = {}
    contexts: dict[tuple[bytes, tuple[bytes, ...]], ssl.SSLContext] = {}

    def context_for(name: str | None) -> ssl.SSLContext:
        host = authority.keys("host")
        assert host.presented_tls is not None
        issuer_id = host.presented_tls[1].fingerprint(hashes.SHA256())
        if issuer_id not in identities:
            identities.clear()
            identities[issuer_id] = _server_identity(authority, state.proxy_dir, host.presented_tls)
        cas = [authority.tls_ca_pem, *authority.keys("user").trusted_tls_pem]
        if name is not None and name != state.name:
            cas += _trust.trusted_user_ca_tls(state)  # a trusted root's user
        key = (issuer_id, tuple(dict.fromkeys(cas)))
        if key not in contexts:
            if len(contexts) > 16:
                contexts.clear()
            contexts[key] = _context(*identities[issuer_id], key[1])
        return contexts[key]

    def pick(sslobj: ssl.SSLObject, sni: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = context_for(decode_cluster_name(sni))
        return None

    local = context_for(state.name)
    local.sni_callback = pick
    return local


# ---- the services


class _GrpcGoMapping(dict):  # type: ignore[type-arg]
    """The method table, answering unknown methods as grpc-go does (see the module docstring)."""

    def get(self, path: str, default: Any = None) -> Any:  # noqa: D401
        found = super().get(path)
        if found is not None:
            return found
        service, _, method = path.lstrip("/").rpartition("/")
        known = {p.lstrip("/").rpartition("/")[0] for p in self}
        text = (f"unknown method {method} for service {service}" if service in known
                else f"unknown service {service}")

        async def unimplemented(stream: Stream[Any, Any]) -> None:
            raise GRPCError(Status.UNIMPLEMENTED, text)

        return Handler(unimplemented, Cardinality.UNARY_UNARY, typespb.SortBy, typespb.SortBy)


def _unary(func: Callable[..., Any], req: Any, resp: Any) -> Handler:
    async def handle(stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        await stream.send_message(await func(stream, request))

    return Handler(handle, Cardinality.UNARY_UNARY, req, resp)


class AuthService:
    """One cluster's auth API over its state files (re-read when they change)."""

    def __init__(self, state: ClusterState, authority: Authority, config: ServerConfig):
        self.state = state
        self.authority = authority
        self.config = config
        self._nodes_cache: tuple[tuple[int, int, int] | None, list[Node]] | None = None
        self._servers: dict[str, typespb.ServerV2] = {}  # node name -> its message, for that cache

    def __mapping__(self) -> dict[str, Handler]:
        a, t, p = "/proto.AuthService/", "/teleport.trust.v1.TrustService/", \
            "/teleport.presence.v1.PresenceService/"
        table = {
            a + "Ping": _unary(self.ping, authpb.PingRequest, authpb.PingResponse),
            a + "GenerateUserCerts": _unary(self.generate_user_certs, authpb.UserCertsRequest,
                                            authpb.Certs),
            a + "ListResources": _unary(self.list_resources, authpb.ListResourcesRequest,
                                        authpb.ListResourcesResponse),
            a + "ListUnifiedResources": _unary(self.list_unified, authpb.ListUnifiedResourcesRequest,
                                               authpb.ListUnifiedResourcesResponse),
            t + "GetCertAuthorities": _unary(self.cert_authorities,
                                             trustpb.GetCertAuthoritiesRequest,
                                             trustpb.GetCertAuthoritiesResponse),
            p + "ListRemoteClusters": _unary(self.remote_clusters,
                                             presencepb.ListRemoteClustersRequest,
                                             presencepb.ListRemoteClustersResponse),
        }
        return {path: h for path, h in table.items()
                if path.rsplit("/", 1)[1] not in self.config.auth_unimplemented}

    # -- identity
    def _user(self, stream: Stream[Any, Any]) -> tuple[User | None, str, float]:
        """The caller: local user record (None for a trusted root's user), name, cert expiry."""
        cert = stream.peer.cert() if stream.peer else None
        if not cert:
            raise GRPCError(Status.UNAUTHENTICATED, "access denied: invalid client certificate")
        subject = dict(x[0] for x in cert.get("subject", ()))
        name = subject.get("commonName", "")
        expires = ssl.cert_time_to_seconds(cert["notAfter"])
        return self.state.users().get(name), name, expires

    # -- AuthService
    async def ping(self, stream: Stream[Any, Any], req: authpb.PingRequest) -> authpb.PingResponse:
        return authpb.PingResponse(ClusterName=self.state.name,
                                   ServerVersion=self.config.server_version,
                                   ProxyPublicAddr=self.config.web_addr)

    async def generate_user_certs(
        self, stream: Stream[Any, Any], req: authpb.UserCertsRequest
    ) -> authpb.Certs:
        from ._web import ApiError, _parse_ssh_key, _parse_tls_key

        user, name, cert_expires = self._user(stream)
        if user is None:
            raise GRPCError(Status.PERMISSION_DENIED, f"access denied to user {name!r}")
        if req.Username != name:
            raise GRPCError(Status.PERMISSION_DENIED,
                            f"access denied: {name} cannot request certificates for {req.Username!r}")
        route = req.RouteToCluster or self.state.name
        if route != self.state.name and route not in {rc.name for rc in _trust.remote_clusters(self.state)}:
            raise GRPCError(Status.NOT_FOUND, f"remote cluster {json.dumps(route)} is not found")
        try:
            if self.config.split_keys and not req.PublicKey:
                if not req.SSHPublicKey and not req.TLSPublicKey:
                    raise GRPCError(Status.INVALID_ARGUMENT,
                                    "'ssh_public_key' or 'tls_public_key' must be set")
                ssh = _parse_ssh_key(req.SSHPublicKey) if req.SSHPublicKey else None
                tls = _parse_tls_key(req.TLSPublicKey) if req.TLSPublicKey else None
            else:
                if req.SSHPublicKey or req.TLSPublicKey:
                    raise GRPCError(Status.INVALID_ARGUMENT, "unknown fields 22/23 on a v16 server")
                if not req.PublicKey:
                    raise GRPCError(Status.INVALID_ARGUMENT, "missing parameter PublicKey")
                ssh = _parse_ssh_key(req.PublicKey)
                tls = ssh.pyca_key
        except ApiError as e:
            raise GRPCError(Status.INVALID_ARGUMENT, str(e)) from None
        # Never beyond the identity asking: a reissue expires with the login.
        until = min(req.Expires.seconds or cert_expires, cert_expires)
        ttl_s = max(int(until - time.time()), 1)
        out = authpb.Certs(
            TLSCACerts=[self.authority.tls_ca_pem],
            SSHCACerts=[public_line(self.authority.user_ca).encode() + b"\n"],
        )
        if ssh is not None:
            out.SSH = self.authority.sign_user(ssh, user, ttl_s, route).export_certificate("openssh")
        if tls is not None:
            out.TLS = self.authority.tls_client_cert(tls, user, ttl_s)
        log.info("issued certificates to %s for cluster %s", name, route)
        return out

    def _sorted_nodes(self) -> list[Node]:
        """Every node sorted by name, re-read only when nodes.json changes (10,000-node listings)."""
        try:
            st = os.stat(self.state.data_dir / "nodes.json")
            sig: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            sig = None
        if self._nodes_cache is None or self._nodes_cache[0] != sig:
            nodes = sorted(self.state.nodes().values(), key=lambda n: (n.name, n.addr))
            self._nodes_cache = (sig, nodes)
            self._servers = {}
        return self._nodes_cache[1]

    def _server(self, node: Node) -> typespb.ServerV2:
        built = self._servers.get(node.name)
        if built is None:
            built = self._servers[node.name] = self._build_server(node)
        return built

    def _build_server(self, node: Node) -> typespb.ServerV2:
        return typespb.ServerV2(
            Kind="node", SubKind="openssh", Version="v2",
            Metadata=typespb.Metadata(Name=node_uuid(self.state.name, node.name),
                                      Namespace="default", Labels=dict(node.labels)),
            Spec=typespb.ServerSpecV2(Addr=node.addr, Hostname=node.name),
        )  # fmt: skip

    def _page(self, labels: dict[str, str], search: Iterable[str], start: str, limit: int
              ) -> tuple[list[authpb.PaginatedResource], str, int]:
        """One page of the matching nodes from ``start`` (a name), the next key, the total."""
        if limit < 0:
            raise GRPCError(Status.INVALID_ARGUMENT, "nonpositive parameter limit")
        limit = min(limit or MAX_PAGE, MAX_PAGE)
        nodes = self._sorted_nodes()
        if labels or search:
            nodes = filter_nodes(nodes, labels, search)
        begin = bisect.bisect_left([n.name for n in nodes], start) if start else 0
        page = nodes[begin : begin + limit]
        following = nodes[begin + limit : begin + limit + 1]
        nxt = following[0].name if following else ""
        return [authpb.PaginatedResource(Node=self._server(n)) for n in page], nxt, len(nodes)

    async def list_unified(
        self, stream: Stream[Any, Any], req: authpb.ListUnifiedResourcesRequest
    ) -> authpb.ListUnifiedResourcesResponse:
        self._user(stream)
        kinds = list(req.Kinds)
        if kinds and "node" not in kinds:
            return authpb.ListUnifiedResourcesResponse()
        page, nxt, _ = self._page(dict(req.Labels), req.SearchKeywords, req.StartKey, req.Limit)
        return authpb.ListUnifiedResourcesResponse(Resources=page, NextKey=nxt)

    async def list_resources(
        self, stream: Stream[Any, Any], req: authpb.ListResourcesRequest
    ) -> authpb.ListResourcesResponse:
        self._user(stream)
        if req.ResourceType != "node":
            raise GRPCError(Status.INVALID_ARGUMENT,
                            f"resource type {json.dumps(req.ResourceType)} is not supported")
        if req.Limit <= 0:
            raise GRPCError(Status.INVALID_ARGUMENT, "nonpositive parameter limit")
        page, nxt, total = self._page(dict(req.Labels), req.SearchKeywords, req.StartKey, req.Limit)
        return authpb.ListResourcesResponse(Resources=page, NextKey=nxt,
                                            TotalCount=total if req.NeedTotalCount else 0)

    # -- TrustService
    async def cert_authorities(
        self, stream: Stream[Any, Any], req: trustpb.GetCertAuthoritiesRequest
    ) -> trustpb.GetCertAuthoritiesResponse:
        self._user(stream)
        if req.include_key:
            raise GRPCError(Status.PERMISSION_DENIED,
                            "access denied to perform action \"read\" on \"cert_authority\"")
        if req.type not in ("host", "user"):
            raise GRPCError(Status.INVALID_ARGUMENT, f"authority type {req.type!r} is not supported")
        # Every key the CA trusts now, active first: both during a rotation.
        now = self.authority.keys(req.type)
        cas = [(self.state.name, [public_line(k) for k in now.trusted], list(now.trusted_tls_pem))]
        if req.type == "host":
            cas += [(n, keys, pems) for n, (keys, pems) in _trust.remote_host_cas(self.state).items()]
        return trustpb.GetCertAuthoritiesResponse(cert_authorities_v2=[
            typespb.CertAuthorityV2(
                Kind="cert_authority", Version="v2", Metadata=typespb.Metadata(Name=name),
                Spec=typespb.CertAuthoritySpecV2(
                    Type=req.type, ClusterName=name,
                    ActiveKeys=typespb.CAKeySet(
                        SSH=[typespb.SSHKeyPair(PublicKey=k.encode()) for k in keys],
                        TLS=[typespb.TLSKeyPair(Cert=p) for p in pems],
                    ),
                ),
            )
            for name, keys, pems in cas
        ])  # fmt: skip

    # -- PresenceService
    async def remote_clusters(
        self, stream: Stream[Any, Any], req: presencepb.ListRemoteClustersRequest
    ) -> presencepb.ListRemoteClustersResponse:
        self._user(stream)
        leaves = _trust.remote_clusters(self.state)
        size = req.page_size if req.page_size > 0 else MAX_PAGE
        start = next((i for i, rc in enumerate(leaves) if rc.name >= req.page_token), len(leaves)) \
            if req.page_token else 0
        page, rest = leaves[start : start + size], leaves[start + size :]
        out = presencepb.ListRemoteClustersResponse(next_page_token=rest[0].name if rest else "")
        for rc in page:
            item = out.remote_clusters.add(Kind="remote_cluster", Version="v3")
            item.Metadata.Name = rc.name
            item.Metadata.Labels.update(rc.labels)
            item.Status.Connection = rc.status
            if rc.last_heartbeat is not None:
                item.Status.LastHeartbeat.FromDatetime(rc.last_heartbeat)
        return out


def filter_nodes(nodes: Iterable[Node], labels: dict[str, str], search: Iterable[str]) -> list[Node]:
    """Nodes with every label and every search keyword (case-insensitive, any field), as Teleport."""
    words = [w.lower() for w in search if w]
    out = []
    for node in nodes:
        have = dict(node.labels)
        if any(have.get(k) != v for k, v in labels.items()):
            continue
        fields = [node.name.lower(), node.addr.lower(),
                  *(f"{k}={v}".lower() for k, v in node.labels), *(v.lower() for _, v in node.labels)]
        if all(any(w in f for f in fields) for w in words):
            out.append(node)
    return out


async def start_auth_server(
    state: ClusterState, authority: Authority, config: ServerConfig, port: int
) -> tuple[Server, int]:
    """Listen on 127.0.0.1:``port`` (0 = free); returns the server and its port."""
    server = Server([AuthService(state, authority, config)])
    server._mapping = _GrpcGoMapping(server._mapping)  # grpclib 0.4.x: the table request_handler reads
    await server.start("127.0.0.1", port, ssl=server_ssl_context(state, authority))
    bound = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return server, bound
