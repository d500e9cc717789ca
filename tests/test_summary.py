"""The summary (who wins where) against an independent computation on stores built here with known numbers:
winners by a plain loop, Pareto fronts by brute force."""

import itertools
import random
import re
from pathlib import Path

import pytest
from test_report import row

from attnbench import store
from attnbench.cli import main
from attnbench.console import BYTE_UNITS, COUNT_UNITS, TIME_UNITS
from attnbench.record import Environment, Epoch, Evaluation
from attnbench.report import load, report, summary_tables
from attnbench.tables import amount, pareto

VARIANTS = ["conv", "gsa", "local", "nonlocal", "window"]
DEVICES = {"cpu": "Test CPU", "cuda:0": "Test GPU"}
SIDES = [16, 32, 64]


def dominated(points, i):
    """Whether another point is at least as good as point i on both (cost, -accuracy) and better on one."""
    ci, ai = points[i]
    return any(cj <= ci and aj >= ai and (cj, aj) != (ci, ai) for j, (cj, aj) in enumerate(points) if j != i)


def brute_front(points):
    return sorted((i for i in range(len(points)) if not dominated(points, i)), key=lambda i: points[i])


def test_pareto_matches_brute_force_on_random_points():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        cost = rng.sample(range(1000), n)  # distinct: brute force keeps every one of equal points
        accuracy = rng.sample(range(1000), n)
        points = list(zip(cost, accuracy))
        assert pareto(cost, accuracy) == brute_front(points)


@pytest.fixture
def measured(tmp_path):
    """Module cases on two devices at three sides with random but known costs; one gsa case skipped."""
    rng = random.Random(1)
    db = tmp_path / "costs.sqlite"
    truth = {}
    for (device, name), res, variant in itertools.product(DEVICES.items(), SIDES, VARIANTS):
        if (device, res, variant) == ("cpu", 64, "gsa"):
            store.write(db, row("gsa", res, device=device, name=name, status="skipped"))
            continue
        costs = dict(latency_ms_median=rng.uniform(0.05, 50), latency_ms_iqr=rng.uniform(0, 0.01),
                     peak_mem_bytes=rng.randint(2**10, 2**30), macs=rng.randint(10**5, 10**10),
                     params=rng.randint(10**3, 10**6), latency_noisy=False)
        truth[(name, res, variant)] = costs
        store.write(db, row(variant, res, device=device, name=name, k=1.0, **costs))
    return db, truth


def test_cost_summary_names_the_winners_and_the_latency_memory_front(measured):
    db, truth = measured
    tables = summary_tables(*load([db]))
    module = tables["summary_module"].set_index(["device", "res"])
    assert len(module) == len(DEVICES) * len(SIDES) and "summary_model" not in tables
    for (name, res), got in module.iterrows():
        here = {v: c for (n, r, v), c in truth.items() if (n, r) == (name, res)}
        assert got["series"] == len(here)
        by = {metric: min(here, key=lambda v: here[v][metric]) for metric in
              ("latency_ms_median", "peak_mem_bytes", "macs", "params")}
        for column, metric, units in (("fastest", "latency_ms_median", TIME_UNITS),
                                      ("least memory", "peak_mem_bytes", BYTE_UNITS),
                                      ("fewest MACs", "macs", COUNT_UNITS), ("fewest params", "params", COUNT_UNITS)):
            assert got[column] == f"{by[metric]} ({amount(here[by[metric]][metric], units)})", column
        ranked = sorted(here, key=lambda v: here[v]["latency_ms_median"])
        ratio = here[ranked[1]]["latency_ms_median"] / here[ranked[0]]["latency_ms_median"]
        assert got["runner-up"] == f"{ranked[1]} (x{ratio:.2f})"  # IQRs are far smaller than any gap here
        names = sorted(here)
        points = [(here[v]["latency_ms_median"], -here[v]["peak_mem_bytes"]) for v in names]
        assert got["latency-memory front"] == ", ".join(names[i] for i in brute_front(points))
    sides = tables["summary_sides"].set_index("device")
    for name in DEVICES.values():
        fastest = [min((v for (n, r, v) in truth if (n, r) == (name, res)),
                       key=lambda v: truth[(name, res, v)]["latency_ms_median"]) for res in SIDES]
        spans = [(v, [r for r, w in zip(SIDES, fastest) if w == v]) for v, _ in itertools.groupby(fastest)]
        expected = ", ".join(f"{v} {rs[0]}" + (f"-{rs[-1]}" if len(rs) > 1 else "") for v, rs in spans)
        assert sides.loc[name, "fastest by side"] == expected


def test_a_tie_within_the_spread_and_a_noisy_fastest_are_said(tmp_path):
    db = tmp_path / "tie.sqlite"
    store.write(db, row("conv", 32, k=1.0, latency_ms_median=1.0, latency_ms_iqr=0.2, latency_noisy=True))
    store.write(db, row("gsa", 32, k=1.0, latency_ms_median=1.1, latency_ms_iqr=0.2))
    got = summary_tables(*load([db]))["summary_module"].iloc[0]
    assert got["fastest"] == "conv (1.00 ms ~)" and got["runner-up"] == "gsa (x1.10, within IQR)"


