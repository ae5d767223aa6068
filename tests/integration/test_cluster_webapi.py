"""The test cluster's web API over real TLS, against docs/protocol.md §2, §3 and §4."""

from __future__ import annotations

import base64
import json

import asyncssh
import httpx
import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

pytestmark = pytest.mark.integration

NS = 10**9
BAD_CREDS = "invalid username, password or second factor"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def ssh_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="module")
def rsa_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-rsa", key_size=2048)


@pytest.fixture(scope="module")
def tls_pub_pem() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.fixture(scope="module")
def alice(cluster) -> str:
    cluster.add_user("alice", ["root", "alice"], ttl="2h")
    return "alice"


def client(cluster) -> httpx.Client:
    return httpx.Client(base_url=cluster.web_url, verify=cluster.ssl_context(), timeout=10)


def post_certs(cluster, body: object, path: str = "/v1/webapi/ssh/certs", **kw) -> httpx.Response:
    with client(cluster) as c:
        if "content" in kw:
            return c.post(path, **kw)
        return c.post(path, json=body)


def assert_error(r: httpx.Response, status: int, message: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["error"]["message"], str)
    if message is not None:
        assert body["error"]["message"] == message
    assert r.text.startswith('{\n    "error": {\n        "message": ')  # Go's 4-space indent


def test_ping_shape(cluster) -> None:
    with client(cluster) as c:
        r = c.get("/webapi/ping")
    assert r.status_code == 200
    body = r.json()
    assert body["server_version"] == "17.0.0" and body["min_client_version"] == "16.0.0"
    assert body["cluster_name"] == cluster.name
    auth = body["auth"]
    assert auth["type"] == "local" and auth["second_factor"] == "off"
    assert auth["default_session_ttl"] == "12h0m0s"
    assert auth["local"] == {"name": ""} and auth["private_key_policy"] == "none"
    ssh = body["proxy"]["ssh"]
    assert ssh["listen_addr"].endswith(f":{cluster.ssh_proxy_port}")
    assert ssh["ssh_public_addr"] == cluster.ssh_proxy_addr
    assert body["proxy"]["tls_routing_enabled"] is False


def test_find_has_empty_auth_and_v1_prefix_is_stripped(cluster) -> None:
    with client(cluster) as c:
        find = c.get("/webapi/find").json()
        v1_ping = c.get("/v1/webapi/ping").json()
    assert find["auth"]["type"] == "" and find["cluster_name"] == cluster.name
    assert find["proxy"]["ssh"]["ssh_public_addr"] == cluster.ssh_proxy_addr
    assert v1_ping["auth"]["type"] == "local"


def test_unknown_route_is_404_path_not_found(cluster) -> None:
    with client(cluster) as c:
        r = c.get("/v1/webapi/nope")
    assert_error(r, 404, "path not found")
    assert r.json()["fields"]["proxyVersion"]["major"] == 17


def test_v17_login_issues_ssh_and_tls_certs(cluster, alice, ssh_key, tls_pub_pem) -> None:
    r = post_certs(cluster, {
        "user": alice, "password": "secret-pw", "otp_token": "",
        "ssh_pub_key": b64(ssh_key.export_public_key()), "tls_pub_key": b64(tls_pub_pem),
        "ttl": 30 * 3600 * NS,  # above the user's 2h maximum: capped
        "RouteToCluster": cluster.name, "KubernetesCluster": "",
    })
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["username"] == "alice"
    cert = asyncssh.import_certificate(base64.b64decode(body["cert"]))
    assert cert.key.public_data == ssh_key.public_data
    assert cert._key_id == "alice"
    assert cert.principals == ["root", "alice", "-teleport-internal-join"]
    lifetime = cert._valid_before - cert._valid_after
    assert 2 * 3600 <= lifetime <= 2 * 3600 + 61  # capped at max TTL, back-dated one minute
    tls = x509.load_pem_x509_certificate(base64.b64decode(body["tls_cert"]))
    assert tls.issuer.rfc4514_string().endswith(f"CN={cluster.name}") or (
        tls.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == cluster.name
    )
    assert tls.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == tls_pub_pem
    (signer,) = body["host_signers"]
    assert signer["domain_name"] == cluster.name
    host_ca_line = base64.b64decode(signer["checking_keys"][0]).decode()
    assert host_ca_line.endswith("\n")
    assert host_ca_line.split()[:2] == cluster.admin("auth", "export", "--type=host").split()[2:4]
    assert base64.b64decode(signer["tls_certs"][0]) == cluster.tls_ca.read_bytes()


