"""What the reference accuracy table costs here: one training step of every variant's probe at the width
benchmarks/accuracy.sh trains it at (--match params against the 16-channel conv probe), batch 64, 32 x 32.

Each step is a forward, a backward and an SGD update, timed round-robin over the variants (one step of
each in turn, so load from other processes falls on all of them alike), after a warm-up step. It prints
the least disturbed step's time (the fastest of the timed ones), wall-clock and CPU (the process's, all
threads: on a busy machine the wall time grows with the other processes' load, the CPU time much less;
run it with OMP_NUM_THREADS=1 for a CPU time that contention hardly changes), and what accuracy.sh's
budgets come to at the wall-clock time: a run of 1500 steps on longrange and 600 on digits, and the whole table (three
seeds per setup plus two runs' worth of steps choosing the rate, non-local twice), in hours.

    python benchmarks/probe_steps.py [--steps 5] [--variants conv,gsa]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from attnbench.models import build_model
from attnbench.registry import list_variants
from attnbench.train import match_width

BUDGETS = {"longrange": (1500, 2), "digits": (600, 10)}  # accuracy.sh's steps, and the data set's classes
RUNS_PER_SETUP = 3 + 2  # three seeds, and --lr auto's four rates at half the run's steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per probe")
    parser.add_argument("--variants", default=",".join(list_variants()))
    args = parser.parse_args()
    variants = args.variants.split(",")
    torch.manual_seed(0)
    probes = {}
    for v in variants:
        width, params, _ = match_width(f"{v}_probe", "conv_probe", "params", num_classes=2)
        net = build_model(f"{v}_probe", num_classes=2, width=width, image_size=32)
        probes[v] = (width, params, net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 2, (64,))

    def step(v: str) -> tuple[float, float]:
        _, _, net, opt = probes[v]
        start, cpu = time.perf_counter(), time.process_time()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start, time.process_time() - cpu

    times = {v: [] for v in variants}
    for v in variants:
        step(v)  # warm-up
    for _ in range(args.steps):
        for v in variants:
            times[v].append(step(v))
    print(f"{'probe':18} {'width':>6} {'params':>7} {'ms/step':>8} {'CPU ms/step':>12} {'longrange run (min)':>20} "
          f"{'digits run (min)':>17} {'table share (h)':>16}")
    total = 0.0
    for v in variants:
        width, params, _, _ = probes[v]
        s = min(t for t, _ in times[v])
        cpu = min(c for _, c in times[v])
        runs = {name: steps * s / 60 for name, (steps, _) in BUDGETS.items()}
        setups = 2 if v == "nonlocal" else 1
        hours = setups * RUNS_PER_SETUP * sum(runs.values()) / 60
        total += hours
        print(f"{v + '_probe':18} {width:6g} {params:7,} {1000 * s:8.0f} {1000 * cpu:12.0f} "
              f"{runs['longrange']:20.1f} {runs['digits']:17.1f} {hours:16.2f}")
    print(f"\nthe whole table: {total:.1f} h at most (runs that plateau stop earlier); "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
