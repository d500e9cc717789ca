"""Our mechanisms beside maintained libraries' implementations of the same functions, and the harness's
latency beside a plain timer of timm's resnet50.

    PYTHONPATH=. python benchmarks/peers.py [--threads 2] [--rounds 5] [--min-run-time 1] [--only mhsa,resnet50]

Needs timm (``pip install -e ".[timm]"``, with a torchvision that imports beside your torch); without
it, says so and exits 0. For each peer of ``attnbench.peers`` (timm's BottleneckAttn for mhsa, Swin's
WindowAttention with its block's roll and partition for window, NonLocalAttn for nonlocal, NATTEN's na2d
for neighborhood where NATTEN imports), at each size below: the same weights in both, the outputs
compared in float64 (NATTEN's in float32, its most precise; max abs difference; ``equal`` when below
1e-9 relative to the output's scale, 1e-5 in float32), then forward latency in fp32 (eval, no grad),
``torch.utils.benchmark`` medians, ours (``impl="auto"``) and the peer alternating in one process for
``--rounds`` rounds, and the ratio ours / peer (goal: at most 1). The peers are timed with the allocator
as a case's process sets it (keep_freed_memory: what the harness measures our variants with, and what a
process under jemalloc or tcmalloc sees; under glibc's default the larger sizes page-fault their freed
outputs in again on every forward, ours and the peer's alike), so their table comes after the resnet50
one, which needs glibc's default first: the harness's median for our resnet50 at 224 (``attnbench run
--variants conv --arch resnet50``, each case a fresh process) beside a plain ``perf_counter`` timer of
timm's ``resnet50`` and of ours, alternating, first with this process's allocator as it starts (glibc's
default: its forwards page-fault their freed activations in again) and then as each case's process runs
it (keep_freed_memory; goal: the harness within 10 % of timm's timer in that same setting, either way).
Exits 1 when a pair is not equal or a goal is missed.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time

import torch

import attnbench
from attnbench.arguments import positive_float, positive_int, split
from attnbench.choices import unknown_name_message
from attnbench.env import cpu_model
from attnbench.measure.latency import make_step, measure_latency
from attnbench.measure.memory import keep_freed_memory
from attnbench.peers import PEERS, build_pair, library_missing, missing, same_function

EFFICIENCY_SIZES = [(1, 128, 56, 56), (1, 128, 64, 64), (8, 64, 56, 56)]  # benchmarks/efficiency.py's inputs


def heads(variant: str, dim: int) -> dict:
    """BoTNet's 4 heads for mhsa; Swin's head width of 32 for window; NAT's 32 for neighborhood."""
    if variant == "mhsa":
        return {"heads": 4}
    if variant in ("window", "neighborhood"):
        return {"heads": max(1, dim // 32)}
    return {}


# (label, variant, options, input shape)
CASES = [
    ("BoT50 stage 5", "mhsa", {"heads": 4}, (8, 512, 14, 14)),
    ("BoT stage 4", "mhsa", {"heads": 4}, (8, 256, 28, 28)),
    *[("efficiency", "mhsa", heads("mhsa", s[1]), s) for s in EFFICIENCY_SIZES],
    ("Swin stage 1", "window", {"heads": 4, "window": 7}, (8, 128, 56, 56)),
    ("Swin stage 1", "window", {"heads": 4, "window": 7, "shifted": True}, (8, 128, 56, 56)),
    *[("efficiency", "window", {**heads("window", s[1]), "window": 7, "shifted": shifted}, s)
      for s in EFFICIENCY_SIZES for shifted in (False, True)],
    *[("efficiency", "nonlocal", {"subsample": False}, s) for s in EFFICIENCY_SIZES],
    *[("efficiency", "neighborhood", {**heads("neighborhood", s[1]), "window": 7}, s) for s in EFFICIENCY_SIZES],
]
OPTIONS_WIDTH = max(len(",".join(f"{k}={v}" for k, v in options.items())) for _, _, options, _ in CASES)
RESNET_BATCHES = (1, 8)
RESNET_GOAL = 0.10  # the harness's median over the plain timer's of timm's resnet50: within 10 % either way


def alternate(steps: dict, batch: int, args) -> dict[str, list[float]]:
    """Round medians (ms) of each step, the steps alternating, so that load on a shared machine hits all alike."""
    medians: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            lat = measure_latency(step, "cpu", batch=batch, threads=args.threads, min_run_time=args.min_run_time)
            medians[name].append(lat["latency_ms_median"])
    return medians


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ({min(values):.1f}-{max(values):.1f})"


def compare_peers(args) -> bool:
    """The peers' table; True when every pair is equal and every ratio meets its goal."""
    ok = True
    header = (f"{'variant':12} {'options':{OPTIONS_WIDTH}} {'input':14} {'size':14} {'ours ms (range)':>22} "
              f"{'peer ms (range)':>22} {'ratio':>6} {'equal':>5} {'max abs diff':>12}  peer")
    print(header + "\n" + "-" * len(header), flush=True)
    for label, variant, options, shape in CASES:
        if args.only and variant not in args.only:
            continue
        opts = ",".join(f"{k}={v}" for k, v in options.items())
        lead = f"{variant:12} {opts:{OPTIONS_WIDTH}} {'x'.join(map(str, shape)):14} {label:14}"
        reason = missing(variant)
        if reason:
            print(f"{lead} no peer here: {reason}", flush=True)
            continue
        try:
            diff, equal = same_function(variant, options, shape)
        except ValueError as err:  # not the same function at this size (said why)
            print(f"{lead} {err}", flush=True)
            continue
        ours, peer = build_pair(variant, options, shape)
        x = torch.randn(*shape)
        medians = alternate({"ours": make_step(ours, x, "infer"), "peer": make_step(peer, x, "infer")}, shape[0], args)
        ratio = statistics.median(medians["ours"]) / statistics.median(medians["peer"])
        ok &= equal and ratio <= 1.0
        print(f"{lead} {spread(medians['ours']):>22} {spread(medians['peer']):>22} {ratio:6.2f} "
              f"{'yes' if equal else 'NO':>5} {diff:12.2e}  {PEERS[variant].description}", flush=True)
    return ok


def plain_timer(module: torch.nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    """Median ms of a forward (eval, no grad) by ``time.perf_counter``, after three warm-up runs; at least
    ten timed runs and ``min_run_time`` seconds."""
    module.eval()
    times = []
    with torch.no_grad():
        for _ in range(3):
            module(x)
        while len(times) < 10 or sum(times) < min_run_time:
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def harness_ms(batch: int, args, db: str) -> float:
    """The harness's stored median for our resnet50 at 224 (a fresh process per case, as a sweep runs)."""
    rows = attnbench.run(variants=["conv"], arch="resnet50", res=[224], batch=[batch], dtype=["fp32"],
                             threads=args.threads, device=["cpu"], mode=["infer"], db=db, force=True,
                             min_run_time=args.min_run_time)
    row = rows.iloc[0]
    if row["status"] != "ok":
        raise RuntimeError(f"harness case failed: {row['status']} {row['reason']}")
    return float(row["latency_ms_median"])


def compare_resnet50(args, timm) -> bool:
    """The harness against a plain timer of timm's resnet50 (and of ours), alternating, with this process's
    allocator as it starts (glibc's default) and then as a case's process runs (keep_freed_memory); True when
    the harness is within the goal of the timer in the same allocator setting."""
    print(f"\nresnet50 at 224, fp32, forward: the harness (fresh process per case, torch.utils.benchmark) beside a "
          f"plain perf_counter timer in this process; median of {args.rounds} alternating rounds (range). "
          "Allocator 'default': this process as it started, whose forwards page-fault their freed activations in "
          "again; 'kept': after keep_freed_memory, as each case's process runs (the goal compares the same setting)")
    header = (f"{'batch':>5} {'allocator':>9} {'harness, ours':>22} {'timer, ours':>22} {'timer, timm':>22} "
              f"{'harness / timm timer':>21} {'ours / timm (timer)':>20}")
    print(header + "\n" + "-" * len(header), flush=True)
    ok = True
    torch.manual_seed(0)
    ours_net = attnbench.build_model("resnet50").eval()
    timm_net = timm.create_model("resnet50", pretrained=False).eval()
    with tempfile.TemporaryDirectory() as tmp:
        for allocator in ("default", "kept"):
            if allocator == "kept" and not keep_freed_memory():
                print("kept: this platform's allocator does not take the setting (not glibc)")
                break
            for batch in RESNET_BATCHES:
                x = torch.randn(batch, 3, 224, 224)
                ms: dict[str, list[float]] = {"harness": [], "ours": [], "timm": []}
                for _ in range(args.rounds):
                    ms["harness"].append(harness_ms(batch, args, f"{tmp}/harness.sqlite"))
                    ms["ours"].append(plain_timer(ours_net, x, args.min_run_time))
                    ms["timm"].append(plain_timer(timm_net, x, args.min_run_time))
                med = {k: statistics.median(v) for k, v in ms.items()}
                ratio = med["harness"] / med["timm"]
                within = abs(ratio - 1) <= RESNET_GOAL
                verdict = "" if allocator == "default" else "ok" if within else "MISSED"
                ok &= within or allocator == "default"
                print(f"{batch:>5} {allocator:>9} {spread(ms['harness']):>22} {spread(ms['ours']):>22} "
                      f"{spread(ms['timm']):>22} {ratio:>14.2f} {verdict:>6} {med['ours'] / med['timm']:>20.2f}",
                      flush=True)
    return ok


INSTALL = {"timm": 'pip install -e ".[timm]"', "natten": "pip install --no-build-isolation natten"}
ONLY = [*dict.fromkeys(variant for _, variant, _, _ in CASES), "resnet50"]  # what --only selects


def comparisons(text: str) -> list[str]:
    """--only: names of ONLY (an unknown one would select nothing and pass every goal)."""
    names = split(text)
    for name in names:
        if name not in ONLY:
            raise argparse.ArgumentTypeError(unknown_name_message("comparison", name, ONLY))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=positive_int("threads"), default=2)
    parser.add_argument("--min-run-time", type=positive_float, default=1.0, help="seconds of timed runs per round")
    parser.add_argument("--rounds", type=positive_int("rounds"), default=5, help="alternating timing rounds")
    parser.add_argument("--only", type=comparisons, default=None,
                        help=f"comma-separated, of {', '.join(ONLY)} (default: all)")
    args = parser.parse_args(argv)
    chosen = args.only or ONLY
    needed = {lib: library_missing(lib) for lib in dict.fromkeys(
        "timm" if name == "resnet50" else PEERS[name].library for name in chosen)}
    versions = {lib: importlib.import_module(lib).__version__ for lib, why in needed.items() if why is None}
    if not versions:
        said = "; ".join(f"{lib} does not import here ({why}): {INSTALL[lib]}" for lib, why in needed.items())
        print(f"peers: {said}; nothing to compare against")
        return 0
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {', '.join(f'{lib} {v}' for lib, v in versions.items())}, {args.threads} "
          f"threads, fp32, CPU ({cpu_model()}), forward (eval, no grad); latency: median of {args.rounds} alternating "
          f"rounds of torch.utils.benchmark medians ({args.min_run_time:g} s each), range in brackets; ratio = ours / "
          "peer (goal <= 1)\n")
    ok = True
    if "resnet50" in chosen:
        if "timm" in versions:
            ok &= compare_resnet50(args, importlib.import_module("timm"))
        else:
            print(f"resnet50: no comparison here: timm does not import ({needed['timm']})")
    keep_freed_memory()  # the peers are timed as a case's process runs, which the harness measures our variants in
    ok &= compare_peers(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
