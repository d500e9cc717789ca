"""A training study: one setup trained with one seed or several, one after the other, as ``attnbench train``
runs it. Its policy lives here: every value checked before anything trains; the width matched to a
reference network's parameters or MACs (``match``); the seeds the store already holds to their end
skipped (``skip_finished``), an unfinished one continued from its last epoch (``continue_unfinished``: a
sitting stopped midway loses at most an epoch of each run, the rate search's included); with ``lr="auto"``,
the learning rate chosen once for the setup, on the first seed it trains (or taken from an earlier
sitting's finished run), and every seed trained at it; each seed's network evaluated at other sides
afterwards (``eval_res``).

Bad input is a ``TrainError`` (or ``DataError``, ``StoreError``, ``files.Unwritable``) whose message is one
line; what the study does is said through ``say`` (one line each) and ``warn``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from attnbench import files, interrupt, store
from attnbench.choices import Status, count
from attnbench.data import CLASSES, DataError, check_side
from attnbench.evaluation import describe, evaluate_at_sides
from attnbench.models import UnknownModelError, get_model_spec, list_archs
from attnbench.models.registry import family_name
from attnbench.record import parse_options
from attnbench.sweep import variant_options
from attnbench.train import (
    LR_CANDIDATES,
    TrainConfig,
    TrainError,
    claimed,
    image_side,
    load_checkpoint,
    match_width,
    refuse_earlier_run,
    train,
    tune_lr,
    usable_device,
)


@dataclass
class Study:
    """What ``attnbench train`` was asked (its options, by name)."""

    model: str
    dataset: str
    data_dir: str | None = None
    image_size: int | None = None
    workers: int = 0
    epochs: int = 10
    batch: int = 128
    lr: float | str = 0.1  # or "auto"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    width: float = 1.0
    stem: str | None = None
    dtype: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    seeds: list[int] | None = None
    steps: int | None = None
    plateau: int | None = None
    opt: list[str] = field(default_factory=list)
    match: str | None = None  # "params" or "macs"
    match_to: str | None = None
    skip_finished: bool = False
    out: str | None = None
    db: str | None = None
    resume: str | None = None
    continue_unfinished: bool = False  # each seed's (and rate search's) unfinished run continued where it stopped
    overwrite: bool = False
    stop_after_epoch: int | None = None
    eval_res: list[int] | None = None
    quiet: bool = False  # no progress within an epoch


def run_study(study: Study, *, say: Callable[[str], None] = print,
              warn: Callable[[str], None] = print) -> list[int]:
    """Train ``study``'s seeds; the seeds whose training diverged (stored as such, not as finished runs) or whose
    evaluation at a side of ``eval_res`` failed (as ``eval``'s: not a side the network refuses)."""
    if study.out is not None and not str(study.out).strip():
        raise TrainError("--out is empty: name a folder, or leave it out for runs/MODEL-DATASET-sSEED.")
    cfg, width_source = _config(study, say)
    seeds = study.seeds or [study.seed]
    outs = {seed: (f"{study.out}/s{seed}" if study.out and len(seeds) > 1 else study.out)
            or f"runs/{files.safe_name(study.model)}-{study.dataset}-s{seed}" for seed in seeds}
    resumes = {seed: Path(out, "checkpoint.pt") if study.continue_unfinished and Path(out, "checkpoint.pt").is_file()
               else study.resume for seed, out in outs.items()}
    # every checkpoint resumed, read (and a damaged one refused) once, before anything is made
    checkpoints = {r: load_checkpoint(r, model=study.model) for r in {r for r in resumes.values() if r is not None}}
    for side in study.eval_res or []:
        try:
            check_side(study.dataset, side)
        except DataError as e:
            raise DataError(f"--eval-res: {e}") from None
    auto = study.lr == "auto"
    finished = finished_seeds(study.db, cfg, auto) if study.skip_finished else {}
    for seed in set(seeds) - set(finished):  # every seed's folder before any seed trains
        refuse_earlier_run(outs[seed], resume=resumes[seed], overwrite=study.overwrite)
    with store.outputs_made(study.db, outs.values()):  # and removed again where nothing is written in them
        tuned = next(iter(finished.values()))[:2] if auto and finished else None
        evaluate_sides = partial(evaluate_at_sides, dataset=study.dataset, sides=study.eval_res,
                                 data_dir=study.data_dir, db=study.db, device=study.device, skip_stored=True,
                                 model=study.model, on_row=lambda row: say(describe(row)))
        failing: list[int] = []

        def evaluate(seed: int, checkpoint: Path) -> None:
            failed = sum(row.status not in (Status.OK, Status.REFUSED) for row in evaluate_sides(checkpoint))
            if failed:
                failing.append(seed)
                rows_say = "its row above says" if failed == 1 else "their rows above say"
                warn(f"seed {seed}: {count(failed, 'evaluation')} failed; {rows_say} why")

        diverged = []
        for seed, out in outs.items():
            checkpoint = Path(out, "checkpoint.pt")
            if seed in finished:
                say(f"seed {seed}: already trained to its end in {study.db}, skipped")
                if study.eval_res and int(os.environ.get("RANK", "0")) == 0:
                    ours = checkpoint.is_file() and load_checkpoint(checkpoint, model=study.model)["run_id"] == \
                        finished[seed][2]  # not another run trained into the folder since
                    if ours:
                        evaluate(seed, checkpoint)  # the sides not stored yet
                    elif set(study.eval_res) <= stored_sides(study.db, finished[seed][2]):
                        say(f"seed {seed}: evaluated at every --eval-res side in {study.db} already")
                    else:  # trained into another --out
                        failing.append(seed)
                        warn(f"seed {seed}: no checkpoint of its finished run in {out} to evaluate at --eval-res's "
                             "sides; name the --out it was trained into, or evaluate its checkpoint with attnbench "
                             "eval")
                continue
            resumed = checkpoints.get(resumes[seed])
            with interrupt.keeping(partial(_kept, seed, out, study.db, time.time())), \
                    claimed(out, resume=resumes[seed], overwrite=study.overwrite):  # the learning rate's search too
                run, source = replace(cfg, seed=seed), "given"
                if auto:
                    if tuned is None:
                        tuned = (searched_rate(resumed, resumes[seed]) if resumed is not None else
                                 tune_lr(run, Path(out) / "lr-search", keep=study.continue_unfinished,
                                         say=lambda line, seed=seed: say(f"seed {seed}: {line}")))
                    lr, source = tuned
                    if lr is None:
                        warn(f"seed {seed}: every learning rate tried diverged, nothing trained ({source})")
                        return [s for s in seeds if s not in finished]
                    run = replace(run, lr=lr)
                    say(f"seed {seed}: learning rate {source}")
                history = train(run, out=out, db=study.db, resume=resumes[seed], overwrite=study.overwrite,
                                stop_after_epoch=study.stop_after_epoch, quiet=study.quiet, lr_source=source,
                                width_source=width_source)
            if resumed is not None and len(history) == len(resumed["history"]):
                say(f"seed {seed}: {resumes[seed]} was trained to its end (epoch {resumed['epoch']}): nothing more to "
                    "train" + (", its --eval-res sides not stored yet evaluated" if study.eval_res else " or store"))
                if study.eval_res:
                    evaluate(seed, resumes[seed])  # the sides not stored yet
            elif history and history[-1]["stopped"] == "diverged":
                diverged.append(seed)
                warn(f"seed {seed}: diverged in epoch {history[-1]['epoch']} (the training loss is not finite), stored "
                     f"in {study.db} as such, not as a finished run")
            elif history:
                say(f"seed {seed}: checkpoint {out}/checkpoint.pt; metrics stored in {study.db}")
                if study.eval_res and history[-1]["stopped"] in store.FINISHED:
                    evaluate(seed, checkpoint)
                elif study.eval_res:  # a network midway is not the one the run makes: --continue evaluates that
                    say(f"seed {seed}: stopped before its end; --eval-res evaluates it once --continue ends it")
        return sorted(set(diverged + failing))


def searched_rate(ckpt: dict, path: str | Path) -> tuple[float, str]:
    """The rate a resumed run's ``--lr auto`` chose, and how, as its checkpoint keeps them: a resumed run trains
    on at it, never searching again (the search costs about as much as the run)."""
    source = ckpt.get("run", {}).get("lr_source") if isinstance(ckpt.get("run"), dict) else None
    if not isinstance(source, str) or not source.startswith("validation"):
        raise TrainError(f"Checkpoint {path} was trained at a given learning rate ({ckpt['config'].get('lr')}), not "
                         "one --lr auto chose; resume it with that --lr.")
    return float(ckpt["config"]["lr"]), source


def _config(study: Study, say: Callable[[str], None]) -> tuple[TrainConfig, str]:
    """The first seed's configuration, every value checked (the rate ``lr="auto"`` chooses replaces the first
    candidate), its width matched where asked, and how the width was chosen."""
    spec = None
    try:
        spec = get_model_spec(study.model)
        reference = study.match_to or conv_of(spec)
        if study.match:
            get_model_spec(reference)
    except UnknownModelError as e:
        raise TrainError(("--match-to: " if spec else "") + str(e)) from None
    if spec.foreign:
        ours = [name for name, given in (("--width", study.width != 1.0), ("--stem", study.stem is not None),
                                         ("--match", bool(study.match))) if given]
        if ours:
            raise TrainError(f"{ours[0]} applies to attnbench's networks; {spec.name} is trained as its builder "
                             "makes it.")
    stem = study.stem or ("" if spec.foreign else "cifar")
    seeds = study.seeds or [study.seed]
    if study.seeds and study.seed != 0:
        raise TrainError("give --seed or --seeds, not both.")
    if len(seeds) > 1 and study.resume:
        raise TrainError("--resume continues one run: give one seed (--continue continues each seed's).")
    if study.continue_unfinished and (study.resume or study.overwrite):
        other = "--resume" if study.resume else "--overwrite"
        raise TrainError(f"--continue continues the runs in --out; give it without {other}.")
    options = train_options(spec, study.opt)
    cfg = TrainConfig(model=study.model, dataset=study.dataset, data_dir=study.data_dir, epochs=study.epochs,
                      batch=study.batch, lr=LR_CANDIDATES[0] if study.lr == "auto" else study.lr,
                      momentum=study.momentum, weight_decay=study.weight_decay, width=study.width, stem=stem,
                      dtype=study.dtype, device=usable_device(study.device), seed=seeds[0], steps=study.steps,
                      plateau=study.plateau, options=options, image_size=study.image_size, workers=study.workers)
    if not spec.foreign:  # the network at its width with its options; with --match, the reference at --width
        checked, given = (get_model_spec(reference), "") if study.match else (spec, options)
        try:
            checked.check_options(image_side(cfg), parse_options(given), width=study.width, stem=stem)
        except ValueError as e:
            raise TrainError(str(e)) from None
    if not study.match:
        return cfg, "given"
    width, cost, target = match_width(study.model, reference, study.match, num_classes=CLASSES[study.dataset],
                                      reference_width=study.width, stem=stem, options=options)
    source = f"matched to {reference} at width {study.width:g} in {study.match}: {cost:,} against {target:,}"
    say(f"width {width:g}: {source}")
    return replace(cfg, width=width), source


def _kept(seed: int, out: str, db: str | None, since: float) -> str:
    """What an interrupted run of ``seed`` that started at ``since`` kept."""
    ckpt = Path(out) / "checkpoint.pt"
    if ckpt.exists() and ckpt.stat().st_mtime >= since:
        return f"seed {seed}'s finished epochs are in {ckpt}{f' and {db}' if db else ''}; continue with --resume {ckpt}"
    return f"no epoch of seed {seed} had finished"


def train_options(spec, opts: list[str]) -> str:
    """``--opt`` items as the run stores them (``key=value,...``, sorted), checked against the network's variant."""
    if not opts:
        return ""
    if not spec.variant:
        raise TrainError(f"--opt sets a variant's options; {spec.name} has no attnbench variant.")
    try:
        return variant_options([spec.variant], opts)[spec.variant]
    except ValueError as e:
        raise TrainError(str(e)) from None


def conv_of(spec) -> str:
    """The convolution network of the same family (conv_probe for gsa_probe, resnet26 for gsa_resnet26), or the
    network itself where it has no family."""
    return family_name("conv", spec.arch) if spec.arch in list_archs() else spec.name


def stored_sides(db: str, run_id: str) -> set[int]:
    """The sides the store ``db`` holds an evaluation of the run ``run_id`` at."""
    rows = store.load_evaluations(db)
    return set(rows[rows.run_id == run_id].side)


def finished_seeds(db: str | None, cfg: TrainConfig, auto: bool) -> dict[int, tuple[float, str, str]]:
    """The seeds of ``cfg``'s setup that the store holds a finished run of (``store.finished_runs``, as the
    accuracy table counts them), lowest first, each with its learning rate, how it was chosen and its run id;
    with ``auto``, runs whose rate was chosen on validation, whatever it was."""
    if db is None or not Path(db).exists():
        return {}
    same = store.finished_runs(store.load_training(db))
    same = same[same.image_size == image_side(cfg)]
    if cfg.steps is None:  # the budget is in epochs (with --steps, the epochs follow from the steps)
        same = same[same.epochs == cfg.epochs]
    if auto:
        same = same[same.lr_source.fillna("").str.startswith("validation")]
    for name in ("model", "dataset", "batch", "width", "stem", "dtype", "steps", "plateau", "options") + (
            () if auto else ("lr",)):
        value = getattr(cfg, name)
        same = same[same[name].isna()] if value is None else same[same[name] == value]
    return {int(row.seed): (float(row.lr), row.lr_source, row.run_id) for row in same.sort_values("seed").itertuples()}
