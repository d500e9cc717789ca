"""The ``attnbench`` command: ``list``, ``run``, ``report``, ``profile``, ``train``, ``eval``, ``export``, ``merge``.

Every handler takes parsed arguments and returns an exit code; bad input is one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from attnbench.choices import (
    AMP_DTYPES,
    COLUMN_SETS,
    COMPILE_MODES,
    DATASETS,
    DEFAULT_DB,
    DEFAULT_PROFILE,
    DEFAULT_REPORT,
    DEFAULT_RES,
    DTYPES,
    FIGURE_FORMATS,
    FORMATS,
    LAUNCHERS,
    MODES,
    PIVOTS,
    SCOPES,
    SWEEP_DEFAULTS,
    TABLES,
    Scope,
    unknown_name_message,
)

# The numerical stack (torch, pandas) and everything built on it load inside the commands, so that
# `attnbench --help` answers at once.


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # every command's --help shows the defaults
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2
        if message.startswith("unrecognized arguments"):
            message += " (options take one word: lists are comma-separated, e.g. --batch 1,8)"
        raise UsageError(f"{self.prog}: {message}")


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (unless the help says its own); the examples of the epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if "default" in text or default is None or default is False or default == "" or default == argparse.SUPPRESS:
            return text
        return f"{text} (default: {','.join(map(str, default)) if isinstance(default, list) else default})"


EXAMPLES = """examples:
  attnbench run --variants gsa,local --res 224              # gsa_resnet50 against local_resnet50
  attnbench run --scope module --res 16,32,64 --dim 64      # every variant alone, three sides
  attnbench run --variants gsa --impl auto,plain            # an implementation beside the textbook one
  attnbench report --db reports/results.sqlite               # into reports/latest/
  attnbench train --model gsa_probe --dataset longrange --epochs 10
"""


# ---- argument types: each validates and explains -------------------------------------------------


def _split(text: str) -> list[str]:
    """A comma-separated list, each item once, in order."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"'{text}' has an empty item; give a comma-separated list")
    return list(dict.fromkeys(items))


def positive_ints(name: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        values = []
        for item in _split(text):
            try:
                value = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name} '{item}' is not a whole number") from None
            if value < 1:
                raise argparse.ArgumentTypeError(f"{name} {value} must be at least 1")
            values.append(value)
        return list(dict.fromkeys(values))

    return parse


def non_negative_ints(name: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(item) for item in _split(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}s '{text}' are not whole numbers") from None
        if min(values) < 0:
            raise argparse.ArgumentTypeError(f"{name} {min(values)} must be at least 0")
        return list(dict.fromkeys(values))

    return parse


def _one(name: str, many: Callable[[str], list[int]]) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if "," in text:
            raise argparse.ArgumentTypeError(f"{name} takes one value, not the list '{text}'")
        return many(text)[0]

    return parse


def positive_int(name: str) -> Callable[[str], int]:
    """One whole number >= 1, with the same messages as :func:`positive_ints`."""
    return _one(name, positive_ints(name))


def non_negative_int(name: str) -> Callable[[str], int]:
    """One whole number >= 0, with the same messages as :func:`non_negative_ints`."""
    return _one(name, non_negative_ints(name))


def variant_list(text: str) -> list[str]:
    from attnbench.registry import list_variants

    names = _split(text)
    for name in names:
        if name not in list_variants():
            raise argparse.ArgumentTypeError(unknown_name_message("variant", name, list_variants()))
    return names


def choice_list(name: str, choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = _split(text)
        for item in items:
            if item not in choices:
                raise argparse.ArgumentTypeError(unknown_name_message(name, item, list(choices)))
        return items

    return parse


def device_list(text: str) -> list[str]:
    import torch

    from attnbench.env import parse_device

    devices = []
    for item in _split(text):
        try:
            dev = parse_device(item)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if dev.type == "cuda" and dev.index is None:  # every GPU
            devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        else:
            devices.append(str(dev))
    return list(dict.fromkeys(devices))


def shard_spec(text: str) -> tuple[int, int]:
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard '{text}' must be i/n, e.g. 2/4") from None
    if n < 1 or not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"shard {i}/{n} is out of range: it must be i/n with 1 <= i <= n")
    return i, n


def positive_floats(name: str) -> Callable[[str], list[float]]:
    def parse(text: str) -> list[float]:
        try:
            return list(dict.fromkeys(positive_float(item) for item in _split(text)))
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{name}: {e}") from None

    return parse


def learning_rate(text: str) -> float | str:
    """A positive number, or ``auto``."""
    return text if text == "auto" else positive_float(text)


def timeout_s(text: str) -> float:
    """A time limit per case (see :func:`attnbench.harness.check_timeout`)."""
    from attnbench.harness import check_timeout

    try:
        return check_timeout(positive_float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{value} must be a positive number")
    return value


# ---- commands -----------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from attnbench.models import list_models
    from attnbench.registry import get_impl, iter_specs, list_impls, resolve_impl

    print("Variants:")
    for spec in iter_specs():
        print(f"  {spec.name:10} {spec.description}")
        print(f"  {'':10} {spec.paper} (arXiv {spec.arxiv}); options: {', '.join(spec.options())}")
        auto = {d: resolve_impl(spec.name, "auto", d) for d in ("cpu", "cuda")}
        for name in list_impls(spec.name):
            runs = [d for d, chosen in auto.items() if chosen == name]
            tag = f" [auto on {', '.join(runs)}]" if runs else ""
            print(f"  {'':10}   impl {name}: {get_impl(spec.name, name).description}{tag}")
    print("\nModels:")
    names = list_models()
    for i in range(0, len(names), 4):
        print("  " + "".join(f"{n:22}" for n in names[i : i + 4]).rstrip())
    return 0


def _check_db(path: str) -> None:
    """The store opens for writing, before any work is done."""
    from attnbench import store

    try:
        with contextlib.closing(store.open_store(path)) as conn:
            conn.execute("BEGIN IMMEDIATE")  # fails at once on a store that cannot be written
            conn.execute("ROLLBACK")
    except store.StoreError as e:
        raise UsageError(str(e)) from None
    except sqlite3.Error as e:
        raise UsageError(f"Cannot write the store {path}: {e}.") from None


def _check_out_dir(option: str, path: str) -> None:
    """An output folder that exists as one, or can be made, and can be written, before any work is done."""
    folder = Path(path)
    try:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{option} {path} is a file, not a folder.")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a name over 255 characters, a folder in the way of its parents, ...
        raise UsageError(f"cannot make {option} {path}: {e.strerror}.") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path} cannot be written.")


def _results_file(text: str) -> str:
    """``--results-file``, checked before the sweep: a .csv or .json name, its ``..`` resolved (no folder is
    made that the path only passes through), its folder made, and a trial write (:func:`files.trial`)."""
    from attnbench import files

    if Path(text).suffix not in (".csv", ".json"):
        raise UsageError(f"--results-file {text}: name a .csv or a .json file.")
    path = Path(text).resolve()
    _check_out_dir("--results-file's folder", str(path.parent))
    try:
        files.trial(path)
    except OSError as e:
        raise UsageError(f"cannot write --results-file {text}: {e.strerror or e}.") from None
    return str(path)


def _write_text(path: str, text: str) -> None:
    """``text`` into the file ``path`` (whole, or the previous file left as it was), with a one-line error
    when that is not possible."""
    from attnbench import files

    try:
        files.write_text(path, text)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}.") from None


