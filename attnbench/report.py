"""Reports: tables and plots regenerated from results stores, and nothing else.

``report(dbs, out)`` reads one or more stores (one per machine or GPU, say), and writes Markdown
and CSV tables (:mod:`attnbench.tables`), PNG and SVG figures (:mod:`attnbench.plots`) and an
index ``README.md`` under ``out``. The same stores give the same files. It measures nothing and
builds no network: the published figures and our counts beside them are the package's data files
(:mod:`attnbench.baselines`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench import files, store
from attnbench.choices import DEFAULT_REPORT, FIGURE_FORMATS, Scope, Status, count
from attnbench.console import fit_table, wrap
from attnbench.labels import hues, series, setups
from attnbench.plots import (
    accuracy_figure,
    dots_figure,
    efficiency_figure,
    resolution_figure,
    save,
    scaling_figure,
    throughput_figure,
)
from attnbench.tables import (
    MIN_R2,
    accuracy_summary,
    accuracy_table,
    cost_summary,
    environments,
    exponent_table,
    fastest_by_side,
    largest_fit_table,
    published_table,
    relative_to_conv,
    resolution_retention,
    resolution_table,
    results_table,
    series_groups,
    trusted,
)


class ReportError(Exception):
    """Stores that hold nothing to report, with the reason in one line."""


@dataclass
class Report:
    """What ``report`` made: the tables as DataFrames, the figures, and the files written."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)  # name -> matplotlib Figure
    files: list[Path] = field(default_factory=list)
    formats: Sequence[str] = FIGURE_FORMATS  # of the figures' files


def _stores(dbs: Sequence) -> str:
    """The subject of a sentence about the stores ``dbs``: "The store a holds", "The stores a, b hold"."""
    return f"The store {dbs[0]} holds" if len(dbs) == 1 else f"The stores {', '.join(map(str, dbs))} hold"


