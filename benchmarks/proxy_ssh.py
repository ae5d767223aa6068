"""`tsh proxy ssh` against the pure-OpenSSH ProxyCommand, side by side.

Starts the local test cluster and a real sshd node, writes both `tsh config`
forms, then measures for each: connection set-up (median of ``--runs`` runs of
``ssh ... true``) and bulk throughput (median of ``--bulk-runs`` runs of
``--mib`` MiB through ``cat > /dev/null``), the two forms taking turns.
Targets: the tsh form's set-up at most 1.10x and its throughput at least 0.85x
of the openssh form's.

A connection here takes about half a second, and single runs spread over a
tenth of that (the node's sshd), so the set-up ratio comes with a 95%
bootstrap interval over the pairs of runs (60 by default); so does each
throughput ratio (over the 9 turns: on this 2-core machine a run's rate
swings by a tenth and more with where the scheduler puts the five busy
processes, so one ratio of medians can land either side of its target).

For reference, the set-up table has a third row, "python floor": the openssh
form started through a bare Python interpreter (``python -c`` and exec), the
least any ProxyCommand written in Python costs.

Two cases: no ssh-agent (`tsh login -k no`, or no agent running), and the
seed page's case, an ssh-agent holding the key and certificate.

TLS routing (no-agent case): two more clusters, a single-port one
(``--listener-mode=multiplex``: the hop is tsh's TLS tunnel to the web
port) and one behind an L7 load balancer (``--behind-l7-lb``: the hop is
tsh's WebSocket tunnel), each with its own node and profile, measured with
the tsh form in the same turns. Targets against the separate-port tsh form:
TLS routing set-up at most 1.15x and throughput at least 0.85x; the L7
upgrade at most 1.30x and at least 0.75x.

Where the bytes cost: for the no-agent bulk runs, a second table gives the
CPU seconds per 100 MiB of each side of each row (medians; the ssh client
tree with its hop and ProxyCommand, and the hop masters and tunnels it rode,
the cluster process, the node's sshd;
each run's connection set-up included, so use the default ``--mib``). All
processes share 2 cores, so throughput follows the total. Measured here
(profiles with py-spy and perf, docs/protocol.md §18), the TLS rows' extra
is: on the client, the hop's TLS tunnel (256 KiB reads, sixteen 16 KiB
records per write; ``openssl s_client``, which it replaced, sends one 8 KiB
record per read, and the cluster's CPU per byte was about 10 % higher with
it) and behind an L7 load balancer the same tunnel with two TLS layers and
WebSocket framing (its masking in C: wsproto's Python masking was a third
of it); on the server, asyncio's TLS in Python (OpenSSL's crypto and the
interpreter per read and record), and behind the load balancer also the
load balancer's own TLS and the WebSocket, in the same event loop (the
upgraded connection goes to the SSH route's TLS in-process, as in
Teleport). A real deployment has neither: the load balancer is another
machine, and Teleport's Go proxy runs on every core. The cluster column is
that share, to read the throughput ratios against.

The `tsh` measured is a regular (not editable) installation of this checkout
in a scratch virtualenv that borrows this environment's dependencies: what a
user runs. An editable install adds an import hook to every Python start-up
(about 15 ms here), which is not tsh's cost.

    python benchmarks/proxy_ssh.py [--runs 60] [--mib 256] [--bulk-runs 9]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster import sshd as sshd_launcher
from tests.conftest import LOGIN, launch_cluster
from tests.integration._profiles import log_in
from tsh import ProfileStore
from tsh._agent.private import PrivateAgent

FORMS = ("tsh", "openssh")
#: TLS-routing rows: the test cluster's flags, and the targets (setup at most, throughput at least).
TLS_FORMS = {
    "tsh tls": (("--listener-mode=multiplex",), 1.15, 0.85),
    "tsh l7": (("--behind-l7-lb",), 1.30, 0.75),
}
FLOOR = "python floor"
REPO = Path(__file__).resolve().parent.parent


def install_tsh(where: Path) -> Path:
    """A regular install of this checkout in a new virtualenv; returns its `tsh`."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(where), "platbase": str(where)}))
    # A .pth line puts this environment's packages (typer, asyncssh, ...) on the path.
    (purelib / "_borrowed_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(where / "bin" / "python"), "install",
         "--quiet", "--no-deps", str(REPO)],
        check=True,
    )  # fmt: skip
    return where / "bin" / "tsh"


