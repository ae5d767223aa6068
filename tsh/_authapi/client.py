"""The auth API client: grpclib over the inner TLS over an :data:`~.stream.AuthDialer` stream.

grpclib, not grpcio: grpclib is pure Python on asyncio and h2, so it runs over
any stream asyncio can wrap in TLS, with our own SNI and ALPN; grpcio can use
neither an existing stream nor a chosen ALPN (auth-grpc.md §4). Its private
``Channel._create_connection`` is the one hook used (grpclib is pinned).

Every string the auth server sends is checked where it is parsed here
(cluster names, CA keys, certificates) before anything writes it to disk.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from google.protobuf.message import DecodeError, Message
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from .._core.knownhosts import parse_ca_key
from .._core.names import validate_cluster_name
from .._exceptions import AuthAPIError, InvalidNameError, NotLoggedInError, TshError
from ._pb import types_pb2 as typespb
from .stream import AuthDialer, AuthStream, AuthStreamError
from .tls import client_context, encode_cluster_name

if TYPE_CHECKING:
    from .._connect import ProxyConnection
    from .._store.layout import ProfilePaths
    from ._pb import authservice_pb2 as authpb

__all__ = ["AuthClient", "CertAuthority", "RemoteCluster", "Node", "IssuedCerts"]

_M = TypeVar("_M", bound=Message)

#: Seconds for one call, connection included.
CALL_TIMEOUT = 30.0
#: ListUnifiedResources/ListResources page size (Teleport's own ceiling is 1000).
PAGE_SIZE = 1000
#: Characters of a server's text shown in an error message.
_MESSAGE_LIMIT = 300

_AUTH = "/proto.AuthService/"
_TRUST = "/teleport.trust.v1.TrustService/"
_PRESENCE = "/teleport.presence.v1.PresenceService/"


class CertAuthority(NamedTuple):
    """One cluster's CA as GetCertAuthorities lists it (public parts only, checked)."""

    cluster: str
    ssh_keys: tuple[str, ...]  # "<type> <base64>"
    tls_certs: tuple[str, ...]  # PEM


class RemoteCluster(NamedTuple):
    """A leaf cluster as the root lists it."""

    name: str
    status: str  # "online" or "offline"
    last_heartbeat: float | None  # Unix time; None: never
    labels: dict[str, str]


class Node(NamedTuple):
    """An SSH node as ListUnifiedResources lists it."""

    id: str  # Metadata.Name, the node's UUID
    hostname: str
    addr: str
    labels: dict[str, str]  # static and command labels
    tunnel: bool
    sub_kind: str


class IssuedCerts(NamedTuple):
    """GenerateUserCerts' answer: the new SSH (authorized_keys text) and TLS (PEM) certificates."""

    ssh: str
    tls: str


def _one_line(text: str) -> str:
    line = " ".join("".join(c if c.isprintable() else "?" for c in text).split())
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 3] + "..."


class _StreamChannel(Channel):
    """A grpclib Channel whose connection is TLS over a dialer's stream, not a TCP dial."""

    def __init__(self, dialer: AuthDialer, cluster: str, ctx: ssl.SSLContext, sni: str) -> None:
        super().__init__(host=sni, port=443, ssl=ctx)
        self._dialer = dialer
        self._cluster = cluster
        self._sni = sni
        self.said: Any = lambda: ""
        self._streams: list[tuple[AuthStream, asyncio.Transport]] = []

    async def _create_connection(self) -> Any:
        stream = await self._dialer(self._cluster)
        self.said = stream.said
        try:
            transport, protocol = await asyncio.get_running_loop().create_connection(
                self._protocol_factory, sock=stream.sock, ssl=self._ssl,
                server_hostname=self._sni, ssl_handshake_timeout=CALL_TIMEOUT,
            )  # fmt: skip
        except BaseException:
            stream.sock.close()
            await stream.aclose()
            raise
        self._streams.append((stream, transport))
        return protocol

    async def aclose(self) -> None:
        """Close the HTTP/2 connection and wait for the streams under it to end."""
        self.close()
        streams, self._streams = self._streams, []
        for stream, transport in streams:
            transport.abort()  # the auth server learns from the stream's end
            await asyncio.sleep(0)  # let the transport's connection_lost run
            await stream.aclose()


