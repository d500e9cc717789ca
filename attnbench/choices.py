"""The names a sweep or a training run is spelled with, and their defaults: plain values, no torch, so
that the command line can describe itself (``--help``) without loading the numerical stack.

``Status`` and ``Scope`` are string enums: a member is equal to, hashes as and is stored as its value
(``Status.OK == "ok"``), so stores written before them read the same.
"""

from __future__ import annotations

import difflib
import enum
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: the same behaviour, spelled out
    class StrEnum(str, enum.Enum):
        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


class Status(StrEnum):
    """How a measured case, or an evaluation, ended."""

    OK = "ok"
    SKIPPED = "skipped"  # not run: the implementation or the variant cannot, or the predicted peak does not fit
    OOM = "oom"  # out of the device's memory (or killed by the kernel's out-of-memory killer)
    ERROR = "error"
    TIMEOUT = "timeout"  # no result within the time limit
    KILLED = "killed"  # the case's process was killed by another process
    REFUSED = "refused"  # an evaluation: the network cannot run at this side


class Scope(StrEnum):
    """What a case runs: a variant alone on a feature map, or a whole network on images."""

    MODULE = "module"
    MODEL = "model"


DTYPES = ("fp32", "bf16", "fp16")  # torch_dtype maps them to torch dtypes
MODES = ("infer", "train")  # eval forward without grad; forward + backward
AMP_DTYPES = ("bf16", "fp16")  # --amp: autocast to this dtype, weights kept in --dtype
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile
SCOPES = tuple(Scope)
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
TABLES = ("results", "training", "evaluations")  # what `attnbench export --table` writes
EXPORT_FORMATS = {".csv": "csv", ".md": "md", ".json": "json"}  # export -o, run --results-file: by the name
EXPORT_SUFFIXES = ".csv, .md or .json"  # as a message names them
COLUMN_SETS = ("summary", "all")  # export --columns, run --results-columns: the columns compared first, or every one
DEFAULT_RES = {Scope.MODEL: 224, Scope.MODULE: 56}  # image side for networks, feature-map side for modules
# a sweep's other defaults (attnbench.sweep.Sweep), which the command line shows in its help
SWEEP_DEFAULTS = {"batch": (1,), "dim": (64,), "dtype": ("fp32",), "mode": ("infer",), "arch": "resnet50",
                  "impl": ("auto",), "width": (1.0,)}
SWEEP_SET = ("dim", "size", "stride")  # variant options the sweep itself sets: --opt refuses them


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and its noun, singular for one: '1 case', '3 cases', '2 batches' (``plural`` where it is not
    ``noun`` + 's')."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """'Unknown variant 'gssa'. Available: a, b. Did you mean 'gsa'?'"""
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'. Available: {', '.join(available)}.{hint}"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a name of ``DTYPES`` (torch loaded here, on first use)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
