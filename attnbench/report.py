"""Reports: tables and plots regenerated from results stores, and nothing else.

``report(dbs, out)`` reads one or more stores (one per machine or GPU, say), and writes Markdown
and CSV tables, PNG and SVG figures and an index ``README.md`` under ``out``. The same stores
give the same files. It measures nothing; the published-figures table is computed from the code
and ``baselines/published.csv``, which are as fixed as the stores.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench import store
from attnbench.choices import DEFAULT_REPORT
from attnbench.registry import iter_specs, list_variants

MIB = 2**20


class ReportError(Exception):
    """Stores that hold nothing to report, with the reason in one line."""


@dataclass
class Report:
    """What ``report`` made: the tables as DataFrames, the figures, and the files written."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)  # name -> matplotlib Figure
    files: list[Path] = field(default_factory=list)


# ---- data ----------------------------------------------------------------------------------------


def load(dbs: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every measured case and every training epoch of the stores, in a stable order."""
    if not dbs:
        raise ReportError("No results store given.")
    frame = pd.concat([store.load_results(db).assign(store=Path(db).name) for db in dbs], ignore_index=True)
    frame = frame.drop_duplicates(["case_key", "env_key"])
    training = pd.concat([store.load_training(db) for db in dbs], ignore_index=True).drop_duplicates(
        ["run_id", "epoch"])
    if frame.empty and training.empty:
        raise ReportError(f"The store{'s' if len(dbs) > 1 else ''} {', '.join(map(str, dbs))} hold no results; "
                          "run `attnbench run` or `attnbench train` first.")
    if training.empty and not (frame.status == "ok").any():
        raise ReportError("Every stored case failed (" + ", ".join(sorted(set(frame.status))) +
                          "): there is nothing to draw; see `attnbench export` for the reasons.")
    frame["pixels"] = frame.res.astype(np.int64) ** 2
    # a variant measured with several implementations is drawn and tabled as one series per implementation
    several = frame.groupby("variant").impl.transform("nunique") > 1
    frame["variant"] = frame.variant.where(~several, frame.variant + "/" + frame.impl)
    frame["device_label"] = frame.device_name.fillna(frame.device)
    frame = frame.sort_values(["device_label", "scope", "variant", "arch", "dtype", "mode", "dim", "batch",
                               "res", "created_utc"]).reset_index(drop=True)
    return frame, training.sort_values(["dataset", "model", "run_id", "epoch"]).reset_index(drop=True)


def accuracy_table(frame: pd.DataFrame, training: pd.DataFrame) -> pd.DataFrame:
    """The last epoch of each training run, with its cost: params, MACs, training time and, where the
    network was also measured (model scope at 32 x 32, batch 1), its inference latency."""
    last = training.sort_values("epoch").groupby("run_id", sort=False).tail(1)
    time_s = training.groupby("run_id").epoch_s.sum()
    latency = {}
    measured = frame[(frame.scope == "model") & (frame.status == "ok") & (frame.res == 32) & (frame.batch == 1)]
    for r in measured.itertuples():
        latency[(f"{r.variant}_{r.arch}", r.device_name)] = r.latency_ms_median
    rows = []
    for r in last.sort_values(["dataset", "model", "run_id"]).itertuples():
        rows.append({"dataset": r.dataset, "model": r.model, "width": r.width, "epochs": r.epoch,
                     "top-1 (%)": round(r.top1_pct, 2), "top-5 (%)": round(r.top5_pct, 2),
                     "params": int(r.params), "MACs (M)": round(r.macs / 1e6, 2),
                     "training time (s)": round(time_s[r.run_id], 1),
                     "latency ms (batch 1)": round(latency[(r.model, r.device_name)], 3)
                     if (r.model, r.device_name) in latency else math.nan,
                     "device": r.device_name, "processes": r.world_size, "seed": r.seed})
    return pd.DataFrame(rows)


def pareto(cost: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both (lower cost, higher accuracy), by cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -accuracy[i]))
    front, best = [], -math.inf
    for i in order:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def accuracy_figure(table: pd.DataFrame, cost: str, label: str, title: str):
    """Top-1 accuracy against a cost, one point per network, with the Pareto front."""
    palette = colours()
    fig, (ax,) = _new_figure(1, 6.5)
    t = table.dropna(subset=[cost]).reset_index(drop=True)
    for model, x, y in zip(t.model, t[cost], t["top-1 (%)"]):
        ax.scatter(x, y, color=palette.get(model.split("_")[0]), s=40, zorder=3)
        ax.annotate(model, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = pareto(list(t[cost]), list(t["top-1 (%)"]))
    ax.plot(t.loc[front, cost], t.loc[front, "top-1 (%)"], "--", color="grey", label="Pareto front", zorder=2)
    return _finish(fig, ax, title, xscale="log", xlabel=label, ylabel="test top-1 (%)")


def slug(text: str) -> str:
    """File-name form of a label: 'Intel(R) Xeon(R) Processor' -> 'intel-xeon-processor'."""
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def fit_exponent(pixels: Sequence[float], cost: Sequence[float]) -> tuple[float, float]:
    """``k`` and ``R^2`` of the least-squares fit ``log cost = k log pixels + c``; NaN under 3 points."""
    x, y = np.log(np.asarray(pixels, float)), np.log(np.asarray(cost, float))
    if len(x) < 3 or np.ptp(x) == 0:
        return math.nan, math.nan
    k, c = np.polyfit(x, y, 1)
    residual = y - (k * x + c)
    total = ((y - y.mean()) ** 2).sum()
    return float(k), float(1 - (residual**2).sum() / total) if total > 0 else 1.0


class Palette(dict):
    """Colours by variant; a series labelled ``variant/impl`` takes its variant's colour."""

    def get(self, label: str, default=None):
        return super().get(label.split("/")[0], default)


def colours() -> Palette:
    """One colour per variant, the same in every figure (registry order)."""
    import seaborn as sns

    names = list_variants()
    palette = sns.color_palette("colorblind", n_colors=max(10, len(names)))
    return Palette({name: palette[i] for i, name in enumerate(names)})


METRICS = {  # column -> (axis label, scale)
    "latency_ms_median": ("latency (ms)", 1.0),
    "macs": ("MACs (G)", 1e-9),
    "peak_mem_bytes": ("peak memory (MiB)", 1 / MIB),
}


def series_groups(frame: pd.DataFrame):
    """Module-scope series that a scaling plot draws: one per device, dtype, mode, dim and batch."""
    module = frame[frame.scope == "module"]
    return module.groupby(["device_label", "dtype", "mode", "dim", "batch"], sort=True)


# ---- tables --------------------------------------------------------------------------------------


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value * scale, spec)


