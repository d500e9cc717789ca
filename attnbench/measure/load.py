"""Is the machine quiet enough to time on? Other processes' CPU use during a case, and a calibration.

A CPU timing taken while other processes use the cores is slower and more spread than the case
deserves, and nothing in the timing itself says so (a case that takes longer than ``--min-run-time``
has few runs to show its spread). So each CPU case reads the machine's busy time (psutil) before and
after its timed runs and subtracts its own: what remains is other processes' use (and time the
hypervisor gave to other machines, ``steal``), in cores. A short matmul timed before and after
catches a machine whose speed changed during the case (frequency, contention this count misses).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil
import torch

from attnbench.choices import count

OTHER_CORES_LIMIT = 0.25  # other processes' average use during the timed runs, in cores, above which a timing is noisy
CALIBRATION_DRIFT = 1.3  # the calibration's slower / faster time, before against after, above which it is noisy
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")  # guest time is already inside user


@dataclass(frozen=True)
class CpuSample:
    wall_s: float
    busy_s: float  # every core's busy time, all processes
    own_s: float  # this process's CPU time (all its threads)


def sample() -> CpuSample:
    machine = psutil.cpu_times()
    own = psutil.Process().cpu_times()
    return CpuSample(time.monotonic(), sum(getattr(machine, f, 0.0) for f in BUSY_FIELDS), own.user + own.system)


def other_cores(before: CpuSample, after: CpuSample) -> float:
    """Other processes' average CPU use between two samples, in cores."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    return max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s)) / wall


def calibrate(threads: int, repeats: int = 50, trials: int = 3) -> float:
    """Seconds of a fixed fp32 matmul workload (about 3 ms on the reference machine), the fastest of
    ``trials``: a machine busy throughout slows every trial, a momentary hiccup only one."""
    a = torch.ones(160, 160)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a @ a  # warm
        times = []
        for _ in range(trials):
            start = time.perf_counter()
            for _ in range(repeats):
                a @ a
            times.append(time.perf_counter() - start)
        return min(times)
    finally:
        torch.set_num_threads(previous)


def noise_reasons(other: float, calibration: tuple[float, float], cores: int) -> list[str]:
    """Why a CPU timing cannot be trusted, given other processes' use (cores) and the calibration's
    times before and after; empty when it can."""
    reasons = []
    if other > OTHER_CORES_LIMIT:
        reasons.append(f"other processes used {other:.2f} of {count(cores, 'core')} during the timed runs")
    slower, faster = max(calibration), min(calibration)
    if faster > 0 and slower / faster > CALIBRATION_DRIFT:
        reasons.append(f"the machine's speed changed during the case (calibration {calibration[0] * 1e3:.1f} ms "
                       f"before, {calibration[1] * 1e3:.1f} ms after)")
    return reasons