def _sweep_fields(args: argparse.Namespace) -> dict:
    """The sweep the arguments describe (see :func:`add_sweep_arguments`), as ``Sweep``'s fields."""
    from dataclasses import fields

    from attnbench.sweep import Sweep

    return {f.name: getattr(args, f.name) for f in fields(Sweep) if hasattr(args, f.name)}


def _plan(args: argparse.Namespace) -> list:
    """The cases of the sweep the arguments describe."""
    from attnbench.sweep import Sweep

    try:
        return Sweep(**_sweep_fields(args)).cases()
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from attnbench import api, interrupt, store

    if args.max_res:
        return _max_res(args)
    cases = _plan(args)
    _check_db(args.db)
    if args.launcher:
        return _launch(args)
    for name in ("partition", "jobs"):
        if getattr(args, name) is not None:
            raise UsageError(f"--{name} applies to --launcher slurm (or local).")
    if args.results_file:
        args.results_file = _results_file(args.results_file)
    bar = tqdm(total=len(cases), unit="case", file=sys.stderr, disable=args.json or None, dynamic_ncols=True)
    finished = 0

    def on_case(case, record) -> None:
        nonlocal finished
        finished += 1
        bar.set_postfix_str(f"{case.label}: {'stored' if record is None else record.measurement.status}",
                            refresh=False)
        bar.update()

    try:
        with interrupt.keeping(lambda: f"{finished} of {len(cases)} cases are stored in {args.db}; run the same "
                               "command again to finish the sweep"):
            frame = api.run(cases=cases, db=args.db, timeout=args.timeout, min_run_time=args.min_run_time,
                            force=args.force, retry_failed=args.retry_failed, on_case=on_case)
    except store.StoreError as e:
        raise UsageError(str(e)) from None
    finally:
        bar.close()
    busy = frame.latency_noise_reason.fillna("").str.contains("other processes|speed changed")
    if busy.any():
        print(f"attnbench run: warning: {int(busy.sum())} of {len(frame)} cases were timed while the machine was "
              "busy (see latency_noise_reason); for stable numbers run nothing else meanwhile, or pin the sweep "
              "with --threads and taskset, and measure again with --force.", file=sys.stderr)
    if args.results_file:
        from attnbench.columns import results_summary

        written = results_summary(frame) if args.results_columns == "summary" else frame
        rows = written.to_csv(index=False) if args.results_file.endswith(".csv") else written.to_json(
            orient="records", indent=1, double_precision=15)
        _write_text(args.results_file, rows)
    if args.json:
        print(frame.to_json(orient="records", indent=1, double_precision=15))
    else:
        from attnbench.console import console_table

        print(console_table(frame, pivot=args.pivot, width=args.line_width))
        print(f"\n{len(frame)} cases; results in {args.db}. Latency: median of the timed runs; MACs per forward "
              "pass of the batch (1 multiply-add = 1); memory: peak over weights and inputs.")
    return 0


