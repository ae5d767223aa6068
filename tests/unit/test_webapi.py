"""tsh._web.client: parsing, error mapping and the wire format, through httpx.MockTransport."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from _login_fakes import FakeProxy

from tsh import AccessDeniedError, ProxyConnectionError, ProxyResponseError
from tsh._web.client import WebClient
from tsh._web.wire import parse_go_duration, parse_login_response, parse_ping, server_major


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12h0m0s", 43200),
        ("30h", 108000),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("90s", 90),
        ("500ms", 0.5),
        ("0", 0),
        ("2m3.5s", 123.5),
    ],
)
def test_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    # The last three are longer than Go's longest duration (2562047h47m16.854775807s).
    ["", "12", "h", "12x", "1h 2m", "never", "1h-2m", "2562048h", "9" * 300 + "h", "1" * 5000 + "h"],
)
def test_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_server_major() -> None:
    assert server_major("17.0.2") == 17
    assert server_major("v16.4.0-dev") == 16
    assert server_major("garbage") == 0
    assert server_major("9" * 5000) == 0  # not int()'s ValueError over 4300 digits


def test_ping_resolution_rules() -> None:
    base = FakeProxy().ping_json()
    p = parse_ping(base, "proxy.example.com:3080")
    assert p.cluster_name == "example.test"
    assert p.default_session_ttl == 43200
    assert p.web_proxy_addr == "proxy.example.com:3080"
    # listen_addr supplies only the port; the host is the web proxy's.
    assert p.ssh_proxy_addr == "proxy.example.com:3023"
    base["proxy"]["ssh"] = {"listen_addr": "0.0.0.0:4023", "ssh_public_addr": "ssh.example.com"}
    assert parse_ping(base, "proxy.example.com:3080").ssh_proxy_addr == "ssh.example.com:3023"
    base["proxy"]["ssh"] = {"public_addr": "web.example.com:443"}
    p = parse_ping(base, "10.0.0.1:3080")
    assert (p.web_proxy_addr, p.ssh_proxy_addr) == ("web.example.com:443", "web.example.com:3023")
    base["proxy"]["tls_routing_enabled"] = True
    assert parse_ping(base, "10.0.0.1:3080").ssh_proxy_addr == "web.example.com:443"


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "x",
        {"cluster_name": 5, "server_version": "17.0.0"},
        {"server_version": "17.0.0"},
        {"cluster_name": "c"},
        {"cluster_name": "c", "server_version": "17.0.0", "auth": []},
        {"cluster_name": "c", "server_version": "17.0.0", "auth": {"default_session_ttl": "soon"}},
        {"cluster_name": "c", "server_version": "17.0.0", "proxy": {"tls_routing_enabled": 1}},
        {"cluster_name": "c", "server_version": "17.0.0", "auth": {"default_session_ttl": 5}},
        {"cluster_name": "c", "server_version": "17.0.0", "auth": {"default_session_ttl": "1" * 5000 + "h"}},
        {"cluster_name": "c", "server_version": "17.0.0", "auth": {"type": ["local"]}},
        {"cluster_name": "c", "server_version": "17.0.0", "proxy": {"ssh": []}},
        {"cluster_name": "c", "server_version": "17.0.0", "proxy": {"ssh": {"public_addr": 5}}},
        {"cluster_name": "c", "server_version": "17.0.0", "proxy": {"ssh": {"listen_addr": {}}}},
        {"cluster_name": ["c"], "server_version": "17.0.0"},
    ],
)
def test_ping_malformed(data: object) -> None:
    with pytest.raises(ProxyResponseError):
        parse_ping(data, "h:3080")


def _answer() -> dict:
    return {
        "username": "alice",
        "cert": base64.b64encode(b"ssh-ed25519-cert-v01@openssh.com AAAA\n").decode(),
        "tls_cert": base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode(),
        "host_signers": [
            {
                "domain_name": "c",
                "checking_keys": [base64.b64encode(b"ssh-ed25519 AAAA\n").decode()],
                "tls_certs": [],
            }
        ],
    }


def test_login_response_decodes_base64() -> None:
    r = parse_login_response(_answer())
    assert r.cert.startswith("ssh-ed25519-cert-v01@openssh.com")
    # Parsed into "<type> <base64>", safe as the key part of a known_hosts line.
    assert r.host_signers[0].checking_keys == ("ssh-ed25519 AAAA",)


@pytest.mark.parametrize(
    "edit",
    [
        lambda a: a.update(cert="not base64!"),
        lambda a: a.update(cert=None),
        lambda a: a.update(host_signers=[]),
        lambda a: a.update(host_signers="x"),
        lambda a: a["host_signers"][0].update(checking_keys=[]),
        lambda a: a["host_signers"][0].update(domain_name=None),
        lambda a: a.update(tls_cert=base64.b64encode(b"\xff\xfe").decode()),
        lambda a: a.update(cert=5),
        lambda a: a.update(cert="é"),
        lambda a: a.update(username=["alice"]),
        lambda a: a.update(host_signers=["x"]),
        lambda a: a.update(host_signers={"domain_name": "c"}),
        lambda a: a["host_signers"][0].update(checking_keys="AAAA"),
        lambda a: a["host_signers"][0].update(checking_keys=[5]),
        lambda a: a["host_signers"][0].update(tls_certs={"a": 1}),
        lambda a: a["host_signers"][0].update(domain_name=7),
    ],
)
def test_login_response_malformed(edit) -> None:  # type: ignore[no-untyped-def]
    answer = _answer()
    edit(answer)
    with pytest.raises(ProxyResponseError):
        parse_login_response(answer)


def _client(handler) -> WebClient:  # type: ignore[no-untyped-def]
    return WebClient("proxy.test:3080", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "body", "ctype", "needle"),
    [
        (200, b"<html><body>Welcome to nginx</body></html>", "text/html", "Teleport proxy"),
        (200, b'{"cluster_name": "c", "server_ver', "application/json", "Teleport proxy"),
        (200, b"", "application/json", "Teleport proxy"),
        (502, b"<html>Bad gateway</html>", "text/html", "HTTP 502"),
        (500, json.dumps({"error": {"message": "boom"}}).encode(), "application/json", "boom"),
        # Nested deeper than Python's recursion limit: json.loads raises RecursionError.
        (200, b"[" * 100_000 + b"]" * 100_000, "application/json", "Teleport proxy"),
        (500, b'{"error":' * 100_000 + b"1" + b"}" * 100_000, "application/json", "HTTP 500"),
        (200, b"1" * 5000, "application/json", "Teleport proxy"),  # over int()'s digit limit
    ],
)
def test_ping_hostile_answers(status: int, body: bytes, ctype: str, needle: str) -> None:
    c = _client(lambda r: httpx.Response(status, content=body, headers={"Content-Type": ctype}))
    with pytest.raises(ProxyResponseError) as e:
        c.ping()
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_huge_body_is_refused() -> None:
    c = _client(lambda r: httpx.Response(200, content=b"[" * (2 << 20)))
    with pytest.raises(ProxyResponseError, match="too large"):
        c.ping()


def test_undecodable_body_is_a_response_error() -> None:
    c = _client(lambda r: httpx.Response(200, content=b"no gzip", headers={"Content-Encoding": "gzip"}))
    with pytest.raises(ProxyResponseError, match="cannot decode"):
        c.ping()


def test_redirect_is_not_followed() -> None:
    seen = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(str(r.url))
        return httpx.Response(302, headers={"Location": "http://evil.test/webapi/ping"})

    with pytest.raises(ProxyResponseError):
        _client(handler).ping()
    assert seen == ["https://proxy.test:3080/webapi/ping"]


def test_403_is_access_denied_with_server_message() -> None:
    proxy = FakeProxy()
    c = WebClient("proxy.test:3080", transport=proxy.transport)
    with pytest.raises(AccessDeniedError, match="invalid username or password"):
        c.ssh_certs(
            user="alice",
            password="wrong",
            ttl_seconds=60,
            ssh_pub_key="ssh-ed25519 AAAA",
            tls_pub_key="pem",
        )


def test_request_wire_format() -> None:
    proxy = FakeProxy(password="pw")
    c = WebClient("proxy.test:3080", transport=proxy.transport)
    with pytest.raises(AccessDeniedError):
        c.ssh_certs(
            user="alice",
            password="nope",
            otp_token="1",
            ttl_seconds=90,
            pub_key="ssh-rsa AAAA\n",
            route_to_cluster="leaf",
        )
    body = proxy.login_bodies[0]
    assert body["ttl"] == 90 * 1_000_000_000
    assert body["RouteToCluster"] == "leaf"
    assert base64.b64decode(body["pub_key"]) == b"ssh-rsa AAAA\n"
    assert "ssh_pub_key" not in body and "tls_pub_key" not in body
    assert proxy.requests[0].url.path == "/v1/webapi/ssh/certs"


def test_connection_refused_maps_to_connection_error() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=r)

    with pytest.raises(
        ProxyConnectionError, match="cannot reach the proxy at https://proxy.test:3080"
    ):
        _client(handler).ping()


@pytest.mark.parametrize("trickle", ["headers", "body"])
def test_slow_loris_proxy_hits_the_total_deadline(trickle: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.integration._html_server import html_server

    with html_server(tmp_path, trickle=trickle) as (addr, _):
        # Each byte arrives well within the per-read timeout; only a total deadline ends this.
        client = WebClient(addr, insecure=True, timeout=5, deadline=1)
        started = time.monotonic()
        with pytest.raises(ProxyConnectionError, match=r"did not answer /webapi/ping within 1 s"):
            client.ping()
        assert time.monotonic() - started < 3
        client.close()
