"""Figures: the project's one plotting module (report, inspection and profiling draw with it), one colour
per variant everywhere."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench import files
from attnbench.baselines import variant_facts
from attnbench.choices import FIGURE_FORMATS, Status
from attnbench.tables import METRICS, fit_exponent, pareto


def colours(hues: Iterable[str] = ()) -> dict[str, object]:
    """One colour per hue (a variant, or a network from elsewhere), the same in every figure: the shipped
    variants in registry order, then the others (a plugin's variant, a network from elsewhere) by name, from
    matplotlib's accessible ``petroff10`` sequence (distinguishable with colour-vision deficiencies), repeated
    past ten."""
    hues = {h for h in hues if isinstance(h, str) and h}
    names = list(variant_facts().name)  # the shipped variants: a report asks the registry (torch) for nothing
    names += sorted(hues - set(names))
    sequence = colour_sequence()
    return {name: sequence[i % len(sequence)] for i, name in enumerate(names)}


def _series(g: pd.DataFrame, by: str | list[str] = "series"):
    """The series of ``g`` (one per label, or per label and ``by``'s other columns), each with its colour key."""
    for key, v in g.groupby(by, sort=True):
        yield key, v.hue.iloc[0], v


def colour_sequence() -> list:
    """The colours of every figure: matplotlib's ``petroff10`` (``tab10`` before matplotlib 3.10)."""
    import matplotlib

    return list(matplotlib.color_sequences["petroff10" if "petroff10" in matplotlib.color_sequences else "tab10"])


MARGINS_IN = {"left": 0.85, "right": 0.2, "bottom": 0.6, "top": 0.55, "between": 0.95}  # inches
TITLE_IN = 0.4  # room for a figure title over the panels' titles
TITLE_PT = 10  # title font size; a title longer than its width wraps onto a second line


def new_figure(ncols: int = 1, width: float = 5.2, layout: str | None = None, *, suptitle: bool = False,
               nrows: int = 1, height: float = 4.2):
    """A figure of ``nrows`` x ``ncols`` panels (returned row by row) outside pyplot's registry (the caller
    owns it; nothing accumulates). By default its margins are fixed (``MARGINS_IN``, room for the axis
    labels, the panels' titles and, with ``suptitle``, a figure title): laying out by measuring every text
    (``tight``) costs more than drawing; ``constrained`` suits figures with a colour bar beside panels."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "attnbench"  # stable ids: same stores, same SVG
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=100, layout=layout)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    if layout is None:
        w, h = fig.get_size_inches()
        m = MARGINS_IN
        top = m["top"] + suptitle * TITLE_IN
        panel_w = (w - m["left"] - m["right"] - (ncols - 1) * m["between"]) / ncols
        panel_h = (h - m["bottom"] - top - (nrows - 1) * m["between"]) / nrows
        fig.subplots_adjust(left=m["left"] / w, right=1 - m["right"] / w, bottom=m["bottom"] / h,
                            top=1 - top / h, wspace=m["between"] / panel_w, hspace=m["between"] / panel_h)
    return fig, axes


def save(fig, stem: str | Path, formats: Sequence[str] = FIGURE_FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.png`` (and the other ``formats``), without dates or versions: the same
    figure gives the same bytes."""
    paths = []
    for ext in formats:
        path = Path(f"{stem}.{ext}")
        with files.atomic(path) as tmp:
            fig.savefig(tmp, format=ext,
                        metadata={"Software": None} if ext == "png" else {"Date": None, "Creator": None})
        paths.append(path)
    return paths


def wrapped(text: str, width_in: float, lines: int = 2) -> str:
    """``text`` wrapped to ``width_in`` inches at the title size (``lines`` at most, the rest elided)."""
    chars = max(20, int(width_in * 72 / (0.55 * TITLE_PT)))  # an average glyph is about 0.55 em wide
    return "\n".join(textwrap.wrap(text, chars, max_lines=lines, placeholder=" ..."))


def finish(fig, ax, title: str, *, grid: str = "both", **axes):
    """Axes settings, grid, legend and title (wrapped to the panel) shared by the figures."""
    ax.set(**axes)
    ax.grid(True, axis=grid, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(wrapped(title, ax.get_position().width * fig.get_size_inches()[0]), fontsize=TITLE_PT)
    return fig


def side_axis(ax, sides) -> None:
    """A log x axis of image or feature-map sides, ticked at the sides measured."""
    sides = sorted({int(r) for r in sides})
    labels, last = [], 0.0
    for r in sides:  # a side too close to the last one labelled keeps its tick, unlabelled
        labels.append(str(r) if r >= 1.3 * last else "")
        last = r if labels[-1] else last
    ax.set_xscale("log")
    ax.set_xticks(sides, labels)
    ax.minorticks_off()
    ax.set_xlabel("resolution (side in pixels)")


def scaling_figure(g: pd.DataFrame, title: str):
    """Latency (median, IQR bars), MACs and peak memory against resolution, log-log, with exponents fitted
    on pixels; where a line stops, the first case that did not run, and why."""
    palette = colours(g.hue)
    fig, axes = new_figure(3, suptitle=True)
    for ax, (column, (label, scale)) in zip(axes, METRICS.items()):
        for name, hue, v in _series(g):
            ok = v[v.status == Status.OK].sort_values("pixels")
            if ok.empty:
                continue
            k, r2 = fit_exponent(ok.pixels, ok[column])
            fit = f"k={k:.2f}, R²={r2:.3f}" if not math.isnan(k) else "k n/a"
            iqr = ok.latency_ms_iqr * scale / 2 if column == "latency_ms_median" else None
            ax.errorbar(ok.res, ok[column] * scale, yerr=iqr, fmt="o-", capsize=2, color=palette.get(hue),
                        label=f"{name} ({fit})")
            stopped = v[(v.status != Status.OK) & (v.pixels > ok.pixels.max())].sort_values("pixels")
            if len(stopped):  # where the line stops: the first case that did not run, and why
                first = stopped.iloc[0]
                ax.plot([first.res], [ok[column].iloc[-1] * scale], "x", ms=10, mew=2, color=palette.get(hue))
                ax.annotate(first.status, (first.res, ok[column].iloc[-1] * scale), textcoords="offset points",
                            xytext=(-6, 6), ha="right", fontsize=7, color=palette.get(hue))
        finish(fig, ax, label.split(" (")[0], yscale="log", ylabel=label)
        side_axis(ax, g.res)
    fig.suptitle(wrapped(title + " (k: cost ~ pixels^k; latency bars: interquartile range)",
                         fig.get_size_inches()[0], lines=1), fontsize=TITLE_PT)
    return fig


def efficiency_figure(g: pd.DataFrame, title: str):
    """Achieved GFLOP/s (2 x MACs / latency) against resolution, beside the device's measured matmul rate."""
    palette = colours(g.hue)
    fig, (ax,) = new_figure(1, 6.5)
    ok = g[g.status == Status.OK]
    for name, hue, v in _series(ok):
        v = v.sort_values("pixels")
        ax.plot(v.res, 2 * v.macs / (v.latency_ms_median * 1e-3) / 1e9, "o-", color=palette.get(hue), label=name)
    peak = ok.device_peak_gflops.dropna()
    if len(peak):
        ax.axhline(peak.median(), ls="--", color="black", label=f"measured matmul peak {peak.median():.0f} GFLOP/s")
    finish(fig, ax, title, yscale="log", ylabel="achieved GFLOP/s (2 per MAC)")
    side_axis(ax, ok.res)
    return fig


def throughput_figure(g: pd.DataFrame, title: str):
    """Throughput against batch, one line per variant and resolution."""
    palette = colours(g.hue)
    fig, (ax,) = new_figure(1, 6.5)
    for (name, res), hue, v in _series(g[g.status == Status.OK], ["series", "res"]):
        v = v.sort_values("batch")
        ax.plot(v.batch, v.throughput_per_s, "o-", color=palette.get(hue), label=f"{name} @ {res}")
    return finish(fig, ax, title, xscale="log", yscale="log", xlabel="batch", ylabel="throughput (images / s)")


def bars_figure(g: pd.DataFrame, column: str, label: str, by: str, by_label: str, title: str):
    """One bar per variant, grouped by ``by`` (devices, or batch sizes), of one metric; latency bars carry
    the interquartile range."""
    palette = colours(g.hue)
    fig, (ax,) = new_figure(1, 7.5)
    groups = sorted(g[by].unique(), key=str)
    series = list(_series(g))
    width = 0.8 / max(1, len(series))
    for i, (name, hue, v) in enumerate(series):
        cells = [v[v[by] == k] for k in groups]
        values = [c[column].median() for c in cells]
        spread = [c.latency_ms_iqr.median() / 2 for c in cells] if column == "latency_ms_median" else None
        ax.bar(np.arange(len(groups)) + i * width, values, width, yerr=spread, capsize=2,
               color=palette.get(hue), label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [str(k) for k in groups], fontsize=7)
    return finish(fig, ax, title, grid="y", xlabel=by_label, ylabel=label, yscale="log")


def label_offsets(x: Sequence[float], y: Sequence[float], *, near: float = 0.04) -> list[tuple[int, int, str]]:
    """Where each point's name goes, as (dx, dy) in points and its alignment, on a log x and linear y axis:
    left of points in the right 40 % of the x range (a name to the right of the last point would run off
    the axes), right of the others; points within ``near`` of a point named before (as fractions of the
    ranges) stack their names below its, so that coincident points stay legible."""
    lx = np.log10(np.asarray(x, float))
    ya = np.asarray(y, float)
    fx = (lx - lx.min()) / (np.ptp(lx) or 1.0)
    fy = (ya - ya.min()) / (np.ptp(ya) or 1.0)
    offsets = []
    for i in range(len(lx)):
        stacked = sum(abs(fx[i] - fx[j]) < near and abs(fy[i] - fy[j]) < near for j in range(i))
        left = fx[i] > 0.6
        offsets.append((-5 if left else 5, 3 - 10 * stacked, "right" if left else "left"))
    return offsets


def accuracy_figure(table: pd.DataFrame, cost: str, label: str, title: str):
    """Top-1 accuracy against a cost, one point per network (bars: one standard deviation over its seeds,
    cut at 100 %), with the Pareto front."""
    from matplotlib.ticker import LogFormatter

    t = table.assign(hue=table.variant.where(table.variant.fillna("") != "", table.model))
    palette = colours(t.hue)
    fig, (ax,) = new_figure(1, 6.5)
    t = t.dropna(subset=[cost]).reset_index(drop=True)
    offsets = label_offsets(t[cost], t["top-1 (%)"])
    for model, x, y, std, (dx, dy, ha), key in zip(t.model, t[cost], t["top-1 (%)"], t["top-1 std"], offsets, t.hue):
        colour = palette.get(key)
        bar = [[std], [min(std, 100 - y)]] if std else None  # no bar above 100 %
        ax.errorbar(x, y, yerr=bar, fmt="o", ms=6, capsize=3, color=colour, zorder=3)
        ax.annotate(model, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=7, color=colour)
    ax.margins(x=0.08, y=0.08)
    front = pareto(list(t[cost]), list(t["top-1 (%)"]))
    ax.plot(t.loc[front, cost], t.loc[front, "top-1 (%)"], "--", color="grey", label="Pareto front", zorder=2)
    finish(fig, ax, title, xscale="log", xlabel=label, ylabel="test top-1 (%)")
    ax.xaxis.set_major_formatter(LogFormatter())  # plain numbers (4, 6, 20), not 4 x 10^0
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.5)))
    return fig


