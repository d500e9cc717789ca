"""Figures: the project's one plotting module (report, inspection and profiling draw with it), one colour
per variant everywhere."""

from __future__ import annotations

import math
import textwrap
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench import files
from attnbench.baselines import variant_facts
from attnbench.choices import FIGURE_FORMATS, Status
from attnbench.console import unit_for
from attnbench.tables import METRICS, pareto, trusted_exponent


def colours(hues: Iterable[str] = ()) -> dict[str, object]:
    """One colour per hue (a variant, or a network from elsewhere), the same in every figure, on every machine
    and whatever plugins are installed: the shipped variants (``attnbench/baselines/variants.csv``, in registry
    order) take matplotlib's accessible ``petroff10`` sequence (distinguishable with colour-vision
    deficiencies); any other hue (a plugin's variant, a network from elsewhere) a colour of ``EXTRA`` chosen by
    its name, the next free one where two names of a figure would share it, so no colour repeats."""
    names = list(variant_facts().name)  # the shipped variants: a report asks the registry (torch) for nothing
    sequence, extra = colour_sequence(), extra_colours()
    palette = {name: sequence[i] for i, name in enumerate(names[: len(sequence)])}
    others = sorted({h for h in hues if isinstance(h, str) and h} - set(palette)) + names[len(sequence):]
    taken: set[int] = set()
    for name in others:
        i = zlib.crc32(name.encode()) % len(extra)
        while i in taken and len(taken) < len(extra):
            i = (i + 1) % len(extra)
        taken.add(i)
        palette[name] = extra[i]
    return palette


def colour_sequence() -> list:
    """The shipped variants' colours: matplotlib's ``petroff10`` (``tab10`` before matplotlib 3.10)."""
    import matplotlib

    return list(matplotlib.color_sequences["petroff10" if "petroff10" in matplotlib.color_sequences else "tab10"])


def extra_colours() -> list:
    """The colours of other hues: ``Dark2`` and ``tab20b``, none of them in :func:`colour_sequence`."""
    import matplotlib

    return list(matplotlib.color_sequences["Dark2"]) + list(matplotlib.color_sequences["tab20b"])


MARKERS = "os^DvPX*h<>p"  # within a colour, one per series (implementations, options, settings of one variant)


def _series(g: pd.DataFrame, by: str | list[str] = "series"):
    """The series of ``g`` (one per label, or per label and ``by``'s other columns), each with its colour key and
    marker: the series of one colour (a variant's implementations, options or settings) by marker, in name order
    among the series of that colour that ``g`` holds."""
    names = g.drop_duplicates("series").sort_values("series")
    rank = names.groupby("hue").cumcount()
    marker = {name: MARKERS[i % len(MARKERS)] for name, i in zip(names.series, rank)}
    for key, v in g.groupby(by, sort=True):
        yield key, v.hue.iloc[0], marker[v.series.iloc[0]], v


MARGINS_IN = {"left": 0.85, "right": 0.2, "bottom": 0.6, "top": 0.55, "between": 0.95}  # inches
TITLE_IN = 0.4  # room for a figure title over the panels' titles
TITLE_PT = 10  # title font size; a title longer than its width wraps onto a second line


