"""`tsh config` end to end: plain OpenSSH reaches a real sshd node through the proxy."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import launch_node
from tests.integration._profiles import log_in, tsh
from tests.integration._tsh import ssh_with_config, tsh_argv, tsh_config_file

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("form", ["tsh", "openssh"])
def test_ssh_reaches_node_through_generated_config(
    openssh, cluster, node, login_name, ssh_agent, tmp_path, form
) -> None:
    me = log_in(cluster, [login_name])
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}",
                          f"--proxy-command={form}", env=me.env(), installed=True)
    text = cfg.read_text()
    assert text.startswith("# Begin generated Teleport configuration for 127.0.0.1 by tsh\n")
    assert ("proxy ssh --cluster=" in text) == (form == "tsh")
    env = me.env(SSH_AUTH_SOCK=ssh_agent.sock)
    r = ssh_with_config(openssh.ssh, cfg, f"{login_name}@{node.name}.{cluster.name}",
                        "echo", "hi-from-node", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi-from-node\n"
    # The node's own sshd saw a certificate login from the cluster's user CA.
    assert f"Accepted publickey for {login_name}" in node.log()


def test_login_option_and_default_user(openssh, cluster, node, login_name, tmp_path) -> None:
    me = log_in(cluster, [login_name])
    cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={node.port}", f"--login={login_name}",
                          env=me.env(), installed=True)
    r = ssh_with_config(openssh.ssh, cfg, f"{node.name}.{cluster.name}", "id", "-un", env=me.env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == login_name


@pytest.mark.parametrize("ca", [False, True], ids=["plain-host-key", "other-ca"])
def test_node_host_certificate_is_checked(openssh, cluster, login_name, tmp_path, ca) -> None:
    name = "rogue-ca" if ca else "rogue-plain"
    rogue = launch_node(cluster, name, tmp_path / name, "other-ca" if ca else "plain")
    try:
        me = log_in(cluster, [login_name])
        cfg = tsh_config_file(tmp_path / "ssh_config", f"--port={rogue.port}", env=me.env(),
                              installed=True)
        r = ssh_with_config(openssh.ssh, cfg, f"{login_name}@{name}.{cluster.name}", "true",
                            env=me.env())
        assert r.returncode == 255
        assert "Host key verification failed" in r.stderr
        assert "Accepted publickey" not in rogue.log()
    finally:
        rogue.stop()


def test_seed_page_append_with_fresh_home(openssh, cluster, node, login_name, tmp_path) -> None:
    """`tsh config >> ~/.ssh/config`, as the seed page says, into a brand-new HOME."""
    me = log_in(cluster, [login_name])
    home = tmp_path / "fresh-home"
    home.mkdir()
    env = me.env(HOME=str(home))
    r = subprocess.run(
        ["sh", "-c", f"mkdir -p ~/.ssh && {shlex.join(tsh_argv())} config --port={node.port}"
         " >> ~/.ssh/config"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    cfg = home / ".ssh" / "config"
    assert cfg.read_text().startswith("# Begin generated Teleport configuration")
    # OpenSSH takes ~ from the passwd entry, so name the file explicitly.
    r2 = ssh_with_config(openssh.ssh, cfg, f"{login_name}@{node.name}.{cluster.name}", "hostname",
                         env=env)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.strip()


def test_update_is_idempotent_and_preserves_the_rest(cluster, login_name, tmp_path) -> None:
    me = log_in(cluster, [login_name])
    target = tmp_path / "dot-ssh" / "config"
    target.parent.mkdir()
    head = b"# mine\nHost github.com\n    User git\n\xff not utf-8\n"
    target.write_bytes(head)
    os.chmod(target, 0o640)
    r = tsh("config", f"--update={target}", env=me.env())
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b""
    first = target.read_bytes()
    assert first.startswith(head + b"\n# Begin generated Teleport configuration")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert Path(f"{target}.tsh-backup").read_bytes() == head
    # Again (the other spelling): nothing changes.
    r = tsh("config", "--update-file", str(target), env=me.env())
    assert r.returncode == 0 and b"up to date" in r.stderr
    assert target.read_bytes() == first
    # Changed options replace the block in place; text after it stays.
    target.write_bytes(first + b"Host *\n    ServerAliveInterval 30\n")
    r = tsh("config", f"--update={target}", "--port=2222", env=me.env())
    assert r.returncode == 0, r.stderr.decode()
    new = target.read_bytes()
    assert new.startswith(head) and new.endswith(b"Host *\n    ServerAliveInterval 30\n")
    assert new.count(b"# Begin generated") == 1 and b"Port 2222" in new
    # --update without a path: ~/.ssh/config (created 0600 in a 0700 dir).
    home = tmp_path / "h"
    r = tsh("config", "--update", env=me.env(HOME=str(home)))
    assert r.returncode == 0, r.stderr.decode()
    assert stat.S_IMODE((home / ".ssh" / "config").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700


def test_not_logged_in_is_a_clear_error(tmp_path) -> None:
    r = tsh("config", env={**os.environ, "TELEPORT_HOME": str(tmp_path)})
    assert r.returncode != 0
    assert r.stdout == b""
    assert r.stderr.decode().startswith("error: not logged in")


def test_refuses_unsafe_login_without_touching_files(cluster, login_name, tmp_path) -> None:
    me = log_in(cluster, [login_name])
    target = tmp_path / "config"
    target.write_text("Host a\n")
    r = tsh("config", f"--update-file={target}", "--login=x\nHost *", env=me.env())
    assert r.returncode == 2
    assert r.stderr.decode().count("\n") == 1 and "invalid login" in r.stderr.decode()
    assert target.read_text() == "Host a\n"
