"""`tsh ls` and `tsh clusters` against big inventories (issue #14): wall time and peak RSS.

Starts the local test cluster, logs in with `tsh login`, then for each case
writes the inventory into the cluster's files (nodes.json; for leaves, the
remote_clusters.json a trusted-cluster join writes) and runs the command
``--runs`` times as a fresh process each:

- `tsh ls` with 1,000 and 10,000 nodes (ListUnifiedResources, 1,000 per page):
  target 10,000 nodes in under 2 s with a peak RSS under 120 MB;
- `tsh clusters` with 100 leaves: target under 0.5 s;
- `tsh status` alongside, the start-up floor every command pays.

Wall time is the median; peak RSS the largest of the runs (the child's own
ru_maxrss, from wait4). The cluster runs on the same machine, so its work per
page is inside the wall time too.

    python benchmarks/listing.py [--runs 5] [--against TREE]

``--against TREE`` (e.g. a ``git worktree`` of main) also runs every case
with TREE's ``tsh`` (PYTHONPATH=TREE), each of its runs right after one of
this tree's, so that both see the same machine load; its rows are marked
``(against)``. Bytecode is written (PYTHONDONTWRITEBYTECODE is dropped) so
that neither side pays for compiling its modules on every run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster._ca import Authority, public_line  # noqa: E402
from tests.cluster._state import ClusterState  # noqa: E402
from tests.conftest import launch_cluster  # noqa: E402

PASSWORD = "bench-pw"
TIME = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"


def measured(argv: list[str], env: dict[str, str], work: Path) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of one run of ``argv``; its stdout.

    The peak comes from GNU time (``%M``): a child forked from this big
    process would count this process's pages in its own ru_maxrss.
    """
    report = work / "time.out"
    t = time.perf_counter()
    # cwd: not a source tree, which `python -m` would put first on sys.path.
    r = subprocess.run([TIME, "-f", "%M", "-o", str(report), *argv], env=env, cwd=work,
                       stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.decode()}")
    return wall, int(report.read_text().split()[-1]) / 1024, r.stdout.decode()


def seed_nodes(data_dir: Path, count: int) -> None:
    nodes = {
        f"node-{i:05d}": {"addr": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:22",
                          "labels": {"env": ("prod", "dev", "stage")[i % 3], "rack": f"r{i % 40}"}}
        for i in range(count)
    }  # fmt: skip
    (data_dir / "nodes.json").write_text(json.dumps({"nodes": nodes}))


def seed_leaves(data_dir: Path, work: Path, count: int) -> None:
    # One leaf's CAs serve for all: only the listing is measured.
    leaf = Authority.load(ClusterState.init(work / "leaf-ca", "leaf-ca"))
    beat = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    clusters = {
        f"leaf-{i:03d}.example": {
            "labels": {"env": "prod" if i % 2 else "dev"},
            "host_ca": {"ssh": [public_line(leaf.host_ca)], "tls": [leaf.tls_ca_pem.decode()]},
            "role_map": [{"remote": "access", "local": ["access"]}],
            "last_heartbeat": beat if i % 5 else None,
        }
        for i in range(count)
    }
    (data_dir / "remote_clusters.json").write_text(json.dumps({"clusters": clusters}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--against", type=Path, default=None, metavar="TREE")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tsh-listing-"))
    tsh = [sys.executable, "-m", "tsh"]
    cluster = None
    rows: list[tuple[str, float, float, float | None, float | None]] = []
    try:
        cluster = launch_cluster(work / "cluster", name="root.example")
        cluster.add_user("bench", ["root"], password=PASSWORD)
        env = dict(os.environ, TELEPORT_HOME=str(work / "tsh"), SSL_CERT_FILE=str(cluster.tls_ca))
        env.pop("SSH_AUTH_SOCK", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        sides = [("", env)]
        if args.against is not None:
            sides.append((" (against)", dict(env, PYTHONPATH=str(args.against.resolve()))))
        r = subprocess.run([*tsh, "login", f"--proxy={cluster.web_addr}", "--user=bench"],
                           input=PASSWORD + "\n", text=True, capture_output=True, env=env)  # fmt: skip
        if r.returncode:
            raise SystemExit(r.stderr)
        cases: list[tuple[str, list[str], object, int, float | None, float | None]] = [
            ("tsh status", ["status"], None, 0, None, None),
            ("tsh ls, 1,000 nodes", ["ls"], seed_nodes, 1000, None, None),
            ("tsh ls, 10,000 nodes", ["ls"], seed_nodes, 10000, 2.0, 120.0),
            ("tsh clusters, 100 leaves", ["clusters"], seed_leaves, 100, 0.5, None),
        ]
        for name, cmd, seed, count, wall_target, rss_target in cases:
            if seed is seed_nodes:
                seed_nodes(cluster.data_dir, count)
            elif seed is seed_leaves:
                seed_leaves(cluster.data_dir, work, count)
            for _, side_env in sides:  # warm up (bytecode, the cluster's caches)
                measured([*tsh, *cmd], side_env, work)
            side_runs: list[list[tuple[float, float, str]]] = [[] for _ in sides]
            for _ in range(args.runs):
                for runs, (_, side_env) in zip(side_runs, sides, strict=True):
                    runs.append(measured([*tsh, *cmd], side_env, work))
            for runs, (label, _) in zip(side_runs, sides, strict=True):
                if count and cmd == ["ls"]:
                    listed = len(runs[0][2].splitlines()) - 2
                    assert listed == count, f"listed {listed} of {count}"
                if cmd == ["clusters"]:
                    assert len(runs[0][2].splitlines()) == 2 + 1 + count
                wall = statistics.median(w for w, _, _ in runs)
                rss = max(m for _, m, _ in runs)
                rows.append((name + label, wall, rss, wall_target, rss_target))
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = rows[0][1]
    print(f"{args.runs} runs each; wall = median, RSS = peak of the runs")
    print(f"{'case':<38}{'wall s':>8}{'x status':>10}{'peak RSS MB':>13}  targets")
    for name, wall, rss, wall_target, rss_target in rows:
        verdicts = []
        if wall_target is not None:
            verdicts.append(f"< {wall_target:g} s {'ok' if wall < wall_target else 'MISSED'}")
        if rss_target is not None:
            verdicts.append(f"< {rss_target:g} MB {'ok' if rss < rss_target else 'MISSED'}")
        print(f"{name:<38}{wall:>8.3f}{wall / base:>10.2f}{rss:>13.1f}  {'; '.join(verdicts)}")


if __name__ == "__main__":
    main()