def new_figure(ncols: int = 1, width: float = 5.2, layout: str | None = None, *, suptitle: bool = False,
               nrows: int = 1, height: float = 4.2):
    """A figure of ``nrows`` x ``ncols`` panels (returned row by row) outside pyplot's registry (the caller
    owns it; nothing accumulates). By default its margins are fixed (``MARGINS_IN``, room for the axis
    labels, the panels' titles and, with ``suptitle``, a figure title): laying out by measuring every text
    (``tight``) costs more than drawing; ``constrained`` suits figures with a colour bar beside panels.
    :func:`legend` widens a fixed-margin figure by the room its legend takes, right of the panels."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "attnbench"  # stable ids: same stores, same SVG
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=100, layout=layout)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    if layout is None:
        fig.attnbench_grid = (ncols, nrows, suptitle)
        _place(fig, MARGINS_IN["right"])
    return fig, axes


def _place(fig, right_in: float) -> None:
    """Panels at the fixed margins (inches) of ``MARGINS_IN``, ``right_in`` on the right."""
    ncols, nrows, suptitle = fig.attnbench_grid
    w, h = fig.get_size_inches()
    m = MARGINS_IN
    top = m["top"] + suptitle * TITLE_IN
    panel_w = (w - m["left"] - right_in - (ncols - 1) * m["between"]) / ncols
    panel_h = (h - m["bottom"] - top - (nrows - 1) * m["between"]) / nrows
    fig.subplots_adjust(left=m["left"] / w, right=1 - right_in / w, bottom=m["bottom"] / h,
                        top=1 - top / h, wspace=m["between"] / panel_w, hspace=m["between"] / panel_h)


LEGEND_PT = 7  # legend font size
LEGEND_CHARS = 44  # a legend entry longer than this wraps


def legend(fig, axes, title: str | None = None) -> None:
    """One legend for the figure's panels (an entry per label, the first panel's handle), right of the panels,
    outside every one of them: the figure is widened by the room it takes, the panels keep their size."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if not entries:
        return
    labels = ["\n".join(textwrap.wrap(label, LEGEND_CHARS)) for label in entries]
    chars = max(len(line) for text in [*labels, title or ""] for line in text.splitlines())
    room = 0.55 * LEGEND_PT / 72 * chars + 0.75  # glyphs, the handle and the padding (inches)
    w, h = fig.get_size_inches()
    fig.set_size_inches(w + room, h)
    _place(fig, MARGINS_IN["right"] + room)
    top = max(ax.get_position().y1 for ax in axes)
    fig.legend(list(entries.values()), labels, loc="upper left", fontsize=LEGEND_PT, title=title,
               title_fontsize=LEGEND_PT, bbox_to_anchor=(1 - (room + 0.05) / (w + room), top), borderaxespad=0)


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
    """Axes settings, grid and title (wrapped to the panel) shared by the figures (:func:`legend` adds the
    legend once the panels are drawn)."""
    ax.set(**axes)
    ax.grid(True, axis=grid, which="both", alpha=0.3)
    ax.set_title(wrapped(title, ax.get_position().width * fig.get_size_inches()[0]), fontsize=TITLE_PT)
    return fig


def log_axis(ax, values, label: str, axis: str = "x") -> None:
    """A log axis ticked at the values measured (sides, batch sizes), labelled as plain numbers (8, 16, 32, not
    10^1); a value too close to the last one labelled keeps its tick, unlabelled."""
    values = sorted({int(v) for v in values})
    labels, last = [], 0.0
    for v in values:
        labels.append(str(v) if v >= 1.3 * last else "")
        last = v if labels[-1] else last
    getattr(ax, f"set_{axis}scale")("log")
    getattr(ax, f"set_{axis}ticks")(values, labels)
    getattr(ax, f"set_{axis}label")(label)
    ax.minorticks_off()


def side_axis(ax, sides) -> None:
    """A log x axis of image or feature-map sides, ticked at the sides measured."""
    log_axis(ax, sides, "resolution (side in pixels)")


def failed_panel(status: str, reason: str | None) -> str:
    """The metric a case that did not run failed on: peak memory for one out of memory or predicted not to fit,
    latency for the others (a time-out, an error, a variant that cannot run at that side); never MACs, which
    are counted, not run."""
    memory = status == Status.OOM or "memory" in str(reason or "").lower()
    return "peak_mem_bytes" if memory else "latency_ms_median"


def scaling_figure(g: pd.DataFrame, title: str):
    """Latency (median, IQR bars), MACs and peak memory against resolution, log-log, each metric in the unit
    that suits its figures, with exponents fitted on pixels in the legend where they are trusted
    (:func:`attnbench.tables.trusted_exponent`); where a line stops, the first case that did not run, marked at
    its side on the panel of the metric it failed on, with its status."""
    from matplotlib.transforms import blended_transform_factory

    palette = colours(g.hue)
    fig, axes = new_figure(3, suptitle=True)
    ok_rows = g[g.status == Status.OK]
    fits = {}
    for name, _, _, v in _series(g):
        ok = v[v.status == Status.OK]
        fits[name] = ", ".join(_k(trusted_exponent(ok.pixels, ok[column], ok.latency_noisy if column ==
                                                   "latency_ms_median" else None)) for column in METRICS)
    for ax, (column, (name, units)) in zip(axes, METRICS.items()):
        size, unit = unit_for(ok_rows[column], units)
        failures = 0
        for series, hue, marker, v in _series(g):
            colour = palette.get(hue)
            ok = v[v.status == Status.OK].sort_values("pixels")
            if len(ok):
                iqr = ok.latency_ms_iqr / size / 2 if column == "latency_ms_median" else None
                ax.errorbar(ok.res, ok[column] / size, yerr=iqr, fmt=f"{marker}-", capsize=2, color=colour,
                            label=f"{series} (k {fits[series]})")
            last = ok.pixels.max() if len(ok) else 0
            stopped = v[(v.status != Status.OK) & (v.pixels > last)].sort_values("pixels")
            if len(stopped) and failed_panel(stopped.status.iloc[0], stopped.reason.iloc[0]) == column:
                first = stopped.iloc[0]  # where the line stops: the first case that did not run, and why
                at = blended_transform_factory(ax.transData, ax.transAxes)
                y = 0.95 - 0.07 * failures
                ax.plot([first.res], [y], "x", ms=9, mew=2, color=colour, transform=at)
                ax.annotate(str(first.status), (first.res, y), xycoords=at, textcoords="offset points",
                            xytext=(-7, -3), ha="right", fontsize=7, color=colour)
                failures += 1
        finish(fig, ax, name, yscale="log", ylabel=f"{name} ({unit})" if unit else name)
        side_axis(ax, g.res)
    legend(fig, axes, title="k: cost ~ pixels^k (latency, MACs, memory)")
    fig.suptitle(wrapped(title + " (latency bars: interquartile range; x: the first side that did not run)",
                         fig.get_size_inches()[0], lines=1), fontsize=TITLE_PT)
    return fig