def impls_vary(rows: pd.DataFrame) -> bool:
    """Whether some variant appears with more than one implementation."""
    return bool(len(rows)) and rows.groupby("variant").impl.nunique().max() > 1


def results_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The human table: units in the headers, one row per case; the implementation where it varies."""
    what = np.where(rows.scope == "module", rows.variant, rows.variant + "_" + rows.arch)
    table = pd.DataFrame({
        "variant": what,
        "res": rows.res.values,
        "batch": rows.batch.values,
        "dim": np.where(rows.scope == "module", rows.dim, "-"),
        "dtype": rows.dtype.values,
        "device": rows.device.values,
        "mode": rows["mode"].values,
        "params (M)": [_fmt(v, ".4g", 1e-6) for v in rows.params],
        "MACs (G)": [_fmt(v, ".4g", 1e-9) for v in rows.macs],
        "latency ms (median ± IQR)": [
            "-" if s != "ok" else f"{m:.3f} ± {i:.3f}" for s, m, i in zip(rows.status, rows.latency_ms_median,
                                                                       rows.latency_ms_iqr)],
        "throughput (/s)": [_fmt(v, ".1f") for v in rows.throughput_per_s],
        "peak memory (MiB)": [_fmt(v, ".4g", 1 / MIB) for v in rows.peak_mem_bytes],
        "GFLOP/s": [_fmt(2 * m / (t * 1e-3) / 1e9, ".1f") if s == "ok" else "-"
                    for s, m, t in zip(rows.status, rows.macs, rows.latency_ms_median)],
        "status": [s if s == "ok" else f"{s}: {r}" for s, r in zip(rows.status, rows.reason)],
    })
    if impls_vary(rows):
        table.insert(1, "impl", rows.impl.values)
    if rows.code_hash.fillna("").nunique() > 1:  # rows of different code side by side: never silently
        table.insert(1, "code", rows.code_hash.fillna("-").str[:8].values)
    return table


def largest_fit_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per device and module-scope series: the largest resolution measured, and the first that was not."""
    out = []
    for (device, dtype, mode, dim, batch), g in series_groups(frame):
        for variant, v in g.groupby("variant", sort=True):
            ok = v[v.status == "ok"]
            failed = v[(v.status != "ok") & (v.res > (ok.res.max() if len(ok) else 0))].sort_values("res")
            out.append({
                "device": device, "dtype": dtype, "mode": mode, "dim": dim, "batch": batch, "variant": variant,
                "largest res measured": int(ok.res.max()) if len(ok) else "-",
                "first res not measured": int(failed.res.iloc[0]) if len(failed) else "-",
                "why": f"{failed.status.iloc[0]}: {failed.reason.iloc[0]}" if len(failed) else "-",
            })
    return pd.DataFrame(out)


