"""Reports from a store built here with known costs: exponents, files, determinism, clear refusals."""

import hashlib
import itertools
import math
import re
import shutil
import signal
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
from conftest import stopped_midway

from attnbench import store
from attnbench.cli import main
from attnbench.record import Environment, Epoch, Record
from attnbench.report import ReportError, load, report, summary_tables
from attnbench.tables import fit_exponent

EXPONENTS = {"conv": 1.0, "gsa": 1.5, "nonlocal": 2.0}
RES = [8, 16, 32, 64, 128]


def row(variant, res, *, device="cpu", name="Test CPU", scope="module", batch=1, status="ok", k=None, **extra):
    k = EXPONENTS[variant] if k is None else k
    pixels = res * res
    ok = status == "ok"
    arch = extra.pop("arch", "resnet50" if scope == "model" else "")
    return Record.from_row(dict(
        run_id="r1", scope=scope, variant=variant, impl="ref", arch=arch, model=f"{variant}_{arch}" if arch else "",
        res=res, batch=batch, dim=0 if scope == "model" else 16,
        dtype="fp32", device=device, mode="infer", threads=2, status=status,
        reason=None if ok else "predicted peak exceeds the memory available",
        params=1000, macs=int(3e3 * pixels**k) * batch if ok else None,
        latency_ms_median=2e-3 * pixels**k if ok else None, latency_ms_iqr=1e-4 * pixels**k if ok else None,
        latency_runs=10, throughput_per_s=batch / (2e-6 * pixels**k) if ok else None,
        peak_mem_bytes=int(500 * pixels**k) if ok else None, device_peak_gflops=300.0, host="host",
        device_name=name, torch_version="2.13.0", attnbench_version="0.1.0", created_utc="2026-11-27T00:00:00",
    ) | extra)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "known.sqlite"
    for variant in EXPONENTS:
        for res in RES:
            store.write(path, row(variant, res))
    store.write(path, row("nonlocal", 256, status="skipped"))  # the line stops here
    for batch in (1, 4, 16):
        store.write(path, row("gsa", 32, batch=batch))
    for variant in ("conv", "gsa"):
        store.write(path, row(variant, 224, scope="model", batch=8))
        store.write(path, row(variant, 64, device="cuda:0", name="Test GPU"))
    return path


def test_fitted_exponents_come_back(db, tmp_path):
    rep = report([db], tmp_path / "out", published=False)
    exps = rep.tables["scaling_exponents"]
    cpu = exps[(exps.device == "Test CPU") & (exps.batch == 1)].set_index("variant")
    for variant, k in EXPONENTS.items():
        for metric in ("latency", "MACs", "peak memory"):
            assert abs(cpu.loc[variant, f"k {metric}"] - k) < 0.02, (variant, metric)
    largest = rep.tables["largest_fit"].set_index("variant")
    assert largest.loc["nonlocal", "largest res measured"] == 128
    assert largest.loc["nonlocal", "first res not measured"] == 256


def test_fit_exponent_is_exact_on_a_power_law():
    pixels = np.array([64, 256, 1024, 4096.0])
    k, r2 = fit_exponent(pixels, 7 * pixels**1.37)
    assert abs(k - 1.37) < 1e-9 and abs(r2 - 1) < 1e-12


@pytest.mark.slow
def test_every_promised_file_exists_and_images_are_drawn(db, tmp_path):
    import matplotlib.image as mpimg

    out = tmp_path / "out"
    rep = report([db], out, published=False, formats=("png", "svg"))
    names = {p.name for p in rep.files}
    assert "README.md" in names
    for prefix in ("scaling_", "efficiency_", "throughput_", "models_", "devices_"):
        assert any(n.startswith(prefix) and n.endswith(".png") for n in names), prefix
        assert any(n.startswith(prefix) and n.endswith(".svg") for n in names), prefix
    assert not any(n.endswith(".svg") for n in {p.name for p in report([db], tmp_path / "png").files})
    for table in ("largest_fit", "scaling_exponents", "environments", "results_test-cpu_module"):
        assert (out / "tables" / f"{table}.md").exists() and (out / "tables" / f"{table}.csv").exists()
    index = (out / "README.md").read_text()
    for path in rep.files:
        assert path.exists() and path.stat().st_size > 0
        if path.suffix == ".png":
            image = mpimg.imread(path)
            assert image.std() > 0.05, f"{path.name} looks blank"
            assert f"figures/{path.name}" in index, f"{path.name} is not linked from the index"