def _k(fit: tuple[float, float]) -> str:
    k, _ = fit
    return "-" if math.isnan(k) else f"{k:.2f}"


def efficiency_figure(g: pd.DataFrame, title: str):
    """Achieved GFLOP/s (2 x MACs / latency) against resolution, beside the device's measured matmul rate."""
    palette = colours(g.hue)
    fig, (ax,) = new_figure(1, 6.5)
    ok = g[g.status == Status.OK]
    for name, hue, marker, v in _series(ok):
        v = v.sort_values("pixels")
        ax.plot(v.res, 2 * v.macs / (v.latency_ms_median * 1e-3) / 1e9, f"{marker}-", color=palette.get(hue),
                label=name)
    peak = ok.device_peak_gflops.dropna()
    if len(peak):
        ax.axhline(peak.median(), ls="--", color="black", label=f"measured matmul peak {peak.median():.0f} GFLOP/s")
    finish(fig, ax, title, yscale="log", ylabel="achieved GFLOP/s (2 per MAC)")
    side_axis(ax, ok.res)
    legend(fig, [ax])
    return fig


LINES = ["-", "--", ":", "-."]  # within a series, one per resolution


def throughput_figure(g: pd.DataFrame, title: str):
    """Throughput against batch, one line per series and resolution (the resolution by line style)."""
    palette = colours(g.hue)
    fig, (ax,) = new_figure(1, 6.5)
    ok = g[g.status == Status.OK]
    sides = sorted(set(ok.res))
    for (name, res), hue, marker, v in _series(ok, ["series", "res"]):
        v = v.sort_values("batch")
        ax.plot(v.batch, v.throughput_per_s, marker=marker, ls=LINES[sides.index(res) % len(LINES)],
                color=palette.get(hue), label=f"{name} @ {res}")
    finish(fig, ax, title, yscale="log", ylabel="throughput (images / s)")
    log_axis(ax, ok.batch, "batch")
    legend(fig, [ax])
    return fig


def dots_figure(g: pd.DataFrame, column: str, label: str, by: str, by_label: str, title: str):
    """A dot plot of one metric on a log axis: one dot per series in each group of ``by`` (devices, or batch
    sizes), side by side; latency dots carry the interquartile range."""
    palette = colours(g.hue)
    fig, (ax,) = new_figure(1, 7.5)
    groups = sorted(g[by].unique(), key=str)
    series = list(_series(g))
    step = 0.8 / max(1, len(series))
    for i, (name, hue, marker, v) in enumerate(series):
        cells = [v[v[by] == k] for k in groups]
        values = [c[column].median() for c in cells]
        spread = [c.latency_ms_iqr.median() / 2 for c in cells] if column == "latency_ms_median" else None
        ax.errorbar(np.arange(len(groups)) - 0.4 + (i + 0.5) * step, values, yerr=spread, fmt=marker, ms=6,
                    capsize=2, color=palette.get(hue), label=name)
    ax.set_xticks(np.arange(len(groups)), [str(k) for k in groups], fontsize=7)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    finish(fig, ax, title, grid="y", xlabel=by_label, ylabel=label, yscale="log")
    legend(fig, [ax])
    return fig


MARGIN = 0.08  # of an accuracy figure's data range, on each side