MARKERS = "os^DvPX*h<>p"  # one per network of a figure, so that two setups of one variant stay apart


def resolution_figure(table: pd.DataFrame, title: str):
    """Top-1 against the side tested (rows of :func:`attnbench.tables.resolution_table` for one data set), one line
    per trained setup: solid as trained, dashed with its tables interpolated; bars one standard deviation over
    its seeds (cut at 100 %); the side trained at dotted, chance dashed grey. A side a network did not run at
    leaves a gap in its line."""
    table = table.assign(hue=table.variant.where(table.variant.fillna("") != "", table.model))
    palette = colours(table.hue)
    fig, (ax,) = new_figure(1, 7.5)
    models = sorted(set(table.model))
    for (model, tables), rows in table.groupby(["model", "tables"], sort=True):
        rows = rows.sort_values("side")
        y, std = rows["top-1 (%)"], rows["top-1 std"].fillna(0)
        ax.errorbar(rows.side, y, yerr=[std, np.minimum(std, 100 - y)], capsize=3, ms=5,
                    marker=MARKERS[models.index(model) % len(MARKERS)], ls="-" if tables == "trained" else "--",
                    color=palette.get(rows.hue.iloc[0]),
                    label=model + ("" if tables == "trained" else ", interpolated"))
    for side in sorted(set(table["trained at"])):
        ax.axvline(side, ls=":", color="black", lw=1, label=f"trained at {side}")
    chance = table["chance (%)"].dropna()
    if len(chance):
        ax.axhline(chance.iloc[0], ls="--", color="grey", lw=0.8, label=f"chance ({chance.iloc[0]:g} %)")
    side_axis(ax, table.side)
    return finish(fig, ax, title, xlabel="side tested (pixels)", ylabel="test top-1 (%)")
