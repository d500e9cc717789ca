"""Figures that read: legends outside the data, dots (not bars) on log axes, one colour per variant wherever it
is drawn, failures marked where they happened, units that suit the figures, plain ticks, and exponents told
only from fits that bear them. Checked on the matplotlib artists of reports built here."""

import pandas as pd
import pytest
from matplotlib.container import BarContainer
from test_report import row

from attnbench import store
from attnbench.plots import colours, scaling_figure, throughput_figure
from attnbench.report import _exponent_notes, load, report
from attnbench.tables import MIN_R2, trusted, trusted_exponent


@pytest.fixture
def figures(tmp_path):
    """A report's figures: module sides with a failure on each metric, batches, networks on two devices."""
    db = tmp_path / "figures.sqlite"
    for variant in ("conv", "gsa", "nonlocal"):
        for res in (8, 16, 32, 64):
            store.write(db, row(variant, res))
        for device, name in (("cpu", "Test CPU"), ("cuda:0", "Test GPU")):
            store.write(db, row(variant, 224, device=device, name=name, scope="model", batch=1))
    store.write(db, row("nonlocal", 128, status="oom"))
    store.write(db, row("gsa", 128, status="timeout", reason="no result within 600 s"))
    for batch in (1, 4, 16):
        store.write(db, row("gsa", 32, batch=batch))
    return report([db], tmp_path / "out", published=False).figures


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _drawn(ax):
    """Each labelled series of a panel -> its data line (an error bar's, or a plain line)."""
    lines = {c.get_label(): c.lines[0] for c in ax.containers if c.lines and c.lines[0] is not None}
    lines.update({line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")})
    return lines


def test_every_legend_lies_outside_every_panel(figures):
    checked = 0
    for name, fig in figures.items():
        fig.draw_without_rendering()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        for legend in legends:
            box = legend.get_window_extent()
            for ax in _panels(fig):
                assert not box.overlaps(ax.get_window_extent()), name
            assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, f"{name}: the legend runs off the figure"
            checked += 1
    assert checked == len(figures)  # one legend each


def test_no_bars_on_a_log_axis_networks_and_devices_are_dots(figures):
    dots = [name for name in figures if name.startswith(("models_", "devices_"))]
    assert dots
    for name, fig in figures.items():
        for ax in _panels(fig):
            if any(isinstance(c, BarContainer) for c in ax.containers):
                assert ax.get_yscale() == "linear", name
    for name in dots:
        (ax,) = _panels(figures[name])
        assert ax.get_yscale() == "log" and not any(isinstance(c, BarContainer) for c in ax.containers)
        assert len(ax.get_lines()) > 0  # the dots


def test_one_colour_per_variant_wherever_it_is_drawn_and_none_repeats():
    shipped = colours()
    plugins = [f"plugin{i}" for i in range(25)] + ["timm:resnet50"]
    alone, among = colours(["gsa"]), colours(["gsa", *plugins])
    assert alone["gsa"] == among["gsa"] == shipped["gsa"]  # a plugin's variant shifts no shipped colour
    assert colours(["plugin3"])["plugin3"] == colours(["timm:resnet50", "plugin3"])["plugin3"]
    drawn = [among[name] for name in [*shipped, *plugins]]
    assert len({tuple(map(float, c)) if not isinstance(c, str) else c for c in drawn}) == len(drawn)


def test_implementations_of_one_variant_share_its_colour_and_differ_by_marker(tmp_path):
    db = tmp_path / "impls.sqlite"
    for impl in ("batched", "plain"):
        for res in (8, 16, 32):
            store.write(db, row("gsa", res, impl=impl))
            store.write(db, row("conv", res, impl="ref"))
    frame = load([db])[0]
    fig = scaling_figure(frame, "impls")
    lines = _drawn(_panels(fig)[0])
    gsa = [line for label, line in lines.items() if label.startswith("gsa/")]
    assert len(gsa) == 2 and gsa[0].get_color() == gsa[1].get_color()
    assert gsa[0].get_marker() != gsa[1].get_marker()
    conv = next(line for label, line in lines.items() if label.startswith("conv"))
    assert conv.get_color() != gsa[0].get_color()


def test_a_failure_is_marked_on_its_panel_at_the_side_that_failed(figures):
    fig = figures["scaling_test-cpu_fp32_infer_d16_b1"]
    latency, macs, memory = _panels(fig)

    def crosses(ax):
        return sorted(float(x) for line in ax.get_lines() if line.get_marker() == "x" for x in line.get_xdata())

    assert crosses(latency) == [128.0]  # gsa timed out at 128
    assert crosses(memory) == [128.0]  # nonlocal ran out of memory at 128
    assert crosses(macs) == []  # MACs are counted, nothing failed there
    colour = {label.split(" (")[0]: line.get_color() for label, line in _drawn(latency).items()}
    (timeout,) = [line for line in latency.get_lines() if line.get_marker() == "x"]
    (oom,) = [line for line in memory.get_lines() if line.get_marker() == "x"]
    assert timeout.get_color() == colour["gsa"] and oom.get_color() == colour["nonlocal"]
    assert [t.get_text() for t in latency.texts] == ["timeout"] and [t.get_text() for t in memory.texts] == ["oom"]


def test_units_are_chosen_for_the_figure(tmp_path):
    db = tmp_path / "small.sqlite"
    for res in (8, 16, 32):  # MACs 3e3 * pixels: 192 K to 3.1 M, median 768 K; memory 500 B * pixels: median 125 KiB
        store.write(db, row("conv", res))
    fig = scaling_figure(load([db])[0], "units")
    latency, macs, memory = _panels(fig)
    assert macs.get_ylabel() == "MACs (K)" and memory.get_ylabel() == "peak memory (KiB)"
    assert latency.get_ylabel() == "latency (µs)"  # 2e-3 ms * pixels: 0.128 to 2.05 ms, median 0.512 ms
    top = max(max(line.get_ydata()) for line in macs.get_lines() if len(line.get_ydata()))
    assert top == pytest.approx(3e3 * 32**2 / 1e3)  # in K


def test_batch_ticks_are_plain_numbers(tmp_path):
    db = tmp_path / "batch.sqlite"
    for batch in (1, 2, 4, 8):
        store.write(db, row("gsa", 32, batch=batch))
    (ax,) = _panels(throughput_figure(load([db])[0], "batches"))
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]


def test_exponents_are_told_only_from_good_fits_on_quiet_timings():
    assert MIN_R2 == 0.9 and trusted(0.95) and not trusted(0.5) and not trusted(0.99, noisy=1)
    assert not trusted(float("nan"))
    pixels = [64, 256, 1024, 4096]
    k, _ = trusted_exponent(pixels, [p**1.5 for p in pixels])
    assert k == pytest.approx(1.5)
    assert pd.isna(trusted_exponent(pixels, [p**1.5 for p in pixels], [0, 1, 0, 0])[0])  # a noisy point
    assert pd.isna(trusted_exponent(pixels, [5, 1, 9, 2])[0])  # R^2 far below 0.9
    base = {"device": "cpu", "dtype": "fp32", "dim": 16, "batch": 1, "res": "8-64", "expected k (asymptotic)": "2"}
    exps = pd.DataFrame([
        base | {"variant": "good", "k MACs": 1.9, "R2 MACs": 0.99, "k latency": 1.5, "R2 latency": 0.97,
                "noisy timings": 0},
        base | {"variant": "loose", "k MACs": 1.9, "R2 MACs": 0.99, "k latency": 0.7, "R2 latency": 0.5,
                "noisy timings": 0},
        base | {"variant": "noisy", "k MACs": 1.9, "R2 MACs": 0.99, "k latency": 1.1, "R2 latency": 0.99,
                "noisy timings": 2},
        base | {"variant": "none", "k MACs": 1.0, "R2 MACs": 0.4, "k latency": 1.0, "R2 latency": 0.3,
                "noisy timings": 0},
    ])
    notes = "\n".join(_exponent_notes(exps))
    assert "good on cpu" in notes and "latency k=1.50" in notes and "Latency grows slower than MACs" in notes
    assert "latency k=0.70" not in notes and "not told: R²=0.50" in notes
    assert "latency k=1.10" not in notes and "not told: 2 noisy timings" in notes
    assert "none on cpu" not in notes and "1 fit with R² under 0.9" in notes


def test_the_scaling_legend_gives_only_trusted_exponents(tmp_path):
    db = tmp_path / "noisy.sqlite"
    for res in (8, 16, 32, 64):
        store.write(db, row("gsa", res, latency_noisy=res == 16))
    (label,) = [t.get_text() for t in scaling_figure(load([db])[0], "noisy").legends[0].get_texts()]
    assert label == "gsa (k -, 1.50, 1.50)"  # latency: a noisy point; MACs and memory: exact power laws
