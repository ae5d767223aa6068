"""Build a logged-in tsh profile for a test cluster without `tsh login`.

Creates a cluster user, asks the cluster's web API for a certificate (httpx,
verified against the cluster's TLS CA) and saves what login leaves behind
through ProfileStore.save_login (the one owner of the layout): key, public
key, certificate, known_hosts CA lines, profile and current-profile. Used by
the tsh config / tsh proxy ssh tests, which should not depend on the login
code under test elsewhere.
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
from tsh._core.knownhosts import parse_ca_key
from tsh._core.names import validate_cluster_name
from tsh._core.profile import Profile
from tsh._store import fs as _fs
from tsh._store.layout import ProfilePaths
from tsh._store.store import LoginFiles, ProfileStore
from tsh._web.wire import HostSigner

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
    store = ProfileStore(home)
    paths = store.paths(proxy_host, user)
    if agent_only_sock:
        # ssh-add loads the key with its -cert.pub; tsh finds it by public key.
        _fs.ensure_private_home(home)
        keyfile = home / "agent-key.tmp"
        _fs.atomic_write(keyfile, key.export_private_key("openssh"))
        _fs.atomic_write(Path(f"{keyfile}-cert.pub"), cert_line)
        subprocess.run(
            ["ssh-add", str(keyfile)], check=True, capture_output=True,
            env={**os.environ, "SSH_AUTH_SOCK": agent_only_sock},
        )
        os.unlink(keyfile)
        os.unlink(f"{keyfile}-cert.pub")
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
        # As tsh login records them from ping and its L7 load balancer probe.
        tls_routing_enabled=cluster.info.get("listener_mode") == "multiplex",
        tls_routing_conn_upgrade_required=bool(cluster.info.get("behind_l7_lb")),
    )
    files = LoginFiles(
        private_key=None if agent_only_sock else key.export_private_key("openssh").decode(),
        public_key=pub_line,
        ssh_cert=cert_line,
        host_signers=[
            HostSigner(
                domain_name=validate_cluster_name(s["domain_name"]),
                checking_keys=tuple(
                    parse_ca_key(base64.b64decode(k).decode()) for k in s["checking_keys"]
                ),
                tls_certs=tuple(base64.b64decode(c).decode() for c in s.get("tls_certs") or ()),
            )
            for s in body["host_signers"]
        ],
    )
    store.save_login(profile, files)
    return LoggedIn(home, paths)


def tsh(*args: str, env: dict[str, str], input: bytes | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run the installed `tsh` entry point (the executable `tsh config` will name); bytes."""
    return subprocess.run([*tsh_argv(), *args], env=env, input=input, capture_output=True,
                          timeout=timeout, check=False)
