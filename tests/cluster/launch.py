"""Start the test cluster as a subprocess and drive its admin CLI (fixtures and demo).

``launch_cluster`` runs ``python -m tests.cluster start``, waits for the one
JSON readiness line and returns a :class:`Cluster`; ``Cluster.stop`` sends
SIGTERM. ``run_cluster_cli`` runs the admin CLI in this process.

Each cluster gets a temporary directory of its own as ``TMPDIR`` (short: the
SSH proxy's forwarded-agent sockets, asyncssh's ``asyncssh-*/agent``, are
made there and a socket's name has room for 104 bytes), removed once the
process is gone, however it ended: a cluster killed with connections open
leaves none of them in /tmp.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import selectors
import shutil
import ssl
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster._files import stop_process

__all__ = ["REPO_ROOT", "Cluster", "join_leaf", "launch_cluster", "run_cluster_cli", "wait_tunnel"]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
_START_TIMEOUT_S = 30.0


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
    tmp_dir: Path | None = field(default=None, repr=False)

    @property
    def web_url(self) -> str:
        """``https://127.0.0.1:PORT``."""
        return f"https://{self.web_addr}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this cluster's TLS CA (for httpx ``verify=``)."""
        return ssl.create_default_context(cafile=str(self.tls_ca))

    @property
    def tunnel_addr(self) -> str:
        """Where leaves dial their reverse tunnel (``127.0.0.1:PORT``)."""
        return str(self.info["tunnel_addr"])

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

    def proxy_authentications(self) -> int:
        """How many users the SSH proxy has logged in so far (its log says each)."""
        return self.log().count(" proxy authentication #")

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        stop_process(self.proc, 10)
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
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
    tmp_dir = Path(tempfile.mkdtemp(prefix="tc-"))
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
            env={**os.environ, "TMPDIR": str(tmp_dir)},
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
        shutil.rmtree(tmp_dir, ignore_errors=True)
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
        tmp_dir=tmp_dir,
    )


def join_leaf(
    root: Cluster, leaf: Cluster, role_map: str = "access:access", labels: str = "",
    timeout: float = 20.0,
) -> None:
    """Make ``leaf`` a trusted cluster of ``root`` and wait until its tunnel is up.

    As an admin would: a join token on the root, ``trusted-clusters add`` on the
    leaf (the root's web address and TLS CA, as its readiness line gives them).
    """
    import time

    token = root.admin(
        "tokens", "add", "--type=trusted_cluster", *([f"--labels={labels}"] if labels else [])
    ).strip()
    started = time.time()
    leaf.admin(
        "trusted-clusters", "add", f"--root-proxy={root.web_addr}", f"--root-ca={root.tls_ca}",
        f"--token={token}", f"--role-map={role_map}",
    )  # fmt: skip
    wait_tunnel(root, leaf.name, since=started, timeout=timeout)


def wait_tunnel(root: Cluster, leaf: str, since: float, timeout: float = 20.0) -> None:
    """Wait until ``root`` recorded a tunnel from ``leaf`` that came up after ``since``."""
    import datetime as dt
    import time

    deadline = time.monotonic() + timeout
    path = root.data_dir / "remote_clusters.json"
    while time.monotonic() < deadline:
        try:
            rec = json.loads(path.read_text())["clusters"].get(leaf) or {}
        except (OSError, ValueError):
            rec = {}
        stamp = rec.get("last_heartbeat")
        if stamp:
            when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            if when >= since:
                return
        time.sleep(0.05)  # the root writes the file when the tunnel comes up
    raise RuntimeError(f"no reverse tunnel from {leaf} to {root.name}:\n{root.log()[-2000:]}")
