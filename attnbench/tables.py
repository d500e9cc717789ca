"""Tables of results: what the report and the command line print, from rows of a store (pure functions of
DataFrames; nothing is measured or written here)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from attnbench.baselines import variant_facts
from attnbench.choices import NOISY, Scope, Status
from attnbench.console import BYTE_UNITS, COUNT_UNITS, TIME_UNITS, figure, unit_for
from attnbench.labels import setups, subjects
from attnbench.store import finished_runs

MIB = 2**20


METRICS = {  # column -> (name, its units: each table or figure takes the one that suits its figures)
    "latency_ms_median": ("latency", TIME_UNITS),
    "macs": ("MACs", COUNT_UNITS),
    "peak_mem_bytes": ("peak memory", BYTE_UNITS),
}


def series_groups(frame: pd.DataFrame):
    """Module-scope series that a scaling plot draws: one per device, dtype, mode, dim and batch."""
    module = frame[frame.scope == Scope.MODULE]
    return module.groupby(["device_label", "dtype", "mode", "dim", "batch"], sort=True)


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value * scale, spec)


def impls_vary(rows: pd.DataFrame) -> bool:
    """Whether something that ran appears with more than one implementation."""
    return bool(len(rows)) and rows.groupby(subjects(rows)).impl.nunique().max() > 1


def results_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The human table: units in the headers, one row per case; the implementation where it varies."""
    table = pd.DataFrame({
        "case": subjects(rows).values,
        "res": rows.res.values,
        "batch": rows.batch.values,
        "dim": np.where(rows.scope == Scope.MODULE, rows.dim, "-"),
        "dtype": rows.dtype.values,
        "device": rows.device.values,
        "mode": rows["mode"].values,
        "params (M)": [_fmt(v, ".4g", 1e-6) for v in rows.params],
        "MACs (G)": [_fmt(v, ".4g", 1e-9) for v in rows.macs],
        "latency ms (median ± IQR)": [
            "-" if s != Status.OK else f"{m:.3f} ± {i:.3f}" + (f" {NOISY}" if n == 1 else "")
            for s, m, i, n in zip(rows.status, rows.latency_ms_median, rows.latency_ms_iqr, rows.latency_noisy)],
        "throughput (/s)": [_fmt(v, ".1f") for v in rows.throughput_per_s],
        "peak memory (MiB)": [_fmt(v, ".4g", 1 / MIB) for v in rows.peak_mem_bytes],
        "GFLOP/s": [_fmt(2 * m / (t * 1e-3) / 1e9, ".1f") if s == Status.OK else "-"
                    for s, m, t in zip(rows.status, rows.macs, rows.latency_ms_median)],
        "status": [s if s == Status.OK else f"{s}: {r}" for s, r in zip(rows.status, rows.reason)],
    })
    if impls_vary(rows):
        table.insert(1, "impl", rows.impl.values)
    if rows.options.fillna("").ne("").any():
        table.insert(1, "options", rows.options.fillna("").values)
    setup = setups(rows)
    if setup.ne("").any():
        table.insert(1, "setup", setup.values)
        table["compile s"] = [_fmt(v, ".1f") for v in rows.compile_s]
    if rows.code_hash.fillna("").nunique() > 1:  # rows of different code side by side: never silently
        table.insert(1, "code", rows.code_hash.fillna("-").str[:8].values)
    return table