def test_regenerating_gives_identical_tables(db, tmp_path):
    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "tables").iterdir())}

    report([db], tmp_path / "a", published=False)
    report([db], tmp_path / "b", published=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert (tmp_path / "a" / "README.md").read_text() == (tmp_path / "b" / "README.md").read_text()


def test_empty_and_failed_stores_are_refused_clearly(tmp_path, capsys):
    empty = tmp_path / "empty.sqlite"
    store.open_store(empty).close()
    with pytest.raises(ReportError, match="The store .*empty.sqlite holds no results"):
        report([empty], tmp_path / "out")
    with pytest.raises(ReportError, match="The stores .*empty.sqlite, .*empty.sqlite hold no results"):
        report([empty, empty], tmp_path / "out")
    failed = tmp_path / "failed.sqlite"
    store.write(failed, row("gsa", 4096, status="oom"))
    with pytest.raises(ReportError, match="Every stored case failed \\(oom\\)"):
        report([failed], tmp_path / "out")
    for path in (empty, failed, tmp_path / "missing.sqlite"):
        assert main(["report", "--db", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_report_with_published_figures(db, tmp_path, capsys):
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "out")]) == 0
    published = (tmp_path / "out" / "tables" / "published.md").read_text()
    assert "local_resnet38" in published and "SASA" in published


def test_pareto_front():
    from attnbench.tables import pareto

    cost, acc = [1, 2, 3, 4, 5], [50, 45, 60, 60, 70]
    assert pareto(cost, acc) == [0, 2, 4]


def test_names_of_near_points_stack_and_names_at_the_right_edge_go_left():
    from attnbench.plots import label_offsets

    size, char, line = (400.0, 250.0), 3.9, 9.0
    # two networks at the same cost and accuracy (non-local with either initial scale), one cheap, one costly
    x, y = [22.0, 22.0, 4.4, 9.0], [100.0, 100.0, 100.0, 51.6]
    names = ["nonlocal_probe", "nonlocal_probe (zero_init=False)", "axial_probe", "conv_probe"]
    (dx0, dy0, ha0), (dx1, dy1, ha1), (dx2, dy2, ha2), (_, _, ha3) = label_offsets(x, y, names, size)
    assert (ha0, ha1) == ("right", "right") and dx0 < 0 and dy1 < dy0  # left of the point, the second below
    assert ha2 == "left" and dx2 > 0 and dy2 == dy0  # nothing near it: the first row, to the right
    assert ha3 == "left"  # 9 is at 44 % of the log range 4.4 to 22: room on its right
    # longrange's top row: three names right of points 4.4, 5.3 and 6.1 M MACs apart on a range to 62 M
    x, y = [4.4, 5.3, 6.1, 62.0, 9.0, 10.4, 12.7], [100.0, 100.0, 100.0, 100.0, 49.8, 49.1, 50.3]
    names = ["axial_probe", "efficient_probe", "gsa_probe", "mhsa_probe", "neighborhood_probe", "window_probe",
             "local_probe"]
    offsets = label_offsets(x, y, names, size, char=char, line=line)
    lx = [math.log10(v / min(x)) / math.log10(max(x) / min(x)) * size[0] for v in x]
    py = [(v - min(y)) / (max(y) - min(y)) * size[1] for v in y]
    boxes = [(p + dx - (len(n) * char if ha == "right" else 0), p + dx + (0 if ha == "right" else len(n) * char),
              q + dy) for p, q, n, (dx, dy, ha) in zip(lx, py, names, offsets)]
    for (a0, a1, ay), (b0, b1, by) in itertools.combinations(boxes, 2):  # no two names overlap
        assert a1 <= b0 or b1 <= a0 or abs(ay - by) >= line
    assert offsets[1][1] == offsets[0][1] - line and offsets[2][1] == offsets[0][1]  # gsa's name clears axial's


