"""The GPU goals of the variants, measured side by side in one process, stored and printed as one table.

    python benchmarks/gpu.py --db OUT/gpu.sqlite                      # the goals' sizes, on cuda
    python benchmarks/gpu.py --device cpu --batch 2 --dim 32 --res 12 \\
        --net-batch 2 --net-res 32 --arch resnet26 --dtype fp32          # the same script, small, anywhere

Module rows: each variant alone (``--batch`` x ``--dim`` x ``--res``^2, forward) with every
implementation, in each of ``--module-dtypes``: the one ``auto`` picks on the device must be the
fastest, and meet its goal beside the textbook one of ``attnbench/plain.py`` (axial has none: its
reference ``dense``, the paper's equations as written, stands in), and, for
local, a bare FlexAttention neighbourhood core with the 1x1 projections (no relative terms): what
a GPU user would write first. Network rows: every variant's ResNet (``--arch``) on
``--net-res``^2 images, forward (infer) and forward + backward (train), against the plain ResNet.
Every case is measured by the harness's own ``measure_case`` (MACs, parameters, peak memory,
``torch.utils.benchmark`` median) and written to ``--db`` with its environment. Peer rows: each
variant that a maintained library implements as the same function (attnbench.peers: timm's
BottleneckAttn, Swin's WindowAttention, NonLocalAttn, NATTEN's na2d) at the module size in
``--dtype``, ours (auto) beside the peer with the same weights, forward: goal at most 1x; a peer
whose library does not import is one line, not a failure. timm rows: timm's resnet50,
swin_tiny_patch4_window7_224 and convnext_tiny at the network size, forward and forward + backward
beside our --arch timed the same way (printed, not stored: they are no case of ours), where timm
imports. ``--sections`` picks among
modules, networks, peers and timm (default: all). Exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import uuid

import torch

import attnbench
from attnbench import store
from attnbench.choices import DTYPES, torch_dtype
from attnbench.env import environment
from attnbench.harness import measure_case
from attnbench.measure.latency import make_step, measure_latency
from attnbench.measure.peak import matmul_peak_gflops
from attnbench.record import Case, Record

MODULE_GOAL_MS = {"gsa": 1.0, "local": 2.0, "axial": 1.5, "nonlocal": 1.0}  # at B=32, C=256, 56x56, bf16
TEXTBOOK = {"gsa": "plain", "local": "plain", "nonlocal": "plain", "axial": "dense"}
TEXTBOOK_RATIO = 0.6  # the chosen implementation's latency over the textbook one's, at most
FLEX_CORE_RATIO = 1.5  # local over a bare FlexAttention core plus projections, at most
# local last: FlexAttention compiles once per map shape and mode (about 7 shapes in a ResNet-50), the
# slowest start; rows are printed and stored as they come, so a run cut short keeps the others
# the later mechanisms after the paper's five, measured without goals yet (FlexAttention's neighbourhood last)
ORDER = ["conv", "gsa", "axial", "nonlocal", "local", "efficient", "mhsa", "window", "neighborhood"]
NETWORK_GOAL_X = {"gsa": 2.0, "local": 3.0, "axial": 3.0, "nonlocal": 1.7}  # latency over the plain ResNet's
SECTIONS = ("modules", "networks", "peers", "timm")
TIMM_NETWORKS = ("resnet50", "swin_tiny_patch4_window7_224", "convnext_tiny")  # the same ResNet-50, and two users run


def flex_core_ms(batch: int, dim: int, res: int, dtype: torch.dtype, device: str, threads: int,
                 min_run_time: float) -> float:
    """A bare FlexAttention 7 x 7 neighbourhood core (8 heads, no relative terms) plus the q/k/v projection."""
    from attnbench.variants._common import pointwise
    from attnbench.variants.local import _flex, neighbourhood_mask

    h = 8
    proj = torch.nn.Conv2d(dim, 3 * dim, 1, bias=False).to(device, dtype)
    x = torch.randn(batch, dim, res, res, device=device, dtype=dtype)
    mask = neighbourhood_mask(res, res, 7, torch.device(device))
    flex = _flex(torch.device(device))

    def step():
        with torch.no_grad():
            qkv = pointwise(proj, x).view(batch, 3, h, dim // h, res * res).permute(1, 0, 2, 4, 3)
            q, k, v = (t.contiguous() for t in qkv.unbind(0))
            return flex(q, k, v, block_mask=mask, scale=1.0)

    return measure_latency(step, device, batch=batch, threads=threads, min_run_time=min_run_time)["latency_ms_median"]


def peer_cases(dim: int) -> list[tuple[str, dict]]:
    """The variants with a peer (attnbench.peers), with the heads their papers' networks use at ``dim`` channels."""
    swin = max(1, dim // 32)  # Swin's and NAT's head width of 32
    return [("mhsa", {"heads": 4}), ("window", {"heads": swin, "window": 7}),
            ("window", {"heads": swin, "window": 7, "shifted": True}), ("nonlocal", {"subsample": False}),
            ("neighborhood", {"heads": swin, "window": 7})]


def peer_row(variant: str, options: dict, shape: tuple[int, ...], dtype: torch.dtype, device: str, threads: int,
             min_run_time: float) -> dict | None:
    """Ours (auto) and the peer of the same function, forward, alternating twice: a table line with the ratio, or None
    (said why) where the peer's library does not import or the peer does not compute our function at this size."""
    from attnbench.peers import PEERS, build_pair, missing

    opts = ",".join(f"{k}={v}" for k, v in options.items())
    what = f"{variant} {opts}, B={shape[0]} C={shape[1]} {shape[2]}x{shape[3]}"
    reason = missing(variant)
    try:
        ours, peer = (None, None) if reason else build_pair(variant, options, shape, dtype=dtype, device=device)
    except ValueError as err:
        reason = str(err)
    if reason:
        print(f"{what}: no peer row ({reason})", flush=True)
        return None
    x = torch.randn(*shape, device=device, dtype=dtype)
    with torch.no_grad():
        a, b = ours(x).float(), peer(x).float()
    rel = ((a - b).norm() / b.norm()).item()  # the same weights: only rounding in the dtype
    ms: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(2):
        for name, module in (("ours", ours), ("peer", peer)):
            ms[name].append(measure_latency(make_step(module, x, "infer"), device, batch=shape[0], threads=threads,
                                            min_run_time=min_run_time)["latency_ms_median"])
    ours_ms, peer_ms = min(ms["ours"]), min(ms["peer"])
    auto = attnbench.resolve_impl(variant, "auto", device, dtype=dtype, shape=shape)
    return {"what": f"{what} vs {PEERS[variant].description}", "impl": auto,
            "ms": ours_ms, "TFLOP/s": float("nan"), "ratio": ours_ms / peer_ms,
            "against": f"peer {peer_ms:.3f} ms: {ours_ms / peer_ms:.2f}x (<= 1), outputs differ by {rel:.1e} relative"}


def timm_rows(args, threads: int) -> list[dict]:
    """timm's networks (TIMM_NETWORKS, pretrained=False) at --net-res and --net-batch in --dtype, forward and forward +
    backward, after our --arch timed the same way; none (said why) where timm does not import."""
    try:
        import timm
    except Exception as err:  # noqa: BLE001 - absent, or its torchvision does not import beside this torch
        print(f"timm networks: timm does not import here ({type(err).__name__})", flush=True)
        return []
    from attnbench.models import build_model

    networks = {f"our {args.arch}": lambda: build_model(args.arch)}
    networks.update({f"timm {name}": (lambda name=name: timm.create_model(
        name, pretrained=False, **({"img_size": args.net_res} if name.startswith("swin") else {})))
        for name in TIMM_NETWORKS})  # Swin is built for one input size
    rows, ours = [], {}
    for label, build in networks.items():
        try:
            dtype = torch_dtype(args.dtype)
            net = build().to(args.device, dtype)
            x = torch.randn(args.net_batch, 3, args.net_res, args.net_res, device=args.device, dtype=dtype)
            for mode in ["infer", "train"]:
                ms = measure_latency(make_step(net, x, mode), args.device, batch=args.net_batch, threads=threads,
                                     min_run_time=args.min_run_time)["latency_ms_median"]
                line = {"what": f"{label}, {args.net_res}, batch {args.net_batch}, {args.dtype}, {mode}",
                        "impl": "timm" if label.startswith("timm") else "auto", "ms": ms, "TFLOP/s": float("nan")}
                if mode in ours:
                    line["against"] = f"our {args.arch} {ours[mode]:.2f} ms: {ms / ours[mode]:.2f}x"
                else:
                    ours[mode] = ms
                rows.append(line)
        except Exception as err:  # noqa: BLE001 - one network that cannot run here loses only its rows
            print(f"{label}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=DTYPES, help="the goals' dtype")
    p.add_argument("--module-dtypes", default="bf16,fp32", help="dtypes of the module rows")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--res", type=int, default=56)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--net-batch", type=int, default=64)
    p.add_argument("--net-res", type=int, default=224)
    p.add_argument("--min-run-time", type=float, default=0.3)
    p.add_argument("--db", default="/tmp/gpu-checks/gpu.sqlite")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    args = p.parse_args(argv)
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    threads = torch.get_num_threads()
    print(f"{'case':58} {'impl':18} {'latency':>12} {'rate':>15}  comparison  goal met", flush=True)
    run_id = uuid.uuid4().hex[:12]
    peak = matmul_peak_gflops(args.device, torch_dtype(args.dtype), threads)
    table, failures = [], []

    def measure(case: Case) -> dict:
        print(f"  {case.label} impl={case.impl}", file=sys.stderr, flush=True)
        measured = dataclasses.replace(measure_case(case, args.min_run_time), device_peak_gflops=peak)
        record = Record(case, measured, environment(case.device), run_id)
        store.write(args.db, record, replace=True)
        row = record.row()
        if row["status"] != "ok":
            failures.append(f"{case.label} {case.impl}: {row['status']} {row.get('reason')}")
        return row

    def check(ok: bool, text: str) -> str:
        if not ok:
            failures.append(text)
        return "yes" if ok else "NO"

    def show(line: dict) -> None:
        table.append(line)
        rate = "      -" if math.isnan(line["TFLOP/s"]) else f"{line['TFLOP/s']:7.2f}"  # no MACs counted: no rate
        print(f"{line['what']:58} {line['impl']:18} {line['ms']:9.3f} ms {rate} TFLOP/s  "
              f"{line.get('against', '')}  {line.get('goal met', '')}", flush=True)

    # one module alone, forward, every implementation
    for dtype in args.module_dtypes.split(",") if "modules" in sections else []:
        shape = f"B={args.batch} C={args.dim} {args.res}x{args.res} {dtype}"
        goals = dtype == args.dtype
        for variant in ORDER:
            rows = {impl: measure(Case("module", variant, "", args.res, args.batch, args.dim, dtype, args.device,
                                       "infer", threads, impl)) for impl in attnbench.list_impls(variant)}
            times = {impl: r.get("latency_ms_median") or float("inf") for impl, r in rows.items()}
            auto = attnbench.resolve_impl(variant, "auto", args.device, dtype=torch_dtype(dtype),
                                          shape=(args.batch, args.dim, args.res, args.res))
            for impl, row in rows.items():
                ms = times[impl]
                line = {"what": f"{variant} module, {shape}", "impl": impl + (" (auto)" if impl == auto else ""),
                        "ms": ms, "TFLOP/s": 2 * (row.get("macs") or 0) / (ms * 1e-3) / 1e12}
                if impl == auto and len(rows) > 1:
                    fastest = min(times, key=times.get)
                    line["against"] = f"fastest: {fastest}"
                    line["goal met"] = check(fastest == auto, f"{variant} {dtype}: auto runs {auto}, {fastest} faster")
                if impl == auto and goals and variant in TEXTBOOK:
                    base = times[TEXTBOOK[variant]]
                    line["against"] += f"; {TEXTBOOK[variant]} {base:.3f} ms: {ms / base:.2f}x (<= {TEXTBOOK_RATIO})"
                    line["what"] += f" (goal {MODULE_GOAL_MS[variant]} ms)"
                    line["goal met"] = check(line["goal met"] == "yes" and ms <= MODULE_GOAL_MS[variant]
                                             and ms / base <= TEXTBOOK_RATIO,
                                             f"{variant} module: {ms:.3f} ms, goal {MODULE_GOAL_MS[variant]} ms; "
                                             f"{ms / base:.2f}x of {TEXTBOOK[variant]}")
                    if variant == "local":
                        core = flex_core_ms(args.batch, args.dim, args.res, torch_dtype(dtype), args.device, threads,
                                            args.min_run_time)
                        line["against"] += f"; flex core+proj {core:.3f} ms: {ms / core:.2f}x (<= {FLEX_CORE_RATIO})"
                        line["goal met"] = check(line["goal met"] == "yes" and ms / core <= FLEX_CORE_RATIO,
                                                 f"local: {ms / core:.2f}x of the bare FlexAttention core")
                show(line)

    # networks, forward and forward + backward, against the plain ResNet
    base: dict[str, float] = {}  # the plain ResNet's latency per mode
    for variant in ORDER if "networks" in sections else []:
        for mode in ["infer", "train"]:
            resolved = attnbench.resolve_impl(variant, "auto", args.device, dtype=torch_dtype(args.dtype),
                                              grad=mode == "train")
            name = attnbench.models.model_spec_for(variant, args.arch).name
            row = measure(Case("model", variant, args.arch, args.net_res, args.net_batch, 0, args.dtype, args.device,
                               mode, threads, resolved, model=name))
            ms = row.get("latency_ms_median") or float("nan")
            line = {"what": f"{name}, {args.net_res}, batch {args.net_batch}, {args.dtype}, {mode}",
                    "impl": row["impl"], "ms": ms, "TFLOP/s": 2 * (row.get("macs") or 0) / (ms * 1e-3) / 1e12}
            if variant == "conv":
                base[mode] = ms
            else:
                goal, ratio = NETWORK_GOAL_X.get(variant), ms / base[mode]
                line["against"] = f"{args.arch} {base[mode]:.2f} ms: {ratio:.2f}x" + (f" (<= {goal})" if goal else "")
                if goal:
                    line["goal met"] = check(ratio <= goal, f"{name} {mode}: {ratio:.2f}x of {args.arch}")
            show(line)

    if "peers" in sections:  # our modules beside other libraries' implementations of the same functions
        for variant, options in peer_cases(args.dim):
            line = peer_row(variant, options, (args.batch, args.dim, args.res, args.res), torch_dtype(args.dtype),
                            args.device, threads, args.min_run_time)
            if line:
                line["goal met"] = check(line.pop("ratio") <= 1.0, f"{variant} {options}: {line['against']}")
                show(line)

    if "timm" in sections:  # timm's networks, as a user of timm runs them, beside ours
        for line in timm_rows(args, threads):
            show(line)

    print(f"\n{torch.cuda.get_device_name() if args.device.startswith('cuda') else args.device}, "
          f"torch {torch.__version__}, attnbench {attnbench.__version__}; store {args.db}")
    if failures:
        print("\nmissed:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
