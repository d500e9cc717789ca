"""SIGINT and SIGTERM, sent to real commands in real processes: each ends at once with every process it
started, keeps what it had finished, says so in one line and exits 130 or 143."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from attnbench import store
from attnbench.interrupt import running

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ["run", "--scope", "module", "--variants", "conv,gsa,local", "--res", "48,64,80", "--dim", "16",
         "--min-run-time", "1", "--threads", "1"]


def _rows(db) -> int:
    try:
        return len(store.load_results(db)) if os.path.exists(db) else 0
    except store.StoreError:
        return 0


def interrupt(args, ready, signum, *, group=False, limit=300):
    """Start ``attnbench ARGS``, wait until ``ready()``, send ``signum`` (to its process group, as a terminal's
    Ctrl-C does, with ``group``), and return its exit code, its stderr, the seconds it took to end, and the
    processes it had started that are still running 10 s after it ended."""
    # the signals' default actions, even when the tests run in the background (a shell starts background jobs
    # with SIGINT ignored, and the command would inherit that)
    proc = subprocess.Popen([sys.executable, "-m", "attnbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    start = time.time()
    while not ready():
        assert proc.poll() is None, f"it ended before it could be interrupted: {proc.communicate()[1][-2000:]}"
        assert time.time() - start < limit, "it never got ready"
        time.sleep(0.05)
    started = psutil.Process(proc.pid).children(recursive=True)
    sent = time.time()
    os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)  # its pipes close when every process holding them has ended
    took = time.time() - sent
    deadline = time.time() + 10
    while True:
        alive = [p for p in started if running(p)]
        if not alive or time.time() > deadline:
            return proc.returncode, err, took, alive
        time.sleep(0.1)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "group"), [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, False),
                                                       (signal.SIGINT, 130, True)])
def test_a_signal_ends_a_sweep_and_its_case_processes_keeping_finished_cases(tmp_path, signum, code, group):
    db = str(tmp_path / "r.sqlite")
    rc, err, took, alive = interrupt([*SWEEP, "--db", db], lambda: _rows(db) >= 1, signum, group=group)
    assert rc == code and not alive, (err, alive)
    line = _one_line(err)
    kept = store.load_results(db)
    assert f"interrupted by {signal.Signals(signum).name}; {len(kept)} of 9 cases stored in {db}" in line
    assert 1 <= len(kept) < 9 and set(kept.status) == {"ok"}  # the case cut short is not stored as a failure
    assert took < 30  # the case it was measuring (seconds each) was not waited for


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_training_keeping_its_finished_epochs(tmp_path, signum, code):
    db, out = str(tmp_path / "r.sqlite"), tmp_path / "run"
    args = ["train", "--model", "conv_probe", "--dataset", "digits", "--epochs", "20", "--batch", "64",
            "--db", db, "--out", str(out)]
    rc, err, _, alive = interrupt(args, (out / "checkpoint.pt").exists, signum)
    assert rc == code and not alive, (err, alive)
    line = _one_line(err)
    assert f"seed 0's finished epochs are in {out / 'checkpoint.pt'} and {db}; continue with --resume" in line
    assert 1 <= len(store.load_training(db)) < 20


def test_a_signal_whose_exception_a_del_swallowed_is_raised_again_by_check(monkeypatch, capfd):
    """A signal handled while a ``__del__`` runs (PyTorch's DataLoader shuts down its workers in one, between
    epochs) raises where Python prints 'Exception ignored' and goes on; the training loop's check raises it
    again, so the command ends instead of training on."""
    import threading

    from attnbench import interrupt

    monkeypatch.setattr(interrupt, "_caught", threading.Event())  # the suite's process is not interrupted after

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here, inside __del__

    with interrupt.handled():
        obj = SignalledWhileCollected()
        del obj  # 'Exception ignored in ... __del__': the Interrupted went nowhere
        assert interrupt.caught()
        with pytest.raises(interrupt.Interrupted) as raised:
            interrupt.check()

        def workers_gone():  # a DataLoader after the signal ended its workers
            raise RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly")
            yield

        with pytest.raises(interrupt.Interrupted):
            next(interrupt.checked(workers_gone()))
    assert raised.value.signum == signal.SIGTERM and raised.value.exit_code == 143
    assert "Exception ignored" not in capfd.readouterr().err  # the interrupt in __del__ printed nothing


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "group"), [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, False)])
def test_a_signal_ends_training_that_decodes_images_in_worker_processes(tmp_path, signum, code, group):
    """The DataLoader's workers end with the command (by the signal to their group, or killed by it), and
    PyTorch's check of its workers, which raises when one dies, takes no part in an interrupt."""
    from test_imagefolder import write_tree

    db, out = str(tmp_path / "r.sqlite"), tmp_path / "run"
    args = ["train", "--model", "conv_probe", "--dataset", "imagefolder", "--data-dir",
            str(write_tree(tmp_path / "tree", per_class=(32, 4))), "--image-size", "16", "--workers", "2",
            "--epochs", "100", "--batch", "8", "--db", db, "--out", str(out)]
    rc, err, _, alive = interrupt(args, (out / "checkpoint.pt").exists, signum, group=group)
    assert rc == code and not alive, (err, alive)
    assert "seed 0's finished epochs are in" in _one_line(err) and "Exception" not in err
    assert 1 <= len(store.load_training(db)) < 100


