"""The OpenSSH chain without the client: web API cert -> ssh -> proxy subsystem -> real sshd.

Everything here is what the seed page does by hand: a user certificate from
``/v1/webapi/ssh/certs`` (httpx), known_hosts ``@cert-authority`` lines from
``auth export --type=host``, and OpenSSH's own ``ssh`` with
``ProxyCommand ssh -p <proxy port> %r@127.0.0.1 -s proxy:%h:%p``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import LOGIN, launch_node
from tests.integration._profiles import request_cert

pytestmark = pytest.mark.integration


@dataclass
class Identity:
    key: Path
    cert: Path
    known_hosts: Path


@pytest.fixture(scope="module")
def identity(cluster, tmp_path_factory) -> Identity:
    tmp_path = tmp_path_factory.mktemp("identity")
    cluster.add_user("chain-user", [LOGIN])
    key = asyncssh.generate_private_key("ssh-ed25519")
    body = request_cert(cluster, "chain-user", key)
    ident = Identity(tmp_path / "id", tmp_path / "id-cert.pub", tmp_path / "known_hosts")
    ident.key.write_bytes(key.export_private_key())
    ident.key.chmod(0o600)
    ident.cert.write_bytes(base64.b64decode(body["cert"]))
    # The exported line covers *.<cluster>; the proxy hop is dialled as 127.0.0.1.
    lines = cluster.admin("auth", "export", "--type=host").splitlines()
    assert lines and all(line.startswith(f"@cert-authority *.{cluster.name} ") for line in lines)
    ident.known_hosts.write_text(
        "".join(line.replace(f"*.{cluster.name} ", f"*.{cluster.name},127.0.0.1 ", 1) + "\n"
                for line in lines)
    )
    return ident


def ssh_options(ident: Identity) -> list[str]:
    return [
        "-F", "/dev/null",  # ~/.ssh comes from passwd, not $HOME: ignore it
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={ident.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-i", str(ident.key),
        "-o", f"CertificateFile={ident.cert}",
    ]


def ssh_via_proxy(openssh, cluster, ident: Identity, target: str, port: int, login: str,
                  command: str) -> subprocess.CompletedProcess[str]:
    proxy_cmd = " ".join(
        [openssh.ssh, *ssh_options(ident), "-p", str(cluster.ssh_proxy_port),
         "%r@127.0.0.1", "-s", "proxy:%h:%p"]
    )
    return subprocess.run(
        [openssh.ssh, *ssh_options(ident), "-o", f"ProxyCommand={proxy_cmd}",
         "-p", str(port), f"{login}@{target}", command],
        capture_output=True, text=True, timeout=60,
    )


def proxy_subsystem(openssh, cluster, ident: Identity, destination: str, subsystem: str):  # type: ignore[no-untyped-def]
    """Plain OpenSSH to the proxy's SSH port, asking for ``subsystem``."""
    return subprocess.run(
        [openssh.ssh, *ssh_options(ident), "-p", str(cluster.ssh_proxy_port), destination,
         "-s", subsystem],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def test_chain_by_registered_address(openssh, cluster, node, identity, login_name) -> None:
    # %h = 127.0.0.1, %p = the node's port: routed by the registered address.
    r = ssh_via_proxy(openssh, cluster, identity, node.host, node.port, login_name, "id -un")
    assert r.returncode == 0, r.stderr + node.log()[-2000:]
    assert r.stdout.strip() == login_name
    assert 'Accepted certificate ID "chain-user"' in node.log()


def test_chain_by_node_name_in_cluster_domain(openssh, cluster, start_node, identity,
                                              login_name) -> None:
    # A node whose registered name is in *.<cluster>: the exported CA line alone
    # verifies it, exactly as on the seed page.
    named = start_node(cluster, f"db.{cluster.name}")
    r = ssh_via_proxy(openssh, cluster, identity, named.name, named.port, login_name,
                      "echo chain-ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "chain-ok\n"


def test_node_with_foreign_host_ca_is_refused(openssh, cluster, identity, login_name,
                                              tmp_path) -> None:
    with launch_node(cluster, f"rogue.{cluster.name}", tmp_path / "rogue", "other-ca") as rogue:
        r = ssh_via_proxy(openssh, cluster, identity, f"rogue.{cluster.name}", rogue.port,
                          login_name, "echo should-not-run")
    assert r.returncode == 255
    assert "should-not-run" not in r.stdout
    assert "Host key verification failed" in r.stderr


def test_unknown_node_is_a_clear_error(openssh, cluster, identity, login_name) -> None:
    r = proxy_subsystem(openssh, cluster, identity, f"{login_name}@127.0.0.1", "proxy:ghost:3022")
    assert r.returncode == 1
    assert 'no node named "ghost"' in r.stderr


def test_bad_subsystem_format_fails_the_request(openssh, cluster, identity, login_name) -> None:
    r = proxy_subsystem(openssh, cluster, identity, f"{login_name}@127.0.0.1", "proxy:ghost")
    # As with Teleport, the request fails; OpenSSH exits before printing the
    # proxy's text (the exact texts are unit-tested in test_cluster_subsystem).
    assert r.returncode == 255
    assert "subsystem request failed" in r.stderr


def test_proxy_refuses_a_login_outside_the_principals(openssh, cluster, identity) -> None:
    r = proxy_subsystem(openssh, cluster, identity, "not-a-principal@127.0.0.1", "proxysites")
    assert r.returncode == 255
    assert "Permission denied" in r.stderr


def test_proxysites(openssh, cluster, identity, login_name) -> None:
    # (OpenSSH refuses user names starting with "-", so not -teleport-internal-join)
    r = proxy_subsystem(openssh, cluster, identity, f"{login_name}@127.0.0.1", "proxysites")
    assert r.returncode == 0, r.stderr
    (site,) = json.loads(r.stdout)
    assert site["name"] == cluster.name and site["status"] == "online"
    assert site["lastconnected"].endswith("Z")
