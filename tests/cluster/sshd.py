"""Launch a real OpenSSH ``sshd`` as a node of the test cluster.

Configured the way the seed page ("Using Teleport with OpenSSH") says:
``TrustedUserCAKeys`` from ``auth export --type=user`` (minus the leading
``cert-authority``), ``HostKey`` + ``HostCertificate`` from ``auth sign``. It
listens on a free 127.0.0.1 port, is ready once it sends its ``SSH-2.0-``
banner, and is registered with ``nodes add``. Used by the pytest fixtures
and by ``python -m tests.cluster demo``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster._files import stop_process

__all__ = [
    "HOST_KEY_KINDS",
    "SSHD",
    "SSHDError",
    "SSHDNode",
    "find_sshd",
    "start_node",
    "start_sshd",
]

SSHD = "/usr/sbin/sshd"
HOST_KEY_KINDS = ("cert", "plain", "other-ca")
_READY_TIMEOUT_S = 10.0
_supports_penalties: dict[str, bool] = {}


class SSHDError(Exception):
    """sshd could not be configured or started (the message includes its log tail)."""


def find_sshd() -> str | None:
    """Absolute path of sshd (Debian's /usr/sbin/sshd first), or None."""
    if os.access(SSHD, os.X_OK):
        return SSHD
    search = "/usr/sbin:/usr/local/sbin:/sbin:" + os.environ.get("PATH", "")
    return shutil.which("sshd", path=search)


@dataclass
class SSHDNode:
    """A running sshd. ``stop()`` (or leaving the ``with`` block) ends it."""

    name: str
    host: str
    port: int
    workdir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, 5)

    def __enter__(self) -> SSHDNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config_text(port: int, workdir: Path, host_key: Path, host_cert: Path | None,
                 user_ca: Path, penalties: bool, principals_command: str | None = None) -> str:
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        *([f"HostCertificate {host_cert}"] if host_cert is not None else []),
        f"TrustedUserCAKeys {user_ca}",
        f"PidFile {workdir / 'sshd.pid'}",
        "AuthorizedKeysFile none",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # test dirs live under /tmp
        "PermitRootLogin prohibit-password",
        "AllowAgentForwarding yes",
        "AllowTcpForwarding yes",
        "X11Forwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        "LogLevel VERBOSE",
        "MaxStartups 100:30:200",
        "Subsystem sftp internal-sftp",
    ]
    if principals_command is not None:
        # The leaf's role check (tests/cluster/_trust.allowed_login): sshd accepts a
        # certificate only if it names a login this command prints.
        lines += [
            f"AuthorizedPrincipalsCommand {principals_command}",
            f"AuthorizedPrincipalsCommandUser {'root' if os.geteuid() == 0 else getpass.getuser()}",
        ]
    if penalties:
        lines.append("PerSourcePenalties no")  # OpenSSH >= 9.8 would throttle test reconnects
    return "\n".join(lines) + "\n"


def _supports_per_source_penalties(sshd: str, workdir: Path) -> bool:
    """Does this sshd know PerSourcePenalties (OpenSSH >= 9.8)? Asked once per binary."""
    if sshd not in _supports_penalties:
        probe = workdir / "probe_config"
        probe.write_text("PerSourcePenalties no\n")
        r = subprocess.run([sshd, "-t", "-f", str(probe)], capture_output=True, text=True)
        _supports_penalties[sshd] = "Bad configuration option: PerSourcePenalties" not in r.stderr
        probe.unlink()
    return _supports_penalties[sshd]


def start_sshd(
    name: str,
    workdir: Path,
    host_key: Path,
    host_cert: Path | None,
    user_ca: Path,
    sshd: str = SSHD,
    principals_command: str | None = None,
) -> SSHDNode:
    """Start sshd with these key files on a free 127.0.0.1 port; return once it is ready.

    ``host_cert`` None: the node presents its plain host key (no HostCertificate).
    ``principals_command``: an ``AuthorizedPrincipalsCommand`` line (see start_node).
    """
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    penalties = _supports_per_source_penalties(sshd, workdir)
    last_error = ""
    for _ in range(5):  # another process may grab the port between probe and bind
        port = _free_port()
        config = workdir / "sshd_config"
        config.write_text(_config_text(port, workdir, host_key, host_cert, user_ca, penalties,
                                       principals_command))
        log_path = workdir / "sshd.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node = SSHDNode(name, "127.0.0.1", port, workdir, log_path, proc)
        if _wait_banner(node):
            return node
        node.stop()
        last_error = node.log()
        if "Address already in use" not in last_error:
            break
    raise SSHDError(f"sshd for node {name} did not start: {last_error.strip()[-2000:]}")


