"""CA rotation end to end: the test cluster's `auth rotate`, real `tsh login`, real OpenSSH.

One cluster per module: every test leaves it back in standby (a finished or
rolled-back rotation), so the next one starts a rotation of its own.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster.launch import Cluster, launch_cluster
from tests.conftest import launch_node
from tests.integration._tsh import env_for, login, run_tsh, tsh_config_file

pytestmark = pytest.mark.integration

_users = itertools.count()
# A line of another proxy that every login must leave exactly as it is.
FOREIGN = (
    "@cert-authority other.example,other.test,*.other.test ssh-ed25519 "
    "AAAAC3NzaC1lZDI1NTE5AAAAIMmv0LJUS0lWyBzDvVKHBdTKGeTvPxZDkLLwKqKbNRcB type=host"
)


@pytest.fixture(scope="module")
def rcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = launch_cluster(tmp_path_factory.mktemp("rot") / "data", name="rot.test")
    yield c
    c.stop()


def rotate(cluster: Cluster, *args: str) -> str:
    return cluster.admin("auth", "rotate", *args)


def export(cluster: Cluster, ca_type: str) -> list[str]:
    """The public ``GET /webapi/auth/export?type=`` answer, one line each."""
    r = httpx.get(f"{cluster.web_url}/webapi/auth/export", params={"type": ca_type},
                  verify=cluster.ssl_context(), timeout=10)
    assert r.status_code == 200, r.text
    assert cluster.admin("auth", "export", f"--type={ca_type}") == r.text  # tctl agrees
    return r.text.splitlines()


def keys_of(lines: list[str]) -> list[str]:
    """The ``<type> <base64>`` of each export or known_hosts CA line."""
    out = []
    for line in lines:
        parts = line.split()
        i = 2 if parts[0] == "@cert-authority" else 1
        out.append(" ".join(parts[i : i + 2]))
    return out


def known_hosts() -> list[str]:
    return (Path(os.environ["TELEPORT_HOME"]) / "known_hosts").read_text().splitlines()


def ours(cluster: Cluster) -> list[str]:
    """Our lines in known_hosts, after checking the foreign line survived exactly once."""
    lines = known_hosts()
    assert lines.count(FOREIGN) == 1
    assert len(lines) == len(set(lines)), "duplicate known_hosts lines"
    return [ln for ln in lines if ln != FOREIGN]


def tls_cas(cluster: Cluster) -> int:
    home = Path(os.environ["TELEPORT_HOME"])
    (pem,) = home.glob(f"keys/*/cas/{cluster.name}.pem")
    return pem.read_text().count("BEGIN CERTIFICATE")


HOST_CA_CHANGED = "error: the cluster's host CA has changed (CA rotation): run tsh login"
USER_CA_ROTATED = (
    "error: your certificate is signed by a user CA the cluster no longer trusts (CA rotation): "
    "run tsh login"
)


def tsh_ssh(user: User, node, login_name: str, *extra: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return run_tsh("ssh", *extra, f"--port={node.port}", f"{login_name}@{node.name}", "echo", "ok",
                   env=user.env)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


class User:
    def __init__(self, cluster: Cluster, login_name: str):
        self.name = f"rot{next(_users)}"
        self.cluster = cluster
        cluster.add_user(self.name, [login_name])
        self.env = env_for(cluster)

    def login(self) -> None:
        r = login(self.cluster, self.name, self.env)
        assert r.returncode == 0, r.stderr


def plain_ssh(ssh: str, cfg: Path, login_name: str, node, cluster: Cluster,  # type: ignore[no-untyped-def]
              env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ssh, "-F", str(cfg), "-o", "BatchMode=yes", "-p", str(node.port),
         f"{login_name}@{node.name}.{cluster.name}", "echo", "ok"],
        capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def proxy_host_ca(cluster: Cluster, openssh) -> str:  # type: ignore[no-untyped-def]
    """The fingerprint of the CA that signed the SSH proxy's host certificate (ssh-keyscan)."""
    scan = subprocess.run(
        [openssh.ssh_keygen.replace("ssh-keygen", "ssh-keyscan"), "-c", "-p",
         str(cluster.ssh_proxy_port), "127.0.0.1"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    line = next(ln for ln in scan.splitlines() if "-cert-v01@" in ln and not ln.startswith("#"))
    cert = line[line.index(next(w for w in line.split() if w.endswith("-cert-v01@openssh.com"))):]
    return signing_ca(cert, openssh)


def signing_ca(cert: str, openssh) -> str:  # type: ignore[no-untyped-def]
    """``ssh-keygen -L``'s "Signing CA" fingerprint of an OpenSSH certificate line."""
    with tempfile.NamedTemporaryFile("w", suffix="-cert.pub") as f:
        f.write(cert.strip() + "\n")
        f.flush()
        info = subprocess.run([openssh.ssh_keygen, "-L", "-f", f.name],
                              capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in info.splitlines() if "Signing CA:" in ln)
    return line.split()[3]  # "Signing CA: ED25519 SHA256:... (using ...)"


def ca_status(cluster: Cluster, ca_type: str) -> str:
    """The ``status`` line of one CA."""
    return next(ln for ln in cluster.admin("status").splitlines() if ln.startswith(ca_type + " "))


def fingerprint(key_line: str, openssh) -> str:  # type: ignore[no-untyped-def]
    out = subprocess.run([openssh.ssh_keygen, "-l", "-f", "-"], input=key_line + "\n",
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_host_rotation_keeps_old_and_resigned_nodes_reachable(
    rcluster: Cluster, openssh, login_name: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    home = Path(os.environ["TELEPORT_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "known_hosts").write_text(FOREIGN + "\n")
    old_node = launch_node(rcluster, "old-node", tmp_path / "old-node")
    new_node = None
    try:
        user = User(rcluster, login_name)
        user.login()
        (old,) = keys_of(export(rcluster, "host"))
        assert keys_of(ours(rcluster)) == [old]
        before_rotation = "".join(ln + "\n" for ln in ours(rcluster))
        cfg = tsh_config_file(tmp_path / "ssh_config", env=user.env, installed=True)
        assert plain_ssh(openssh.ssh, cfg, login_name, old_node, rcluster, user.env).stdout == "ok\n"

        out = rotate(rcluster, "--type=host", "--manual", "--phase=init", "--grace-period=1h")
        assert out == "Updated rotation phase to \"init\". To check status use 'tctl status'\n"
        old_, new = keys_of(export(rcluster, "host"))
        assert old_ == old and new != old
        user.login()
        assert keys_of(ours(rcluster)) == [old, new]  # both, active first
        assert tls_cas(rcluster) == 2
        assert "in progress (mode: manual, phase: init)" in rcluster.admin("status")

        rotate(rcluster, "--type=host", "--manual", "--phase=update_clients")
        assert keys_of(export(rcluster, "host")) == [new, old]
        # servers still present old-CA certificates
        assert proxy_host_ca(rcluster, openssh) == fingerprint(old, openssh)
        user.login()
        assert keys_of(ours(rcluster)) == [new, old]

        rotate(rcluster, "--type=host", "--manual", "--phase=update_servers")
        # the guide: OpenSSH hosts get new host certificates now (auth sign uses the new key)
        new_node = launch_node(rcluster, "new-node", tmp_path / "new-node")
        cert = (tmp_path / "new-node" / "ssh_host_key-cert.pub").read_text()
        assert signing_ca(cert, openssh) == fingerprint(new, openssh)
        _wait_for(lambda: proxy_host_ca(rcluster, openssh) == fingerprint(new, openssh))
        # a profile from before the rotation no longer trusts the proxy: say why
        current = (home / "known_hosts").read_text()
        (home / "known_hosts").write_text(FOREIGN + "\n" + before_rotation)
        r = tsh_ssh(user, new_node, login_name)
        assert r.returncode == 255 and last_line(r.stderr) == HOST_CA_CHANGED, r.stderr
        r = run_tsh("proxy", "ssh", f"{login_name}@{new_node.name}:{new_node.port}",
                    env=user.env, timeout=60)
        assert r.returncode != 0 and HOST_CA_CHANGED in r.stderr, r.stderr
        r = plain_ssh(openssh.ssh, cfg, login_name, new_node, rcluster, user.env)
        assert r.returncode == 255 and HOST_CA_CHANGED in r.stderr, r.stderr
        (home / "known_hosts").write_text(current)
        for n in (old_node, new_node):  # both reachable with the profile of update_clients
            r = plain_ssh(openssh.ssh, cfg, login_name, n, rcluster, user.env)
            assert r.stdout == "ok\n", r.stderr

        rotate(rcluster, "--type=host", "--manual", "--phase=standby")
        assert keys_of(export(rcluster, "host")) == [new]
        assert "standby (last rotated: " in rcluster.admin("status")
        user.login()
        assert keys_of(ours(rcluster)) == [new]  # the rotated-away CA is gone
        assert tls_cas(rcluster) == 1
        r = plain_ssh(openssh.ssh, cfg, login_name, old_node, rcluster, user.env)
        assert r.returncode == 255 and "Host key verification failed." in r.stderr
        r = tsh_ssh(user, old_node, login_name)  # tsh ssh says why, and what the fix is
        assert r.returncode == 255
        assert last_line(r.stderr) == (
            "error: node old-node's host certificate is not signed by a host CA the cluster "
            "trusts now (left on a rotated-away CA?): the node's admin must re-sign it (tctl "
            "auth sign --host=... --format=openssh) and restart sshd"
        ), r.stderr
        src = tmp_path / "payload"
        src.write_text("x")
        r = run_tsh("scp", "-P", str(old_node.port), str(src), f"{login_name}@old-node:/tmp/",
                    env=user.env)
        assert r.returncode == 255 and "is not signed by a host CA the cluster trusts now" in (
            last_line(r.stderr)
        ), r.stderr
        r = plain_ssh(openssh.ssh, cfg, login_name, new_node, rcluster, user.env)
        assert r.stdout == "ok\n", r.stderr
        assert tsh_ssh(user, new_node, login_name).stdout == "ok\n"
    finally:
        old_node.stop()
        if new_node is not None:
            new_node.stop()


def test_user_rotation_old_certificate_works_during_grace_only(
    rcluster: Cluster, openssh, login_name: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    node = launch_node(rcluster, "user-node", tmp_path / "user-node")
    # a node whose admin never re-exports the user CA
    stale = launch_node(rcluster, "stale-node", tmp_path / "stale-node")
    try:
        user = User(rcluster, login_name)
        user.login()
        # --no-reuse: a shared proxy connection logged in before the rotation would carry
        # new sessions past it (docs/protocol.md §19); this test is about the proxy's refusal.
        cfg = tsh_config_file(tmp_path / "ssh_config", "--no-reuse", env=user.env, installed=True)
        (old,) = keys_of(export(rcluster, "user"))
        rotate(rcluster, "--type=user", "--manual", "--phase=init", "--grace-period=1h")
        assert keys_of(export(rcluster, "user"))[0] == old
        # the node admin re-exports the user CA in init: sshd now trusts both
        _reexport_user_ca(rcluster, tmp_path / "user-node")
        rotate(rcluster, "--type=user", "--manual", "--phase=update_clients")
        # the certificate from the old key keeps working during the grace period
        assert plain_ssh(openssh.ssh, cfg, login_name, node, rcluster, user.env).stdout == "ok\n"
        rotate(rcluster, "--type=user", "--manual", "--phase=update_servers")
        rotate(rcluster, "--type=user", "--manual", "--phase=standby")
        (new,) = keys_of(export(rcluster, "user"))
        assert new != old
        r = plain_ssh(openssh.ssh, cfg, login_name, node, rcluster, user.env)
        assert r.returncode == 255  # the proxy refuses the old certificate now
        r = tsh_ssh(user, node, login_name, "--no-reuse")
        assert r.returncode == 255 and last_line(r.stderr) == USER_CA_ROTATED, r.stderr
        user.login()
        assert plain_ssh(openssh.ssh, cfg, login_name, node, rcluster, user.env).stdout == "ok\n"
        r = tsh_ssh(user, stale, login_name)
        assert r.returncode == 255
        assert last_line(r.stderr) == (
            "error: node stale-node does not trust the cluster's current user CA (CA rotation): "
            "re-export the user CA to the node with `tctl auth export --type=user` (its "
            "TrustedUserCAKeys file)"
        ), r.stderr
        _reexport_user_ca(rcluster, tmp_path / "stale-node")
        assert tsh_ssh(user, stale, login_name).stdout == "ok\n"
    finally:
        node.stop()
        stale.stop()


def _reexport_user_ca(cluster: Cluster, workdir: Path) -> None:
    """What a node admin runs: `tctl auth export --type=user | sed s/cert-authority\\ //`."""
    export_text = cluster.admin("auth", "export", "--type=user")
    (workdir / "teleport_user_ca.pub").write_text(
        "".join(ln.replace("cert-authority ", "", 1) + "\n" for ln in export_text.splitlines())
    )


def test_forced_rotation_needs_a_new_login(
    rcluster: Cluster, openssh, login_name: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    user = User(rcluster, login_name)
    user.login()
    before = known_hosts()
    status = run_tsh("status", env=user.env)
    assert status.returncode == 0 and "WARNING" not in status.stderr, status.stderr
    out = rotate(rcluster, "--type=all", "--grace-period=0")
    assert out == "Initiated certificate authority rotation. To check status use 'tctl status'\n"
    (host,) = export(rcluster, "host")
    assert len(export(rcluster, "user")) == 1
    assert keys_of([host]) != keys_of(before)
    _wait_for(lambda: proxy_host_ca(rcluster, openssh) == fingerprint(keys_of([host])[0], openssh))
    status = run_tsh("status", env=user.env)
    assert status.returncode == 0, status.stderr
    who = f"{user.name}@127.0.0.1"
    assert status.stderr.splitlines() == [
        f"WARNING: the certificate for {who} is signed by a user CA the cluster no longer "
        "trusts (CA rotation): run tsh login",
        f"WARNING: the cluster of {who} trusts a host CA that known_hosts lacks (CA rotation): "
        "run tsh login",
    ]
    assert re.search(rf"Logged in as: +{user.name}\n", status.stdout)  # the offline status
    user.login()
    assert "WARNING" not in run_tsh("status", env=user.env).stderr
    assert keys_of(known_hosts()) == keys_of([host])


@pytest.mark.parametrize("phases", [("init",), ("init", "update_clients"),
                                    ("init", "update_clients", "update_servers")],
                         ids=["from-init", "from-update_clients", "from-update_servers"])
def test_rollback_from_each_phase(
    rcluster: Cluster, login_name: str, phases: tuple[str, ...]
) -> None:
    user = User(rcluster, login_name)
    original = keys_of(export(rcluster, "host"))
    for phase in phases:
        rotate(rcluster, "--type=host", "--manual", f"--phase={phase}", "--grace-period=1h")
    user.login()
    assert len(keys_of(known_hosts())) == 2
    rotate(rcluster, "--type=host", "--manual", "--phase=rollback")
    rolled = keys_of(export(rcluster, "host"))
    assert rolled[0] == original[0] and len(rolled) == 2  # old signs again, new still trusted
    assert "in progress (mode: manual, phase: rollback)" in rcluster.admin("status")
    user.login()
    assert keys_of(known_hosts()) == rolled
    rotate(rcluster, "--type=host", "--manual", "--phase=standby")
    assert keys_of(export(rcluster, "host")) == original
    user.login()
    assert keys_of(known_hosts()) == original


def test_automatic_rotation_moves_at_thirds_of_the_grace_period(
    rcluster: Cluster, openssh, login_name: str
) -> None:  # type: ignore[no-untyped-def]
    (old,) = keys_of(export(rcluster, "host"))
    rotate(rcluster, "--type=host", "--grace-period=6s")
    assert ca_status(rcluster, "host") == "host  in progress (mode: auto, phase: init)"
    _wait_for(lambda: "phase: update_clients" in ca_status(rcluster, "host"), 10)
    _wait_for(lambda: proxy_host_ca(rcluster, openssh) != fingerprint(old, openssh), 10)
    _wait_for(lambda: "standby (last rotated" in ca_status(rcluster, "host"), 10)
    (new,) = keys_of(export(rcluster, "host"))
    assert new != old


def test_refused_rotation_prints_tctls_error(rcluster: Cluster) -> None:
    with pytest.raises(RuntimeError, match="can only switch to phase update_clients from init, "
                                           "current phase is standby"):
        rotate(rcluster, "--type=host", "--manual", "--phase=update_clients")


def test_public_export_rejects_unknown_types(rcluster: Cluster) -> None:
    r = httpx.get(f"{rcluster.web_url}/v1/webapi/auth/export", params={"type": "db"},
                  verify=rcluster.ssl_context(), timeout=10)
    assert r.status_code == 400
    site = httpx.get(f"{rcluster.web_url}/webapi/sites/{rcluster.name}/auth/export",
                     params={"type": "user"}, verify=rcluster.ssl_context(), timeout=10)
    assert site.text == rcluster.admin("auth", "export", "--type=user")


def _wait_for(check, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)  # the cluster re-certifies its proxy every 0.2 s


def test_terminal_relogin_covers_a_rotated_away_user_ca(
    rcluster: Cluster, openssh, login_name: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import sys

    import pexpect

    from tests.integration._tsh import PASSWORD

    node = launch_node(rcluster, "relogin-node", tmp_path / "relogin-node")
    try:
        user = User(rcluster, login_name)
        user.login()
        rotate(rcluster, "--type=user", "--grace-period=0")  # forced: the certificate is dead
        _reexport_user_ca(rcluster, tmp_path / "relogin-node")
        child = pexpect.spawn(
            sys.executable,
            ["-m", "tsh", "ssh", f"--port={node.port}", f"{login_name}@{node.name}", "echo renewed"],
            env=user.env, encoding="utf-8", timeout=30,
        )  # fmt: skip
        try:
            child.expect_exact(USER_CA_ROTATED)
            child.expect("was issued before a CA rotation; logging in again")
            child.expect(f"Enter password for Teleport user {user.name}:")
            child.sendline(PASSWORD)
            child.expect("renewed")
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus == 0
    finally:
        node.stop()


def test_status_never_waits_long_for_an_unreachable_proxy(
    rcluster: Cluster, login_name: str
) -> None:
    """A proxy that accepts and never answers: the offline status still comes, at once."""
    import json
    import socket
    import time

    user = User(rcluster, login_name)
    user.login()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        home = Path(os.environ["TELEPORT_HOME"])
        (profile,) = home.glob("*.yaml")
        data = json.loads(profile.read_text())
        data["web_proxy_addr"] = f"127.0.0.1:{silent.getsockname()[1]}"
        profile.write_text(json.dumps(data))
        t = time.monotonic()
        status = run_tsh("status", env=user.env)
        took = time.monotonic() - t
    assert status.returncode == 0 and re.search(rf"Logged in as: +{user.name}\n", status.stdout)
    assert "WARNING" not in status.stderr
    assert took < 1.5 + 5  # the online check's deadline plus a loaded machine's start-up