def test_accuracy_against_cost(db, tmp_path):
    runs = {"conv_probe": (51.0, 1e6, 0.5, 1.0), "gsa_probe": (95.0, 3e6, 2.0, 1.0),
            "local_probe": (60.0, 4e6, 3.0, 1.0), "axial_probe": (55.0, 2e6, 4.0, 0.5)}
    for model, (top1, macs, latency, width) in runs.items():
        variant = model.split("_")[0]
        for seed, host in enumerate(("Test CPU", "Other CPU") if model == "gsa_probe" else ("Test CPU",)):
            for epoch in (1, 2):  # gsa's second seed finished in another sitting, on another host: the same setup
                store.write_training(db, Epoch(
                    run_id=f"{model}-{seed}", epoch=epoch, epochs=2, model=model, dataset="longrange", train_loss=0.5,
                    top1_pct=top1 - (2 - epoch) - seed, top5_pct=100.0, epoch_s=3.0, params=100,
                    macs_per_image=int(macs), width=width, world_size=1, seed=seed, variant=variant, device="cpu",
                    dtype="fp32", environment=Environment(device_name=host)))
        store.write(db, row(variant, 32, scope="model", batch=1, k=1.0, arch="probe", latency_ms_median=latency))
    # the axial probe trained at width 0.5 is measured at that width too (run --width), and at width 1 slower
    store.write(db, row("axial", 32, scope="model", batch=1, k=1.0, arch="probe", latency_ms_median=1.5, width=0.5))
    # local measured later on a host it was not trained on: its training host's measurement is the one shown
    store.write(db, row("local", 32, scope="model", batch=1, k=1.0, arch="probe", latency_ms_median=9.0,
                        name="Third CPU", created_utc="2026-11-28T00:00:00"))
    rep = report([db], tmp_path / "out", published=False)
    acc = rep.tables["accuracy"].set_index("model")
    assert acc.loc["gsa_probe", "top-1 (%)"] == 94.5 and acc.loc["gsa_probe", "training time (s)"] == 6.0
    assert acc.loc["gsa_probe", "seeds"] == 2 and acc.loc["gsa_probe", "trained on"] == "Other CPU, Test CPU"
    assert acc.loc["local_probe", "latency ms (batch 1)"] == 3.0 and acc.loc["local_probe", "latency on"] == "Test CPU"
    assert acc.loc["axial_probe", "latency ms (batch 1)"] == 1.5  # the width it was trained at, not width 1
    assert {"accuracy_macs_longrange_cpu", "accuracy_latency_longrange_cpu"} <= set(rep.figures)


def test_a_network_timed_in_two_stores_each_table_takes_its_own_sittings_latency(tmp_path):
    """The reference store times every probe at width 1, the accuracy table's store times its trained networks
    again another day: the listings keep the first store's timing of a case, the summary compares each store's
    cases apart, the accuracy table takes its runs' store's; a store given twice, or beside its merge, counts once."""
    reference, trained = tmp_path / "reference.sqlite", tmp_path / "accuracy.sqlite"
    for variant, latency in (("conv", 0.38), ("gsa", 1.5)):
        store.write(reference, row(variant, 32, scope="model", arch="probe", k=1.0, latency_ms_median=latency))
    for variant, latency, width in (("conv", 0.28, 1.0), ("gsa", 0.9, 0.875)):  # gsa as trained, at its width
        store.write(trained, row(variant, 32, scope="model", arch="probe", k=1.0, latency_ms_median=latency,
                                 width=width, created_utc="2026-12-03T00:00:00"))
    store.write_training(trained, Epoch(
        run_id="conv-0", epoch=1, epochs=1, model="conv_probe", dataset="digits", train_loss=0.5, top1_pct=95.0,
        top5_pct=100.0, epoch_s=3.0, params=100, macs_per_image=10**6, width=1.0, world_size=1, seed=0,
        variant="conv", device="cpu", dtype="fp32", environment=Environment(device_name="Test CPU")))
    assert main(["merge", str(trained), "-o", str(tmp_path / "merged.sqlite")]) == 0
    for dbs in ([reference, trained], [reference, trained, trained], [reference, trained, tmp_path / "merged.sqlite"]):
        rep = report(dbs, tmp_path / "out", published=False)
        assert rep.tables["accuracy"].set_index("model").loc["conv_probe", "latency ms (batch 1)"] == 0.28
        results = rep.tables["results_test-cpu_model"].set_index("case")
        assert len(results) == 3 and results.loc["conv_probe", "latency ms (median ± IQR)"].startswith("0.380 ")
        # each store's sitting compared apart: gsa x0.875 (0.9 ms) never beside the reference's conv (0.38)
        summary = rep.tables["summary_model"].set_index("store")
        assert summary.loc["reference.sqlite", "fastest"] == "conv_probe (380 µs)"
        assert summary.loc["reference.sqlite", "runner-up"] == "gsa_probe (x3.95)"
        assert summary.loc["accuracy.sqlite", "fastest"] == "conv_probe (280 µs)"  # its sitting's own conv
        assert summary.loc["accuracy.sqlite", "runner-up"] == "gsa_probe x0.875 (x3.21)"
        env = rep.tables["environments"].set_index(["store", "table"])
        assert env.loc[("accuracy.sqlite", "results"), "rows"] == 2  # its timings are counted where they are stored


def test_stores_of_one_file_name_in_two_folders_are_two_stores(tmp_path):
    """Each machine's results.sqlite, copied into a folder of its own: compared apart, named by their paths."""
    paths = [tmp_path / name / "results.sqlite" for name in ("a", "b")]
    for path, (latency, when) in zip(paths, ((0.4, "2026-12-01T00:00:00"), (0.3, "2026-12-03T00:00:00"))):
        path.parent.mkdir()
        store.write(path, row("conv", 32, scope="model", arch="probe", k=1.0, latency_ms_median=latency,
                              created_utc=when))
        store.write(path, row("gsa", 32, scope="model", arch="probe", k=1.0, latency_ms_median=1.2, created_utc=when))
    summary = report(paths, tmp_path / "out", published=False).tables["summary_model"].set_index("store")
    assert summary.loc[str(paths[0]), "fastest"] == "conv_probe (400 µs)"
    assert summary.loc[str(paths[1]), "fastest"] == "conv_probe (300 µs)"