def largest_fit_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per device and module-scope series: the largest resolution measured, and the first that was not."""
    out = []
    for (device, dtype, mode, dim, batch), g in series_groups(frame):
        for name, v in g.groupby("series", sort=True):
            ok = v[v.status == Status.OK]
            failed = v[(v.status != Status.OK) & (v.res > (ok.res.max() if len(ok) else 0))].sort_values("res")
            out.append({
                "device": device, "dtype": dtype, "mode": mode, "dim": dim, "batch": batch, "variant": name,
                "largest res measured": int(ok.res.max()) if len(ok) else "-",
                "first res not measured": int(failed.res.iloc[0]) if len(failed) else "-",
                "why": f"{failed.status.iloc[0]}: {failed.reason.iloc[0]}" if len(failed) else "-",
            })
    return pd.DataFrame(out)


def exponent_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Fitted scaling exponents k (cost ~ pixels^k) per series, variant and metric, with the expectation."""
    facts = variant_facts(set(frame[frame.scope == Scope.MODULE].variant))
    expected = {r.name: (r.scaling_low, r.scaling_high) for r in facts.itertuples()}
    out = []
    for (device, dtype, mode, dim, batch), g in series_groups(frame):
        for name, v in g[g.status == Status.OK].groupby("series", sort=True):
            if v.res.nunique() < 3:  # too few resolutions to fit an exponent
                continue
            row = {"device": device, "dtype": dtype, "mode": mode, "dim": dim, "batch": batch,
                   "variant": name, "points": len(v),
                   "res": f"{v.res.min()}-{v.res.max()}"}
            for column, (name, _) in METRICS.items():
                k, r2 = fit_exponent(v.pixels, v[column])
                row[f"k {name}"] = round(k, 3) if not math.isnan(k) else math.nan
                row[f"R2 {name}"] = round(r2, 3) if not math.isnan(r2) else math.nan
            row["noisy timings"] = int(v.latency_noisy.fillna(0).astype(bool).sum())
            low, high = expected.get(v.variant.iloc[0], (math.nan, math.nan))
            row["expected k (asymptotic)"] = f"{low:g}" if low == high else f"{low:g}-{high:g}"
            out.append(row)
    return pd.DataFrame(out)


def published_table() -> pd.DataFrame:
    """Our params and MACs beside the published ones (``attnbench/baselines/published.csv``), with the difference."""
    from attnbench.baselines import compare_published

    t = compare_published()
    return pd.DataFrame({
        "network": t.model, "metric": t.metric, "published (as printed)": t.printed, "convention": t.convention,
        "published": [f"{v:,.0f}" for v in t.value],
        "ours": [_fmt(v, ",.0f") for v in t.ours],
        "difference (%)": [_fmt(v, "+.2f") for v in t.diff_pct],
        "agrees": ["-" if e == "unmatched" else "yes" if w else "no" for e, w in zip(t.expect, t.within)],
        "expected": t.expect, "source": t.source, "note": t.note.fillna(""),
    })


# what makes the runs of one trained setup (its seeds): the device by its type (cpu, cuda), not its model, so that
# seeds trained in several sittings on different hosts are one setup (their hosts are listed: ``trained on``)
SETUP_KEYS = ["dataset", "image_size", "model", "options", "width", "lr", "batch", "steps", "epochs", "plateau",
              "dtype", "device", "world_size"]


def one_run_per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows (of :func:`by_setup`: training runs or their evaluations) of the newest run of each seed of a
    setup: a seed trained again (with --overwrite, or into another --out) is one seed, not two of one value
    with no spread. Evaluations carry when their run finished training (``finished_utc``, where the stores
    hold it): a finished run's are preferred to those of a checkpoint evaluated midway, however recent, and
    are ranked by that time. Rows without a seed are kept as they are."""
    seeded = rows[rows.seed.notna()]
    newest = seeded.run_id.map(seeded.groupby("run_id").created_utc.max())
    finished = seeded.get("finished_utc", pd.Series(None, index=seeded.index)).astype(object)
    kept = seeded.assign(done=finished.notna(), newest=finished.where(finished.notna(), newest)).sort_values(
        ["done", "newest", "run_id"]).drop_duplicates([*SETUP_KEYS, "seed"], keep="last").run_id
    return rows[rows.seed.isna() | rows.run_id.isin(kept)]


def by_setup(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of training runs (or their evaluations) with ``SETUP_KEYS`` ready to group by: ``lr`` is "auto" for
    every rate ``--lr auto`` chose (one setup, whatever each seed chose; the rate in ``chosen``), ``device`` its
    type (``cuda:1`` is cuda), missing values "-"."""
    tuned = runs.lr_source.fillna("").str.startswith("validation")
    runs = runs.assign(chosen=runs.lr, options=runs.options.fillna(""), lr=runs.lr.astype(object).where(~tuned, "auto"),
                       device=device_types(runs.device))
    return runs.assign(**{k: runs[k].astype(object).where(runs[k].notna(), "-") for k in SETUP_KEYS})


