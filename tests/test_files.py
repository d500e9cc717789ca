"""Files written whole or not at all: every writer of attnbench, failed by a size limit (RLIMIT_FSIZE, as a
full disk fails it) or by a writer that raises midway, leaves the previous file as it was and nothing
partial or temporary beside it; folders held by one process at a time."""

import errno
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest
import torch
from test_report import row

from attnbench import files, store
from attnbench.cli import main


def _listing(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(pathlib.Path(folder).rglob("*"))
            if p.is_file()}


def _limited(args: list[str], limit_bytes: int) -> subprocess.CompletedProcess:
    """``attnbench ARGS`` in a process that may write no file past ``limit_bytes`` (the write fails with
    EFBIG, as one fails on a full disk, instead of the process being killed by SIGXFSZ)."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))\n"
            "from attnbench.cli import main\n"
            f"sys.exit(main({args!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.fixture
def db(tmp_path):
    """A store in rollback-journal mode, as committed stores ship: reading it writes nothing."""
    path = tmp_path / "stores" / "r.sqlite"
    for variant in ("conv", "gsa", "nonlocal"):
        for res in (8, 16, 32, 64):
            store.write(path, row(variant, res))
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    return path


def _fails_whole(proc, folder, before) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert _listing(folder) == before  # the previous file as it was, nothing beside it


def test_an_export_over_a_size_limit_keeps_the_previous_export(db, tmp_path):
    out = tmp_path / "exports"
    out.mkdir()
    (out / "r.csv").write_text("the previous export\n")
    before = _listing(out)
    _fails_whole(_limited(["export", "--db", str(db), "-o", str(out / "r.csv")], 4096), out, before)
    assert len(store.load_results(db).to_csv()) > 4096  # the limit was hit, not missed


def test_a_merge_over_a_size_limit_leaves_no_output(db, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    _fails_whole(_limited(["merge", str(db), "-o", str(out / "all.sqlite")], 12_000), out, {})
    assert db.stat().st_size > 12_000


def test_a_report_over_a_size_limit_keeps_the_previous_report(db, tmp_path):
    out = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    before = _listing(out)
    _fails_whole(_limited(["report", "--db", str(db), "--out", str(out)], 20_000), out, before)


def _half_then_full_disk(monkeypatch):
    """Every text file is written half, then the disk is full."""
    def write_text(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def test_a_results_file_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "sweep.csv").write_text("the previous sweep\n")
    before = _listing(out)
    _half_then_full_disk(monkeypatch)
    code = main(["run", "--scope", "module", "--variants", "conv", "--res", "4", "--dim", "4", "--min-run-time",
                 "0.01", "--threads", "1", "--db", str(tmp_path / "r.sqlite"), "--results-file",
                 str(out / "sweep.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err.splitlines()[-1] and "Traceback" not in err
    assert _listing(out) == before


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    from attnbench.train import TrainConfig, TrainError, _save

    path = tmp_path / "run" / "checkpoint.pt"
    path.parent.mkdir()
    _save(path, {"epoch": 1})
    before = _listing(path.parent)
    save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        save({"part": torch.zeros(1000)}, f)  # some of it written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainError, match="No space left on device; the previous one, if any, is kept"):
        _save(path, {"epoch": 2, "config": TrainConfig("conv_probe", "digits")})
    assert _listing(path.parent) == before  # no checkpoint.tmp beside it


def test_a_figure_or_profile_table_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attnbench.arguments import write_text as _write_text
    from attnbench.plots import save

    fig = plt.figure()
    save(fig, tmp_path / "cost")
    (tmp_path / "profile.md").write_text("the previous table\n")
    before = _listing(tmp_path)

    def full_disk(self, fname, *args, **kwargs):
        pathlib.Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(fig), "savefig", full_disk)
    with pytest.raises(OSError):
        save(fig, tmp_path / "cost")
    _half_then_full_disk(monkeypatch)
    with pytest.raises(Exception, match="No space left"):  # the profile's tables go through the same writer
        _write_text(str(tmp_path / "profile.md"), "a new table\n" * 10)
    assert _listing(tmp_path) == before


def test_a_temporary_file_of_a_writer_killed_midway_goes_with_the_next_write(tmp_path):
    target = tmp_path / "export.csv"
    target.write_text("previous\n")
    code = ("import os, signal\n"
            "from attnbench import files\n"
            f"with files.atomic({str(target)!r}) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    debris = [p.name for p in tmp_path.iterdir() if p.name != "export.csv"]
    assert len(debris) == 1 and target.read_text() == "previous\n"
    (tmp_path / ".export.csv.00000000-1-00000000.tmp").write_text("another host's, or a live process's")
    files.write_text(target, "new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.csv.00000000-1-00000000.tmp", "export.csv"]
    assert target.read_text() == "new\n"


def test_a_new_file_gets_the_permissions_any_new_file_gets(tmp_path):
    previous = os.umask(0o027)
    try:
        files.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


def test_a_held_folder_refuses_another_process_and_names_the_holder(tmp_path):
    code = ("import sys, time\n"
            "from attnbench import files\n"
            f"with files.hold({str(tmp_path)!r}, 'attnbench train'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(files.Busy, match=f"in use by attnbench train \\(pid {proc.pid} on "):
            with files.hold(tmp_path, "another"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with files.hold(tmp_path, "after"):  # a holder that died frees the folder
        with files.hold(tmp_path, "again"):  # and a process may hold what it holds
            assert (tmp_path / files.LOCK).exists()
    assert not (tmp_path / files.LOCK).exists()


def _unescaped(name: str) -> str:
    """The name a safe_name came from: '=XX' bytes decoded (an independent reading of the escape)."""
    raw, i = bytearray(), 0
    while i < len(name):
        if name[i] == "=":
            raw.append(int(name[i + 1: i + 3], 16))
            i += 3
        else:
            raw += name[i].encode()
            i += 1
    return raw.decode()


def test_safe_names_are_plain_path_components_and_never_collide():
    import random
    import string

    from attnbench.files import safe_name

    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "._+-=:/\\ *?\"<>|%~é😀"
    names = {"timm:resnet18", "pkg.mod:fn", "a/b", "a-b", "a=3Ab", "a:b", ".", "..", ".hidden", "x" * 3}
    names |= {"".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(3000)}
    made = {}
    for name in names:
        safe = safe_name(name)
        assert re.fullmatch(r"[A-Za-z0-9._+=-]+", safe) and not safe.startswith(".")
        assert _unescaped(safe) == name  # the mapping can be undone: no two names share a path
        assert made.setdefault(safe, name) == name
    assert safe_name("timm:resnet18") == "timm=3Aresnet18" and safe_name("gsa_resnet50") == "gsa_resnet50"