def test_fastest_across_sides_is_judged_within_each_store(tmp_path):
    """conv timed in a slow sitting alone, gsa in another: across sides each store is its own comparison."""
    slow, other = tmp_path / "slow.sqlite", tmp_path / "other.sqlite"
    for res in (16, 32):
        store.write(slow, row("conv", res, k=1.0, latency_ms_median=10.0 * res, created_utc="2026-12-03T00:00:00"))
        store.write(other, row("gsa", res, k=1.0, latency_ms_median=1.0 * res))
        store.write(other, row("conv", res, k=1.0, latency_ms_median=0.5 * res))
    for order in ([slow, other], [other, slow]):
        sides = summary_tables(*load(order))["summary_sides"].set_index("store")
        assert sides.loc["other.sqlite", "fastest by side"] == "conv 16-32"  # its own conv, not slow's
        assert sides.loc["slow.sqlite", "fastest by side"] == "conv 16-32"
        assert sides.loc["other.sqlite", "fastest attention by side"] == "gsa 16-32"


def test_a_store_of_training_runs_alone_reports_its_accuracy(tmp_path):
    db = tmp_path / "trained.sqlite"
    for model, top1, epochs in (("axial_probe", 99.0, 3),  # in progress (or killed): epoch 1 of 3
                                ("gsa_probe", 100.0, 1), ("nonlocal_probe", 100.0, 1), ("conv_probe", 51.5, 1)):
        if model == "gsa_probe":  # the store holds one unfinished run: no accuracy table yet, and no traceback
            assert "accuracy" not in report([db], tmp_path / "first", published=False).tables
        store.write_training(db, Epoch(
            run_id=f"{model}-1", epoch=1, epochs=epochs, model=model, dataset="longrange", train_loss=0.5,
            top1_pct=top1, top5_pct=100.0, epoch_s=3.0, params=100, macs_per_image=10**6, width=1.0, world_size=1,
            seed=0, environment=Environment(device_name="Test CPU", git_commit="0123456789abcdef")))
    acc = report([db], tmp_path / "out", published=False).tables["accuracy"].set_index("model")
    assert set(acc.commit) == {"0123456789ab"}
    # a tie with the best is the best, not a gap of -0.00
    assert acc["vs best"].to_dict() == {"conv_probe": "-48.50 (one seed)", "gsa_probe": "best",
                                        "nonlocal_probe": "best"}


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_new_report_replaces_the_old_one_whole(db, tmp_path, monkeypatch):
    import sys

    report_module = sys.modules["attnbench.report"]  # the package's `report` is the function
    out = tmp_path / "out"
    first = report([db], out, published=False)
    small = tmp_path / "small.sqlite"  # a report of fewer cases writes fewer files
    for variant in ("conv", "gsa"):
        for res in RES:
            store.write(small, row(variant, res))
    (out / "tables" / "profile_x.md").write_text("from attnbench profile")  # files of others, kept
    (out / "notes.txt").write_text("the user's")
    second = report([small], out, published=False)
    gone = {p.relative_to(out) for p in first.files} - {p.relative_to(out) for p in second.files}
    assert gone and not any((out / rel).exists() for rel in gone)  # the earlier report's stale files
    assert (out / "tables" / "profile_x.md").exists() and (out / "notes.txt").exists()
    assert set((out / ".attnbench-report").read_text().split()) == {p.relative_to(out).as_posix()
                                                                     for p in second.files}
    before = _files(out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "environments", killed)  # dies after the tables and figures
    with pytest.raises(KeyboardInterrupt):
        report([db], out, published=False)
    assert _files(out) == before  # the old report, whole, and no staging folder left


def test_a_failed_report_leaves_no_folder_it_made_and_keeps_one_the_user_made(db, tmp_path, monkeypatch):
    import sys

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys.modules["attnbench.report"], "environments", full_disk)  # after tables and figures
    for out, made_by_user in ((tmp_path / "new" / "report", False), (tmp_path / "empty", True)):
        if made_by_user:
            out.mkdir()
        with pytest.raises(OSError, match="No space"):
            report([db], out, published=False)
        assert out.exists() == made_by_user and (not made_by_user or not any(out.iterdir()))
    assert sorted(tmp_path.iterdir()) == [tmp_path / "empty", tmp_path / "known.sqlite"]


