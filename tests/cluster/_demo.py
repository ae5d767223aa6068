"""``python -m tests.cluster demo``: the OpenSSH flow against a local cluster, step by step.

Starts a cluster in a temporary directory, a Teleport user whose login is the
current OS user, and a real sshd node, then walks through :data:`STEPS`,
printing each command and its output. Everything is stopped on exit or Ctrl-C.

To extend the demo (``tsh login``, ``ssh-add -L``, ``tsh config``, ``tsh ssh``),
add a :class:`Step` to :data:`STEPS`; ``Demo.run`` / ``Demo.note`` do the printing.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import sshd as sshd_launcher
from .launch import REPO_ROOT, Cluster, launch_cluster, run_cluster_cli

__all__ = ["Demo", "Step", "STEPS", "run_demo"]

_BOLD, _DIM, _RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


class DemoError(Exception):
    """A step failed; the message says which command and why."""


@dataclass
class Demo:
    """State shared by the steps, plus printing helpers."""

    workdir: Path
    login: str = field(default_factory=getpass.getuser)
    user: str = "demo"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    cluster: Cluster | None = None
    node: sshd_launcher.SSHDNode | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def note(self, text: str) -> None:
        print(f"{_DIM}{text}{_RESET}")

    def show(self, argv: list[str] | str) -> None:
        line = argv if isinstance(argv, str) else shlex.join(argv)
        print(f"{_BOLD}$ {line}{_RESET}")

    def run(self, argv: list[str], input: str | None = None, display: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Print the command, run it, print its output; DemoError if it fails and ``check``."""
        self.show(display or argv)
        r = subprocess.run(argv, input=input, capture_output=True, text=True, cwd=REPO_ROOT,
                           timeout=60)
        for text in (r.stdout, r.stderr):
            if text.strip():
                print(text.rstrip())
        if check and r.returncode != 0:
            raise DemoError(f"command failed with exit status {r.returncode}")
        return r

    def admin(self, *args: str, input: str | None = None) -> str:
        """An admin command on the demo cluster, shown as its command line."""
        assert self.cluster is not None
        argv = ["python", "-m", "tests.cluster", *args, "--data-dir", str(self.cluster.data_dir)]
        self.show(argv)
        out = run_cluster_cli(*argv[3:], input=input)
        if out.strip():
            print(out.rstrip())
        return out

    def close(self) -> None:
        if self.node is not None:
            self.node.stop()
        if self.cluster is not None:
            self.cluster.stop()


@dataclass(frozen=True)
class Step:
    title: str
    action: Callable[[Demo], None]


def _start_cluster(demo: Demo) -> None:
    data = demo.workdir / "cluster"
    demo.show(["python", "-m", "tests.cluster", "start", "--data-dir", str(data),
               "--name", "example.test"])
    demo.cluster = launch_cluster(data, "example.test")
    print(json.dumps(demo.cluster.info))


def _add_user(demo: Demo) -> None:
    demo.note(f"(the password is the first line of stdin; this demo's is: {demo.password})")
    demo.admin("users", "add", demo.user, f"--logins={demo.login}", input=demo.password + "\n")


def _start_node(demo: Demo) -> None:
    assert demo.cluster is not None
    sshd = sshd_launcher.find_sshd()
    if sshd is None:
        raise DemoError("sshd not found: install openssh-server")
    demo.note("sshd trusts the user CA and presents a host certificate, as on the seed page:")
    node_dir = demo.workdir / "node1"
    demo.node = sshd_launcher.start_node(demo.admin, demo.cluster.name, "node1", node_dir, sshd)
    demo.show([sshd, "-D", "-e", "-f", str(node_dir / "sshd_config")])
    print((node_dir / "sshd_config").read_text().rstrip())
    demo.note(f"sshd is listening on {demo.node.addr}")


def _ping(demo: Demo) -> None:
    assert demo.cluster is not None
    url = f"{demo.cluster.web_url}/webapi/ping"
    if shutil.which("curl"):
        r = demo.run(["curl", "-sS", "--cacert", str(demo.cluster.tls_ca), url])
        json.loads(r.stdout)  # a JSON answer, or the demo stops here
    else:
        import httpx

        demo.show(f"GET {url}")
        print(httpx.get(url, verify=demo.cluster.ssl_context()).text)