def test_units_are_chosen_for_each_figure():
    assert amount(0.0412, TIME_UNITS) == "41.2 µs" and amount(1234.0, TIME_UNITS) == "1.23 s"
    assert amount(3 * 2**20, BYTE_UNITS) == "3.00 MiB" and amount(512, BYTE_UNITS) == "512 B"
    assert amount(52_400_000, COUNT_UNITS, "MACs") == "52.4 MMACs" and amount(8350, COUNT_UNITS) == "8.35 K"


def test_accuracy_summary_most_accurate_for_its_cost_fronts_and_who_holds_best(tmp_path):
    db = tmp_path / "acc.sqlite"
    env = Environment(device_name="Test CPU")
    runs = {  # model: (top-1 of seeds 0 and 1, MACs per image, latency ms at batch 1 or None)
        "conv_probe": ((51.0, 52.0), 5e6, 0.5), "axial_probe": ((96.0, 98.0), 4e6, 4.0),
        "gsa_probe": ((97.0, 99.0), 6e6, 2.0), "local_probe": ((60.0, 61.0), 12e6, 3.0),
        "nonlocal_probe": ((90.0, 70.0), 20e6, None)}
    for model, (top1s, macs, latency) in runs.items():
        variant = model.split("_")[0]
        for seed, top1 in enumerate(top1s):
            store.write_training(db, Epoch(
                run_id=f"{model}-{seed}", epoch=1, epochs=1, model=model, dataset="longrange", train_loss=0.5,
                top1_pct=top1, top5_pct=100.0, epoch_s=3.0, params=100, macs_per_image=int(macs), width=1.0,
                world_size=1, seed=seed, variant=variant, environment=env))
        if latency is not None:
            store.write(db, row(variant, 32, scope="model", batch=1, k=1.0, arch="probe", latency_ms_median=latency))
    for model, kept in (("gsa_probe", 90.0), ("axial_probe", 70.0)):  # gsa keeps more of its accuracy at 48
        for side, top1 in ((32, 100.0), (48, 50 + kept / 2)):
            store.write_evaluation(db, Evaluation(
                run_id=f"{model}-0", model=model, dataset="longrange", image_size=32, side=side, top1_pct=top1,
                num_classes=2, width=1.0, environment=env))
    got = summary_tables(*load([db]))["summary_accuracy"].iloc[0]
    mean = {m: sum(t) / 2 for m, (t, _, _) in runs.items()}
    assert got["most accurate"] == "gsa_probe (98.00 %, 2 seeds)"
    # as accurate as gsa (98 +- 1.41): axial (97 +- 1.41) is within the spread and cheaper in MACs; gsa is faster
    assert got["as accurate, fewest MACs"] == "axial_probe (4.00 MMACs)"
    assert got["as accurate, lowest latency"] == "gsa_probe (2.00 ms)"
    names = sorted(runs)
    front = brute_front([(runs[m][1], mean[m]) for m in names])
    assert got["front: top-1 vs MACs"] == ", ".join(names[i] for i in front) == "axial_probe, gsa_probe"
    timed = [m for m in names if runs[m][2] is not None]
    front = brute_front([(runs[m][2], mean[m]) for m in timed])
    assert got["front: top-1 vs latency"] == ", ".join(timed[i] for i in front) == "conv_probe, gsa_probe"
    assert got["holds best away from its side"] == "gsa_probe (90.0 % kept)"  # as trained: conv has no tables