def test_cert_carries_teleport_extensions(cluster, alice, ssh_key, openssh, tmp_path) -> None:
    import subprocess

    body = post_certs(cluster, {"user": alice, "password": "secret-pw",
                                "ssh_pub_key": b64(ssh_key.export_public_key())}).json()
    path = tmp_path / "c-cert.pub"
    path.write_bytes(base64.b64decode(body["cert"]))
    out = subprocess.run([openssh.ssh_keygen, "-L", "-f", str(path)], capture_output=True,
                         text=True, check=True).stdout
    for ext in ["permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding",
                "permit-pty", "permit-user-rc", "teleport-roles", "teleport-route-to-cluster"]:
        assert ext in out
    roles_hex = json.dumps({"version": "v1", "roles": ["access"]},
                           separators=(",", ":")).encode().hex()
    assert roles_hex in out  # ssh-keygen dumps unknown extensions' data as hex


def test_deprecated_pub_key_alone_serves_both_certs(cluster, alice, ssh_key) -> None:
    body = post_certs(cluster, {"user": alice, "password": "secret-pw",
                                "pub_key": b64(ssh_key.export_public_key())}).json()
    tls = x509.load_pem_x509_certificate(base64.b64decode(body["tls_cert"]))
    assert tls.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).split()[1] == ssh_key.export_public_key().split()[1]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pub_key": 1, "ssh_pub_key": 1}, "'pub_key' and 'ssh_pub_key' cannot both be set"),
        ({"pub_key": 1, "tls_pub_key": 1}, "'pub_key' and 'tls_pub_key' cannot both be set"),
        ({}, "'ssh_pub_key' or 'tls_pub_key' must be set"),
    ],
)
def test_v17_key_field_rules(cluster, alice, ssh_key, tls_pub_pem, fields, message) -> None:
    values = {"pub_key": b64(ssh_key.export_public_key()),
              "ssh_pub_key": b64(ssh_key.export_public_key()), "tls_pub_key": b64(tls_pub_pem)}
    body = {"user": alice, "password": "secret-pw", **{k: values[k] for k in fields}}
    assert_error(post_certs(cluster, body), 400, message)


def test_v16_server_knows_only_pub_key(start_cluster, rsa_key) -> None:
    c16 = start_cluster(name="old.test", server_version="16.4.2")
    c16.add_user("bob", ["root"])
    with client(c16) as c:
        ping = c.get("/webapi/ping").json()
    assert ping["server_version"] == "16.4.2" and ping["min_client_version"] == "15.0.0"
    # v17 field names are unknown to a v16 server: silently ignored, so no key at all
    r = post_certs(c16, {"user": "bob", "password": "secret-pw",
                         "ssh_pub_key": b64(rsa_key.export_public_key())})
    assert_error(r, 400, "missing parameter 'public_key'")
    r = post_certs(c16, {"user": "bob", "password": "secret-pw", "ttl": 3600 * NS,
                         "pub_key": b64(rsa_key.export_public_key()), "RouteToCluster": ""},
                   path="/webapi/ssh/certs")
    assert r.status_code == 200, r.text
    body = r.json()
    cert = asyncssh.import_certificate(base64.b64decode(body["cert"]))
    assert cert.algorithm == b"ssh-rsa-cert-v01@openssh.com"
    tls = x509.load_pem_x509_certificate(base64.b64decode(body["tls_cert"]))
    assert tls.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "old.test"