def _wait_banner(node: SSHDNode) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            return False
        try:
            with socket.create_connection((node.host, node.port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            time.sleep(0.02)  # not listening yet: sshd is still starting
    return False


def start_node(
    admin: Callable[..., str],
    cluster: str,
    name: str,
    workdir: Path,
    sshd: str = SSHD,
    host_key_kind: str = "cert",
    aliases: Sequence[str] = (),
    trusted_user_cas: str = "",
    data_dir: Path | None = None,
) -> SSHDNode:
    """Configure sshd from the cluster (via ``admin(*argv) -> stdout``), start and register it.

    ``aliases``: more node names served by the same sshd (its host certificate
    names them too, and each is registered).

    ``host_key_kind``: ``"cert"`` (a host certificate from the cluster's host CA,
    as the seed page says), ``"plain"`` (no HostCertificate) or ``"other-ca"``
    (a certificate for the same names from a CA the cluster does not know).

    Leaf nodes (trusted clusters): ``trusted_user_cas`` is more ``auth export
    --type=user`` text to trust, the root's (the leaf's own export leaves it
    out, as tctl's); with ``data_dir`` (the cluster's) sshd asks the cluster's
    role check which logins a certificate may use (``auth principals``).
    """
    if host_key_kind not in HOST_KEY_KINDS:
        raise ValueError(f"host_key_kind must be one of {HOST_KEY_KINDS}, not {host_key_kind!r}")
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    export = admin("auth", "export", "--type=user") + trusted_user_cas
    user_ca = workdir / "teleport_user_ca.pub"
    # the seed page's `sed s/cert-authority\ //`
    user_ca.write_text("".join(line.replace("cert-authority ", "", 1) + "\n"
                               for line in export.splitlines() if line.strip()))
    host_key = workdir / "ssh_host_key"
    admin(
        "auth", "sign",
        "--host=" + ",".join([*(f"{n},{n}.{cluster}" for n in (name, *aliases)), "localhost", "127.0.0.1"]),
        "--format=openssh", f"--out={host_key}",
    )
    host_cert: Path | None = Path(f"{host_key}-cert.pub")
    if host_key_kind == "plain":
        host_cert = None
    elif host_key_kind == "other-ca":
        _resign_with_other_ca(host_key, Path(f"{host_key}-cert.pub"))
    principals_command = None
    if data_dir is not None:
        import sys

        from tests.cluster.launch import REPO_ROOT

        # /usr/bin/env: sshd wants a command whose path only root can write.
        principals_command = (
            f"/usr/bin/env PYTHONPATH={REPO_ROOT} {sys.executable} -m tests.cluster "
            f"auth principals --data-dir {data_dir} %u %k"
        )
    node = start_sshd(name, workdir, host_key, host_cert, user_ca, sshd, principals_command)
    try:
        for n in (name, *aliases):
            admin("nodes", "add", n, node.addr)
    except BaseException:
        node.stop()
        raise
    return node


def _resign_with_other_ca(host_key: Path, cert_path: Path) -> None:
    """Replace the host certificate by one with the same names from a throwaway CA."""
    import asyncssh

    from tests.cluster._files import atomic_write

    cert = asyncssh.read_certificate(cert_path)
    other_ca = asyncssh.generate_private_key("ssh-ed25519")
    forged = other_ca.generate_host_certificate(
        asyncssh.read_private_key(host_key), "other-ca", principals=list(cert.principals),
        valid_after="-1m", valid_before="+1w",
    )
    atomic_write(cert_path, forged.export_certificate("openssh"), 0o644)
