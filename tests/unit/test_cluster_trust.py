"""tests.cluster._trust without sockets: validation, role mapping, the login check, status."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import asyncssh
import pytest

from tests.cluster import _trust
from tests.cluster._ca import Authority
from tests.cluster._state import ClusterState, StateError, User
from tests.cluster._subsystem import proxysites_json


def _cluster(tmp_path: Path, name: str) -> tuple[ClusterState, Authority]:
    state = ClusterState.init(tmp_path / name, name)
    return state, Authority.load(state)


def _request(token: str, authority: Authority, ca_type: str = "host",
             cluster: str | None = None) -> bytes:
    line = " ".join(authority.host_ca.export_public_key().decode().split()[:2])
    ca = _trust._ca_resource(cluster or authority.cluster, ca_type, [line],
                             [authority.tls_ca_pem])
    return json.dumps({"token": token, "teleport_version": "17.0.0",
                       "certificate_authorities": [base64.b64encode(ca).decode()]}).encode()


@pytest.fixture
def root(tmp_path: Path) -> tuple[ClusterState, Authority]:
    return _cluster(tmp_path, "root.test")


@pytest.fixture
def leaf(tmp_path: Path) -> tuple[ClusterState, Authority]:
    return _cluster(tmp_path, "leaf.test")


def test_validate_stores_the_leaf_and_answers_with_root_cas(root, leaf) -> None:  # type: ignore[no-untyped-def]
    state, authority = root
    token = _trust.add_token(state, "trusted_cluster", {"env": "prod"})
    answer = json.loads(_trust.validate_trusted_cluster(state, authority, _request(token, leaf[1])))
    cas = [_trust._parse_ca(raw) for raw in answer["certificate_authorities"]]
    assert [(ca.cluster, ca.type) for ca in cas] == [("root.test", "host"), ("root.test", "user")]
    user_line = " ".join(authority.user_ca.export_public_key().decode().split()[:2])
    assert cas[1].ssh == [user_line]
    (rc,) = _trust.remote_clusters(state)
    assert (rc.name, rc.status, rc.labels) == ("leaf.test", "offline", {"env": "prod"})
    ssh, tls = _trust.remote_host_cas(state)["leaf.test"]
    assert len(ssh) == 1 and tls == [leaf[1].tls_ca_pem]


@pytest.mark.parametrize(
    ("make", "status", "text"),
    [
        (lambda tok, a: _request("wrong", a), 403, "invalid cluster token"),
        (lambda tok, a: _request(tok, a, ca_type="user"), 400, "expected host certificate"),
        (lambda tok, a: _request(tok, a, cluster="root.test"), 400, "same name as this cluster"),
        (lambda tok, a: b"[]", 400, "malformed request"),
        (lambda tok, a: json.dumps({"token": tok, "certificate_authorities": ["%%"]}).encode(),
         400, "malformed certificate authority"),
    ],
)
def test_validate_refuses(root, leaf, make, status: int, text: str) -> None:  # type: ignore[no-untyped-def]
    state, authority = root
    token = _trust.add_token(state, "trusted_cluster", {})
    with pytest.raises(_trust.TrustError, match=text) as info:
        _trust.validate_trusted_cluster(state, authority, make(token, leaf[1]))
    assert info.value.status == status
    assert _trust.remote_clusters(state) == []


def test_role_map_parsing_and_mapping() -> None:
    role_map = _trust.parse_role_map("access:access, admin:ops,admin:audit")
    assert role_map == [{"remote": "access", "local": ["access"]},
                        {"remote": "admin", "local": ["ops", "audit"]}]
    assert _trust.map_roles(role_map, ["admin"]) == ["ops", "audit"]
    assert _trust.map_roles([{"remote": "*", "local": ["any"]}], ["x"]) == ["any"]
    for bad in ("", "access", ":x", "a:"):
        with pytest.raises(StateError):
            _trust.parse_role_map(bad)


def _trust_root(leaf_state: ClusterState, root_auth: Authority, role_map: str) -> None:
    line = " ".join(root_auth.user_ca.export_public_key().decode().split()[:2])
    leaf_state._write_json("trusted_clusters.json", {"clusters": {"root.test": {
        "user_ca": {"ssh": [line], "tls": []}, "host_ca": {"ssh": [], "tls": []},
        "role_map": _trust.parse_role_map(role_map), "proxy_addr": "x:1", "tunnel_addr": "x:2",
    }}})


def _cert_b64(authority: Authority, logins: tuple[str, ...], roles: tuple[str, ...]) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    user = User("alice", "", logins, roles)
    cert = authority.sign_user(key, user, 600, "leaf.test")
    return cert.export_certificate().decode().split()[1]


def test_leaf_allows_principals_its_mapped_roles_grant(root, leaf) -> None:  # type: ignore[no-untyped-def]
    leaf_state, leaf_auth = leaf
    _trust.add_role(leaf_state, "limited", ["alice"])
    _trust_root(leaf_state, root[1], "access:limited,admin:access")
    user_cert = _cert_b64(root[1], ("alice", "bob"), ("access",))
    admin_cert = _cert_b64(root[1], ("alice", "bob"), ("admin",))
    allowed = _trust.allowed_login
    assert allowed(leaf_state, leaf_auth, "alice", user_cert)
    assert not allowed(leaf_state, leaf_auth, "bob", user_cert)  # not in role `limited`
    assert allowed(leaf_state, leaf_auth, "bob", admin_cert)  # `access`: the principals
    assert not allowed(leaf_state, leaf_auth, "carol", admin_cert)  # not a principal
    unmapped = _cert_b64(root[1], ("alice",), ("auditor",))
    assert not allowed(leaf_state, leaf_auth, "alice", unmapped)
    # an unknown CA, and the leaf's own users
    other = _cluster(leaf_state.data_dir.parent, "other.test")[1]
    assert not allowed(leaf_state, leaf_auth, "alice", _cert_b64(other, ("alice",), ("access",)))
    assert allowed(leaf_state, leaf_auth, "alice", _cert_b64(leaf_auth, ("alice",), ("x",)))
    assert not allowed(leaf_state, leaf_auth, "alice", "not base64!")


def test_status_follows_the_heartbeat(root, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    state, authority = root
    token = _trust.add_token(state, "trusted_cluster", {})
    leaf_auth = _cluster(state.data_dir.parent, "leaf.test")[1]
    _trust.validate_trusted_cluster(state, authority, _request(token, leaf_auth))
    live = _trust._live(state)
    live.offline_threshold_s = 5
    now = dt.datetime.now(dt.timezone.utc)
    live.tunnels["leaf.test"] = _trust._Tunnel(conn=None, last_heartbeat=now)  # type: ignore[arg-type]
    try:
        (rc,) = _trust.remote_clusters(state)
        assert (rc.status, rc.last_heartbeat) == ("online", now)
        assert _trust.live_leaves(state) == [("leaf.test", now, "online")]
        live.tunnels["leaf.test"].last_heartbeat = now - dt.timedelta(seconds=6)
        assert _trust.remote_clusters(state)[0].status == "offline"
        assert _trust.live_leaves(state)[0][2] == "offline"  # listed until the tunnel closes
    finally:
        live.tunnels.clear()
    assert _trust.live_leaves(state) == []
    assert _trust.remote_clusters(state)[0].status == "offline"


def test_proxysites_lists_leaves_after_the_root() -> None:
    t = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    sites = json.loads(proxysites_json("root.test", t, leaves=[("leaf.test", t, "offline")]))
    assert sites == [
        {"name": "root.test", "lastconnected": "2024-05-01T00:00:00Z", "status": "online"},
        {"name": "leaf.test", "lastconnected": "2024-05-01T00:00:00Z", "status": "offline"},
    ]


# --------------------------------------------------------------------------- the CA push
def test_a_rotating_root_pushes_both_key_sets_and_the_leaf_stores_them(root, leaf) -> None:  # type: ignore[no-untyped-def]
    (_, rauth), (lstate, _) = root, leaf
    (lstate.data_dir / "trusted_clusters.json").write_text(json.dumps({"clusters": {
        "root.test": {"user_ca": {"ssh": [], "tls": []}, "host_ca": {"ssh": [], "tls": []},
                      "role_map": [], "proxy_addr": "x", "tunnel_addr": "y"}}}))
    rauth.rotate("user", "init", "manual", 3600)
    rauth.rotate("user", "update_clients", "manual", 3600)
    message = _trust._cas_message(rauth, ("host", "user"))
    assert message.endswith(b"\n") and b"\n" not in message[:-1]  # one line
    cas = _trust._parse_cas_message(message, "root.test", ("host", "user"))
    _trust._store_root_cas(lstate, "root.test", cas)
    stored = json.loads((lstate.data_dir / "trusted_clusters.json").read_text())
    user_keys = rauth.keys("user")
    assert stored["clusters"]["root.test"]["user_ca"]["ssh"] == [
        _trust._ssh_line(k) for k in user_keys.trusted]  # new (active) first, then old
    assert len(stored["clusters"]["root.test"]["user_ca"]["tls"]) == 2
    assert _trust.trusted_user_ca_ssh(lstate) == [_trust._ssh_line(k) for k in user_keys.trusted]
    rotation = json.loads(base64.b64decode(json.loads(message)["cert_authorities"][1]))
    assert rotation["spec"]["rotation"]["phase"] == "update_clients"


@pytest.mark.parametrize("bad", [
    b"not json",
    b'{"cert_authorities": "x"}',
    b'{"cert_authorities": []}',
])
def test_a_malformed_push_is_refused(root, bad: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(_trust.TrustError):
        _trust._parse_cas_message(bad, "root.test", ("host", "user"))


def test_a_push_must_be_the_senders_own_cas(root, leaf) -> None:  # type: ignore[no-untyped-def]
    (_, rauth), (_, lauth) = root, leaf
    with pytest.raises(_trust.TrustError, match="pushed by"):  # another cluster's CA
        _trust._parse_cas_message(_trust._cas_message(lauth, ("host",)), "root.test", ("host",))
    with pytest.raises(_trust.TrustError, match="expected the host CAs"):  # a user CA too
        _trust._parse_cas_message(_trust._cas_message(rauth, ("host", "user")), "root.test",
                                  ("host",))


def test_the_auth_servers_tls_identity_follows_the_host_rotation(root) -> None:  # type: ignore[no-untyped-def]
    import socket
    import ssl
    import threading

    from tests.cluster import _authgrpc

    state, authority = root

    def issuer_of_served_cert() -> bytes:
        ctx = _authgrpc.server_ssl_context(state, authority)
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()

            def serve() -> None:
                conn, _ = srv.accept()
                try:
                    ctx.wrap_socket(conn, server_side=True).recv(1)
                except (OSError, ssl.SSLError):
                    pass  # the client sends no certificate: the server gives up after hello
                finally:
                    conn.close()

            t = threading.Thread(target=serve)
            t.start()
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.check_hostname = False
            client.load_verify_locations(
                cadata="".join(p.decode() for p in authority.keys("host").trusted_tls_pem))
            with client.wrap_socket(socket.create_connection(srv.getsockname()),
                                    server_hostname=_authgrpc.encode_cluster_name(state.name)) as s:
                der = s.getpeercert(binary_form=True)
            t.join(5)
        from cryptography import x509

        cert = x509.load_der_x509_certificate(der)
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        return bytes(aki.key_identifier or b"")

    def ski(cert) -> bytes:  # type: ignore[no-untyped-def]
        from cryptography import x509

        return bytes(cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)

    old = authority.keys("host").signing_tls_cert
    authority.rotate("host", "init", "manual", 3600)
    authority.rotate("host", "update_clients", "manual", 3600)
    new = authority.keys("host").signing_tls_cert
    assert issuer_of_served_cert() == ski(old)  # servers still present the old CA's
    authority.rotate("host", "update_servers", "manual", 3600)
    assert issuer_of_served_cert() == ski(new)  # verified against both, picked by its AKI
