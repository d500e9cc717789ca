"""Training and evaluation of any registered network, with accuracy stored beside its cost.

SGD with momentum and a per-step cosine schedule, deterministic from the seed: each epoch's order
and augmentation come from a generator seeded with (seed, epoch), so a run resumed from its last
checkpoint continues exactly. Under ``torchrun`` the same command trains with
DistributedDataParallel (gloo on CPU, NCCL on GPU): every global batch is split evenly over the
ranks, gradients are averaged, and only rank 0 evaluates, writes checkpoints and stores results.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from attnbench import files, interrupt, store
from attnbench.choices import DATASETS, count
from attnbench.data import DEFAULT_IMAGEFOLDER_SIDE, IMAGE_SIDE, Dataset, load_dataset
from attnbench.env import environment, parse_device
from attnbench.imagefolder import ImageFolderSet
from attnbench.record import INTEGER_MAX, Epoch, parse_options

CHECKPOINT_FORMAT = "attnbench-checkpoint-1"
Splits = tuple[Dataset, Dataset] | tuple[ImageFolderSet, ImageFolderSet]  # (train, test), held or streamed
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class TrainError(Exception):
    """Bad training input (a checkpoint of another model, a corrupted file, ...), in one line."""


@dataclass(frozen=True)
class TrainConfig:
    model: str
    dataset: str
    data_dir: str | None = None
    epochs: int = 10
    batch: int = 128  # global batch, split over the ranks
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: float = 1.0  # channel multiplier
    stem: str = "cifar"  # conv (7x7 + max-pool) or cifar (3x3)
    dtype: str = "fp32"  # fp32, or bf16 autocast
    device: str = "cpu"
    seed: int = 0  # weights, data order, augmentation and the data split
    steps: int | None = None  # optimizer steps in all (the schedule spans them); None: epochs x steps per epoch
    plateau: int | None = None  # stop once the training loss has not improved by PLATEAU_GAIN in this many epochs
    options: str = ""  # the variant's options, "key=value,..." sorted as a sweep's cases spell them ("" for none)
    image_size: int | None = None  # side the network sees: imagefolder's crops (None: 224); 32 for the others
    workers: int = 0  # DataLoader processes decoding imagefolder's images (0: in the training process)

    def __post_init__(self) -> None:
        """Every field as a command line or a checkpoint may give it; TrainError names the first one wrong."""
        from attnbench.models import UnknownModelError, get_model_spec

        try:
            foreign = get_model_spec(self.model).foreign
        except UnknownModelError as e:
            raise TrainError(str(e)) from None

        def whole(value: object, least: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= least

        def finite(value: object) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

        at_least_1, at_least_0 = "a whole number of at least 1", "a whole number of at least 0"
        rules = (
            ("dataset", self.dataset in DATASETS, f"one of {', '.join(DATASETS)}"),
            ("data_dir", self.data_dir is None or isinstance(self.data_dir, str), "a folder"),
            ("epochs", whole(self.epochs, 1), at_least_1),
            ("batch", whole(self.batch, 1), at_least_1),
            # the optimizer multiplies float32 weights by them: a larger number cannot be converted (a traceback)
            ("lr", finite(self.lr) and 0 < self.lr <= FLOAT32_MAX, "above 0 and at most 3.4e38 (float32's largest)"),
            ("momentum", finite(self.momentum) and 0 <= self.momentum < 1, "at least 0 and below 1"),
            ("weight_decay", finite(self.weight_decay) and 0 <= self.weight_decay <= FLOAT32_MAX,
             "at least 0 and at most 3.4e38 (float32's largest)"),
            ("width", finite(self.width) and self.width > 0, "a finite number above 0"),
            ("stem", self.stem in (("",) if foreign else ("conv", "cifar")),
             "'' for a network from elsewhere" if foreign else "conv or cifar"),
            ("dtype", self.dtype in AUTOCAST, f"one of {', '.join(AUTOCAST)}"),
            ("device", device_type(self.device) in ("cpu", "cuda"), "cpu, cuda or cuda:N"),
            ("seed", whole(self.seed, 0) and self.seed < 2**32, "a whole number of at least 0, below 2^32"),
            ("steps", self.steps is None or whole(self.steps, 1), at_least_1),
            ("plateau", self.plateau is None or whole(self.plateau, 1), at_least_1),
            ("options", isinstance(self.options, str), "key=value,..."),
            ("image_size", self.image_size is None or whole(self.image_size, 1), at_least_1),
            ("image_size", self.image_size in (None, IMAGE_SIDE) or self.dataset == "imagefolder",
             f"{IMAGE_SIDE} for {self.dataset}, whose images are {IMAGE_SIDE} x {IMAGE_SIDE} (--image-size is for "
             "imagefolder)"),
            ("workers", whole(self.workers, 0), at_least_0),
        )
        for name, valid, rule in rules:
            if not valid:
                raise TrainError(f"Invalid {name}={getattr(self, name)!r}: {name} must be {rule}.")
        for f in fields(self):  # every whole number is stored with the run
            if isinstance(value := getattr(self, f.name), int) and value > INTEGER_MAX:
                raise TrainError(f"Invalid {f.name}={value}: more than a store holds (at most 2^63 - 1).")


def device_type(device: object) -> str | None:
    """``cpu``, ``cuda``, ... for a device name torch reads, else None."""
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError):
        return None


def usable_device(device: str) -> str:
    """``device`` if this machine has it; TrainError in one line otherwise."""
    try:
        return str(parse_device(device))
    except ValueError as e:
        raise TrainError(f"--device: {e}.") from None


PLATEAU_GAIN = 0.01  # a relative improvement of the training loss under 1 % is no improvement
MATH_FIELDS = ("model", "dataset", "epochs", "batch", "lr", "momentum", "weight_decay", "width", "stem", "seed",
               "steps", "options", "image_size")


def loss_text(value: float, decimals: int = 3) -> str:
    """A loss for a line of text: fixed decimals, or a mantissa and exponent from 10^4 on (a diverging run's
    losses reach 10^30 and beyond before they stop being finite)."""
    return f"{value:.{decimals}f}" if abs(value) < 1e4 else f"{value:.{decimals}g}"


def plateaued(losses: list[float], patience: int) -> bool:
    """Whether the last ``patience`` epochs' training losses all failed to improve on the best before them
    by more than ``PLATEAU_GAIN`` (relative)."""
    if len(losses) <= patience:
        return False
    best = min(losses[:-patience])
    return all(loss > best * (1 - PLATEAU_GAIN) for loss in losses[-patience:])


RUN_FIELDS = ("model", "dataset", "batch", "lr", "width", "stem", "dtype", "device", "seed", "steps", "plateau",
              "options")  # what a training or evaluation row (record.Run) takes from the run's config


def run_setup(cfg: TrainConfig) -> dict:
    """The run's setup as its stored rows carry it (:class:`attnbench.record.Run`'s fields from the config)."""
    return {**{k: getattr(cfg, k) for k in RUN_FIELDS}, "image_size": image_side(cfg)}


def image_side(cfg: TrainConfig) -> int:
    return cfg.image_size or (DEFAULT_IMAGEFOLDER_SIDE if cfg.dataset == "imagefolder" else IMAGE_SIDE)


def error_line(err: BaseException) -> str:
    """An exception of another's code in one line: its type and its message's first line."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def build(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The run's network, its weights drawn from the seed. A network from elsewhere (timm, a user's builder)
    takes the classes and the image side, and must map images of that side to logits: checked here on one
    image, so that a network whose input size does not suit the data set is refused before training."""
    from attnbench.models import build_model, get_model_spec
    from attnbench.models.registry import NotAModuleError

    torch.manual_seed(cfg.seed)
    spec = get_model_spec(cfg.model)
    side = image_side(cfg)
    if not spec.foreign:
        return build_model(cfg.model, num_classes=num_classes, stem=cfg.stem, width=cfg.width, image_size=side,
                           **parse_options(cfg.options))
    try:
        net = build_model(cfg.model, num_classes=num_classes, image_size=side)
    except NotAModuleError as err:
        raise TrainError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - whatever the foreign builder raises, said in one line
        raise TrainError(f"{cfg.model} could not be built for {side} x {side} images of {cfg.dataset}: "
                         f"{error_line(err)}") from None
    try:
        with torch.no_grad():
            shape = tuple(net.eval()(torch.zeros(1, 3, side, side)).shape)
    except Exception as err:  # noqa: BLE001 - whatever the foreign network raises, said in one line
        raise TrainError(f"{cfg.model} cannot take {side} x {side} images of {cfg.dataset}: "
                         f"{error_line(err)}") from None
    if shape != (1, num_classes):
        raise TrainError(f"{cfg.model} maps a {side} x {side} image to {shape}, not to the {num_classes} logits of "
                         f"{cfg.dataset}.")
    return net


def datasets(cfg: TrainConfig) -> Splits:
    """(train, test) of the run's data set, at its image side."""
    return load_dataset(cfg.dataset, cfg.data_dir, seed=cfg.seed, image_size=cfg.image_size, workers=cfg.workers)