def device_types(devices: pd.Series) -> pd.Series:
    """Each device's type (``cuda:1`` is cuda); a missing one (a store from before it was recorded) stays missing."""
    return devices.map(lambda d: d.split(":")[0] if isinstance(d, str) else None)


def hosts(runs: pd.DataFrame) -> str:
    """The devices (CPU or GPU models) some runs were made on, sorted, comma-separated."""
    return ", ".join(sorted(set(runs.device_name.dropna()))) or "-"


def setup_label(setup: dict) -> str:
    """The network of a setup and its variant options: 'nonlocal_probe (zero_init=False)'."""
    return setup["model"] + (f" ({setup['options'].replace(',', ', ')})" if setup["options"] else "")


def lr_label(setup: dict, runs: pd.DataFrame) -> object:
    """The setup's learning rate: as given, or 'auto: ' and the rates its seeds trained at."""
    return setup["lr"] if setup["lr"] != "auto" else "auto: " + ", ".join(f"{v:g}" for v in sorted(set(runs.chosen)))


def accuracy_table(frame: pd.DataFrame, training: pd.DataFrame) -> pd.DataFrame:
    """One row per trained setup (data set and image side, network and its variant options, width, learning
    rate (``auto: ...`` with the rates the seeds chose, for ``--lr auto``), batch, budget), over its seeds:
    test and train top-1 as mean, standard deviation and n from each finished run's last epoch (a run still
    in progress, or killed before its end, is left out), the optimizer steps the runs took, their cost
    (params, MACs, training time and, where the network was also measured at model scope at 32 x 32, batch
    1, fp32, at the width it was trained at (``run --width``), its inference latency), the commits that
    trained it, and how it stands against the best of its data set: ``best`` (or tied with it), ``within
    spread`` (the difference is smaller than the two standard deviations together: not significant), or the
    difference in points (marked when a side has one seed, so no spread to judge it by)."""
    last = finished_runs(training)
    time_s = training.groupby("run_id").epoch_s.sum()
    measured = frame[(frame.scope == Scope.MODEL) & (frame.status == Status.OK) & (frame.res == 32) & (frame.batch == 1)
                     & (frame.dtype == "fp32") & (frame["mode"] == "infer") & (setups(frame) == "")]
    measured = measured.assign(options=measured.options.fillna(""), device=device_types(measured.device))
    last = one_run_per_seed(by_setup(last.assign(time_s=last.run_id.map(time_s))))
    rows = []
    for key, runs in last.groupby(SETUP_KEYS, sort=True):
        setup = dict(zip(SETUP_KEYS, key))
        test, train = runs.top1_pct, runs.train_top1_pct
        latency = newest_latency(measured, setup, runs)
        rows.append({"dataset": setup["dataset"], "image side": setup["image_size"],
                     "model": setup_label(setup), "variant": runs.variant.iloc[0], "width": setup["width"],
                     "lr": lr_label(setup, runs), "seeds": len(runs),
                     "top-1 (%)": round(test.mean(), 2), "top-1 std": round(test.std(), 2) if len(runs) > 1 else 0.0,
                     "train top-1 (%)": round(train.mean(), 2) if train.notna().any() else math.nan,
                     "steps": int(runs.step.mean()) if runs.step.notna().any() else math.nan,
                     "params": int(runs.params.iloc[0]),
                     "MACs per image (M)": round(runs.macs_per_image.iloc[0] / 1e6, 2),
                     "training time (s)": round(runs.time_s.mean(), 1),
                     "latency ms (batch 1)": round(latency.latency_ms_median, 3) if latency is not None else math.nan,
                     "latency on": latency.device_name if latency is not None else "-",
                     "device": setup["device"], "trained on": hosts(runs), "processes": setup["world_size"],
                     "commit": ", ".join(sorted(set(runs.git_commit.dropna().str[:12]))) or "-"})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["vs best"] = ""
    for _, group in table.groupby("dataset"):
        best = group["top-1 (%)"].idxmax()
        for i in group.index:
            gap = table.at[best, "top-1 (%)"] - table.at[i, "top-1 (%)"]
            spread = table.at[best, "top-1 std"] + table.at[i, "top-1 std"]
            one_seed = min(table.at[best, "seeds"], table.at[i, "seeds"]) < 2  # no spread to compare with
            table.at[i, "vs best"] = ("best" if gap == 0 else f"-{gap:.2f} (one seed)" if one_seed
                                      else "within spread" if gap <= spread else f"-{gap:.2f}")
    return table


