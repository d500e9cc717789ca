"""The columns ``export`` and ``run --results-file`` write: every stored column (``all``), or the few that
people compare first (``summary``), one row per case (or per training run), as timm's benchmark results
give them: what ran, its side, batch and dtype, samples per second, the step's time, GMACs and
parameters; or any of either, by name. Units are in the names; figures are rounded to four significant
digits. The format follows the file's name: CSV, Markdown or JSON.

Plain pandas, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from attnbench import labels, store
from attnbench.choices import COLUMN_SETS, EXPORT_FORMATS, EXPORT_SUFFIXES, Scope

DIGITS = 4  # significant digits of a summary's measured figures


def _significant(values: pd.Series, scale: float = 1.0) -> pd.Series:
    """``values / scale`` rounded to DIGITS significant digits (missing values stay missing)."""
    return pd.to_numeric(values, errors="coerce").div(scale).map(
        lambda v: v if pd.isna(v) else float(f"{v:.{DIGITS}g}"))


def results_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measured case: ``network`` (the series label: the variant at module scope, the network at
    model scope, with its implementation, options or settings where they vary), where, how, at which side and
    batch, and its samples per second, step time (the median latency), GMACs per sample, parameters and peak
    memory; a failed case keeps its status and reason. Where rows of different code meet (a builder changed and
    measured again, say), ``code`` (the first 8 characters of ``code_hash``) follows ``network``, as in the
    report's tables: the rows would otherwise read as one case twice."""
    summary = pd.DataFrame({
        "network": labels.series(frame), "device_name": frame.device_name, "mode": frame["mode"],
        "dtype": frame.dtype, "side": frame.res, "batch": frame.batch,
        "samples_per_s": _significant(frame.throughput_per_s), "step_ms": _significant(frame.latency_ms_median),
        "gmacs_per_sample": _significant(pd.to_numeric(frame.macs) / frame.batch, 1e9),
        "params": frame.params.astype("Int64"), "peak_mem_mib": _significant(frame.peak_mem_bytes, 2**20),
        "status": frame.status, "reason": frame.reason.fillna(""),
    })
    if frame.code_hash.fillna("").nunique() > 1:
        summary.insert(1, "code", frame.code_hash.fillna("-").str[:8].values)
    return summary


def _trained(frame: pd.DataFrame) -> pd.DataFrame:
    """What a training run trained, as the summaries of ``training`` and ``evaluations`` name it."""
    return pd.DataFrame({
        "network": [labels.subject(Scope.MODEL, "", m, w) for m, w in zip(frame.model, frame.width)],
        "options": frame.options.fillna(""), "dataset": frame.dataset, "trained_side": frame.image_size,
        "seed": frame.seed, "lr": frame.lr,
    }, index=frame.index)


def training_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each training epoch as a training run's summary names it (:func:`training_summary`), row for row."""
    return _trained(frame).assign(
        epoch=frame.epoch, epochs=frame.epochs, stopped=frame.stopped, top1_pct=_significant(frame.top1_pct),
        top5_pct=_significant(frame.top5_pct), params=frame.params.astype("Int64"),
        gmacs_per_image=_significant(frame.macs_per_image, 1e9), images_per_s=_significant(frame.images_per_s),
        device_name=frame.device_name)


def training_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per training run, its latest epoch: what trained, with which seed and rate, how far (epoch of
    epochs, and why it stopped, empty for a run not at its end), its accuracy on the test split, its
    parameters, GMACs per image and training speed."""
    last = frame.sort_values(["run_id", "epoch"]).groupby("run_id", sort=False).tail(1)
    last = last.loc[frame.index.intersection(last.index)]  # in the store's order
    return training_rows(last).reset_index(drop=True)


def evaluations_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: the trained network at a side (``tables``: as trained, or interpolated), its
    accuracy on the test split, or why it could not run there."""
    return _trained(frame).assign(
        side=frame.side, tables=frame.tables, top1_pct=_significant(frame.top1_pct),
        top5_pct=_significant(frame.top5_pct), status=frame.status, reason=frame.reason.fillna(""),
    ).reset_index(drop=True)


SUMMARIES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "results": results_summary, "training": training_summary, "evaluations": evaluations_summary}
ROWS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {  # a summary's columns for every stored row
    "results": results_summary, "training": training_rows, "evaluations": evaluations_summary}
LOADERS: dict[str, Callable[[str], pd.DataFrame]] = {
    "results": store.load_results, "training": store.load_training, "evaluations": store.load_evaluations}


def table(db: str, name: str = "results", columns: Sequence[str] = ("all",), where: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of the store's table ``name`` that meet ``where`` (as :func:`attnbench.store.select` reads it),
    with ``columns``: ``["summary"]``, ``["all"]`` (every stored column), or columns in that order: stored ones,
    and those of the table's summary (``network``, ``side``, ``step_ms``...; a stored column of the same name is
    the stored one), which ``where`` reads too. ``ValueError`` for an unknown column or a malformed condition,
    ``StoreError`` for a store that cannot be read."""
    columns = list(columns)
    sets = [c for c in columns if c in COLUMN_SETS]
    if sets and len(columns) > 1:
        raise ValueError(f"--columns {sets[0]} stands alone: give it, or stored columns, not both.")
    stored = LOADERS[name](db)
    derived = ROWS[name](stored).set_axis(stored.index)
    every = pd.concat([stored, derived.drop(columns=[c for c in derived.columns if c in stored.columns])], axis=1)
    chosen = store.select(every, None if sets else columns, where)
    if sets == ["summary"]:
        return SUMMARIES[name](stored.loc[chosen.index])
    return (chosen[list(stored.columns)] if sets else chosen).reset_index(drop=True)


def export_format(path: str | None, given: str | None = None) -> str:
    """The format of an export to the file ``path`` (stdout for None): its suffix's (``EXPORT_FORMATS``), or
    ``given`` (CSV if none) for stdout. ``ValueError`` for another suffix, or a ``given`` format that is not the
    suffix's: a file is never written in one format under another's name."""
    if path is None:
        return given or "csv"
    suffix = Path(path).suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"cannot tell the format of {path}: name a {EXPORT_SUFFIXES} file.")
    if given and given != EXPORT_FORMATS[suffix]:
        raise ValueError(f"--format {given} does not suit {path}, a {suffix} name: give one or the other.")
    return EXPORT_FORMATS[suffix]


def as_text(frame: pd.DataFrame, fmt: str) -> str:
    """``frame`` as CSV, a Markdown table (``md``) or JSON records, every figure as stored."""
    if fmt == "json":
        return frame.to_json(orient="records", indent=1, double_precision=15) + "\n"
    return frame.to_csv(index=False) if fmt == "csv" else frame.to_markdown(index=False) + "\n"
