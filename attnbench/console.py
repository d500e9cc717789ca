"""The table ``attnbench run`` prints: one unit per column chosen so that its figures read naturally
(the largest unit in which the column's median is at least 1: ``torch.utils.benchmark.Compare`` takes
the smallest value instead, which prints a sweep over resolutions in millions of microseconds), what
every row shares said once above it, noisy timings marked, failures footnoted, and at most ``width``
characters wide: prose is wrapped, and a table wider than that is printed in blocks of its columns, each
repeating the row's key (:func:`fit_table`), so that no figure, unit or column is ever cut. ``pivot`` prints
one metric as a grid of series by resolution instead, as ``Compare`` prints a grid of sub-labels by
descriptions.
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Callable, Sequence

import pandas as pd
from tabulate import tabulate

from attnbench.choices import NOISY, PIVOTS, Status, count
from attnbench.labels import series, subjects

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
    "dim": lambda v: f"dim {v}" if v else None, "threads": lambda v: count(v, "thread"),
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


def _implementations(rows: pd.DataFrame) -> str:
    """Which implementation each variant ran, in the order of the rows, as ``--impl`` writes it (``local=flex``,
    also at model scope, where the rows are networks): chosen by ``auto`` or by ``--impl``, it is what was timed.
    Where a variant's networks ran different ones (auto chooses per input), each is named after it; where one
    network or module ran several, each row's label says which. A case skipped ran nothing."""
    ran: dict[str, dict[str, list[str]]] = {}  # variant -> implementation -> the networks (or modules) that ran it
    rows = rows[rows.status != Status.SKIPPED]
    for variant, subject, impl in zip(rows.variant.fillna(""), subjects(rows), rows.impl.fillna("")):
        if variant and impl:
            names = ran.setdefault(variant, {}).setdefault(impl, [])
            names += [] if subject in names else [subject]
    said = []
    for variant, impls in ran.items():
        if len(impls) == 1:
            said.append(f"{variant}={next(iter(impls))}")
        elif len({name for names in impls.values() for name in names}) == sum(map(len, impls.values())):
            said += [f"{variant}={impl} ({', '.join(names)})" for impl, names in impls.items()]
    return f"implementation: {', '.join(said)}" if said else ""


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


def wrap(text: str, width: int, hang: int = 2) -> list[str]:
    """Prose in lines of at most ``width`` characters, the lines after the first indented by ``hang``; words
    are never split (a single word longer than ``width`` keeps its line)."""
    return textwrap.wrap(text, width, subsequent_indent=" " * hang, break_long_words=False,
                         break_on_hyphens=False) or [""]


def plain(table: pd.DataFrame) -> str:
    """``table`` as a plain text table, every cell as written."""
    return tabulate(table, headers="keys", tablefmt="simple", showindex=False, disable_numparse=True)


def fit_table(table: pd.DataFrame, keys: int, width: int, render: Callable[[pd.DataFrame], str] = plain) -> list[str]:
    """The lines of ``render(table)``, at most ``width`` characters wide where that can be done without cutting a
    cell: the whole table where it fits; else its columns after the first ``keys`` (the row's key) in blocks,
    as many as fit beside the key, each block repeating it, blocks apart by an empty line; and where even that
    is too wide, the rows numbered (``#``) and only the number and the first column of the key repeated. What
    still does not fit (a cell wider than the line) is printed whole, wider than ``width``."""
    lines = render(table).splitlines()
    if _widest(lines) > width:
        lines = _blocks(table, keys, width, render)
    if _widest(lines) > width and keys > 1:
        numbered = table.copy()
        numbered.insert(0, "#", [str(i) for i in range(1, len(table) + 1)])
        lines = _blocks(numbered, 2, width, render)
    return lines


def _widest(lines: list[str]) -> int:
    return max(map(len, lines), default=0)


def _blocks(table: pd.DataFrame, keys: int, width: int, render: Callable[[pd.DataFrame], str]) -> list[str]:
    """``table`` in blocks of the columns after the first ``keys``, as many as fit beside them (at least one)."""
    key, blocks, block = list(table.columns[:keys]), [], []
    for column in table.columns[keys:]:
        if block and _widest(render(table[key + block + [column]]).splitlines()) > width:
            blocks.append(block)
            block = []
        block.append(column)
    lines: list[str] = []
    for columns in blocks + [block]:
        lines += [""] * bool(lines) + render(table[key + columns]).splitlines()
    return lines


def max_res_lines(found: Sequence, db: str, width: int) -> list[str]:
    """What ``run --max-res`` prints of what it ``found`` (:func:`attnbench.api.max_res`): each case's largest
    side that ran and the next that did not, then where every side tried is stored, at most ``width`` wide."""
    lines = []
    for f in found:
        what = f.case.label.replace(" res=1 ", " ")
        largest = f"largest side {f.largest}" if f.largest else "no side ran"
        lines += wrap(f"{what}: {largest}; {f.failed} did not ({f.status})", width)
    return lines + ["", *wrap(f"every side tried is stored in {db}; the report's largest-fit table reads them.", width)]


