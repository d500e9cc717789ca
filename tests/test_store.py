"""The results store: whole rows, no duplicates, clear errors, several writers."""

import multiprocessing as mp
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import stopped_midway
from store_processes import open_together, row, write_rows

from attnbench import store
from attnbench.cli import main
from attnbench.record import Environment, Epoch, Record


def key(name: str) -> str:
    return row(name).case.key


def env_key(env: str) -> str:
    return row("a", env).environment.key


def test_write_and_load_round_trip(tmp_path):
    db = tmp_path / "r.sqlite"
    store.write(db, row("a"))
    store.write(db, row("b", latency_ms_median=1.5))
    frame = store.load_results(db)
    assert list(frame.case_key) == [key("a"), key("b")]
    assert frame.latency_ms_median.iloc[1] == 1.5
    assert frame.uncounted_ops.iloc[0] == '{"aten::softmax": 1}'


def test_same_case_and_environment_is_stored_once_unless_replaced(tmp_path):
    db = tmp_path / "r.sqlite"
    store.write(db, row("a", macs=1))
    store.write(db, row("a", macs=2))
    assert list(store.load_results(db).macs) == [1]
    store.write(db, row("a", macs=3), replace=True)
    assert list(store.load_results(db).macs) == [3]
    store.write(db, row("a", env="e2"))
    assert set(store.stored_cases(db, env_key("e1"))) == {key("a")} and len(store.load_results(db)) == 2


def test_merge_has_no_duplicates(tmp_path):
    a, b, out = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "out.sqlite"
    for name in ("x", "y"):
        store.write(a, row(name))
    for name in ("y", "z"):
        store.write(b, row(name))
    assert store.merge([a, b], out) == store.Merged(3, 0)
    assert store.merge([a, b], out) == store.Merged(0, 0)
    assert sorted(store.load_results(out).case_key) == sorted(map(key, "xyz"))


def test_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("hello, this is not SQLite" * 100)
    with pytest.raises(store.StoreError, match="is not a usable results store"):
        store.open_store(bad)


def test_a_foreign_database(tmp_path):
    db = tmp_path / "other.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(store.StoreError, match="not an attnbench results store"):
        store.open_store(db)


def test_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "new.sqlite"
    store.open_store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(store.SCHEMA_VERSION + 1),))
    with pytest.raises(store.StoreError, match="newer than this attnbench reads"):
        store.open_store(db)


def test_a_directory_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(store.StoreError, match="Cannot create the store .*Not a directory"):
        store.open_store(blocker / "sub" / "r.sqlite")


