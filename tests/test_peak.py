"""The device's matmul rate, the yardstick of achieved GFLOP/s: measured in about a second however slow
the device is in a dtype, once per machine (cached), and never a wait before a sweep."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from attnbench import store
from attnbench.measure import peak


@pytest.mark.slow
def test_an_fp16_sweep_on_a_cpu_starts_at_once_and_measures_the_rate_once(tmp_path):
    """fp16 products take tens of seconds on most CPUs at side 2048: the rate comes from a product that
    fits a fraction of a second, and the second sweep reads it from the cache."""
    db = str(tmp_path / "r.sqlite")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "attnbench", "run", "--scope", "module", "--variants", "conv", "--res", "8",
           "--dim", "8", "--dtype", "fp16", "--min-run-time", "0.01", "--threads", "1", "--db", db]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    cached = json.loads((tmp_path / "cache" / "attnbench" / "matmul_peak.json").read_text())
    (key, rate), = cached.items()
    assert "|float16|1|" in key and key.endswith(torch.__version__) and rate > 0
    subprocess.run([*cmd, "--force"], env=env, check=True, capture_output=True, timeout=120)
    assert store.load_results(db).device_peak_gflops.tolist() == [rate]  # the first run's rate, not measured again


def test_the_rate_is_a_product_of_the_largest_side_within_the_budget(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    sides = []
    real = torch.randn

    def randn(*shape, **kwargs):
        sides.append(shape[0])
        return real(*shape, **kwargs)

    monkeypatch.setattr(torch, "randn", randn)
    start = time.perf_counter()
    rate = peak.measure_matmul_gflops("cpu", torch.float16, 1)
    assert time.perf_counter() - start < 30  # about a second; 30 on a loaded machine
    n = sides[-1]
    assert sides[::2] == [peak.FIRST_SIDE * 2**i for i in range(len(sides) // 2)] and n <= peak.MAX_SIDE
    a, b = real(n, n).half(), real(n, n).half()
    a @ b
    start = time.perf_counter()
    a @ b
    one = time.perf_counter() - start  # one product of the chosen side: within budget, so the rate is close
    assert one < 20 * peak.CALL_BUDGET_S
    assert rate > 0.1 * 2 * n**3 / one / 1e9


def test_an_unreadable_cache_is_measured_around_and_rewritten(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "attnbench" / "matmul_peak.json"
    path.parent.mkdir()
    path.write_text("{not json")
    rate = peak.matmul_peak_gflops("cpu", torch.float32, 1)
    assert json.loads(path.read_text()) == {peak.cache_key("cpu", torch.float32, 1): rate}
    monkeypatch.setattr(peak, "measure_matmul_gflops", lambda *a: 1 / 0)  # a second call must not measure
    assert peak.matmul_peak_gflops("cpu", torch.float32, 1) == rate
