"""A CPU timing taken while other processes use the cores is flagged noisy, with the reason."""

import subprocess
import sys

import pytest

from attnbench import store
from attnbench.cli import main
from attnbench.measure.load import CpuSample, noise_reasons, other_cores


def test_other_processes_use_is_the_machines_busy_time_less_our_own():
    before, after = CpuSample(10.0, 100.0, 5.0), CpuSample(12.0, 103.5, 6.5)  # 3.5 s busy, 1.5 s ours, in 2 s
    assert other_cores(before, after) == 1.0
    assert other_cores(before, CpuSample(12.0, 101.0, 6.5)) == 0.0  # never below zero (tick rounding)
    assert noise_reasons(0.1, (0.010, 0.011), 2) == []
    assert noise_reasons(1.0, (0.010, 0.011), 2) == ["other processes used 1.00 of 2 cores during the timed runs"]
    assert "speed changed" in noise_reasons(0.0, (0.010, 0.020), 2)[0]


@pytest.mark.slow
def test_a_sweep_timed_while_both_cores_are_busy_is_flagged_in_every_row(tmp_path, capsys):
    db = str(tmp_path / "r.sqlite")
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        code = main(["run", "--scope", "module", "--variants", "conv,nonlocal", "--res", "56,112", "--dim", "8",
                     "--min-run-time", "0.3", "--db", db])
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    err = capsys.readouterr().err
    frame = store.load_results(db)
    assert code == 0 and len(frame) == 4 and frame.latency_noisy.tolist() == [1] * 4
    assert frame.latency_noise_reason.str.contains("other processes used").all()
    assert (frame.other_load_cores > 0.5).all()
    assert err.count("warning: 4 of 4 cases timed while the machine was busy") == 1