def newest_latency(measured: pd.DataFrame, setup: dict, runs: pd.DataFrame):
    """The newest latency row of a setup's network (model, width, options) on a device of its type: measured in
    a store that holds its ``runs`` where there is one (the table's own sitting, where its other networks were
    timed: the same network timed in another store, another day, took a quarter less time here), then on one of
    the devices it was trained on where there is one, else on any."""
    rows = measured[(measured.model == setup["model"]) & (measured.width.astype(float) == float(setup["width"]))
                    & (measured.options == setup["options"])
                    & ((measured.device == setup["device"]) | (setup["device"] == "-"))]  # "-": not recorded
    for preferred in ("store", "device_name"):
        if preferred in rows and preferred in runs and rows[preferred].isin(set(runs[preferred].dropna())).any():
            rows = rows[rows[preferred].isin(set(runs[preferred].dropna()))]
    return rows.sort_values("created_utc").iloc[-1] if len(rows) else None


def resolution_table(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Top-1 against the side tested: one row per trained setup (as the accuracy table groups its seeds), tables
    ("trained": the network as trained; "interpolated": its tables resized to the side) and side, over the
    seeds evaluated there: test top-1 as mean, standard deviation and n, train top-1, the change from the
    setup's top-1 at the side it was trained at (points), and, where some seeds' network did not run at the
    side, how many and why."""
    rows = []
    evaluations = one_run_per_seed(by_setup(evaluations))
    groups = evaluations.groupby([*SETUP_KEYS, "tables", "side"], sort=True)
    for key, runs in groups:
        setup = dict(zip([*SETUP_KEYS, "tables", "side"], key))
        ok, failed = runs[runs.status == Status.OK], runs[runs.status != Status.OK]
        rows.append({"dataset": setup["dataset"], "trained at": setup["image_size"], "model": setup_label(setup),
                     "variant": runs.variant.iloc[0], "width": setup["width"], "lr": lr_label(setup, runs),
                     "tables": setup["tables"],
                     "side": setup["side"], "seeds": len(ok),
                     "top-1 (%)": round(ok.top1_pct.mean(), 2) if len(ok) else math.nan,
                     "top-1 std": round(ok.top1_pct.std(), 2) if len(ok) > 1 else 0.0 if len(ok) else math.nan,
                     "train top-1 (%)": round(ok.train_top1_pct.mean(), 2) if ok.train_top1_pct.notna().any()
                     else math.nan,
                     "chance (%)": round(100 / runs.num_classes.dropna().iloc[0], 2)
                     if runs.num_classes.notna().any() else math.nan,
                     "not run": f"{len(failed)} {failed.status.iloc[0]}: {failed.reason.iloc[0]}" if len(failed)
                     else "", "device": setup["device"], "evaluated on": hosts(runs), "setup": key[: len(SETUP_KEYS)]})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    home = table[(table.tables == "trained") & (table.side == table["trained at"])]
    at_home = dict(zip(home.setup, home["top-1 (%)"]))  # each setup's top-1 at the side it was trained at
    table.insert(table.columns.get_loc("train top-1 (%)"), "vs trained side",
                 (table["top-1 (%)"] - table.setup.map(at_home).astype(float)).round(2))
    return table.drop(columns="setup")


MIN_GAIN_PCT = 5.0  # points above chance a setup needs at its own side to have an accuracy to hold


def resolution_retention(evaluations: pd.DataFrame) -> pd.DataFrame:
    """How well each trained setup holds its accuracy away from the side it was trained at, per tables: the
    share of its top-1 above chance at its own side (the network as trained) that remains at the other sides,
    averaged over the sides every setup of its data set (and training side) was tested at, so that setups are
    compared like for like. A side the network refuses keeps none (it cannot run there); one where it failed
    (out of memory on that machine, an error) is no result and is left out of its average alone; below chance
    keeps none, and above its own side's top-1 keeps all (the rest is the seeds' noise). Setups within
    ``MIN_GAIN_PCT`` points of chance at their own side have nothing to hold and are left out. Best first within
    each data set."""
    table = resolution_table(evaluations[evaluations.status != Status.ERROR])
    if table.empty:
        return table
    keys = ["dataset", "model", "width", "lr", "trained at", "device"]
    tested = resolution_table(evaluations)  # failures too: one setup's failure drops that side for it alone
    away = tested[(tested.side != tested["trained at"]) & (tested.tables == "trained")]
    common = {key: set.intersection(*(set(g.side) for _, g in group.groupby(keys, sort=False)))
              for key, group in away.groupby(["dataset", "trained at"], sort=False)}
    out = []
    for (dataset, model, width, lr, trained_at, device), setup in table.groupby(keys, sort=True):
        home = setup[(setup.tables == "trained") & (setup.side == trained_at)]["top-1 (%)"]
        chance = setup["chance (%)"].iloc[0]
        sides = common.get((dataset, trained_at), set())
        if home.empty or not home.iloc[0] - chance >= MIN_GAIN_PCT:
            continue
        for tables, rows in setup[setup.side.isin(sides)].groupby("tables", sort=True):
            kept = ((rows["top-1 (%)"].fillna(chance) - chance) / (home.iloc[0] - chance)).clip(0, 1)
            out.append({"dataset": dataset, "model": model, "width": width, "lr": lr, "tables": tables,
                        "trained at": trained_at, "top-1 there (%)": home.iloc[0],
                        "sides": ", ".join(str(s) for s in rows.side),
                        "retained (%)": round(100 * kept.mean(), 1),
                        "worst side": int(rows.side.iloc[int(kept.to_numpy().argmin())]), "device": device})
    retained = pd.DataFrame(out)
    if retained.empty:
        return retained
    return retained.sort_values(["dataset", "retained (%)", "model"], ascending=[True, False, True],
                                kind="stable").reset_index(drop=True)


def holds_best(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Per data set, the setups (and tables) that hold their accuracy best away from the side they were trained
    at (:func:`resolution_retention`'s first rows, every one tied with the first): the mechanisms least hurt by
    a change of resolution."""
    retained = resolution_retention(evaluations)
    if retained.empty:
        return retained
    best = retained.groupby("dataset")["retained (%)"].transform("max")
    return retained[retained["retained (%)"] == best].reset_index(drop=True)


