"""attnbench profile: Kineto traces that parse, and the operator table."""

import json

import pandas as pd

from attnbench.cli import main


def test_profile_writes_traces_and_tables(tmp_path, capsys):
    out = tmp_path / "reports"
    assert main(["profile", "--variants", "gsa,conv", "--res", "16", "--dim", "16", "--iters", "2",
                 "--threads", "1", "--out", str(out)]) == 0
    traces = sorted((out / "traces").glob("*/*.pt.trace.json"))
    assert {t.parent.name.split("_")[0] for t in traces} == {"gsa", "conv"}
    for trace in traces:
        events = json.loads(trace.read_text())["traceEvents"]
        names = {e.get("name", "") for e in events}
        assert any(n.startswith("aten::") for n in names), trace
        assert all("ts" in e for e in events if e.get("ph") == "X")
    table = pd.read_csv(next((out / "tables").glob("profile_*.csv")))
    assert set(table.variant) == {"gsa", "conv"}
    assert "aten::bmm" in set(table[table.variant == "gsa"].operator)
    for _, t in table.groupby("variant"):
        assert 0 < t["share (%)"].sum() <= 100.01 and (t["self ms / iter"] > 0).all()
    assert next((out / "figures").glob("profile_*.png")).stat().st_size > 0


def test_the_profilers_own_log_lines_are_dropped_and_others_kept(capfd):
    import os

    from attnbench.profiling import without_profiler_log

    with without_profiler_log():
        os.write(2, b"USDT:2026-11-28 02:24:31 732:732 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a warning of our own\n")
        os.write(2, b"STAGE:2026-11-28 02:24:31 732:732 ActivityProfilerController.cpp:312] Completed Stage\n")
    assert capfd.readouterr().err == "a warning of our own\n"
