"""Shared fixtures: OpenSSH binaries, the local test cluster, real sshd nodes, ssh-agent.

Contract (other test modules rely on these names and attributes):

* ``openssh`` -> namespace of absolute paths: .ssh .sshd .ssh_agent .ssh_add
  .ssh_keygen .scp .sftp. Skips when one is missing; FAILS under ``CI=true``.
  ``require_tool(name) -> path`` does the same for any other program on PATH.
* ``ssh_G(*args, config="/dev/null") -> {keyword: value}``: OpenSSH's ``ssh -G`` reading.
* ``login_name`` / ``LOGIN``: the local user name (``root`` in CI).
* ``start_cluster(name=..., server_version=..., second_factor=..., recording=...,
  data_dir=None) -> Cluster`` (stopped at teardown). Cluster: .name .web_addr
  .ssh_proxy_addr .tls_ca (Path) .data_dir .admin(*args, input=None) -> stdout
  .add_user(name, logins, password=..., otp=False, ttl=None) -> TOTP secret or None
  .stop(); extras: .web_url .ssl_context() .ssh_proxy_port .log().
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

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn

import pytest

from tests.cluster import sshd as sshd_launcher
from tests.cluster.launch import Cluster, launch_cluster
from tsh._agent.procs import stop_process

LOGIN = getpass.getuser()
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
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Every test gets its own HOME and TELEPORT_HOME and no agent, CA or proxy settings."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    home = tmp_path_factory.mktemp("tsh")
    monkeypatch.setenv("TELEPORT_HOME", str(home))
    for var in list(os.environ):
        if var in ("SSH_AUTH_SOCK", "SSL_CERT_FILE", "SSL_CERT_DIR") or var.upper().endswith(
            "_PROXY"
        ):
            monkeypatch.delenv(var, raising=False)
    yield
    exit_masters(home / "mux")


def exit_masters(mux_dir: Path) -> None:
    """Make every hop master (tsh._openssh.reuse) with a socket in ``mux_dir`` exit."""
    try:
        sockets = [p for p in mux_dir.iterdir() if p.is_socket() and not p.name.endswith(".agent")]
    except OSError:
        return
    for sock in sockets:
        subprocess.run(["ssh", "-S", str(sock), "-O", "exit", "_"], capture_output=True,
                       timeout=10, check=False)


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


def _skip_or_fail(msg: str) -> NoReturn:
    """Skip the test, or fail it under ``CI=true``, where integration tests may not skip."""
    if _IN_CI:
        pytest.fail(msg + " (CI=true: integration tests may not skip)", pytrace=False)
    pytest.skip(msg)


def require_tool(name: str) -> str:
    """Absolute path of the program ``name`` on PATH; skips the test (fails under CI=true)
    when it is missing."""
    path = shutil.which(name)
    if path is None:
        _skip_or_fail(f"{name} is missing")
    return os.path.abspath(path)


def _require_openssh() -> SimpleNamespace:
    found, missing = _find_openssh()
    if missing:
        _skip_or_fail(f"OpenSSH binaries missing: {', '.join(sorted(missing))}")
    return found


@pytest.fixture
def openssh() -> SimpleNamespace:
    """Absolute paths of the OpenSSH tools; skip when missing, fail under CI=true."""
    return _require_openssh()


@pytest.fixture
def ssh_G(openssh: SimpleNamespace) -> Callable[..., dict[str, str]]:
    """``ssh_G(*args, config="/dev/null")``: what OpenSSH's ``ssh -G -F CONFIG ARGS`` resolves
    (it makes no connection, and ignores a remote command), as keyword -> first value."""

    def resolve(*args: str, config: str | Path = "/dev/null") -> dict[str, str]:
        out = subprocess.run(
            [openssh.ssh, "-G", "-F", str(config), *args],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        values: dict[str, str] = {}
        for line in out.splitlines():
            key, _, value = line.partition(" ")
            values.setdefault(key, value)
        return values

    return resolve


# --------------------------------------------------------------------------- cluster
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
def launch_node(
    cluster: Cluster, name: str, workdir: Path, kind: str = "cert"
) -> sshd_launcher.SSHDNode:
    """Start a real sshd configured from ``cluster`` and register it as ``name``.

    ``kind``: its host key, one of ``sshd.HOST_KEY_KINDS``: ``"cert"`` (certified by
    the cluster), ``"plain"`` (no certificate) or ``"other-ca"`` (an unknown CA's).
    """
    return sshd_launcher.start_node(
        cluster.admin, cluster.name, name, workdir, sshd=sshd_launcher.find_sshd() or "",
        host_key_kind=kind,
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
        stop_process(proc, 5)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
