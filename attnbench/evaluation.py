"""Test-time resolution: a trained network evaluated at the side it was trained at and at others.

A checkpoint of ``attnbench train`` is evaluated on its data set made at each side asked for
(:func:`attnbench.data.load_at_side`: resized, upsampled or generated at that side, normalised as in
training), once with the network as trained (``tables`` "trained") and, where the network has
position tables sized to its training map or a window sized to its images, once more with those
interpolated to the side (``tables`` "interpolated", as fine-tuning at another resolution does:
:func:`network_at`). Each variant's docstring says what it does at another side. A side that a
network cannot run at (its tables do not reach it) is stored as a row with the reason, never an
error that loses the other sides; every row goes to the store's ``evaluations`` table, which the
accuracy table (training epochs only) never reads.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attnbench import store
from attnbench.choices import Status, count
from attnbench.data import Dataset, check_side, load_at_side
from attnbench.env import environment
from attnbench.measure.params import count_params
from attnbench.record import Evaluation, parse_options
from attnbench.registry import Variant, get_variant_spec
from attnbench.train import (
    TrainError,
    build,
    checkpoint_config,
    error_line,
    evaluate,
    image_side,
    load_checkpoint,
    load_weights,
    loss_text,
    run_setup,
    same_classes,
    usable_device,
)

TABLES = ("trained", "interpolated")
TRAIN_EVAL_IMAGES = 2000  # training images evaluated at each side (data sets held in memory): train-split top-1


def resize_offsets(table: torch.Tensor, entries: int) -> torch.Tensor:
    """A relative table ``(2r + 1, d)`` (row ``o + r`` embeds the offset ``o``) resized to ``entries`` rows, linearly
    over the offsets (half-pixel centres, as ViTDet and Segment Anything resize their decomposed relative
    tables for another input size): offset 0 stays the centre row, the extreme offsets the end rows."""
    return F.interpolate(table.t()[None], size=entries, mode="linear", align_corners=False)[0].t().contiguous()


def resize_bias(table: torch.Tensor, entries: int) -> torch.Tensor:
    """A relative position bias ``(heads, 2M - 1, 2M - 1)`` resized to ``(heads, entries, entries)``, bicubically,
    as Swin's ``load_pretrained`` resizes its table for a larger window."""
    return F.interpolate(table[None], size=(entries, entries), mode="bicubic", align_corners=False)[0]


