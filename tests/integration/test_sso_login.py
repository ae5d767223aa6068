"""SSO `tsh login` (docs/protocol.md §16) against the test cluster, without a real browser.

The OIDC cluster is a real relying party of oidc-provider-mock (tests/cluster/_idp.py);
:class:`ScriptedBrowser` plays the browser: the short link, the IdP's form, the
proxy's meta refresh, the loopback callback, the proxy's success page.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.launch import Cluster
from tests.integration import _sso
from tests.integration._sso import (
    BackgroundLogin,
    ScriptedBrowser,
    issuer,
    set_idp_user,
    start_oidc_cluster,
)
from tests.integration._tsh import agent_lines, env_for, run_tsh, ssh_with_config, tsh_config_file

pytestmark = pytest.mark.integration

oidc_cluster = _sso.oidc_cluster  # the module's shared OIDC cluster (a fixture)


def home_files() -> dict[str, bytes]:
    import os

    home = Path(os.environ["TELEPORT_HOME"])
    return {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*") if p.is_file()}


def browser_login(
    cluster: Cluster, sub: str, env: dict[str, str], *args: str
) -> tuple[tuple[int, str, str], ScriptedBrowser, object]:
    """`tsh login --browser=none` completed by the scripted browser as subject ``sub``."""
    login = BackgroundLogin(f"--proxy={cluster.web_addr}", *args, env=env)
    browser = ScriptedBrowser(cluster.ssl_context())
    try:
        form = browser.open(login.url())
        assert "Authorize Client" in form.text, form.text[:300]  # the IdP's own page
        final = browser.submit(form, {"sub": sub})
        return login.wait(), browser, final
    finally:
        browser.close()
        login.kill()


@pytest.mark.parametrize("version", ["17.0.0", "16.4.0"])
def test_oidc_login_without_browser_then_agent_status_and_plain_ssh(
    request, tmp_path_factory, ssh_agent, openssh, start_node, login_name: str, tmp_path: Path,
    version: str,
) -> None:  # type: ignore[no-untyped-def]
    if version == "17.0.0":
        cluster = request.getfixturevalue("oidc_cluster")
    else:
        cluster = start_oidc_cluster(tmp_path_factory, version)
        request.addfinalizer(cluster.stop)
    set_idp_user(issuer(cluster), "alice-sub",
                 {"email": "alice", "groups": ["ssh-users"], "logins": [login_name]})
    env = env_for(cluster, ssh_agent.sock)
    (rc, out, err), browser, final = browser_login(
        cluster, "alice-sub", env, "--user=bob"
    )
    assert rc == 0, err
    assert "Use the following URL to authenticate:\n http://127.0.0.1:" in err  # CRLF, as text
    assert "Ignoring Teleport user (bob) for Single Sign-On (SSO) login." in err
    # The browser went IdP -> proxy callback -> our loopback callback -> the proxy's page.
    assert final.status_code == 200 and "Login Successful" in final.text
    assert str(final.url) == f"https://{cluster.web_addr}/web/msg/info/login_success"
    assert any("/v1/webapi/oidc/callback?" in u for u in browser.visited)
    assert any(u.startswith("http://127.0.0.1:") and "/callback?response=" in u
               for u in browser.visited)
    # The IdP's user, not --user: the certificate is alice's, with her mapped logins.
    assert "  Logged in as:       alice\n" in out
    assert f"  Logins:             {login_name}\n" in out

    comment = f"teleport:127.0.0.1:{cluster.name}:alice"
    assert any(line.endswith(comment) and "-cert-v01@" in line
               for line in agent_lines(openssh, ssh_agent.sock))
    status = run_tsh("status", env=env)
    assert status.returncode == 0 and "Logged in as:       alice" in status.stdout

    node = start_node(cluster)
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}", env=env, installed=True)
    r = ssh_with_config(
        openssh.ssh, cfg, f"{login_name}@{node.name}.{cluster.name}", "echo", "sso-ok", env=env
    )
    assert r.returncode == 0 and r.stdout == "sso-ok\n", r.stderr


def test_request_shape_follows_the_server_version(oidc_cluster: Cluster) -> None:
    """The v17 proxy refuses the deprecated key together with the split ones (403, Teleport's
    text); tsh sends only one shape (the v16 login above proves the other)."""
    import base64

    import httpx

    body = {
        "redirect_url": "http://127.0.0.1:9/callback?secret_key=" + "ab" * 32,
        "public_key": base64.b64encode(b"ssh-ed25519 AAAA").decode(),
        "ssh_pub_key": base64.b64encode(b"ssh-ed25519 AAAA").decode(),
        "connector_id": "okta",
    }
    r = httpx.post(f"{oidc_cluster.web_url}/v1/webapi/oidc/login/console", json=body,
                   verify=oidc_cluster.ssl_context())
    assert r.status_code == 403
    assert json.loads(r.text)["error"]["message"] == (
        "Failed to login. Please check Teleport's log for more details."
    )


def test_unknown_connector_name_fails_at_ping(oidc_cluster: Cluster) -> None:
    env = env_for(oidc_cluster)
    r = run_tsh("login", f"--proxy={oidc_cluster.web_addr}", "--auth=nope", "--browser=none", env=env)
    assert r.returncode == 1
    assert "invalid connector name: nope; valid options: local, okta" in r.stderr
    assert "Use the following URL" not in r.stderr


def test_auth_local_on_an_sso_cluster_asks_for_a_password(oidc_cluster: Cluster) -> None:
    oidc_cluster.add_user("carol", ["root"])
    env = env_for(oidc_cluster, TELEPORT_AUTH="local")
    r = run_tsh("login", f"--proxy={oidc_cluster.web_addr}", "--user=carol", env=env,
                input="secret-pw\n")
    assert r.returncode == 0, r.stderr
    assert "Logged in as:       carol" in r.stdout


# --------------------------------------------------------------------------- failures
def assert_nothing_stored(before: dict[str, bytes]) -> None:
    assert home_files() == before


def test_idp_deny_lands_on_the_proxy_error_page_and_tsh_times_out(oidc_cluster: Cluster) -> None:
    """oidc-provider-mock's Deny redirects with error=access_denied but without ``state``, so
    the proxy cannot tell which login it ends: its own error page, and tsh waits (as real tsh
    would) until its timeout. (err= from the IdP: the GitHub stand-in's test.)"""
    before = home_files()
    env = env_for(oidc_cluster, TSH_SSO_CALLBACK_TIMEOUT="3")
    login = BackgroundLogin(f"--proxy={oidc_cluster.web_addr}", env=env)
    browser = ScriptedBrowser(oidc_cluster.ssl_context())
    try:
        form = browser.open(login.url())
        final = browser.submit(form, {"action": "deny"})
        rc, out, err = login.wait()
    finally:
        browser.close()
        login.kill()
    assert any("/v1/webapi/oidc/callback?error=access_denied" in u for u in browser.visited)
    assert str(final.url) == f"https://{oidc_cluster.web_addr}/web/msg/error/login/callback"
    assert rc == 1 and "error: timed out waiting for callback" in err
    assert_nothing_stored(before)


def test_idp_user_without_mapped_roles_is_refused(oidc_cluster: Cluster) -> None:
    set_idp_user(issuer(oidc_cluster), "mallory", {"email": "mallory", "groups": ["guests"]})
    before = home_files()
    (rc, out, err), _, final = browser_login(oidc_cluster, "mallory", env_for(oidc_cluster))
    assert rc == 1
    assert err.strip().endswith(
        "error: identity provider callback failed with error: "
        "No roles mapped from claims. The mappings may contain typos."
    )
    assert "Login Failed" in final.text
    assert_nothing_stored(before)


def test_tampered_response_is_refused(oidc_cluster: Cluster) -> None:
    import base64
    from urllib.parse import parse_qs, urlencode, urlsplit

    set_idp_user(issuer(oidc_cluster), "alice-sub",
                 {"email": "alice", "groups": ["ssh-users"], "logins": ["root"]})
    before = home_files()
    login = BackgroundLogin(f"--proxy={oidc_cluster.web_addr}", env=env_for(oidc_cluster))
    browser = ScriptedBrowser(oidc_cluster.ssl_context())

    def tamper(request: object) -> None:
        url = request.url  # type: ignore[attr-defined]
        if url.path == "/callback" and "response" in url.params:
            sealed = json.loads(url.params["response"])
            ct = bytearray(base64.b64decode(sealed["ciphertext"]))
            ct[len(ct) // 2] ^= 0x80
            sealed["ciphertext"] = base64.b64encode(bytes(ct)).decode()
            request.url = url.copy_with(  # type: ignore[attr-defined]
                query=urlencode({"response": json.dumps(sealed)}).encode()
            )

    browser.http.event_hooks["request"] = [tamper]
    try:
        final = browser.submit(browser.open(login.url()), {"sub": "alice-sub"})
        rc, out, err = login.wait()
    finally:
        browser.close()
        login.kill()
    assert rc == 1
    assert "the SSO response could not be decrypted" in err
    assert "Login Failed" in final.text
    assert parse_qs(urlsplit(browser.visited[-2]).query).keys() == {"response"}
    assert_nothing_stored(before)


def test_timeout_without_a_browser(oidc_cluster: Cluster) -> None:
    before = home_files()
    env = env_for(oidc_cluster, TSH_SSO_CALLBACK_TIMEOUT="1")
    r = run_tsh("login", f"--proxy={oidc_cluster.web_addr}", "--browser=none", env=env)
    assert r.returncode == 1
    assert "error: timed out waiting for callback" in r.stderr
    assert_nothing_stored(before)


def test_ctrl_c_cancels_cleanly(oidc_cluster: Cluster) -> None:
    import signal

    before = home_files()
    login = BackgroundLogin(f"--proxy={oidc_cluster.web_addr}", env=env_for(oidc_cluster))
    try:
        url = login.url()
        login.proc.send_signal(signal.SIGINT)
        rc, out, err = login.wait()
    finally:
        login.kill()
    assert rc == 130
    assert "Traceback" not in err
    assert_nothing_stored(before)
    # The callback server is gone with it.
    import httpx

    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_callback_url_the_proxy_refuses(oidc_cluster: Cluster) -> None:
    """--bind-addr=0.0.0.0 puts 0.0.0.0 in the callback URL, which Teleport refuses (#41516)."""
    env = env_for(oidc_cluster, TELEPORT_LOGIN_BIND_ADDR="0.0.0.0:0")
    r = run_tsh("login", f"--proxy={oidc_cluster.web_addr}", "--browser=none", env=env)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "error: access denied: Failed to login due to a disallowed callback URL. "
        "Please check Teleport's log for more details."
    )


def test_route_to_cluster_is_sent(oidc_cluster: Cluster, login_name: str) -> None:
    """--cluster names the cluster the certificate is for (RouteToCluster, Go-cased)."""
    set_idp_user(issuer(oidc_cluster), "alice-sub",
                 {"email": "alice", "groups": ["ssh-users"], "logins": [login_name]})
    (rc, out, err), _, _ = browser_login(
        oidc_cluster, "alice-sub", env_for(oidc_cluster), f"--cluster={oidc_cluster.name}"
    )
    assert rc == 0, err
    from cryptography.hazmat.primitives.serialization import load_ssh_public_identity

    from tsh._store.store import ProfileStore

    store = ProfileStore()
    profile = store.current()
    assert profile is not None and profile.cluster == oidc_cluster.name
    cert_path = next(Path(store.home, "keys").rglob("*-cert.pub"))
    cert = load_ssh_public_identity(cert_path.read_bytes())
    value = cert.extensions[b"teleport-route-to-cluster"]  # type: ignore[union-attr]
    assert value == oidc_cluster.name.encode()

    # A cluster the proxy does not know. With the SSO session still valid, the
    # auth API reissues (the SSO user is known to it) and refuses the name:
    r = run_tsh("login", f"--proxy={oidc_cluster.web_addr}", "--browser=none",
                "--cluster=leaf.example", env=env_for(oidc_cluster))
    assert r.returncode == 1
    assert r.stderr == (
        'error: unknown cluster "leaf.example": example.test has no leaf cluster of that name\n'
    )
    # Without a session, the SSO login is refused before the browser is needed.
    fresh = env_for(oidc_cluster, TELEPORT_HOME=str(store.home) + "-fresh")
    r = run_tsh("login", f"--proxy={oidc_cluster.web_addr}", "--browser=none",
                "--cluster=leaf.example", env=fresh)
    assert r.returncode == 1
    assert "Failed to login. Please check Teleport's log" in r.stderr
