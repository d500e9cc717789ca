"""Fast variants against the textbook implementations in ``attnbench.plain``, side by side.

    python benchmarks/efficiency.py [--threads N] [--min-run-time S]

Prints forward latency (``torch.utils.benchmark`` medians, the two implementations alternating
in one process with the same threads)
and peak memory (each implementation in a fresh process, peak resident delta on CPU) with their
ratios against the bounds the project holds the variants to. Exits 1 if a bound is missed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys

import torch

import attnbench
from attnbench.env import cpu_model
from attnbench.measure.latency import make_step, measure_latency
from attnbench.measure.memory import peak_memory

# (variant, options, input shape, bound on latency ratio, bound on memory ratio)
COMPARISONS = [
    ("local", {"window": 7}, (1, 128, 56, 56), 0.25, 0.25),
    ("neighborhood", {"window": 7}, (1, 128, 56, 56), 0.25, 0.25),
    ("nonlocal", {"subsample": False}, (1, 128, 64, 64), None, 0.2),
    ("gsa", {}, (8, 64, 56, 56), 0.5, None),
]


class _Plain(torch.nn.Module):
    """The textbook implementation of ``name``, with the weights of ``module``."""

    def __init__(self, name: str, module: torch.nn.Module):
        super().__init__()
        self.name, self.module = name, module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attnbench.get_impl(self.name, "plain").forward(self.module, x)


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
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timed runs per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per implementation")
    parser.add_argument("--only", default=None, help="comma-separated variants to compare (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, CPU ({cpu_model()}), forward (eval, no grad); "
          f"latency: median over {args.rounds} alternating rounds of torch.utils.benchmark medians\n")
    header = f"{'variant':12} {'input':16} {'impl':6} {'latency ms (range of rounds)':>25} {'peak MiB':>9}"
    print(header + "\n" + "-" * len(header))
    failed = False
    for name, options, shape, lat_bound, mem_bound in COMPARISONS:
        if args.only and name not in args.only.split(","):
            continue
        impls = {impl: build(name, options, shape, impl == "plain") for impl in ("ours", "plain")}
        steps = {impl: make_step(module, x, "infer") for impl, (module, x) in impls.items()}
        # alternate the two implementations, so that load on a shared machine hits both alike
        medians: dict[str, list[float]] = {impl: [] for impl in impls}
        for _ in range(args.rounds):
            for impl, step in steps.items():
                lat = measure_latency(step, "cpu", batch=shape[0], threads=args.threads,
                                      min_run_time=args.min_run_time)
                medians[impl].append(lat["latency_ms_median"])
        result = {}
        for impl in impls:
            ms = statistics.median(medians[impl])
            mem = peak_in_fresh_process(name, options, shape, impl == "plain", args.threads)
            result[impl] = (ms, mem)
            spread = f"{min(medians[impl]):.2f}-{max(medians[impl]):.2f}"
            print(f"{name:12} {'x'.join(map(str, shape)):16} {impl:6} {ms:>9.2f} ({spread:>13}) {mem / 2**20:>9.1f}")
        checks = []
        for what, i, bound in (("latency", 0, lat_bound), ("memory", 1, mem_bound)):
            ratio = result["ours"][i] / result["plain"][i]
            verdict = "" if bound is None else f" <= {bound:.2f} ok" if ratio <= bound else f" > {bound:.2f} MISSED"
            failed |= bound is not None and ratio > bound
            checks.append(f"{what} ratio {ratio:.3f}{verdict}")
        print(f"{'':12} ours / plain: " + "; ".join(checks) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
