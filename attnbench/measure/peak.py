"""The device's achievable matrix-multiply rate, the yardstick for a variant's achieved GFLOP/s.

Measured at most once per machine, device, dtype, thread count and torch version, in about a second,
and remembered in a small cache file (``$XDG_CACHE_HOME/attnbench/matmul_peak.json``, by default under
``~/.cache``), so that no sweep waits for it twice. The product's side doubles from ``FIRST_SIDE`` while
one product of the next side is predicted (8 times the last one's time) to take at most
``CALL_BUDGET_S``, up to ``MAX_SIDE``: a GPU reaches the full side in microseconds, while a device slow
in a dtype (fp16 on most CPUs, tens of seconds per product of side 2048) is measured on the largest
product that fits the budget, which is the rate it achieves, never a wait.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import torch

from attnbench.env import device_name
from attnbench.measure.latency import measure_latency, synchronized

FIRST_SIDE = 64
MAX_SIDE = 2048
CALL_BUDGET_S = 0.1  # the longest one product may take
MIN_RUN_TIME_S = 0.5  # of timed products, at the side chosen
CACHE_NAME = "matmul_peak.json"


def cache_path() -> Path:
    """Where measured rates are remembered."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "attnbench" / CACHE_NAME


def cache_key(device: str, dtype: torch.dtype, threads: int) -> str:
    """What a rate depends on: the machine, the device model, the dtype, the threads and torch."""
    return "|".join([socket.gethostname(), device_name(device), str(dtype).removeprefix("torch."), str(threads),
                     torch.__version__])


def matmul_peak_gflops(device: str, dtype: torch.dtype, threads: int) -> float:
    """GFLOP/s (2 per multiply-add) of a square matrix product on ``device``: the cached rate, or measured
    (:func:`measure_matmul_gflops`) and cached. A cache that cannot be read or written is measured around."""
    path, key = cache_path(), cache_key(device, dtype, threads)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    rate = cached.get(key)
    if isinstance(rate, float) and rate > 0:
        return rate
    rate = measure_matmul_gflops(device, dtype, threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{CACHE_NAME}.{os.getpid()}")
        tmp.write_text(json.dumps({**cached, key: rate}, indent=1, sort_keys=True))
        os.replace(tmp, path)  # several sweeps may write at once: each file is whole
    except OSError:
        pass
    return rate


def measure_matmul_gflops(device: str, dtype: torch.dtype, threads: int) -> float:
    """GFLOP/s of the largest square product, side ``FIRST_SIDE`` doubled up to ``MAX_SIDE``, whose one call
    takes at most ``CALL_BUDGET_S``; median of ``MIN_RUN_TIME_S`` of timed runs."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = FIRST_SIDE
        while True:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            product = synchronized(lambda a=a, b=b: a @ b, torch.device(device))
            product()  # warm-up
            start = time.perf_counter()
            product()
            if n >= MAX_SIDE or 8 * (time.perf_counter() - start) > CALL_BUDGET_S:
                break
            n *= 2
        median_ms = measure_latency(lambda: a @ b, device, batch=1, threads=threads, min_run_time=MIN_RUN_TIME_S)[
            "latency_ms_median"
        ]
    finally:
        torch.set_num_threads(prev)
    return 2 * n**3 / (median_ms * 1e-3) / 1e9
