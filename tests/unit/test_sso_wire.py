"""SSO on the web API's wire (tsh._web): ping's connector, the console request and its answer."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from _login_fakes import FakeProxy
from hypothesis import given
from hypothesis import strategies as st

from tsh import ProxyResponseError
from tsh._web.client import WebClient
from tsh._web.wire import parse_ping, parse_sso_redirect


def _ping(auth: dict) -> dict:  # type: ignore[type-arg]
    data = FakeProxy().ping_json()
    data["auth"] = auth
    return data


def test_ping_names_the_sso_connector() -> None:
    p = parse_ping(_ping({"type": "oidc", "oidc": {"name": "okta", "display": "Okta\x1b[2J",
                                                   "IssuerURL": "https://x"}}), "proxy.test:3080")
    assert (p.auth_type, p.connector_name, p.connector_display) == ("oidc", "okta", "Okta[2J")
    local = parse_ping(_ping({"type": "local", "local": {"name": ""}}), "proxy.test:3080")
    assert (local.auth_type, local.connector_name) == ("local", "")


@pytest.mark.parametrize(
    "settings",
    [None, {}, {"name": ""}, {"name": "../../etc"}, {"name": "a b"}, {"name": 5}, "github",
     {"name": "x" * 200}, {"name": "okta/../x"}],
)
def test_ping_refuses_a_connector_name_unsafe_for_a_url(settings: object) -> None:
    with pytest.raises(ProxyResponseError):
        parse_ping(_ping({"type": "github", "github": settings}), "proxy.test:3080")


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "file:///etc/passwd", "https://idp/x\r\nSet-Cookie: a=b",
     "https://idp/a b", "", "data:text/html,hi", "//idp/x", "https://"],
)
def test_idp_url_must_be_a_plain_http_url(url: str) -> None:
    with pytest.raises(ProxyResponseError):
        parse_sso_redirect({"redirect_url": url})


@given(st.text(max_size=200))
def test_idp_url_parser_accepts_only_printable_http_urls(url: str) -> None:
    try:
        out = parse_sso_redirect({"redirect_url": url})
    except ProxyResponseError:
        return
    assert out.startswith(("http://", "https://")) and all(0x21 <= ord(c) <= 0x7E for c in out)


@pytest.mark.parametrize("split", [True, False])
def test_console_request_wire_format(split: bool) -> None:
    bodies: list[tuple[str, dict]] = []  # type: ignore[type-arg]

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((request.url.path, json.loads(request.content)))
        assert request.headers["content-type"] == "application/json"
        return httpx.Response(200, json={"redirect_url": "https://idp.test/auth?state=1"})

    c = WebClient("proxy.test:3080", transport=httpx.MockTransport(handler))
    keys = ({"ssh_pub_key": "ssh-ed25519 AAAA\n", "tls_pub_key": "-----BEGIN PUBLIC KEY-----\n"}
            if split else {"public_key": "ssh-rsa AAAA\n"})
    url = c.sso_login_console("saml", connector_id="adfs", redirect_url="http://127.0.0.1:1/callback"
                              "?secret_key=ab", ttl_seconds=60, route_to_cluster="leaf", **keys)
    assert url == "https://idp.test/auth?state=1"
    path, body = bodies[0]
    assert path == "/v1/webapi/saml/login/console"
    assert body["cert_ttl"] == 60 * 10**9 and body["connector_id"] == "adfs"
    assert body["RouteToCluster"] == "leaf" and body["KubernetesCluster"] == ""
    assert body["redirect_url"] == "http://127.0.0.1:1/callback?secret_key=ab"
    if split:
        assert "public_key" not in body
        assert base64.b64decode(body["ssh_pub_key"]) == b"ssh-ed25519 AAAA\n"
    else:
        assert "ssh_pub_key" not in body and "tls_pub_key" not in body
        assert base64.b64decode(body["public_key"]) == b"ssh-rsa AAAA\n"


def test_ping_with_a_connector_asks_for_it() -> None:
    paths: list[str] = []
    proxy = FakeProxy()

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200, json=proxy.ping_json())

    WebClient("proxy.test:3080", transport=httpx.MockTransport(handler)).ping("my-okta")
    assert paths == ["/webapi/ping/my-okta"]


@pytest.mark.parametrize("auth", ["../x", "a/b", "", " okta", "x" * 200])
def test_login_refuses_a_bad_auth_name_before_any_request(auth: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tsh import UsageError
    from tsh._auth.login import LoginRequest, login
    from tsh._store.store import ProfileStore

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    with pytest.raises(UsageError, match="invalid --auth"):
        login(LoginRequest(proxy="proxy.test:3080", user="a", auth=auth),
              lambda: None,  # type: ignore[arg-type]
              store=ProfileStore(tmp_path), transport=httpx.MockTransport(handler))


class _CertsFromPassword:
    """An SSO stand-in for login(): certificates from the fake proxy, then ``username`` set."""

    def __init__(self, username: str) -> None:
        self.username = username
        self.called = False

    def authenticate(self, ping, user, client, keys, ttl_seconds, cluster):  # type: ignore[no-untyped-def]
        import dataclasses

        self.called = True
        answer = client.ssh_certs(user=user, password="secret-pw", ttl_seconds=ttl_seconds,
                                  ssh_pub_key=keys.ssh, tls_pub_key=keys.tls)
        return dataclasses.replace(answer, username=self.username)


def _sso_proxy() -> FakeProxy:
    proxy = FakeProxy()
    ping = proxy.ping_json()
    ping["auth"] = {"type": "github", "github": {"name": "github", "display": "GitHub"}}
    proxy.ping_raw = (200, json.dumps(ping).encode(), "application/json")
    return proxy


def test_sso_login_takes_the_user_from_the_answer_and_warns_about_user(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tsh._auth.authenticators import ByAuthType
    from tsh._auth.login import LoginRequest, login
    from tsh._store.store import ProfileStore

    sso = _CertsFromPassword("carol")
    result = login(
        LoginRequest(proxy="proxy.test:3080", user="alice", agent_mode="no"),
        ByAuthType(password=None, sso=sso),  # type: ignore[arg-type]
        store=ProfileStore(tmp_path), transport=_sso_proxy().transport, environ={},
    )
    assert sso.called and result.profile.user == "carol"
    assert [w.code for w in result.warnings] == ["sso-user-ignored"]
    assert str(result.warnings[0]) == "Ignoring Teleport user (alice) for Single Sign-On (SSO) login."


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "a b", "x\nHost *", "a:b", ".."])
def test_sso_login_refuses_a_hostile_user_name_and_stores_nothing(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tsh._auth.login import LoginRequest, login
    from tsh._store.store import ProfileStore

    with pytest.raises(ProxyResponseError):
        login(LoginRequest(proxy="proxy.test:3080", agent_mode="no"), _CertsFromPassword(name),
              store=ProfileStore(tmp_path / "home"), transport=_sso_proxy().transport, environ={})
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*.json"))
