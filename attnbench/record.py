"""What the harness produces and the store keeps, as typed records: a measured case is its ``Case`` (what
ran), its ``Measurement`` (what was measured) and its ``Environment`` (where, with what); a training
epoch is an ``Epoch``, and a trained network evaluated at one side an ``Evaluation``, both carrying
their ``Run``. The store's columns are derived from these classes (:func:`columns`), so a field added
here is a column there, with its unit in its name.

Plain Python, no torch: the store and the reports read records without loading the numerical stack.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields

from attnbench.choices import Scope, Status

SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", bool: "INTEGER"}
INTEGER_MAX = 2**63 - 1  # the largest whole number an INTEGER column holds (SQLite's 64-bit signed integer)


def parse_value(text: str) -> object:
    """An option's value: an int, a float, true/false or none, else the text itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(text: str) -> dict[str, object]:
    """``"key=value,..."`` as values."""
    pairs = (item.partition("=") for item in text.split(",")) if text else ()
    return {key: parse_value(value) for key, _, value in pairs}


@dataclass(frozen=True, order=True)
class Case:
    """One point of a sweep.

    At ``module`` scope a variant runs alone on a ``dim`` x ``res`` x ``res`` feature map; at
    ``model`` scope the network ``model`` runs on ``res`` x ``res`` images, and ``dim`` is unused (0):
    ``variant`` is the variant in its attention slot and ``arch`` its architecture, as the network
    registry says (``gsa_resnet50``: ``gsa`` and ``resnet50``; a network from elsewhere,
    ``timm:resnet50``, has no variant and no implementation: "").
    """

    scope: str
    variant: str  # the variant (module scope), or the one in the network's attention slot ("" for none)
    arch: str  # the network's architecture at model scope ("resnet50", "probe", "timm"), "" at module scope
    res: int  # feature-map side (module) or image side (model), pixels
    batch: int
    dim: int  # channels at module scope, 0 at model scope
    dtype: str  # fp32 | bf16 | fp16
    device: str  # cpu | cuda:N
    mode: str  # infer | train
    threads: int  # intra-op CPU threads
    impl: str  # the variant's implementation, resolved for the device (see attnbench.list_impls)
    # what a sweep may add; each at its default is left out of the key, so older keys stay as they were
    options: str = ""  # the variant's options set by the sweep, "key=value,..." sorted ("" for none)
    amp: str = ""  # autocast dtype (bf16 | fp16) over weights kept in `dtype`; "" for none
    channels_last: bool = False  # weights and input in channels-last memory format
    compile: str = ""  # torch.compile mode ("default", "max-autotune", ...); "" for eager
    model: str = ""  # the network at model scope (a registered name, timm:NAME or module:callable); "" for a module
    width: float = 1.0  # the network's channel multiplier (attnbench's networks)

    @property
    def key(self) -> str:
        """Stable identity, the same on every machine and Python version (optional fields named only when set)."""
        optional = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        return "/".join(f"{k}={v}" for k, v in asdict(self).items() if k not in optional or v != optional[k])

    @property
    def variant_options(self) -> dict[str, object]:
        """The options as values: what ``build_variant`` takes."""
        return parse_options(self.options)

    @property
    def label(self) -> str:
        """The case in a line of progress: ``gsa/batched res=56 b=1 fp32 cpu infer`` (the implementation it runs,
        which auto chose or --impl named: with --impl auto,plain two cases differ by it alone)."""
        what = (self.variant if self.scope == Scope.MODULE else self.model) + (f"/{self.impl}" if self.impl else "")
        what += f" width={self.width:g}" if self.scope == Scope.MODEL and self.width != 1 else ""
        return f"{what} res={self.res} b={self.batch} {self.dtype} {self.device} {self.mode}{self.setup}"

    @property
    def setup(self) -> str:
        """The timm-style options set on this case, as ' amp=bf16 channels_last compile=default' ('' for none)."""
        return ((f" amp={self.amp}" if self.amp else "") + (" channels_last" if self.channels_last else "")
                + (f" compile={self.compile}" if self.compile else ""))