def evaluate(model: nn.Module, data: Dataset | ImageFolderSet, *, batch: int = 256, device: str = "cpu",
             dtype: str = "fp32") -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) on a whole data set, in eval mode (top-5 only with more than
    five classes, None otherwise: it would be 100 % by construction)."""
    model.eval()
    loss = correct1 = correct5 = 0.0
    k = min(5, data.num_classes)
    with torch.no_grad(), torch.autocast(torch.device(device).type, AUTOCAST[dtype] or torch.float32,
                                         enabled=AUTOCAST[dtype] is not None):
        for x, y in data.eval_batches(batch):
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            top = logits.topk(k, dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(dim=1).sum().item()
    n = len(data.labels)
    return {"test_loss": loss / n, "top1_pct": 100 * correct1 / n,
            "top5_pct": 100 * correct5 / n if data.num_classes > 5 else None}


def _lr(cfg: TrainConfig, step: int, total: int) -> float:
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))


def _finite_on_every_rank(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every rank (all of them stop together when one diverges)."""
    finite = torch.isfinite(loss.detach()).float()
    if world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _save(path: Path, payload: dict) -> None:
    try:
        with files.atomic(path) as tmp:  # a run killed while saving keeps the previous checkpoint whole
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as err:  # on a full disk torch's writer says only "unexpected pos"
        why = err.strerror if isinstance(err, OSError) and err.strerror else "the write failed (is the disk full?)"
        raise TrainError(f"Cannot write the checkpoint {path}: {why}; the previous one, if any, is kept.") from None


