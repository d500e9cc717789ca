"""The harness's workers: warm between cases where asked, replaced after a crash or a hang, and two of
them writing one store at once."""

import os
import signal
import threading
import time

from attnbench import store
from attnbench.harness import Worker
from attnbench.record import Case, Record

SMALL = Case("module", "conv", "", 8, 1, 8, "fp32", "cpu", "infer", 1, "native")
SLOW = Case("model", "conv", "resnet50", 224, 4, 0, "fp32", "cpu", "infer", 1, "native",
            model="resnet50")  # seconds per run


def test_a_warm_worker_measures_case_after_case_in_one_process():
    with Worker("cpu", reuse=True) as worker:
        first, _ = worker.run(SMALL, timeout=120, min_run_time=0.01)
        pid = worker.pid
        second, env = worker.run(SMALL, timeout=120, min_run_time=0.01)
        assert first.status == second.status == "ok" and worker.pid == pid and env.device_name
    with Worker("cpu", reuse=False) as worker:  # CPU cases by default: a fresh process each
        worker.run(SMALL, timeout=120, min_run_time=0.01)
        assert worker.pid is None


def test_a_worker_killed_mid_case_loses_only_that_case():
    with Worker("cpu", reuse=True) as worker:
        worker.run(SMALL, timeout=120, min_run_time=0.01)
        pid = worker.pid
        killer = threading.Timer(3.0, os.kill, (pid, signal.SIGKILL))
        killer.start()
        killed, _ = worker.run(SLOW, timeout=120, min_run_time=30)
        killer.join()
        assert killed.status == "killed" and "SIGKILL" in killed.reason
        after, _ = worker.run(SMALL, timeout=120, min_run_time=0.01)  # a fresh worker takes over
        assert after.status == "ok" and worker.pid not in (None, pid)


def test_a_hung_case_times_out_and_the_worker_is_replaced():
    with Worker("cpu", reuse=True) as worker:
        worker.run(SMALL, timeout=120, min_run_time=0.01)
        pid = worker.pid
        start = time.monotonic()
        hung, _ = worker.run(SLOW, timeout=2, min_run_time=30)
        assert hung.status == "timeout" and time.monotonic() - start < 10  # killed, not waited for
        after, _ = worker.run(SMALL, timeout=120, min_run_time=0.01)
        assert after.status == "ok" and worker.pid != pid


def test_two_workers_write_one_store_at_once(tmp_path):
    db = str(tmp_path / "r.sqlite")
    cases = [Case("module", v, "", r, 1, 8, "fp32", "cpu", "infer", 1, i)
             for v, i in (("conv", "native"), ("nonlocal", "sdpa")) for r in (8, 12, 16)]
    errors = []

    def measure(mine):
        try:
            with Worker("cpu", reuse=True) as worker, store.Writer(db) as writer:
                for case in mine:
                    measurement, env = worker.run(case, timeout=120, min_run_time=0.01)
                    writer.write(Record(case, measurement, env, "r"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=measure, args=(cases[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    frame = store.load_results(db)
    assert not errors and sorted(frame.case_key) == sorted(c.key for c in cases) and set(frame.status) == {"ok"}


def test_a_network_without_one_logit_per_class_is_an_error_not_a_measurement(monkeypatch):
    import torch

    import attnbench.models
    from attnbench.harness import measure_case

    real = attnbench.models.build_model
    monkeypatch.setattr(attnbench.models, "build_model",
                        lambda *args, **kwargs: torch.nn.Sequential(real(*args, **kwargs), torch.nn.Flatten(0)))
    case = Case("model", "conv", "resnet26", 32, 2, 0, "fp32", "cpu", "infer", 1, "native", model="resnet26")
    measured = measure_case(case, min_run_time=0.01)
    assert measured.status == "error" and measured.reason == "the network's output has shape (2000,), not (2, 1000)"
    assert measured.macs is None and measured.latency_ms_median is None
    monkeypatch.setattr(attnbench.models, "build_model", real)
    assert measure_case(case, min_run_time=0.01).status == "ok"