def resized_state(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` (weights of the same network built for another side) with the position tables of ``model``'s
    variant layers (their ``offset_tables`` and ``bias_tables``) resized to ``model``'s shapes, and the names of
    those resized."""
    own, state, done = model.state_dict(), dict(state), []
    for prefix, layer in model.named_modules():
        if not isinstance(layer, Variant):
            continue
        for name in layer.offset_tables + layer.bias_tables:
            key = f"{prefix}.{name}" if prefix else name
            if key in state and state[key].shape != own[key].shape:
                resize = resize_offsets if name in layer.offset_tables else resize_bias
                state[key] = resize(state[key], own[key].shape[-1 if resize is resize_bias else 0])
                done.append(key)
    return state, done


def network_at(ckpt: dict, path: str | Path, side: int, tables: str) -> nn.Module | None:
    """The network of checkpoint ``ckpt`` (read from ``path``) to evaluate at ``side``, in eval mode: as trained, or
    with its tables interpolated: built for ``side`` (its variant's options for it, as
    :meth:`attnbench.registry.Variant.options_at` scales them) and its tables resized (:func:`resized_state`).
    None for "interpolated" where that changes nothing (no table sized to the map, no window sized to the
    image, or the side trained at). ``TrainError`` when the network cannot be built or the weights do not fit."""
    from attnbench.models import build_model, get_model_spec

    cfg = checkpoint_config(ckpt, path)
    try:
        if tables == "trained":
            model = build(cfg, ckpt["num_classes"])
        else:
            options, variant = parse_options(cfg.options), get_model_spec(cfg.model).variant
            if not variant:  # a network from elsewhere: no tables attnbench knows to resize
                return None
            scaled = get_variant_spec(variant).cls.options_at(options, side / image_side(cfg))
            model = build_model(cfg.model, num_classes=ckpt["num_classes"], stem=cfg.stem, width=cfg.width,
                                image_size=side, **scaled)
    except (ValueError, TypeError, KeyError) as e:
        raise TrainError(f"Checkpoint {path}'s network cannot be built: {e.args[0] if e.args else e}") from None
    except (RuntimeError, MemoryError) as e:  # its head (num_classes) or its width too large to allocate
        raise TrainError(f"Checkpoint {path}'s network cannot be built: {error_line(e)}") from None
    if tables == "trained":
        load_weights(ckpt, path, model)
        return model.eval()
    state, done = resized_state(model, ckpt["model"])
    if not done and scaled == options:
        return None
    load_weights({**ckpt, "model": state}, path, model)
    return model.eval()


def evaluate_at_sides(path: str | Path, dataset: str, sides: Sequence[int] | None = None, *,
                      data_dir: str | None = None, db: str | Path | None = None, device: str = "cpu",
                      batch: int = 256, skip_stored: bool = False, model: str | None = None,
                      on_row: Callable[[Evaluation], None] | None = None) -> list[Evaluation]:
    """Evaluate the checkpoint at ``path`` on ``dataset`` (the one it was trained on) at each of ``sides`` (default:
    the side trained at), as trained and, where that differs, with its tables interpolated: top-1 and top-5 on
    the test split, top-1 on up to ``TRAIN_EVAL_IMAGES`` training images where the data set is held in memory.
    Each row is stored in ``db`` (replacing an earlier evaluation of the run at that side; with
    ``skip_stored``, sides the store already holds for the run are not evaluated again) and passed to
    ``on_row`` as it is made. ``model``: the network the user names, to build one from a module of theirs
    (:func:`load_checkpoint`). ``TrainError`` or ``DataError`` for bad input, before anything is evaluated."""
    from attnbench.models import get_model_spec

    device = usable_device(device)
    if db is not None:  # a store it could not write, before SQLite opens it (which left -wal and -shm beside it);
        store.refuse_read_only(db)  # the store is made once the checkpoint and the sides have been checked
    ckpt = load_checkpoint(path, model=model)
    cfg = checkpoint_config(ckpt, path)
    if model is not None and model != cfg.model:  # it would build nothing: a name given in vain is a mistake
        raise TrainError(f"{path} holds the network {cfg.model}, not {model}: --model names the checkpoint's own "
                         "network, where it is one of yours (module:callable).")
    if dataset != cfg.dataset:
        raise TrainError(f"Checkpoint {path} was trained on {cfg.dataset}, not {dataset}.")
    cfg = replace(cfg, data_dir=data_dir or cfg.data_dir)
    last = ckpt["history"][-1] if ckpt["history"] else {}
    if not store.reached_end(last.get("stopped"), ckpt["epoch"], _run_of(ckpt).get("epochs", cfg.epochs)):
        warnings.warn(f"{path} is its run's checkpoint at epoch {ckpt['epoch']}, before the run's end: these are "
                      "evaluations of the network midway (the report prefers, per seed, a finished run's)",
                      stacklevel=2)
    sides = list(dict.fromkeys(sides or [image_side(cfg)]))
    for side in sides:
        check_side(dataset, side)
    stored = set()
    if skip_stored and db is not None and Path(db).exists():
        rows = store.load_evaluations(db)
        rows = rows[rows.run_id == ckpt["run_id"]]
        stored = set(zip(rows.side, rows.tables))
    trained = network_at(ckpt, path, image_side(cfg), "trained")  # before any data set is loaded
    run = {"run_id": ckpt["run_id"], **run_setup(cfg), **_run_of(ckpt), "epoch": ckpt["epoch"],
           "variant": get_model_spec(cfg.model).variant,
           "num_classes": ckpt["num_classes"], "environment": environment(device)}
    classes = ckpt.get("classes") if isinstance(ckpt.get("classes"), list) else None  # an image folder's: val/ will do
    made = []
    with contextlib.ExitStack() as stack:  # the store is opened (and checked) once the checkpoint has been, and
        stack.enter_context(store.outputs_made(db))  # removed again where it holds nothing (a data set refused)
        writer = stack.enter_context(store.Writer(db)) if db is not None else None
        for side in sides:
            networks = [("trained", trained), ("interpolated", network_at(ckpt, path, side, "interpolated"))]
            todo = [(tables, net) for tables, net in networks if net is not None and (side, tables) not in stored]
            if not todo:
                continue
            try:
                train_set, test_set = load_at_side(dataset, side, cfg.data_dir, seed=cfg.seed, workers=cfg.workers,
                                                   classes=classes)
            except (RuntimeError, MemoryError) as e:  # its images do not fit in memory: the other sides go on
                failed = _failure(e, count_params(trained)["params"], f"{dataset} at side {side}: ")
                rows = [Evaluation(**run, side=side, tables=tables, **failed) for tables, _ in todo]
            else:
                same_classes(ckpt, path, test_set if train_set is None else train_set, cfg)
                seen = None  # training images evaluated: where the data set is held in memory
                if isinstance(train_set, Dataset):
                    seen = train_set.subset(torch.arange(min(TRAIN_EVAL_IMAGES, len(train_set.labels))), False)
                rows = (Evaluation(**run, side=side, tables=tables, test_images=len(test_set.labels),
                                   train_images=None if seen is None else len(seen.labels),
                                   **_measure(net.to(device), test_set, seen, side, batch, device, cfg.dtype))
                        for tables, net in todo)
            for row in rows:
                if writer is not None:
                    writer.write_evaluation(row)
                if on_row is not None:
                    on_row(row)
                made.append(row)
    return made


RUN_KEYS = {"epochs": int, "world_size": int, "lr_source": str, "width_source": str}  # what a checkpoint's "run" holds


def _run_of(ckpt: dict) -> dict:
    """What a checkpoint says of its run beyond its config (its epochs, processes, how its rate and width were
    chosen; checkpoints from before it say nothing), and the steps it had taken: values of those types only."""
    run = ckpt.get("run") if isinstance(ckpt.get("run"), dict) else {}
    last = ckpt["history"][-1] if isinstance(ckpt["history"], list) and ckpt["history"] else {}
    step = last.get("step") if isinstance(last, dict) else None
    return {**{k: v for k, v in run.items() if k in RUN_KEYS and isinstance(v, RUN_KEYS[k])},
            "step": step if isinstance(step, int) else None}


def _measure(net: nn.Module, test: Dataset, seen: Dataset | None, side: int, batch: int, device: str,
             dtype: str) -> dict:
    """What an evaluation row measures, or the status and reason why the network could not run at ``side``."""
    from attnbench.measure.macs import count_macs

    params = count_params(net)["params"]
    try:
        metrics = evaluate(net, test, batch=batch, device=device, dtype=dtype)
        train_top1 = None if seen is None else evaluate(net, seen, batch=batch, device=device, dtype=dtype)["top1_pct"]
        macs = count_macs(net, torch.randn(1, 3, side, side, device=device))
    except ValueError as e:  # the network refuses the side: its tables do not reach it
        return {"status": Status.REFUSED, "reason": str(e).splitlines()[0], "params": params}
    except (RuntimeError, MemoryError) as e:  # out of memory, or a failure of the side only: the others go on
        return _failure(e, params)
    return {**metrics, "train_top1_pct": train_top1, "macs_per_image": macs, "params": params}


def _failure(error: Exception, params: int, where: str = "") -> dict:
    """An evaluation row's fields for a side that failed with ``error``."""
    return {"status": Status.ERROR, "params": params,
            "reason": f"{where}{error_line(error)}"}


def describe(row: Evaluation) -> str:
    """One printed line per evaluation row."""
    what = (f"{row.dataset} at {row.side} x {row.side} (trained at {row.image_size})"
            + (", tables interpolated" if row.tables == "interpolated" else ""))
    if row.status != Status.OK:
        return f"{what}: {row.status}: {row.reason}"
    top5 = f", top-5 {row.top5_pct:.2f} %" if row.top5_pct is not None else ""
    seen = (f", train top-1 {row.train_top1_pct:.2f} % ({count(row.train_images, 'image')})"
            if row.train_top1_pct is not None else "")
    return f"{what}: test loss {loss_text(row.test_loss, 4)}, top-1 {row.top1_pct:.2f} %{top5}{seen}"


def say_verdict(rows: Sequence[Evaluation], db: str | Path | None) -> int:
    """A line saying how many evaluations ended how (and where they are stored); on standard error, one saying
    how many failed (out of memory, an error: not a side the network refuses, its documented behaviour).
    Returns the exit code: 1 where some failed."""
    ended = Counter(str(row.status) for row in rows)
    print(count(len(rows), "evaluation") + (f" ({', '.join(f'{n} {s}' for s, n in ended.items())})" if rows else "")
          + (f" stored in {db}" if db else ""))
    failed = sum(n for s, n in ended.items() if s not in (Status.OK, Status.REFUSED))
    if failed:
        rows_say = "its row above says" if failed == 1 else "their rows above say"
        print(f"attnbench eval: {count(failed, 'evaluation')} failed; {rows_say} why", file=sys.stderr)
    return 1 if failed else 0