def pareto(cost: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both (lower cost, higher accuracy), by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -accuracy[i]))
    front, best = [], -math.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def fit_exponent(pixels: Sequence[float], cost: Sequence[float]) -> tuple[float, float]:
    """``k`` and ``R^2`` of the least-squares fit ``log cost = k log pixels + c``; NaN under 3 points."""
    x, y = np.log(np.asarray(pixels, float)), np.log(np.asarray(cost, float))
    if len(x) < 3 or np.ptp(x) == 0:
        return math.nan, math.nan
    k, c = np.polyfit(x, y, 1)
    residual = y - (k * x + c)
    total = ((y - y.mean()) ** 2).sum()
    return float(k), float(1 - (residual**2).sum() / total) if total > 0 else 1.0


MIN_R2 = 0.9  # a fitted exponent is said in prose, or printed on a figure, only from a fit this good


def trusted(r2: float, noisy: int = 0) -> bool:
    """Whether a fit may be told as an exponent: R^2 of at least ``MIN_R2`` on points none of which is noisy."""
    return not math.isnan(r2) and r2 >= MIN_R2 and not noisy


def trusted_exponent(pixels: Sequence[float], cost: Sequence[float],
                     noisy: Sequence | None = None) -> tuple[float, float]:
    """:func:`fit_exponent` where :func:`trusted` allows it (the points' ``noisy`` flags counted), else NaN."""
    k, r2 = fit_exponent(pixels, cost)
    flagged = 0 if noisy is None else int(pd.Series(noisy).fillna(0).astype(bool).sum())
    return (k, r2) if trusted(r2, flagged) else (math.nan, math.nan)


