"""`-k only` profiles whose key is gone from the agent: tsh stops before OpenSSH runs."""

from __future__ import annotations

import stat

import pytest

from tests.conftest import LOGIN
from tests.integration._profiles import log_in
from tests.integration._tsh import run_tsh

pytestmark = pytest.mark.integration


@pytest.fixture
def agent_only(cluster, ssh_agent, tmp_path):  # type: ignore[no-untyped-def]
    """A `-k only` profile (key in ``ssh_agent``, no keyring), and PATH with an `ssh` and `scp` that
    only record that they were started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ssh-was-started"
    for name in ("ssh", "scp"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\ntouch '{marker}'\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = log_in(cluster, [LOGIN], agent_only_sock=ssh_agent.sock).env(
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring"
    )
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}"}, marker


@pytest.mark.parametrize("sock", ["/nonexistent/agent.sock", "emptied"])
@pytest.mark.parametrize(
    "command",
    [["ssh", "node1", "true"], ["scp", "a", "node1:b"], ["proxy", "ssh", f"{LOGIN}@node1:3022"]],
)
def test_agent_without_the_key_stops_with_one_line(agent_only, ssh_agent, openssh, sock, command) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    env, marker = agent_only
    if sock == "emptied":  # the agent lost the key (ssh-add -D, a reboot of the agent)
        subprocess.run([openssh.ssh_add, "-D"], env=ssh_agent.env, check=True, capture_output=True)
        sock = ssh_agent.sock
    r = run_tsh(*command, env={**env, "SSH_AUTH_SOCK": sock})
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "tsh login" in r.stderr
    assert not marker.exists()