@pytest.mark.slow
def test_ctrl_c_in_a_report_leaves_the_previous_report(tmp_path):
    out = tmp_path / "report"
    rc, err, _, alive = interrupt(["report", "--db", "reports/reference.sqlite", "--out", str(out)],
                                  lambda: out.exists(), signal.SIGINT)
    assert rc == 130 and not alive, err
    assert f"a report is swapped in only when whole: {out} holds the previous one" in _one_line(err)
    assert not (out / "README.md").exists()


def _big_store(path: Path, copies: int = 400) -> int:
    """The reference store with each row ``copies`` times under other case keys (a merge of seconds)."""
    path.write_bytes((ROOT / "reports" / "reference.sqlite").read_bytes())
    with sqlite3.connect(path) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
        chosen = ", ".join("case_key || '#' || n" if c == "case_key" else c for c in cols)
        conn.execute(f"WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < {copies}) "
                     f"INSERT INTO results ({', '.join(cols)}) SELECT {chosen} FROM results, k")
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_merge_leaves_no_output(tmp_path, signum, code):
    source, out = tmp_path / "big.sqlite", tmp_path / "merged.sqlite"
    _big_store(source)
    def merging() -> bool:  # a new output is made under a temporary name beside it, and renamed when whole
        return any(p.name.startswith(".merged.sqlite.") for p in tmp_path.iterdir())

    rc, err, _, alive = interrupt(["merge", str(source), "-o", str(out)], merging, signum)
    assert rc == code and not alive, err
    assert "a merge is all or nothing" in _one_line(err)
    assert not [p for p in tmp_path.iterdir() if "merged" in p.name]  # no store, no temporary one, no -wal, -shm


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "group"), [(signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)])
def test_a_signal_ends_a_local_launch_and_its_tasks_merging_what_they_finished(tmp_path, signum, code, group):
    """SIGTERM to the launching process, or Ctrl-C at a terminal (SIGINT to the tasks as well)."""
    pytest.importorskip("submitit")
    db = tmp_path / "r.sqlite"
    shards = tmp_path / "r-jobs"
    args = [*SWEEP, "--db", str(db), "--launcher", "local", "--jobs", "2"]
    rc, err, took, alive = interrupt(args, lambda: sum(_rows(s) for s in shards.glob("*.sqlite")) >= 1,
                                     signum, group=group)
    assert rc == code and not alive, (err, alive)
    line = _one_line(err)
    merged = store.load_results(db)
    rows = "1 new row" if len(merged) == 1 else f"{len(merged)} new rows"
    assert f"what its tasks finished is merged into {db} ({rows})" in line
    assert 1 <= len(merged) < 9 and set(merged.status) == {"ok"}
