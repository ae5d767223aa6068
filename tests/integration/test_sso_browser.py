"""SSO `tsh login` in a real browser: Debian's headless Chromium, driven by selenium.

`tsh login` opens the URL with TELEPORT_LOGIN_BROWSER, as real tsh would run
``wslview URL``: here a wrapper that starts Chromium headless (with a fresh
profile, a DevTools port, and trusting only the test proxy's certificate key).
Selenium attaches to that Chromium through chromedriver, fills in the OIDC
provider's login form on the page, and watches the browser come back to the
proxy's success page, whose screenshot it saves (see ARTIFACTS). Then the
login is used: ``ssh-add -L``, `tsh status`, plain ``ssh`` through `tsh config`.

The browser and chromedriver are Debian's ``chromium`` and ``chromium-driver``
(packaging/dev.sh installs them); without them the test skips, and fails under
CI=true.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.cluster.launch import Cluster
from tests.conftest import require_tool
from tests.integration import _sso
from tests.integration._sso import issuer, set_idp_user
from tests.integration._tsh import agent_lines, env_for, run_tsh, ssh_with_config, tsh_config_file

pytestmark = pytest.mark.integration

oidc_cluster = _sso.oidc_cluster  # the module's OIDC cluster (a fixture)

#: Where the screenshots go: $TSH_TEST_ARTIFACTS if set, else the test's tmp_path/artifacts.
ARTIFACTS_ENV = "TSH_TEST_ARTIFACTS"
#: The flags the closed network needs (background fetches would hang or be refused).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1000,800",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spki_hash(cluster: Cluster) -> str:
    """base64 SHA-256 of the proxy certificate's key: Chromium trusts exactly that key."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    host, port = cluster.web_addr.rsplit(":", 1)
    pem = ssl.get_server_certificate((host, int(port)))
    spki = x509.load_pem_x509_certificate(pem.encode()).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.1)


def test_oidc_login_in_headless_chromium(
    oidc_cluster: Cluster,
    ssh_agent, openssh, start_node, login_name: str, tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    artifacts = Path(os.environ.get(ARTIFACTS_ENV) or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    set_idp_user(issuer(oidc_cluster), "alice@example.com",
                 {"email": "alice", "groups": ["ssh-users"], "logins": [login_name]})

    port = _free_port()
    pid_file = tmp_path / "chromium.pid"
    wrapper = tmp_path / "open-in-chromium"
    flags = " ".join([
        *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--remote-debugging-port={port}",
        f"--ignore-certificate-errors-spki-list={_spki_hash(oidc_cluster)}",
    ])  # fmt: skip
    wrapper.write_text(f'#!/bin/sh\necho $$ > {pid_file}\nexec {chromium} {flags} "$1"\n')
    wrapper.chmod(0o755)

    env = env_for(oidc_cluster, ssh_agent.sock, TELEPORT_LOGIN_BROWSER=str(wrapper))
    import subprocess

    from tests.integration._tsh import tsh_argv

    login = subprocess.Popen(
        [*tsh_argv(installed=False), "login", f"--proxy={oidc_cluster.web_addr}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    driver = None
    try:
        def devtools_up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/json/version", timeout=1).is_success
            except httpx.HTTPError:
                return False

        _wait_for(devtools_up, 60, "Chromium's DevTools port (did tsh run the browser?)")
        options = webdriver.ChromeOptions()
        options.debugger_address = f"127.0.0.1:{port}"
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)

        # The IdP's own login page, reached through tsh's link: fill it in as a person would.
        _wait_for(lambda: driver.find_elements(By.NAME, "sub"), 30, "the IdP's login form")
        assert "Authorize Client" in driver.page_source
        field = driver.find_element(By.NAME, "sub")
        field.send_keys("alice@example.com")
        field.find_element(By.XPATH, "ancestor::form//button[@type='submit']").click()

        out, err = login.communicate(timeout=60)
        assert login.returncode == 0, err
        assert "If browser window does not open automatically, open it by clicking on the link:" in err
        _wait_for(lambda: driver.current_url.endswith("/web/msg/info/login_success"), 30,
                  "the success page")
        _wait_for(lambda: "Login Successful" in driver.page_source, 10, "the page's text")
        shot = artifacts / "sso-login-success.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000
        print(f"screenshot: {shot}")
    finally:
        if driver is not None:
            driver.quit()
        if login.poll() is None:
            login.kill()
            login.communicate()
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    assert "  Logged in as:       alice\n" in out
    comment = f"teleport:127.0.0.1:{oidc_cluster.name}:alice"
    assert any(line.endswith(comment) for line in agent_lines(openssh, ssh_agent.sock))
    status = run_tsh("status", env=env)
    assert status.returncode == 0 and "Logged in as:       alice" in status.stdout
    node = start_node(oidc_cluster)
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}", env=env, installed=True)
    r = ssh_with_config(openssh.ssh, cfg, f"{login_name}@{node.name}.{oidc_cluster.name}",
                        "echo", "browser-ok", env=env)
    assert r.returncode == 0 and r.stdout == "browser-ok\n", r.stderr