CHECKPOINT_KEYS = ("format", "config", "epoch", "run_id", "num_classes", "model", "optimizer", "history")


def load_checkpoint(path: str | Path, *, model: str | None = None) -> dict:
    """A checkpoint written by :func:`train`, loaded as weights only: tensors and plain containers, never
    code (a pickle that would import or call anything is refused). Clear errors for missing,
    corrupted, unsafe or foreign files, and for fields of the wrong kind (stored as they are, they would
    make the store unreadable). A checkpoint names its network; one from a module of the user's
    (``module:callable``) is built only where ``model``, the network the user named, is that one: a name in a
    file calls no code."""
    if not str(path):
        raise TrainError("No checkpoint named (an empty path).")
    path = Path(path)
    try:
        folder, found = path.is_dir(), path.is_file()
    except OSError as e:  # a name the system refuses (too long)
        raise TrainError(f"No checkpoint at {str(path)[:80]}...: {e.strerror}.") from None
    if folder:
        inside = " (name the checkpoint.pt inside it)" if (path / "checkpoint.pt").is_file() else ""
        raise TrainError(f"{path} is a folder, not a checkpoint{inside}.")
    if not found:
        raise TrainError(f"No checkpoint at {path}.")
    _check_archive(path)
    try:  # the tensors stay in the file (mapped, read as they are used) until they are checked and copied
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise TrainError(f"{path} holds more than weights (loading it would run code); refused.") from None
        raise TrainError(f"{path} is not a readable checkpoint (UnpicklingError).") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise TrainError(f"{path} is not a readable checkpoint ({type(err).__name__}).") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not an attnbench checkpoint.")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise TrainError(f"{path} is an incomplete attnbench checkpoint (no {', '.join(missing)}).")
    found = {**{k: ckpt[k] for k in CHECKPOINT_KINDS},
             "network": ckpt["config"].get("model") if isinstance(ckpt["config"], dict) else None}
    for key, value in found.items():
        kind = CHECKPOINT_KINDS.get(key, str)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TrainError(f"{path} is not a valid attnbench checkpoint: its {key} is {type(value).__name__} "
                             f"{str(value)[:40]!r}, not {kind.__name__}.")
    why = _out_of_range(ckpt)
    if why:
        raise TrainError(f"{path} is not a valid attnbench checkpoint: {why}.")
    _refuse_foreign_code(path, found["network"], model)
    return ckpt


# the fields stored or used as they are, and what each must be (and the config's model, "network", a name)
CHECKPOINT_KINDS = {"config": dict, "epoch": int, "run_id": str, "num_classes": int, "model": dict,
                    "optimizer": dict, "history": list}


# a run's name: what train makes (network-dataset-sSEED-hex) and more, but one line of printable characters
RUN_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,300}")
ONE_LINE = re.compile(r"[^\x00-\x1f\x7f]{0,1000}")  # a text field: one line, no control characters


# an epoch of a checkpoint's history: what each field must be where it is given (None: not measured)
HISTORY_KINDS = {"epoch": int, "step": int, "train_loss": float, "train_top1_pct": float, "images_per_s": float,
                 "epoch_s": float, "test_loss": float, "top1_pct": float, "top5_pct": float, "stopped": str}


def _plain(value: object, kind: type | tuple = (bool, int, float, str)) -> bool:
    """Whether ``value`` can be stored and printed as it is: None, or of ``kind`` (a float may be given as an
    int; a bool is no number), a whole number a store holds, a string of one line."""
    if value is None:
        return True
    if not isinstance(value, (int, float) if kind is float else kind) or (
            isinstance(value, bool) and kind in (int, float)):
        return False
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= INTEGER_MAX
    return not isinstance(value, str) or bool(ONE_LINE.fullmatch(value))


def _out_of_range(ckpt: dict) -> str | None:
    """What is wrong with a checkpoint's fields of the right kind, or None: its epoch is one of its history's
    epochs (each a dict of plain values), its classes a count a head can have, its run's name one printable
    line, what it says of its run (epochs, processes, how its rate and width were chosen) plain values."""
    history, run = ckpt["history"], ckpt.get("run", {})
    if not all(isinstance(entry, dict) and all(_plain(entry.get(k), kind) for k, kind in HISTORY_KINDS.items())
               for entry in history):
        return "its history holds entries that are not epochs"
    if not isinstance(run, dict) or not all(_plain(value) for value in run.values()):
        return "what it says of its run is not plain values (whole numbers a store holds, lines of text)"
    for key in ("epochs", "world_size"):
        if run.get(key) is not None and not (_plain(run[key], int) and run[key] >= 1):
            return f"its run's {key} is {str(run[key])[:40]}, not a count"
    if not 1 <= ckpt["epoch"] <= len(history):
        return f"its epoch is {str(ckpt['epoch'])[:40]}, where its history holds {len(history)} epochs"
    if not 1 <= ckpt["num_classes"] <= 2**31:  # (ImageNet-21k has 21,843)
        return f"its num_classes is {str(ckpt['num_classes'])[:40]}"
    if not RUN_ID.fullmatch(ckpt["run_id"]):
        return f"its run_id {ckpt['run_id'][:40]!r} is not one line of 1 to 300 printable characters"
    return None


