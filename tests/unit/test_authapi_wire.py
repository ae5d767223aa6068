"""tsh._authapi's pure parts, and the wire bytes the client sends, read independently."""

from __future__ import annotations

import pytest

from tests.cluster._authgrpc import decode_cluster_name, filter_nodes
from tests.cluster._state import Node
from tsh._authapi import client as authclient
from tsh._authapi._pb import presence_service_pb2 as presencepb
from tsh._authapi._pb import types_pb2 as typespb
from tsh._authapi.tls import encode_cluster_name
from tsh._exceptions import AuthAPIError


def read_fields(data: bytes) -> list[tuple[int, int, object]]:
    """Protobuf wire format, read by hand: (field number, wire type, int or bytes) in order."""

    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            b = data[i]
            value |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return value, i
            shift += 7

    out: list[tuple[int, int, object]] = []
    i = 0
    while i < len(data):
        tag, i = varint(i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = varint(i)
            out.append((number, wire, value))
        elif wire == 2:
            size, i = varint(i)
            out.append((number, wire, data[i : i + size]))
            i += size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


# Field numbers of proto.UserCertsRequest in Teleport's authservice.proto
# (auth-grpc.md §2.2), typed in here, not taken from the generated code.
PUBLIC_KEY, USERNAME, EXPIRES, ROUTE_TO_CLUSTER, USAGE = 1, 2, 3, 5, 10
SSH_PUBLIC_KEY, TLS_PUBLIC_KEY = 22, 23


@pytest.mark.parametrize("split", [True, False], ids=["v17", "v16"])
def test_generate_user_certs_request_bytes_field_by_field(split: bool) -> None:
    req = authclient.user_certs_request(
        ssh_public_key="ssh-ed25519 AAAAkey\n",
        tls_public_key="-----BEGIN PUBLIC KEY-----\n" if split else None,
        username="alice",
        expires=1_900_000_000.7,
        route_to_cluster="leaf.example",
        split_keys=split,
    )
    fields = read_fields(req.SerializeToString())
    by_number = {n: v for n, _, v in fields}
    assert by_number[USERNAME] == b"alice"
    assert by_number[ROUTE_TO_CLUSTER] == b"leaf.example"
    # Expires is a google.protobuf.Timestamp: seconds = field 1 (varint), whole seconds.
    assert read_fields(by_number[EXPIRES]) == [(1, 0, 1_900_000_000)]  # type: ignore[arg-type]
    assert USAGE not in by_number  # Usage=All is the enum's zero: proto3 leaves it out
    if split:
        assert by_number[SSH_PUBLIC_KEY] == b"ssh-ed25519 AAAAkey\n"
        assert by_number[TLS_PUBLIC_KEY] == b"-----BEGIN PUBLIC KEY-----\n"
        assert PUBLIC_KEY not in by_number
    else:
        assert by_number[PUBLIC_KEY] == b"ssh-ed25519 AAAAkey\n"
        assert SSH_PUBLIC_KEY not in by_number and TLS_PUBLIC_KEY not in by_number
    assert {n for n, _, _ in fields} <= {PUBLIC_KEY, USERNAME, EXPIRES, ROUTE_TO_CLUSTER,
                                         SSH_PUBLIC_KEY, TLS_PUBLIC_KEY}
    # Field 22 needs a two-byte tag: 22 << 3 | 2 = 178 -> b"\xb2\x01".
    if split:
        assert b"\xb2\x01" in req.SerializeToString()


def test_sni_is_hex_of_the_root_cluster() -> None:
    assert encode_cluster_name("root") == "726f6f74.teleport.cluster.local"
    assert encode_cluster_name("a.b") == "612e62.teleport.cluster.local"  # no dot left to split on
    assert decode_cluster_name(encode_cluster_name("leaf.example")) == "leaf.example"
    assert decode_cluster_name("teleport.cluster.local") is None
    assert decode_cluster_name("zz.teleport.cluster.local") is None


def _ca(name: str, key: bytes = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA") -> typespb.CertAuthorityV2:
    return typespb.CertAuthorityV2(
        Spec=typespb.CertAuthoritySpecV2(
            ClusterName=name, ActiveKeys=typespb.CAKeySet(SSH=[typespb.SSHKeyPair(PublicKey=key)])
        )
    )


def test_cert_authority_names_and_keys_are_checked() -> None:
    ca = authclient._parse_ca(_ca("leaf"))
    assert ca.cluster == "leaf" and ca.ssh_keys == ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",)
    for hostile in ("../../etc", "leaf\nHost *", "a b", ""):
        with pytest.raises(AuthAPIError, match="malformed"):
            authclient._parse_ca(_ca(hostile))
    with pytest.raises(AuthAPIError, match="bad SSH CA key"):
        authclient._parse_ca(_ca("leaf", b"ssh-ed25519 AAAA\n@cert-authority * x"))
    bad_tls = _ca("leaf")
    bad_tls.Spec.ActiveKeys.TLS.add(Cert=b"-----BEGIN CERTIFICATE-----\nnope\n")
    with pytest.raises(AuthAPIError, match="bad TLS CA"):
        authclient._parse_ca(bad_tls)


def test_remote_cluster_heartbeat_zero_means_never() -> None:
    rc = presencepb.ListRemoteClustersResponse().remote_clusters.add()
    rc.Metadata.Name = "leaf"
    rc.Status.Connection = "weird"
    rc.Status.LastHeartbeat.FromSeconds(-62135596800)  # Go's zero time.Time
    parsed = authclient._parse_remote(rc)
    assert parsed.last_heartbeat is None and parsed.status == "offline"


def test_node_labels_include_command_label_results() -> None:
    server = typespb.ServerV2(Metadata=typespb.Metadata(Name="uuid", Labels={"env": "prod"}))
    server.Spec.Hostname = "node1"
    server.Spec.CmdLabels["arch"].Result = "x86_64"
    node = authclient._parse_node(server)
    assert node.labels == {"env": "prod", "arch": "x86_64"} and node.hostname == "node1"


def test_test_cluster_filters_nodes_like_teleport() -> None:
    nodes = [
        Node("web1", "10.0.0.1", 22, (("env", "prod"), ("team", "a"))),
        Node("web2", "10.0.0.2", 22, (("env", "dev"),)),
        Node("db1", "10.0.0.3", 22, ()),
    ]
    names = lambda found: [n.name for n in found]  # noqa: E731
    assert names(filter_nodes(nodes, {"env": "prod"}, [])) == ["web1"]
    assert names(filter_nodes(nodes, {}, ["WEB"])) == ["web1", "web2"]
    assert names(filter_nodes(nodes, {}, ["web", "dev"])) == ["web2"]  # every keyword must match
    assert names(filter_nodes(nodes, {}, ["10.0.0.3"])) == ["db1"]
    assert names(filter_nodes(nodes, {"env": "prod", "team": "b"}, [])) == []


def test_resolve_local_pipes_an_empty_host_to_the_auth_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.cluster._config import ServerConfig
    from tests.cluster._state import ClusterState
    from tests.cluster._subsystem import SubsystemError, parse_proxy_subsystem, resolve_local

    state = ClusterState.init(tmp_path / "data", "root.test")
    state.add_node("node1", "127.0.0.1:2200")
    config = ServerConfig(cluster="root.test", auth_addr="127.0.0.1:4025")
    assert resolve_local(parse_proxy_subsystem("proxy:@root.test"), state, config) == ("127.0.0.1", 4025)
    assert resolve_local(parse_proxy_subsystem("proxy:node1:0@root.test"), state, config) == (
        "127.0.0.1", 2200,
    )
    with pytest.raises(SubsystemError, match='unknown cluster "leaf"'):
        resolve_local(parse_proxy_subsystem("proxy:@leaf"), state, config)


def _self_signed(tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


def test_an_auth_stream_that_ends_reports_what_the_proxy_said(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import socket

    from tsh._authapi.stream import AuthStream

    cert, key = _self_signed(tmp_path)

    async def main() -> None:
        peers: list[socket.socket] = []

        async def dialer(cluster: str) -> AuthStream:
            ours, theirs = socket.socketpair()
            theirs.close()  # the proxy hung up: its auth dial failed
            peers.append(ours)

            async def aclose() -> None:
                return None

            return AuthStream(ours, lambda: "failed connecting to the auth server: connection refused",
                              aclose)  # fmt: skip

        client = authclient.AuthClient.open(dialer, "leaf", "root", cert, key, cert)
        try:
            with pytest.raises(AuthAPIError) as err:
                await client.ping()
        finally:
            await client.close()
        assert err.value.status == "UNAVAILABLE"
        assert str(err.value) == ("cannot reach the auth server of cluster leaf: "
                                  "failed connecting to the auth server: connection refused")  # fmt: skip

    asyncio.run(main())


@pytest.mark.parametrize("ending", ["eof-and-close", "close"])
def test_a_proxy_that_ends_the_stream_before_the_bridge_has_a_writer_still_ends_it(ending: str) -> None:
    """The proxy can refuse (stderr, EOF, close) while the socketpair is still being set up:
    the socket's peer must still see the end, not wait for the call's 30 s timeout
    (it did, intermittently, for an unknown cluster)."""
    import asyncio
    import socket

    from tsh._asyncssh import asyncssh
    from tsh._authapi.stream import _Bridge

    async def main() -> bytes:
        bridge = _Bridge()
        bridge.data_received(b"unknown cluster \"ghost\"\n", asyncssh.EXTENDED_DATA_STDERR)
        bridge.data_received(b"early", None)
        if ending == "eof-and-close":
            bridge.eof_received()
        bridge.connection_lost(None)
        ours, theirs = socket.socketpair()
        _, writer = await asyncio.open_connection(sock=ours)
        bridge.attach(writer)
        theirs.setblocking(False)
        loop = asyncio.get_running_loop()
        got = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(theirs, 100), 5):
            got += chunk
        theirs.close()
        return got

    assert asyncio.run(main()) == b"early"
