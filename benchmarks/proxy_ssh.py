"""`tsh proxy ssh` against the pure-OpenSSH ProxyCommand, side by side.

Starts the local test cluster and a real sshd node, writes both `tsh config`
forms, then measures for each: connection set-up (median of ``--runs`` runs of
``ssh ... true``) and bulk throughput (``--mib`` MiB through ``cat > /dev/null``).
Targets: the tsh form's set-up at most 1.10x and its throughput at least 0.85x
of the openssh form's.

    python benchmarks/proxy_ssh.py [--runs 20] [--mib 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import sshd as sshd_launcher
from tests.conftest import LOGIN, launch_cluster
from tests.integration._profiles import log_in, tsh

FORMS = ("tsh", "openssh")


def ssh_argv(cfg: Path, dest: str, *cmd: str) -> list[str]:
    return ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", dest, *cmd]


def setup_ms(cfg: Path, dest: str, env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(ssh_argv(cfg, dest, "true"), env=env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def throughput_mib_s(cfg: Path, dest: str, env: dict[str, str], mib: int) -> float:
    chunk = b"\0" * (1 << 20)
    t = time.perf_counter()
    proc = subprocess.Popen(ssh_argv(cfg, dest, "cat > /dev/null"), env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    for _ in range(mib):
        proc.stdin.write(chunk)
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("bulk transfer failed")
    return mib / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tsh-bench-"))
    os.environ["TELEPORT_HOME"] = str(work / "tsh")
    cluster = launch_cluster(work / "cluster")
    node = None
    try:
        node = sshd_launcher.start_node(cluster.admin, cluster.name, "node1", work / "node")
        me = log_in(cluster, [LOGIN])
        env = me.env()
        dest = f"{LOGIN}@node1.{cluster.name}"
        cfgs = {}
        for form in FORMS:
            r = tsh("config", f"--port={node.port}", f"--proxy-command={form}", env=env)
            if r.returncode:
                raise SystemExit(r.stderr.decode())
            cfgs[form] = work / f"config-{form}"
            cfgs[form].write_bytes(r.stdout)
        results = {}
        for form in FORMS:  # warm up caches (page cache, bytecode) before measuring
            setup_ms(cfgs[form], dest, env, 2)
        for form in FORMS:
            results[form] = (
                setup_ms(cfgs[form], dest, env, args.runs),
                throughput_mib_s(cfgs[form], dest, env, args.mib),
            )
    finally:
        if node is not None:
            node.stop()
        cluster.stop()
    print(f"{'ProxyCommand':<14}{'setup ms (median)':>19}{'MiB/s':>10}")
    for form in FORMS:
        ms, rate = results[form]
        print(f"{form:<14}{ms:>19.1f}{rate:>10.1f}")
    setup_ratio = results["tsh"][0] / results["openssh"][0]
    rate_ratio = results["tsh"][1] / results["openssh"][1]
    print(f"tsh/openssh setup time {setup_ratio:.2f}x (target <= 1.10x) "
          f"{'ok' if setup_ratio <= 1.10 else 'MISSED'}")
    print(f"tsh/openssh throughput {rate_ratio:.2f}x (target >= 0.85x) "
          f"{'ok' if rate_ratio >= 0.85 else 'MISSED'}")


if __name__ == "__main__":
    main()