def sweep_verdict(frame: pd.DataFrame) -> tuple[list[str], int]:
    """What ``run`` says on standard error after a sweep's table, and its exit code: a warning for cases timed
    while the machine was busy; then, exit code 1, when a case failed (an error, or its process killed: a bug or
    input the case cannot take) or when no case was measured at all (every one skipped, out of memory or out of
    time). Cases that did not fit or finish beside measured ones are a sweep's expected outcome (exit code 0)."""
    lines = []
    busy = frame.latency_noise_reason.fillna("").str.contains("other processes|speed changed")
    if busy.any():
        lines.append(f"attnbench run: warning: {int(busy.sum())} of {count(len(frame), 'case')} timed while the "
                     "machine was busy (see latency_noise_reason); for stable numbers run nothing else meanwhile, or "
                     "pin the sweep with --threads and taskset, and measure again with --force.")
    statuses = frame.status.value_counts()
    tally = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    failed = int(statuses.get(Status.ERROR, 0) + statuses.get(Status.KILLED, 0))
    measured = Status.OK in statuses.index
    if failed:
        lines.append(f"attnbench run: {failed} of {count(len(frame), 'case')} failed ({tally}); {WHY}, and every "
                     "other case's result is stored.")
    elif not measured:
        lines.append(f"attnbench run: no case was measured ({tally}); {WHY}.")
    return lines, 1 if failed or not measured else 0


WHY = "the numbered notes under the table say why (with --json: each row's reason)"  # a grid has no reason column


def say_verdict(frame: pd.DataFrame) -> int:
    """``sweep_verdict``'s lines on standard error; returns its exit code."""
    said, code = sweep_verdict(frame)
    for line in said:
        print(line, file=sys.stderr)
    return code


def console_table(frame: pd.DataFrame, *, width: int = 100, pivot: str | None = None) -> str:
    """The rows of a sweep as text for a terminal (see the module's docstring)."""
    if frame.empty:
        return "no cases"
    rows = frame.reset_index(drop=True)
    varying, said = _shared(rows)
    status, notes = _status(rows)
    noisy = rows.latency_noisy.fillna(0).astype(bool)
    lines = wrap(", ".join(said), width) if said else []
    ran = _implementations(rows)
    lines += wrap(ran, width) if ran else []
    if pivot is not None:
        title, table, keys = _pivot(rows, varying, pivot, status, noisy)
        lines += wrap(title, width)
    else:
        table, keys = _flat(rows, varying, status, noisy)
    lines += fit_table(table, keys, width)
    if noisy.any() and pivot in (None, "latency"):  # the only tables whose cells carry the mark
        lines += wrap(f"{NOISY} noisy timing: spread (IQR) above 10 % of the median, too few runs, or a busy "
                      "machine", width)
    for note in notes:
        lines += wrap(note, width, hang=4)
    return "\n".join(lines)


def _keys(rows: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """What tells the rows apart: the series (``network``, as ``export`` names it), and the settings that vary."""
    keys = pd.DataFrame({"network": series(rows)})
    for column in varying:
        if column not in ("scope", "arch"):
            keys[column] = rows[column]
    return keys


def _flat(rows: pd.DataFrame, varying: list[str], status: list[str], noisy: pd.Series) -> tuple[pd.DataFrame, int]:
    """The table, and how many of its first columns are the row's key."""
    table = _keys(rows, varying)
    table.insert(1, "res", rows.res)
    keys = table.shape[1]
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
    return table, keys


def _pivot(rows: pd.DataFrame, varying: list[str], metric: str, status: list[str], noisy: pd.Series
           ) -> tuple[str, pd.DataFrame, int]:
    """The grid's title, the grid, and how many of its first columns are the row's key; a case that did not
    end ok shows its ``status`` cell (``error [1]``: the note below the grid says why)."""
    column, units, header = PIVOT_COLUMNS[metric]
    size, name = unit_for(rows[column], units)
    keys = _keys(rows, varying)
    cells = pd.concat([keys, rows.res], axis=1).assign(cell=[
        (figure(v, size) + (f" {NOISY}" if n and column == "latency_ms_median" else "")) if s == Status.OK else c
        for v, s, c, n in zip(rows[column], rows.status, status, noisy)])
    grid = cells.pivot_table(index=list(keys.columns), columns="res", values="cell", aggfunc="first", sort=False)
    grid = grid[sorted(grid.columns)].fillna("")
    grid.columns = [str(r) for r in grid.columns]
    return (f"{_header(header, name)} by resolution (columns: side in pixels)", grid.reset_index(),
            keys.shape[1])
