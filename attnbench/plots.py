"""Figures: the project's one plotting module (report, inspection and profiling draw with it), one colour
per variant everywhere."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from attnbench.registry import list_variants
from attnbench.tables import METRICS, fit_exponent, pareto, series_variant


class Palette(dict):
    """Colours by variant; a series labelled ``variant/impl[options]`` takes its variant's colour."""

    def get(self, label: str, default=None):
        return super().get(series_variant(label), default)


def colours() -> Palette:
    """One colour per variant, the same in every figure (registry order)."""
    import seaborn as sns

    names = list_variants()
    palette = sns.color_palette("colorblind", n_colors=max(10, len(names)))
    return Palette({name: palette[i] for i, name in enumerate(names)})


def new_figure(ncols: int = 1, width: float = 5.2):
    """A figure outside pyplot's registry (the caller owns it; nothing accumulates)."""
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = "attnbench"  # stable ids: same stores, same SVG
    fig = Figure(figsize=(width * ncols, 4.2), dpi=100)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def finish(fig, ax, title: str, *, grid: str = "both", **axes):
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
    fig, axes = new_figure(3)
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
        finish(fig, ax, label.split(" (")[0], xscale="log", yscale="log", xlabel="pixels (res²)", ylabel=label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def efficiency_figure(g: pd.DataFrame, title: str):
    """Achieved GFLOP/s (2 x MACs / latency) against pixels, beside the device's measured matmul rate."""
    palette = colours()
    fig, (ax,) = new_figure(1, 6.5)
    ok = g[g.status == "ok"]
    for variant, v in ok.groupby("variant", sort=True):
        v = v.sort_values("pixels")
        ax.plot(v.pixels, 2 * v.macs / (v.latency_ms_median * 1e-3) / 1e9, "o-", color=palette.get(variant),
                label=variant)
    peak = ok.device_peak_gflops.dropna()
    if len(peak):
        ax.axhline(peak.median(), ls="--", color="black", label=f"measured matmul peak {peak.median():.0f} GFLOP/s")
    return finish(fig, ax, title, xscale="log", yscale="log", xlabel="pixels (res²)",
                   ylabel="achieved GFLOP/s (2 per MAC)")


def throughput_figure(g: pd.DataFrame, title: str):
    """Throughput against batch, one line per variant and resolution."""
    palette = colours()
    fig, (ax,) = new_figure(1, 6.5)
    for (variant, res), v in g[g.status == "ok"].groupby(["variant", "res"], sort=True):
        v = v.sort_values("batch")
        ax.plot(v.batch, v.throughput_per_s, "o-", color=palette.get(variant), label=f"{variant} @ {res}")
    return finish(fig, ax, title, xscale="log", yscale="log", xlabel="batch", ylabel="throughput (images / s)")


def bars_figure(g: pd.DataFrame, column: str, label: str, by: str, title: str):
    """One bar per variant, grouped by ``by`` (devices, or batch sizes), of one metric."""
    palette = colours()
    fig, (ax,) = new_figure(1, 7.5)
    groups = sorted(g[by].unique(), key=str)
    variants = sorted(g.variant.unique())
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        values = [g[(g.variant == variant) & (g[by] == k)][column].median() for k in groups]
        ax.bar(np.arange(len(groups)) + i * width, values, width, color=palette.get(variant), label=variant)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [str(k) for k in groups], fontsize=7)
    return finish(fig, ax, title, grid="y", ylabel=label, yscale="log")


def accuracy_figure(table: pd.DataFrame, cost: str, label: str, title: str):
    """Top-1 accuracy against a cost, one point per network, with the Pareto front."""
    palette = colours()
    fig, (ax,) = new_figure(1, 6.5)
    t = table.dropna(subset=[cost]).reset_index(drop=True)
    for model, x, y in zip(t.model, t[cost], t["top-1 (%)"]):
        ax.scatter(x, y, color=palette.get(model.split("_")[0]), s=40, zorder=3)
        ax.annotate(model, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = pareto(list(t[cost]), list(t["top-1 (%)"]))
    ax.plot(t.loc[front, cost], t.loc[front, "top-1 (%)"], "--", color="grey", label="Pareto front", zorder=2)
    return finish(fig, ax, title, xscale="log", xlabel=label, ylabel="test top-1 (%)")
