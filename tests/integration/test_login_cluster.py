"""`tsh login`, `tsh status`, `tsh logout` against the local test cluster and real OpenSSH.

Every test runs the real command line in a subprocess, with the password (and
OTP) on stdin and the cluster's TLS CA trusted through SSL_CERT_FILE.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest

from tests.cluster.launch import launch_cluster
from tests.integration._tsh import PASSWORD, agent_lines, env_for, login, tsh_argv
from tests.integration._tsh import run_tsh as tsh
from tsh._store.store import ProfileStore

pytestmark = pytest.mark.integration

def home_snapshot() -> dict[str, bytes]:
    home = Path(os.environ["TELEPORT_HOME"])
    return {
        str(p.relative_to(home)): (
            b"<dir>"
            if p.is_dir()
            else os.readlink(p).encode()
            if p.is_symlink()
            else p.read_bytes()
        )
        for p in home.rglob("*")
        if p.name != ".lock"
    }


@pytest.fixture(scope="module")
def otp_cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A v17 cluster with second factor otp, shared by the module like ``cluster``."""
    c = launch_cluster(tmp_path_factory.mktemp("otp-cluster") / "data", second_factor="otp")
    yield c
    c.stop()


@pytest.mark.parametrize(
    ("version", "factor"),
    [("17.0.0", "off"), ("17.0.0", "otp"), ("16.4.0", "off"), ("16.4.0", "otp")],
)
def test_login_loads_agent_with_our_comment(
    request, start_cluster, ssh_agent, openssh, login_name: str, tmp_path: Path, version: str,
    factor: str,
) -> None:  # type: ignore[no-untyped-def]
    if version == "17.0.0":  # the module's shared clusters
        cluster = request.getfixturevalue("cluster" if factor == "off" else "otp_cluster")
    else:
        cluster = start_cluster(server_version=version, second_factor=factor)
    secret = cluster.add_user("alice", [login_name], otp=factor == "otp")
    r = login(cluster, "alice", env_for(cluster, ssh_agent.sock), secret=secret)
    assert r.returncode == 0, r.stderr
    assert f"> Profile URL:        https://{cluster.web_addr}\n" in r.stdout
    assert f"  Logins:             {login_name}\n" in r.stdout
    assert "[valid for 12h0m0s]" in r.stdout or "[valid for 11h59m0s]" in r.stdout
    assert "Enter" not in r.stdout + r.stderr  # no prompt text when stdin is not a terminal

    proxy_host = cluster.web_addr.rsplit(":", 1)[0]
    comment = f"teleport:{proxy_host}:{cluster.name}:alice"
    cert_type = (
        "ssh-ed25519-cert-v01@openssh.com"
        if version == "17.0.0"
        else "ssh-rsa-cert-v01@openssh.com"
    )
    # As with real tsh: the certificate, and the bare key for clients that cannot use it.
    lines = agent_lines(openssh, ssh_agent.sock)
    ours = [line for line in lines if line.endswith(" " + comment) and "-cert-v01@" in line]
    assert len(ours) == 1 and len(lines) == 2, lines
    assert ours[0].startswith(cert_type + " ")
    (tmp_path / "cert.pub").write_text(ours[0] + "\n")
    info = subprocess.run(
        [openssh.ssh_keygen, "-L", "-f", str(tmp_path / "cert.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    principals = info.split("Principals:")[1].split("Critical Options:")[0].split()
    assert login_name in principals and "-teleport-internal-join" in principals
    assert "Type: " + cert_type + " user certificate" in info

    store = ProfileStore()
    paths = store.paths(proxy_host, "alice")
    on_disk = paths.ssh_cert(cluster.name).read_text().split()[1]
    assert ours[0].split()[1] == on_disk
    assert (paths.tls_key.exists(), paths.tls_cert_legacy.exists()) == (
        (True, False) if version == "17.0.0" else (False, True)
    )


def test_relogin_replaces_only_our_agent_keys_and_logout_removes_them(
    cluster, ssh_agent, openssh, login_name: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cluster.add_user("bob", [login_name])
    subprocess.run(
        [
            openssh.ssh_keygen,
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "mine",
            "-f",
            str(tmp_path / "mine"),
        ],
        check=True,
    )
    subprocess.run([openssh.ssh_add, "-q", str(tmp_path / "mine")], env=ssh_agent.env, check=True)
    env = env_for(cluster, ssh_agent.sock)
    for _ in range(2):
        assert login(cluster, "bob", env).returncode == 0
    lines = agent_lines(openssh, ssh_agent.sock)
    assert [line.split()[-1] for line in lines].count("mine") == 1
    assert (
        sum(line.endswith(f":{cluster.name}:bob") and "-cert-v01@" in line for line in lines) == 1
    )
    assert len(lines) == 3  # ours: certificate + bare key

    proxy_host = cluster.web_addr.rsplit(":", 1)[0]
    r = tsh("logout", f"--proxy={cluster.web_addr}", "--user=bob", env=env)
    assert (r.returncode, r.stdout) == (0, f"Logged out bob from {proxy_host}.\n")
    assert [line.split()[-1] for line in agent_lines(openssh, ssh_agent.sock)] == ["mine"]
    r = tsh("logout", f"--proxy={cluster.web_addr}", "--user=bob", env=env)
    assert (r.returncode, r.stdout) == (1, f"User bob already logged out from {proxy_host}.\n")
    r = tsh("status", env=env)
    assert (r.returncode, r.stderr) == (1, "Not logged in.\n")

    assert login(cluster, "bob", env).returncode == 0
    r = tsh("status", "--format=json", env=env)
    assert json.loads(r.stdout)["active"]["username"] == "bob"
    r = tsh("logout", env=env)
    assert (r.returncode, r.stdout) == (0, "Logged out all users from all proxies.\n")
    assert [line.split()[-1] for line in agent_lines(openssh, ssh_agent.sock)] == ["mine"]
    r = tsh("logout", env=env)  # again: real tsh's words and exit status
    assert (r.returncode, r.stdout) == (0, "All users logged out.\n")
    r = tsh("logout", "--user=bob", env=env)
    assert r.returncode == 2 and "Specify --proxy and --user" in r.stderr


def test_agent_drops_key_when_certificate_ends(
    cluster, ssh_agent, openssh, login_name: str
) -> None:  # type: ignore[no-untyped-def]
    cluster.add_user("shorty", [login_name], ttl="4s")
    r = login(cluster, "shorty", env_for(cluster, ssh_agent.sock))
    assert r.returncode == 0, r.stderr
    assert any(line.endswith(":shorty") for line in agent_lines(openssh, ssh_agent.sock))
    deadline = time.monotonic() + 30
    while any(line.endswith(":shorty") for line in agent_lines(openssh, ssh_agent.sock)):
        assert time.monotonic() < deadline, "the agent kept an expired certificate"
        time.sleep(0.5)  # polling the agent: its lifetime timer has no event to wait on
    # The lifetime is rounded down to whole seconds: at most a second before the end.
    r = tsh("status", env=env_for(cluster))
    assert "[EXPIRED]" in r.stdout or "[valid for 0s]" in r.stdout


def test_concurrent_logins_leave_a_loadable_profile(cluster, login_name: str) -> None:  # type: ignore[no-untyped-def]
    cluster.add_user("carol", [login_name])
    env = env_for(cluster)
    procs = [
        subprocess.Popen(
            [*tsh_argv(installed=False), "login", f"--proxy={cluster.web_addr}", "--user=carol",
             "-k", "no"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(8)
    ]
    results = [p.communicate(PASSWORD + "\n", timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in results]

    import asyncssh

    store = ProfileStore()
    profile = store.current()
    assert profile is not None and profile.user == "carol"
    paths = store.paths_for(profile)
    key = asyncssh.read_private_key(paths.private_key)
    cert = asyncssh.read_certificate(paths.ssh_cert(cluster.name))
    assert cert.key.public_data == key.public_data
    from cryptography.hazmat.primitives.serialization import load_ssh_public_identity

    raw = load_ssh_public_identity(paths.ssh_cert(cluster.name).read_bytes())
    assert raw.valid_before == profile.valid_before  # type: ignore[union-attr]
    assert len(paths.known_hosts.read_text().splitlines()) == 1
    assert not [p for p in store.home.rglob("*.tmp")]


# ----------------------------------------------------------------------------- hostile
@pytest.fixture
def good_login(cluster, ssh_agent, openssh, login_name: str):  # type: ignore[no-untyped-def]
    """A good profile (and agent key) that each hostile case must leave exactly as it was."""
    cluster.add_user("dave", [login_name])
    env = env_for(cluster, ssh_agent.sock)
    assert login(cluster, "dave", env).returncode == 0
    before = (home_snapshot(), agent_lines(openssh, ssh_agent.sock))
    yield env

    assert (home_snapshot(), agent_lines(openssh, ssh_agent.sock)) == before


def _assert_clean_failure(r, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert r.returncode != 0
    assert r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_wrong_password(cluster, good_login) -> None:  # type: ignore[no-untyped-def]
    _assert_clean_failure(
        login(cluster, "dave", good_login, password="wrong"),
        "invalid username, password or second factor",
    )


def test_wrong_otp(otp_cluster, ssh_agent, openssh, login_name: str) -> None:  # type: ignore[no-untyped-def]
    cluster = otp_cluster
    secret = cluster.add_user("erin", [login_name], otp=True)
    env = env_for(cluster, ssh_agent.sock)
    assert login(cluster, "erin", env, secret=secret).returncode == 0
    before = (home_snapshot(), agent_lines(openssh, ssh_agent.sock))
    r = tsh(
        "login",
        f"--proxy={cluster.web_addr}",
        "--user=erin",
        env=env,
        input=f"{PASSWORD}\n000000\n",
    )
    _assert_clean_failure(r, "second factor")
    assert (home_snapshot(), agent_lines(openssh, ssh_agent.sock)) == before


def test_untrusted_tls_fails_before_the_password(cluster, good_login) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in good_login.items() if k != "SSL_CERT_FILE"}
    r = tsh("login", f"--proxy={cluster.web_addr}", "--user=dave", env=env, input="")
    # stdin is empty: had tsh asked for the password, the error would say so
    _assert_clean_failure(r, "TLS verification of 127.0.0.1 failed")


def test_insecure_warns_and_is_not_saved(cluster, good_login) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in good_login.items() if k != "SSL_CERT_FILE"}
    r = login(cluster, "nobody", env, "--insecure", password="wrong")
    assert r.returncode == 1 and "WARNING: --insecure" in r.stderr
    assert "access denied" in r.stderr  # got past TLS, then refused


def test_symlinked_key_path(cluster, good_login, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ProfileStore()
    paths = store.paths(cluster.web_addr.rsplit(":", 1)[0], "dave")
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    real = paths.private_key.read_bytes()
    paths.private_key.unlink()
    paths.private_key.symlink_to(victim)
    try:
        snap = home_snapshot()
        _assert_clean_failure(login(cluster, "dave", good_login), "symbolic link")
        assert victim.read_text() == "precious\n" and home_snapshot() == snap
    finally:
        paths.private_key.unlink()
        paths.private_key.write_bytes(real)
        os.chmod(paths.private_key, 0o600)


def test_not_a_teleport_proxy(good_login, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from _html_server import html_server

    with html_server(tmp_path) as (addr, ca_file):
        env = dict(good_login, SSL_CERT_FILE=str(ca_file))
        r = tsh("login", f"--proxy={addr}", "--user=dave", env=env, input="")
        _assert_clean_failure(r, "is it a Teleport proxy?")


def test_terminal_prompts(otp_cluster, login_name: str) -> None:  # type: ignore[no-untyped-def]
    import pexpect

    cluster = otp_cluster
    secret = cluster.add_user("frank", [login_name], otp=True)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tsh", "login", f"--proxy={cluster.web_addr}", "--user=frank", "-k", "no"],
        env=env_for(cluster), encoding="utf-8", timeout=30,
    )
    transcript = io.StringIO()
    child.logfile_read = transcript  # everything the terminal showed
    try:
        child.expect_exact("Enter password for Teleport user frank:")
        child.sendline(PASSWORD)
        child.expect_exact("Enter your OTP token:")
        child.sendline(pyotp.TOTP(secret).now())
        child.expect_exact("Logged in as:       frank")
        child.expect(pexpect.EOF)
        assert PASSWORD not in transcript.getvalue()  # typed without echo
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