class AuthClient:
    """Calls on one cluster's auth API. Open with :meth:`open` or :meth:`for_profile`; close after."""

    def __init__(self, channel: _StreamChannel, cluster: str) -> None:
        self._channel = channel
        self.cluster = cluster

    @classmethod
    def open(
        cls, dialer: AuthDialer, cluster: str, root_cluster: str,
        cert_file: str, key_file: str, ca_file: str,
    ) -> AuthClient:  # fmt: skip
        """A client for ``cluster``'s auth server, trusting only ``ca_file``.

        Nothing is dialled until the first call. Raises NotLoggedInError when a
        file is missing.
        """
        try:
            ctx = client_context(cert_file, key_file, ca_file)
        except FileNotFoundError as e:
            raise NotLoggedInError(f"{e.filename} is missing; log in again") from None
        except (OSError, ssl.SSLError) as e:
            raise NotLoggedInError(f"cannot use the TLS certificate or CA for {cluster}: {e}") from None
        return cls(_StreamChannel(dialer, cluster, ctx, encode_cluster_name(root_cluster)), cluster)

    @classmethod
    def for_profile(
        cls, pc: ProxyConnection, paths: ProfilePaths, cluster: str | None = None
    ) -> AuthClient:
        """A client for ``cluster`` (default: the profile's) through the proxy connection ``pc``.

        Uses the profile's TLS certificate and key and ``cas/<cluster>.pem``.
        """
        profile = pc.profile
        cluster = validate_cluster_name(cluster or profile.cluster)
        if profile.key_storage == "agent":
            raise NotLoggedInError(
                "the auth API needs the TLS key on disk, and this profile keeps its key "
                "in the ssh-agent only (-k only)"
            )
        single = paths.tls_cert_legacy.exists() or not paths.tls_cert.exists()
        cert = paths.tls_cert_legacy if single else paths.tls_cert
        key = paths.private_key if single else paths.tls_key
        return cls.open(
            pc.dial_auth, cluster, profile.root_cluster, str(cert), str(key), str(paths.tls_ca(cluster))
        )

    async def close(self) -> None:
        """Close the connection (and the stream under it)."""
        await self._channel.aclose()

    async def __aenter__(self) -> AuthClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- calls

    async def _call(self, path: str, request: Message, reply_type: type[_M]) -> _M:
        method: UnaryUnaryMethod[Message, _M] = UnaryUnaryMethod(
            self._channel, path, type(request), reply_type
        )
        where = f"the auth server of cluster {self.cluster}"
        try:
            return await method(request, timeout=CALL_TIMEOUT)
        except GRPCError as e:
            raise _status_error(e, path, where) from None
        except ssl.SSLCertVerificationError as e:
            raise AuthAPIError(
                f"{where} is not trusted: its certificate is not signed by the cluster's CA "
                f"({_one_line(e.verify_message or str(e))})",
                "UNAVAILABLE",
            ) from None
        except AuthStreamError as e:
            raise AuthAPIError(f"cannot reach {where}: {e}", "UNAVAILABLE") from None
        except TshError:
            raise
        except (OSError, ssl.SSLError, asyncio.TimeoutError, StreamTerminatedError, ProtocolError) as e:
            said = _one_line(self._channel.said())
            reason = said or _one_line(str(e)) or type(e).__name__
            if isinstance(e, asyncio.TimeoutError):
                reason = said or "timed out"
            raise AuthAPIError(f"cannot reach {where}: {reason}", "UNAVAILABLE") from None
        except DecodeError:
            raise AuthAPIError(f"{where} sent a malformed answer to {path}", "INTERNAL") from None

    async def ping(self) -> authpb.PingResponse:
        """``proto.AuthService/Ping``: the cluster's name and version."""
        from ._pb import authservice_pb2 as authpb  # each call its own messages: start-up time

        return await self._call(_AUTH + "Ping", authpb.PingRequest(), authpb.PingResponse)

    async def generate_user_certs(
        self,
        *,
        ssh_public_key: str,
        tls_public_key: str | None,
        username: str,
        expires: float,
        route_to_cluster: str,
        split_keys: bool,
    ) -> IssuedCerts:
        """``GenerateUserCerts`` for the existing keys (tsh's reissue: ``Usage=All``).

        ``split_keys``: v17 servers get ``SSHPublicKey``/``TLSPublicKey`` (22/23),
        older ones the single ``PublicKey`` (1).
        """
        req = user_certs_request(
            ssh_public_key=ssh_public_key, tls_public_key=tls_public_key, username=username,
            expires=expires, route_to_cluster=route_to_cluster, split_keys=split_keys,
        )  # fmt: skip
        from ._pb import authservice_pb2 as authpb

        certs = await self._call(_AUTH + "GenerateUserCerts", req, authpb.Certs)
        try:
            return IssuedCerts(certs.SSH.decode("ascii"), certs.TLS.decode("ascii"))
        except UnicodeDecodeError:
            raise AuthAPIError("the auth server sent a malformed certificate", "INTERNAL") from None

    async def cert_authorities(self, ca_type: str = "host") -> list[CertAuthority]:
        """``TrustService/GetCertAuthorities`` without keys: every cluster's CA of ``ca_type``."""
        from ._pb import trust_service_pb2 as trustpb

        reply = await self._call(
            _TRUST + "GetCertAuthorities",
            trustpb.GetCertAuthoritiesRequest(type=ca_type, include_key=False),
            trustpb.GetCertAuthoritiesResponse,
        )
        return [_parse_ca(ca) for ca in reply.cert_authorities_v2]

    async def remote_clusters(self) -> list[RemoteCluster]:
        """``PresenceService/ListRemoteClusters``, every page: the leaves the user may see."""
        from ._pb import presence_service_pb2 as presencepb

        out: list[RemoteCluster] = []
        token = ""
        for _ in range(10_000):  # a server that never ends its pages must not hang us
            reply = await self._call(
                _PRESENCE + "ListRemoteClusters",
                presencepb.ListRemoteClustersRequest(page_size=0, page_token=token),
                presencepb.ListRemoteClustersResponse,
            )
            out.extend(_parse_remote(rc) for rc in reply.remote_clusters)
            token = reply.next_page_token
            if not token:
                return out
        raise AuthAPIError("the auth server did not end its list of remote clusters", "INTERNAL")

    async def list_nodes(
        self, labels: dict[str, str] | None = None, search: Sequence[str] = ()
    ) -> list[Node]:
        """Every node the user may see, as tsh ls pages ``ListUnifiedResources`` (kind node).

        Falls back to ``ListResources`` on a server that answers UNIMPLEMENTED (before v14).
        """
        from ._pb import authservice_pb2 as authpb

        try:
            return await self._pages(
                _AUTH + "ListUnifiedResources",
                lambda key: authpb.ListUnifiedResourcesRequest(
                    Kinds=["node"], Limit=PAGE_SIZE, StartKey=key, Labels=labels or {},
                    SearchKeywords=list(search), SortBy=typespb.SortBy(Field="kind"),
                ),
                authpb.ListUnifiedResourcesResponse,
            )  # fmt: skip
        except AuthAPIError as e:
            if e.status != "UNIMPLEMENTED":
                raise
        return await self._pages(
            _AUTH + "ListResources",
            lambda key: authpb.ListResourcesRequest(
                ResourceType="node", Namespace="default", Limit=PAGE_SIZE, StartKey=key,
                Labels=labels or {}, SearchKeywords=list(search),
            ),
            authpb.ListResourcesResponse,
        )  # fmt: skip

    async def _pages(self, path: str, make: Any, reply_type: Any) -> list[Node]:
        nodes: list[Node] = []
        key = ""
        for _ in range(1_000_000):
            reply = await self._call(path, make(key), reply_type)
            nodes.extend(_parse_node(r.Node) for r in reply.Resources if r.HasField("Node"))
            if not reply.NextKey or reply.NextKey == key:
                return nodes
            key = reply.NextKey
        raise AuthAPIError("the auth server did not end its list of nodes", "INTERNAL")


