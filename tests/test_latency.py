"""Latency: enough timed runs behind every median."""

import time

from attnbench.measure.latency import MIN_TIMED_RUNS, measure_latency


def test_a_step_slower_than_the_run_time_is_still_timed_three_times():
    calls = []

    def slow() -> None:
        calls.append(1)
        time.sleep(0.05)

    got = measure_latency(slow, "cpu", batch=1, threads=1, min_run_time=0.01)
    assert got["latency_runs"] >= MIN_TIMED_RUNS == 3 and len(calls) >= MIN_TIMED_RUNS + 1  # + the warm-up
    assert got["latency_ms_median"] >= 50
