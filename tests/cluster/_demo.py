"""``python -m tests.cluster demo``: the OpenSSH flow against a local cluster, step by step.

Starts a cluster in a temporary directory, a Teleport user whose login is the
current OS user, and a real sshd node, then walks through :data:`STEPS`,
printing each command and its output. Everything is stopped on exit or Ctrl-C.

To extend the demo (``tsh login``, ``ssh-add -L``, ``tsh config``, ``tsh ssh``),
add a :class:`Step` to :data:`STEPS`; ``Demo.run`` / ``Demo.note`` do the printing.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import sshd as sshd_launcher
from .launch import REPO_ROOT, Cluster, launch_cluster, run_cluster_cli, wait_tunnel

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
    recording: str = "proxy"
    cluster: Cluster | None = None
    node: sshd_launcher.SSHDNode | None = None
    files: dict[str, Path] = field(default_factory=dict)
    #: Environment of the user's shell in the demo: tsh home, trusted TLS CA, agent.
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    agent: subprocess.Popen[bytes] | None = None
    leaf: Cluster | None = None
    leaf_node: sshd_launcher.SSHDNode | None = None

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
                           timeout=60, env=self.env)
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

    def tsh(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run tsh (this checkout's) as the demo user would, shown as ``tsh ARGS``."""
        return self.run([sys.executable, "-m", "tsh", *args], input=input,
                        display=shlex.join(["tsh", *args]))

    def close(self) -> None:
        if self.agent is not None:
            self.agent.terminate()
            self.agent.wait()
        for node in (self.leaf_node, self.node):
            if node is not None:
                node.stop()
        for cluster in (self.leaf, self.cluster):
            if cluster is not None:
                cluster.stop()


@dataclass(frozen=True)
class Step:
    title: str
    action: Callable[[Demo], None]


def _start_cluster(demo: Demo) -> None:
    data = demo.workdir / "cluster"
    demo.show(["python", "-m", "tests.cluster", "start", "--data-dir", str(data),
               "--name", "example.test", "--recording", demo.recording])
    if demo.recording == "proxy":
        demo.note("session_recording: proxy -- the proxy terminates and records each session,")
        demo.note("logging in to the node with the agent the client forwards to it")
    demo.cluster = launch_cluster(data, "example.test", recording=demo.recording)
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