def _max_res(args: argparse.Namespace) -> int:
    """``run --max-res``: the largest side of each case that runs, by doubling then bisection."""
    from attnbench import api, interrupt, store

    if args.res:
        raise UsageError("--max-res finds the resolution: leave out --res.")
    if args.launcher or args.shard:
        raise UsageError("--max-res searches here, one case at a time: leave out --launcher and --shard.")
    sweep = {k: v for k, v in _sweep_fields(args).items() if k != "res"}
    try:
        api.plan(**sweep, res=[1])  # every check before anything runs
    except ValueError as e:
        raise UsageError(str(e)) from None
    _check_db(args.db)

    def on_case(case, record) -> None:
        status = "stored" if record is None else record.measurement.status
        print(f"  {case.label}: {status}", file=sys.stderr, flush=True)

    try:
        with interrupt.keeping(lambda: f"every side tried is stored in {args.db}; run the same command again to go on"):
            found = api.max_res(db=args.db, timeout=args.timeout, min_run_time=args.min_run_time, on_case=on_case,
                                **sweep)
    except store.StoreError as e:
        raise UsageError(str(e)) from None
    for f in found:
        what = f.case.label.replace(" res=1 ", " ")
        largest = f"largest side {f.largest}" if f.largest else "no side ran"
        print(f"{what}: {largest}; {f.failed} did not ({f.status})")
    print(f"\nevery side tried is stored in {args.db}; the report's largest-fit table reads them.")
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``run`` through a launcher: the sweep as a job array, its shard stores merged into --db."""
    from attnbench.launch import LaunchError, jobs_folder, launch
    from attnbench.sweep import Sweep

    if args.launcher == "local" and args.partition:
        raise UsageError("--partition applies to --launcher slurm.")
    if args.shard or args.results_file or args.json or args.pivot:
        raise UsageError("--shard, --results-file, --json and --pivot apply to a sweep run here, not launched.")
    sweep = Sweep(**_sweep_fields(args))
    run = dict(timeout=args.timeout, min_run_time=args.min_run_time, force=args.force, retry_failed=args.retry_failed)
    try:
        collected = launch(sweep, db=args.db, launcher=args.launcher, jobs=args.jobs or 1,
                           partitions=args.partition or [], timeout_min=args.job_minutes, gpus=args.gpus, run=run)
    except LaunchError as e:
        raise UsageError(str(e)) from None
    print(f"{args.jobs or 1} tasks per partition finished; merged into {args.db}: {collected} "
          f"(shard stores and logs under {jobs_folder(args.db)})")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from attnbench import interrupt, store
    from attnbench.launch import LaunchError, collect

    try:
        with interrupt.keeping(lambda: ALL_OR_NOTHING):
            collected = collect(args.db)
    except (LaunchError, store.StoreError) as e:
        raise UsageError(str(e)) from None
    print(f"merged the launched shard stores into {args.db}: {collected}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from attnbench import store
    from attnbench.columns import table

    try:
        frame = table(args.db, args.table, args.columns, args.where)
    except (store.StoreError, ValueError) as e:
        raise UsageError(str(e)) from None
    text = frame.to_csv(index=False) if args.format == "csv" else frame.to_markdown(index=False)
    if args.output:
        _write_text(args.output, text)
    else:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    return 0


ALL_OR_NOTHING = "a merge is all or nothing: run the same command again (no row is added twice)"


def cmd_merge(args: argparse.Namespace) -> int:
    from attnbench import interrupt, store

    try:
        with interrupt.keeping(lambda: ALL_OR_NOTHING):
            merged = store.merge(args.sources, args.output)
    except store.StoreError as e:
        raise UsageError(str(e)) from None
    conflicts = (f"; {merged.conflicts} cases measured differently in the same environment, the newest kept"
                 if merged.conflicts else "")
    print(f"merged {len(args.sources)} stores into {args.output}: {merged.added} new rows{conflicts}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from attnbench import interrupt, store
    from attnbench.report import ReportError, os_error, report

    _check_out_dir("--out", args.out)
    try:
        with interrupt.keeping(lambda: f"a report is swapped in only when whole: {args.out} holds the previous one"):
            rep = report(args.db or [DEFAULT_DB], args.out, formats=args.formats)
    except (ReportError, store.StoreError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:  # a full disk, a folder that went away, a file unreadable: the previous report stays
        raise UsageError(os_error(e, args.out)) from None
    print(f"wrote {len(rep.tables)} tables and {len(rep.figures)} figures under {args.out} "
          f"(index: {args.out}/README.md)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from attnbench import store
    from attnbench.report import ReportError, summary

    try:
        print(summary(args.db or [DEFAULT_DB], as_markdown=args.markdown), end="")
    except (ReportError, store.StoreError) as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    import pandas as pd

    from attnbench.plots import save
    from attnbench.profiling import profile_case, stacked_figure
    from attnbench.report import slug

    cases = _plan(args)
    _check_out_dir("--out", args.out)
    out = Path(args.out)
    for sub in ("tables", "figures", "traces"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, dict[str, pd.DataFrame]] = {}
    several = {v for v in {c.variant for c in cases} if len({c.impl for c in cases if c.variant == v}) > 1}
    for case in cases:
        name = case.variant if case.scope == Scope.MODULE else case.model.replace(":", "-")
        name += f"-{case.impl}" if case.variant in several else ""
        tag = f"{case.scope}_r{case.res}_b{case.batch}_{case.dtype}_{case.mode}_{slug(case.device)}"
        try:
            table = profile_case(case, out / "traces" / f"{name}_{tag}", iters=args.iters)
        except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
            print(f"{name} {tag}: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
            continue
        groups.setdefault(tag, {})[name] = table
        top = table.head(3)
        print(f"{name:18} {tag}: " + ", ".join(f"{o} {s:.0f} %" for o, s in zip(top.operator, top["share (%)"])))
    for tag, tables in groups.items():
        combined = pd.concat([t.head(args.top).assign(variant=n) for n, t in tables.items()], ignore_index=True)
        combined = combined[["variant", "operator", "self ms / iter", "share (%)", "calls / iter"]].round(
            {"self ms / iter": 4, "share (%)": 1, "calls / iter": 2})
        _write_text(str(out / "tables" / f"profile_{tag}.csv"), combined.to_csv(index=False))
        _write_text(str(out / "tables" / f"profile_{tag}.md"), combined.to_markdown(index=False) + "\n")
        fig = stacked_figure(tables, f"Self time by operator ({tag.replace('_', ', ')})", top=args.top)
        save(fig, out / "figures" / f"profile_{tag}", args.formats)
        print(f"traces under {out / 'traces'}; operator table {out / 'tables' / f'profile_{tag}.md'}; "
              f"plot {out / 'figures' / f'profile_{tag}.png'}")
    return 0 if groups else 1


def cmd_train(args: argparse.Namespace) -> int:
    from attnbench import interrupt, store
    from attnbench.data import DataError, check_side
    from attnbench.models import UnknownModelError, get_model_spec
    from attnbench.train import (
        LR_CANDIDATES,
        TrainConfig,
        TrainError,
        claimed,
        match_width,
        refuse_earlier_run,
        train,
        tune_lr,
        usable_device,
    )

    spec = None
    try:
        spec = get_model_spec(args.model)
        if args.match:
            get_model_spec(args.match_to or _conv_of(spec))
    except UnknownModelError as e:
        raise UsageError(("--match-to: " if spec else "") + str(e)) from None
    if spec.foreign:
        ours = [name for name, given in (("--width", args.width != 1.0), ("--stem", args.stem is not None),
                                         ("--match", bool(args.match))) if given]
        if ours:
            raise UsageError(f"{ours[0]} applies to attnbench's networks; {spec.name} is trained as its builder "
                             "makes it.")
    stem = args.stem or ("" if spec.foreign else "cifar")
    seeds = args.seeds or [args.seed]
    if args.seeds and args.seed != 0:
        raise UsageError("give --seed or --seeds, not both.")
    if len(seeds) > 1 and args.resume:
        raise UsageError("--resume continues one run: give one seed.")
    auto = args.lr == "auto"
    options = _train_options(spec, args.opt)
    try:  # every value checked before anything runs (the rate --lr auto chooses replaces the first candidate)
        cfg = TrainConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                          batch=args.batch, lr=LR_CANDIDATES[0] if auto else args.lr, momentum=args.momentum,
                          weight_decay=args.weight_decay, width=args.width, stem=stem, dtype=args.dtype,
                          device=usable_device(args.device), seed=seeds[0], steps=args.steps, plateau=args.plateau,
                          options=options, image_size=args.image_size, workers=args.workers)
    except TrainError as e:
        raise UsageError(str(e)) from None
    width_source = "given"
    if args.match:
        reference = args.match_to or _conv_of(spec)
        from attnbench.data import CLASSES

        try:
            width, cost, target = match_width(args.model, reference, args.match, num_classes=CLASSES[args.dataset],
                                              reference_width=args.width, stem=stem, options=options)
        except TrainError as e:
            raise UsageError(str(e)) from None
        width_source = (f"matched to {reference} at width {args.width:g} in {args.match}: {cost:,} against "
                        f"{target:,}")
        print(f"width {width:g}: {width_source}")
        cfg = replace(cfg, width=width)
    outs = {seed: (f"{args.out}/s{seed}" if args.out and len(seeds) > 1 else args.out)
            or f"runs/{args.model}-{args.dataset}-s{seed}" for seed in seeds}
    for out in outs.values():
        _check_out_dir("--out", out)
    if args.db is not None:
        _check_db(args.db)
    finished = _finished_seeds(args.db, cfg, auto) if args.skip_finished else {}
    try:  # every seed's folder before any seed trains
        for seed in set(seeds) - set(finished):
            refuse_earlier_run(outs[seed], resume=args.resume, overwrite=args.overwrite)
    except TrainError as e:
        raise UsageError(str(e)) from None
    # --lr auto chooses the rate once for the setup, on the first seed it trains (or takes the rate an earlier
    # sitting chose, from the store), and every seed trains at it
    tuned = next(iter(finished.values())) if auto and finished else None
    for side in args.eval_res or []:
        try:
            check_side(args.dataset, side)
        except DataError as e:
            raise UsageError(f"--eval-res: {e}") from None
    diverged = []
    for seed, out in outs.items():
        if seed in finished:
            print(f"seed {seed}: already trained to its end in {args.db}, skipped")
            if args.eval_res and Path(out, "checkpoint.pt").is_file() and int(os.environ.get("RANK", "0")) == 0:
                _evaluate_sides(args, Path(out, "checkpoint.pt"), args.eval_res, skip_stored=True)  # not yet stored
            continue
        try:
            with interrupt.keeping(partial(_train_kept, seed, out, args.db, time.time())), \
                    claimed(out, resume=args.resume, overwrite=args.overwrite):  # the learning rate's search too
                run, source = replace(cfg, seed=seed), "given"
                if auto:
                    if tuned is None:
                        tuned = tune_lr(run, Path(out) / "lr-search")
                    lr, source = tuned
                    run = replace(run, lr=lr)
                    print(f"seed {seed}: learning rate {source}")
                history = train(run, out=out, db=args.db, resume=args.resume, overwrite=args.overwrite,
                                stop_after_epoch=args.stop_after_epoch, lr_source=source, width_source=width_source)
        except (DataError, TrainError, store.StoreError) as e:
            raise UsageError(str(e)) from None
        if history and history[-1]["stopped"] == "diverged":
            diverged.append(seed)
            print(f"seed {seed}: diverged in epoch {history[-1]['epoch']} (the training loss is not finite), stored "
                  f"in {args.db} as such, not as a finished run", file=sys.stderr)
        elif history:
            print(f"seed {seed}: checkpoint {out}/checkpoint.pt; metrics stored in {args.db}")
            if args.eval_res:
                _evaluate_sides(args, Path(out, "checkpoint.pt"), args.eval_res, skip_stored=True)
    return 1 if diverged else 0


def _train_kept(seed: int, out: str, db: str | None, since: float) -> str:
    """What an interrupted run of ``seed`` that started at ``since`` kept."""
    ckpt = Path(out) / "checkpoint.pt"
    if ckpt.exists() and ckpt.stat().st_mtime >= since:
        return f"seed {seed}'s finished epochs are in {ckpt}{f' and {db}' if db else ''}; continue with --resume {ckpt}"
    return f"no epoch of seed {seed} had finished"


def _evaluate_sides(args: argparse.Namespace, checkpoint: str | Path, sides: list[int] | None, *,
                    batch: int = 256, skip_stored: bool = False) -> list:
    """A checkpoint evaluated at ``sides`` (``eval``, or ``train --eval-res`` with ``skip_stored``: the sides the
    store does not hold for the run yet), one printed line per row."""
    from attnbench import store
    from attnbench.data import DataError
    from attnbench.evaluation import describe, evaluate_at_sides
    from attnbench.train import TrainError

    try:
        return evaluate_at_sides(checkpoint, args.dataset, sides, data_dir=args.data_dir, db=args.db,
                                 device=args.device, batch=batch, skip_stored=skip_stored,
                                 on_row=lambda row: print(describe(row)))
    except (DataError, TrainError, store.StoreError) as e:
        raise UsageError(str(e)) from None


def _train_options(spec, opts: list[str]) -> str:
    """``--opt`` items as the run stores them (``key=value,...``, sorted), checked against the network's variant."""
    from attnbench.record import parse_options
    from attnbench.registry import get_variant_spec
    from attnbench.sweep import variant_options

    if not opts:
        return ""
    if not spec.variant:
        raise UsageError(f"--opt sets a variant's options; {spec.name} has no attnbench variant.")
    try:
        options = variant_options([spec.variant], opts)[spec.variant]
        get_variant_spec(spec.variant).make_config(64, **parse_options(options))
    except (ValueError, TypeError) as e:
        raise UsageError(f"--opt for {spec.name}: {e}" if "--opt" not in str(e) else str(e)) from None
    return options