def user_certs_request(
    *,
    ssh_public_key: str,
    tls_public_key: str | None,
    username: str,
    expires: float,
    route_to_cluster: str,
    split_keys: bool,
) -> authpb.UserCertsRequest:
    """The ``UserCertsRequest`` of a reissue, as tsh's prepareUserCertsRequest builds it."""
    from ._pb import authservice_pb2 as authpb

    req = authpb.UserCertsRequest(
        Username=username, RouteToCluster=route_to_cluster, Usage=authpb.UserCertsRequest.All
    )
    req.Expires.FromSeconds(int(expires))
    if split_keys:
        req.SSHPublicKey = ssh_public_key.encode()
        if tls_public_key is not None:
            req.TLSPublicKey = tls_public_key.encode()
    else:
        req.PublicKey = ssh_public_key.encode()
    return req


def _status_error(e: GRPCError, path: str, where: str) -> AuthAPIError:
    status = e.status.name if isinstance(e.status, Status) else "UNKNOWN"
    said = _one_line(e.message or "")
    if e.status is Status.UNIMPLEMENTED:
        return AuthAPIError(
            f"{where} does not serve {path.rsplit('/', 1)[-1]} (an older Teleport?): {said}", status
        )
    if e.status in (Status.PERMISSION_DENIED, Status.UNAUTHENTICATED):
        return AuthAPIError(f"{where} denied access: {said}", status)
    return AuthAPIError(f"{where}: {said or status}", status)