@dataclass(frozen=True)
class Measurement:
    """What one case measured, or why it could not. Byte counts and MACs are None where not measured,
    never 0."""

    status: str  # ok | skipped | oom | error | timeout | killed
    reason: str | None = None
    params: int | None = None
    params_trainable: int | None = None
    macs: int | None = None  # per forward pass of the whole batch; one fused multiply-add = 1
    macs_counter: str | None = None
    uncounted_ops: str | None = None  # JSON {op: count}
    latency_ms_median: float | None = None
    latency_ms_iqr: float | None = None
    latency_runs: int | None = None
    latency_noisy: bool | None = None  # IQR above 10 % of the median, too few runs, or a busy machine
    latency_noise_reason: str | None = None  # why latency_noisy, in words
    other_load_cores: float | None = None  # other processes' CPU use during the timed runs (CPU cases), in cores
    throughput_per_s: float | None = None
    peak_mem_bytes: int | None = None
    peak_mem_reserved_bytes: int | None = None
    peak_mem_method: str | None = None
    predicted_mem_bytes: int | None = None
    device_peak_gflops: float | None = None  # matmul rate of the device in this dtype (2 FLOPs per MAC)
    compile_s: float | None = None  # torch.compile's time (the first call), never part of the latency
    wall_s: float | None = None  # the case's whole time, process start to result

    def __post_init__(self) -> None:
        if isinstance(self.uncounted_ops, Mapping):  # stored as JSON text
            object.__setattr__(self, "uncounted_ops", json.dumps(dict(self.uncounted_ops), sort_keys=True))


@dataclass(frozen=True)
class Environment:
    """Where and with what a number was measured."""

    host: str | None = None
    device_name: str | None = None
    cpu_model: str | None = None
    gpu_name: str | None = None
    cpu_count: int | None = None
    torch_version: str | None = None
    cuda_version: str | None = None
    python_version: str | None = None
    attnbench_version: str | None = None
    git_commit: str | None = None
    code_hash: str | None = None  # hash of the package's source (attnbench.env.code_hash)
    created_utc: str | None = None

    @property
    def key(self) -> str:
        """What makes two measurements comparable: same machine, software and code."""
        return "|".join(str(getattr(self, k)) for k in
                        ("host", "device_name", "torch_version", "attnbench_version", "code_hash"))


@dataclass(frozen=True)
class Record:
    """One measured case: one row of the store's ``results`` table."""

    case: Case
    measurement: Measurement
    environment: Environment
    run_id: str

    PARTS: typing.ClassVar = (Case, Measurement, Environment)

    @property
    def key(self) -> tuple[str, str]:
        """(case_key, env_key): one row per case and environment."""
        return self.case.key, self.environment.key

    def row(self) -> dict[str, object]:
        """The flat row the store keeps, keys first."""
        return {"case_key": self.case.key, "env_key": self.environment.key, "run_id": self.run_id,
                **asdict(self.case), **asdict(self.measurement), **asdict(self.environment)}

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Record:
        """The record of a flat row (keys recomputed; fields it lacks take their defaults)."""
        unknown = set(row) - {name for name, _ in RESULT_COLUMNS}
        if unknown:
            raise TypeError(f"not fields of a record: {', '.join(sorted(unknown))}")
        case, measurement, env = (part(**{f.name: row[f.name] for f in fields(part) if f.name in row})
                                  for part in cls.PARTS)
        return cls(case, measurement, env, str(row.get("run_id", "")))


