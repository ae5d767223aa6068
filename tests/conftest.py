"""Shared fixtures: OpenSSH binaries, the local test cluster, real sshd nodes, ssh-agent.

Contract (other test modules rely on these names and attributes):

* ``openssh`` -> namespace of absolute paths: .ssh .sshd .ssh_agent .ssh_add
  .ssh_keygen .scp .sftp. Skips when one is missing; FAILS under ``CI=true``.
* ``login_name`` / ``LOGIN``: the local user name (``root`` in CI).
* ``start_cluster(name=..., server_version=..., second_factor=..., recording=...,
  data_dir=None) -> Cluster`` (stopped at teardown). Cluster: .name .web_addr
  .ssh_proxy_addr .tls_ca (Path) .data_dir .admin(*args, input=None) -> stdout
  .add_user(name, logins, password=..., otp=False, ttl=None) -> TOTP secret or None
  .stop(); extras: .web_url .ssl_context() .web_port .ssh_proxy_port .log().
* ``cluster``: a default cluster (v17, second factor off, node recording),
  shared by the tests of one module. Do not stop it: use ``start_cluster``.
* ``start_node(cluster, name="node1") -> Node`` (a real sshd, registered);
  Node: .name .host .port .addr (+ .workdir .log() .stop()).
  ``node``: start_node(cluster), shared like ``cluster``.
* ``ssh_agent``: a real ssh-agent: .sock .env (os.environ copy with SSH_AUTH_SOCK).
* autouse: HOME and TELEPORT_HOME in tmp dirs; SSH_AUTH_SOCK, SSL_CERT_FILE,
  SSL_CERT_DIR and every *_PROXY variable removed.

Note: OpenSSH takes ``~`` from the passwd entry, not $HOME: give ssh ``-F`` and
``-o UserKnownHostsFile=...`` explicitly in tests.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import selectors
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.cluster import sshd as sshd_launcher

REPO_ROOT = Path(__file__).resolve().parent.parent
LOGIN = getpass.getuser()
_START_TIMEOUT_S = 30.0
_IN_CI = os.environ.get("CI", "").lower() == "true"

_OPENSSH_TOOLS = {
    "ssh": "ssh",
    "ssh_agent": "ssh-agent",
    "ssh_add": "ssh-add",
    "ssh_keygen": "ssh-keygen",
    "scp": "scp",
    "sftp": "sftp",
}


# --------------------------------------------------------------------------- isolation
@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Every test gets its own HOME and TELEPORT_HOME and no agent, CA or proxy settings."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("TELEPORT_HOME", str(tmp_path_factory.mktemp("tsh")))
    for var in list(os.environ):
        if var in ("SSH_AUTH_SOCK", "SSL_CERT_FILE", "SSL_CERT_DIR") or var.upper().endswith(
            "_PROXY"
        ):
            monkeypatch.delenv(var, raising=False)


@pytest.fixture
def login_name() -> str:
    """The local OS user tests log in as (``root`` in CI)."""
    return LOGIN


# --------------------------------------------------------------------------- OpenSSH
def _find_openssh() -> tuple[SimpleNamespace, list[str]]:
    paths: dict[str, str | None] = {
        attr: shutil.which(tool) for attr, tool in _OPENSSH_TOOLS.items()
    }
    paths["sshd"] = sshd_launcher.find_sshd()
    missing = [name for name, path in paths.items() if path is None]
    return SimpleNamespace(**{k: v and os.path.abspath(v) for k, v in paths.items()}), missing


def _require_openssh() -> SimpleNamespace:
    found, missing = _find_openssh()
    if missing:
        msg = f"OpenSSH binaries missing: {', '.join(sorted(missing))}"
        if _IN_CI:
            pytest.fail(msg + " (CI=true: integration tests may not skip)", pytrace=False)
        pytest.skip(msg)
    return found


@pytest.fixture
def openssh() -> SimpleNamespace:
    """Absolute paths of the OpenSSH tools; skip when missing, fail under CI=true."""
    return _require_openssh()


# --------------------------------------------------------------------------- cluster
def run_cluster_cli(*args: str, input: str | None = None) -> str:
    """Run the admin CLI (``python -m tests.cluster ARGS``) and return its stdout.

    It runs in this process (same argparse and code path as the command line,
    without a new interpreter per call: ~1 s each on a loaded 2-core box).
    Raises RuntimeError with the command's stderr when it fails.
    """
    from tests.cluster.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO(input or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(args))
            except SystemExit as e:  # argparse usage errors
                status = e.code if isinstance(e.code, int) else 2
    finally:
        sys.stdin = saved_stdin
    if status != 0:
        raise RuntimeError(
            f"`tests.cluster {' '.join(args)}` failed ({status}): {err.getvalue().strip()}"
        )
    return out.getvalue()


@dataclass
class Cluster:
    """A running ``python -m tests.cluster start`` subprocess."""

    name: str
    web_addr: str
    ssh_proxy_addr: str
    tls_ca: Path
    data_dir: Path
    server_version: str
    second_factor: str
    recording: str
    log_path: Path
    proc: subprocess.Popen[str] = field(repr=False)
    info: dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def web_url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return f"https://{self.web_addr}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this cluster's TLS CA (for httpx ``verify=``)."""
        return ssl.create_default_context(cafile=str(self.tls_ca))

    @property
    def web_port(self) -> int:
        return int(self.web_addr.rsplit(":", 1)[1])

    @property
    def ssh_proxy_port(self) -> int:
        return int(self.ssh_proxy_addr.rsplit(":", 1)[1])

    def admin(self, *args: str, input: str | None = None) -> str:
        """Run an admin command (``users add ...``) against this cluster; return stdout."""
        return run_cluster_cli(*args, "--data-dir", str(self.data_dir), input=input)

    def add_user(
        self,
        name: str,
        logins: list[str] | tuple[str, ...],
        password: str = "secret-pw",
        otp: bool = False,
        ttl: str | None = None,
    ) -> str | None:
        """``users add``; returns the base32 TOTP secret when ``otp`` is true."""
        args = ["users", "add", name, f"--logins={','.join(logins)}"]
        if ttl:
            args.append(f"--ttl={ttl}")
        if otp:
            args.append("--otp")
        out = self.admin(*args, input=password + "\n").strip()
        return out if otp else None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def launch_cluster(
    data_dir: Path,
    name: str = "example.test",
    server_version: str = "17.0.0",
    second_factor: str = "off",
    recording: str = "node",
    extra_args: tuple[str, ...] = (),
) -> Cluster:
    """Start a cluster subprocess and wait for its JSON readiness line."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-cluster.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "tests.cluster", "start",
                "--data-dir", str(data_dir), "--name", name,
                "--server-version", server_version,
                "--second-factor", second_factor, "--recording", recording,
                *extra_args,
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            text=True, cwd=REPO_ROOT, start_new_session=True,
        )
    assert proc.stdout is not None
    line = ""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if sel.select(_START_TIMEOUT_S):
            line = proc.stdout.readline()
    if not line:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(
            f"test cluster did not start (exit {proc.returncode}):\n"
            f"{log_path.read_text(errors='replace')[-3000:]}"
        )
    info = json.loads(line)
    return Cluster(
        name=info["cluster"],
        web_addr=info["web_addr"],
        ssh_proxy_addr=info["ssh_proxy_addr"],
        tls_ca=Path(info["tls_ca"]),
        data_dir=data_dir,
        server_version=server_version,
        second_factor=second_factor,
        recording=recording,
        log_path=log_path,
        proc=proc,
        info=info,
    )


@pytest.fixture
def start_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Cluster]]:
    """Factory: ``start_cluster(name=, server_version=, second_factor=, recording=, data_dir=)``."""
    started: list[Cluster] = []

    def start(
        name: str = "example.test",
        server_version: str = "17.0.0",
        second_factor: str = "off",
        recording: str = "node",
        data_dir: Path | None = None,
    ) -> Cluster:
        c = launch_cluster(
            data_dir or tmp_path_factory.mktemp("cluster") / "data",
            name, server_version, second_factor, recording,
        )
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A default cluster shared by one test module (v17, second factor off, node recording)."""
    c = launch_cluster(tmp_path_factory.mktemp("cluster") / "data")
    yield c
    c.stop()