def _conv_of(spec) -> str:
    """The convolution network of the same family (conv_probe for gsa_probe, resnet26 for gsa_resnet26), or the
    network itself where it has no family."""
    from attnbench.models import list_archs
    from attnbench.models.registry import family_name

    return family_name("conv", spec.arch) if spec.arch in list_archs() else spec.name


def _finished_seeds(db: str | None, cfg, auto: bool) -> dict[int, tuple[float, str]]:
    """The seeds of ``cfg``'s setup that the store holds a finished run of (``store.finished_runs``, as the
    accuracy table counts them), lowest first, each with its learning rate and how it was chosen; with
    ``auto``, runs whose rate was chosen on validation, whatever it was."""
    from attnbench import store
    from attnbench.train import image_side

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
    return {int(row.seed): (float(row.lr), row.lr_source) for row in same.sort_values("seed").itertuples()}


def cmd_eval(args: argparse.Namespace) -> int:
    rows = _evaluate_sides(args, args.checkpoint, args.res, batch=args.batch)
    print(f"{len(rows)} evaluations" + (f" stored in {args.db}" if args.db else ""))
    return 0


def add_sweep_arguments(p: argparse.ArgumentParser, *, scope: str) -> None:
    """The options that define a sweep's cases, the same for every command that takes a sweep."""
    p.add_argument("--variants", type=variant_list, default=None, help="comma-separated (default: all)")
    p.add_argument("--scope", choices=SCOPES, default=scope,
                   help="model: each variant's network at image side --res; module: the variant alone")
    p.add_argument("--arch", default=SWEEP_DEFAULTS["arch"],
                   help="the variants' networks at model scope: resnet26/38/50/101, or probe (two blocks at full "
                        "resolution)")
    p.add_argument("--model", type=_split, default=None, metavar="NAME[,NAME...]",
                   help="networks at model scope, beside or instead of --variants: registered names (gsa_resnet50, "
                        "botnet50; `attnbench list`), timm:NAME (any timm model; needs timm) or "
                        "package.module:callable (your builder, returning an nn.Module)")
    p.add_argument("--width", type=positive_floats("width"), default=list(SWEEP_DEFAULTS["width"]),
                   help="channel multipliers of attnbench's networks, comma-separated (e.g. 0.5,1)")
    p.add_argument("--res", type=positive_ints("resolution"), default=None,
                   help=f"sides in pixels, comma-separated (default: {DEFAULT_RES['model']} for models, "
                        f"{DEFAULT_RES['module']} for modules)")
    p.add_argument("--batch", type=positive_ints("batch"), default=list(SWEEP_DEFAULTS["batch"]),
                   help="batch sizes, comma-separated")
    p.add_argument("--dim", type=positive_ints("dim"), default=list(SWEEP_DEFAULTS["dim"]),
                   help="channels at module scope")
    p.add_argument("--dtype", type=choice_list("dtype", list(DTYPES)), default=list(SWEEP_DEFAULTS["dtype"]),
                   help=f"{', '.join(DTYPES)}; comma-separated")
    p.add_argument("--device", type=device_list, default=None,
                   help="cpu, cuda, cuda:0,cuda:1 (default: every GPU, else cpu)")
    p.add_argument("--mode", type=choice_list("mode", MODES), default=list(SWEEP_DEFAULTS["mode"]),
                   help="infer (forward, no grad) or train (forward + backward); comma-separated")
    p.add_argument("--threads", type=positive_int("threads"), default=None, help="CPU threads (default: all cores)")
    p.add_argument("--impl", type=_split, default=list(SWEEP_DEFAULTS["impl"]),
                   help="implementations, comma-separated: auto (each variant's choice for the device), a name "
                        "for every variant that has it (e.g. plain), or VARIANT=NAME; see `attnbench list`")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a variant option (e.g. span=15, heads=4, local.window=9) for every variant that has it, "
                        "or VARIANT.KEY=VALUE; repeat for several")
    p.add_argument("--amp", nargs="?", const="bf16", default="", choices=AMP_DTYPES, metavar="DTYPE",
                   help="autocast the forward to DTYPE (bf16, or fp16; bf16 if none named), the weights kept in "
                        "--dtype (as timm's --amp)")
    p.add_argument("--channels-last", action="store_true", help="weights and input in channels-last memory format")
    p.add_argument("--compile", nargs="?", const="default", default="", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile each case ({', '.join(COMPILE_MODES)}; default if none named); the "
                        "compile time is stored in compile_s, never in the latency")


