"""Sweeps launched as job arrays through submitit (its local executor here, as Slurm's stand-in)."""

import json

import pandas as pd
import pytest

from attnbench import store
from attnbench.cli import main
from attnbench.console import WHY
from attnbench.launch import jobs_folder

pytest.importorskip("submitit")


@pytest.mark.slow
def test_a_local_array_runs_every_shard_and_merges_them(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    args = ["run", "--scope", "module", "--variants", "conv,gsa,nonlocal", "--res", "8", "--dim", "8",
            "--min-run-time", "0.01", "--threads", "1", "--db", str(db), "--launcher", "local", "--jobs", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    frame = store.load_results(db)
    assert sorted(frame.variant) == ["conv", "gsa", "nonlocal"] and set(frame.status) == {"ok"}
    shards = sorted(p.name for p in jobs_folder(db).glob("*.sqlite"))
    of_store = store.meta(db, "store_id")
    assert shards == [f"local-shard-{i}-of-2-{of_store[:8]}.sqlite" for i in (1, 2)]
    assert "3 new rows" in " ".join(out.split())  # the line under the table may wrap
    table = [line.split() for line in out.splitlines()]  # the sweep's table, as a run here prints it
    assert sorted(row[0] for row in table if row[1:2] == ["8"]) == ["conv", "gsa", "nonlocal"]
    assert {store.meta(jobs_folder(db) / s, "shard_of") for s in shards} == {of_store}
    # each task ran its own shard: together they are the sweep, once
    per_shard = [len(store.load_results(jobs_folder(db) / s)) for s in shards]
    assert sorted(per_shard) == [1, 2]
    assert main(["collect", "--db", str(db)]) == 0 and "0 new rows" in capsys.readouterr().out


@pytest.mark.slow
def test_a_store_deleted_and_made_anew_takes_no_rows_from_the_shards_of_the_old_one(tmp_path, capsys):
    db = tmp_path / "r.sqlite"

    def launched(res):
        return main(["run", "--scope", "module", "--variants", "conv", "--res", res, "--dim", "8", "--min-run-time",
                     "0.01", "--threads", "1", "--db", str(db), "--launcher", "local"])

    assert launched("8") == 0
    for path in tmp_path.glob("r.sqlite*"):  # the user deletes the store, not its jobs folder
        path.unlink()
    capsys.readouterr()
    assert main(["collect", "--db", str(db)]) == 2
    assert "(1 of another store at that path, ignored)" in capsys.readouterr().err
    assert launched("12") == 0
    said = " ".join(capsys.readouterr().out.split())  # the line under the table may wrap
    assert "1 new row; 1 shard store of another store at this path left out" in said
    assert store.load_results(db).res.tolist() == [12]  # the deleted row does not come back
    assert main(["collect", "--db", str(db)]) == 0 and store.load_results(db).res.tolist() == [12]


@pytest.mark.slow
def test_a_launched_sweep_exits_as_a_sweep_run_here_does(tmp_path, capsys):
    """Its verdict comes from the rows its tasks returned: nothing measured (axial at 4096 needs terabytes, so its
    case is skipped) is exit code 1 with the same line as a sweep run here."""
    code = main(["run", "--scope", "module", "--variants", "axial", "--res", "4096", "--dim", "16", "--threads", "1",
                 "--db", str(tmp_path / "r.sqlite"), "--launcher", "local"])
    err = capsys.readouterr().err
    assert code == 1 and err.endswith(f"attnbench run: no case was measured (skipped 1); {WHY}.\n")


@pytest.mark.slow
def test_a_launched_sweep_prints_json_and_writes_a_results_file_as_a_sweep_run_here_does(tmp_path, capsys):
    db, written = tmp_path / "r.sqlite", tmp_path / "rows.csv"
    assert main(["run", "--scope", "module", "--variants", "conv,gsa", "--res", "8", "--dim", "8", "--min-run-time",
                 "0.01", "--threads", "1", "--db", str(db), "--launcher", "local", "--json",
                 "--results-file", str(written)]) == 0
    rows = json.loads(capsys.readouterr().out)  # nothing else on stdout
    assert sorted(r["variant"] for r in rows) == ["conv", "gsa"] and {r["status"] for r in rows} == {"ok"}
    assert sorted(pd.read_csv(written).network) == ["conv", "gsa"]  # the summary columns, as a run here writes
    assert sorted(store.load_results(db).case_key) == sorted(r["case_key"] for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--launcher", "local", "--shard", "1/2"], "--shard applies to a sweep run here"),
    (["--jobs", "0"], "jobs 0 must be at least 1"),
    (["--jobs", "2"], "--jobs applies to --launcher slurm"),
    (["--launcher", "local", "--partition", "a100"], "--partition applies to --launcher slurm"),
    (["--launcher", "pbs"], "invalid choice: 'pbs'"),
])
def test_launch_options_are_checked(tmp_path, capsys, args, message):
    code = main(["run", "--scope", "module", "--variants", "conv", "--res", "8", "--db", str(tmp_path / "r.sqlite"),
                 *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_collect_without_a_launch_says_so(tmp_path, capsys):
    assert main(["collect", "--db", str(tmp_path / "r.sqlite")]) == 2
    assert "No shard stores under" in capsys.readouterr().err


def test_slurm_without_submitit_names_the_extra(monkeypatch, tmp_path):
    import builtins

    from attnbench.launch import LaunchError, executor

    real = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(LaunchError, match=r"needs submitit: pip install 'attnbench\[slurm\]'"):
        executor("slurm", tmp_path, partition=None, timeout_min=1, gpus=1)