def test_a_seed_trained_again_counts_once_by_its_newest_run_and_nothing_held_is_said_as_such(tmp_path, capsys):
    """Seed 0 trained twice (with --overwrite, or into another --out) made 'two seeds' of one value (std 0), and
    evaluations from which no setup holds an accuracy (made at the side trained at alone) stopped the
    summary and the report with an AttributeError."""
    db = tmp_path / "acc.sqlite"
    for run, seed, top1, when in (("old", 0, 40.0, "2026-01-01T00:00:00"), ("new", 0, 60.0, "2026-01-02T00:00:00"),
                                  ("other", 1, 70.0, "2026-01-01T12:00:00")):
        env = Environment(device_name="Test CPU", created_utc=when)
        store.write_training(db, Epoch(run_id=run, epoch=1, epochs=1, model="conv_probe", dataset="digits", seed=seed,
                                       top1_pct=top1, params=100, macs_per_image=10**6, width=1.0, world_size=1,
                                       variant="conv", environment=env))
        store.write_evaluation(db, Evaluation(run_id=run, model="conv_probe", dataset="digits", seed=seed,
                                              image_size=32, side=32, top1_pct=top1, num_classes=10, width=1.0,
                                              environment=env))  # at its own side only: nothing away to hold
    midway = Environment(device_name="Test CPU", created_utc="2026-01-03T00:00:00")  # a checkpoint of seed 0's
    store.write_evaluation(db, Evaluation(run_id="midway", model="conv_probe", dataset="digits", seed=0, image_size=32,
                                          side=32, top1_pct=10.0, num_classes=10, width=1.0, environment=midway))
    tables = summary_tables(*load([db]))  # evaluated latest, but not a finished run: the finished ones stand
    assert tables["summary_accuracy"].iloc[0]["most accurate"] == "conv_probe (65.00 %, 2 seeds)"  # 60 and 70
    assert tables["summary_accuracy"].iloc[0]["holds best away from its side"] == "-"
    rep = report([db], tmp_path / "out", published=False)
    (acc,) = rep.tables["accuracy"].itertuples()
    assert (acc.seeds, acc._8) == (2, 65.0) and rep.tables["accuracy"]["top-1 std"][0] == round(2 ** 0.5 * 5, 2)
    assert "resolution_retention" not in rep.tables and not (tmp_path / "out" / "tables" / "resolution_retention.md"
                                                             ).exists()  # at its own side only: no empty table
    assert "resolution_retention" not in (tmp_path / "out" / "README.md").read_text()
    at = rep.tables["resolution"].set_index("side")
    assert at.loc[32, "seeds"] == 2 and at.loc[32, "top-1 (%)"] == 65.0
    assert main(["summary", "--db", str(db)]) == 0 and "conv_probe (65.00 %, 2 seeds)" in capsys.readouterr().out


def test_the_summary_tops_the_report_index_and_the_terminal_prints_it(measured, tmp_path, capsys):
    db, _ = measured
    rep = report([db], tmp_path / "out", published=False)
    index = (tmp_path / "out" / "README.md").read_text()
    summary_at = index.index("## Summary: who wins where")
    assert summary_at < index.index("## Where the numbers come from") < index.index("## Results")
    assert {"summary_module", "summary_sides"} <= set(rep.tables)
    assert main(["summary", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "Attention modules alone: fastest and leanest" in out
    for cell in rep.tables["summary_module"].fastest:
        assert cell in out
    assert main(["summary", "--db", str(tmp_path / "none.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnbench summary: ") and err.count("\n") == 1


def test_stores_of_evaluations_alone_have_no_summary_and_the_terminal_says_so(tmp_path, capsys):
    db = tmp_path / "ev.sqlite"
    for side in (24, 32):
        store.write_evaluation(db, Evaluation(run_id="r", model="gsa_probe", dataset="digits", image_size=32, side=side,
                                              top1_pct=90.0, num_classes=10))
    report([db], tmp_path / "out", published=False)
    index = (tmp_path / "out" / "README.md").read_text()
    assert "Summary" not in index and "## Accuracy across resolutions" in index
    assert main(["summary", "--db", str(db)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and (f"The store {db} holds nothing a summary compares" in err
                                                   and "draws what it holds." in err)
    assert main(["summary", "--db", str(db), "--db", str(db)]) == 2
    assert f"The stores {db}, {db} hold nothing" in capsys.readouterr().err


def test_the_terminal_summary_fits_the_line_width_in_blocks_that_repeat_the_key(measured, capsys, monkeypatch):
    db, _ = measured
    tables = summary_tables(*load([db]))
    for width, given in ((70, ["--line-width", "70"]), (90, [])):  # the terminal's width (COLUMNS) unless given
        monkeypatch.setenv("COLUMNS", "90")
        assert main(["summary", "--db", str(db), *given]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert max(map(len, lines)) <= width
        for table in tables.values():  # every header and every cell is printed, none cut
            for column in table.columns:
                assert any(column in line for line in lines), column
            for cell in table.astype(str).to_numpy().ravel():
                assert any(cell in line for line in lines), cell
        modules = [line for line in lines if line.startswith("Test CPU")]
        assert len(modules) > len(tables["summary_module"][lambda t: t.device == "Test CPU"])  # the key repeated
    assert main(["summary", "--db", str(db), "--markdown", "--line-width", "40"]) == 0  # Markdown: whole rows
    out = capsys.readouterr().out
    assert "| device " in out and max(map(len, out.splitlines())) > 100


def test_the_readme_shows_the_reference_reports_summary_as_the_report_wrote_it():
    """The README's headline table is a copy of the reference report's table, kept equal to it, and every figure
    it shows from the report exists."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    copy = re.search(r"<!-- headline-table: (\S+) -->\n(.*?)\n<!-- end headline-table -->", readme, re.S)
    assert copy, "README.md shows no headline table"
    assert copy.group(2) == (root / copy.group(1)).read_text().rstrip("\n"), \
        f"README.md's headline table is not {copy.group(1)}: copy it again after regenerating the reference report"
    figures = re.findall(r"!\[[^\]]*\]\((reports/[^)]+)\)", readme)
    assert figures and all((root / f).is_file() for f in figures)