def add_formats_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", type=choice_list("format", FORMATS), default=list(FIGURE_FORMATS),
                   help=f"figure files, comma-separated: {', '.join(FORMATS)}")


def build_parser() -> argparse.ArgumentParser:
    from attnbench import __version__

    parser = _Parser(prog="attnbench", description="What each attention mechanism costs and what it buys.",
                     epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"attnbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("list", help="the variants and networks").set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="measure a sweep of cases and store the results")
    add_sweep_arguments(run, scope=Scope.MODEL)
    run.add_argument("--timeout", type=timeout_s, default=600.0, help="seconds per case")
    run.add_argument("--min-run-time", type=positive_float, default=0.5, help="seconds of timed runs per case")
    run.add_argument("--db", default=DEFAULT_DB, help="results store (SQLite)")
    run.add_argument("--force", action="store_true", help="measure again cases already stored")
    run.add_argument("--retry-failed", action="store_true",
                     help="measure again stored failures (time-outs given more time and cases that now fit in "
                          "memory are retried without it)")
    run.add_argument("--shard", type=shard_spec, default=None, help="run slice i of n: i/n")
    run.add_argument("--max-res", action="store_true",
                     help="find each case's largest side that runs (within --timeout and the device's memory) by "
                          "doubling from 16, then bisection; every side tried is stored")
    run.add_argument("--launcher", choices=LAUNCHERS, default=None,
                     help="run the sweep as a submitit job array: slurm, or local (processes here); each task runs "
                          "one shard into its own store, merged into --db when the array finishes (needs the "
                          "[slurm] extra)")
    run.add_argument("--jobs", type=positive_int("jobs"), default=None, help="tasks per partition (default 1)")
    run.add_argument("--partition", type=_split, default=None,
                     help="Slurm partitions, comma-separated: the whole sweep runs on each (e.g. a100,h100)")
    run.add_argument("--job-minutes", type=positive_int("job-minutes"), default=60, help="time limit per task")
    run.add_argument("--gpus", type=positive_int("gpus"), default=1, help="GPUs per Slurm task")
    run.add_argument("--json", action="store_true", help="print the rows as JSON")
    run.add_argument("--results-file", default=None, metavar="FILE",
                     help="also write the sweep's rows to FILE, CSV or JSON by its extension (as timm's)")
    run.add_argument("--results-columns", choices=COLUMN_SETS, default="summary",
                     help="--results-file's columns: summary (network, side, batch, dtype, samples_per_s, step_ms, "
                          "gmacs_per_sample, params, ...) or all (every stored column)")
    run.add_argument("--pivot", nargs="?", const="latency", choices=PIVOTS, default=None,
                     help="print one metric as a grid of cases by resolution (latency if none named)")
    run.add_argument("--line-width", type=positive_int("line-width"), default=100, help="characters per printed line")
    run.set_defaults(func=cmd_run)

    prof = sub.add_parser("profile", help="torch.profiler traces and operator tables per variant")
    add_sweep_arguments(prof, scope=Scope.MODULE)
    prof.add_argument("--iters", type=positive_int("iters"), default=5)
    prof.add_argument("--top", type=positive_int("top"), default=8, help="operators per variant")
    prof.add_argument("--out", default=DEFAULT_PROFILE, help="folder for traces, tables and figures")
    add_formats_argument(prof)
    prof.set_defaults(func=cmd_profile)

    tr = sub.add_parser("train", help="train a network and store its accuracy per epoch (runs under torchrun too)")
    tr.add_argument("--model", required=True,
                    help="any network of `attnbench list` (e.g. gsa_resnet26, gsa_probe), timm:NAME or "
                         "package.module:callable")
    tr.add_argument("--dataset", required=True, choices=DATASETS)
    tr.add_argument("--data-dir", default=None,
                    help="folder with the data set's files: cifar100 and cifar10's archive, or imagefolder's "
                         "train/<class>/*.jpg and val/<class>/*.jpg")
    tr.add_argument("--image-size", type=positive_int("image-size"), default=None,
                    help="imagefolder: the side of the crops the network sees (default: 224)")
    tr.add_argument("--workers", type=non_negative_int("workers"), default=min(8, os.cpu_count() or 1),
                    help="imagefolder: processes decoding images (0: in the training process; default: the "
                         "cores, at most 8)")
    tr.add_argument("--epochs", type=positive_int("epochs"), default=10)
    tr.add_argument("--batch", type=positive_int("batch"), default=128,
                    help="global batch, split over torchrun's processes")
    tr.add_argument("--lr", type=learning_rate, default=0.1,
                    help="learning rate, or auto: chosen once per setup, on a held-out tenth of the first seed's "
                         "training split (never the test split), among 0.2, 0.1, 0.05, 0.02 and, past an edge "
                         "that wins, twice or half it, until one inside wins")
    tr.add_argument("--momentum", type=float, default=0.9)
    tr.add_argument("--weight-decay", type=float, default=5e-4)
    tr.add_argument("--width", type=positive_float, default=1.0, help="channel multiplier, e.g. 0.25")
    tr.add_argument("--stem", choices=("conv", "cifar"), default=None,
                    help="attnbench's ResNets: conv (7x7 + max-pool) or cifar (3x3) (default: cifar)")
    tr.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    tr.add_argument("--device", default="cpu", help="cpu or cuda")
    tr.add_argument("--seed", type=int, default=0, help="weights, data order, augmentation and data split")
    tr.add_argument("--seeds", type=non_negative_ints("seed"), default=None,
                    help="several seeds, comma-separated (e.g. 0,1,2), trained one after the other")
    tr.add_argument("--steps", type=positive_int("steps"), default=None,
                    help="optimizer steps in all, instead of --epochs (the schedule spans them)")
    tr.add_argument("--plateau", type=positive_int("plateau"), default=None, metavar="EPOCHS",
                    help="stop once the training loss has not improved by 1 %% in this many epochs")
    tr.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a variant option of the network (e.g. zero_init=false, heads=4); repeat for several")
    tr.add_argument("--match", choices=("params", "macs"), default=None,
                    help="choose the width so that the network has the parameters (or MACs per image) of --match-to "
                         "at --width, within 10 %%")
    tr.add_argument("--match-to", default=None, metavar="MODEL",
                    help="the network matched (default: the conv network of the same family, e.g. conv_probe)")
    tr.add_argument("--skip-finished", action="store_true",
                    help="skip the seeds whose run of this setup the store already holds to its end (to resume a "
                         "table trained in several sittings)")
    tr.add_argument("--out", default=None, help="checkpoint folder (default runs/MODEL-DATASET-sSEED)")
    tr.add_argument("--db", default=DEFAULT_DB, help="results store for the per-epoch metrics")
    tr.add_argument("--resume", default=None, help="checkpoint to continue from, exactly")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run's checkpoint in --out (refused otherwise, unless --resume names it)")
    tr.add_argument("--stop-after-epoch", type=positive_int("stop-after-epoch"), default=None,
                    help="stop after this epoch (the schedule still spans --epochs); continue with --resume")
    tr.add_argument("--eval-res", type=positive_ints("resolution"), default=None,
                    help="after training, evaluate each seed's network at these image sides (as `eval --res`)")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a data set's test split, at one side or several")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--dataset", required=True, choices=DATASETS)
    ev.add_argument("--data-dir", default=None)
    ev.add_argument("--res", type=positive_ints("resolution"), default=None,
                    help="image sides, comma-separated (default: the side trained at); each is evaluated with the "
                         "network as trained and, where it has tables sized to its training map, interpolated")
    ev.add_argument("--batch", type=positive_int("batch"), default=256)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--db", default=DEFAULT_DB, help="results store for the evaluations, one row per side")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="regenerate tables and plots from results stores")
    rep.add_argument("--db", action="append", default=None, help="a results store; repeat for several")
    rep.add_argument("--out", default=DEFAULT_REPORT, help="folder for the tables, figures and index")
    add_formats_argument(rep)
    rep.set_defaults(func=cmd_report)

    summ = sub.add_parser("summary", help="who wins where: the fastest, the leanest, the most accurate for the cost")
    summ.add_argument("--db", action="append", default=None, help="a results store; repeat for several")
    summ.add_argument("--markdown", action="store_true", help="print Markdown tables")
    summ.set_defaults(func=cmd_summary)

    export = sub.add_parser("export", help="write a store's measurements (or training runs) as CSV or Markdown")
    export.add_argument("--db", default=DEFAULT_DB)
    export.add_argument("--table", choices=TABLES, default="results",
                        help="results (measured cases), training (training runs: with --columns summary, each run's "
                             "latest epoch; with all, every epoch) or evaluations (trained networks at other sides)")
    export.add_argument("--format", choices=("csv", "md"), default="csv")
    export.add_argument("--columns", type=_split, default=["all"],
                        help="summary (the columns compared first, as timm's results), all (every stored column), "
                             "or stored columns, comma-separated, in that order (default: all)")
    export.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep the rows where COLUMN=V1,V2 (any of), COLUMN!=V, or COLUMN>=N (also <=, >, <); "
                             "repeat for several, all must hold")
    export.add_argument("-o", "--output", default=None)
    export.set_defaults(func=cmd_export)

    collect = sub.add_parser("collect", help="merge the shard stores of a launched sweep (--launcher) into --db")
    collect.add_argument("--db", default=DEFAULT_DB, help="the store the sweep was launched into")
    collect.set_defaults(func=cmd_collect)

    merge = sub.add_parser("merge", help="merge stores from several machines, without duplicates")
    merge.add_argument("sources", nargs="+")
    merge.add_argument("-o", "--output", required=True)
    merge.set_defaults(func=cmd_merge)
    return parser