def _malformed(what: str) -> AuthAPIError:
    return AuthAPIError(f"malformed answer from the auth server: {what}", "INTERNAL")


def _parse_ca(ca: typespb.CertAuthorityV2) -> CertAuthority:
    try:
        cluster = validate_cluster_name(ca.Spec.ClusterName)
    except InvalidNameError:
        raise _malformed(f"bad cluster name {ca.Spec.ClusterName!r}") from None
    keys: list[str] = []
    certs: list[str] = []
    for keyset in (ca.Spec.ActiveKeys, ca.Spec.AdditionalTrustedKeys):
        for pair in keyset.SSH:
            try:
                keys.append(parse_ca_key(pair.PublicKey.decode("ascii")))
            except (UnicodeDecodeError, ValueError):
                raise _malformed(f"bad SSH CA key for {cluster}") from None
        for tls in keyset.TLS:
            certs.append(_check_pem(tls.Cert, cluster))
    return CertAuthority(cluster, tuple(dict.fromkeys(keys)), tuple(dict.fromkeys(certs)))


def _check_pem(data: bytes, cluster: str) -> str:
    """A CA certificate, re-encoded from its parsed form (never the server's bytes as they came)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.PEM).decode("ascii")
    except ValueError:
        raise _malformed(f"bad TLS CA certificate for {cluster}") from None


def _parse_remote(rc: typespb.RemoteClusterV3) -> RemoteCluster:
    try:
        name = validate_cluster_name(rc.Metadata.Name)
    except InvalidNameError:
        raise _malformed(f"bad cluster name {rc.Metadata.Name!r}") from None
    beat: float | None = None
    if rc.Status.HasField("LastHeartbeat"):
        stamp = rc.Status.LastHeartbeat
        # Go's zero time (0001-01-01) or the field left out both mean "never".
        beat = stamp.seconds + stamp.nanos / 1e9 if stamp.seconds > 0 else None
    status = rc.Status.Connection if rc.Status.Connection in ("online", "offline") else "offline"
    return RemoteCluster(name, status, beat, dict(rc.Metadata.Labels))


def _parse_node(server: typespb.ServerV2) -> Node:
    labels = dict(server.Metadata.Labels)
    for key, cmd in server.Spec.CmdLabels.items():
        labels[key] = cmd.Result
    return Node(
        id=server.Metadata.Name,
        hostname=server.Spec.Hostname,
        addr=server.Spec.Addr,
        labels=labels,
        tunnel=server.Spec.UseTunnel,
        sub_kind=server.SubKind,
    )