def exponent_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Fitted scaling exponents k (cost ~ pixels^k) per series, variant and metric, with the expectation."""
    expected = {s.name: s.scaling for s in iter_specs()}
    out = []
    for (device, dtype, mode, dim, batch), g in series_groups(frame):
        for variant, v in g[g.status == "ok"].groupby("variant", sort=True):
            if v.res.nunique() < 3:  # too few resolutions to fit an exponent
                continue
            row = {"device": device, "dtype": dtype, "mode": mode, "dim": dim, "batch": batch,
                   "variant": variant, "points": len(v),
                   "res": f"{v.res.min()}-{v.res.max()}"}
            for column, (label, _) in METRICS.items():
                k, r2 = fit_exponent(v.pixels, v[column])
                name = label.split(" (")[0]
                row[f"k {name}"] = round(k, 3) if not math.isnan(k) else math.nan
                row[f"R2 {name}"] = round(r2, 3) if not math.isnan(r2) else math.nan
            low, high = expected.get(variant.split("/")[0], (math.nan, math.nan))
            row["expected k (asymptotic)"] = f"{low:g}" if low == high else f"{low:g}-{high:g}"
            out.append(row)
    return pd.DataFrame(out)


def published_table() -> pd.DataFrame:
    """Our params and MACs beside the published ones (baselines/published.csv), with the difference."""
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


# ---- figures -------------------------------------------------------------------------------------


def _new_figure(ncols: int = 1, width: float = 5.2):
    """A figure outside pyplot's registry (the caller owns it; nothing accumulates)."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "attnbench"  # stable ids: same stores, same SVG
    fig = Figure(figsize=(width * ncols, 4.2), dpi=100)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _finish(fig, ax, title: str, *, grid: str = "both", **axes):
    """Axes settings, grid, legend and title shared by the one-panel figures."""
    ax.set(**axes)
    ax.grid(True, axis=grid, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def scaling_figure(g: pd.DataFrame, title: str):
    """Latency, MACs and peak memory against pixels, log-log, with fitted exponents; failures marked."""
    palette = colours()
    fig, axes = _new_figure(3)
    for ax, (column, (label, scale)) in zip(axes, METRICS.items()):
        for variant, v in g.groupby("variant", sort=True):
            ok = v[v.status == "ok"].sort_values("pixels")
            if ok.empty:
                continue
            k, r2 = fit_exponent(ok.pixels, ok[column])
            fit = f"k={k:.2f}, R²={r2:.3f}" if not math.isnan(k) else "k n/a"
            ax.plot(ok.pixels, ok[column] * scale, "o-", color=palette.get(variant), label=f"{variant} ({fit})")
            stopped = v[(v.status != "ok") & (v.pixels > ok.pixels.max())].sort_values("pixels")
            if len(stopped):  # where the line stops: the first case that did not run, and why
                first = stopped.iloc[0]
                ax.plot([first.pixels], [ok[column].iloc[-1] * scale], "x", ms=10, mew=2, color=palette.get(variant))
                ax.annotate(first.status, (first.pixels, ok[column].iloc[-1] * scale), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=palette.get(variant))
        _finish(fig, ax, label.split(" (")[0], xscale="log", yscale="log", xlabel="pixels (res²)", ylabel=label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def efficiency_figure(g: pd.DataFrame, title: str):
    """Achieved GFLOP/s (2 x MACs / latency) against pixels, beside the device's measured matmul rate."""
    palette = colours()
    fig, (ax,) = _new_figure(1, 6.5)
    ok = g[g.status == "ok"]
    for variant, v in ok.groupby("variant", sort=True):
        v = v.sort_values("pixels")
        ax.plot(v.pixels, 2 * v.macs / (v.latency_ms_median * 1e-3) / 1e9, "o-", color=palette.get(variant),
                label=variant)
    peak = ok.device_peak_gflops.dropna()
    if len(peak):
        ax.axhline(peak.median(), ls="--", color="black", label=f"measured matmul peak {peak.median():.0f} GFLOP/s")
    return _finish(fig, ax, title, xscale="log", yscale="log", xlabel="pixels (res²)",
                   ylabel="achieved GFLOP/s (2 per MAC)")


def throughput_figure(g: pd.DataFrame, title: str):
    """Throughput against batch, one line per variant and resolution."""
    palette = colours()
    fig, (ax,) = _new_figure(1, 6.5)
    for (variant, res), v in g[g.status == "ok"].groupby(["variant", "res"], sort=True):
        v = v.sort_values("batch")
        ax.plot(v.batch, v.throughput_per_s, "o-", color=palette.get(variant), label=f"{variant} @ {res}")
    return _finish(fig, ax, title, xscale="log", yscale="log", xlabel="batch", ylabel="throughput (images / s)")


def bars_figure(g: pd.DataFrame, column: str, label: str, by: str, title: str):
    """One bar per variant, grouped by ``by`` (devices, or batch sizes), of one metric."""
    palette = colours()
    fig, (ax,) = _new_figure(1, 7.5)
    groups = sorted(g[by].unique(), key=str)
    variants = sorted(g.variant.unique())
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        values = [g[(g.variant == variant) & (g[by] == k)][column].median() for k in groups]
        ax.bar(np.arange(len(groups)) + i * width, values, width, color=palette.get(variant), label=variant)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [str(k) for k in groups], fontsize=7)
    return _finish(fig, ax, title, grid="y", ylabel=label, yscale="log")


# ---- writing -------------------------------------------------------------------------------------


def _write_table(rep: Report, out: Path, name: str, table: pd.DataFrame) -> None:
    rep.tables[name] = table
    for ext, text in (("csv", table.to_csv(index=False)), ("md", table.to_markdown(index=False) + "\n")):
        path = out / "tables" / f"{name}.{ext}"
        path.write_text(text)
        rep.files.append(path)


def _write_figure(rep: Report, out: Path, name: str, fig) -> None:
    rep.figures[name] = fig
    for ext in ("png", "svg"):
        path = out / "figures" / f"{name}.{ext}"
        fig.savefig(path, metadata={"Software": None} if ext == "png" else {"Date": None, "Creator": None})
        rep.files.append(path)


def environments(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per store and environment: where and with what its numbers were measured."""
    cols = ["store", "host", "device_label", "cpu_model", "gpu_name", "torch_version", "cuda_version",
            "attnbench_version"]
    g = frame.groupby(cols, dropna=False, sort=True)
    env = g.agg(rows=("case_key", "size"), first_utc=("created_utc", "min"), last_utc=("created_utc", "max"),
                commits=("git_commit", lambda s: ", ".join(sorted(set(s.dropna().str[:12]))) or "-"),
                code=("code_hash", lambda s: ", ".join(sorted(set(s.fillna("before code hashes")))))).reset_index()
    return env.rename(columns={"device_label": "device"})


KEPT_PREFIX = "profile_"  # `attnbench profile` writes beside the report; its files outlive a new report


def report(dbs: Sequence[str | Path], out: str | Path = DEFAULT_REPORT, *, published: bool = True) -> Report:
    """Regenerate the tables, figures and index under ``out`` from the stores ``dbs``.

    The report is written to a staging folder inside ``out`` and swapped in when it is whole: a report
    that fails or is killed leaves the previous one as it was, and files of an older report that the
    new one does not produce are gone (except ``attnbench profile``'s). Other files in ``out``, such as
    stores, are never touched.
    """
    frame, training = load(dbs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        rep = _write_report(frame, training, dbs, staging, published)
        for sub in ("tables", "figures"):
            old = out / sub
            if old.is_dir():
                for kept in old.glob(KEPT_PREFIX + "*"):
                    os.replace(kept, staging / sub / kept.name)
                os.replace(old, staging / f"old-{sub}")
            os.replace(staging / sub, old)
        os.replace(staging / "README.md", out / "README.md")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rep.files = [out / f.relative_to(staging) for f in rep.files]
    return rep


def _write_report(frame: pd.DataFrame, training: pd.DataFrame, dbs: Sequence[str | Path], out: Path,
                  published: bool) -> Report:
    for sub in ("tables", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rep = Report()
    index: list[str] = []

    index.append("## Results\n")
    for (device, scope), rows in frame.groupby(["device_label", "scope"], sort=True):
        name = f"results_{slug(device)}_{scope}"
        _write_table(rep, out, name, results_table(rows))
        index.append(f"- [{scope} scope on {device}](tables/{name}.md) ([csv](tables/{name}.csv))")

    if (frame.scope == "module").any():
        _write_table(rep, out, "largest_fit", largest_fit_table(frame))
        exps = exponent_table(frame)
        _write_table(rep, out, "scaling_exponents", exps)
        index += ["", "## Scaling with resolution (module scope)\n",
                  "- [largest resolution each variant fits](tables/largest_fit.md)",
                  "- [fitted exponents k, cost ~ pixels^k](tables/scaling_exponents.md)", ""]
        for (device, dtype, mode, dim, batch), g in series_groups(frame):
            ress = g.res.nunique()
            tag = f"{slug(device)}_{slug(dtype)}_{mode}_d{dim}_b{batch}"
            what = f"{device}, {dtype}, {mode}, dim {dim}, batch {batch}"
            if ress >= 2:
                _write_figure(rep, out, f"scaling_{tag}", scaling_figure(g, f"Cost against pixels: {what}"))
                _write_figure(rep, out, f"efficiency_{tag}",
                              efficiency_figure(g, f"Achieved GFLOP/s against the device's matmul rate: {what}"))
                index.append(f"- {what}: ![scaling](figures/scaling_{tag}.png) "
                             f"![efficiency](figures/efficiency_{tag}.png)")
        index += [""] + _exponent_notes(exps)
        module = frame[frame.scope == "module"]
        for (device, dtype, mode, dim), g in module.groupby(["device_label", "dtype", "mode", "dim"], sort=True):
            batched = g.groupby(["variant", "res"]).batch.nunique()
            if (batched >= 2).any():
                keep = g.set_index(["variant", "res"]).index.isin(batched[batched >= 2].index)
                tag = f"{slug(device)}_{slug(dtype)}_{mode}_d{dim}"
                _write_figure(rep, out, f"throughput_{tag}",
                              throughput_figure(g[keep], f"Throughput against batch: {device}, {dtype}, {mode}"))
                index.append(f"- throughput against batch, {device}: ![throughput](figures/throughput_{tag}.png)")

    models = frame[(frame.scope == "model") & (frame.status == "ok")]
    if len(models):
        index += ["", "## Networks (model scope)\n"]
        for (device, dtype, mode, res), g in models.groupby(["device_label", "dtype", "mode", "res"], sort=True):
            tag = f"{slug(device)}_{slug(dtype)}_{mode}_r{res}"
            _write_figure(rep, out, f"models_{tag}", bars_figure(
                g, "latency_ms_median", "latency (ms)", "batch",
                f"Network latency by batch at {res}x{res}: {device}, {dtype}, {mode}"))
            index.append(f"- latency of each network at {res}, {device}, {dtype}: ![models](figures/models_{tag}.png)")
            ratios = _relative_to_conv(g)
            if len(ratios):
                name = f"relative_{tag}"
                _write_table(rep, out, name, ratios)
                index.append(f"- [each network's latency and MACs relative to the conv ResNet](tables/{name}.md)")

    ok = frame[frame.status == "ok"]
    if ok.device_label.nunique() >= 2:
        index += ["", "## Across devices\n"]
        for (scope, res, dtype, mode), g in ok.groupby(["scope", "res", "dtype", "mode"], sort=True):
            if g.device_label.nunique() >= 2:
                tag = f"{scope}_r{res}_{slug(dtype)}_{mode}"
                _write_figure(rep, out, f"devices_{tag}", bars_figure(
                    g, "latency_ms_median", "latency (ms)", "device_label",
                    f"Latency across devices: {scope} scope, res {res}, {dtype}, {mode}"))
                index.append(f"- {scope} scope at {res}, {dtype}: ![devices](figures/devices_{tag}.png)")

    if len(training):
        acc = accuracy_table(frame, training)
        _write_table(rep, out, "accuracy", acc)
        index += ["", "## Accuracy against cost\n", "- [last epoch of every training run](tables/accuracy.md)"]
        for (dataset, device), t in acc.groupby(["dataset", "device"], sort=True):
            tag = f"{dataset}_{slug(device)}"
            _write_figure(rep, out, f"accuracy_macs_{tag}", accuracy_figure(
                t, "MACs (M)", "MACs per image (M)", f"{dataset}: test top-1 against MACs ({device})"))
            index.append(f"- {dataset}, {device}: ![accuracy against MACs](figures/accuracy_macs_{tag}.png)")
            if t["latency ms (batch 1)"].notna().sum() >= 2:
                _write_figure(rep, out, f"accuracy_latency_{tag}", accuracy_figure(
                    t, "latency ms (batch 1)", "inference latency, batch 1 (ms)",
                    f"{dataset}: test top-1 against latency ({device})"))
                index.append(f"- {dataset}, {device}: ![accuracy against latency]"
                             f"(figures/accuracy_latency_{tag}.png)")

    if published:
        _write_table(rep, out, "published", published_table())
        index += ["", "## Against the published figures\n",
                  "- [our parameters and MACs beside the papers'](tables/published.md): MACs count one "
                  "multiply-add as 1; figures published at 2 per MAC are halved before comparing."]

    env = environments(frame)
    _write_table(rep, out, "environments", env)
    header = ["# attnbench report", "",
              f"Generated by `attnbench report` from {len(dbs)} store(s): "
              + ", ".join(f"`{Path(d).name}`" for d in dbs) + ". Regenerating from the same stores gives the "
              "same files. Latency is the median of `torch.utils.benchmark` runs (IQR beside it); MACs count one "
              "fused multiply-add as 1; peak memory is over the weights and inputs.", "",
              "## Where the numbers come from", "", env.to_markdown(index=False), ""]
    path = out / "README.md"
    path.write_text("\n".join(header + index) + "\n")
    rep.files.append(path)
    return rep


def _relative_to_conv(g: pd.DataFrame) -> pd.DataFrame:
    """Latency and MACs of each network over the conv ResNet of the same depth and batch."""
    rows = []
    for (arch, batch), b in g.groupby(["arch", "batch"], sort=True):
        base = b[b.variant == "conv"]
        if base.empty:
            continue
        base = base.iloc[0]
        for r in b.itertuples():
            rows.append({"network": f"{r.variant}_{arch}", "batch": batch,
                         "latency (ms)": round(r.latency_ms_median, 2),
                         "latency / conv": round(r.latency_ms_median / base.latency_ms_median, 2),
                         "MACs (G)": round(r.macs / 1e9, 3), "MACs / conv": round(r.macs / base.macs, 3),
                         "latency per GMAC / conv's": round((r.latency_ms_median / r.macs)
                                                            / (base.latency_ms_median / base.macs), 2)})
    return pd.DataFrame(rows)


def _exponent_notes(exps: pd.DataFrame) -> list[str]:
    """Plain-language comparison of fitted MAC and latency exponents with each mechanism's asymptote."""
    notes = ["### Exponents against the mechanisms' complexity\n"]
    for r in exps.to_dict("records"):
        k_macs, k_lat = r["k MACs"], r["k latency"]
        low, _, high = str(r["expected k (asymptotic)"]).partition("-")
        low, high = float(low), float(high or low)
        parts = [f"- {r['variant']} on {r['device']} ({r['dtype']}, dim {r['dim']}, batch {r['batch']}, "
                 f"res {r['res']}): MACs k={k_macs:.2f}, latency k={k_lat:.2f}; the mechanism's asymptote is "
                 f"{low:g}" + (f" to {high:g}" if high != low else "") + "."]
        if k_macs < low - 0.05:
            parts.append(" MACs grow slower than the asymptote: at these sizes the terms linear in pixels (the "
                         "1x1 projections) still outweigh the pairwise term.")
        if k_lat < k_macs - 0.1:
            parts.append(" Latency grows slower than MACs: small inputs leave fixed per-call costs and idle "
                         "cores, so the smallest sizes are slower per MAC than the largest.")
        elif k_lat > k_macs + 0.1:
            parts.append(" Latency grows faster than MACs: larger intermediates fall out of cache, so the "
                         "largest sizes run at a lower rate.")
        notes.append("".join(parts))
    return notes
