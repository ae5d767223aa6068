"""The SSO loopback callback server and the response decryption (tsh._auth.sso), over real sockets
on 127.0.0.1 but without a proxy; and the test cluster's ValidateClientRedirect."""

from __future__ import annotations

import json
import threading
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.cluster._sso import seal, validate_client_redirect
from tsh import SSOError, UsageError
from tsh._auth.sso import CallbackServer, decrypt_response, open_in_browser

PROXY = "https://proxy.example.com:3080"


def key_of(server: CallbackServer) -> bytes:
    return bytes.fromhex(parse_qs(urlsplit(server.callback_url).query)["secret_key"][0])


def test_callback_url_is_loopback_with_a_fresh_64_hex_key() -> None:
    with CallbackServer(PROXY) as a, CallbackServer(PROXY) as b:
        u = urlsplit(a.callback_url)
        assert (u.scheme, u.hostname, u.path) == ("http", "127.0.0.1", "/callback")
        assert list(parse_qs(u.query)) == ["secret_key"] and len(key_of(a)) == 32
        assert key_of(a) != key_of(b)
        validate_client_redirect(a.callback_url)  # what the proxy accepts


def test_sealed_response_is_decrypted_and_browser_sent_to_success_page() -> None:
    with CallbackServer(PROXY) as server:
        sealed = seal(key_of(server), json.dumps({"username": "alice"}).encode())
        r = httpx.get(f"{server.base_url}/callback?response={quote(sealed)}")
        assert r.status_code == 302
        assert r.headers["location"] == f"{PROXY}/web/msg/info/login_success"
        assert r.headers["access-control-allow-origin"] == "*"
        assert server.wait(5) == {"username": "alice"}
        # A second callback changes nothing and says why.
        again = httpx.get(f"{server.base_url}/callback?err=late")
        assert again.status_code == 409 and "already" in again.text
        assert server.wait(0) == {"username": "alice"}


def test_response_may_come_as_a_form_post() -> None:
    with CallbackServer(PROXY) as server:
        sealed = seal(key_of(server), b'{"ok": true}')
        r = httpx.post(f"{server.base_url}/callback", data={"response": sealed})
        assert r.status_code == 302 and server.wait(5) == {"ok": True}


@pytest.mark.parametrize("tamper", ["flip", "other-key", "not-json", "short-nonce"])
def test_tampered_response_fails_the_login(tamper: str) -> None:
    import base64

    with CallbackServer(PROXY) as server:
        key = key_of(server) if tamper != "other-key" else bytes(32)
        env = json.loads(seal(key, b'{"username": "alice"}'))
        if tamper == "flip":
            ct = bytearray(base64.b64decode(env["ciphertext"]))
            ct[0] ^= 1
            env["ciphertext"] = base64.b64encode(ct).decode()
        if tamper == "short-nonce":
            env["nonce"] = base64.b64encode(b"123").decode()
        sealed = "{not json" if tamper == "not-json" else json.dumps(env)
        r = httpx.get(f"{server.base_url}/callback", params={"response": sealed})
        assert r.headers["location"] == f"{PROXY}/web/msg/error/login"
        with pytest.raises(SSOError, match="could not be decrypted"):
            server.wait(5)


def test_err_callback_fails_with_the_idp_message() -> None:
    with CallbackServer(PROXY) as server:
        r = httpx.get(f"{server.base_url}/callback",
                      params={"secret_key": "x", "err": "access denied\x1b[31m"})
        assert r.headers["location"] == f"{PROXY}/web/msg/error/login"
        with pytest.raises(SSOError, match=r"^identity provider callback failed with error: "
                           r"access denied\[31m$"):
            server.wait(5)


def test_only_callback_methods_and_paths_are_served() -> None:
    with CallbackServer(PROXY) as server:
        base = server.base_url
        assert httpx.options(f"{base}/callback").status_code == 200
        assert httpx.options(f"{base}/callback").headers["allow"] == "GET, OPTIONS, POST"
        assert httpx.put(f"{base}/callback", content=b"x").status_code == 405
        assert httpx.delete(f"{base}/callback").status_code == 405
        assert httpx.get(f"{base}/other?response=x").status_code == 404
        assert httpx.get(f"{base}/").status_code == 404
        link = server.link("https://idp.example.com/authorize?x=1")
        assert httpx.post(link).status_code == 405
        r = httpx.get(link)
        assert r.status_code == 302 and r.headers["location"] == "https://idp.example.com/authorize?x=1"
        # None of that decided the login.
        with pytest.raises(SSOError, match="timed out waiting for callback"):
            server.wait(0.1)


