"""`tsh login` with agents that cannot hold certificates, and `-k only` (keyring or not)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.integration._tsh import agent_lines, env_for, login
from tests.integration._tsh import run_tsh as tsh
from tsh._store.store import ProfileStore

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent


@pytest.fixture
def gpg_agent_sock() -> Iterator[str]:
    """A real gpg-agent with SSH support (no pinentry: it refuses to import keys)."""
    gpg_agent, gpgconf = require_tool("gpg-agent"), require_tool("gpgconf")
    home = tempfile.mkdtemp(prefix="gpg-")  # short: socket paths are limited
    os.chmod(home, 0o700)
    try:
        # --daemon returns once the sockets are bound; gpgconf --kill stops it.
        subprocess.run(
            [gpg_agent, "--homedir", home, "--daemon", "--enable-ssh-support"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )  # no pipes: the daemon would hold them open
        sock = subprocess.run(
            [gpgconf, "--homedir", home, "--list-dirs", "agent-ssh-socket"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert os.path.exists(sock)
        yield sock
    finally:
        subprocess.run([gpgconf, "--homedir", home, "--kill", "gpg-agent"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("mode", ["yes", "auto"])
def test_gpg_agent_warns_and_keeps_keys_on_disk(
    cluster, openssh, gpg_agent_sock: str, login_name: str, mode: str
) -> None:  # type: ignore[no-untyped-def]
    user = f"gpg{mode}"
    cluster.add_user(user, [login_name])
    r = login(cluster, user, env_for(cluster, gpg_agent_sock), f"--add-keys-to-agent={mode}")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("WARNING: ")
    if mode == "yes":  # tried, refused, verified: the fix is named
        assert "--add-keys-to-agent=no" in r.stderr and "ssh-agent" in r.stderr
    else:  # the gpg-agent heuristic: not even tried
        assert "does not appear to support SSH certificates" in r.stderr
    assert agent_lines(openssh, gpg_agent_sock) == []
    paths = ProfileStore().paths(cluster.web_addr.rsplit(":", 1)[0], user)
    assert paths.private_key.exists() and paths.ssh_cert(cluster.name).exists()


def test_only_without_keyring_keeps_key_in_agent_only(
    cluster, ssh_agent, openssh, login_name: str
) -> None:  # type: ignore[no-untyped-def]
    cluster.add_user("onlyfail", [login_name])
    env = env_for(cluster, ssh_agent.sock, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    r = login(cluster, "onlyfail", env, "-k", "only")
    assert r.returncode == 0, r.stderr
    assert "no usable OS keyring" in r.stderr and "ssh-agent only" in r.stderr
    store = ProfileStore()
    profile = store.current()
    assert profile is not None and profile.key_storage == "agent"
    paths = store.paths_for(profile)
    assert not paths.private_key.exists() and not paths.tls_key.exists()
    assert sum("-cert-v01@" in line for line in agent_lines(openssh, ssh_agent.sock)) == 1
    # The agent lost it and there is no keyring: status says so, and still shows the profile.
    subprocess.run([openssh.ssh_add, "-D"], env=ssh_agent.env, capture_output=True, check=True)
    r = tsh("status", env=env)
    assert r.returncode == 0 and "Logged in as:       onlyfail" in r.stdout
    assert "neither in the ssh-agent nor in the OS keyring" in r.stderr


def test_only_without_agent_or_keyring_fails_and_saves_nothing(cluster, login_name: str) -> None:  # type: ignore[no-untyped-def]
    cluster.add_user("nowhere", [login_name])
    env = env_for(cluster, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    r = login(cluster, "nowhere", env, "-k", "only")
    assert r.returncode == 1 and "nothing was saved" in r.stderr
    assert ProfileStore().list() == []


def test_only_with_secret_service(cluster, ssh_agent, login_name: str) -> None:  # type: ignore[no-untyped-def]
    dbus_run_session = require_tool("dbus-run-session")
    require_tool("gnome-keyring-daemon")
    cluster.add_user("kr", [login_name])
    proxy_host = cluster.web_addr.rsplit(":", 1)[0]
    r = subprocess.run(
        [
            dbus_run_session,
            "--",
            sys.executable,
            str(HERE / "_keyring_driver.py"),
            cluster.web_addr,
            "kr",
            proxy_host,
            cluster.name,
        ],
        env=env_for(cluster, ssh_agent.sock),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["backend"].startswith("keyring.backends.SecretService")
    assert out["login"] == [0, ""]
    assert out["in_keyring"] is True
    assert sum("-cert-v01@" in line for line in out["agent_after_login"]) == 1
    assert not ProfileStore().paths(proxy_host, "kr").private_key.exists()
    status_rc, status_out, status_err = out["status"]
    assert (status_rc, status_err) == (0, "") and "Logged in as:       kr" in status_out
    # status put the key back into the emptied agent, from the keyring
    assert sum("-cert-v01@" in line for line in out["agent_after_status"]) == 1
    assert out["logout"][:2] == [0, "Logged out all users from all proxies.\n"]
    assert out["in_keyring_after_logout"] is False
    assert out["agent_after_logout"] == []