def _refuse_foreign_code(path: Path, network: str, named: str | None) -> None:
    """TrainError where the checkpoint's ``network`` is a builder of a module (``module:callable``) that the user
    did not name (``named``): building it would call, and import, whatever the file names (``os:abort`` is
    imported already)."""
    module, sep, _ = network.partition(":")
    if sep and module != "timm" and network != named:
        raise TrainError(f"{path} holds the network {network}, built by code of yours: a checkpoint calls no code "
                         f"it names; give --model {network} to build it.")


def _check_archive(path: Path) -> None:
    """A checkpoint is torch.save's zip archive, whose records are stored as they are. A record that is
    compressed, or claims more bytes than the file holds, would be inflated in memory before anything in it
    could be checked (a 1 MB file can hold a GiB of zeros): it is refused unread."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            size = path.stat().st_size
            for record in records:
                if (record.compress_type != zipfile.ZIP_STORED or record.compress_size != record.file_size
                        or record.header_offset + record.file_size > size):
                    raise TrainError(f"{path} holds a record ({record.filename}: {record.file_size:,} bytes) that is "
                                     "compressed or larger than the file; torch.save writes neither, so it is refused "
                                     "unread.")
            damaged = archive.testzip()  # every record against the checksum torch.save wrote: torch.load checks none
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise TrainError(f"{path} is not a readable checkpoint (not a torch.save archive).") from None
    if damaged is not None:
        raise TrainError(f"{path} is damaged: its record {damaged} does not match the checksum it was saved with "
                         "(a broken copy or disk); refused.")


def _fits(ckpt: dict, path: str | Path, states: list[tuple[str, object, torch.Tensor]]) -> None:
    """TrainError naming the first of ``states`` (what, the checkpoint's tensor, the network's tensor for it) that
    is not a plain tensor (dense, in memory: not sparse, nor meta) of the network's shape and dtype: checked
    before any is read (integer weights were cast and evaluated, a meta tensor failed midway)."""
    for what, tensor, want in states:
        if not isinstance(tensor, torch.Tensor) or tensor.shape != want.shape:
            got = f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TrainError(f"Checkpoint {path} does not fit network {ckpt['config'].get('model')}: its {what} "
                             f"is {got}, the network's {tuple(want.shape)}.")
        if tensor.layout != torch.strided or tensor.device.type != "cpu" or tensor.dtype != want.dtype:
            kind = (f"{str(tensor.layout).removeprefix('torch.')} {str(tensor.dtype).removeprefix('torch.')} "
                    f"on {tensor.device.type}")
            raise TrainError(f"Checkpoint {path}'s {what} is a {kind} tensor, where training writes dense "
                             f"{str(want.dtype).removeprefix('torch.')} ones in memory: a damaged file; refused.")


def load_weights(ckpt: dict, path: str | Path, model: nn.Module) -> None:
    """The checkpoint's weights into ``model``, every tensor's shape checked against the network's first."""
    weights, params = ckpt["model"], model.state_dict()
    if not isinstance(weights, dict) or set(weights) != set(params):
        lacks = sorted(set(params) - set(weights)) if isinstance(weights, dict) else ["all"]
        extra = sorted(map(str, set(weights) - set(params))) if isinstance(weights, dict) else []
        said = ([f"{count(len(lacks), 'weight')} of the network missing ({lacks[0][:80]}, ...)"] if lacks else []) + (
            [f"{count(len(extra), 'weight')} it does not have ({extra[0][:80]}, ...)"] if extra else [])
        raise TrainError(f"Checkpoint {path} does not fit network {ckpt['config'].get('model')}: "
                         f"{'; '.join(said)}.")
    _fits(ckpt, path, [(f"weight {name}", weights[name], want) for name, want in params.items()])
    for name, tensor in weights.items():  # training never keeps a checkpoint whose weights are not finite
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TrainError(f"Checkpoint {path}'s weight {name} is not finite (nan or inf): a damaged file, which "
                             "training never writes; refused.")
        if name.endswith("running_var") and (tensor < 0).any():  # a variance: its square root normalises
            raise TrainError(f"Checkpoint {path}'s {name} is negative somewhere: a damaged file; refused.")
    model.load_state_dict(weights)


# what an SGD group holds that its steps depend on, besides the rate (which the schedule sets at every step)
OPTIMIZER_MATH = ("momentum", "dampening", "weight_decay", "nesterov", "maximize")


