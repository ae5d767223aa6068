"""Issue #12's two vectors, end to end: a proxy that advertises hostile addresses in ping.

1. ``proxy.ssh.ssh_public_addr`` with an IPv6 scope ID that carries shell code
   (and, in a variant, a newline with a ``Match exec`` directive): it once went
   unquoted into the openssh form's ``sh -c`` ProxyCommand.
2. ``proxy.ssh.public_addr`` with a scope ID that holds ``,*``: it once planted
   ``@cert-authority ...,* <CA>`` in the known_hosts shared by every profile.

Both are refused at ``tsh login`` (exit 1, one line, nothing written). A profile
that holds such a value anyway (written by an older tsh-py, or edited) is
refused by ``tsh config`` and ``tsh ssh`` before anything reaches OpenSSH.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cluster.launch import launch_cluster
from tests.integration._profiles import log_in
from tests.integration._tsh import env_for, login, run_tsh, ssh_with_config

pytestmark = pytest.mark.integration

SHELL_CODE = "[fe80::1%n'$(touch${IFS}%s)']:3023"
NEWLINE_DIRECTIVE = "[fe80::1%n\nMatch exec \"touch %s\"]:3023"
WILDCARD = "[fe80::1%x,*]:3080"


@pytest.fixture
def hostile_cluster(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Factory: a test cluster whose ping advertises the given addresses verbatim."""
    started = []

    def start(**addrs: str):  # type: ignore[no-untyped-def]
        extra = [f"--{k.replace('_', '-')}={v}" for k, v in addrs.items()]
        c = launch_cluster(tmp_path_factory.mktemp("hostile") / "data", extra_args=tuple(extra))
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def _home_files(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*") if p.is_file()}


@pytest.mark.parametrize("template", [SHELL_CODE, NEWLINE_DIRECTIVE], ids=["shell", "newline"])
def test_login_refuses_hostile_ssh_public_addr(
    hostile_cluster, login_name, tmp_path, template
) -> None:
    marker = tmp_path / "pwned"
    cluster = hostile_cluster(ssh_public_addr=template.replace("%s", str(marker)))
    cluster.add_user("joe", [login_name])
    home = tmp_path / "home"
    env = env_for(cluster, TELEPORT_HOME=str(home))
    r = login(cluster, "joe", env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and "proxy.ssh.ssh_public_addr" in r.stderr, r.stderr
    assert "scope IDs are not supported" in r.stderr
    assert not list(home.glob("*.yaml")) and not (home / "known_hosts").exists()
    assert not marker.exists()


def test_login_refuses_hostile_public_addr_and_keeps_known_hosts(
    openssh, hostile_cluster, cluster, login_name, tmp_path
) -> None:
    # A good login first: its known_hosts must come out of the hostile one byte for byte.
    me = log_in(cluster, [login_name])
    before = _home_files(me.home)
    evil = hostile_cluster(public_addr=WILDCARD)
    evil.add_user("joe", [login_name])
    r = login(evil, "joe", env_for(evil, TELEPORT_HOME=str(me.home)))
    assert r.returncode == 1, r.stderr
    assert "proxy.ssh.public_addr" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert _home_files(me.home) == before
    # ssh-keygen is the oracle: no line of tsh's known_hosts is for an unrelated host.
    found = subprocess.run(
        [openssh.ssh_keygen, "-F", "unrelated.example.org", "-f", str(me.paths.known_hosts)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert found.returncode == 1 and found.stdout == "", found.stdout


@pytest.mark.parametrize("template", [SHELL_CODE, NEWLINE_DIRECTIVE], ids=["shell", "newline"])
def test_planted_profile_never_reaches_openssh(
    openssh, cluster, node, login_name, tmp_path, template
) -> None:
    """A profile holding the hostile address is refused where it is read."""
    marker = tmp_path / "pwned"
    me = log_in(cluster, [login_name])
    data = json.loads(me.paths.profile_file.read_text())
    data["ssh_proxy_addr"] = template.replace("%s", str(marker))
    me.paths.profile_file.write_text(json.dumps(data))
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("# mine\n")

    for args in (
        ["config", "--proxy-command=openssh"],
        ["config", "--proxy-command=openssh", f"--update={ssh_config}"],
        ["ssh", f"--port={node.port}", f"{login_name}@{node.name}", "true"],
    ):
        r = run_tsh(*args, env=me.env())
        assert r.returncode == 1, (args, r.stderr)
        assert r.stdout == "" and r.stderr.count("\n") == 1, (args, r.stderr)
        assert str(me.paths.profile_file) in r.stderr and "ssh_proxy_addr is not valid" in r.stderr, r.stderr
    assert ssh_config.read_text() == "# mine\n"
    # Even pointed straight at the file, OpenSSH runs nothing from it.
    r = ssh_with_config(openssh.ssh, ssh_config, f"{node.name}.{cluster.name}", "true",
                        env=me.env())
    assert not marker.exists()


def test_user_proxy_with_scope_id_is_refused(tmp_path) -> None:
    r = run_tsh("login", "--proxy=[fe80::1%eth0]:3080", "--user=joe",
                env={"TELEPORT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "scope IDs are not supported" in r.stderr
