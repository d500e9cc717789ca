"""Latency with ``torch.utils.benchmark``: warm-up and autorange, median and IQR."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.utils.benchmark as tb
from torch import nn

from attnbench.choices import MODES  # noqa: F401  (re-exported: the modes make_step knows)

MIN_TIMED_RUNS = 3  # the fewest timed runs behind a median and an IQR


def make_step(module: nn.Module, x: torch.Tensor, mode: str, *, autocast: torch.dtype | None = None
              ) -> Callable[[], object]:
    """One iteration: ``infer`` is an eval-mode forward without grad; ``train`` is forward + backward.
    With ``autocast``, the forward runs under ``torch.autocast`` to that dtype (the weights keep theirs)."""

    def forward() -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            return module(x)

    if mode == "infer":
        module.eval()

        def infer() -> object:
            with torch.no_grad():
                return forward()

        return infer
    if mode == "train":
        module.train()

        def train() -> object:
            module.zero_grad(set_to_none=True)
            out = forward()
            out.float().sum().backward()
            return out

        return train
    raise ValueError(f"Unknown mode '{mode}'. Available: {', '.join(MODES)}.")


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` followed by a device synchronisation, so that timers see finished work."""
    if device.type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def measure_latency(
    fn: Callable[[], object],
    device: torch.device | str,
    *,
    batch: int,
    threads: int,
    min_run_time: float = 0.5,
) -> dict[str, float | int | bool]:
    """Time ``fn`` with ``Timer.blocked_autorange``.

    At least ``MIN_TIMED_RUNS`` timed runs are taken, however slow the step. Returns median and
    interquartile range in ms, the number of timed runs,
    throughput (``batch`` / median, per second) and whether torch flagged the measurement as
    noisy (IQR above 10 % of the median, or too few runs).
    """
    device = torch.device(device)
    step = synchronized(fn, device)
    step()  # warm-up: allocator, kernels, lazy initialisation
    timer = tb.Timer(stmt="step()", globals={"step": step}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    while len(m.times) < MIN_TIMED_RUNS:  # a case slower than min_run_time: still enough runs for an IQR
        m = tb.Measurement.merge([m, timer.timeit(m.number_per_run)])[0]
    median_ms = m.median * 1e3
    return {
        "latency_ms_median": median_ms,
        "latency_ms_iqr": m.iqr * 1e3,
        "latency_runs": len(m.times) * m.number_per_run,
        "latency_noisy": bool(m.has_warnings),
        "latency_noise_reason": "the runs' spread (IQR) is over 10 % of their median" if m.has_warnings else None,
        "throughput_per_s": batch / m.median,
    }
