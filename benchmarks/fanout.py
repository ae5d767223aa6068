"""Fan-out through the proxy: `true` on one node, ``--runs`` times (issue #13 section 3).

Starts the local test cluster and a real sshd node, then runs ``true`` on the
node in five ways:

- direct ssh: OpenSSH's ``ssh`` straight to the node (no proxy), one process each;
- (a) ssh -F: OpenSSH's ``ssh -F <tsh config>`` processes, in sequence, through
  the proxy (each one a new `tsh proxy ssh` and a new login to the proxy);
- direct asyncssh: in-process asyncssh connections straight to the node;
- (b) connect, sequential: tsh._connect over one proxy connection, one at a time;
- (c) connect, concurrent: the same, all at once.

For each: wall time, and the median per-connection set-up (for the processes,
the whole ``ssh ... true``; in-process, the time until the node connection is
authenticated). Target: (b)'s set-up at most 1.10x of a direct `ssh` to the
node. Also shown, the stricter in-process comparison: (b) against direct
asyncssh, the same library and checks minus the proxy; the two take turns, so
drift hits both alike, and their ratio comes with a 95% bootstrap interval.

The `tsh` that (a)'s configuration runs is a regular install of this checkout
(see benchmarks/proxy_ssh.py).

    python benchmarks/fanout.py [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tsh
from benchmarks.proxy_ssh import REPO, install_tsh, ratio_interval
from tests.cluster import sshd as sshd_launcher
from tests.conftest import LOGIN, launch_cluster
from tests.integration._profiles import log_in
from tsh import ProfileStore
from tsh._asyncssh import asyncssh


def ssh_processes(argv: list[str], runs: int, env: dict[str, str]) -> tuple[float, list[float]]:
    """Wall seconds and per-run milliseconds of ``runs`` sequential ``argv`` processes."""
    times = []
    start = time.perf_counter()
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1000)
    return time.perf_counter() - start, times


async def timed_run(opening, results: list[float]) -> None:  # type: ignore[no-untyped-def]
    """Open a node connection (its set-up time goes to ``results``), run ``true``, close."""
    t = time.perf_counter()
    conn = await opening()
    results.append((time.perf_counter() - t) * 1000)
    try:
        done = await conn.run("true")
        if done.exit_status != 0:
            raise SystemExit(f"`true` failed: {done.stderr}")
    finally:
        conn.close()
        await conn.wait_closed()


async def in_process(store: ProfileStore, node, runs: int):  # type: ignore[no-untyped-def]
    profile = store.select(None)
    paths = store.paths_for(profile)
    keys = asyncssh.load_keypairs([(str(paths.private_key), str(paths.ssh_cert(profile.cluster)))])
    known_hosts = asyncssh.read_known_hosts(str(paths.known_hosts))
    alias = f"{node.name}.{profile.cluster}"

    def direct():  # type: ignore[no-untyped-def]
        # What tsh._connect does for the node, minus the proxy: the same checks.
        return asyncssh.connect(
            node.host, node.port, username=LOGIN, client_keys=keys, agent_path=None,
            known_hosts=lambda *_: known_hosts.match(alias, "", None), host_key_alias=alias,
            server_host_key_algs="default", config=[], preferred_auth="publickey",
        )  # fmt: skip

    direct_ms: list[float] = []
    seq_ms: list[float] = []
    conc_ms: list[float] = []
    # (b) and (c): the public API, tsh.AsyncClient.connect over its one proxy connection.
    async with tsh.AsyncClient(home=store.home, max_handshakes=runs) as client:

        def via_proxy():  # type: ignore[no-untyped-def]
            return client.connect(node.name, login=LOGIN)

        for _ in range(3):  # warm up both paths
            await timed_run(direct, [])
            await timed_run(via_proxy, [])
        direct_wall = seq_wall = 0.0
        for _ in range(runs):  # taking turns
            t = time.perf_counter()
            await timed_run(direct, direct_ms)
            direct_wall += time.perf_counter() - t
            t = time.perf_counter()
            await timed_run(via_proxy, seq_ms)
            seq_wall += time.perf_counter() - t
        t = time.perf_counter()
        await asyncio.gather(*(timed_run(via_proxy, conc_ms) for _ in range(runs)))
        conc_wall = time.perf_counter() - t
    return (direct_wall, direct_ms), (seq_wall, seq_ms), (conc_wall, conc_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tsh-fanout-"))
    os.environ["TELEPORT_HOME"] = str(work / "tsh")
    os.environ.pop("SSH_AUTH_SOCK", None)  # the key on disk, no agent: (a) and (b) alike
    cluster = node = None
    try:
        tsh_exe = install_tsh(work / "venv")
        cluster = launch_cluster(work / "cluster")
        node = sshd_launcher.start_node(cluster.admin, cluster.name, "node1", work / "node")
        me = log_in(cluster, [LOGIN])
        r = subprocess.run([str(tsh_exe), "config", f"--port={node.port}"], env=me.env(),
                           capture_output=True, check=False)
        if r.returncode:
            raise SystemExit(r.stderr.decode())
        cfg = work / "tsh-config"
        cfg.write_bytes(r.stdout)
        store = ProfileStore(me.home)
        paths = store.paths_for(store.select(None))
        alias = f"{node.name}.{cluster.name}"
        direct_argv = [
            "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={paths.known_hosts}", "-o", f"HostKeyAlias={alias}",
            "-o", f"CertificateFile={paths.ssh_cert(cluster.name)}", "-i", str(paths.private_key),
            "-p", str(node.port), f"{LOGIN}@{node.host}", "true",
        ]  # fmt: skip
        proxied_argv = ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", f"{LOGIN}@{alias}", "true"]
        env = me.env()
        for argv in (direct_argv, proxied_argv):
            ssh_processes(argv, 2, env)  # warm up (page cache, bytecode)
        rows = {
            "direct ssh": ssh_processes(direct_argv, args.runs, env),
            "(a) ssh -F tsh config": ssh_processes(proxied_argv, args.runs, env),
        }
        direct, seq, conc = asyncio.run(in_process(store, node, args.runs))
        rows["direct asyncssh"] = direct
        rows["(b) connect, sequential"] = seq
        rows["(c) connect, concurrent"] = conc
    finally:
        if node is not None:
            node.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    base_ssh = statistics.median(rows["direct ssh"][1])
    base_py = statistics.median(rows["direct asyncssh"][1])
    print(f"tsh measured: {REPO}; {args.runs} runs of `true` on one node")
    print(f"{'way':<26}{'wall s':>8}{'set-up ms (median)':>20}{'x direct ssh':>14}{'x direct asyncssh':>19}")
    for way, (wall, times) in rows.items():
        ms = statistics.median(times)
        print(f"{way:<26}{wall:>8.2f}{ms:>20.1f}{ms / base_ssh:>14.2f}{ms / base_py:>19.2f}")
    to_ssh = statistics.median(seq[1]) / base_ssh
    to_py = statistics.median(seq[1]) / base_py
    low, high = ratio_interval(seq[1], direct[1])
    print(f"(b) set-up / direct ssh: {to_ssh:.2f}x (target <= 1.10x) {'ok' if to_ssh <= 1.10 else 'MISSED'}; "
          f"/ direct asyncssh: {to_py:.2f}x [{low:.2f}-{high:.2f}] (the proxy hop's own cost)")


if __name__ == "__main__":
    main()