def load(dbs: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every measured case, every training epoch and every evaluation at a side of the stores, in a stable order.
    A case measured again in a later store (another sitting: not a copy, which is dropped) is kept with
    ``shadowed`` set: the listings, figures and fits show the first store's (:func:`costs`), while the cost
    summaries, which compare each store's cases apart, and the accuracy table, which takes a trained network's
    latency from the store of its runs, see every store's."""
    if not dbs:
        raise ReportError("No results store given.")
    paths = {Path(db).resolve() for db in dbs}  # a store is named by its file, or by its path where two share a name
    named = {db: Path(db).name if sum(p.name == Path(db).name for p in paths) == 1 else str(db) for db in dbs}
    frame = pd.concat([store.load_results(db).assign(store=named[db]) for db in dbs], ignore_index=True)
    frame = frame.drop_duplicates(["case_key", "env_key", "created_utc"])  # a store given twice, or merged
    frame["shadowed"] = frame.duplicated(["case_key", "env_key"])
    training = pd.concat([store.load_training(db).assign(store=named[db]) for db in dbs],
                         ignore_index=True).drop_duplicates(["run_id", "epoch"])
    evaluations = pd.concat([store.load_evaluations(db).assign(store=named[db]) for db in dbs],
                            ignore_index=True).drop_duplicates(["run_id", "side", "tables"])
    # evaluations stored before they carried the variant: their run's, where its training is stored
    evaluations["variant"] = evaluations.variant.fillna(evaluations.run_id.map(
        training.drop_duplicates("run_id").set_index("run_id").variant))
    # and when their run finished training, where it is stored (a finished run's stand for its seed)
    evaluations["finished_utc"] = evaluations.run_id.map(
        store.finished_runs(training).set_index("run_id").created_utc)
    if frame.empty and training.empty and evaluations.empty:
        raise ReportError(f"{_stores(dbs)} no results; "
                          "run `attnbench run` or `attnbench train` first.")
    if training.empty and evaluations.empty and not (frame.status == Status.OK).any():
        raise ReportError("Every stored case failed (" + ", ".join(sorted(set(frame.status))) +
                          "): there is nothing to draw; see `attnbench export` for the reasons.")
    frame["pixels"] = frame.res.astype(np.int64) ** 2
    # what each row is called (labels.series: one series per implementation, option set and setting measured)
    # and coloured by, derived beside the columns, never over them
    frame["series"], frame["setup"], frame["hue"] = series(frame), setups(frame), hues(frame)
    frame["device_label"] = frame.device_name.fillna(frame.device)
    frame = frame.sort_values(["device_label", "scope", "series", "dtype", "mode", "dim", "batch",
                               "res", "created_utc"]).reset_index(drop=True)
    return (frame, training.sort_values(["dataset", "model", "run_id", "epoch"]).reset_index(drop=True),
            evaluations.sort_values(["dataset", "model", "run_id", "side", "tables"]).reset_index(drop=True))


SUMMARY = {  # table name -> its heading: the summary at the top of a report, and `attnbench summary`
    "summary_accuracy": "Most accurate, and most accurate for the cost (per data set)",
    "summary_model": "Networks: fastest and leanest (per device, dtype, batch and image side)",
    "summary_module": "Attention modules alone: fastest and leanest (per device, dtype, dim, batch and side)",
    "summary_sides": "Fastest across resolutions (modules)",
}
COST_NOTE = (
    "Each cell names the winner among the series measured alike (in one store), with its figure; the runner-up's "
    "latency is given over the fastest's ('within IQR': the two medians lie closer than their spreads, no clear "
    "winner; ~: a noisy timing). The latency-memory front lists the series that no other beats on both, fastest "
    "first.")
ACCURACY_NOTE = (
    "A front of top-1 against a cost lists the setups that no other beats on both, cheapest first. 'As accurate' "
    "is the best setup or one within its seeds' spread: the most accuracy per MAC{per_ms} is the cheapest of those.")


def summary_note(tables: dict[str, pd.DataFrame]) -> str:
    """How to read the summary ``tables``, of what they hold only: no word of latency where none was measured."""
    notes = [COST_NOTE] * bool({"summary_model", "summary_module"} & set(tables))
    if "summary_accuracy" in tables:
        per_ms = "as accurate, lowest latency" in tables["summary_accuracy"].columns
        notes.append(ACCURACY_NOTE.format(per_ms=" and per ms" * per_ms))
    return " ".join(notes)


def costs(frame: pd.DataFrame) -> pd.DataFrame:
    """The measured cases of :func:`load` that the listings, figures and fits show: the first store's of a case."""
    return frame[~frame.shadowed]


def summary_tables(frame: pd.DataFrame, training: pd.DataFrame, evaluations: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Who wins where (:data:`SUMMARY` names them), for the tables that have rows: the most accurate setups and the
    most accurate for their cost, with the Pareto fronts and the one that holds its accuracy best away from its
    side; per device, dtype and resolution the fastest and leanest networks and modules (scopes apart); and the
    fastest module at each resolution."""
    acc = accuracy_table(frame, training) if len(training) else pd.DataFrame()
    tables = {"summary_accuracy": accuracy_summary(acc, evaluations) if len(acc) else pd.DataFrame()}
    for scope in (Scope.MODEL, Scope.MODULE):
        table = cost_summary(frame[frame.scope == scope])  # each store's cases apart, every one of them
        unused = ["scope"] + ["dim"] * (scope == Scope.MODEL)  # a network has no dim
        tables[f"summary_{scope}"] = table.drop(columns=unused) if len(table) else table
    tables["summary_sides"] = fastest_by_side(frame)
    return {name: table for name, table in tables.items() if len(table)}


SUMMARY_KEYS = ("dataset", "image side", "device", "dtype", "mode", "dim", "batch", "res", "store")  # a row's key


def summary(dbs: Sequence[str | Path], *, as_markdown: bool = False, width: int = 100) -> str:
    """The summary of the stores ``dbs`` as text: headed tables as Markdown, or plain for a terminal in lines of
    at most ``width`` characters: what every row of a table shares said once above it, and a wider table in
    blocks of its columns, each repeating the row's key (:func:`attnbench.console.fit_table`)."""
    tables = summary_tables(*load(dbs))
    if not tables:
        raise ReportError(f"{_stores(dbs)} nothing a summary compares (no measured case, no finished training "
                          f"run); `attnbench report` draws what {'they hold' if len(dbs) > 1 else 'it holds'}.")
    note = summary_note(tables)
    if as_markdown:
        return "\n".join([f"### {SUMMARY[name]}\n\n{markdown(table)}\n" for name, table in tables.items()]
                         + [note + "\n"])
    lines: list[str] = []
    for name, table in tables.items():
        keys = [c for c in table.columns if c in SUMMARY_KEYS]
        shared = [c for c in keys if table[c].nunique(dropna=False) == 1][: len(keys) - 1]  # said once, above
        said = f"Every row: {', '.join(f'{c} {table[c].iloc[0]}' for c in shared)}." if shared else ""
        lines += [*wrap(SUMMARY[name], width), *wrap(said, width) * bool(said), "",
                  *fit_table(table.drop(columns=shared), len(keys) - len(shared), width,
                             lambda t: markdown(t, tablefmt="simple")), ""]
    return "\n".join(lines + wrap(note, width, hang=0)) + "\n"


def slug(text: str) -> str:
    """File-name form of a label: 'Intel(R) Xeon(R) Processor' -> 'intel-xeon-processor'."""
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def markdown(table: pd.DataFrame, *, numbers: bool = True, tablefmt: str = "pipe") -> str:
    """``table`` as text (a Markdown ``pipe`` table, or ``simple`` for a terminal), a missing value as "-"
    (not "nan"); ``numbers=False`` prints every cell as written (versions such as 13.0)."""
    shown = table.astype(object).where(table.notna(), None)
    return shown.to_markdown(index=False, tablefmt=tablefmt, disable_numparse=not numbers, missingval="-")


def _write_table(rep: Report, out: Path, name: str, table: pd.DataFrame, *, numbers: bool = True) -> None:
    """``table`` as CSV and Markdown (:func:`markdown`)."""
    rep.tables[name] = table
    for ext, text in (("csv", table.to_csv(index=False)), ("md", markdown(table, numbers=numbers) + "\n")):
        path = out / "tables" / f"{name}.{ext}"
        path.write_text(text)
        rep.files.append(path)


def _write_figure(rep: Report, out: Path, name: str, fig) -> None:
    rep.figures[name] = fig
    rep.files += save(fig, out / "figures" / name, rep.formats)


MANIFEST = ".attnbench-report"  # in a report's folder: the files the report wrote, one per line
STAGING = ".report-"  # the folder a report is written in before it is moved into place
# the only files a report writes (a manifest naming anything else is not followed)
REPORT_FILE = re.compile(r"^(README\.md|(tables|figures)/[^/.][^/]*)$")


def report(dbs: Sequence[str | Path], out: str | Path = DEFAULT_REPORT, *, published: bool = True,
           formats: Sequence[str] = FIGURE_FORMATS) -> Report:
    """Regenerate the tables, figures (as ``formats``: png, svg, pdf) and index under ``out`` from the
    stores ``dbs``.

    The report is written to a staging folder inside ``out`` and moved into place when it is whole: a
    report that fails or is killed leaves the previous one as it was. ``out`` keeps a manifest of the files
    its report wrote; a new report replaces and removes only those, and refuses (ReportError) a folder that
    holds other files unless it is a report, or a file of such a folder that no report wrote. Stores
    (SQLite files) are never touched, wherever they lie.
    """
    frame, training, evaluations = load(dbs)
    out = Path(out)
    made = list(itertools.takewhile(lambda f: not files.exists(f), (out, *out.parents)))  # by mkdir, deepest first
    out.mkdir(parents=True, exist_ok=True)
    files.remove_stale(out, STAGING)  # of reports killed before they could clean up
    _earlier_files(out)  # a folder that is not a report is refused before any work
    staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))
    moved = False
    try:
        files.owned(staging)
        rep = _write_report(frame, training, evaluations, dbs, staging, published, formats)
        written = sorted(f.relative_to(staging).as_posix() for f in rep.files)
        with files.hold(out, "attnbench report", wait=True):  # one report moves its files in at a time
            _move_in(out, staging, written, _earlier_files(out))
        moved = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made if not moved else ():  # a report that failed leaves no folder it made behind
            with contextlib.suppress(OSError):
                folder.rmdir()
    rep.files = [out / f.relative_to(staging) for f in rep.files]
    return rep