def environments(*tables: pd.DataFrame) -> pd.DataFrame:
    """One row per store, table and environment: where and with what the numbers of ``tables`` (the results,
    training epochs and evaluations of :func:`attnbench.report.load`) were measured, trained or evaluated."""
    cols = ["store", "table", "host", "device_label", "cpu_model", "gpu_name", "torch_version", "cuda_version",
            "attnbench_version"]
    parts = [rows.assign(table=name, device_label=rows.device_name.fillna(rows.device)).reindex(
        columns=cols + ["created_utc", "git_commit", "code_hash"])
        for name, rows in zip(("results", "training", "evaluations"), tables) if len(rows)]
    g = pd.concat(parts, ignore_index=True).groupby(cols, dropna=False, sort=False)
    env = g.agg(rows=("table", "size"), first_utc=("created_utc", "min"), last_utc=("created_utc", "max"),
                commits=("git_commit", lambda s: ", ".join(sorted(set(s.dropna().str[:12]))) or "-"),
                code=("code_hash", lambda s: ", ".join(sorted(set(s.fillna("before code hashes")))))).reset_index()
    env = env.sort_values(["store", "host", "device_label", "table"], kind="stable", ignore_index=True)
    return env.rename(columns={"device_label": "device"}).astype(object).fillna("-")


def relative_to_conv(g: pd.DataFrame) -> pd.DataFrame:
    """Latency and MACs of each network over the conv network measured alike (same side, batch, width and
    settings): the one of its own architecture (gsa_resnet26 over resnet26, gsa_probe over conv_probe), else
    ResNet-50 (botnet50, timm's networks), named in the table when they differ."""
    rows = []
    for (batch, _, _), b in g.groupby(["batch", "setup", "width"], sort=True):
        bases = {r.arch: r for r in b[b.variant == "conv"].itertuples()}
        for r in b.itertuples():
            base = bases.get(r.arch) or bases.get("resnet50")
            if base is None:
                continue
            rows.append({"network": r.series, "batch": batch, "relative to": base.series,
                         "latency (ms)": round(r.latency_ms_median, 2),
                         "latency / conv": round(r.latency_ms_median / base.latency_ms_median, 2),
                         "MACs (G)": round(r.macs / 1e9, 3), "MACs / conv": round(r.macs / base.macs, 3),
                         "latency per GMAC / conv's": round((r.latency_ms_median / r.macs)
                                                            / (base.latency_ms_median / base.macs), 2)})
    table = pd.DataFrame(rows)
    if table.empty or table["relative to"].nunique() > 1:
        return table
    return table.drop(columns="relative to")


# The summary: who wins where. Each cell names the winner and its figure, in a unit chosen for the figure.
SUMMARY_KEYS = ["scope", "device_label", "dtype", "mode", "dim", "batch", "res"]  # one comparison per row