@dataclass(frozen=True, kw_only=True)
class Run:
    """What identifies a training run: its id and its setup, the same columns in the store's ``training`` and
    ``evaluations`` tables (one row per epoch of a run, one per side it was evaluated at)."""

    run_id: str
    model: str
    dataset: str
    epochs: int | None = None  # the run's epochs (its budget, or the steps' worth)
    variant: str | None = None  # the variant in the network's attention slot ("" for a network from elsewhere)
    params: int | None = None
    image_size: int | None = None  # the side of the images the network was trained on (pixels)
    batch: int | None = None
    lr: float | None = None
    lr_source: str | None = None  # how lr was chosen: given, or "validation: ..." (train --lr auto)
    width: float | None = None
    width_source: str | None = None  # how width was chosen: given, or matched to a network (train --match)
    stem: str | None = None
    dtype: str | None = None
    device: str | None = None
    world_size: int | None = None
    seed: int | None = None
    steps: int | None = None  # the step budget asked for (None: epochs x steps per epoch)
    plateau: int | None = None  # the plateau rule's patience in epochs (None: off)
    options: str = ""  # the variant's options set for the run, "key=value,..." ("" for its defaults)
    environment: Environment = field(default_factory=Environment)

    def row(self) -> dict[str, object]:
        env = {k: getattr(self.environment, k) for k in EPOCH_ENVIRONMENT}
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "environment"}, **env}


@dataclass(frozen=True, kw_only=True)
class Epoch(Run):
    """One epoch of a training run: one row of the store's ``training`` table."""

    epoch: int
    epochs: int
    step: int | None = None  # optimizer steps done by the end of this epoch
    train_loss: float | None = None
    train_top1_pct: float | None = None  # on the epoch's (augmented) training batches, as they were trained
    test_loss: float | None = None
    top1_pct: float | None = None  # test
    top5_pct: float | None = None  # test; None with five classes or fewer
    stopped: str | None = None  # "plateau" or "budget" on the last epoch of a run that finished, "diverged" where its
    # training loss went non-finite (not a finished run)
    images_per_s: float | None = None
    epoch_s: float | None = None
    macs_per_image: int | None = None  # one image of image_size, one fused multiply-add = 1


@dataclass(frozen=True, kw_only=True)
class Evaluation(Run):
    """A trained network evaluated at one side: one row of the store's ``evaluations`` table. ``image_size`` is
    the side it was trained at, ``side`` the side of the images it was tested on."""

    side: int  # pixels
    tables: str = "trained"  # "trained": the network as trained; "interpolated": its position tables (and
    # Swin's window) resized to the side, as fine-tuning at another resolution does
    status: str = Status.OK  # ok | refused (the network cannot run at this side; reason says why) | error
    reason: str | None = None
    epoch: int | None = None  # of the checkpoint evaluated
    step: int | None = None
    test_loss: float | None = None
    top1_pct: float | None = None  # test split at this side
    top5_pct: float | None = None  # None with five classes or fewer
    train_top1_pct: float | None = None  # training images at this side, in eval mode (None where not cheap)
    train_images: int | None = None  # how many of them
    test_images: int | None = None
    num_classes: int | None = None  # chance is 100 / num_classes %
    macs_per_image: int | None = None  # one image of this side, one fused multiply-add = 1


EPOCH_ENVIRONMENT = ("host", "device_name", "torch_version", "attnbench_version", "git_commit", "code_hash",
                     "created_utc")


def _sql(cls: type) -> list[tuple[str, str]]:
    """(column, SQL type) of a record class's fields: nullable where the field may be None."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind = hints[f.name]
        args = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        base = next(a for a in args if a is not type(None))
        if base not in SQL_TYPES:  # a nested record, spelled out by the caller
            continue
        out.append((f.name, SQL_TYPES[base] + ("" if type(None) in args else " NOT NULL")))
    return out


KEY_COLUMNS = [("case_key", "TEXT NOT NULL"), ("env_key", "TEXT NOT NULL"), ("run_id", "TEXT NOT NULL")]
RESULT_COLUMNS: list[tuple[str, str]] = KEY_COLUMNS + [c for part in Record.PARTS for c in _sql(part)]
EPOCH_COLUMNS: list[tuple[str, str]] = _sql(Epoch) + [c for c in _sql(Environment) if c[0] in EPOCH_ENVIRONMENT]
EVALUATION_COLUMNS: list[tuple[str, str]] = (_sql(Evaluation)
                                             + [c for c in _sql(Environment) if c[0] in EPOCH_ENVIRONMENT])