@pytest.mark.slow
def test_several_processes_write_one_store(tmp_path):
    db = tmp_path / "r.sqlite"
    store.open_store(db).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=write_rows, args=(str(db), 25 * i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(store.load_results(db).case_key) == sorted(key(f"k{i}") for i in range(100))


def test_a_store_from_before_a_new_column_gains_it(tmp_path):
    db = tmp_path / "old.sqlite"
    old_columns = [c for c in store.COLUMNS if c[0] != "device_peak_gflops"]
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        columns = ", ".join(f"{c} {t}" for c, t in old_columns)
        conn.execute(f"CREATE TABLE results ({columns}, UNIQUE (case_key, env_key))")  # every store had its key
    store.write(db, row("a", device_peak_gflops=300.0))
    assert store.load_results(db).device_peak_gflops.tolist() == [300.0]


def _old_store(db, without: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        cols = [c for c in store.COLUMNS if c[0] != without]
        conn.execute(f"CREATE TABLE results ({', '.join(f'{c} {t}' for c, t in cols)}, UNIQUE (case_key, env_key))")
        for i, variant in enumerate(["gsa", "local", "axial", "nonlocal", "conv"]):
            values = row(f"k{i}", variant=variant, uncounted_ops="{}").row()
            names = [c for c, _ in cols if c in values]
            conn.execute(f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                         [values[c] for c in names])


def test_rows_from_before_implementations_record_the_one_that_measured_them(tmp_path):
    db = tmp_path / "old.sqlite"
    _old_store(db, without="impl")
    frame = store.load_results(db)
    assert dict(zip(frame.variant, frame.impl)) == {
        "gsa": "pixelmajor", "local": "halo", "axial": "dense", "nonlocal": "sdpa", "conv": "native"}
    import attnbench

    for variant, impl in store.LEGACY_IMPLS.items():  # what the old code ran is now each reference
        assert attnbench.list_impls(variant)[0] == impl


@pytest.mark.slow
def test_an_old_store_opened_by_several_processes_at_once_is_upgraded_once(tmp_path):
    for trial in range(3):
        db = tmp_path / f"old{trial}.sqlite"
        _old_store(db, without="impl")
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=open_together, args=(str(db), barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0] * 4
        assert store.load_results(db).impl.tolist() == ["pixelmajor", "halo", "dense", "sdpa", "native"]


def _snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_reading_a_store_changes_nothing(tmp_path):
    """Readers open read-only: no journal switch, no upgrade, no file created beside the store."""
    folder = tmp_path / "committed"
    folder.mkdir()
    db = folder / "old.sqlite"
    _old_store(db, without="impl")  # rollback-journal mode, as committed stores ship
    before = _snapshot(folder)
    frame = store.load_results(db)
    assert frame.impl.tolist() == ["pixelmajor", "halo", "dense", "sdpa", "native"]
    assert store.load_training(db).empty and set(store.stored_cases(db, env_key("e1"))) == {
        row(f"k{i}", variant=v).case.key for i, v in enumerate(["gsa", "local", "axial", "nonlocal", "conv"])}
    store.merge([db], tmp_path / "out.sqlite")
    assert _snapshot(folder) == before
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.query(db, lambda conn: conn.execute("DELETE FROM results"))
    assert store.load_results(tmp_path / "out.sqlite").impl.tolist() == frame.impl.tolist()


def test_merge_into_a_source_is_refused(tmp_path):
    db = tmp_path / "a.sqlite"
    store.write(db, row("a"))
    with pytest.raises(store.StoreError, match="into itself"):
        store.merge([db], db)
    other, linked = tmp_path / "b.sqlite", tmp_path / "hard.sqlite"
    store.write(other, row("b"))
    os.link(db, linked)  # another name of the same file: merging into it would write into the source
    before = db.read_bytes()
    with pytest.raises(store.StoreError, match="into itself"):
        store.merge([other, db], linked)
    assert db.read_bytes() == before


def test_merge_is_all_or_nothing(tmp_path, monkeypatch):
    good, bad, out = tmp_path / "good.sqlite", tmp_path / "bad.sqlite", tmp_path / "out.sqlite"
    store.write(good, row("a"))
    bad.write_text("not a store " * 100)
    with pytest.raises(store.StoreError):
        store.merge([good, bad], out)
    assert not out.exists()
    full = tmp_path / "full.sqlite"  # a store into which nothing can be inserted: the transaction fails
    store.write(full, row("b"))
    with sqlite3.connect(full) as conn:
        conn.execute("CREATE TRIGGER no_more BEFORE INSERT ON results BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(store.StoreError, match="disk full"):
        store.merge([good], full)
    assert store.load_results(full).case_key.tolist() == [key("b")]  # an existing output is left as it was

    def disk_error(frame):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_plain_rows", disk_error)  # the output is made, then its transaction fails
    with pytest.raises(store.StoreError, match="disk I/O error"):
        store.merge([good], out)
    assert not list(tmp_path.glob("out.sqlite*"))


def test_merge_keeps_the_newest_of_conflicting_measurements_and_counts_them(tmp_path):
    a, b, out = tmp_path / "a.sqlite", tmp_path / "b.sqlite", tmp_path / "out.sqlite"
    store.write(a, row("k", run_id="new", macs=2, created_utc="2026-11-28T00:00:00"))
    store.write(b, row("k", run_id="old", macs=1, created_utc="2026-11-27T00:00:00"))
    store.write(b, row("other"))
    assert store.merge([a, b], out) == store.Merged(2, 1)
    frame = store.load_results(out).set_index("case_key")
    assert frame.loc[key("k"), "run_id"] == "new" and frame.loc[key("k"), "macs"] == 2


def test_the_schema_is_the_records_and_a_row_reads_back_as_written(tmp_path):
    from dataclasses import fields

    from attnbench.record import Case, Environment, Measurement

    parts = [f.name for part in (Case, Measurement, Environment) for f in fields(part)]
    assert store.NAMES == ["case_key", "env_key", "run_id", *parts]
    columns = dict(store.COLUMNS)
    assert columns["res"] == "INTEGER NOT NULL" and columns["latency_ms_median"] == "REAL"  # None allowed or not
    db = tmp_path / "r.sqlite"
    written = row("a", latency_ms_median=1.5, latency_noisy=True, created_utc="2026-11-28T00:00:00")
    store.write(db, written)
    back = store.load_results(db).iloc[0].to_dict()
    assert {k: v for k, v in written.row().items() if v is not None} == {k: v for k, v in back.items()
                                                                         if v is not None and v == v}


def test_select_keeps_the_rows_every_condition_names():
    frame = pd.DataFrame({"variant": ["gsa", "local", "conv", "gsa"], "res": [16, 32, 64, 128],
                          "latency_ms_median": [1.0, None, 3.0, 8.0], "options": ["", "span=3", "", None]})
    got = store.select(frame, ["res", "variant"], ["variant=gsa,conv", "res>16"])
    assert got.columns.tolist() == ["res", "variant"] and got.res.tolist() == [64, 128]
    assert store.select(frame, where=["latency_ms_median<=3"]).res.tolist() == [16, 64]  # a missing value fails
    assert store.select(frame, where=["options="]).res.tolist() == [16, 64, 128]  # empty and missing alike
    assert store.select(frame, where=["variant!=gsa", "res<64"]).variant.tolist() == ["local"]
    assert store.select(frame, where=["res=16,64"]).res.tolist() == [16, 64]  # numbers as written
    for columns, where, message in ((["varaint"], [], "Did you mean 'variant'"),
                                    (None, ["res>=big"], "compares numbers"),
                                    (None, ["res~3"], "COLUMN=VALUE")):
        with pytest.raises(ValueError, match=message):
            store.select(frame, columns, where)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_merge_killed_midway_leaves_no_output_and_the_next_merge_no_debris(tmp_path, sig):
    src, out = tmp_path / "src.sqlite", tmp_path / "out.sqlite"
    store.write(src, row("a"))
    with stopped_midway("attnbench.store", "_plain_rows", f"module.merge([{str(src)!r}], {str(out)!r})") as proc:
        proc.send_signal(sig)
    assert not out.exists()  # no empty store where the merged one was to be
    store.merge([src], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.sqlite", "src.sqlite"]
    assert store.load_results(out).case_key.tolist() == [key("a")]


def _bound_by_permissions(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` in a process that file permissions bind: this user's, or, when the tests run as root
    (whom none binds), one of root without the capabilities that override them."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        capsh = shutil.which("capsh")
        if capsh is None:
            pytest.skip("the tests run as root and capsh is missing: no process here is bound by permissions")
        command = [capsh, "--drop=cap_dac_override,cap_dac_read_search,cap_fowner", "--", "-c", shlex.join(command)]
    return subprocess.run(command, capture_output=True, text=True)


def test_reading_a_store_leaves_no_file_beside_it(tmp_path, capsys):
    folder = tmp_path / "stores"
    folder.mkdir()
    db = folder / "r.sqlite"  # as a sweep leaves it: WAL journaling, closed
    store.write(db, row("a"))
    store.write_training(db, Epoch(run_id="t", epoch=1, epochs=1, model="conv_probe", dataset="digits", top1_pct=50.0))
    assert sorted(p.name for p in folder.iterdir()) == ["r.sqlite"]
    assert len(store.load_results(db)) == 1 and len(store.load_training(db)) == 1
    assert list(store.stored_cases(db, env_key("e1"))) == [key("a")]
    store.merge([db], tmp_path / "merged.sqlite")
    assert main(["export", "--db", str(db)]) == 0 and key("a") in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["r.sqlite"]


def test_a_read_only_store_read_leaves_nothing_that_blocks_its_writer_later(tmp_path):
    folder = tmp_path / "stores"
    folder.mkdir()
    db = folder / "r.sqlite"
    store.write(db, row("a"))
    db.chmod(0o444)
    read = _bound_by_permissions(f"from attnbench.cli import main; main(['export', '--db', {str(db)!r}])")
    assert read.returncode == 0 and key("a") in read.stdout, read.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["r.sqlite"]
    # a sweep into it is refused in one line before SQLite opens it, which left -wal and -shm files beside it
    sweep = _bound_by_permissions("from attnbench.cli import main; raise SystemExit(main(['run', '--scope', "
                                  f"'module', '--variants', 'conv', '--res', '8', '--dim', '8', '--db', {str(db)!r}]))")
    assert sweep.returncode == 2 and f"Cannot write the store {db}: Permission denied." in sweep.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["r.sqlite"]
    db.chmod(0o644)
    wrote = _bound_by_permissions(f"from attnbench import store; from attnbench.record import Record; "
                                  f"store.write({str(db)!r}, Record.from_row({row('b').row()!r}))")
    assert wrote.returncode == 0, wrote.stderr
    assert len(store.load_results(db)) == 2


@pytest.mark.parametrize("wal", ["empty", "rows"])
def test_a_store_in_a_folder_that_cannot_be_written_is_read_whole(tmp_path, wal):
    folder = tmp_path / "stores"
    folder.mkdir()
    db = folder / "r.sqlite"
    store.write(db, row("a"))
    if wal == "rows":  # a writer killed before it folded its WAL into the file: a row is in the WAL alone
        subprocess.run([sys.executable, "-c", f"import os; from attnbench import store; from attnbench.record import "
                        f"Record; store.Writer({str(db)!r}).write(Record.from_row({row('b').row()!r})); os._exit(0)"],
                       check=True)
        assert Path(f"{db}-wal").stat().st_size > 0
        Path(f"{db}-shm").chmod(0o444)  # and its shared memory file cannot be written either
    before = sorted(p.name for p in folder.iterdir())
    folder.chmod(0o555)
    try:
        read = _bound_by_permissions(f"from attnbench import store; "
                                     f"print(sorted(store.load_results({str(db)!r}).case_key))")
    finally:
        folder.chmod(0o755)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == str(sorted(key(n) for n in (["a", "b"] if wal == "rows" else ["a"])))
    assert sorted(p.name for p in folder.iterdir()) == before


def test_evaluations_have_a_table_of_their_own_that_older_stores_gain_and_merges_copy(tmp_path, capsys):
    from attnbench.record import Evaluation

    old = tmp_path / "old.sqlite"
    _old_store(old, without="impl")  # meta and results only: from before training runs and evaluations
    assert store.load_evaluations(old).empty and list(store.load_evaluations(old).columns) == store.EVALUATION_NAMES
    rows = [Evaluation(run_id="run", model="gsa_probe", dataset="digits", image_size=32, side=side, tables=tables,
                       status="ok" if side == 32 else "refused", top1_pct=90.0 if side == 32 else None)
            for side, tables in ((32, "trained"), (48, "trained"), (48, "interpolated"))]
    for row_ in rows:
        store.write_evaluation(old, row_)
    store.write_evaluation(old, rows[0])  # the same run, side and tables: replaced, not doubled
    read = store.load_evaluations(old)
    assert list(zip(read.side, read.tables, read.status)) == [(48, "trained", "refused"), (48, "interpolated",
                                                                                           "refused"),
                                                              (32, "trained", "ok")]
    assert store.load_training(old).empty  # an evaluation is never a training epoch
    out = tmp_path / "merged.sqlite"
    assert store.merge([old], out).evaluations == 3
    assert store.load_evaluations(out).drop(columns="created_utc").equals(read.drop(columns="created_utc"))
    merged = store.merge([old, old], out)  # held already: none added twice, and the merge says so
    assert (merged.added, merged.epochs, merged.evaluations) == (0, 0, 0) and str(merged) == "0 new rows"
    assert len(store.load_evaluations(out)) == 3
    later = tmp_path / "later.sqlite"  # the run evaluated again at 32, later: its newer row is kept, and said
    store.write_evaluation(later, Evaluation(run_id="run", model="gsa_probe", dataset="digits", image_size=32, side=32,
                                             top1_pct=95.0, environment=Environment(created_utc="2099-01-01")))
    merged = store.merge([later], out)
    assert (merged.evaluations, merged.redone) == (0, 1) and str(merged) == (
        "0 new rows; 1 training epoch or evaluation stored differently by different sittings, the newest kept")
    assert store.load_evaluations(out).set_index("side").top1_pct.get(32) == 95.0
    assert store.merge([old], out).redone == 1  # the older version again: the newer stays
    assert store.load_evaluations(out).set_index("side").top1_pct.get(32) == 95.0
    trained, again = tmp_path / "trained.sqlite", tmp_path / "again.sqlite"
    for epoch in (1, 2):
        store.write_training(trained, Epoch(run_id="t", epoch=epoch, epochs=2, model="conv_probe", dataset="digits"))
    assert main(["merge", str(old), str(out), str(trained), "-o", str(again)]) == 0
    results = len(store.load_results(old))  # the old store's measured cases
    assert results > 1 and capsys.readouterr().out == (f"merged 3 stores into {again}: {results} new rows, "
                                                       "2 training epochs, 3 evaluations; 1 training epoch or "
                                                       "evaluation stored differently by different sittings, the "
                                                       "newest kept\n")


def _damage(db, sql: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.executescript(sql)


def test_a_store_missing_a_column_every_store_has_is_refused_in_one_line(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    store.write(db, row("a"))
    _damage(db, "ALTER TABLE results DROP COLUMN status")
    with pytest.raises(store.StoreError, match="lacks the column status, which every store has"):
        store.load_results(db)
    for args in (["report", "--db", str(db), "--out", str(tmp_path / "report")],
                 ["run", "--scope", "module", "--variants", "conv", "--res", "8", "--dim", "8", "--db", str(db)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{db} is damaged: its results table lacks the column status" in err and err.count("\n") == 1


def test_a_store_with_text_in_a_column_of_numbers_is_refused_in_one_line(tmp_path, capsys):
    """SQLite keeps text in a column declared INTEGER: report printed a traceback (int('abc'))."""
    db = tmp_path / "r.sqlite"
    store.write(db, row("a"))
    store.write(db, row("b"))
    _damage(db, "UPDATE results SET res = 'abc' WHERE rowid = 2")
    with pytest.raises(store.StoreError, match="its results table's column res holds 'abc' .1 row of text."):
        store.load_results(db)
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err == (f"attnbench report: {db} is damaged: its results table's column res holds 'abc' (1 row of "
                   "text), where every store holds numbers.\n")
    assert not (tmp_path / "report" / "README.md").exists()


def test_a_store_whose_table_lost_its_unique_key_takes_no_duplicates(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    store.write(db, row("a"))
    _damage(db, "CREATE TABLE copy AS SELECT * FROM results; DROP TABLE results; ALTER TABLE copy RENAME TO results;")
    with pytest.raises(store.StoreError, match=r"lost its UNIQUE \(case_key, env_key\) constraint"):
        store.write(db, row("a", run_id="again"), replace=True)
    assert main(["run", "--scope", "module", "--variants", "conv", "--res", "8", "--dim", "8", "--force",
                 "--db", str(db)]) == 2
    assert "would store rows twice" in capsys.readouterr().err
    assert len(store.load_results(db)) == 1
    sound = tmp_path / "sound.sqlite"
    assert main(["merge", str(db), "-o", str(sound)]) == 0  # the remedy the message names
    store.write(sound, row("a", run_id="again"), replace=True)
    assert store.load_results(sound).run_id.tolist() == ["again"]
def test_networks_stored_before_the_model_column_are_named_alike_by_readers_and_writers(tmp_path):
    """Readers fill a missing column as the writers' upgrade does: the network each old row measured."""
    from dataclasses import asdict

    db = tmp_path / "old.sqlite"
    nets = [("gsa", "resnet50", "gsa_resnet50"), ("conv", "resnet26", "resnet26"), ("conv", "probe", "conv_probe"),
            ("axial", "axial_deeplab_50s", "axial_deeplab_50s"), ("nonlocal", "probe", "nonlocal_probe")]
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        cols = [c for c in store.COLUMNS if c[0] not in ("model", "width")]
        conn.execute(f"CREATE TABLE results ({', '.join(f'{c} {t}' for c, t in cols)}, UNIQUE (case_key, env_key))")
        for variant, arch, _ in nets + [("local", "", "")]:
            values = row(f"{variant}{arch}", scope="model" if arch else "module", variant=variant, arch=arch).row()
            values = {k: v for k, v in values.items() if k not in ("model", "width")}
            conn.execute(f"INSERT INTO results ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                         list(values.values()))
    expected = [name for _, _, name in nets] + [""]
    read = store.load_results(db)
    assert read.model.tolist() == expected and read.width.tolist() == [1.0] * 6
    store.open_store(db).close()  # a writer upgrades the file
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT model FROM results ORDER BY rowid")] == expected
    assert asdict(Record.from_row(store.load_results(db).iloc[0].to_dict()).case)["model"] == "gsa_resnet50"


@pytest.mark.parametrize("name, message", [
    ("", "The store's path is empty"),
    ("made/", "ends in a separator: it names a folder, not a results store file"),
    ("kept.sqlite/", "ends in a separator"),  # an existing store named with a slash after it
])
def test_a_path_that_names_no_file_is_refused_by_every_store_operation_and_makes_nothing(tmp_path, monkeypatch, name,
                                                                                         message):
    """Path("made/") drops the slash and SQLite would make a file named "made" where the user meant a folder,
    then os.stat("made/") raised NotADirectoryError after it (train: after its first epoch, whose rows were
    lost); "" became ".", a folder. Every entry point refuses such a path in one line before anything is made."""
    monkeypatch.chdir(tmp_path)
    store.write(tmp_path / "kept.sqlite", row("a"))
    before = sorted(p.name for p in tmp_path.iterdir())
    for operation in (lambda: store.check_writable(name), lambda: store.Writer(name),
                      lambda: store.load_results(name), lambda: store.merge([tmp_path / "kept.sqlite"], name)):
        with pytest.raises(store.StoreError, match=message):
            operation()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