def ssh_argv(cfg: Path, dest: str, *cmd: str) -> list[str]:
    return ["ssh", "-F", str(cfg), "-o", "BatchMode=yes", dest, *cmd]


def setup_ms(cfgs: dict[str, Path], dest: str, env: dict[str, str], runs: int,
             extra: dict[str, tuple[Path, str, dict[str, str]]] | None = None) -> dict[str, list[float]]:
    """Set-up times per form; the forms take turns, so drift hits both alike.

    ``extra``: more forms with their own (config, destination, environment).
    """
    plan = {form: (cfg, dest, env) for form, cfg in cfgs.items()} | (extra or {})
    times: dict[str, list[float]] = {form: [] for form in plan}
    for _ in range(runs):
        for form, (cfg, form_dest, form_env) in plan.items():
            t = time.perf_counter()
            subprocess.run(ssh_argv(cfg, form_dest, "true"), env=form_env, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            times[form].append((time.perf_counter() - t) * 1000)
    return times


def ratio_interval(num: list[float], den: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of median(num) / median(den), resampling the pairs of runs."""
    pairs = list(zip(num, den, strict=True))
    ratios = sorted(
        statistics.median(a for a, _ in sample) / statistics.median(b for _, b in sample)
        for sample in (random.choices(pairs, k=len(pairs)) for _ in range(rounds))
    )
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def python_floor_config(openssh_cfg: str, python: Path) -> str:
    """The openssh form's configuration, its ProxyCommand started through ``python``."""
    prefix = "    ProxyCommand sh -c "
    assert prefix in openssh_cfg
    start = "import os, sys; os.execvp('sh', ['sh', *sys.argv[1:]])"
    return openssh_cfg.replace(prefix, f'    ProxyCommand "{python}" -c "{start}" -c ')


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid``: its own, plus its reaped children's (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def adopt_orphans() -> None:
    """Become the reaper of orphaned descendants (Linux), so that their CPU time is counted.

    The hop's ssh does not wait for its ProxyCommand (``openssl s_client`` or
    tsh's tunnel) when it ends: without this, their CPU time goes to init.
    """
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def settle(node: int, ours: set[int], timeout_s: float = 5.0) -> None:
    """Wait until a transfer's processes are gone, so that their CPU is counted: the
    node's session process (reaped by ``node``, its sshd) and the hop's ProxyCommand
    (adopted here, reaped by client_cpu_s); ``ours``: this process's other children."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        client_cpu_s()
        if not _children(node) and _children(os.getpid()) <= ours:
            return
        time.sleep(0.05)


def hop_daemons_cpu_s() -> dict[int, float]:
    """CPU seconds of each live hop master (``ssh``) and TLS tunnel, by pid.

    With hop reuse they outlive the ssh that started them: orphans adopted
    here (adopt_orphans), living on between transfers, so that neither the
    reaped-children count nor a transfer's own tree sees their CPU.
    """
    out = {}
    for pid in _children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv[0] == b"ssh" or b"tsh._proxy.tunnel" in argv:
                out[pid] = proc_cpu_s(pid)
        except OSError:
            continue  # gone meanwhile: reaped, and counted, by client_cpu_s
    return out


def client_side_cpu_s() -> float:
    """The client's share: the transfers' trees (reaped) plus the masters and tunnels
    they rode (alive); one that ends meanwhile moves from one count to the other."""
    return client_cpu_s() + sum(hop_daemons_cpu_s().values())


def client_cpu_s() -> float:
    """CPU seconds of this process's reaped children: ssh with its ProxyCommand tree."""
    while True:  # reap the adopted orphans that have ended (the clusters and nodes run on)
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def throughput_mib_s(cfgs: dict[str, Path], dest: str, env: dict[str, str], mib: int,
                     runs: int, extra: dict[str, tuple[Path, str, dict[str, str]]] | None = None,
                     servers: dict[str, tuple[int, int]] | None = None,
                     ) -> tuple[dict[str, list[float]], dict[str, tuple[float, float, float]]]:
    """MiB/s of each run of ``mib`` MiB through ``cat > /dev/null`` per form, taking turns
    (run i of every form in the same turn); and per form with ``servers`` (its cluster's
    and node sshd's pids) the median CPU
    seconds per 100 MiB of (client tree, cluster, node): where the bytes cost."""
    chunk = b"\0" * (1 << 20)
    plan = {form: (cfg, dest, env) for form, cfg in cfgs.items()} | (extra or {})
    rates: dict[str, list[float]] = {form: [] for form in plan}
    cpus: dict[str, list[tuple[float, float, float]]] = {form: [] for form in servers or {}}
    for _ in range(runs):
        for form, (cfg, form_dest, form_env) in plan.items():
            pids = (servers or {}).get(form)
            ours = _children(os.getpid())
            before = (client_side_cpu_s(), *map(proc_cpu_s, pids)) if pids else ()
            t = time.perf_counter()
            proc = subprocess.Popen(ssh_argv(cfg, form_dest, "cat > /dev/null"), env=form_env,
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            assert proc.stdin is not None
            for _ in range(mib):
                proc.stdin.write(chunk)
            proc.stdin.close()
            if proc.wait() != 0:
                raise SystemExit("bulk transfer failed")
            rates[form].append(mib / (time.perf_counter() - t))
            if pids:
                settle(pids[1], ours)
                after = (client_side_cpu_s(), *map(proc_cpu_s, pids))
                client, cluster, node = ((a - b) * 100 / mib for a, b in zip(after, before, strict=True))
                cpus[form].append((client, cluster, node))
    cpu = {form: (statistics.median(c[0] for c in per_run), statistics.median(c[1] for c in per_run),
                  statistics.median(c[2] for c in per_run)) for form, per_run in cpus.items()}  # fmt: skip
    return rates, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--bulk-runs", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tsh-bench-"))
    adopt_orphans()
    os.environ["TELEPORT_HOME"] = str(work / "tsh")
    cluster = node = agent = None
    started: list = []  # TLS-routing clusters and nodes, stopped at the end
    tls_plan: dict[str, tuple[Path, str, dict[str, str]]] = {}
    servers: dict[str, tuple[int, int]] = {}  # form -> (cluster pid, node sshd pid)
    cpu: dict[str, tuple[float, float, float]] = {}
    results: dict[tuple[str, str], tuple[float, float]] = {}
    intervals: dict[str, tuple[float, float]] = {}
    rate_intervals: dict[str, tuple[float, float]] = {}  # the same, of the throughput ratios
    floors: dict[str, float] = {}
    try:
        tsh_exe = install_tsh(work / "venv")
        cluster = launch_cluster(work / "cluster")
        node = sshd_launcher.start_node(cluster.admin, cluster.name, "node1", work / "node")
        me = log_in(cluster, [LOGIN])
        dest = f"{LOGIN}@node1.{cluster.name}"
        cfgs = {}
        for form in FORMS:
            r = subprocess.run([str(tsh_exe), "config", f"--port={node.port}",
                                f"--proxy-command={form}"], env=me.env(), capture_output=True)
            if r.returncode:
                raise SystemExit(r.stderr.decode())
            cfgs[form] = work / f"config-{form}"
            cfgs[form].write_bytes(r.stdout)
        floor_cfg = work / "config-python-floor"
        floor_cfg.write_text(python_floor_config(cfgs["openssh"].read_text(), tsh_exe.parent / "python"))
        for form, (flags, _, _) in TLS_FORMS.items():
            slug = form.replace(" ", "-")
            os.environ["TELEPORT_HOME"] = str(work / f"tsh-{slug}")  # a profile of its own
            c = launch_cluster(work / f"cluster-{slug}", extra_args=flags)
            started.append(c)
            n = sshd_launcher.start_node(c.admin, c.name, "node1", work / f"node-{slug}")
            started.append(n)
            tls_me = log_in(c, [LOGIN])
            # The web CA stands for the system roots the load balancer's certificate is checked on.
            tls_env = tls_me.env(SSL_CERT_FILE=str(c.tls_ca))
            r = subprocess.run([str(tsh_exe), "config", f"--port={n.port}"], env=tls_env,
                               capture_output=True)
            if r.returncode:
                raise SystemExit(r.stderr.decode())
            tls_cfg = work / f"config-{slug}"
            tls_cfg.write_bytes(r.stdout)
            tls_plan[form] = (tls_cfg, f"{LOGIN}@node1.{c.name}", tls_env)
            servers[form] = (c.proc.pid, n.proc.pid)
        servers["tsh"] = (cluster.proc.pid, node.proc.pid)
        os.environ["TELEPORT_HOME"] = str(work / "tsh")
        # The seed page's case: the user's ssh-agent holds key and certificate.
        store = ProfileStore(me.home)
        paths = store.paths_for(store.select(None))
        agent = PrivateAgent.start(str(paths.private_key), str(paths.ssh_cert(cluster.name)), 3600)
        cases = {"no agent": me.env(), "agent": me.env(SSH_AUTH_SOCK=agent.sock)}
        for case, env in cases.items():
            setup_cfgs = {**cfgs, FLOOR: floor_cfg}
            extra = tls_plan if case == "no agent" else {}
            setup_ms(setup_cfgs, dest, env, 2, extra)  # warm up caches (page cache, bytecode) first
            setup = setup_ms(setup_cfgs, dest, env, args.runs, extra)
            rates, case_cpu = throughput_mib_s(cfgs, dest, env, args.mib, args.bulk_runs, extra,
                                              servers if case == "no agent" else None)
            cpu |= case_cpu
            for form in (*FORMS, *extra):
                results[case, form] = (statistics.median(setup[form]), statistics.median(rates[form]))
            for form in extra:
                intervals[form] = ratio_interval(setup[form], setup["tsh"])
                rate_intervals[form] = ratio_interval(rates[form], rates["tsh"])
            rate_intervals[case] = ratio_interval(rates["tsh"], rates["openssh"])
            floors[case] = statistics.median(setup[FLOOR])
            intervals[case] = ratio_interval(setup["tsh"], setup["openssh"])
    finally:
        if node is not None:
            node.stop()
        if cluster is not None:
            cluster.stop()
        if agent is not None:
            agent.close()
        for thing in reversed(started):
            thing.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"tsh measured: a regular install of {REPO}")
    print(f"{'case':<10}{'ProxyCommand':<14}{'setup ms (median)':>19}{'MiB/s (median)':>16}")
    for (case, form), (ms, rate) in results.items():
        print(f"{case:<10}{form:<14}{ms:>19.1f}{rate:>16.1f}")
        if form == FORMS[-1]:
            print(f"{case:<10}{FLOOR:<14}{floors[case]:>19.1f}{'-':>16}")
    print("no agent: CPU seconds per 100 MiB of bulk transfer (median), by side")
    print(f"{'ProxyCommand':<14}{'client tree':>12}{'cluster':>10}{'node sshd':>11}{'total':>8}")
    for form, (client, server, node_s) in cpu.items():
        print(f"{form:<14}{client:>12.2f}{server:>10.2f}{node_s:>11.2f}"
              f"{client + server + node_s:>8.2f}")
    for form, (_, max_setup, min_rate) in TLS_FORMS.items():
        setup_ratio = results["no agent", form][0] / results["no agent", "tsh"][0]
        rate_ratio = results["no agent", form][1] / results["no agent", "tsh"][1]
        low, high = intervals[form]
        rate_low, rate_high = rate_intervals[form]
        print(f"no agent: {form}/tsh setup time {setup_ratio:.2f}x [{low:.2f}-{high:.2f}] "
              f"(target <= {max_setup:.2f}x) {'ok' if setup_ratio <= max_setup else 'MISSED'}; "
              f"throughput {rate_ratio:.2f}x [{rate_low:.2f}-{rate_high:.2f}] (target >= {min_rate:.2f}x) "
              f"{'ok' if rate_ratio >= min_rate else 'MISSED'}")
    for case in cases:
        setup_ratio = results[case, "tsh"][0] / results[case, "openssh"][0]
        rate_ratio = results[case, "tsh"][1] / results[case, "openssh"][1]
        low, high = intervals[case]
        rate_low, rate_high = rate_intervals[case]
        print(f"{case}: tsh/openssh setup time {setup_ratio:.2f}x [{low:.2f}-{high:.2f}] (target <= 1.10x) "
              f"{'ok' if setup_ratio <= 1.10 else 'MISSED'}; "
              f"throughput {rate_ratio:.2f}x [{rate_low:.2f}-{rate_high:.2f}] (target >= 0.85x) "
              f"{'ok' if rate_ratio >= 0.85 else 'MISSED'}; "
              f"python floor {floors[case] / results[case, 'openssh'][0]:.2f}x")


if __name__ == "__main__":
    main()
