"""The columns ``export`` and ``run --results-file`` write: every stored column (``all``), or the few that
people compare first (``summary``), one row per case (or per training run), as timm's benchmark results
give them: what ran, its side, batch and dtype, samples per second, the step's time, GMACs and
parameters. Units are in the names; figures are rounded to four significant digits.

Plain pandas, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from attnbench import labels, store
from attnbench.choices import COLUMN_SETS, Scope

DIGITS = 4  # significant digits of a summary's measured figures


def _significant(values: pd.Series, scale: float = 1.0) -> pd.Series:
    """``values / scale`` rounded to DIGITS significant digits (missing values stay missing)."""
    return pd.to_numeric(values, errors="coerce").div(scale).map(
        lambda v: v if pd.isna(v) else float(f"{v:.{DIGITS}g}"))


def results_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measured case: ``network`` (the series label: the variant at module scope, the network at
    model scope, with its implementation, options or settings where they vary), where, how, at which side and
    batch, and its samples per second, step time (the median latency), GMACs per sample, parameters and peak
    memory; a failed case keeps its status and reason."""
    return pd.DataFrame({
        "network": labels.series(frame), "device_name": frame.device_name, "mode": frame["mode"],
        "dtype": frame.dtype, "side": frame.res, "batch": frame.batch,
        "samples_per_s": _significant(frame.throughput_per_s), "step_ms": _significant(frame.latency_ms_median),
        "gmacs_per_sample": _significant(pd.to_numeric(frame.macs) / frame.batch, 1e9),
        "params": frame.params.astype("Int64"), "peak_mem_mib": _significant(frame.peak_mem_bytes, 2**20),
        "status": frame.status, "reason": frame.reason.fillna(""),
    })


def _trained(frame: pd.DataFrame) -> pd.DataFrame:
    """What a training run trained, as the summaries of ``training`` and ``evaluations`` name it."""
    return pd.DataFrame({
        "network": [labels.subject(Scope.MODEL, "", m, w) for m, w in zip(frame.model, frame.width)],
        "options": frame.options.fillna(""), "dataset": frame.dataset, "trained_side": frame.image_size,
        "seed": frame.seed, "lr": frame.lr,
    }, index=frame.index)


def training_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per training run, its latest epoch: what trained, with which seed and rate, how far (epoch of
    epochs, and why it stopped, empty for a run not at its end), its accuracy on the test split, its
    parameters, GMACs per image and training speed."""
    last = frame.sort_values(["run_id", "epoch"]).groupby("run_id", sort=False).tail(1)
    last = last.loc[frame.index.intersection(last.index)]  # in the store's order
    return _trained(last).assign(
        epoch=last.epoch, epochs=last.epochs, stopped=last.stopped, top1_pct=_significant(last.top1_pct),
        top5_pct=_significant(last.top5_pct), params=last.params.astype("Int64"),
        gmacs_per_image=_significant(last.macs_per_image, 1e9), images_per_s=_significant(last.images_per_s),
        device_name=last.device_name).reset_index(drop=True)


def evaluations_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: the trained network at a side (``tables``: as trained, or interpolated), its
    accuracy on the test split, or why it could not run there."""
    return _trained(frame).assign(
        side=frame.side, tables=frame.tables, top1_pct=_significant(frame.top1_pct),
        top5_pct=_significant(frame.top5_pct), status=frame.status, reason=frame.reason.fillna(""),
    ).reset_index(drop=True)


SUMMARIES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "results": results_summary, "training": training_summary, "evaluations": evaluations_summary}
LOADERS: dict[str, Callable[[str], pd.DataFrame]] = {
    "results": store.load_results, "training": store.load_training, "evaluations": store.load_evaluations}


def table(db: str, name: str = "results", columns: Sequence[str] = ("all",), where: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of the store's table ``name`` that meet ``where`` (as :func:`attnbench.store.select` reads it,
    on the stored columns), with ``columns``: ``["summary"]``, ``["all"]``, or stored columns in that order.
    ``ValueError`` for an unknown column or a malformed condition, ``StoreError`` for a store that cannot be
    read."""
    columns = list(columns)
    sets = [c for c in columns if c in COLUMN_SETS]
    if sets and len(columns) > 1:
        raise ValueError(f"--columns {sets[0]} stands alone: give it, or stored columns, not both.")
    frame = store.select(LOADERS[name](db), None if sets else columns, where)
    return SUMMARIES[name](frame) if sets == ["summary"] else frame.reset_index(drop=True)