def test_wait_times_out_with_real_tsh_words() -> None:
    with CallbackServer(PROXY) as server, pytest.raises(SSOError) as e:
        server.wait(0.2)
    assert str(e.value).startswith("timed out waiting for callback")


def test_bind_addr_is_honoured_and_unspecified_hosts_link_to_loopback() -> None:
    with CallbackServer(PROXY, "0.0.0.0:0") as server:
        assert server.callback_url.startswith(f"http://0.0.0.0:{server.port}/callback?")
        assert server.link("https://idp/").startswith(f"http://127.0.0.1:{server.port}/")
    with pytest.raises(UsageError, match="invalid --bind-addr"):
        CallbackServer(PROXY, "no-port-here:x")


def test_the_server_stops_on_leaving() -> None:
    with CallbackServer(PROXY) as server:
        base = server.base_url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/callback", timeout=2)
    assert not any(t.name == "tsh-sso" for t in threading.enumerate())


def test_decrypt_response_round_trip() -> None:
    key = bytes(range(32))
    assert decrypt_response(key, seal(key, b'[1, 2]')) == [1, 2]


def test_browser_none_prints_real_tsh_text() -> None:
    said: list[str] = []
    open_in_browser("http://127.0.0.1:1/x", "none", said.append)
    assert said == ["Use the following URL to authenticate:\r\n http://127.0.0.1:1/x\r\n"]


def test_a_browser_command_gets_the_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import time

    out = tmp_path / "url"
    script = tmp_path / "browser"
    script.write_text(f"#!/bin/sh\necho \"$1\" > {out}\n")
    script.chmod(0o755)
    said: list[str] = []
    open_in_browser("http://127.0.0.1:1/y", str(script), said.append)
    assert said[-1].startswith("If browser window does not open automatically")
    for _ in range(200):
        if out.exists() and out.read_text():
            break
        time.sleep(0.01)  # the browser command runs detached
    assert out.read_text() == "http://127.0.0.1:1/y\n"
    said.clear()
    open_in_browser("http://x/", str(tmp_path / "missing"), said.append)
    assert said[0].startswith("Failed to open a browser window for login: ")


def test_no_browser_given_runs_the_system_opener(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import time

    out = tmp_path / "opened"
    opener = tmp_path / "xdg-open"
    opener.write_text(f"#!/bin/sh\necho \"$1\" > {out}\n")
    opener.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    said: list[str] = []
    open_in_browser("http://127.0.0.1:1/z", None, said.append)
    for _ in range(200):
        if out.exists() and out.read_text():
            break
        time.sleep(0.01)
    assert out.read_text() == "http://127.0.0.1:1/z\n"
    assert said == ["If browser window does not open automatically, open it by clicking on the "
                    "link:\n http://127.0.0.1:1/z\n"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:5/callback?secret_key=ab", None),
        ("http://localhost:5/callback?secret_key=ab", None),
        ("http://[::1]:5/callback?secret_key=ab", None),
        ("http://192.168.1.5:5/callback?secret_key=ab", "unknown custom client redirect URL hostname"),
        ("http://0.0.0.0:5/callback?secret_key=ab", "unknown custom client redirect URL hostname"),
        ("https://evil.example.com/callback?secret_key=ab", "unknown custom client redirect URL hostname"),
        ("http://127.0.0.1:5/other?secret_key=ab", "invalid path"),
        ("http://127.0.0.1:5/callback?secret_key=ab&x=1", "exactly one query parameter"),
        ("http://127.0.0.1:5/callback?secret_key=a&secret_key=b", "exactly one query parameter"),
        ("http://127.0.0.1:5/callback", "exactly one query parameter"),
        ("http://u:p@127.0.0.1:5/callback?secret_key=ab", "userinfo"),
        ("http://127.0.0.1:5/callback?secret_key=ab#frag", "fragment"),
        ("javascript:alert(1)", "scheme"),
        ("ftp://127.0.0.1/callback?secret_key=ab", "scheme"),
    ],
)
def test_cluster_validates_client_redirect_as_teleport(url: str, why: str | None) -> None:
    if why is None:
        validate_client_redirect(url)
    else:
        with pytest.raises(ValueError, match=why):
            validate_client_redirect(url)
