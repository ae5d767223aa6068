"""Start-up time of tsh commands against `python -c pass` (medians).

Budget (DEVELOPERS.md): `tsh version` within 90 ms, `tsh status` and
`tsh config` within 150 ms of `python -c pass`.

    python benchmarks/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

BUDGET_MS = {"version": 90, "status": 150, "config": 150}


def median_ms(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    env = dict(os.environ, TELEPORT_HOME=tempfile.mkdtemp(prefix="tsh-bench-"))
    base = median_ms([sys.executable, "-c", "pass"], args.runs, env)
    print(f"{'command':<14}{'median ms':>10}{'over pass':>11}{'budget':>8}  ok")
    print(f"{'python pass':<14}{base:>10.1f}")
    for cmd, budget in BUDGET_MS.items():
        ms = median_ms([sys.executable, "-m", "tsh", cmd], args.runs, env)
        over = ms - base
        print(f"{'tsh ' + cmd:<14}{ms:>10.1f}{over:>11.1f}{budget:>8}  {'yes' if over <= budget else 'NO'}")


if __name__ == "__main__":
    main()
