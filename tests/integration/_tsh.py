"""Helpers for integration tests that run the real `tsh` command line."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pyotp

PASSWORD = "secret-pw"


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Bytes read from ``fd`` until they hold ``needle`` (or EOF); fails after ``timeout`` s."""
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {buf!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf


def path_with(bin_dir: Path, **scripts: str) -> str:
    """PATH with ``bin_dir`` first, holding a ``sh`` script per name (its body):
    wrappers in front of the real tools (``**{"ssh-agent": ...}`` for such names)."""
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def tsh_argv(*, installed: bool = True) -> list[str]:
    """How the tests start tsh: the installed `tsh` entry point, which `tsh config` then
    names in its ProxyCommand; ``python -m tsh`` without one or with ``installed=False``
    (what :func:`run_tsh` runs, so that tests see both forms)."""
    exe = Path(sys.executable).with_name("tsh")
    return [str(exe)] if installed and exe.exists() else [sys.executable, "-m", "tsh"]


def run_tsh(
    *args: str, env: dict[str, str], input: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tsh ARGS`` with ``env``; never raises on a non-zero exit."""
    return subprocess.run(
        [*tsh_argv(installed=False), *args],
        input=input, capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


def tsh_config_file(
    path: Path, *config_args: str, env: dict[str, str], installed: bool = False
) -> Path:
    """Write ``tsh config CONFIG_ARGS`` (asserted to succeed) to ``path``; return it.

    ``installed``: run the entry point (see :func:`tsh_argv`) rather than ``python -m tsh``.
    """
    r = subprocess.run(
        [*tsh_argv(installed=installed), "config", *config_args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    path.write_text(r.stdout)
    return path


def ssh_with_config(
    ssh: str, cfg: Path, dest: str, *cmd: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """OpenSSH's ``ssh -F CFG -o BatchMode=yes DEST CMD`` (stdin /dev/null, text output)."""
    return subprocess.run(
        [ssh, "-F", str(cfg), "-o", "BatchMode=yes", dest, *cmd],
        capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip


def env_for(cluster, agent_sock: str | None = None, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The test's environment, trusting ``cluster``'s TLS CA, with an agent if given."""
    env = dict(os.environ, SSL_CERT_FILE=str(cluster.tls_ca), **extra)
    if agent_sock:
        env["SSH_AUTH_SOCK"] = agent_sock
    return env


def agent_lines(openssh, sock: str) -> list[str]:  # type: ignore[no-untyped-def]
    """``ssh-add -L`` of the agent at ``sock``, one public key line each."""
    r = subprocess.run(
        [openssh.ssh_add, "-L"], capture_output=True, text=True,
        env=dict(os.environ, SSH_AUTH_SOCK=sock),
    )  # fmt: skip
    return r.stdout.splitlines() if r.returncode == 0 else []  # 1: "no identities"


def login(  # type: ignore[no-untyped-def]
    cluster, user: str, env: dict[str, str], *extra: str,
    secret: str | None = None, password: str = PASSWORD,
) -> subprocess.CompletedProcess[str]:
    """`tsh login` to ``cluster`` as ``user``, password (and OTP) on stdin."""
    stdin = f"{password}\n" + (f"{pyotp.TOTP(secret).now()}\n" if secret else "")
    return run_tsh(
        "login", f"--proxy={cluster.web_addr}", f"--user={user}", *extra, env=env, input=stdin
    )


def ssh_dropping_the_first_master(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An ``ssh`` on PATH that fails the first master's start as sshd's MaxStartups would
    (a reset before the banner), then runs the real one: (environment to add, mark file
    that exists once the drop happened)."""
    import shutil

    mark = tmp_path / "dropped"
    path = path_with(tmp_path / "bin", ssh=(
        'case " $* " in *" ControlMaster=yes "*) if [ ! -e "$MARK" ]; then : > "$MARK"; '
        'echo "kex_exchange_identification: read: Connection reset by peer" >&2; exit 255; fi;; esac\n'
        f'exec {shutil.which("ssh")} "$@"\n'
    ))  # fmt: skip
    return {"PATH": path, "MARK": str(mark)}, mark
