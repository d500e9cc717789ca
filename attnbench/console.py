"""The table ``attnbench run`` prints: one unit per column chosen so that its figures read naturally
(the largest unit in which the column's median is at least 1: ``torch.utils.benchmark.Compare`` takes
the smallest value instead, which prints a sweep over resolutions in millions of microseconds), what
every row shares said once above it, noisy timings marked, failures footnoted, and at most ``width``
characters wide. ``pivot`` prints one metric as a grid of series by resolution instead, as ``Compare``
prints a grid of sub-labels by descriptions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from tabulate import tabulate

from attnbench.choices import NOISY, PIVOTS, Status
from attnbench.labels import series

# the units of a kind, from the smallest: (size in the stored unit, name)
TIME_UNITS = [(1e-3, "µs"), (1.0, "ms"), (1e3, "s")]  # stored in ms
COUNT_UNITS = [(1.0, ""), (1e3, "K"), (1e6, "M"), (1e9, "G"), (1e12, "T")]
BYTE_UNITS = [(1.0, "B"), (2.0**10, "KiB"), (2.0**20, "MiB"), (2.0**30, "GiB"), (2.0**40, "TiB")]

PIVOT_COLUMNS = dict(zip(PIVOTS, [  # --pivot metric -> (column, units, header)
    ("latency_ms_median", TIME_UNITS, "latency"),
    ("macs", COUNT_UNITS, "MACs"),
    ("peak_mem_bytes", BYTE_UNITS, "peak memory"),
    ("params", COUNT_UNITS, "params"),
]))
SHARED = ["scope", "arch", "batch", "dim", "dtype", "device", "mode", "threads", "amp", "channels_last",
          "compile"]  # said once when every row agrees, else a column


def unit_for(values: Sequence[float], units: list[tuple[float, str]]) -> tuple[float, str]:
    """The largest unit in which the median positive value is at least 1 (the smallest unit if none)."""
    positive = sorted(v for v in values if v is not None and not pd.isna(v) and v > 0)
    if not positive:
        return units[0]
    median = positive[len(positive) // 2]
    return next((u for u in reversed(units) if median >= u[0]), units[0])


def figure(value: float | None, size: float, digits: int = 4) -> str:
    """``value / size`` with ``digits`` significant figures, no exponent; '-' for none."""
    if value is None or pd.isna(value):
        return "-"
    scaled = value / size
    if scaled == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(scaled))))
    return f"{scaled:.{decimals}f}"


SAID = {  # how a shared value is said; None: not said (it is in the case's name, or unset)
    "scope": lambda v: f"{v} scope", "arch": lambda v: None, "batch": lambda v: f"batch {v}",
    "dim": lambda v: f"dim {v}" if v else None, "threads": lambda v: f"{v} threads",
    "amp": lambda v: f"amp {v}" if v else None, "channels_last": lambda v: "channels-last" if v else None,
    "compile": lambda v: f"compiled ({v})" if v else None,
}


def _shared(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(columns that vary, a description of those that do not)."""
    varying, said = [], []
    for column in SHARED:
        values = rows[column].unique()
        if len(values) > 1:
            varying.append(column)
            continue
        text = SAID.get(column, str)(values[0])
        if text:
            said.append(text)
    return varying, said


def _status(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Each row's status ('ok', or 'oom [1]') and the numbered reasons, one per distinct reason."""
    notes: dict[str, int] = {}
    cells = []
    for status, reason in zip(rows.status, rows.reason):
        if status == Status.OK:
            cells.append(Status.OK)
            continue
        text = f"{status}: {reason}" if reason else status
        number = notes.setdefault(text, len(notes) + 1)
        cells.append(f"{status} [{number}]")
    return cells, [f"[{n}] {text}" for text, n in notes.items()]


def _header(base: str, unit: str) -> str:
    return f"{base} ({unit})" if unit else base


def _fit(lines: list[str], width: int) -> list[str]:
    return [line if len(line) <= width else line[: width - 3] + "..." for line in lines]


def console_table(frame: pd.DataFrame, *, width: int = 100, pivot: str | None = None) -> str:
    """The rows of a sweep as text for a terminal (see the module's docstring)."""
    if frame.empty:
        return "no cases"
    rows = frame.reset_index(drop=True)
    varying, said = _shared(rows)
    status, notes = _status(rows)
    noisy = rows.latency_noisy.fillna(0).astype(bool)
    if pivot is not None:
        body = _pivot(rows, varying, pivot, noisy)
    else:
        body = _flat(rows, varying, status, noisy)
    lines = [", ".join(said)] if said else []
    lines += body.splitlines()
    if noisy.any():
        lines.append(f"{NOISY} noisy timing: spread (IQR) above 10 % of the median, too few runs, or a busy machine")
    lines += notes
    return "\n".join(_fit(lines, width))


def _flat(rows: pd.DataFrame, varying: list[str], status: list[str], noisy: pd.Series) -> str:
    table = pd.DataFrame({"case": series(rows), "res": rows.res})
    for column in varying:
        if column not in ("scope", "arch"):
            table[column] = rows[column]
    size, name = unit_for(rows.params, COUNT_UNITS)
    table[_header("params", name)] = [figure(v, size) for v in rows.params]
    size, name = unit_for(rows.macs, COUNT_UNITS)
    table[_header("MACs", name)] = [figure(v, size) for v in rows.macs]
    size, name = unit_for(rows.latency_ms_median, TIME_UNITS)
    table[f"latency ({name} ± IQR)"] = [
        "-" if pd.isna(m) else f"{figure(m, size)} ± {figure(i, size, 2)}" + (f" {NOISY}" if n else "")
        for m, i, n in zip(rows.latency_ms_median, rows.latency_ms_iqr, noisy)]
    size, name = unit_for(rows.peak_mem_bytes, BYTE_UNITS)
    table[f"memory ({name})"] = [figure(v, size) for v in rows.peak_mem_bytes]
    if any(cell != Status.OK for cell in status):
        table["status"] = status
    return tabulate(table, headers="keys", tablefmt="simple", showindex=False, disable_numparse=True)


def _pivot(rows: pd.DataFrame, varying: list[str], metric: str, noisy: pd.Series) -> str:
    column, units, header = PIVOT_COLUMNS[metric]
    size, name = unit_for(rows[column], units)
    keys = ["case"] + [c for c in varying if c not in ("scope", "arch")]
    cells = rows.assign(case=series(rows), cell=[
        (figure(v, size) + (f" {NOISY}" if n and column == "latency_ms_median" else "")) if s == Status.OK else s
        for v, s, n in zip(rows[column], rows.status, noisy)])
    grid = cells.pivot_table(index=keys, columns="res", values="cell", aggfunc="first", sort=False)
    grid = grid[sorted(grid.columns)].fillna("")
    grid.columns = [str(r) for r in grid.columns]
    return f"{_header(header, name)} by resolution (columns: side in pixels)\n" + tabulate(
        grid.reset_index(), headers="keys", tablefmt="simple", showindex=False, disable_numparse=True)
