"""Fast variants against the textbook implementations in ``attnbench.plain``, side by side.

    python benchmarks/efficiency.py [--threads N] [--min-run-time S]

Prints forward latency (median of ``torch.utils.benchmark`` runs, same process, same threads)
and peak memory (each implementation in a fresh process, peak resident delta on CPU) with their
ratios against the bounds the project holds the variants to. Exits 1 if a bound is missed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys

import torch

import attnbench
from attnbench.measure.latency import make_step, measure_latency
from attnbench.measure.memory import peak_memory
from attnbench.plain import PLAIN

# (variant, options, input shape, bound on latency ratio, bound on memory ratio)
COMPARISONS = [
    ("local", {"window": 7}, (1, 128, 56, 56), 0.25, 0.25),
    ("nonlocal", {"subsample": False}, (1, 128, 64, 64), None, 0.2),
    ("gsa", {}, (8, 64, 56, 56), 0.5, None),
]


class _Plain(torch.nn.Module):
    """The textbook implementation of ``name``, with the weights of ``module``."""

    def __init__(self, name: str, module: torch.nn.Module):
        super().__init__()
        self.name, self.module = name, module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PLAIN[self.name](self.module, x)


def build(name: str, options: dict, shape: tuple[int, ...], plain: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    module = attnbench.build_variant(name, shape[1], size=max(shape[2:]), **options).eval()
    return (_Plain(name, module) if plain else module), torch.randn(*shape)


def _memory_child(name, options, shape, plain, threads, queue) -> None:
    torch.set_num_threads(threads)
    module, x = build(name, options, shape, plain)
    step = make_step(module, x, "infer")
    step()  # warm-up, so one-time initialisation is not counted
    queue.put(peak_memory(step, "cpu")["peak_mem_bytes"])


def peak_in_fresh_process(name, options, shape, plain, threads) -> int:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(name, options, shape, plain, threads, queue))
    proc.start()
    result = queue.get(timeout=600)
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds of timed runs per implementation")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, CPU, forward (eval, no grad)\n")
    header = f"{'variant':9} {'input':16} {'impl':6} {'latency ms (IQR)':>20} {'peak MiB':>9}"
    print(header + "\n" + "-" * len(header))
    failed = False
    for name, options, shape, lat_bound, mem_bound in COMPARISONS:
        row = {}
        for plain in (False, True):
            module, x = build(name, options, shape, plain)
            lat = measure_latency(make_step(module, x, "infer"), "cpu", batch=shape[0], threads=args.threads,
                                  min_run_time=args.min_run_time)
            mem = peak_in_fresh_process(name, options, shape, plain, args.threads)
            row[plain] = (lat["latency_ms_median"], mem)
            impl = "plain" if plain else "ours"
            print(f"{name:9} {'x'.join(map(str, shape)):16} {impl:6} "
                  f"{lat['latency_ms_median']:>11.2f} ({lat['latency_ms_iqr']:6.2f}) {mem / 2**20:>9.1f}")
        lat_ratio = row[False][0] / row[True][0]
        mem_ratio = row[False][1] / row[True][1]
        checks = []
        for what, ratio, bound in (("latency", lat_ratio, lat_bound), ("memory", mem_ratio, mem_bound)):
            verdict = "" if bound is None else (" <= %.2f ok" % bound if ratio <= bound else " > %.2f MISSED" % bound)
            failed |= bound is not None and ratio > bound
            checks.append(f"{what} ratio {ratio:.3f}{verdict}")
        print(f"{'':9} ours / plain: " + "; ".join(checks) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
