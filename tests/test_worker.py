"""The harness's workers: warm between cases where asked, replaced after a crash or a hang, and two of
them writing one store at once."""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil

from attnbench import forkserver, store
from attnbench.harness import Worker
from attnbench.interrupt import running
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


def _what_a_case_process_holds(queue) -> None:
    import gc
    import sys

    queue.put((os.getpid(), gc.get_freeze_count(), "attnbench.variants.gsa" in sys.modules,
               "attnbench.models.resnet" in sys.modules))


def test_a_cpu_case_process_is_a_fresh_fork_of_a_warm_server():
    """Each CPU case gets a process of its own (its peak memory is its own), forked from a server that has
    imported the variants and networks and frozen its objects out of the collector, so that the collection
    before a case's peak-memory reading walks the case's own objects only."""
    ctx = forkserver.context()
    assert ctx is not None and forkserver.PRELOAD == ["attnbench.worker"]
    queue = ctx.Queue()
    pids = set()
    for _ in range(2):
        proc = ctx.Process(target=_what_a_case_process_holds, args=(queue,))
        proc.start()
        pid, frozen, variants, networks = queue.get(timeout=300)
        proc.join(60)
        pids.add(pid)
        assert frozen > 10_000 and variants and networks
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_command_that_exits_ends_the_fork_server_it_started(tmp_path):
    """`attnbench run` starts the fork server before it imports torch; a command that exits before the server
    has finished starting (bad options, cases stored already) ends it, rather than leaving it to hold the
    command's output open and a core busy for seconds."""
    code = ("import psutil, time\n"
            "from attnbench import forkserver\n"
            "forkserver.start()\n"
            "time.sleep(0.2)\n"
            "print(*[c.pid for c in psutil.Process().children() if 'forkserver' in ' '.join(c.cmdline())])\n")
    out = tmp_path / "out"
    with open(out, "w") as f:  # a file, not a pipe: the command's exit is not delayed by who else holds it
        assert subprocess.run([sys.executable, "-c", code], stdout=f, timeout=120).returncode == 0
    server = int(out.read_text())  # one server, started by that process

    def alive() -> bool:
        try:
            return running(psutil.Process(server))
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 1  # its start takes seconds: torch's import alone
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive()
