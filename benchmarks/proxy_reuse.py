"""Hop reuse: set-up through the proxy, cold and warm, against a direct ssh to the node.

Starts the local test cluster and a real sshd node, writes both `tsh config`
forms with reuse (the default) and without (``--no-reuse``: what every
connection cost before reuse), then measures, interleaved in one run:

- ``direct``: ``ssh`` to the node itself, no proxy;
- per form, ``alone`` (``--no-reuse``), ``cold`` (reuse, but the master was
  told to exit 0.3 s before: the connection starts it, and does not share
  the machine with the old master's teardown) and ``warm`` (the
  master is up);
- bulk throughput (``--mib`` MiB through ``cat > /dev/null``) for direct and
  per form alone and warm, in ``--bulk-runs`` turns of a shuffled order; each
  throughput ratio with a 95% bootstrap interval over the turns (a run's rate
  swings by a third here with where the scheduler puts the processes).

Targets: warm set-up at most 1.05x direct; cold at most 1.03x alone (no
worse than before reuse); warm throughput at least 0.95x alone. Set-up times
are medians of ``--runs`` rounds, each round running every variant once in a
shuffled order, with a 95% bootstrap interval of each ratio. Each timed run
starts once no earlier hop's background work is left (see :func:`wait_for_tsh_hops`;
the report says how often and how long it waited): that work, a new
tsh-form master's agent set-up, is shared with whatever runs next.

Two cases, as in benchmarks/proxy_ssh.py: no ssh-agent, and the seed page's
ssh-agent holding key and certificate. The `tsh` measured is a regular
install of this checkout (see proxy_ssh.py).

    python benchmarks/proxy_reuse.py [--runs 40] [--mib 128] [--bulk-runs 9]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_ssh import install_tsh, ratio_interval  # noqa: E402  (the sibling benchmark's)

from tests.cluster import sshd as sshd_launcher  # noqa: E402
from tests.conftest import LOGIN, exit_masters, launch_cluster  # noqa: E402
from tests.integration._profiles import log_in  # noqa: E402
from tsh import ProfileStore  # noqa: E402
from tsh._agent.private import PrivateAgent  # noqa: E402

FORMS = ("openssh", "tsh")


def _tsh_hops_running() -> bool:
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"\0proxy\0ssh\0" in f.read():
                    return True
        except OSError:  # not a process, or gone meanwhile
            continue
    return False


def wait_for_tsh_hops(timeout_s: float = 5.0) -> float:
    """Wait until no `tsh proxy ssh` runs; the seconds waited.

    A tsh-form hop that started a master puts the master's own agent in place
    after its session (ssh-agent, ssh-add, the guard), in the background: a
    run timed while that goes on would be charged with it. The untimed run
    that makes sure a master is up before a warm run is often such a hop (a
    cold run exits every master), so without this the tsh form's warm row
    carries the last cold start's agent set-up and the openssh form's does not.
    """
    started = time.monotonic()
    while _tsh_hops_running() and time.monotonic() - started < timeout_s:
        time.sleep(0.01)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--bulk-runs", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tsh-bench-"))
    os.environ["TELEPORT_HOME"] = str(work / "tsh")
    cluster = node = agent = None
    report: list[str] = []
    try:
        tsh_exe = install_tsh(work / "venv")
        cluster = launch_cluster(work / "cluster")
        node = sshd_launcher.start_node(cluster.admin, cluster.name, "node1", work / "node")
        me = log_in(cluster, [LOGIN])
        store = ProfileStore(me.home)
        paths = store.paths_for(store.select(None))
        mux = me.home / "mux"
        dest = f"{LOGIN}@node1.{cluster.name}"
        base = ["ssh", "-o", "BatchMode=yes"]
        direct = [*base, "-F", "/dev/null", "-o", f"UserKnownHostsFile={paths.known_hosts}",
                  "-o", f"HostKeyAlias=node1.{cluster.name}", "-i", str(paths.private_key),
                  "-o", f"CertificateFile={paths.ssh_cert(cluster.name)}", "-p", str(node.port),
                  f"{LOGIN}@127.0.0.1"]  # fmt: skip
        variants: dict[str, list[str]] = {"direct": direct}
        for form in FORMS:
            for reuse in (True, False):
                r = subprocess.run(
                    [str(tsh_exe), "config", f"--port={node.port}", f"--proxy-command={form}",
                     *([] if reuse else ["--no-reuse"])],
                    env=me.env(), capture_output=True, check=False,
                )  # fmt: skip
                if r.returncode:
                    raise SystemExit(r.stderr.decode())
                cfg = work / f"config-{form}-{reuse}"
                cfg.write_bytes(r.stdout)
                argv = [*base, "-F", str(cfg), dest]
                if reuse:
                    variants[f"{form} cold"] = argv
                    variants[f"{form} warm"] = argv
                else:
                    variants[f"{form} alone"] = argv
        agent = PrivateAgent.start(str(paths.private_key), str(paths.ssh_cert(cluster.name)), 3600)
        cases = {"no agent": me.env(), "agent": me.env(SSH_AUTH_SOCK=agent.sock)}
        for case, env in cases.items():
            times: dict[str, list[float]] = {v: [] for v in variants}
            waits: list[float] = []

            def run(name: str, cmd: str = "true", env: dict[str, str] = env,
                    waits: list[float] = waits) -> float:  # fmt: skip
                if name.endswith(" cold"):
                    # Untimed: the connection must start the master; and the old
                    # master's teardown (the cluster's too) is not this one's cost.
                    exit_masters(mux)
                    time.sleep(0.3)
                waits.append(wait_for_tsh_hops())
                t = time.perf_counter()
                subprocess.run([*variants[name], cmd], env=env, check=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                return (time.perf_counter() - t) * 1000

            for name in variants:  # warm-up: caches, bytecode, and the masters
                run(name)
            for _ in range(args.runs):
                order = list(variants)
                random.shuffle(order)
                for name in order:
                    if name.endswith(" warm"):
                        run(name)  # untimed: make sure this form's master is up
                    times[name].append(run(name))
            rates: dict[str, float] = {}
            chunk = b"\0" * (1 << 20)
            bulk = [v for v in variants if not v.endswith(" cold")]
            samples: dict[str, list[float]] = {v: [] for v in bulk}
            for _ in range(args.bulk_runs):
                random.shuffle(bulk)
                for name in bulk:
                    wait_for_tsh_hops()
                    t = time.perf_counter()
                    proc = subprocess.Popen([*variants[name], "cat > /dev/null"], env=env,
                                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
                    assert proc.stdin is not None
                    for _ in range(args.mib):
                        proc.stdin.write(chunk)
                    proc.stdin.close()
                    if proc.wait() != 0:
                        raise SystemExit("bulk transfer failed")
                    samples[name].append(args.mib / (time.perf_counter() - t))
            rates = {v: statistics.median(r) for v, r in samples.items()}
            med = {v: statistics.median(t) for v, t in times.items()}
            report.append(f"\n{case}: set-up ms (median of {args.runs}), MiB/s (median of {args.bulk_runs})")
            busy = [w for w in waits if w > 0.005]
            report.append(f"  (before {len(busy)} of {len(waits)} runs, a hop's background work: "
                          f"{1000 * statistics.median(busy) if busy else 0:.0f} ms median, waited for)")
            for name in variants:
                rate = f"{rates[name]:>10.1f}" if name in rates else f"{'-':>10}"
                report.append(f"  {name:<14}{med[name]:>9.1f}{rate}")
            for form in FORMS:
                checks = [
                    (f"{form} warm/direct", f"{form} warm", "direct", 1.05, "<="),
                    (f"{form} cold/alone", f"{form} cold", f"{form} alone", 1.03, "<="),
                ]
                for label, num, den, target, _ in checks:
                    ratio = med[num] / med[den]
                    low, high = ratio_interval(times[num], times[den])
                    verdict = "ok" if ratio <= target else "MISSED"
                    report.append(f"  {label:<22}{ratio:.2f}x [{low:.2f}-{high:.2f}] "
                                  f"(target <= {target:.2f}x) {verdict}")
                rate_ratio = rates[f"{form} warm"] / rates[f"{form} alone"]
                low, high = ratio_interval(samples[f"{form} warm"], samples[f"{form} alone"])
                verdict = "ok" if rate_ratio >= 0.95 else "MISSED"
                report.append(f"  {form + ' throughput':<22}{rate_ratio:.2f}x [{low:.2f}-{high:.2f}] "
                              f"warm/alone (target >= 0.95x) {verdict}")
            exit_masters(mux)
    finally:
        if cluster is not None:
            exit_masters(Path(os.environ["TELEPORT_HOME"]) / "mux")
        if node is not None:
            node.stop()
        if cluster is not None:
            cluster.stop()
        if agent is not None:
            agent.close()
        shutil.rmtree(work, ignore_errors=True)
    print("tsh measured: a regular install of this checkout; variants interleaved per round")
    print("\n".join(report))


if __name__ == "__main__":
    main()