def os_error(e: OSError, out: str | Path) -> str:
    """One line for an OSError met while reporting into ``out``: the file it names, read (a store, the package's
    data) or written (under ``out``), or, where it names none, the folder written."""
    reason = e.strerror or str(e)
    if e.filename is None:
        return f"cannot write under {out}: {reason}."
    written = Path(e.filename).resolve().is_relative_to(Path(out).resolve())
    return f"cannot {'write' if written else 'read'} {e.filename}: {reason}."


def _earlier_files(out: Path) -> set[str]:
    """The files an earlier report wrote in ``out``, from its manifest; none in a folder that holds only stores
    (and their journals) or nothing. ReportError for a folder with other files and no manifest."""
    manifest = out / MANIFEST
    if manifest.is_file():
        return {line for line in manifest.read_text().splitlines() if REPORT_FILE.match(line)}
    foreign = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_dir() or rel.parts[0].startswith(STAGING) or rel.as_posix() == files.LOCK:
            continue  # folders are judged by their files; staging folders are reports' own
        journal = re.sub(r"-(wal|shm|journal)$", "", path.name)
        if not (store.is_store(path) or (journal != path.name and store.is_store(path.with_name(journal)))):
            foreign.append(rel.as_posix())
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ReportError(f"{out} is not a report folder: it holds files that no attnbench report wrote ({shown}); "
                          "name a new or empty folder, or an earlier report's.")
    return set()