def test_a_report_refuses_a_folder_of_the_users_files_and_changes_nothing(db, tmp_path, capsys):
    out = tmp_path / "paper"
    (out / "tables").mkdir(parents=True)
    (out / "figures").mkdir()
    (out / "README.md").write_text("# my paper\n")
    (out / "tables" / "mine.csv").write_text("a,b\n1,2\n")
    (out / "figures" / "mine.png").write_bytes(b"not drawn by attnbench")
    before = _files(out)
    with pytest.raises(ReportError, match="not a report folder.*README.md"):
        report([db], out, published=False)
    assert main(["report", "--db", str(db), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no attnbench report wrote" in err
    assert _files(out) == before


@pytest.mark.slow
def test_a_report_never_replaces_or_deletes_a_store_not_even_the_one_it_reads(db, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "tables").mkdir(parents=True)
    inside = out / "tables" / "x.sqlite"
    inside.write_bytes(db.read_bytes())
    for _ in range(2):  # a folder of stores alone takes a report, and the report's folder keeps them
        assert main(["report", "--db", str(inside), "--out", str(out)]) == 0, capsys.readouterr().err
        assert store.load_results(inside).case_key.tolist() == store.load_results(db).case_key.tolist()
    # a store where the report writes a file (its README, say) is refused, never replaced
    (out / "README.md").unlink()
    (out / "README.md").write_bytes(db.read_bytes())
    with pytest.raises(ReportError, match="README.md, a store"):
        report([inside], out, published=False)
    assert (out / "README.md").read_bytes() == db.read_bytes()


def test_a_file_of_the_user_where_a_new_report_writes_is_refused(db, tmp_path):
    small = tmp_path / "small.sqlite"
    store.write(small, row("conv", 8))
    store.write(small, row("conv", 16))
    out = tmp_path / "out"
    report([small], out, published=False)
    mine = out / "tables" / "results_test-gpu_module.md"  # a table the small store's report does not have
    assert not mine.exists()
    mine.write_text("the user's own table")
    before = _files(out)
    with pytest.raises(ReportError, match="results_test-gpu_module.md, a file that no earlier report wrote"):
        report([db], out, published=False)
    assert _files(out) == before


def test_a_manifest_cannot_make_a_report_delete_files_outside_its_own(db, tmp_path):
    out = tmp_path / "out"
    report([db], out, published=False)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "figures" / ".hidden").write_text("keep me too")
    manifest = out / ".attnbench-report"
    manifest.write_text(manifest.read_text() + "../victim.txt\nfigures/.hidden\n/etc/hostname\n")
    report([db], out, published=False)
    assert victim.read_text() == "keep me" and (out / "figures" / ".hidden").exists()


def test_a_stored_dtype_with_a_slash_names_files_safely(tmp_path):
    path = tmp_path / "odd.sqlite"
    for res in RES:
        store.write(path, row("gsa", res, dtype="bf16/amp"))
    rep = report([path], tmp_path / "out", published=False)
    assert rep.files and all(f.parent.name in ("tables", "figures", "out") for f in rep.files)


def test_implementations_and_options_that_vary_are_separate_series(tmp_path):
    path = tmp_path / "mixed.sqlite"
    for res in RES:
        store.write(path, row("gsa", res, impl="pixelmajor"))
        store.write(path, row("gsa", res, impl="pixelmajor", options="span=3"))
        store.write(path, row("conv", res, impl="native"))
    exps = report([path], tmp_path / "out", published=False).tables["scaling_exponents"]
    assert set(exps.variant) == {"gsa[defaults]", "gsa[span=3]", "conv"}


def test_a_report_only_reads_and_loads_no_torch(db, tmp_path):
    """Published counts and the variants' facts come from baselines/, so a report builds and measures nothing."""
    import subprocess
    import sys

    from attnbench.record import Evaluation

    for side in (24, 32):  # the resolution table and figure too
        store.write_evaluation(db, Evaluation(run_id="r", model="gsa_probe", dataset="digits", image_size=32, side=side,
                                              top1_pct=90.0, num_classes=10))
    code = (f"import sys; from attnbench.report import report; report([{str(db)!r}], {str(tmp_path / 'out')!r}); "
            "assert 'torch' not in sys.modules, 'the report loaded torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
    environments = (tmp_path / "out" / "tables" / "environments.md").read_text()
    assert "nan" not in environments and "| -" in environments  # the CPU rows have no GPU name
    assert (tmp_path / "out" / "tables" / "resolution.md").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.slow
def test_the_staging_folder_of_a_killed_report_goes_with_the_next_report(db, tmp_path, sig):
    out = tmp_path / "out"
    report([db], out, published=False)
    before = _files(out)
    call = f"module.report([{str(db)!r}], {str(out)!r}, published=False)"
    with stopped_midway("attnbench.report", "_write_report", call, after=True) as proc:  # staged, not moved in
        proc.send_signal(sig)
    assert _files(out) == {**before, **{k: v for k, v in _files(out).items() if k.startswith(".report-")}}
    report([db], out, published=False)
    assert not list(out.glob(".report-*")) and _files(out) == before


@pytest.mark.slow
def test_the_reference_report_lists_its_files_and_regenerates_in_place(tmp_path, capsys):
    reference = Path(__file__).resolve().parent.parent / "reports"
    written = {"README.md", *(p.relative_to(reference).as_posix() for sub in ("tables", "figures")
                              for p in (reference / sub).iterdir())}
    assert set((reference / ".attnbench-report").read_text().split()) == written
    copy = tmp_path / "reports"
    shutil.copytree(reference, copy, ignore=shutil.ignore_patterns("latest", "profile", "results.sqlite*"))
    stores = {name: (copy / name).read_bytes() for name in ("reference.sqlite", "reference-h200.sqlite",
                                                            "accuracy.sqlite")}
    args = [a for name in stores for a in ("--db", str(copy / name))]
    assert main(["report", *args, "--out", str(copy)]) == 0, capsys.readouterr().err
    assert {name: (copy / name).read_bytes() for name in stores} == stores
    assert set((copy / ".attnbench-report").read_text().split()) == written


def test_accuracy_across_resolutions_table_figure_and_which_holds_best(tmp_path):
    from attnbench.record import Evaluation
    from attnbench.tables import holds_best, resolution_retention

    db = tmp_path / "sides.sqlite"
    env, other = Environment(device_name="Test CPU"), Environment(device_name="Other CPU")  # gsa's seed 1 elsewhere
    top1 = {  # (model, seed): {(side, tables): top-1}; None: refused
        ("gsa_probe", 0): {(32, "trained"): 100.0, (24, "trained"): 96.0, (48, "trained"): 80.0,
                           (24, "interpolated"): 97.0, (48, "interpolated"): 90.0},
        ("gsa_probe", 1): {(32, "trained"): 98.0, (24, "trained"): 94.0, (48, "trained"): 78.0,
                           (24, "interpolated"): 95.0, (48, "interpolated"): 88.0},
        ("mhsa_probe", 0): {(32, "trained"): 90.0, (24, "trained"): 85.0, (48, "trained"): None,
                            (24, "interpolated"): 88.0, (48, "interpolated"): 71.0},
        ("conv_probe", 0): {(32, "trained"): 51.0, (24, "trained"): 50.5, (48, "trained"): 49.0},  # chance
    }
    for (model, seed), results in top1.items():
        for (side, tables), value in results.items():
            store.write_evaluation(db, Evaluation(
                run_id=f"{model}-{seed}", model=model, dataset="longrange", seed=seed, image_size=32, side=side,
                tables=tables, status="ok" if value is not None else "refused", top1_pct=value, num_classes=2,
                reason=None if value is not None else "mhsa: input side 48 exceeds size=32", width=1.0, lr=0.1,
                train_top1_pct=value, device="cpu", dtype="fp32",
                environment=other if (model, seed) == ("gsa_probe", 1) else env))
    rep = report([db], tmp_path / "out", published=False)
    table = rep.tables["resolution"].set_index(["model", "tables", "side"])
    gsa = table.loc[("gsa_probe", "trained", 48)]
    assert (gsa["seeds"], gsa["top-1 (%)"], gsa["vs trained side"], gsa["chance (%)"]) == (2, 79.0, -20.0, 50.0)
    assert gsa["top-1 std"] == round(float(np.std([80.0, 78.0], ddof=1)), 2)
    assert gsa["evaluated on"] == "Other CPU, Test CPU" and gsa["device"] == "cpu"  # one setup over two hosts
    assert table.loc[("gsa_probe", "interpolated", 48), "vs trained side"] == -10.0
    refused = table.loc[("mhsa_probe", "trained", 48)]
    assert refused["seeds"] == 0 and refused["not run"] == "1 refused: mhsa: input side 48 exceeds size=32"
    assert "accuracy" not in rep.tables  # evaluations are not training runs
    assert "resolution_longrange_cpu" in rep.figures
    (ax,) = rep.figures["resolution_longrange_cpu"].axes
    drawn = {c.get_label(): c.lines[0] for c in ax.containers}  # each series' error bar: its line
    assert list(drawn["gsa_probe, interpolated"].get_xdata()) == [24, 32, 48]  # from the trained network at 32
    assert list(drawn["gsa_probe, interpolated"].get_ydata()) == [96.0, 99.0, 89.0]
    assert list(drawn["mhsa_probe"].get_xdata()) == [24, 32, 48] and np.isnan(drawn["mhsa_probe"].get_ydata()[2])
    # retention: the share of the accuracy above chance kept away from 32, averaged over 24 and 48
    kept = resolution_retention(store.load_evaluations(db)).set_index(["model", "tables"])["retained (%)"]
    expected = {("gsa_probe", "interpolated"): (46 / 49 + 39 / 49) / 2,
                ("gsa_probe", "trained"): (45 / 49 + 29 / 49) / 2,
                ("mhsa_probe", "interpolated"): (38 / 40 + 21 / 40) / 2,
                ("mhsa_probe", "trained"): (35 / 40 + 0) / 2}  # refused at 48: nothing kept there
    assert kept.to_dict() == {k: round(100 * v, 1) for k, v in expected.items()}  # conv: at chance, nothing to hold
    assert list(kept.index) == sorted(expected, key=lambda k: -expected[k])  # best first
    best = holds_best(store.load_evaluations(db))
    assert list(zip(best.dataset, best.model, best.tables)) == [("longrange", "gsa_probe", "interpolated")]
    # a side only gsa was tested at is not compared; a side it failed at here (memory) is no result, not 0 kept;
    # two non-local setups above their own side's top-1 at 24 and 48 (seed noise) keep all of it, and tie
    extra = {("gsa_probe", 0, 64, "ok"): 60.0, ("gsa_probe", 0, 1000, "error"): None,
             ("nonlocal_probe", 0, 32, "ok"): 90.0, ("nonlocal_probe", 0, 24, "ok"): 92.0,
             ("nonlocal_probe", 0, 48, "ok"): 95.0, ("nonlocal_probe (zero_init=False)", 0, 32, "ok"): 100.0,
             ("nonlocal_probe (zero_init=False)", 0, 24, "ok"): 100.0,
             ("nonlocal_probe (zero_init=False)", 0, 48, "ok"): 100.0,
             ("axial_probe", 0, 32, "ok"): 100.0, ("axial_probe", 0, 24, "ok"): 90.0,
             ("axial_probe", 0, 48, "error"): None}  # axial's failure at 48 drops 48 for axial alone
    for (label, seed, side, status), value in extra.items():
        store.write_evaluation(db, Evaluation(
            run_id=f"{label}-{seed}", model=label.split()[0], dataset="longrange", seed=seed, image_size=32,
            side=side, status=status, top1_pct=value, num_classes=2, width=1.0, lr=0.1, device="cpu",
            dtype="fp32", options="zero_init=False" if "zero" in label else "", environment=env,
            reason="out of memory" if status == "error" else None))
    again = resolution_retention(store.load_evaluations(db)).set_index(["model", "tables"])
    assert again.loc[("gsa_probe", "trained"), "sides"] == "24, 48"
    assert again.loc[("mhsa_probe", "trained"), "sides"] == "24, 48"  # refused at 48: still counted
    assert again["retained (%)"].to_dict() == {**{k: round(100 * v, 1) for k, v in expected.items()},
                                               ("nonlocal_probe", "trained"): 100.0,
                                               ("nonlocal_probe (zero_init=False)", "trained"): 100.0,
                                               ("axial_probe", "trained"): 80.0}
    assert again.loc[("axial_probe", "trained"), "sides"] == "24"
    best = holds_best(store.load_evaluations(db))
    assert list(best.model) == ["nonlocal_probe", "nonlocal_probe (zero_init=False)"]
def test_networks_measured_with_and_without_a_setting_keep_their_columns_and_their_conv_baseline(tmp_path):
    """Labels are derived beside the columns, never written over them: conv eager and conv channels-last side
    by side are two series, and each network is compared with the conv network measured alike."""
    db = tmp_path / "setups.sqlite"
    for variant, k in (("conv", 1.0), ("gsa", 1.5)):
        for channels_last in (False, True):
            store.write(db, row(variant, 64, scope="model", batch=1, k=k + 0.1 * channels_last,
                                channels_last=channels_last))
    timm = row("conv", 64, scope="model", batch=1, k=1.2, arch="timm", model="timm:resnet50")
    store.write(db, replace(timm, case=replace(timm.case, variant="", impl="")))  # a network from elsewhere
    rep = report([db], tmp_path / "out", published=False)
    frame = load([db])[0]
    assert set(frame.variant) == {"conv", "gsa", ""} and set(frame.series) == {
        "conv_resnet50[eager]", "conv_resnet50[channels_last]", "gsa_resnet50[eager]", "gsa_resnet50[channels_last]",
        "timm:resnet50"}
    relative = next(t for name, t in rep.tables.items() if name.startswith("relative_")).set_index("network")
    pixels = 64 * 64
    for network, k, base_k in (("gsa_resnet50[eager]", 1.5, 1.0), ("gsa_resnet50[channels_last]", 1.6, 1.1),
                               ("timm:resnet50", 1.2, 1.0)):
        assert relative.loc[network, "latency / conv"] == round(pixels**k / pixels**base_k, 2), network
    assert relative.loc["timm:resnet50", "relative to"] == "conv_resnet50[eager]"


def test_series_labels_name_what_varies_for_each_subject():
    import pandas as pd

    from attnbench.labels import series

    rows = pd.DataFrame({
        "scope": ["module", "module", "module", "model", "model"], "variant": ["gsa", "gsa", "local", "gsa", ""],
        "model": ["", "", "", "gsa_probe", "timm:vit_tiny_patch16_224"], "width": [1.0, 1.0, 1.0, 0.875, 1.0],
        "impl": ["batched", "plain", "halo", "pixelmajor", ""], "options": ["", "", "window=9", "", ""],
        "amp": [""] * 5, "channels_last": [False] * 5, "compile": [""] * 5})
    assert series(rows).tolist() == ["gsa/batched", "gsa/plain", "local[window=9]", "gsa_probe x0.875",
                                     "timm:vit_tiny_patch16_224"]


def test_the_published_figures_ship_inside_the_package():
    """A report reads the published figures, our counts and the variants' facts as the package's data, so that
    an installed wheel (`pip install .`) reports as a checkout does: importlib.resources finds them in
    attnbench.baselines, and pyproject.toml names them as its package data."""
    from importlib import resources

    tomllib = pytest.importorskip("tomllib")
    from attnbench import baselines

    data = resources.files("attnbench.baselines")
    shipped = {"published.csv", "ours.csv", "variants.csv"}
    assert {p.name for p in data.iterdir() if p.name.endswith(".csv")} == shipped
    assert {baselines.PUBLISHED.name, baselines.OURS.name, baselines.VARIANTS.name} == shipped
    assert all(Path(str(data.joinpath(name))) == baselines.DATA / name for name in shipped)
    root = Path(__file__).resolve().parent.parent
    assert not (root / "baselines").exists()  # beside the package, a wheel would leave them out
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "attnbench.*" in config["packages"]["find"]["include"]
    patterns = config["package-data"]["attnbench.baselines"]
    assert all(any(fnmatch(name, pattern) for pattern in patterns) for name in shipped)


def test_a_file_the_report_cannot_read_is_named_as_read_not_written(db, tmp_path, capsys, monkeypatch):
    from attnbench import baselines

    missing = tmp_path / "elsewhere" / "published.csv"
    monkeypatch.setattr(baselines, "PUBLISHED", missing)
    monkeypatch.setattr(baselines.load_published, "__defaults__", (missing,))
    monkeypatch.setattr(baselines.compare_published, "__defaults__", (missing,))
    out = tmp_path / "out"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {missing}" in err and "cannot write" not in err and err.count("\n") == 1
    assert not (out / "README.md").exists()


def test_a_store_of_training_runs_alone_reports_their_environment_and_no_latency(tmp_path):
    db = tmp_path / "trained.sqlite"
    env = Environment(host="trainer", device_name="Test CPU", torch_version="2.13.0", attnbench_version="0.1.0",
                      git_commit="0123456789abcdef", code_hash="c0de", created_utc="2026-11-27T00:00:00")
    for model, top1s in (("gsa_probe", (97.0, 99.0)), ("conv_probe", (60.0, 62.0))):
        for seed, top1 in enumerate(top1s):
            for epoch in (1, 2):
                store.write_training(db, Epoch(
                    run_id=f"{model}-{seed}", epoch=epoch, epochs=2, model=model, dataset="digits", top1_pct=top1,
                    params=100, macs_per_image=5_000_000, width=1.0, world_size=1, seed=seed,
                    variant=model.split("_")[0], environment=env))
    rep = report([db], tmp_path / "out", published=False)
    env_table = rep.tables["environments"]
    assert env_table[["store", "table", "host", "device", "torch_version", "rows", "commits", "code"]].values.tolist() \
        == [["trained.sqlite", "training", "trainer", "Test CPU", "2.13.0", 8, "0123456789ab", "c0de"]]
    index = (tmp_path / "out" / "README.md").read_text()
    assert re.search(r"\| trained\.sqlite +\| training +\| trainer +\| Test CPU ", index)
    assert "latency" not in index.lower() and "## Results" not in index  # nothing was timed
    assert "from 1 store:" in index and "Most accurate" in index and "gsa_probe (98.00 %, 2 seeds)" in index
    assert not [c for c in rep.tables["summary_accuracy"].columns if "latency" in c]
