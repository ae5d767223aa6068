"""Build a logged-in tsh profile for a test cluster without `tsh login`.

Creates a cluster user, asks the cluster's web API for a certificate (httpx,
verified against the cluster's TLS CA) and writes what login leaves behind:
key, public key, certificate, known_hosts CA line, profile and current-profile.
Used by the tsh config / tsh proxy ssh tests, which should not depend on the
login code under test elsewhere.
"""

from __future__ import annotations

import base64
import itertools
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx

from tests.integration._tsh import PASSWORD, tsh_argv
from tsh._core.profile import Profile
from tsh._store import fs as _fs
from tsh._store.layout import ProfilePaths

_counter = itertools.count()


@dataclass
class LoggedIn:
    """A profile written under ``home`` (the TELEPORT_HOME of the test)."""

    home: Path
    paths: ProfilePaths

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ with TELEPORT_HOME set (plus ``extra``), for subprocesses."""
        return {**os.environ, "TELEPORT_HOME": str(self.home), **extra}


def request_cert(cluster, user: str, key: asyncssh.SSHKey) -> dict[str, Any]:
    """The cluster's answer to ``POST /v1/webapi/ssh/certs`` for ``user`` (password
    ``PASSWORD``, no OTP) and ``key``'s public half, for an hour: ``cert`` (base64),
    ``host_signers``, ..."""
    r = httpx.post(
        f"{cluster.web_url}/v1/webapi/ssh/certs",
        json={
            "user": user,
            "password": PASSWORD,
            "otp_token": "",
            "ssh_pub_key": base64.b64encode(key.export_public_key("openssh")).decode(),
            "ttl": 3600 * 10**9,
        },
        verify=cluster.ssl_context(),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def log_in(cluster, logins: list[str], *, agent_only_sock: str | None = None) -> LoggedIn:
    """Create a user with ``logins`` and write a profile for it under $TELEPORT_HOME.

    With ``agent_only_sock`` the profile is a ``-k only`` one: the private key
    and its certificate go into that ssh-agent (comment
    ``teleport:<proxy>:<cluster>:<user>``), not onto disk.
    """
    user = f"user{next(_counter)}"
    cluster.add_user(user, logins)
    key = asyncssh.generate_private_key("ssh-ed25519")
    pub_line = key.export_public_key("openssh").decode()
    body = request_cert(cluster, user, key)
    cert_line = base64.b64decode(body["cert"]).decode()
    cert = asyncssh.import_certificate(cert_line)
    proxy_host = cluster.web_addr.rsplit(":", 1)[0]
    home = Path(os.environ["TELEPORT_HOME"])
    paths = ProfilePaths(home, proxy_host, user)
    _fs.ensure_private_dir(paths.ssh_cert_dir)
    _fs.atomic_write(paths.public_key, pub_line, 0o644)
    _fs.atomic_write(paths.ssh_cert(cluster.name), cert_line, 0o644)
    if agent_only_sock:
        # ssh-add loads the key with its -cert.pub; tsh finds it by public key.
        keyfile = home / "agent-key.tmp"
        _fs.atomic_write(keyfile, key.export_private_key("openssh"))
        _fs.atomic_write(Path(f"{keyfile}-cert.pub"), cert_line)
        subprocess.run(
            ["ssh-add", str(keyfile)], check=True, capture_output=True,
            env={**os.environ, "SSH_AUTH_SOCK": agent_only_sock},
        )
        os.unlink(keyfile)
        os.unlink(f"{keyfile}-cert.pub")
    else:
        _fs.atomic_write(paths.private_key, key.export_private_key("openssh"))
    lines = []
    for signer in body["host_signers"]:
        name = signer["domain_name"]
        for k in signer["checking_keys"]:
            key_text = base64.b64decode(k).decode().strip()
            lines.append(f"@cert-authority {proxy_host},{name},*.{name} {key_text} type=host\n")
    _fs.atomic_write(paths.known_hosts, "".join(lines), 0o644)
    profile = Profile(
        web_proxy_addr=cluster.web_addr,
        ssh_proxy_addr=cluster.ssh_proxy_addr,
        user=user,
        cluster=cluster.name,
        root_cluster=cluster.name,
        clusters=(cluster.name,),
        valid_after=int(time.time()),
        valid_before=int(time.time()) + 3600,  # the ttl asked for
        principals=tuple(cert.principals),
        key_storage="agent" if agent_only_sock else "disk",
        server_version="17.0.0",
    )
    _fs.atomic_write(paths.profile_file, profile.to_json())
    _fs.atomic_write(paths.current_profile, proxy_host + "\n")
    return LoggedIn(home, paths)


def tsh(*args: str, env: dict[str, str], input: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the installed `tsh` entry point (the executable `tsh config` will name); bytes."""
    return subprocess.run([*tsh_argv(), *args], env=env, input=input, capture_output=True,
                          timeout=timeout, check=False)