def _login_with_web_api(demo: Demo) -> None:
    import asyncssh
    import httpx

    assert demo.cluster is not None
    key = asyncssh.generate_private_key("ssh-ed25519")
    demo.files["key"] = key_path = demo.workdir / "id_ed25519"
    key_path.write_bytes(key.export_private_key())
    key_path.chmod(0o600)
    url = f"{demo.cluster.web_url}/v1/webapi/ssh/certs"
    demo.show(f"POST {url}  (user {demo.user}, ssh_pub_key, ttl 1h)")
    r = httpx.post(url, verify=demo.cluster.ssl_context(), json={
        "user": demo.user, "password": demo.password, "otp_token": "",
        "ssh_pub_key": base64.b64encode(key.export_public_key()).decode(),
        "ttl": 3600 * 10**9, "RouteToCluster": "",
    })
    if r.status_code != 200:
        raise DemoError(f"login failed: HTTP {r.status_code}: {r.text}")
    demo.files["cert"] = cert_path = demo.workdir / "id_ed25519-cert.pub"
    cert_path.write_bytes(base64.b64decode(r.json()["cert"]))
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen:
        demo.run([ssh_keygen, "-L", "-f", str(cert_path)])


def _known_hosts(demo: Demo) -> None:
    assert demo.cluster is not None
    lines = demo.admin("auth", "export", "--type=host").splitlines()
    demo.files["known_hosts"] = kh = demo.workdir / "known_hosts"
    pattern = f"*.{demo.cluster.name}"
    kh.write_text("".join(line.replace(pattern, f"{pattern},127.0.0.1", 1) + "\n"
                          for line in lines))
    demo.note(f"{kh} (127.0.0.1 added for the proxy and node addresses):")
    print(kh.read_text().rstrip())


def _ssh_options(demo: Demo) -> list[str]:
    return ["-F", "/dev/null", "-o", f"UserKnownHostsFile={demo.files['known_hosts']}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
            "-i", str(demo.files["key"]), "-o", f"CertificateFile={demo.files['cert']}"]


def _ssh_through_proxy(demo: Demo) -> None:
    assert demo.cluster is not None and demo.node is not None
    ssh = shutil.which("ssh")
    if ssh is None:
        raise DemoError("ssh not found: install openssh-client")
    opts = _ssh_options(demo)
    proxy = shlex.join([ssh, *opts, "-p", str(demo.cluster.ssh_proxy_port), "%r@127.0.0.1",
                        "-s", "proxy:%h:%p"])
    demo.run([ssh, *opts, "-o", f"ProxyCommand={proxy}", "-p", str(demo.node.port),
              f"{demo.login}@{demo.node.host}", "echo hello from $(hostname) as $(id -un)"])


def _proxysites(demo: Demo) -> None:
    assert demo.cluster is not None
    ssh = shutil.which("ssh") or "ssh"
    demo.run([ssh, *_ssh_options(demo), "-p", str(demo.cluster.ssh_proxy_port),
              f"{demo.login}@127.0.0.1", "-s", "proxysites"])


STEPS: list[Step] = [
    Step("Start the cluster (auth + proxy, 127.0.0.1 only)", _start_cluster),
    Step("Add a Teleport user whose login is your OS user", _add_user),
    Step("Start a real OpenSSH sshd node and register it", _start_node),
    Step("The proxy's web API: ping", _ping),
    Step("Get a user certificate from the web API", _login_with_web_api),
    Step("known_hosts from the host CA", _known_hosts),
    Step("Plain OpenSSH through the proxy to the node", _ssh_through_proxy),
    Step("Clusters via the proxysites subsystem", _proxysites),
]


def run_demo(wait: bool = False) -> int:
    """Run every step; with ``wait``, keep everything up until Ctrl-C. Returns an exit status."""
    demo = Demo(Path(tempfile.mkdtemp(prefix="tsh-demo-")))
    try:
        for number, step in enumerate(STEPS, 1):
            print(f"\n{_BOLD}==> {number}. {step.title}{_RESET}")
            step.action(demo)
        print(f"\n{_BOLD}The OpenSSH flow works.{_RESET}")
        if wait and demo.cluster is not None:
            print(f"Cluster web {demo.cluster.web_addr}, SSH proxy {demo.cluster.ssh_proxy_addr}, "
                  f"user {demo.user!r} password {demo.password!r}, files in {demo.workdir}.")
            print("Press Ctrl-C to stop.")
            demo.cluster.proc.wait()
        return 0
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        demo.close()
        if os.environ.get("TSH_DEMO_KEEP") != "1":
            shutil.rmtree(demo.workdir, ignore_errors=True)
