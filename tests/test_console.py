"""The printed table: natural units per column, shared facts said once, noisy and failed rows marked,
a width bound, and a grid by resolution."""

import pandas as pd
import pytest

from attnbench.console import BYTE_UNITS, COUNT_UNITS, TIME_UNITS, console_table, figure, unit_for
from attnbench.record import Record


def frame(cases) -> pd.DataFrame:
    rows = []
    for variant, res, extra in cases:
        base = dict(run_id="r", scope="module", variant=variant, arch="", res=res, batch=1, dim=64, dtype="fp32",
                    device="cpu", mode="infer", threads=2, impl="ref", status="ok", params=12_345,
                    macs=3_000 * res**2, latency_ms_median=0.002 * res**2, latency_ms_iqr=0.0001 * res**2,
                    latency_noisy=False, peak_mem_bytes=4096 * res**2)
        rows.append(Record.from_row({**base, **extra}).row())
    return pd.DataFrame(rows)


@pytest.mark.parametrize("values, units, expected", [
    ([0.4, 2.0, 30.0], TIME_UNITS, "ms"),  # median 2 ms
    ([0.004, 0.02, 0.9], TIME_UNITS, "µs"),  # median 20 µs
    ([900.0, 2_000.0, 40_000.0], TIME_UNITS, "s"),  # median 2 s
    ([12_345, 23_000_000, 4e9], COUNT_UNITS, "M"),
    ([100, 900], COUNT_UNITS, ""),
    ([3 * 2**20, 5 * 2**30, 7 * 2**30], BYTE_UNITS, "GiB"),
    ([None, float("nan")], BYTE_UNITS, "B"),
])
def test_the_unit_reads_the_median_as_at_least_one(values, units, expected):
    size, name = unit_for(values, units)
    assert name == expected
    finite = sorted(v for v in values if v == v and v is not None)
    if finite:
        assert 1 <= finite[len(finite) // 2] / size < 1024


def test_figures_keep_four_significant_digits():
    assert [figure(v, 1.0) for v in (1234.5, 12.345, 0.012345, 0, None)] == ["1234", "12.35", "0.01235", "0", "-"]
    assert figure(2_500_000, 1e6) == "2.500"


def test_the_flat_table_says_shared_facts_once_and_marks_noise_and_failures():
    rows = frame([("gsa", 16, {}), ("gsa", 32, {"latency_noisy": True}),
                  ("nonlocal", 64, {"status": "oom", "reason": "CUDA out of memory", "latency_ms_median": None,
                                    "latency_ms_iqr": None, "macs": None, "peak_mem_bytes": None})])
    lines = console_table(rows).splitlines()
    assert lines[0] == "module scope, batch 1, dim 64, fp32, cpu, infer, 2 threads"
    assert lines[1] == "implementation: gsa=ref, nonlocal=ref"  # what was timed, auto's choice or --impl's
    header = lines[2]
    assert "latency (ms ± IQR)" in header and "MACs (M)" in header and "memory (MiB)" in header
    assert "0.5120 ± 0.026" in lines[4] and "2.048 ± 0.10 ~" in lines[5]  # 0.002 x 16² ms, noisy marked
    assert "oom [1]" in lines[6] and lines[-1] == "[1] oom: CUDA out of memory"
    assert any(line.startswith("~ noisy") for line in lines)


def test_an_implementation_is_said_once_per_variant_or_in_the_label_where_it_varies():
    rows = frame([("gsa", 16, {"impl": "batched"}), ("gsa", 16, {"impl": "plain"}), ("local", 16, {"impl": "flex"})])
    lines = console_table(rows).splitlines()
    assert lines[1] == "implementation: local=flex"
    assert [line.split()[0] for line in lines[4:]] == ["gsa/batched", "gsa/plain", "local"]


def test_the_implementation_line_names_no_implementation_that_only_skipped_cases_planned():
    skipped = {"status": "skipped", "reason": "predicted peak does not fit"}
    rows = frame([("gsa", 16, {"impl": "batched"}), ("gsa", 512, {"impl": "plain", **skipped}),
                  ("nonlocal", 512, {"impl": "blocked", **skipped})])
    assert console_table(rows).splitlines()[1] == "implementation: gsa=batched"


def test_at_model_scope_the_implementation_line_names_variants_as_impl_takes_them():
    """Networks' rows say which implementation their attention ran by the variant (local=flex, what --impl
    accepts; it printed local_probe=flex, which --impl refuses); a variant that ran different implementations in
    different networks (auto chooses per input) names each network after its implementation."""
    net = {"scope": "model", "arch": "probe", "dim": 0}
    rows = frame([("local", 32, {**net, "model": "local_probe", "impl": "flex"}),
                  ("gsa", 32, {**net, "model": "gsa_probe", "impl": "pixelmajor"}),
                  ("gsa", 224, {**net, "model": "gsa_resnet50", "arch": "resnet50", "impl": "batched"}),
                  ("gsa", 32, {**net, "model": "gsa_resnet26", "arch": "resnet26", "impl": "pixelmajor"})])
    assert console_table(rows).splitlines()[1] == ("implementation: local=flex, gsa=pixelmajor (gsa_probe, "
                                                   "gsa_resnet26), gsa=batched (gsa_resnet50)")


def test_no_line_is_wider_than_asked():
    long = {"reason": "predicted peak 41232 MiB exceeds the 22636 MiB available on cpu " * 3, "status": "skipped"}
    rows = frame([("gsa", 16, {"batch": 8, "options": "span=15,heads=8"}), ("local", 32, long),
                  ("axial", 64, {"dtype": "bf16", "mode": "train"})])
    for width in (60, 100):
        assert max(len(line) for line in console_table(rows, width=width).splitlines()) <= width


def test_the_pivot_is_a_grid_of_one_metric_by_resolution():
    rows = frame([("gsa", 16, {}), ("gsa", 32, {}), ("conv", 16, {}),
                  ("conv", 32, {"status": "skipped", "reason": "too large"})])
    lines = console_table(rows, pivot="latency").splitlines()
    assert lines[1] == "implementation: gsa=ref, conv=ref"
    assert lines[2] == "latency (ms) by resolution (columns: side in pixels)"
    header, cells = lines[3].split(), {line.split()[0]: line.split()[1:] for line in lines[5:7]}
    assert header == ["network", "16", "32"]
    assert cells == {"gsa": ["0.5120", "2.048"], "conv": ["0.5120", "skipped", "[1]"]}  # its note says why
    assert lines[-1] == "[1] skipped: too large"
    assert not any(line.startswith("~ noisy") for line in lines)  # no cell is noisy here
    noisy = frame([("gsa", 16, {"latency_noisy": True}), ("gsa", 32, {})])
    assert "~ noisy" in console_table(noisy, pivot="latency") and "~" not in console_table(noisy, pivot="macs")
    memory = console_table(rows, pivot="memory").splitlines()
    assert memory[2].startswith("peak memory (MiB)") and memory[5].split()[1:] == ["1.000", "4.000"]


def test_a_table_wider_than_the_line_is_printed_in_blocks_that_repeat_the_key():
    rows = frame([("gsa", 16, {"batch": 8, "options": "span=15,heads=8"}), ("local", 32, {"dtype": "bf16"}),
                  ("axial", 64, {"mode": "train", "status": "oom", "reason": "out of memory"})])
    whole = console_table(rows, width=1000).splitlines()
    cells = {cell.strip() for line in whole[4:7] for cell in line.split("  ") if cell.strip()}
    assert {"0.5120 ± 0.026", "2.048 ± 0.10", "oom [1]", "gsa[span=15,heads=8]", "bf16"} <= cells
    for width in (90, 60):  # the whole key repeated; at 60 it leaves no room: rows numbered, '#' and case repeated
        lines = console_table(rows, width=width).splitlines()
        assert max(map(len, lines)) <= width and not any("..." in line for line in lines)
        # every column of the whole table, with its unit, and every cell of it, is in one of the blocks
        for header in ("params (K)", "MACs (M)", "latency (ms ± IQR)", "memory (MiB)", "status", "batch", "mode"):
            assert header in whole[2] and any(header in line for line in lines)
        for cell in cells:
            assert any(cell in line for line in lines), cell
        blocks = "\n".join(lines).split("\n\n")
        assert len(blocks) >= 2 and lines[-1] == "[1] oom: out of memory"
        for block in blocks:
            gsa = next(line for line in block.splitlines() if "gsa[span=15,heads=8]" in line).split()
            assert gsa[:2] == (["gsa[span=15,heads=8]", "16"] if width == 90 else ["1", "gsa[span=15,heads=8]"])


def test_prose_is_wrapped_never_cut():
    rows = frame([("gsa", 16, {"latency_noisy": True, "status": "skipped",
                               "reason": "predicted peak 41232 MiB exceeds the 22636 MiB available"})])
    lines = console_table(rows, width=40).splitlines()
    assert max(map(len, lines)) <= 40
    text = " ".join(line.strip() for line in lines)
    assert "predicted peak 41232 MiB exceeds the 22636 MiB available" in text
    assert "too few runs, or a busy machine" in text


def test_the_pivot_wraps_its_sides_into_blocks():
    rows = frame([("gsa", res, {}) for res in (8, 16, 32, 64, 128, 256, 512, 1024)])
    lines = console_table(rows, width=40, pivot="latency").splitlines()
    assert max(map(len, lines)) <= 40
    sides = [w for line in lines if line.startswith("network") for w in line.split()[1:]]
    assert sides == ["8", "16", "32", "64", "128", "256", "512", "1024"]


def test_max_res_lines_fit_the_line_width():
    from types import SimpleNamespace

    from attnbench.console import max_res_lines

    case = SimpleNamespace(label="gsa res=1 b=1 fp32 cpu infer")
    found = [SimpleNamespace(case=case, largest=1024, failed=1025, status="timeout"),
             SimpleNamespace(case=case, largest=None, failed=16, status="oom")]
    lines = max_res_lines(found, "reports/results.sqlite", 40)
    assert max(map(len, lines)) <= 40
    text = " ".join(line.strip() for line in lines)
    assert "gsa b=1 fp32 cpu infer: largest side 1024; 1025 did not (timeout)" in text
    assert "gsa b=1 fp32 cpu infer: no side ran; 16 did not (oom)" in text
    assert text.endswith("every side tried is stored in reports/results.sqlite; the report's largest-fit table reads "
                         "them.") and "" in lines
