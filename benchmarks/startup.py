"""Start-up time of tsh commands against `python -c pass` (medians).

Budget (DEVELOPERS.md): `tsh version` within 90 ms, `tsh status` and
`tsh config` within 150 ms of `python -c pass`. `tsh status` and `tsh config`
run against a logged-in profile (written directly, no cluster needed). The
package is byte-compiled first, as an installed wheel would be.

    python benchmarks/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_MS = {"version": 90, "status": 150, "config": 150}
REPO = Path(__file__).resolve().parents[1]


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
    import tsh
    from tsh import Profile, ProfileStore
    from tsh._store.fs import atomic_write

    compileall.compile_dir(Path(tsh.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix="tsh-bench-") as home:
        store = ProfileStore(Path(home))
        profile = Profile(
            web_proxy_addr="proxy.example.com:3080", ssh_proxy_addr="proxy.example.com:3023",
            user="joe", cluster="example.com", root_cluster="example.com",
            clusters=("example.com", "leaf.example.com"), principals=("root", "joe"),
            valid_before=int(time.time()) + 3600, roles=("access",),
        )
        with store.transaction():
            atomic_write(store.paths_for(profile).profile_file, profile.to_json())
            atomic_write(store.paths_for(profile).current_profile, profile.name + "\n")
        env = dict(os.environ, TELEPORT_HOME=str(store.home))
        base = median_ms([sys.executable, "-c", "pass"], args.runs, env)
        print(f"{'command':<14}{'median ms':>10}{'over pass':>11}{'budget':>8}  ok")
        print(f"{'python pass':<14}{base:>10.1f}")
        pyz = Path(home) / "tsh.pyz"
        build = [sys.executable, str(REPO / "packaging" / "build_zipapp.py"), "--output", str(pyz)]
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)
        for label, argv in (("tsh", [sys.executable, "-m", "tsh"]), ("pyz", [sys.executable, str(pyz)])):
            for cmd, budget in BUDGET_MS.items():
                ms = median_ms([*argv, cmd], args.runs, env)
                over = ms - base
                ok = "yes" if over <= budget else "NO"
                print(f"{label + ' ' + cmd:<14}{ms:>10.1f}{over:>11.1f}{budget:>8}  {ok}")


if __name__ == "__main__":
    main()
