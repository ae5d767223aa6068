"""SSO through the test cluster's GitHub and SAML stand-ins (tests/cluster/_sso.py): the same
console protocol, IdP pages that check the cluster's local users' passwords; and the Python
API's SSO authenticator."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import tsh
from tests.cluster.launch import Cluster, launch_cluster
from tests.integration._sso import BackgroundLogin, ScriptedBrowser
from tests.integration._tsh import env_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def github_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    c = launch_cluster(tmp_path_factory.mktemp("github") / "data", extra_args=("--auth=github",))
    c.add_user("octocat", ["root"], password="correct-horse")
    yield c
    c.stop()


def home_files() -> dict[str, bytes]:
    import os

    home = Path(os.environ["TELEPORT_HOME"])
    return {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*") if p.is_file()}


def test_github_wrong_password_then_right_one(github_cluster: Cluster) -> None:
    login = BackgroundLogin(f"--proxy={github_cluster.web_addr}", env=env_for(github_cluster))
    browser = ScriptedBrowser(github_cluster.ssl_context())
    try:
        page = browser.open(login.url())
        assert "Sign in to GitHub" in page.text
        page = browser.submit(page, {"login": "octocat", "password": "wrong"})
        assert "Incorrect username or password." in page.text  # the IdP keeps the browser
        assert login.proc.poll() is None  # and tsh keeps waiting
        final = browser.submit(page, {"login": "octocat", "password": "correct-horse"})
        rc, out, err = login.wait()
    finally:
        browser.close()
        login.kill()
    assert rc == 0, err
    assert "Login Successful" in final.text
    assert "  Logged in as:       octocat\n" in out
    assert any("/webapi/github/callback?code=" in u for u in browser.visited)


def test_github_cancel_comes_back_as_err(github_cluster: Cluster) -> None:
    before = home_files()
    login = BackgroundLogin(f"--proxy={github_cluster.web_addr}", env=env_for(github_cluster))
    browser = ScriptedBrowser(github_cluster.ssl_context())
    try:
        final = browser.submit(browser.open(login.url()), {"commit": "cancel"})
        rc, out, err = login.wait()
    finally:
        browser.close()
        login.kill()
    assert rc == 1
    assert err.strip().endswith(
        "error: identity provider callback failed with error: GitHub returned error: "
        "access_denied: The user has denied your application access."
    )
    assert str(final.url).endswith("/web/msg/error/login")
    assert home_files() == before


def test_saml_login_with_the_http_post_binding(tmp_path_factory: pytest.TempPathFactory) -> None:
    c = launch_cluster(tmp_path_factory.mktemp("saml") / "data", server_version="16.4.0",
                       extra_args=("--auth=saml", "--connector-name=adfs"))
    try:
        c.add_user("sam", ["root"], password="pw-of-sam")
        login = BackgroundLogin(f"--proxy={c.web_addr}", "--auth=adfs", env=env_for(c))
        browser = ScriptedBrowser(c.ssl_context())
        try:
            page = browser.open(login.url())
            assert "Sign in to SAML IdP" in page.text
            final = browser.submit(page, {"login": "sam", "password": "pw-of-sam"})
            rc, out, err = login.wait()
        finally:
            browser.close()
            login.kill()
        assert rc == 0, err
        assert "Login Successful" in final.text and "  Logged in as:       sam\n" in out
        assert any("/webapi/saml/acs/adfs" in u for u in browser.visited)
    finally:
        c.stop()


def test_python_api_sso_hands_the_url_to_the_caller(github_cluster: Cluster, monkeypatch) -> None:
    """tsh.SSO(open_url=...): no browser is opened; the caller gets the URL and completes it."""
    monkeypatch.setenv("SSL_CERT_FILE", str(github_cluster.tls_ca))
    urls: list[str] = []
    done: list[str] = []

    def complete(url: str) -> None:
        urls.append(url)

        def walk() -> None:
            browser = ScriptedBrowser(github_cluster.ssl_context())
            try:
                page = browser.open(url)
                done.append(browser.submit(page, {"login": "octocat", "password": "correct-horse"}).text)
            finally:
                browser.close()

        threading.Thread(target=walk, daemon=True).start()

    with tsh.Client() as client:
        result = client.login(github_cluster.web_addr, authenticator=tsh.SSO(complete, timeout=30),
                              auth="github", agent_mode="no")
    assert result.profile.user == "octocat"
    assert len(urls) == 1 and urls[0].startswith("http://127.0.0.1:")
    assert done and "Login Successful" in done[0]
    assert tsh.Client().status() is not None


def test_python_api_sso_timeout_raises_ssoerror(github_cluster: Cluster, monkeypatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(github_cluster.tls_ca))
    with tsh.Client() as client, pytest.raises(tsh.SSOError, match="timed out waiting for callback"):
        client.login(github_cluster.web_addr, authenticator=tsh.SSO(lambda url: None, timeout=0.5))
    assert tsh.Client().status() is None


def test_tsh_ssh_relogs_in_with_sso_when_the_certificate_expired(
    github_cluster: Cluster, start_node, login_name: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The relogin of `tsh ssh` (on a terminal) pings again and takes the proxy's SSO."""
    import json
    import os
    import re
    import sys
    import time

    import pexpect

    github_cluster.add_user("octocat", [login_name], password="correct-horse")
    node = start_node(github_cluster)
    env = env_for(github_cluster, TELEPORT_LOGIN_BROWSER="none")
    monkeypatch.setenv("SSL_CERT_FILE", str(github_cluster.tls_ca))
    walked: list[str] = []

    def complete(url: str) -> None:
        def walk() -> None:
            browser = ScriptedBrowser(github_cluster.ssl_context())
            try:
                page = browser.submit(browser.open(url), {"login": "octocat",
                                                          "password": "correct-horse"})
                walked.append(page.text)
            finally:
                browser.close()

        threading.Thread(target=walk, daemon=True).start()

    with tsh.Client() as client:
        client.login(github_cluster.web_addr, authenticator=tsh.SSO(complete, timeout=30),
                     agent_mode="no")
    (profile,) = Path(os.environ["TELEPORT_HOME"]).glob("*.yaml")
    data = json.loads(profile.read_text())
    data["valid_before"] = int(time.time()) - 60
    profile.write_text(json.dumps(data))

    child = pexpect.spawn(
        sys.executable,
        ["-m", "tsh", "ssh", f"--port={node.port}", f"{login_name}@{node.name}", "echo renewed"],
        env=env, encoding="utf-8", timeout=30,
    )  # fmt: skip
    try:
        child.expect("has expired; logging in again")
        child.expect(re.compile(r"Use the following URL to authenticate:\r+\n (http://\S+)\r+\n"))
        complete(child.match.group(1))
        child.expect("renewed")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert len(walked) == 2 and all("Login Successful" in w for w in walked)
    assert tsh.Client().profile().valid_before > time.time()
