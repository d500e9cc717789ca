"""The device's achievable matrix-multiply rate, the yardstick for a variant's achieved GFLOP/s."""

from __future__ import annotations

import torch

from attnbench.measure.latency import measure_latency


def matmul_peak_gflops(device: str, dtype: torch.dtype, threads: int, n: int = 2048) -> float:
    """GFLOP/s (2 per multiply-add) of an ``n`` x ``n`` x ``n`` matrix product, median of timed runs."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        median_ms = measure_latency(lambda: a @ b, device, batch=1, threads=threads, min_run_time=0.3)[
            "latency_ms_median"
        ]
    finally:
        torch.set_num_threads(prev)
    return 2 * n**3 / (median_ms * 1e-3) / 1e9