def load_optimizer(ckpt: dict, path: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """The checkpoint's optimizer state into ``optimizer`` (built from the run's config), every tensor checked
    against its parameter first, and every group's momentum, weight decay, ... against the config's: a group
    edited to momentum 5 trained on to a loss of 1e10 and was stored as a finished run."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    built = [{k: group[k] for k in OPTIMIZER_MATH if k in group} for group in optimizer.param_groups]
    ids = [group["params"] for group in optimizer.state_dict()["param_groups"]]  # each parameter's number
    try:  # torch gives each state to the parameter at its place in its group's ids: those must be the network's
        saved = ckpt["optimizer"]
        if [group["params"] for group in saved["param_groups"]] != ids or not set(saved["state"]) <= set(sum(ids, [])):
            raise ValueError("its parameters are numbered otherwise")
        states = [(f"optimizer state {i}", value, params[i])
                  for i, state in saved["state"].items() for value in state.values() if value is not None]
        _fits(ckpt, path, states)
        optimizer.load_state_dict(saved)
    except (TypeError, KeyError, AttributeError, ValueError, IndexError):
        raise TrainError(f"Checkpoint {path} holds the optimizer state of another network.") from None
    if not all(torch.isfinite(tensor).all() for _, tensor, _ in states if tensor.is_floating_point()):
        raise TrainError(f"Checkpoint {path}'s optimizer state is not finite (nan or inf): a damaged file; refused.")
    for group, want in zip(optimizer.param_groups, built):
        for key, value in want.items():
            if group.get(key) != value:
                raise TrainError(f"Checkpoint {path}'s optimizer has {key} {str(group.get(key))[:40]}, where its "
                                 f"config trains with {value}: a damaged file; refused.")


_WARNED: set[str] = set()


def checkpoint_config(ckpt: dict, path: str | Path) -> TrainConfig:
    """The configuration a checkpoint was trained with. Keys this attnbench does not know (a newer one
    wrote them) are left out with a warning; a value it would not accept is a TrainError."""
    saved = ckpt["config"]
    if not isinstance(saved, dict):
        raise TrainError(f"{path} has no readable configuration.")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(map(str, set(saved) - known))
    said = f"{path} was written with options this attnbench does not know, ignored: {', '.join(unknown)}"
    if unknown and said not in _WARNED:  # once, however often the checkpoint's configuration is read
        _WARNED.add(said)
        warnings.warn(said, stacklevel=2)
    try:
        return TrainConfig(**{k: v for k, v in saved.items() if k in known})
    except TypeError as e:  # a field without a default is missing
        raise TrainError(f"{path} has an incomplete configuration ({e}).") from None
    except TrainError as e:
        raise TrainError(f"{path} has a configuration this attnbench cannot use: {e}") from None


def _distributed(device: str) -> tuple[int, int]:
    """(rank, world size), initialising the process group (NCCL for GPUs, gloo for CPUs) under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


# --match: within 10 % of the reference network's parameters or MACs (one channel more or less moves a window or
# neighbourhood probe's parameters by 7 %: its heads, and with them its bias tables, change with the width)
MATCH_TOLERANCE = 0.1
WIDTHS = tuple(i / 16 for i in range(8, 129))  # the width multipliers --match tries: 0.5 to 8, by 1/16


def network_cost(model: str, metric: str, *, width: float, num_classes: int, stem: str = "cifar",
                 options: str = "") -> int:
    """Parameters, or MACs per 32 x 32 image, of ``model`` at ``width`` with its variant's ``options``."""
    from attnbench.measure.macs import count_macs
    from attnbench.measure.params import count_params
    from attnbench.models import build_model

    net = build_model(model, num_classes=num_classes, stem=stem, width=width, image_size=32, **parse_options(options))
    return count_params(net)["params"] if metric == "params" else count_macs(net, torch.randn(1, 3, 32, 32))


def match_width(model: str, reference: str, metric: str, *, num_classes: int, reference_width: float = 1.0,
                stem: str = "cifar", options: str = "") -> tuple[float, int, int]:
    """The width multiplier at which ``model`` (with its variant's ``options``) costs what ``reference`` (at
    ``reference_width``, with its defaults) costs, in parameters or MACs: the closest of ``WIDTHS`` that
    builds, if within ``MATCH_TOLERANCE``. Returns (width, the model's cost, the reference's); TrainError
    when no width builds, or none comes that close."""
    target = network_cost(reference, metric, width=reference_width, num_classes=num_classes, stem=stem)
    best: tuple[float, float, int] | None = None  # (relative gap, width, cost)
    refused = None  # the first refusal, said when no width builds
    for width in WIDTHS:
        try:
            cost = network_cost(model, metric, width=width, num_classes=num_classes, stem=stem, options=options)
        except ValueError as e:  # a width the variant's options do not allow (heads, even head widths)
            refused = refused or e
            continue
        gap = abs(cost - target) / target
        if best is None or gap < best[0]:
            best = (gap, width, cost)
        if cost > target * (1 + MATCH_TOLERANCE):  # costs grow with the width: nothing closer beyond
            break
    if best is None:  # its options suit no width
        raise TrainError(f"{model} builds at none of the widths --match tries, {WIDTHS[0]:g} to {WIDTHS[-1]:g}: "
                         f"{refused}")
    if best[0] > MATCH_TOLERANCE:
        raise TrainError(f"No width of {model} matches {reference}'s {metric} ({target:,}) within "
                         f"{100 * MATCH_TOLERANCE:g} %; the closest is width {best[1]:g}, {100 * best[0]:.1f} % off.")
    return best[1], best[2], target


LR_CANDIDATES = (0.2, 0.1, 0.05, 0.02)  # what --lr auto tries first
LR_FACTOR = 2  # an edge of the grid that wins is extended by this factor ...
LR_LIMITS = (0.0025, 1.6)  # ... within these bounds (three steps past either edge)
VALIDATION_SHARE = 0.1  # of the training split, held out to choose the learning rate
TUNING_SHARE = 0.5  # of the run's steps, each candidate's budget
TIE_Z = 2.0  # held-out top-1 differences within this many standard errors are ties


def separated(a_pct: float, b_pct: float, n: int) -> bool:
    """Whether two top-1 accuracies (%) on the same ``n`` held-out images differ by more than ``TIE_Z`` standard
    errors of the difference of two proportions (pooled: sqrt(p (1 - p) 2 / n), p their mean)."""
    p = (a_pct + b_pct) / 200
    return abs(a_pct - b_pct) / 100 > TIE_Z * math.sqrt(p * (1 - p) * 2 / n)


def choose_lr(scores: dict[float, tuple[float, float]], n: int) -> float:
    """The rate ``--lr auto`` picks from held-out (top-1 %, loss) per rate on ``n`` images: the best top-1, where
    top-1 separates the rates; among those within noise of the best top-1 (not :func:`separated` from it), the
    lowest held-out loss (a diverged run's NaN loss is the worst), then the smaller rate."""
    best = max(top1 for top1, _ in scores.values())
    tied = [lr for lr, (top1, _) in scores.items() if not separated(best, top1, n)]
    return min(tied, key=lambda lr: (math.inf if math.isnan(scores[lr][1]) else scores[lr][1], lr))


def tune_lr(cfg: TrainConfig, out: str | Path, candidates: tuple[float, ...] = LR_CANDIDATES, *, keep: bool = False,
            say: Callable[[str], None] | None = None) -> tuple[float | None, str]:
    """The learning rate ``--lr auto`` picks, and how: each candidate trains for half the run's steps (its
    own cosine schedule) on the training split less a held-out tenth (drawn with the seed), and is scored on
    that tenth by :func:`choose_lr` (top-1 where it separates the rates, else the held-out loss). While the
    largest rate tried wins, the next one up (x ``LR_FACTOR``) is tried too, and likewise down, within
    ``LR_LIMITS``: the best rate is never an edge of the grid unless it is a limit. The test split is never
    seen. With ``keep``, a candidate whose run an earlier search left in ``out`` continues it (a finished one
    is read back, not trained again); else each is trained anew. ``say`` hears one line as each candidate
    ends (a search of a slow probe takes an hour and more). Returns (lr, a one-line account stored
    with the run, which names the seed whose split chose it: the other seeds of a setup train at the same
    rate); lr is None when every rate tried diverged (down to the lower limit: nothing is left to train at)."""
    train_set, _ = datasets(cfg)
    n = len(train_set.labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919))
    held = order[: int(n * VALIDATION_SHARE)]
    fit = order[int(n * VALIDATION_SHARE):]
    data = (train_set.subset(fit, train_set.augment), train_set.subset(held, False))
    run_steps = cfg.steps or cfg.epochs * (len(fit) // cfg.batch)
    budget = max(1, int(run_steps * TUNING_SHARE))
    scores: dict[float, tuple[float, float]] = {}
    diverged: set[float] = set()
    todo = list(candidates)
    while todo:
        for lr in todo:
            folder = Path(out) / f"lr-{lr:g}"
            earlier = folder / "checkpoint.pt" if keep and (folder / "checkpoint.pt").is_file() else None
            history = train(replace(cfg, lr=lr, steps=budget, plateau=None), out=folder, data=data, progress=False,
                            resume=earlier, overwrite=earlier is None)  # scratch runs: replaced unless continued
            last = history[-1]
            loss = last.get("test_loss")  # not finite: the last step left the weights so, after the loss was read
            if last.get("stopped") == "diverged" or loss is None or not math.isfinite(loss):
                diverged.add(lr)
            scores[lr] = (0.0, math.nan) if lr in diverged else (last["top1_pct"], loss)
            if say is not None:
                say(f"learning rate {lr:g} (candidate {len(scores)}, {count(budget, 'step')}): "
                    + ("diverged" if lr in diverged else
                       f"{scores[lr][0]:.1f} % top-1, loss {loss_text(scores[lr][1])} on the held-out images"))
        best = choose_lr(scores, len(held))
        up, down = best * LR_FACTOR, best / LR_FACTOR
        todo = ([up] if best == max(scores) and up <= LR_LIMITS[1] else
                [down] if best == min(scores) and down >= LR_LIMITS[0] else [])
    extended = [lr for lr in scores if lr not in candidates]  # in the order tried
    chosen = None if best in diverged else best
    account = (f"validation: {'none' if chosen is None else format(chosen, 'g')} of "
               + ", ".join(f"{lr:g} (diverged)" if lr in diverged else f"{lr:g} ({top1:.1f} %, loss {loss_text(loss)})"
                           for lr, (top1, loss) in sorted(scores.items(), reverse=True))
               + (f" (grid extended by {', '.join(f'{lr:g}' for lr in extended)})" if extended else "")
               + f"; each {count(budget, 'step')}, top-1 (ties within {TIE_Z:g} standard errors: lowest loss) on "
               f"{count(len(held), 'held-out training image')} of seed {cfg.seed}")
    return chosen, account


def refuse_earlier_run(out: str | Path, *, resume: str | Path | None = None, overwrite: bool = False) -> None:
    """TrainError if ``out`` holds the checkpoint of a run that a new one would replace, unless the new one
    resumes that very checkpoint or ``overwrite`` says to replace it."""
    existing = Path(out) / "checkpoint.pt"
    try:
        if overwrite or not existing.is_file():
            return
    except OSError:  # a name the system refuses holds no run: --out's own check says why
        return
    if resume is not None and Path(resume).exists() and os.path.samefile(resume, existing):
        return
    raise TrainError(f"{out} holds the checkpoint of an earlier run ({existing}); continue it with --resume "
                     f"{existing}, train into another --out, or replace it with --overwrite.")


@contextlib.contextmanager
def claimed(out: str | Path, *, resume: str | Path | None = None, overwrite: bool = False) -> Iterator[None]:
    """``out`` held for one run while the block runs (by rank 0, which alone writes there): another process
    training into it, or an earlier run's checkpoint there (:func:`refuse_earlier_run`), is a TrainError that
    says which. A process may claim again what it holds (a seed's folder, then its run)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    try:
        with files.hold(out, "attnbench train"):
            refuse_earlier_run(out, resume=resume, overwrite=overwrite)
            yield
    except files.Busy as e:
        raise TrainError(str(e)) from None


def train(cfg: TrainConfig, *, out: str | Path, resume: str | Path | None = None, overwrite: bool = False,
          **run) -> list[dict]:
    """Train ``cfg.model`` on ``cfg.dataset`` into the folder ``out``, which this process holds meanwhile; an
    earlier run's checkpoint there is continued (``resume`` naming it) or replaced (``overwrite``), else the
    run is refused (:func:`claimed`). ``run``: the options of :func:`_train`."""
    with claimed(out, resume=resume, overwrite=overwrite):
        return _train(cfg, out=out, resume=resume, **run)


def same_classes(ckpt: dict, path: str | Path, data: Dataset | ImageFolderSet, cfg: TrainConfig) -> None:
    """TrainError unless the data set of ``cfg`` (``data``) has the classes the checkpoint's network was trained on:
    as many, and the same names where both say them (an image folder's sub-folders)."""
    what = f"{cfg.dataset}{f' in {cfg.data_dir}' if cfg.data_dir else ''}"
    if data.num_classes != ckpt["num_classes"]:
        raise TrainError(f"Checkpoint {path}'s network has {ckpt['num_classes']} classes; {what} has "
                         f"{data.num_classes}.")
    names, theirs = ckpt.get("classes"), getattr(data, "classes", None)
    if isinstance(names, list) and theirs is not None and names != list(theirs):
        differ = [f"{a} / {b}" for a, b in zip(names, theirs) if a != b]
        raise TrainError(f"Checkpoint {path} was trained on other classes than {what}'s (trained / here: "
                         f"{', '.join(differ[:3])}).")


def _train(cfg: TrainConfig, *, out: str | Path, db: str | Path | None = None, resume: str | Path | None = None,
           stop_after_epoch: int | None = None, progress: bool = True, quiet: bool = False,
           lr_source: str | None = None, width_source: str | None = None, data: Splits | None = None) -> list[dict]:
    """Train ``cfg.model`` on ``cfg.dataset`` (or on ``data``: training and evaluation sets given, as
    :func:`tune_lr` does); returns the per-epoch metrics (rank 0; others get []). ``lr_source`` says how
    the learning rate was chosen and ``width_source`` how the width was; both are stored with every epoch.
    With ``progress`` (rank 0), a line per epoch and, within an epoch, a bar on a terminal or else a line
    every ``EVERY_STEPS`` steps or ``EVERY_S`` seconds (neither with ``quiet``)."""
    from tqdm import tqdm

    from attnbench.measure.macs import count_macs
    from attnbench.measure.params import count_params
    from attnbench.models import get_model_spec
    from attnbench.streams import Every

    usable_device(cfg.device)
    rank, world = _distributed(cfg.device)
    if cfg.batch % world:
        raise TrainError(f"Invalid batch={cfg.batch}: the global batch must be divisible by the {world} ranks.")
    device = cfg.device if cfg.device != "cuda" or world == 1 else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    ckpt, model = None, None
    if resume is not None:  # checked, and its weights loaded, before the data sets are
        ckpt = load_checkpoint(resume, model=cfg.model)
        saved = asdict(checkpoint_config(ckpt, resume))  # fields added since it was written: their defaults
        for name in MATH_FIELDS:
            if saved[name] != getattr(cfg, name):
                raise TrainError(f"Checkpoint {resume} is for {name}={saved[name]!r}, not {getattr(cfg, name)!r}; "
                                 "resume with the options it was trained with.")
        model = build(cfg, ckpt["num_classes"])
        load_weights(ckpt, resume, model)
    train_set, test_set = data or datasets(cfg)
    if model is None:
        model = build(cfg, train_set.num_classes)
    else:
        same_classes(ckpt, resume, train_set, cfg)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                nesterov=cfg.momentum > 0)  # momentum 0: plain SGD
    history: list[dict] = []
    start_epoch = 0
    out = Path(out)
    run_id = f"{cfg.model}-{cfg.dataset}-s{cfg.seed}-{uuid.uuid4().hex[:12]}"
    if ckpt is not None:
        load_optimizer(ckpt, resume, optimizer)
        start_epoch, history, run_id = ckpt["epoch"], ckpt["history"], ckpt["run_id"]
    if world > 1 and torch.device(device).type == "cuda":  # batch statistics over the global batch, as one process
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    params = count_params(model)["params"]
    side = image_side(cfg)
    macs = count_macs(model, torch.randn(1, 3, side, side, device=device))  # eval-mode trace; changes no state
    spec = get_model_spec(cfg.model)
    code = spec.modules()  # what the code hash of the stored epochs covers besides attnbench
    n = len(train_set.labels)
    steps = n // cfg.batch
    if steps == 0:
        raise TrainError(f"Invalid batch={cfg.batch}: larger than the {n} training images.")
    total = cfg.steps or steps * cfg.epochs
    epochs = -(-total // steps)
    local = cfg.batch // world
    autocast = AUTOCAST[cfg.dtype]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    last = epochs if stop_after_epoch is None else min(epochs, stop_after_epoch)
    for epoch in range(start_epoch, last):
        if history and history[-1].get("stopped") == "plateau":  # resumed from a run that had stopped
            break
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g)[: steps * cfg.batch].view(steps, cfg.batch)
        order = order[: min(steps, total - epoch * steps)]  # the step budget may end inside an epoch
        ddp.train()
        start, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        steady = rank != 0 or not progress or quiet
        bar = tqdm(range(len(order)), desc=f"epoch {epoch + 1}/{epochs}", disable=steady or None, leave=False)
        due = None if steady or not bar.disable else Every()  # not a terminal: lines instead of the bar
        batches = train_set.batches(order, g, slice(rank * local, (rank + 1) * local))  # as one process would
        for step, (x, y) in zip(bar, interrupt.checked(batches)):
            x, y = x.to(device), y.to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr(cfg, epoch * steps + step, total)
            with torch.autocast(torch.device(device).type, autocast or torch.float32, enabled=autocast is not None):
                logits = ddp(x).float()
                if logits.shape != (len(x), train_set.num_classes):
                    raise TrainError(f"{cfg.model}'s output has shape {tuple(logits.shape)}, not "
                                     f"({len(x)}, {train_set.num_classes}): one logit per image and class.")
                loss = F.cross_entropy(logits, y)
            if not _finite_on_every_rank(loss, world):  # diverged: no step is taken on it, and the run stops
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += cfg.batch
            loss_sum += loss.item()
            correct += (logits.argmax(dim=1) == y).sum().item()
            bar.set_postfix(loss=loss_text(loss.item()), refresh=False)
            if due is not None and due():
                print(f"epoch {epoch + 1}/{epochs}, step {step + 1}/{len(order)} (step {epoch * steps + step + 1}/"
                      f"{total}): loss {loss_text(loss.item(), 4)}, {seen / (time.perf_counter() - start):.0f} img/s",
                      flush=True)
        if world > 1:
            sums = torch.tensor([loss_sum, float(correct)], device=device)
            dist.all_reduce(sums)
            loss_sum, correct = sums[0].item() / world, int(sums[1].item())
        epoch_s = time.perf_counter() - start
        taken = seen // cfg.batch
        diverged = taken < len(order)
        done = epoch * steps + taken
        losses = [h["train_loss"] for h in history] + [math.nan if diverged else loss_sum / len(order)]
        stopped = ("diverged" if diverged else "plateau" if cfg.plateau and plateaued(losses, cfg.plateau)
                   else "budget" if done == total else None)
        if rank == 0:
            tested = ({"test_loss": None, "top1_pct": None, "top5_pct": None} if diverged else  # weights not finite
                      evaluate(model, test_set, device=device, dtype=cfg.dtype))
            metrics = {"epoch": epoch + 1, "step": done, "train_loss": losses[-1],
                       "train_top1_pct": 100 * correct / seen if seen else None, "images_per_s": seen / epoch_s,
                       "epoch_s": epoch_s, **tested, "stopped": stopped}
            history.append(metrics)
            run = {"epochs": epochs, "world_size": world, "lr_source": lr_source, "width_source": width_source}
            with interrupt.deferred():  # the epoch's checkpoint and its row are written both, or neither
                if not diverged:  # a diverged run's weights are not finite: its last checkpoint stays
                    _save(out / "checkpoint.pt", {
                        "format": CHECKPOINT_FORMAT, "config": asdict(cfg), "epoch": epoch + 1, "run_id": run_id,
                        "num_classes": train_set.num_classes, "classes": getattr(train_set, "classes", None),
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "history": history, "run": run,
                    })
                if db is not None:
                    store.write_training(db, Epoch(run_id=run_id, **run_setup(cfg), **run, **metrics, params=params,
                                                   variant=spec.variant, macs_per_image=macs,
                                                   environment=environment(device, code)))
            if progress and diverged:
                print(f"epoch {epoch + 1}/{epochs} (step {done}/{total}): the training loss is not finite: diverged, "
                      "stopped", flush=True)
            elif progress:
                top5 = f", top-5 {metrics['top5_pct']:.2f} %" if metrics["top5_pct"] is not None else ""
                print(f"epoch {epoch + 1}/{epochs} (step {done}/{total}): loss {loss_text(metrics['train_loss'], 4)}, "
                      f"train top-1 {metrics['train_top1_pct']:.2f} %, test top-1 {metrics['top1_pct']:.2f} %{top5}, "
                      f"{metrics['images_per_s']:.0f} img/s, {epoch_s:.1f} s"
                      + (f"; stopped: {stopped}" if stopped == "plateau" else ""), flush=True)
        if world > 1:
            dist.barrier()
        if stopped in ("plateau", "diverged"):
            break
    if world > 1:
        dist.destroy_process_group()
    return history if rank == 0 else []