def amount(value: float, units: list[tuple[float, str]], suffix: str = "", digits: int = 3) -> str:
    """``value`` in the largest unit of ``units`` it reaches (``units`` as in :mod:`attnbench.console`): '52.4 M',
    '3.10 MiB', '0.412 ms'."""
    size, name = unit_for([value], units)
    return f"{figure(value, size, digits)} {name}{suffix}".rstrip()


def _newest(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per series (the newest measurement where a series was measured more than once), by name."""
    return rows.sort_values("created_utc").groupby("series", sort=True).tail(1).sort_values("series", kind="stable")


def _winner(rows: pd.DataFrame, column: str, units: list[tuple[float, str]], suffix: str = "") -> str:
    """'name (figure)' of the row with the least ``column`` (the first by name on a tie); '-' when none has it."""
    rows = rows.dropna(subset=[column])
    if rows.empty:
        return "-"
    best = rows.loc[rows[column].idxmin()]
    return f"{best.series} ({amount(best[column], units, suffix)})"


def _runner_up(rows: pd.DataFrame) -> str:
    """The second fastest, its latency over the fastest's, and 'within IQR' where the two medians lie closer
    than their interquartile ranges together (no clear winner)."""
    rows = rows.dropna(subset=["latency_ms_median"]).sort_values(["latency_ms_median", "series"], kind="stable")
    if len(rows) < 2:
        return "-"
    first, second = rows.iloc[0], rows.iloc[1]
    ratio = second.latency_ms_median / first.latency_ms_median
    close = second.latency_ms_median - first.latency_ms_median <= (first.latency_ms_iqr + second.latency_ms_iqr) / 2
    return f"{second.series} (x{ratio:.2f}{', within IQR' if close else ''})"


def stores_apart(frame: pd.DataFrame) -> list[str]:
    """``["store"]`` where rows of several stores are compared, else none: two sittings of one machine differ by
    up to a quarter in every timing here, so a series timed in one would win or lose against the other's by the
    day it was timed on; the summaries compare each store's apart (``attnbench merge`` makes one of several)."""
    return ["store"] if "store" in frame and frame.store.nunique() > 1 else []


def cost_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Who wins where on cost: per scope, device, dtype, mode, dim (modules), batch and resolution, among the
    series that ran there, the fastest (median latency, noisy timings marked) and the runner-up, the leanest in
    peak memory, MACs and parameters, and the Pareto front of latency against peak memory (the series that no
    other beats on both; fastest first); each store apart (:func:`stores_apart`)."""
    ok = frame[frame.status == Status.OK]
    apart = stores_apart(ok)
    rows = []
    for key, group in ok.groupby(SUMMARY_KEYS + apart, sort=True):
        g = _newest(group).reset_index(drop=True)
        fastest = g.loc[g.latency_ms_median.idxmin()]
        lean = g.dropna(subset=["peak_mem_bytes"]).reset_index(drop=True)
        front = pareto(list(lean.latency_ms_median), list(-lean.peak_mem_bytes.astype(float)))
        rows.append(dict(zip(["scope", "device", "dtype", "mode", "dim", "batch", "res", *apart], key)) | {
            "series": len(g),
            "fastest": f"{fastest.series} ({amount(fastest.latency_ms_median, TIME_UNITS)}"
                       + (f" {NOISY}" if fastest.latency_noisy == 1 else "") + ")",
            "runner-up": _runner_up(g),
            "least memory": _winner(g, "peak_mem_bytes", BYTE_UNITS),
            "fewest MACs": _winner(g, "macs", COUNT_UNITS),
            "fewest params": _winner(g, "params", COUNT_UNITS),
            "latency-memory front": ", ".join(lean.series[i] for i in front) or "-",
        })
    return pd.DataFrame(rows)


def fastest_by_side(frame: pd.DataFrame) -> pd.DataFrame:
    """Latency against resolution at module scope, as its lower envelope: per device, dtype, mode, dim and batch
    measured at two sides or more, which series is fastest over which sides ('conv 16-128, window 256-512'), and
    the same among the attention variants (every variant but conv); each store apart (:func:`stores_apart`)."""
    ok = frame[(frame.status == Status.OK) & (frame.scope == Scope.MODULE)]
    keys = ["device", "dtype", "mode", "dim", "batch", *stores_apart(ok)]
    rows = []
    for key, g in ok.assign(device=ok.device_label).groupby(keys, sort=True):
        if g.res.nunique() < 2:
            continue
        row = dict(zip(keys, key))
        for column, rows_of in (("fastest by side", g), ("fastest attention by side", g[g.variant != "conv"])):
            spans: list[list] = []  # [series, first side, last side]
            for res, at in rows_of.groupby("res", sort=True):
                at = at.sort_values(["latency_ms_median", "series"], kind="stable")
                name = at.series.iloc[0]
                if spans and spans[-1][0] == name:
                    spans[-1][2] = res
                else:
                    spans.append([name, res, res])
            row[column] = ", ".join(f"{n} {a}" + (f"-{b}" if b != a else "") for n, a, b in spans) or "-"
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_summary(acc: pd.DataFrame, evaluations: pd.DataFrame) -> pd.DataFrame:
    """Who wins where on accuracy: per data set, image side and device of the accuracy table (``acc``), the most
    accurate setup; the setup as accurate as it (the best, or within the spread of the seeds) with the fewest
    MACs, and with the lowest latency where latency was measured (the most accuracy per MAC and per ms); the
    Pareto fronts of top-1 against MACs and against latency (cheapest first; no latency columns where no
    setup's latency was measured); and, from evaluations at other sides, the setup that holds its accuracy best
    away from the side it was trained at."""
    held = holds_best(evaluations) if len(evaluations) else pd.DataFrame()
    held = {dataset: ", ".join(model + ("" if tables == "trained" else " (tables interpolated)")
                               for model, tables in zip(g.model, g.tables))
            + f" ({g['retained (%)'].iloc[0]:.1f} % kept)" for dataset, g in held.groupby("dataset", sort=True)
            } if len(held) else {}
    costs = [("MACs per image (M)", "fewest MACs", COUNT_UNITS, "MACs")]
    if acc["latency ms (batch 1)"].notna().any():  # no latency columns for a store of training runs alone
        costs.append(("latency ms (batch 1)", "lowest latency", TIME_UNITS, ""))
    rows = []
    for (dataset, side, device), t in acc.groupby(["dataset", "image side", "device"], sort=True):
        t = t.reset_index(drop=True)
        best = t.loc[t["top-1 (%)"].idxmax()]
        level = t[t["vs best"].isin(["best", "within spread"])]
        row = {"dataset": dataset, "image side": side, "device": device, "setups": len(t),
               "most accurate": f"{best.model} ({best['top-1 (%)']:.2f} %, {best.seeds} seed"
                                + ("s" if best.seeds != 1 else "") + ")"}
        for cost, column, units, suffix in costs:
            scale = 1e6 if cost.startswith("MACs") else 1.0
            measured = level.dropna(subset=[cost])
            cheapest = measured.loc[measured[cost].idxmin()] if len(measured) else None
            row[f"as accurate, {column}"] = "-" if cheapest is None else (
                f"{cheapest.model} ({amount(cheapest[cost] * scale, units, suffix)})")
            points = t.dropna(subset=[cost]).reset_index(drop=True)
            front = pareto(list(points[cost]), list(points["top-1 (%)"]))
            row[f"front: top-1 vs {'MACs' if scale != 1 else 'latency'}"] = ", ".join(
                points.model[i] for i in front) or "-"
        row["holds best away from its side"] = held.get(dataset, "-")
        rows.append(row)
    return pd.DataFrame(rows)