# --------------------------------------------------------------------------- nodes
def launch_node(cluster: Cluster, name: str, workdir: Path) -> sshd_launcher.SSHDNode:
    """Start a real sshd configured from ``cluster`` and register it as ``name``."""
    return sshd_launcher.start_node(
        cluster.admin, cluster.name, name, workdir, sshd=sshd_launcher.find_sshd() or ""
    )


@pytest.fixture
def start_node(
    openssh: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., sshd_launcher.SSHDNode]]:
    """Factory: ``start_node(cluster, name="node1") -> Node`` (a real, registered sshd)."""
    started: list[sshd_launcher.SSHDNode] = []

    def start(cluster: Cluster, name: str = "node1") -> sshd_launcher.SSHDNode:
        node = launch_node(cluster, name, tmp_path_factory.mktemp(f"node-{name}"))
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="module")
def _module_node(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sshd_launcher.SSHDNode | None]:
    _, missing = _find_openssh()
    if missing:  # the function-scoped `openssh` below reports it (skip, or fail in CI)
        yield None
        return
    node = launch_node(cluster, "node1", tmp_path_factory.mktemp("node-node1"))
    yield node
    node.stop()


@pytest.fixture
def node(openssh: SimpleNamespace, _module_node: sshd_launcher.SSHDNode | None):
    """``start_node(cluster)`` on the module's default cluster, shared by the module."""
    assert _module_node is not None
    return _module_node


# --------------------------------------------------------------------------- agent
@dataclass
class Agent:
    sock: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]


@pytest.fixture
def ssh_agent(openssh: SimpleNamespace) -> Iterator[Agent]:
    """A real OpenSSH ssh-agent on a private socket, killed at teardown."""
    # Unix socket paths are limited to ~108 bytes: keep it short, not under tmp_path.
    sock_dir = tempfile.mkdtemp(prefix="agent-")
    sock = os.path.join(sock_dir, "agent.sock")
    proc = subprocess.Popen(
        [openssh.ssh_agent, "-D", "-a", sock],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"ssh-agent did not start: {err}", pytrace=False)
            time.sleep(0.01)  # ssh-agent creates the socket right after start-up
        env = dict(os.environ, SSH_AUTH_SOCK=sock)
        yield Agent(sock=sock, env=env, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
