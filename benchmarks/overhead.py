"""The harness's cost per case beyond its timed runs, on tiny cases where that cost is all there is to see.

    python benchmarks/overhead.py [--rounds 2] [--min-run-time 0.5] [--threads N] [--against CHECKOUT]

Runs ``attnbench run`` cold (a new command, and an empty cache, so the device's matmul rate is measured
too) on 15 module cases: conv, gsa, local, axial and nonlocal at sides 16, 24 and 32 with 16 channels, each
case in a fresh process of its own as every CPU case is. Per run it prints the wall time of the whole
command, the CPU time of every process of the sweep (the command, its fork server and each case's process,
all reaped here as their subreaper), the load average, and per case: the case's time from its process's
start to its answer (``wall_s``) less ``--min-run-time``, the median over the cases and the sweep's wall
time per case less ``--min-run-time``. On a busy machine the wall times grow with the other processes'
load; the CPU time much less. ``--against`` runs the same sweep with another checkout of attnbench (its
``attnbench`` package first on ``PYTHONPATH``), alternating with this one, and prints the ratios.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = ["--scope", "module", "--variants", "conv,gsa,local,axial,nonlocal", "--res", "16,24,32", "--dim", "16"]
CASES = 15
PR_SET_CHILD_SUBREAPER = 36  # prctl: orphaned descendants become this process's children, reaped (and counted) here


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap_orphans() -> None:
    """Wait for the sweep's fork server (and multiprocessing's resource tracker), which outlive the command by
    moments, so that their CPU time, their cases' included, is counted."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def sweep(checkout: Path | None, args: argparse.Namespace) -> dict:
    """One cold run of the sweep: its wall and CPU seconds and its cases' wall_s."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "r.sqlite"
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        if checkout is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [sys.executable, "-m", "attnbench", "run", *SWEEP, "--db", str(db), "--min-run-time",
               str(args.min_run_time)] + (["--threads", str(args.threads)] if args.threads else [])
        load = os.getloadavg()[0]
        cpu, start = children_cpu_s(), time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - start
        reap_orphans()
        cpu = children_cpu_s() - cpu
        if done.returncode != 0:
            sys.exit(f"the sweep failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        from attnbench import store

        frame = store.load_results(db)
        if len(frame) != CASES or set(frame.status) != {"ok"}:
            sys.exit(f"the sweep stored {len(frame)} cases, statuses {sorted(set(frame.status))}")
        return {"wall_s": wall, "cpu_s": cpu, "load": load, "case_wall_s": frame.wall_s.tolist()}


def show(name: str, run: dict, min_run_time: float) -> None:
    beyond = statistics.median(w - min_run_time for w in run["case_wall_s"])
    print(f"{name:10} {run['wall_s']:9.2f} {run['cpu_s']:9.2f} {run['wall_s'] / CASES - min_run_time:16.3f} "
          f"{beyond:17.3f} {run['load']:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="cold runs of the sweep (each checkout)")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="attnbench run's --min-run-time (s)")
    parser.add_argument("--threads", type=int, default=0, help="attnbench run's --threads (default: its own)")
    parser.add_argument("--against", type=Path, help="another checkout of attnbench, run alternately")
    args = parser.parse_args()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("cannot become the sweep's subreaper (Linux only): its processes' CPU time would be lost")
    sides = {"this": None} | ({"against": args.against.resolve()} if args.against else {})
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    print(f"{CASES} cases, --min-run-time {args.min_run_time:g}; CPU time: every process of the sweep, all threads\n"
          f"{'checkout':10} {'wall (s)':>9} {'CPU (s)':>9} {'wall/case-mrt (s)':>16} {'case wall_s-mrt':>17} "
          f"{'load':>6}")
    for _ in range(args.rounds):
        for name, checkout in sides.items():
            runs[name].append(sweep(checkout, args))
            show(name, runs[name][-1], args.min_run_time)
    for name in sides:
        best = min(runs[name], key=lambda r: r["wall_s"])
        print(f"{name}: fastest run {best['wall_s']:.2f} s wall, {best['cpu_s']:.2f} s CPU; "
              f"median CPU {statistics.median(r['cpu_s'] for r in runs[name]):.2f} s")
    if args.against:
        for key, what in (("wall_s", "wall"), ("cpu_s", "CPU")):
            ours, theirs = (statistics.median(r[key] for r in runs[n]) for n in ("this", "against"))
            print(f"{what} time, this / against: {ours / theirs:.2f} (medians {ours:.2f} / {theirs:.2f} s)")


if __name__ == "__main__":
    main()