def _move_in(out: Path, staging: Path, written: list[str], earlier: set[str]) -> None:
    """Move the staged files ``written`` into ``out``, remove the files of the earlier report that the new
    one does not write, and record the new manifest. Nothing is touched if a file would replace one that no
    earlier report wrote, or a store; the manifest lists every file of ours at every step, so a report
    killed meanwhile leaves a folder the next one can replace."""
    for rel in written:
        target = out / rel
        there = target.exists() or target.is_symlink()
        if there and (rel not in earlier or target.is_dir() or store.is_store(target)):
            what = "a store" if store.is_store(target) else "a file that no earlier report wrote"
            raise ReportError(f"The report would replace {target}, {what}; move it away or report into "
                              "another folder.")
    files.write_text(out / MANIFEST, "".join(f"{rel}\n" for rel in sorted(earlier | set(written))))
    for rel in written:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, out / rel)
    for rel in sorted(earlier - set(written)):
        old = out / rel
        if (old.is_file() or old.is_symlink()) and not store.is_store(old):
            old.unlink()
    files.write_text(out / MANIFEST, "".join(f"{rel}\n" for rel in written))


def _write_report(frame: pd.DataFrame, training: pd.DataFrame, evaluations: pd.DataFrame, dbs: Sequence[str | Path],
                  out: Path, published: bool, formats: Sequence[str]) -> Report:
    for sub in ("tables", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rep = Report(formats=formats)
    index: list[str] = []
    summary_index = ["## Summary: who wins where", ""]
    tables = summary_tables(frame, training, evaluations)
    timed, frame = frame, costs(frame)  # every measurement: for the accuracy table's latencies and the stores' rows
    for name, table in tables.items():
        _write_table(rep, out, name, table)
        summary_index += [f"### {SUMMARY[name]}", "", markdown(table), "", f"([csv](tables/{name}.csv))", ""]
    summary_index = summary_index + [summary_note(tables), ""] if tables else []  # evaluations alone: none

    if len(frame):
        index.append("## Results\n")
    for (device, scope), rows in frame.groupby(["device_label", "scope"], sort=True):
        name = f"results_{slug(device)}_{scope}"
        _write_table(rep, out, name, results_table(rows))
        index.append(f"- [{scope} scope on {device}](tables/{name}.md) ([csv](tables/{name}.csv))")

    if (frame.scope == Scope.MODULE).any():
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
        module = frame[frame.scope == Scope.MODULE]
        for (device, dtype, mode, dim), g in module.groupby(["device_label", "dtype", "mode", "dim"], sort=True):
            batched = g.groupby(["series", "res"]).batch.nunique()
            if (batched >= 2).any():
                keep = g.set_index(["series", "res"]).index.isin(batched[batched >= 2].index)
                tag = f"{slug(device)}_{slug(dtype)}_{mode}_d{dim}"
                _write_figure(rep, out, f"throughput_{tag}",
                              throughput_figure(g[keep], f"Throughput against batch: {device}, {dtype}, {mode}"))
                index.append(f"- throughput against batch, {device}: ![throughput](figures/throughput_{tag}.png)")

    models = frame[(frame.scope == Scope.MODEL) & (frame.status == Status.OK)]
    if len(models):
        index += ["", "## Networks (model scope)\n"]
        for (device, dtype, mode, res), g in models.groupby(["device_label", "dtype", "mode", "res"], sort=True):
            tag = f"{slug(device)}_{slug(dtype)}_{mode}_r{res}"
            _write_figure(rep, out, f"models_{tag}", dots_figure(
                g, "latency_ms_median", "latency (ms)", "batch", "batch",
                f"Network latency by batch at {res}x{res}: {device}, {dtype}, {mode}"))
            index.append(f"- latency of each network at {res}, {device}, {dtype}: ![models](figures/models_{tag}.png)")
            ratios = relative_to_conv(g)
            if len(ratios):
                name = f"relative_{tag}"
                _write_table(rep, out, name, ratios)
                index.append(f"- [each network's latency and MACs relative to the conv ResNet](tables/{name}.md)")

    ok = frame[frame.status == Status.OK]
    if ok.device_label.nunique() >= 2:
        index += ["", "## Across devices\n"]
        for (scope, res, dtype, mode), g in ok.groupby(["scope", "res", "dtype", "mode"], sort=True):
            if g.device_label.nunique() >= 2:
                tag = f"{scope}_r{res}_{slug(dtype)}_{mode}"
                _write_figure(rep, out, f"devices_{tag}", dots_figure(
                    g, "latency_ms_median", "latency (ms)", "device_label", "device",
                    f"Latency across devices: {scope} scope, res {res}, {dtype}, {mode}"))
                index.append(f"- {scope} scope at {res}, {dtype}: ![devices](figures/devices_{tag}.png)")

    acc = accuracy_table(timed, training) if len(training) else pd.DataFrame()
    if len(acc):  # (none while every run is still in progress)
        _write_table(rep, out, "accuracy", acc)
        index += ["", "## Accuracy against cost\n", "- [each trained setup over its seeds: test and train top-1 "
                  "(mean, std, n), steps, cost, and its standing against the best](tables/accuracy.md)"]
        for (dataset, device), t in acc.groupby(["dataset", "device"], sort=True):
            tag = f"{dataset}_{slug(device)}"
            _write_figure(rep, out, f"accuracy_macs_{tag}", accuracy_figure(
                t, "MACs per image (M)", "MACs per image (M)", f"{dataset}: test top-1 against MACs ({device})"))
            index.append(f"- {dataset}, {device}: ![accuracy against MACs](figures/accuracy_macs_{tag}.png)")
            if t["latency ms (batch 1)"].notna().sum() >= 2:
                _write_figure(rep, out, f"accuracy_latency_{tag}", accuracy_figure(
                    t, "latency ms (batch 1)", "inference latency, batch 1 (ms)",
                    f"{dataset}: test top-1 against latency ({device})"))
                index.append(f"- {dataset}, {device}: ![accuracy against latency]"
                             f"(figures/accuracy_latency_{tag}.png)")

    sides = resolution_table(evaluations) if len(evaluations) else pd.DataFrame()
    if len(sides):
        _write_table(rep, out, "resolution", sides)
        index += ["", "## Accuracy across resolutions\n",
                  "- [each trained setup's top-1 at every side it was tested at, as trained and with its tables "
                  "interpolated (mean, std, n over its seeds)](tables/resolution.md)"]
        retained = resolution_retention(evaluations)
        if len(retained):  # none where no setup was tested away from its side above chance there
            _write_table(rep, out, "resolution_retention", retained)
            index.append("- [how much of its accuracy above chance each setup keeps away from the side it was "
                         "trained at](tables/resolution_retention.md)")
        for (dataset, device), t in sides.groupby(["dataset", "device"], sort=True):
            tag = f"{dataset}_{slug(device)}"
            _write_figure(rep, out, f"resolution_{tag}", resolution_figure(
                t, f"{dataset}: test top-1 against the side tested ({device}; bars: std over seeds)"))
            index.append(f"- {dataset}, {device}: ![accuracy against side](figures/resolution_{tag}.png)")

    if published:
        _write_table(rep, out, "published", published_table())
        index += ["", "## Against the published figures\n",
                  "- [our parameters and MACs beside the papers'](tables/published.md): MACs count one "
                  "multiply-add as 1; figures published at 2 per MAC are halved before comparing."]

    env = environments(timed, training, evaluations)
    _write_table(rep, out, "environments", env, numbers=False)
    measured = ("Latency is the median of `torch.utils.benchmark` runs (IQR beside it; marked ~ where the timing "
                "was flagged noisy: a wide spread, or other processes using the CPU meanwhile, with the reason in "
                "the store's `latency_noise_reason`); peak memory is over the weights and inputs. ") * (len(frame) > 0)
    header = ["# attnbench report", "",
              f"Generated by `attnbench report` from {count(len(dbs), 'store')}: "
              + ", ".join(f"`{Path(d).name}`" for d in dbs) + ". Regenerating from the same stores gives the "
              f"same files. {measured}MACs count one fused multiply-add as 1.", "", *summary_index,
              "## Where the numbers come from", "", env.to_markdown(index=False, disable_numparse=True), ""]
    path = out / "README.md"
    path.write_text("\n".join(header + index) + "\n")
    rep.files.append(path)
    return rep


def _exponent_notes(exps: pd.DataFrame) -> list[str]:
    """Plain-language comparison of fitted MAC and latency exponents with each mechanism's asymptote, for the
    fits that can bear it (:func:`attnbench.tables.trusted`: R^2 of at least 0.9, latency from quiet timings
    only); the others are counted, and left to the table."""
    notes = ["### Exponents against the mechanisms' complexity\n"]
    left_out = 0
    for r in exps.to_dict("records"):
        macs_ok = trusted(r["R2 MACs"])
        latency_ok = trusted(r["R2 latency"], r["noisy timings"])
        if not (macs_ok or latency_ok):
            left_out += 1
            continue
        k_macs, k_lat = r["k MACs"], r["k latency"]
        low, _, high = str(r["expected k (asymptotic)"]).partition("-")
        low, high = float(low), float(high or low)
        told = [f"MACs k={k_macs:.2f}"] * macs_ok + [f"latency k={k_lat:.2f}"] * latency_ok
        parts = [f"- {r['variant']} on {r['device']} ({r['dtype']}, dim {r['dim']}, batch {r['batch']}, "
                 f"res {r['res']}): {', '.join(told)}; the mechanism's asymptote is "
                 f"{low:g}" + (f" to {high:g}" if high != low else "") + "."]
        if macs_ok and k_macs < low - 0.05:
            parts.append(" MACs grow slower than the asymptote: at these sizes the terms linear in pixels (the "
                         "1x1 projections) still outweigh the pairwise term.")
        if macs_ok and latency_ok and k_lat < k_macs - 0.1:
            parts.append(" Latency grows slower than MACs: small inputs leave fixed per-call costs and idle "
                         "cores, so the smallest sizes are slower per MAC than the largest.")
        elif macs_ok and latency_ok and k_lat > k_macs + 0.1:
            parts.append(" Latency grows faster than MACs: larger intermediates fall out of cache, so the "
                         "largest sizes run at a lower rate.")
        if not latency_ok:
            noisy = r["noisy timings"]
            why = f"{noisy} noisy timing{'s' * (noisy > 1)}" if noisy else f"R²={r['R2 latency']:.2f}"
            parts.append(f" Its latency fit is not told: {why}.")
        notes.append("".join(parts))
    if left_out:
        notes.append(f"- {left_out} fit{'s' if left_out > 1 else ''} with R² under {MIN_R2:g}, or on noisy "
                     "timings only, left out here (the table has every fit).")
    return notes
