"""Where each variant's time goes: torch.profiler over a few iterations, Kineto traces and operator tables.

Traces are written as Kineto JSON (``*.pt.trace.json``), which TensorBoard's profiler plugin
(the optional ``tensorboard`` extra; the plugin is no longer maintained upstream), Perfetto
(ui.perfetto.dev) and Holistic Trace Analysis all read.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from attnbench.choices import FIGURE_FORMATS, Scope, torch_dtype
from attnbench.harness import build_case
from attnbench.measure.latency import make_step, synchronized
from attnbench.record import Case

# Kineto writes its own lines (profiler_start, profiler_stop) straight to the process's stderr
KINETO_LINE = re.compile(rb"^\w+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ \w+\.cpp:\d+\] ")


@contextlib.contextmanager
def without_profiler_log():
    """Drop the profiler's own log lines written to stderr meanwhile; pass every other line on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True) if not KINETO_LINE.match(line)]
            if kept:
                sys.stderr.write(b"".join(kept).decode(errors="replace"))


def profile_case(case: Case, trace_dir: str | Path, *, iters: int = 5) -> pd.DataFrame:
    """Profile ``iters`` iterations of a case (after one warm-up); write its trace; return its operators.

    The table has one row per operator: self time in ms per iteration (CPU, and CUDA where the case
    runs on a GPU), calls per iteration and the share of the total self time.
    """
    torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    module, shape = build_case(case)
    x = torch.randn(*shape, device=case.device, dtype=torch_dtype(case.dtype))
    step = synchronized(make_step(module, x, case.mode), torch.device(case.device))
    step()
    cuda = torch.device(case.device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with without_profiler_log(), profile(activities=activities, record_shapes=True) as prof:
        for _ in range(iters):
            step()
    trace_dir = Path(trace_dir)
    trace_dir.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_dir / f"{socket.gethostname()}.pt.trace.json"))
    rows = []
    for e in prof.key_averages():
        if e.device_type != DeviceType.CPU:  # kernels: their time is already the self device time of their op
            continue
        self_us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if self_us <= 0:
            continue
        rows.append({"operator": e.key, "self ms / iter": self_us / 1e3 / iters, "calls / iter": e.count / iters,
                     "self CPU ms / iter": e.self_cpu_time_total / 1e3 / iters})
    table = pd.DataFrame(rows).sort_values(["self ms / iter", "operator"], ascending=[False, True])
    table["share (%)"] = 100 * table["self ms / iter"] / table["self ms / iter"].sum()
    return table.reset_index(drop=True)


def write_profile(cases: list[Case], out: str | Path, *, iters: int = 5, top: int = 8,
                  formats: Sequence[str] = FIGURE_FORMATS, say: Callable[[str], None] = print,
                  warn: Callable[[str], None] = print) -> int:
    """Profile every case (:func:`profile_case`) into ``out``: a trace per case under ``traces/``, and per setup
    (scope, side, batch, dtype, mode and device) an operator table of each variant's ``top`` operators under
    ``tables/`` (CSV and Markdown) and a stacked figure under ``figures/``. A case that fails is reported
    through ``warn`` and the others go on; each case's top three operators, and each setup's files, through
    ``say``. Returns how many setups were written."""
    from attnbench.files import safe_name, write_text
    from attnbench.plots import save
    from attnbench.report import slug

    out = Path(out)
    for sub in ("tables", "figures", "traces"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    groups: dict[str, dict[str, pd.DataFrame]] = {}
    several = {v for v in {c.variant for c in cases} if len({c.impl for c in cases if c.variant == v}) > 1}
    for case in cases:
        name = case.variant if case.scope == Scope.MODULE else case.model
        name += f"-{case.impl}" if case.variant in several else ""
        tag = f"{case.scope}_r{case.res}_b{case.batch}_{case.dtype}_{case.mode}_{slug(case.device)}"
        try:
            table = profile_case(case, out / "traces" / f"{safe_name(name)}_{tag}", iters=iters)
        except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
            warn(f"{name} {tag}: {type(e).__name__}: {e}".splitlines()[0])
            continue
        groups.setdefault(tag, {})[name] = table
        head = table.head(3)
        say(f"{name:18} {tag}: " + ", ".join(f"{o} {s:.0f} %" for o, s in zip(head.operator, head["share (%)"])))
    for tag, tables in groups.items():
        combined = pd.concat([t.head(top).assign(variant=n) for n, t in tables.items()], ignore_index=True)
        combined = combined[["variant", "operator", "self ms / iter", "share (%)", "calls / iter"]].round(
            {"self ms / iter": 4, "share (%)": 1, "calls / iter": 2})
        write_text(out / "tables" / f"profile_{tag}.csv", combined.to_csv(index=False))
        write_text(out / "tables" / f"profile_{tag}.md", combined.to_markdown(index=False) + "\n")
        fig = stacked_figure(tables, f"Self time by operator ({tag.replace('_', ', ')})", top=top)
        save(fig, out / "figures" / f"profile_{tag}", formats)
        say(f"traces under {out / 'traces'}; operator table {out / 'tables' / f'profile_{tag}.md'}; "
            f"plot {out / 'figures' / f'profile_{tag}.png'}")
    return len(groups)


def stacked_figure(tables: dict[str, pd.DataFrame], title: str, top: int = 8):
    """One stacked bar per variant: self time of its top operators, the rest as 'other'."""
    import numpy as np

    from attnbench.plots import colour_sequence, legend, new_figure

    ops: list[str] = []
    for t in tables.values():
        for op in t.operator.head(top):
            if op not in ops:
                ops.append(op)
    fig, (ax,) = new_figure(1, 8)
    bottoms = np.zeros(len(tables))
    names = list(tables)
    sequence = colour_sequence()
    for i, op in enumerate(ops + ["other"]):
        heights = []
        for t in tables.values():
            shown = t.operator.isin(ops)
            heights.append(t.loc[~shown, "self ms / iter"].sum() if op == "other"
                           else t.loc[t.operator == op, "self ms / iter"].sum())
        colour = "lightgrey" if op == "other" else sequence[i % len(sequence)]
        ax.bar(names, heights, bottom=bottoms, label=op, color=colour,
               hatch="//" if i >= len(sequence) and op != "other" else None)  # past ten colours: hatched
        bottoms += heights
    ax.set(ylabel="self time per iteration (ms)")
    ax.set_title(title, fontsize=10)
    legend(fig, [ax])  # outside the bars
    return fig