def label_offsets(x: Sequence[float], y: Sequence[float], names: Sequence[str], size: tuple[float, float], *,
                  char: float = 4.2, line: float = 9.0) -> list[tuple[int, int, str]]:
    """Where each point's name goes, as (dx, dy) in points and its alignment, on a log x and linear y axis of
    ``size`` (width, height) points: left of points in the right 40 % of the x range (a name to the right of
    the last point would run off the axes), right of the others; a name that would overlap one placed before
    (``char`` points a character of the 7-point font, ``line`` points a line) goes a line lower, and again,
    until it is clear, so that the names of points near one another stay legible."""
    lx = np.log10(np.asarray(x, float))
    ya = np.asarray(y, float)
    px = (lx - lx.min()) / (np.ptp(lx) or 1.0) * size[0]
    py = (ya - ya.min()) / (np.ptp(ya) or 1.0) * size[1]
    offsets: list[tuple[int, int, str]] = []
    placed: list[tuple[float, float, float]] = []  # each name's left and right edges and baseline, in points
    for i, name in enumerate(names):
        left = px[i] > 0.6 * size[0]
        dx = -5 if left else 5
        start = px[i] + dx - (len(name) * char if left else 0)
        end = start + len(name) * char
        dy = 3
        while any(start < b and a < end and abs(py[i] + dy - base) < line for a, b, base in placed):
            dy -= line
        placed.append((start, end, py[i] + dy))
        offsets.append((dx, int(dy), "right" if left else "left"))
    return offsets


def accuracy_figure(table: pd.DataFrame, cost: str, label: str, title: str):
    """Top-1 accuracy against a cost, one point per network (bars: one standard deviation over its seeds,
    cut at 100 %), with the Pareto front."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        """The ticks LogFormatter names, each as a plain number."""

        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    t = table.assign(hue=table.variant.where(table.variant.fillna("") != "", table.model))
    palette = colours(t.hue)
    fig, (ax,) = new_figure(1, 6.5)
    t = t.dropna(subset=[cost]).reset_index(drop=True)
    box, data = ax.get_position(), 1 / (1 + 2 * MARGIN)  # the axes in figure fractions; the data's share of them
    offsets = label_offsets(t[cost], t["top-1 (%)"], list(t.model), (box.width * fig.get_figwidth() * 72 * data,
                                                                      box.height * fig.get_figheight() * 72 * data))
    marker = dict(zip(t.sort_values("model").model, t.sort_values("model").groupby("hue").cumcount()))
    for model, x, y, std, (dx, dy, ha), key in zip(t.model, t[cost], t["top-1 (%)"], t["top-1 std"], offsets, t.hue):
        colour = palette.get(key)
        bar = [[std], [min(std, 100 - y)]] if std else None  # no bar above 100 %
        ax.errorbar(x, y, yerr=bar, fmt=MARKERS[marker[model] % len(MARKERS)], ms=6, capsize=3, color=colour,
                    zorder=3)
        ax.annotate(model, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=7, color=colour)
    ax.margins(x=MARGIN, y=MARGIN)
    front = pareto(list(t[cost]), list(t["top-1 (%)"]))
    ax.plot(t.loc[front, cost], t.loc[front, "top-1 (%)"], "--", color="grey", label="Pareto front", zorder=2)
    finish(fig, ax, title, xscale="log", xlabel=label, ylabel="test top-1 (%)")
    ax.xaxis.set_major_formatter(PlainLogFormatter())  # plain numbers (0.3, 4, 20), not 3e-01 or 4 x 10^0
    ax.xaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.5)))
    legend(fig, [ax])
    return fig




def resolution_figure(table: pd.DataFrame, title: str):
    """Top-1 against the side tested (rows of :func:`attnbench.tables.resolution_table` for one data set), one line
    per trained setup: solid as trained, dashed with its tables interpolated, which starts from the side trained
    at (where the network is the trained one: a line from 24 to 48 alone drew a value at 32 no network has);
    bars one standard deviation over its seeds (cut at 100 %); the side trained at dotted, chance dashed grey. A
    side a network did not run at leaves a gap in its line."""
    table = table.assign(hue=table.variant.where(table.variant.notna() & (table.variant != ""), table.model))
    palette = colours(table.hue)
    fig, (ax,) = new_figure(1, 7.5)
    models = sorted(set(table.model))
    own = table[(table.tables == "trained") & (table.side == table["trained at"])]
    for (model, tables), rows in table.groupby(["model", "tables"], sort=True):
        if tables != "trained":
            at_own = own[own.model == model]
            rows = pd.concat([rows, at_own[~at_own.side.isin(rows.side)]])
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
    finish(fig, ax, title, ylabel="test top-1 (%)")
    log_axis(ax, table.side, "side tested (pixels)")
    legend(fig, [ax])
    return fig