def _start_agent(demo: Demo) -> None:
    ssh_agent = shutil.which("ssh-agent")
    if ssh_agent is None:
        raise DemoError("ssh-agent not found: install openssh-client")
    sock = demo.workdir / "agent.sock"
    demo.show("eval `ssh-agent`")
    demo.agent = subprocess.Popen([ssh_agent, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    for _ in range(200):  # readiness: the socket appears once the agent listens
        if sock.exists():
            break
        if demo.agent.poll() is not None:
            raise DemoError("ssh-agent exited")
        time.sleep(0.01)
    assert demo.cluster is not None
    demo.env.update(
        SSH_AUTH_SOCK=str(sock),
        TELEPORT_HOME=str(demo.workdir / "tsh"),
        SSL_CERT_FILE=str(demo.cluster.tls_ca),
    )
    demo.note(f"SSH_AUTH_SOCK={sock}; tsh keeps its profile in TELEPORT_HOME={demo.env['TELEPORT_HOME']};")
    demo.note(f"the cluster's TLS CA is trusted with SSL_CERT_FILE={demo.cluster.tls_ca}")


def _tsh_login(demo: Demo) -> None:
    assert demo.cluster is not None
    demo.note("(no terminal here, so the password is read from stdin)")
    demo.tsh("login", f"--proxy={demo.cluster.web_addr}", f"--user={demo.user}",
             input=demo.password + "\n")


def _agent_has_cert(demo: Demo) -> None:
    ssh_add = shutil.which("ssh-add") or "ssh-add"
    r = demo.run([ssh_add, "-L"])
    if f":{demo.user}" not in r.stdout or "-cert-v01@openssh.com" not in r.stdout:
        raise DemoError("the certificate is not in the agent")


def _tsh_config(demo: Demo) -> None:
    assert demo.node is not None
    r = demo.tsh("config", f"--port={demo.node.port}")
    demo.files["ssh_config"] = config = demo.workdir / "ssh_config"
    config.write_text(r.stdout)
    demo.note(f"(a user appends this to ~/.ssh/config; the demo keeps it in {config})")


def _plain_ssh(demo: Demo) -> None:
    assert demo.cluster is not None
    ssh = shutil.which("ssh")
    if ssh is None:
        raise DemoError("ssh not found: install openssh-client")
    demo.run([ssh, "-F", str(demo.files["ssh_config"]),
              f"{demo.login}@node1.{demo.cluster.name}", "echo hello from $(hostname) as $(id -un)"])


def _tsh_ssh(demo: Demo) -> None:
    assert demo.node is not None
    demo.tsh("ssh", f"--port={demo.node.port}", f"{demo.login}@node1", "uname -sr")


def _recordings(demo: Demo) -> None:
    if demo.recording != "proxy":
        demo.note("(node recording mode: the proxy only pipes bytes and records nothing)")
        return
    listing = demo.admin("recordings", "ls").splitlines()
    if len(listing) < 2:  # the plain ssh and the tsh ssh sessions
        raise DemoError("the proxy did not record both sessions")
    for line in listing:
        demo.admin("recordings", "show", line.split()[0])


def _proxysites(demo: Demo) -> None:
    assert demo.cluster is not None
    ssh = shutil.which("ssh") or "ssh"
    paths = Path(demo.env["TELEPORT_HOME"]) / "keys" / "127.0.0.1"
    demo.note("the seed page's manual setup: plain ssh to the proxy's SSH port with tsh's files")
    demo.run([ssh, "-F", "/dev/null", "-o", f"UserKnownHostsFile={demo.env['TELEPORT_HOME']}/known_hosts",
              "-o", "HostKeyAlias=127.0.0.1", "-o", "StrictHostKeyChecking=yes",
              "-i", str(paths / demo.user),
              "-o", f"CertificateFile={paths / f'{demo.user}-ssh' / f'{demo.cluster.name}-cert.pub'}",
              "-p", str(demo.cluster.ssh_proxy_port), f"{demo.login}@127.0.0.1", "-s", "proxysites"])


def _start_leaf(demo: Demo) -> None:
    assert demo.cluster is not None
    data = demo.workdir / "leaf"
    demo.show(["python", "-m", "tests.cluster", "start", "--data-dir", str(data),
               "--name", "leaf.test"])
    demo.leaf = launch_cluster(data, "leaf.test")
    demo.note("on the root: a join token; on the leaf: join with it (the CAs are exchanged)")
    token = demo.admin("tokens", "add", "--type=trusted_cluster", "--labels=env=demo").strip()
    root = demo.cluster
    demo.cluster = demo.leaf  # demo.admin acts on demo.cluster
    try:
        started = time.time()
        demo.admin("trusted-clusters", "add", f"--root-proxy={root.web_addr}",
                   f"--root-ca={root.tls_ca}", f"--token={token}", "--role-map=access:access")
    finally:
        demo.cluster = root
    wait_tunnel(root, "leaf.test", since=started)
    demo.note("the leaf's proxy now keeps a reverse tunnel to the root's tunnel port")


def _start_leaf_node(demo: Demo) -> None:
    assert demo.cluster is not None and demo.leaf is not None
    demo.note("a leaf node trusts the ROOT's user CA (the leaf's own export leaves it out):")
    root_user_ca = demo.admin("auth", "export", "--type=user")
    leaf = demo.leaf
    demo.leaf_node = sshd_launcher.start_node(
        leaf.admin, leaf.name, "node2", demo.workdir / "node2", sshd_launcher.find_sshd() or "",
        trusted_user_cas=root_user_ca, data_dir=leaf.data_dir,
    )
    demo.note(f"node2 of leaf.test is listening on {demo.leaf_node.addr}")


def _trust_leaf_ca(demo: Demo) -> None:
    assert demo.cluster is not None and demo.leaf is not None
    demo.note("tsh learns leaf host CAs from the root's auth API; until then, by hand:")
    known_hosts = Path(demo.env["TELEPORT_HOME"]) / "known_hosts"
    lines = []
    for cluster in (demo.leaf, demo.cluster):  # the root's too: a recording root answers
        key = " ".join(cluster.admin("auth", "export", "--type=host").split()[2:4])
        lines.append(f"@cert-authority 127.0.0.1,leaf.test,*.leaf.test {key} type=host")
    with open(known_hosts, "a") as f:
        f.write("".join(line + "\n" for line in lines))
    demo.show(f"cat >> {known_hosts}")
    print("\n".join(lines))


def _tsh_ssh_leaf(demo: Demo) -> None:
    assert demo.leaf_node is not None
    demo.tsh("ssh", "--cluster=leaf.test", f"--port={demo.leaf_node.port}",
             f"{demo.login}@node2", "echo hello from the leaf as $(id -un)")


STEPS: list[Step] = [
    Step("Start the cluster (auth + proxy, 127.0.0.1 only)", _start_cluster),
    Step("Add a Teleport user whose login is your OS user", _add_user),
    Step("Start a real OpenSSH sshd node and register it", _start_node),
    Step("The proxy's web API: ping", _ping),
    Step("Start your own OpenSSH ssh-agent", _start_agent),
    Step("tsh login: password, certificate, profile, agent", _tsh_login),
    Step("The certificate is in the agent (look for teleport:...)", _agent_has_cert),
    Step("tsh config: an OpenSSH block for the cluster", _tsh_config),
    Step("Plain ssh through the proxy, using that block", _plain_ssh),
    Step("tsh ssh: OpenSSH with everything set", _tsh_ssh),
    Step("The recording proxy's recordings of those sessions", _recordings),
    Step("Clusters via the proxysites subsystem", _proxysites),
    Step("Start a leaf cluster and make it trust the root", _start_leaf),
    Step("Start a real sshd node in the leaf", _start_leaf_node),
    Step("proxysites again: the leaf is connected", _proxysites),
    Step("Trust the leaf's host CA in tsh's known_hosts", _trust_leaf_ca),
    Step("tsh ssh --cluster=leaf.test: through the root to the leaf's node", _tsh_ssh_leaf),
]


def run_demo(wait: bool = False, recording: str = "proxy") -> int:
    """Run every step; with ``wait``, keep everything up until Ctrl-C. Returns an exit status."""

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (kill, timeout) cleans up as Ctrl-C does

    signal.signal(signal.SIGTERM, interrupted)
    demo = Demo(Path(tempfile.mkdtemp(prefix="tsh-demo-")), recording=recording)
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
