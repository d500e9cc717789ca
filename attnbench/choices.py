"""The names a sweep or a training run is spelled with, and their defaults: plain values, no torch, so
that the command line can describe itself (``--help``) without loading the numerical stack."""

from __future__ import annotations

import difflib
import os

DTYPES = ("fp32", "bf16", "fp16")  # attnbench.sweep maps them to torch dtypes
MODES = ("infer", "train")  # eval forward without grad; forward + backward
AMP_DTYPES = ("bf16", "fp16")  # --amp: autocast to this dtype, weights kept in --dtype
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile
SCOPES = ("module", "model")
DATASETS = ("cifar100", "cifar10", "digits", "longrange", "imagefolder")
DEFAULT_DB = os.path.join("reports", "results.sqlite")
# generated outputs get folders of their own, never the committed reference report in reports/
DEFAULT_REPORT = os.path.join("reports", "latest")
DEFAULT_PROFILE = os.path.join("reports", "profile")
NOISY = "~"  # printed after a latency flagged noisy (a wide spread, or a busy machine)
LAUNCHERS = ("slurm", "local")  # --launcher: submitit's Slurm executor, or its local one
PIVOTS = ("latency", "macs", "memory", "params")  # what `attnbench run --pivot` can grid by resolution
FIGURE_FORMATS = ("png",)  # what reports and profiles draw unless told (svg, pdf: on request)
FORMATS = ("png", "svg", "pdf")
DEFAULT_RES = {"model": 224, "module": 56}  # image side for networks, feature-map side for modules
# a sweep's other defaults (attnbench.sweep.Sweep), which the command line shows in its help
SWEEP_DEFAULTS = {"batch": (1,), "dim": (64,), "dtype": ("fp32",), "mode": ("infer",), "arch": "resnet50",
                  "impl": ("auto",), "width": (1.0,)}


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """'Unknown variant 'gssa'. Available: a, b. Did you mean 'gsa'?'"""
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'. Available: {', '.join(available)}.{hint}"