@pytest.mark.parametrize(
    ("user", "password"), [("alice", "wrong"), ("nobody", "secret-pw"), ("alice", "")]
)
def test_bad_credentials_are_403(cluster, alice, ssh_key, user, password) -> None:
    r = post_certs(cluster, {"user": user, "password": password,
                             "ssh_pub_key": b64(ssh_key.export_public_key())})
    assert_error(r, 403, BAD_CREDS)


def test_route_to_cluster_casing_and_unknown_cluster(cluster, alice, ssh_key) -> None:
    key = b64(ssh_key.export_public_key())
    r = post_certs(cluster, {"user": alice, "password": "secret-pw", "ssh_pub_key": key,
                             "RouteToCluster": "leaf.test"})
    assert_error(r, 404, 'remote cluster "leaf.test" is not found')
    # snake_case is not the Go field name: ignored, cert for the root cluster
    r = post_certs(cluster, {"user": alice, "password": "secret-pw", "ssh_pub_key": key,
                             "route_to_cluster": "leaf.test"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"content": b"{}", "headers": {"Content-Type": "text/plain"}}, "invalid request"),
        ({"content": b"{}"}, "invalid request"),
        ({"content": b"{bad json", "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b"[1,2]", "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b'{"user": 5}', "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b'{"ttl": "12h"}', "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b'{"ttl": 1.5}', "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b'{"user":"a","pub_key":"%%%"}',
          "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b'{"user":"alice","password":"x","ssh_pub_key":"Zm9v"}',
          "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b"\xff\xfe", "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b'{"user":"alice","ttl":-1,"ssh_pub_key":"Zm9v"}',
          "headers": {"Content-Type": "application/json; charset=utf-8"}}, None),
    ],
)
def test_malformed_requests_are_400_never_500(cluster, kwargs, message) -> None:
    r = post_certs(cluster, None, **kwargs)
    assert_error(r, 400, message)
    if message is None and kwargs["content"].startswith(b"{bad"):
        assert r.json()["error"]["message"].startswith("request: ")


def test_otp_flow(start_cluster, ssh_key) -> None:
    c = start_cluster(name="otp.test", second_factor="otp")
    secret = c.add_user("carol", ["root"], password="pw-carol", otp=True)
    assert secret and pyotp.TOTP(secret).now().isdigit()
    with client(c) as h:
        assert h.get("/webapi/ping").json()["auth"]["second_factor"] == "otp"
    key = b64(ssh_key.export_public_key())
    base = {"user": "carol", "password": "pw-carol", "ssh_pub_key": key}
    assert_error(post_certs(c, {**base, "otp_token": ""}), 403, BAD_CREDS)
    assert_error(post_certs(c, {**base, "otp_token": "000000" if pyotp.TOTP(secret).now()
                                != "000000" else "111111"}), 403, BAD_CREDS)
    assert_error(post_certs(c, {**base, "password": "x",
                                "otp_token": pyotp.TOTP(secret).now()}), 403, BAD_CREDS)
    r = post_certs(c, {**base, "otp_token": pyotp.TOTP(secret).now()})
    assert r.status_code == 200, r.text


def test_restart_keeps_state(start_cluster, tmp_path, ssh_key) -> None:
    data = tmp_path / "state"
    first = start_cluster(name="keep.test", data_dir=data)
    first.add_user("dave", ["root"], password="pw-dave")
    first.admin("nodes", "add", "n1", "127.0.0.1:2222")
    host_ca = first.admin("auth", "export", "--type=host")
    tls_ca = first.tls_ca.read_bytes()
    assert first.stop() == 0  # clean exit on SIGTERM
    second = start_cluster(name="keep.test", data_dir=data)
    assert second.admin("auth", "export", "--type=host") == host_ca
    assert second.tls_ca.read_bytes() == tls_ca
    assert "n1 127.0.0.1:2222" in second.admin("nodes", "ls")
    r = post_certs(second, {"user": "dave", "password": "pw-dave",
                            "ssh_pub_key": b64(ssh_key.export_public_key())})
    assert r.status_code == 200, r.text