PLAIN = {"µ": "u", "±": "+-", "×": "x"}  # how our tables' characters are spelled where they cannot be


def _plain(err: UnicodeError) -> tuple[str, int]:
    chunk = err.object[err.start:err.end]
    return "".join(PLAIN.get(c) or c.encode("ascii", "backslashreplace").decode("ascii") for c in chunk), err.end


def _plain_streams() -> None:
    """Standard output and error that cannot encode a character (``PYTHONIOENCODING=ascii``, a C locale) write
    an ASCII spelling of it (``µs`` as ``us``, ``±`` as ``+-``, others escaped) instead of failing."""
    codecs.register_error("attnbench.plain", _plain)
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="attnbench.plain")


def main(argv: Sequence[str] | None = None) -> int:
    from attnbench import forkserver, interrupt

    _plain_streams()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        forkserver.start()  # the cases' fork server imports torch beside this process, not after it
    args = None
    with interrupt.handled():  # SIGINT and SIGTERM alike, for every command
        try:
            args = build_parser().parse_args(argv)
            return args.func(args)
        except UsageError as e:  # the command's name comes first on every error line, added here once
            line = str(e).splitlines()[0] if str(e) else "error"
            if not line.startswith("attnbench"):  # parse errors already carry it
                line = f"attnbench {args.command}: {line}" if args is not None else f"attnbench: {line}"
            print(line, file=sys.stderr)
            return 2
        except BrokenPipeError:
            return 0
        except KeyboardInterrupt as e:
            stopped = e if isinstance(e, interrupt.Interrupted) else interrupt.Interrupted()
            interrupt.end_children()
            what = f"attnbench {args.command}" if args is not None else "attnbench"
            kept = f"; {stopped.kept}" if stopped.kept else ""
            print(f"{what}: interrupted by {stopped}{kept}.", file=sys.stderr)
            return stopped.exit_code


if __name__ == "__main__":
    sys.exit(main())
