"""The command line: sweeps end to end, every bad input, interruption and SIGKILL."""

import importlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import attnbench
from attnbench import store
from attnbench.cli import main
from attnbench.console import WHY
from attnbench.record import Record

FAST = ["--min-run-time", "0.01", "--threads", "1"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_variants_and_models(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in attnbench.list_variants():
        assert f"  {name}: " in out
    assert "gsa_resnet50" in out and "axial_deeplab_26s" in out and "arXiv 2010.03019" in out


@pytest.mark.slow
def test_module_sweep_stores_every_case_and_resumes(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    args = ["run", "--scope", "module", "--variants", "gsa,conv", "--res", "8,12", "--dim", "16", "--db", db, *FAST]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "gsa" in out and "results in" in out
    frame = store.load_results(db)
    assert len(frame) == 4 and set(frame.status) == {"ok"}
    for r in frame.itertuples():
        m = attnbench.build_variant(r.variant, 16, size=r.res)
        assert r.macs == attnbench.count_macs(m, torch.randn(1, 16, r.res, r.res))
        assert r.latency_ms_median > 0 and r.peak_mem_bytes is not None and r.threads == 1
        assert r.throughput_per_s == pytest.approx(1000 / r.latency_ms_median)
        assert r.device_name and r.torch_version == torch.__version__
    run_ids = set(frame.run_id)
    assert run_cli(capsys, *args)[0] == 0
    assert set(store.load_results(db).run_id) == run_ids  # nothing measured again
    assert run_cli(capsys, *args, "--force")[0] == 0
    again = store.load_results(db)
    assert len(again) == 4 and not set(again.run_id) & run_ids


@pytest.mark.slow
def test_implementations_are_swept_side_by_side(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    code, out, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "gsa,local,conv", "--res", "8",
                           "--dim", "16", "--impl", "auto,plain,local=flex", "--mode", "infer,train", "--db", db, *FAST)
    assert code == 0 and "local/flex " in out and "gsa/plain " in out  # the printed case names its implementation
    frame = store.load_results(db)
    got = {(r.variant, r.impl, r["mode"]): r.status for _, r in frame.iterrows()}
    assert got == {
        ("gsa", "pixelmajor", "infer"): "ok", ("gsa", "plain", "infer"): "ok",
        ("gsa", "pixelmajor", "train"): "ok", ("gsa", "plain", "train"): "ok",
        ("local", "halo", "infer"): "ok", ("local", "plain", "infer"): "ok", ("local", "flex", "infer"): "ok",
        ("local", "halo", "train"): "ok", ("local", "plain", "train"): "ok", ("local", "flex", "train"): "skipped",
        ("conv", "native", "infer"): "ok", ("conv", "native", "train"): "ok",
    }
    ok = frame[frame.status == "ok"]
    for variant, g in ok.groupby("variant"):
        assert g.macs.nunique() == 1, f"{variant}: the MACs are the mechanism's, whatever the implementation"


def test_json_output(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "conv", "--res", "8", "--dim", "8",
                           "--db", str(tmp_path / "r.sqlite"), "--json", *FAST)
    rows = json.loads(out)
    assert code == 0 and rows[0]["variant"] == "conv" and rows[0]["status"] == "ok"


def test_a_failing_case_does_not_lose_the_others(tmp_path):
    from attnbench.harness import run_cases
    from attnbench.record import Case

    db = str(tmp_path / "r.sqlite")
    good = Case("module", "conv", "", 8, 1, 8, "fp32", "cpu", "infer", 1, "native")
    bad = Case("module", "gsa", "", 8, 1, 8, "fp32", "cpu", "infer", 1, "no-such-impl")  # fails in its process
    run_cases([bad, good], db, min_run_time=0.01)
    frame = store.load_results(db).set_index("variant")
    assert frame.loc["gsa", "status"] == "error" and "no-such-impl" in frame.loc["gsa", "reason"]
    assert frame.loc["conv", "status"] == "ok"


def test_a_sweep_exits_1_when_a_case_failed_or_none_was_measured():
    """A script running sweeps (set -e, a CI job) learns that one broke: exit code 1 and one line on standard error
    when a case failed (error or killed), or when none was measured; cases that did not fit or finish beside
    measured ones are what a sweep over sides expects (exit code 0)."""
    import pandas as pd

    from attnbench.console import sweep_verdict

    def verdict(*statuses):
        return sweep_verdict(pd.DataFrame({"status": statuses, "latency_noise_reason": [None] * len(statuses)}))

    assert verdict("ok", "oom", "timeout", "skipped") == ([], 0)
    assert verdict("ok", "error", "error") == ([f"attnbench run: 2 of 3 cases failed (error 2, ok 1); {WHY}, and "
                                                "every other case's result is stored."], 1)
    assert verdict("ok", "killed")[1] == 1 and verdict("killed")[0][0].startswith("attnbench run: 1 of 1 case failed")
    assert verdict("oom", "timeout") == ([f"attnbench run: no case was measured (oom 1, timeout 1); {WHY}."], 1)
    lines, code = sweep_verdict(pd.DataFrame({"status": ["ok", "ok"], "latency_noise_reason": [
        "other processes used 0.90 of 2 cores during the timed runs", None]}))
    assert code == 0 and lines == ["attnbench run: warning: 1 of 2 cases timed while the machine was busy (see "
                                   "latency_noise_reason); for stable numbers run nothing else meanwhile, or pin the "
                                   "sweep with --threads and taskset, and measure again with --force."]


def test_every_variant_runs_on_a_one_pixel_map(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    code, _, _ = run_cli(capsys, "run", "--scope", "module", "--res", "1", "--dim", "16", "--db", db, *FAST)
    assert code == 0 and set(store.load_results(db).status) == {"ok"}


def test_a_case_that_cannot_fit_is_skipped_with_its_reason(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    # axial logits at 4096^2 need terabytes; predicted without allocating them
    code, _, err = run_cli(capsys, "run", "--scope", "module", "--variants", "axial", "--res", "4096", "--dim", "16",
                           "--db", db, *FAST)
    row = store.load_results(db).iloc[0]
    assert row.status == "skipped" and "exceeds" in row.reason and row.predicted_mem_bytes > 2**40
    assert code == 1 and err.endswith(f"attnbench run: no case was measured (skipped 1); {WHY}.\n")


def test_a_case_over_its_time_limit_times_out(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    code, _, _ = run_cli(capsys, "run", "--variants", "conv", "--res", "224", "--timeout", "0.05", "--db", db, *FAST)
    row = store.load_results(db).iloc[0]
    assert code == 1 and row.status == "timeout"  # nothing was measured
    # the same limit again: the stored time-out stands; a longer one retries it, and the case is measured
    run_cli(capsys, "run", "--variants", "conv", "--res", "224", "--timeout", "0.05", "--db", db, *FAST)
    assert store.load_results(db).run_id.tolist() == [row.run_id]
    run_cli(capsys, "run", "--variants", "conv", "--res", "224", "--timeout", "300", "--db", db, *FAST)
    again = store.load_results(db)
    assert len(again) == 1 and again.status.iloc[0] == "ok" and again.run_id.iloc[0] != row.run_id


def test_retry_failed_measures_stored_failures_again(capsys, tmp_path):
    from attnbench.env import environment
    from attnbench.record import Measurement, Record
    from attnbench.sweep import Subject, expand

    db = str(tmp_path / "r.sqlite")
    case = expand(subjects=[Subject("conv")], res=[8], batch=[1], dims=[8], dtypes=["fp32"], devices=["cpu"],
                  modes=["infer"], scope="module", threads=1)[0]
    store.write(db, Record(case, Measurement("error", "RuntimeError: from an earlier run"), environment("cpu"), "old"))
    args = ["run", "--scope", "module", "--variants", "conv", "--res", "8", "--dim", "8", "--db", db, *FAST]
    run_cli(capsys, *args)
    assert store.load_results(db).run_id.tolist() == ["old"]  # an error is this code's answer
    run_cli(capsys, *args, "--retry-failed")
    frame = store.load_results(db)
    assert frame.status.tolist() == ["ok"] and frame.run_id.tolist() != ["old"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants", "gssa"],
         "Unknown variant 'gssa'. Available: axial, conv, efficient, gsa, local, mhsa, neighborhood, nonlocal, "
         "window. Did you mean 'gsa'?"),
        (["--res", "0"], "resolution 0 must be at least 1"),
        (["--res", "-1"], "resolution -1 must be at least 1"),
        (["--res", "abc"], "resolution 'abc' is not a whole number"),
        (["--res", "3.5"], "resolution '3.5' is not a whole number"),
        (["--batch", "0"], "batch 0 must be at least 1"),
        (["--scope", "module", "--variants", "gsa", "--dim", "12"], "dim must be divisible by heads=8"),
        (["--dtype", "fp64"], "Unknown dtype 'fp64'"),
        (["--shard", "3/2"], "shard 3/2 is out of range"),
        (["--shard", "x"], "shard 'x' must be i/n"),
        (["--mode", "fast"], "Unknown mode 'fast'"),
        (["--timeout", "0"], "must be a positive number"),
        (["--threads", "1,2"], "threads takes one value, not the list '1,2'"),
        (["--threads", "100000"], "Invalid threads=100000: at most 4 per core"),
        (["--arch", "resnet7"], "Unknown architecture 'resnet7'. Available: probe, resnet26, resnet38, resnet50, "
                                "resnet101"),
        (["--variants", "gsa,conv", "--impl", "flx"], "Invalid --impl flx: no variant of this sweep has it"),
        (["--variants", "gsa", "--impl", "local=flex"], "'local' is not a variant of this sweep (gsa)"),
        (["--variants", "local", "--impl", "local=flx"], "Unknown implementation of variant 'local': 'flx'"),
        (["--variants", "gsa,local", "--opt", "foo=1"], "no variant of this sweep has an option 'foo'"),
        (["--variants", "gsa", "--opt", "size=3"], "size is set by the sweep"),
        (["--variants", "gsa", "--opt", "local.window=3"], "'local' is not a variant of this sweep (gsa)"),
        (["--variants", "gsa", "--opt", "gsa.window=3"], "no variant of this sweep has an option 'window'"),
        (["--variants", "gsa", "--opt", "span=2"],
         "--opt for gsa_resnet50 at width 1, whose gsa layers have 64, 128, 256, 512 channels: Invalid span=2"),
        (["--scope", "module", "--variants", "gsa", "--dim", "16", "--opt", "heads=3"],
         "--dim 16 for variant 'gsa': Invalid dim=16: dim must be divisible by heads=3"),
        (["--variants", "gsa", "--opt", "span"], "options are KEY=VALUE"),
        # values of the wrong type or beyond any map are refused before anything runs, not error rows
        (["--variants", "gsa", "--opt", "span=nan"], "Invalid span=nan: span must be a whole number (or none)."),
        (["--variants", "gsa", "--opt", "heads=2.0"], "Invalid heads=2.0: heads must be a whole number."),
        (["--variants", "gsa", "--opt", "content=1"], "Invalid content=1: content must be true or false."),
        (["--variants", "axial", "--opt", "span=100000001"],
         "Invalid span=100000001: wider than 447 pixels, all that a map of side 224 (the sweep's largest) has"),
        (["--scope", "module", "--variants", "local", "--res", "8,16", "--opt", "window=33"],
         "Invalid window=33: wider than 31 pixels, all that a map of side 16"),
        (["--scope", "module", "--variants", "local", "--res", "2", "--opt", "window=9"],
         "Invalid window=9: wider than 7 pixels"),  # its default, 7, runs on any map
        (["--variants", "gsa", "--opt", "heads="], "Invalid --opt heads=: give heads a value (KEY=VALUE)."),
        (["--res", "8," + "9" * 20], "resolution 99999999999999999999 is more than a store holds (at most 2^63 - 1)"),
        (["--timeout", "1e10"], "a case's time limit is more than 0 and at most 604800 s (a week), not 1e+10 s"),
        (["--device", "cpu:3"], "unsupported device 'cpu:3'; use cpu, cuda or cuda:N"),  # a CPU has no index
        (["--device", "cpu,cpu:0"], "unsupported device 'cpu:0'; use cpu, cuda or cuda:N"),
        (["--json", "--pivot"], "argument --pivot: not allowed with argument --json"),  # JSON had dropped the grid
        pytest.param(["--launcher", "slurm"], 'cannot start: Could not detect "srun"',
                     marks=pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has Slurm")),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(capsys, tmp_path, args, message):
    code, out, err = run_cli(capsys, "run", "--db", str(tmp_path / "r.sqlite"), *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


PROBE_WIDTHS = "probe widths are multiples of 1/16 (one channel), at least 0.5 (8 channels); nearest:"


@pytest.mark.parametrize("args, message", [
    # a network's variant options are checked at the channels of its layers: 16 in a probe at width 1, where
    # 32 heads were a case stored as an error
    (["--model", "window_probe", "--opt", "heads=32"], "--opt for window_probe at width 1, whose window layers have "
     "16 channels: Invalid dim=16: dim must be divisible by heads=32 (nearest valid: 32)."),
    (["--variants", "gsa", "--arch", "probe", "--width", "1,2", "--opt", "heads=3"],
     "--opt for gsa_probe at width 1, whose gsa layers have 16 channels: Invalid dim=16: dim must be divisible by "
     "heads=3 (nearest valid: 15)."),
    (["--variants", "gsa", "--opt", "heads=3"], "--opt for gsa_resnet50 at width 1, whose gsa layers have 64, 128, "
     "256, 512 channels: Invalid dim=64: dim must be divisible by heads=3 (nearest valid: 63)."),
    # a probe's width gives it exactly width x 16 channels, or it is refused: it was clamped to 8 and truncated
    (["--model", "conv_probe", "--width", "0.001"], f"conv_probe at width 0.001 would have 0.016 channels: "
     f"{PROBE_WIDTHS} 0.5."),
    (["--model", "conv_probe", "--width", "1e-9"], f"conv_probe at width 1e-09 would have 1.6e-08 channels: "
     f"{PROBE_WIDTHS} 0.5."),
    (["--variants", "conv,gsa", "--arch", "probe", "--width", "0.5,0.55"],
     f"conv_probe at width 0.55 would have 8.8 channels: {PROBE_WIDTHS} 0.5, 0.5625."),
    (["--variants", "local", "--width", "0.125"], "local_resnet50 at width 0.125: Invalid dim=8 with heads=8: the "
     "head width dim/heads must be even (its halves hold the row and column embeddings)."),
])
def test_a_networks_width_and_options_are_refused_at_its_channels_before_anything_is_made(capsys, tmp_path, args,
                                                                                            message):
    code, out, err = run_cli(capsys, "run", "--res", "16", "--db", str(tmp_path / "r.sqlite"), *args)
    assert (code, out, err) == (2, "", f"attnbench run: {message}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--device", "cuda", "--db", str(tmp_path / "r.sqlite"))
    assert code == 2 and "no CUDA device" in err and err.count("\n") == 1


def test_bad_stores(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "run", "--db", str(blocker / "r.sqlite"))
    assert code == 2 and "is not a directory" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "run", "--db", str(blocker / "sub" / "r.sqlite"))
    assert code == 2 and "Cannot create the store" in err and "Not a directory" in err and err.count("\n") == 1
    notdb = tmp_path / "not.sqlite"
    notdb.write_text("plain text " * 200)
    code, _, err = run_cli(capsys, "run", "--db", str(notdb))
    assert code == 2 and "is not a usable results store" in err
    newer = tmp_path / "newer.sqlite"
    store.open_store(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    for args in (["run", "--db", str(newer)], ["export", "--db", str(newer)]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "schema version 99" in err


def test_export_and_merge(capsys, tmp_path):
    a, b, out = (str(tmp_path / n) for n in ("a.sqlite", "b.sqlite", "all.sqlite"))
    for db, res in ((a, "8"), (b, "8,12")):
        assert run_cli(capsys, "run", "--scope", "module", "--variants", "conv", "--res", res, "--dim", "8",
                       "--db", db, *FAST)[0] == 0
    code, text, _ = run_cli(capsys, "merge", a, b, "-o", out)
    assert code == 0 and "2 new rows" in text
    code, csv, _ = run_cli(capsys, "export", "--db", out, "--format", "csv")
    assert code == 0 and csv.count("\n") == 3 and csv.startswith("case_key,")
    code, md, _ = run_cli(capsys, "export", "--db", out, "--format", "md")
    assert code == 0 and md.startswith("| case_key")
    code, csv, _ = run_cli(capsys, "export", "--db", out, "--columns", "res,variant", "--where", "res>8")
    assert code == 0 and csv.splitlines() == ["res,variant", "12,conv"]
    code, _, err = run_cli(capsys, "export", "--db", out, "--where", "colour=red")
    assert code == 2 and err.startswith("attnbench export: Unknown column 'colour'") and err.count("\n") == 1
    # -o naming a store (its own, say) is refused: the CSV replaced every row
    before = {p: open(p, "rb").read() for p in (a, out)}
    for target in (out, a):
        code, _, err = run_cli(capsys, "export", "--db", out, "-o", target)
        assert code == 2 and err == (f"attnbench export: cannot write {target}: it is a results store, which this "
                                     "never replaces; name another file.\n")
    assert {p: open(p, "rb").read() for p in (a, out)} == before


def test_export_summary_columns_derive_from_the_stored_ones(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    assert run_cli(capsys, "run", "--scope", "module", "--variants", "conv,gsa", "--res", "8,12", "--dim", "8",
                   "--batch", "1,2", "--db", db, *FAST)[0] == 0
    every = store.load_results(db)
    code, text, _ = run_cli(capsys, "export", "--db", db, "--columns", "summary", "--where", "res>8")
    summary = pd.read_csv(io.StringIO(text))
    rows = every[every.res > 8].reset_index(drop=True)
    assert code == 0 and list(summary.columns) == SUMMARY and len(summary) == len(rows) == 4
    assert summary.network.tolist() == rows.variant.tolist() and (summary.side == 12).all()
    assert summary.batch.tolist() == rows.batch.tolist() and summary.dtype.tolist() == rows.dtype.tolist()
    # samples per second from the step time and the batch; GMACs per sample from the whole batch's MACs
    assert summary.samples_per_s.tolist() == pytest.approx((1e3 * rows.batch / rows.latency_ms_median).tolist(),
                                                           rel=1e-3)
    assert summary.gmacs_per_sample.tolist() == pytest.approx((rows.macs / rows.batch / 1e9).tolist(), rel=1e-3)
    assert summary.params.tolist() == rows.params.tolist()
    assert summary.peak_mem_mib.tolist() == pytest.approx((rows.peak_mem_bytes / 2**20).tolist(), rel=1e-3)
    code, text, _ = run_cli(capsys, "export", "--db", db, "--columns", "all")
    assert code == 0 and pd.read_csv(io.StringIO(text)).columns.tolist() == store.NAMES
    code, _, err = run_cli(capsys, "export", "--db", db, "--columns", "summary,res")
    assert code == 2 and err.startswith("attnbench export: --columns summary stands alone") and err.count("\n") == 1


def test_training_runs_are_exported(capsys, tmp_path):
    from attnbench.record import Epoch

    db = str(tmp_path / "r.sqlite")
    for run_id, epoch, top1 in (("a", 1, 40.0), ("a", 2, 55.5), ("b", 1, 30.0)):
        store.write_training(db, Epoch(run_id=run_id, epoch=epoch, epochs=2, model="gsa_probe", dataset="digits",
                                       width=0.5, seed=0 if run_id == "a" else 1, top1_pct=top1,
                                       macs_per_image=3_000_000, stopped="budget" if epoch == 2 else None))
    code, text, _ = run_cli(capsys, "export", "--db", db, "--table", "training")
    assert code == 0 and len(pd.read_csv(io.StringIO(text))) == 3  # every epoch
    code, text, _ = run_cli(capsys, "export", "--db", db, "--table", "training", "--columns", "summary")
    runs = pd.read_csv(io.StringIO(text))  # each run's latest epoch
    assert code == 0 and runs.network.tolist() == ["gsa_probe x0.5"] * 2 and runs.seed.tolist() == [0, 1]
    assert runs.epoch.tolist() == [2, 1] and runs.top1_pct.tolist() == [55.5, 30.0]
    assert runs.stopped.fillna("").tolist() == ["budget", ""] and runs.gmacs_per_image.tolist() == [0.003] * 2
    code, text, _ = run_cli(capsys, "export", "--db", db, "--table", "training", "--columns", "summary",
                            "--where", "seed=1")
    assert code == 0 and pd.read_csv(io.StringIO(text)).top1_pct.tolist() == [30.0]


def _sweep_command(db):
    return [sys.executable, "-m", "attnbench", "run", "--scope", "module", "--variants", "conv,gsa,nonlocal",
            "--res", "8,12,16", "--dim", "16", "--db", db, "--min-run-time", "0.3", "--threads", "1"]


def _wait_for_rows(db, n, proc, limit=120):
    start = time.time()
    while time.time() - start < limit:
        if os.path.exists(db):
            try:
                if len(store.load_results(db)) >= n:
                    return
            except store.StoreError:
                pass
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no rows appeared")


@pytest.mark.parametrize("how", ["deleted", "replaced"])
@pytest.mark.slow
def test_a_store_deleted_or_replaced_during_a_sweep_stops_it_in_one_line(tmp_path, how):
    db = str(tmp_path / "r.sqlite")
    proc = subprocess.Popen(_sweep_command(db), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(db, 1, proc)
    if how == "deleted":
        for path in tmp_path.glob("r.sqlite*"):
            path.unlink()
    else:  # moved aside (with its WAL), and another store where it was
        for suffix in ("", "-wal", "-shm"):
            os.rename(db + suffix, tmp_path / f"moved.sqlite{suffix}")
        other = tmp_path / "other.sqlite"
        store.write(other, Record.from_row(dict(store.load_results(tmp_path / "moved.sqlite").iloc[0]) | {"res": 99}))
        os.rename(other, db)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "results in" not in out, out + err
    assert err.splitlines()[-1].startswith(f"attnbench run: The store {db} was {how}") and "Traceback" not in err
    if how == "replaced":  # what was measured stays where it was written; nothing went into the new store
        assert 1 <= len(store.load_results(tmp_path / "moved.sqlite")) < 9
        assert store.load_results(db).res.tolist() == [99]
    else:
        assert not os.path.exists(db)


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_stores_every_case_once(tmp_path):
    db = str(tmp_path / "r.sqlite")
    proc = subprocess.Popen(_sweep_command(db), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_rows(db, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its case processes, at once
    proc.wait()
    partial = len(store.load_results(db))
    assert 2 <= partial < 9
    subprocess.run(_sweep_command(db), check=True, capture_output=True)
    frame = store.load_results(db)
    assert len(frame) == 9 and frame.case_key.is_unique and set(frame.status) == {"ok"}


def test_shards_on_two_machines_merge_into_the_whole_sweep(capsys, tmp_path):
    sweep = ["run", "--scope", "module", "--variants", "conv,nonlocal", "--res", "8,12", "--dim", "8", *FAST]
    parts = []
    for i in (1, 2):
        db = str(tmp_path / f"machine{i}.sqlite")
        assert run_cli(capsys, *sweep, "--shard", f"{i}/2", "--db", db)[0] == 0
        parts.append(db)
    merged = str(tmp_path / "all.sqlite")
    assert run_cli(capsys, "merge", *parts, "-o", merged)[0] == 0
    frame = store.load_results(merged)
    assert len(frame) == 4 and frame.case_key.is_unique
    assert sorted(zip(frame.variant, frame.res)) == [("conv", 8), ("conv", 12), ("nonlocal", 8), ("nonlocal", 12)]
    assert all(len(store.load_results(p)) == 2 for p in parts)


@pytest.mark.slow
def test_a_code_change_measures_again(tmp_path):
    """Results are keyed by the code that produced them: editing a variant (here, a copy of the package)
    makes the same command measure again instead of printing the old rows."""
    shutil.copytree(Path(attnbench.__file__).parent, tmp_path / "pkg" / "attnbench")
    db = tmp_path / "r.sqlite"
    cmd = [sys.executable, "-m", "attnbench", "run", "--scope", "module", "--variants", "conv", "--res", "8",
           "--dim", "8", "--db", str(db), *FAST]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkg")}
    for _ in range(2):  # the second run finds the case stored
        subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tmp_path)
    assert store.load_results(db).run_id.nunique() == 1
    with open(tmp_path / "pkg" / "attnbench" / "variants" / "conv.py", "a") as f:
        f.write("\n# a change\n")
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=tmp_path)
    frame = store.load_results(db)
    assert frame.run_id.nunique() == 2 and frame.code_hash.nunique() == 2 and frame.env_key.nunique() == 2


def test_a_huge_input_is_skipped_before_anything_is_built(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    code, _, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "gsa,local", "--res", "100000",
                         "--dim", "16", "--timeout", "20", "--db", db, *FAST)
    frame = store.load_results(db)
    assert code == 1 and set(frame.status) == {"skipped"}
    assert frame.reason.str.contains("the input and one map of its size alone need 1220703 MiB").all()


def test_a_case_killed_from_outside_is_not_called_out_of_memory():
    import multiprocessing as mp
    import threading

    from attnbench.harness import run_isolated
    from attnbench.record import Case

    case = Case("model", "conv", "resnet50", 224, 1, 0, "fp32", "cpu", "infer", 1, "native", model="resnet50")

    def kill_the_case() -> None:
        for _ in range(600):
            children = mp.active_children()
            if children:
                time.sleep(1.0)
                os.kill(children[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_case)
    killer.start()
    measurement, _ = run_isolated(case, timeout=120, min_run_time=30)
    killer.join()
    assert measurement.status == "killed" and "SIGKILL" in measurement.reason


def test_outputs_are_checked_before_any_work(capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["export", "--db", "reports/reference.sqlite", "-o", str(tmp_path)], "cannot write"),
        (["export", "--db", "reports/reference.sqlite", "-o", str(tmp_path / "no" / "x.csv")], "cannot write"),
        (["report", "--db", "reports/reference.sqlite", "--out", str(a_file)], "is a file, not a folder"),
        (["profile", "--variants", "conv", "--res", "8", "--out", str(a_file)], "is a file, not a folder"),
        (["train", "--model", "conv_probe", "--dataset", "digits", "--out", str(a_file), "--db",
          str(tmp_path / "new.sqlite")], "is a file, not a folder"),
        (["train", "--model", "conv_probe", "--dataset", "digits", "--out", ""], "--out is empty"),
        (["train", "--model", "conv_probe", "--dataset", "digits", "--out", str(tmp_path / "t"),
          "--db", str(tmp_path)], "is a folder, not a results store"),
        (["run", "--variants", "conv", "--db", str(tmp_path / ("x" * 300) / "r.sqlite")], "Cannot"),
    ]
    for args, message in cases:
        start = time.monotonic()
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
        assert time.monotonic() - start < 30, f"{args}: the check came after the work"
    assert not (tmp_path / "new.sqlite").exists()  # the store is made only when every output can be written


def test_a_refused_report_makes_no_folder(capsys, tmp_path):
    (tmp_path / "not-a-store.sqlite").write_text("text")
    for db in (tmp_path / "missing.sqlite", tmp_path / "not-a-store.sqlite"):
        code, _, err = run_cli(capsys, "report", "--db", str(db), "--out", str(tmp_path / "rep" / "deep"))
        assert code == 2 and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-store.sqlite"]
    code, _, err = run_cli(capsys, "report", "--db", "reports/reference.sqlite", "--out",
                           str(tmp_path / "not-a-store.sqlite" / "rep"))
    assert code == 2 and "not-a-store.sqlite is a file" in err and err.count("\n") == 1


def test_a_store_without_a_readable_schema_version(capsys, tmp_path):
    db = tmp_path / "odd.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', 'one')")
    code, _, err = run_cli(capsys, "export", "--db", str(db))
    assert code == 2 and "has no readable schema version ('one')" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_long_temporary_folder_still_runs_cases(tmp_path):
    """The fork server's Unix socket would not fit under a long TMPDIR: cases then start by spawning."""
    tmp = tmp_path / ("t" * 100)
    tmp.mkdir()
    db = tmp_path / "r.sqlite"
    done = subprocess.run([sys.executable, "-m", "attnbench", "run", "--scope", "module", "--variants", "conv",
                           "--res", "8", "--dim", "8", "--db", str(db), *FAST],
                          env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert store.load_results(db).status.tolist() == ["ok"]


def test_a_report_that_cannot_be_written_is_one_line(capsys, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # the module (attnbench.report is also the package's function), imported here when no test did before
    monkeypatch.setattr(importlib.import_module("attnbench.report"), "_write_table", full_disk)
    code, _, err = run_cli(capsys, "report", "--db", "reports/reference.sqlite", "--out", str(tmp_path / "r"))
    assert code == 2 and "cannot write under" in err and "No space left" in err and err.count("\n") == 1


@pytest.mark.parametrize("sweep, message", [
    ({"scope": "module", "variants": ["gsa"], "dim": [12]}, "--dim 12 for variant 'gsa'"),
    ({"arch": "resnet7"}, "Unknown architecture 'resnet7'"),
    ({"scope": "module", "arch": "resnet26"}, "--arch applies to --scope model only"),
    ({"scope": "modules"}, "Unknown scope 'modules'"),
    ({"variants": ["gsa"], "impl": ["local=flex"]}, "'local' is not a variant of this sweep"),
])
def test_python_sweeps_are_checked_like_the_command_line(tmp_path, sweep, message):
    with pytest.raises(ValueError, match=message):
        attnbench.run(db=str(tmp_path / "r.sqlite"), **sweep)
    assert not (tmp_path / "r.sqlite").exists()


def test_version_and_help_show_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"attnbench {attnbench.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "seconds per case (default: 600.0)" in text and "(default: fp32)" in text


def test_every_error_has_its_command_as_prefix(capsys, tmp_path):
    for args, prefix in ((["export", "--db", str(tmp_path / "none.sqlite")], "attnbench export: No results store"),
                         (["merge", str(tmp_path / "none.sqlite"), "-o", str(tmp_path / "o.sqlite")],
                          "attnbench merge: No results store"),
                         (["run", "--batch", "1", "2"], "lists are comma-separated, e.g. --batch 1,8")):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and prefix in err and err.count("\n") == 1, err


def test_help_loads_no_numerical_stack():
    """`attnbench --help` answers at once: neither torch nor pandas is imported for it."""
    code = ("import sys\nfrom attnbench.cli import main\n"
            "for args in (['--help'], ['run', '--help'], ['train', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'pandas', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "[]", done.stderr


def test_variant_options_are_swept_and_stored(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    code, out, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "gsa,local,conv", "--res", "12",
                           "--dim", "16", "--opt", "span=3", "--opt", "local.window=3", "--opt", "heads=4",
                           "--db", db, *FAST)
    assert code == 0 and "gsa[heads=4,span=3] " in out and "conv " in out  # and its options, where they vary
    frame = store.load_results(db).set_index("variant")
    assert frame.loc["gsa", "options"] == "heads=4,span=3"
    assert frame.loc["local", "options"] == "heads=4,window=3" and frame.loc["conv", "options"] == ""
    for variant, opts in (("gsa", {"span": 3, "heads": 4}), ("local", {"window": 3, "heads": 4})):
        m = attnbench.build_variant(variant, 16, size=12, **opts)
        assert frame.loc[variant, "macs"] == attnbench.count_macs(m, torch.randn(1, 16, 12, 12))
        assert frame.loc[variant, "params"] == sum(p.numel() for p in m.parameters())


def test_timm_style_options_amp_channels_last_and_compile(capsys, tmp_path):
    from attnbench.harness import build_case
    from attnbench.measure.latency import make_step
    from attnbench.record import Case

    db = str(tmp_path / "r.sqlite")
    base = ["run", "--scope", "module", "--variants", "conv", "--res", "16", "--dim", "8", "--db", db, *FAST]
    for extra in ([], ["--amp"], ["--channels-last"], ["--compile"]):
        assert run_cli(capsys, *base, *extra)[0] == 0
    frame = store.load_results(db).set_index("case_key")
    assert set(frame.status) == {"ok"} and len(frame) == 4
    eager = frame[(frame.amp == "") & (frame.channels_last == 0) & (frame["compile"] == "")].iloc[0]
    assert frame.amp.tolist().count("bf16") == 1 and frame.channels_last.sum() == 1
    compiled = frame[frame["compile"] == "default"].iloc[0]
    assert compiled.compile_s > 0 and compiled.latency_ms_median < compiled.compile_s * 1e3  # kept apart
    assert frame.macs.nunique() == 1 and frame.macs.iloc[0] == eager.macs  # the mechanism's MACs, whatever runs it
    # what the options do, checked on the objects the harness builds
    case = Case("module", "conv", "", 16, 1, 8, "fp32", "cpu", "infer", 1, "native", channels_last=True)
    module, shape = build_case(case)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in module.parameters() if p.dim() == 4)
    x = torch.randn(*shape)
    out = make_step(module, x, "infer", autocast=torch.bfloat16)()
    assert out.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in module.parameters())
    for bad, message in ((["--compile", "fastest"], "invalid choice: 'fastest'"), (["--amp", "fp64"], "'fp64'")):
        code, _, err = run_cli(capsys, *base, *bad)
        assert code == 2 and message in err and err.count("\n") == 1


def test_an_unusable_results_file_is_refused_before_the_sweep(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = str(tmp_path / "r.sqlite")
    base = ["run", "--scope", "module", "--variants", "conv", "--res", "8", "--dim", "8", "--db", db, *FAST]
    (tmp_path / "taken.csv").mkdir()
    for name, message in (("taken.csv", "cannot write --results-file taken.csv: Is a directory."),
                          ("x" * 300 + ".csv", "File name too long")):
        code, _, err = run_cli(capsys, *base, "--results-file", name)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert store.load_results(db).empty  # nothing was measured
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite", "taken.csv"]  # the trial writes left nothing
    assert run_cli(capsys, *base, "--results-file", "made/../rows.csv")[0] == 0
    assert (tmp_path / "rows.csv").is_file() and not (tmp_path / "made").exists()  # no folder the path passed through


def test_a_value_given_twice_is_measured_once(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    code, out, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "conv,conv", "--res", "8,8", "--dim",
                           "8,8", "--batch", "1,1", "--dtype", "fp32,fp32", "--mode", "infer,infer", "--db", db, *FAST)
    assert code == 0 and "\n1 case; results in" in out and len(store.load_results(db)) == 1
    from attnbench.api import plan  # the Python API alike

    assert plan(variants=["conv"], scope="module", res=[8, 8], dim=[8, 8], batch=[2, 2]) == plan(
        variants=["conv"], scope="module", res=[8], dim=[8], batch=[2])


@pytest.mark.slow
def test_a_terminal_that_cannot_print_micro_gets_the_table_in_ascii(tmp_path):
    done = subprocess.run([sys.executable, "-m", "attnbench", "run", "--scope", "module", "--variants", "conv",
                           "--res", "8", "--dim", "8", "--db", str(tmp_path / "r.sqlite"), *FAST],
                          capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert " +- IQR)" in done.stdout and done.stdout.isascii()


SUMMARY = ["network", "device_name", "mode", "dtype", "side", "batch", "samples_per_s", "step_ms", "gmacs_per_sample",
           "params", "peak_mem_mib", "status", "reason"]


def test_results_file_holds_the_sweeps_rows(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    base = ["run", "--scope", "module", "--variants", "conv,gsa", "--res", "8", "--dim", "8", "--db", db, *FAST]
    assert run_cli(capsys, *base, "--results-file", str(tmp_path / "r.csv"), "--results-columns", "all")[0] == 0
    assert run_cli(capsys, *base, "--results-file", str(tmp_path / "r.json"), "--results-columns", "all")[0] == 0
    rows = json.loads((tmp_path / "r.json").read_text())  # the second run read the stored rows back
    csv = pd.read_csv(tmp_path / "r.csv")
    assert [r["variant"] for r in rows] == csv.variant.tolist() == ["conv", "gsa"]
    assert csv.latency_ms_median.tolist() == pytest.approx([r["latency_ms_median"] for r in rows], rel=1e-12)
    assert run_cli(capsys, *base, "--results-file", str(tmp_path / "summary.csv"))[0] == 0  # the default: summary
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.columns) == SUMMARY and summary.network.tolist() == ["conv", "gsa"]
    assert summary.step_ms.tolist() == pytest.approx(csv.latency_ms_median.tolist(), rel=1e-3)  # 4 digits
    code, _, err = run_cli(capsys, *base, "--results-file", str(tmp_path / "r.txt"))
    assert code == 2 and "name a .csv, .md or .json file" in err


@pytest.mark.slow
def test_params_and_macs_are_counted_once_per_shape_and_reused(tmp_path):
    from attnbench.harness import Counts, measure_case, run_cases, shape_key
    from attnbench.sweep import Subject, expand

    cases = expand(subjects=[Subject("gsa")], res=[8], batch=[1, 3], dims=[8], dtypes=["fp32", "bf16"],
                   devices=["cpu"], modes=["infer", "train"], scope="module", threads=1)
    assert len(cases) == 8 and len({shape_key(c) for c in cases}) == 1
    records = run_cases(cases, str(tmp_path / "r.sqlite"), min_run_time=0.01)
    per_image = attnbench.count_macs(attnbench.build_variant("gsa", 8, size=8), torch.randn(1, 8, 8, 8))
    assert [r.measurement.macs for r in records] == [per_image * c.batch for c in cases]
    assert {r.measurement.params for r in records} == {sum(p.numel() for p in
                                                           attnbench.build_variant("gsa", 8, size=8).parameters())}
    given = Counts(params=1, params_trainable=1, macs_per_image=7, macs_counter="given", uncounted_ops="{}")
    m = measure_case(cases[1], 0.01, counts=given)  # counts handed in are taken, not counted again
    assert (m.status, m.macs, m.params, m.macs_counter) == ("ok", 7 * cases[1].batch, 1, "given")


@pytest.mark.parametrize("threshold", [1, 15, 16, 17, 100, 4096, 5000])
def test_max_res_search_finds_the_boundary_in_few_probes(threshold):
    from attnbench.api import _largest

    tried = []

    def status(side: int) -> str:
        tried.append(side)
        return "ok" if side <= threshold else "oom"

    found = _largest(None, status)
    assert (found.largest, found.failed, found.status) == (threshold, threshold + 1, "oom")
    assert len(tried) == len(set(tried)) <= 2 * threshold.bit_length() + 4  # doubling, then bisection


def test_max_res_stores_the_largest_side_that_ran_and_the_next_that_did_not(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    args = ["run", "--scope", "module", "--variants", "nonlocal", "--dim", "8", "--max-res", "--timeout", "1",
            "--min-run-time", "0.01", "--threads", "1", "--db", db]
    code, out, _ = run_cli(capsys, *args)
    frame = store.load_results(db)
    largest = frame[frame.status == "ok"].res.max()
    assert code == 0 and f"largest side {largest}; {largest + 1} did not (timeout)" in out
    assert frame[frame.res == largest + 1].status.tolist() == ["timeout"]  # exact: one pixel more did not run
    assert not frame[(frame.status == "ok") & (frame.res > largest)].size
    code, again, err = run_cli(capsys, *args)  # a second search reuses every stored side
    assert code == 0 and again == out and ": ok" not in err and ": timeout" not in err
    code, _, err = run_cli(capsys, *args, "--res", "64")
    assert code == 2 and "--max-res finds the resolution: leave out --res." in err


@pytest.mark.parametrize("quiet", [False, True])
def test_run_prints_a_line_per_finished_case_when_not_on_a_terminal(capsys, tmp_path, quiet):
    db = str(tmp_path / "r.sqlite")
    code, out, err = run_cli(capsys, "run", "--scope", "module", "--variants", "conv,gsa", "--res", "8", "--dim", "8",
                             "--db", db, *FAST, *["--quiet"] * quiet)  # captured: not a terminal
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert code == 0 and "2 cases; results in" in out
    if quiet:
        assert lines == []
    else:
        assert [line.split()[:2] for line in lines] == [["[1/2]", "conv/native"], ["[2/2]", "gsa/pixelmajor"]]
        assert all(line.endswith(" ms") and ": ok " in line for line in lines)


def test_list_fits_100_columns_shows_only_settable_options_and_filters(capsys):
    from attnbench.choices import SWEEP_SET
    from attnbench.models import get_model_spec, list_models
    from attnbench.registry import get_variant_spec, list_variants
    from attnbench.sweep import variant_options

    code, out, _ = run_cli(capsys, "list")
    lines = out.splitlines()
    assert code == 0 and max(map(len, lines)) <= 100
    listed = {line.split(":")[0].strip(): line for line in lines if line.startswith("  ") and not line.startswith("   ")
              and ":" in line}
    assert set(list_variants()) <= set(listed)
    options = [line.split("options: ")[1] for line in lines if line.startswith("    options: ")]
    assert len(options) == len(list_variants())
    for name, shown in zip(list_variants(), options):  # in the listing's order, the registry's
        settable = [o for o in get_variant_spec(name).options() if o not in SWEEP_SET]
        assert shown == (", ".join(settable) or "none")
        for option in settable:  # each one --opt takes
            variant_options([name], [f"{option}=1"])
    with pytest.raises(ValueError, match="set by the sweep"):
        variant_options(["gsa"], ["size=8"])
    assert not any(o in SWEEP_SET for line in options for o in line.split(", "))
    code, out, _ = run_cli(capsys, "list", "gsa*")
    names = " ".join(out.split("\nNetworks (")[1].splitlines()[1:]).split()
    assert code == 0 and "  gsa: " in out and "  local: " not in out
    assert names == list_models("gsa*")
    code, out, _ = run_cli(capsys, "list", "local")  # a variant's name lists its networks too
    names = " ".join(out.split("\nNetworks (")[1].splitlines()[1:]).split()
    assert names == [n for n in list_models() if get_model_spec(n).variant == "local"] and names
    code, _, err = run_cli(capsys, "list", "nothing*")
    assert code == 2 and err.startswith("attnbench list: no variant or network matches 'nothing*'")


def test_the_table_and_the_closing_lines_of_run_fit_the_line_width(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short store path: a word is never split
    code, out, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "conv,gsa", "--res", "8", "--dim", "8",
                           "--db", "r.sqlite", "--line-width", "40", *FAST)
    lines = out.splitlines()
    assert code == 0 and max(map(len, lines)) <= 40 and not any("..." in line for line in lines)
    closing = " ".join(line.strip() for line in lines[lines.index("") + 1:] if line.strip()
                       and not line.startswith(("network", "---", "conv", "gsa", "#")))
    assert ("2 cases; results in r.sqlite. Latency: median of the timed runs; MACs per forward pass of the batch "
            "(1 multiply-add = 1); memory: peak over weights and inputs.") in closing
    for header in ("params", "MACs (K)", "latency (", "memory ("):
        assert any(line.startswith(("network", "#")) and header in line for line in lines), header


@pytest.mark.slow
def test_every_column_a_table_shows_is_exported_by_its_name(capsys, tmp_path):
    from attnbench.record import Environment, Epoch, Evaluation

    db = str(tmp_path / "r.sqlite")
    code, out, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "conv,gsa", "--res", "8", "--dim", "8",
                           "--impl", "auto,plain", "--db", db, "--line-width", "200", *FAST)
    assert code == 0
    env = Environment(host="h", device_name="Test CPU")
    for epoch in (1, 2):
        store.write_training(db, Epoch(run_id="a", epoch=epoch, epochs=2, model="gsa_probe", dataset="digits",
                                       width=0.5, seed=0, top1_pct=40.0 + epoch, macs_per_image=3_000_000,
                                       environment=env))
    store.write_evaluation(db, Evaluation(run_id="a", model="gsa_probe", dataset="digits", image_size=32, side=48,
                                          top1_pct=30.0, num_classes=10, width=0.5, environment=env))
    # run's table: its key column, and the columns of every summary, each exported alone under its name
    header = next(line for line in out.splitlines() if line.startswith("network"))  # after the shared facts' lines
    shown = {"results": header.split()[:2]}
    for name in ("results", "training", "evaluations"):
        code, text, _ = run_cli(capsys, "export", "--db", db, "--table", name, "--columns", "summary")
        summary = pd.read_csv(io.StringIO(text), keep_default_na=False)
        assert code == 0 and len(summary)
        for column in [*shown.get(name, []), *summary.columns]:
            code, text, err = run_cli(capsys, "export", "--db", db, "--table", name, "--columns", column)
            assert code == 0, err
            alone = pd.read_csv(io.StringIO(text), keep_default_na=False)
            assert list(alone.columns) == [column]
            if column in summary and name != "training":  # a summary row per stored row
                assert alone[column].astype(str).tolist() == summary[column].astype(str).tolist()
    # the series label is the network column, as run printed it; rows are chosen by it too
    code, text, _ = run_cli(capsys, "export", "--db", db, "--columns", "network,side,step_ms",
                            "--where", "network=gsa/plain")
    picked = pd.read_csv(io.StringIO(text))
    assert code == 0 and picked.network.tolist() == ["gsa/plain"] and picked.side.tolist() == [8]
    assert any(line.split()[0] == "gsa/plain" for line in out.splitlines())
    code, _, err = run_cli(capsys, "export", "--db", db, "--columns", "colour")
    assert code == 2 and "Unknown column 'colour'" in err and "step_ms" in err and err.count("\n") == 1


def test_export_writes_the_format_its_file_is_named_for(capsys, tmp_path):
    db = str(tmp_path / "r.sqlite")
    for res in (8, 16):
        store.write(db, Record.from_row(dict(run_id="r", scope="module", variant="conv", arch="", impl="ref", res=res,
                                             batch=1, dim=8, dtype="fp32", device="cpu", mode="infer", threads=1,
                                             status="ok", params=10, macs=100 * res, latency_ms_median=0.5)))
    cols = ["--columns", "variant,res,latency_ms_median"]
    for suffix in ("csv", "md", "json", "MD"):
        target = tmp_path / f"x.{suffix}"
        assert run_cli(capsys, "export", "--db", db, *cols, "-o", str(target))[0] == 0
        text = target.read_text()
        if suffix == "csv":
            assert text.splitlines() == ["variant,res,latency_ms_median", "conv,8,0.5", "conv,16,0.5"]
        elif suffix == "json":
            assert json.loads(text) == [{"variant": "conv", "res": r, "latency_ms_median": 0.5} for r in (8, 16)]
        else:  # a Markdown table
            lines = text.splitlines()
            assert lines[0].startswith("| variant") and set(lines[1]) <= set("|:- ") and len(lines) == 4
    code, out, _ = run_cli(capsys, "export", "--db", db, *cols, "--format", "json")  # stdout: as --format says
    assert code == 0 and json.loads(out)[0]["res"] == 8
    for args, message in (
            (["-o", str(tmp_path / "x.txt")], f"cannot tell the format of {tmp_path / 'x.txt'}: name a .csv, .md or "
                                              ".json file."),
            (["-o", str(tmp_path / "y.md"), "--format", "csv"], "--format csv does not suit"),
            (["-o", str(tmp_path / "noext")], "cannot tell the format")):
        code, _, err = run_cli(capsys, "export", "--db", db, *cols, *args)
        assert code == 2 and err.startswith(f"attnbench export: {message}") and err.count("\n") == 1
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "y.md").exists()


def test_one_of_a_thing_is_said_in_the_singular(capsys, tmp_path):
    from attnbench.choices import count
    from attnbench.measure.load import noise_reasons

    db, merged = str(tmp_path / "r.sqlite"), str(tmp_path / "m.sqlite")
    code, out, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "conv", "--res", "8", "--dim", "8",
                           "--db", db, *FAST)  # one case, one thread
    assert code == 0 and re.search(r"\b1 thread\b", out) and "\n1 case; results in" in out
    code, out, _ = run_cli(capsys, "merge", db, "-o", merged)
    assert code == 0 and out == f"merged 1 store into {merged}: 1 new row\n"
    again = str(tmp_path / "again.sqlite")  # a store named twice (by two spellings) is one store
    code, out, _ = run_cli(capsys, "merge", db, str(tmp_path / "." / "r.sqlite"), "-o", again)
    assert code == 0 and out == f"merged 1 store into {again}: 1 new row\n"
    code, out, _ = run_cli(capsys, "run", "--scope", "module", "--variants", "conv,gsa", "--res", "8", "--dim", "8",
                           "--db", db, "--threads", "2", "--min-run-time", "0.01")
    assert code == 0 and "2 threads" in out and "\n2 cases; results in" in out
    assert noise_reasons(0.9, (1.0, 1.0), 1) == ["other processes used 0.90 of 1 core during the timed runs"]
    assert [count(n, "case") for n in (0, 1, 2)] == ["0 cases", "1 case", "2 cases"]
    assert count(1, "batch", "batches") == "1 batch" and count(3, "batch", "batches") == "3 batches"
    for text in (out, "\n".join(noise_reasons(0.9, (1.0, 1.0), 1))):
        assert not re.search(r"\b1 (cases|threads|stores|rows|new rows|cores|tables|figures)\b", text)


def test_a_store_is_never_made_under_a_text_formats_name(capsys, tmp_path):
    for suffix in ("csv", "md", "json", "JSON"):
        db = tmp_path / f"r.{suffix}"
        for args in (["run", "--scope", "module", "--variants", "conv", "--res", "8", "--dim", "8", "--db", str(db),
                      *FAST], ["merge", "reports/accuracy.sqlite", "-o", str(db)]):
            code, _, err = run_cli(capsys, *args)
            assert code == 2 and err == (f"attnbench {args[0]}: Cannot create the store {db}: a store is an SQLite "
                                         f"file, and .{suffix} names text; name it .sqlite (attnbench export writes "
                                         ".csv, .md and .json).\n")
            assert not db.exists()
