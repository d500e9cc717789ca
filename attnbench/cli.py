"""The ``attnbench`` command (``attnbench --help``). It parses, calls and prints: argument types live in
``attnbench.arguments``, sweeps in ``attnbench.api``, training studies in ``attnbench.study``, profiles in
``attnbench.profiling``. Every handler takes parsed arguments and returns an exit code; bad input is one
line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from attnbench.arguments import (
    Parser,
    UsageError,
    add_formats_argument,
    add_line_width_argument,
    add_sweep_arguments,
    check_db,
    check_out_dir,
    learning_rate,
    non_negative_int,
    non_negative_ints,
    output_format,
    plan,
    positive_float,
    positive_int,
    positive_ints,
    results_file,
    shard_spec,
    split,
    sweep_fields,
    timeout_s,
    write_text,
)
from attnbench.choices import (
    COLUMN_SETS,
    DATASETS,
    DEFAULT_DB,
    DEFAULT_PROFILE,
    DEFAULT_REPORT,
    LAUNCHERS,
    PIVOTS,
    TABLES,
    Scope,
    count,
)
from attnbench.streams import plain_streams

# The numerical stack (torch, pandas) and everything built on it load inside the commands, so that
# `attnbench --help` answers at once.

EXAMPLES = """examples:
  attnbench run --variants gsa,local --res 224              # gsa_resnet50 against local_resnet50
  attnbench run --scope module --res 16,32,64 --dim 64      # every variant alone, three sides
  attnbench run --variants gsa --impl auto,plain            # an implementation beside the textbook one
  attnbench report --db reports/results.sqlite               # into reports/latest/
  attnbench train --model gsa_probe --dataset longrange --epochs 10
"""


# ---- commands -----------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from attnbench.catalog import catalog

    lines = catalog(args.pattern, args.line_width)
    if not lines:  # timm's networks can be named, but none is listed here
        raise UsageError(f"attnbench list lists attnbench's own variants and networks; timm's are listed by timm."
                         f"list_models('{args.pattern[5:] or '*'}')." if args.pattern.startswith("timm:") else
                         f"no variant or network matches '{args.pattern}' (`attnbench list` lists them all).")
    print("\n".join(lines))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from attnbench import api, interrupt, store
    from attnbench.streams import Progress

    if args.max_res:
        return _max_res(args)
    cases = plan(args)
    check_db(args.db)
    if args.results_file:
        args.results_file = results_file(args.results_file)
    if args.launcher:
        return _launch(args)
    for name in ("partition", "jobs"):
        if getattr(args, name) is not None:
            raise UsageError(f"--{name} applies to --launcher slurm (or local).")
    progress = Progress(len(cases), "case", quiet=args.quiet, bar=not args.json)

    def on_case(case, record) -> None:
        measured = record.measurement if record is not None else None
        latency = f" {measured.latency_ms_median:.4g} ms" if measured and measured.latency_ms_median else ""
        progress.done(f"{case.label}: {'stored' if measured is None else measured.status}{latency}")

    try:
        with interrupt.keeping(lambda: f"{progress.count} of {count(len(cases), 'case')} stored in {args.db}; run the "
                               "same command again to finish the sweep"):
            frame = api.run(cases=cases, db=args.db, timeout=args.timeout, min_run_time=args.min_run_time,
                            force=args.force, retry_failed=args.retry_failed, on_case=on_case)
    except store.StoreError as e:
        raise UsageError(str(e)) from None
    finally:
        progress.close()
    return _show(frame, args, f"{count(len(frame), 'case')}; results in {args.db}")


def _show(frame, args: argparse.Namespace, said: str) -> int:
    """A sweep's rows into --results-file, then printed (JSON, or the table and ``said`` with the units under
    it); the exit status they call for."""
    from attnbench.console import console_table, say_verdict, wrap

    if args.results_file:
        from attnbench.columns import as_text, results_summary

        written = results_summary(frame) if args.results_columns == "summary" else frame
        write_text(args.results_file, as_text(written, output_format(args.results_file)))
    if args.json:
        print(frame.to_json(orient="records", indent=1, double_precision=15))
    else:
        print(console_table(frame, pivot=args.pivot, width=args.line_width))
        print("", *wrap(f"{said}. Latency: median of the timed runs; MACs per forward pass of the batch "
                        "(1 multiply-add = 1); memory: peak over weights and inputs.", args.line_width), sep="\n")
    return say_verdict(frame)


def _max_res(args: argparse.Namespace) -> int:
    """``run --max-res``: the largest side of each case that runs, by doubling then bisection."""
    from attnbench import api, interrupt, store

    if args.res:
        raise UsageError("--max-res finds the resolution: leave out --res.")
    if args.launcher or args.shard:
        raise UsageError("--max-res searches here, one case at a time: leave out --launcher and --shard.")
    sweep = {k: v for k, v in sweep_fields(args).items() if k != "res"}
    try:
        api.plan(**sweep, res=[1])  # every check before anything runs
    except ValueError as e:
        raise UsageError(str(e)) from None
    check_db(args.db)

    def on_case(case, record) -> None:
        status = "stored" if record is None else record.measurement.status
        print(f"  {case.label}: {status}", file=sys.stderr, flush=True)

    try:
        with interrupt.keeping(lambda: f"every side tried is stored in {args.db}; run the same command again to go on"):
            found = api.max_res(db=args.db, timeout=args.timeout, min_run_time=args.min_run_time, on_case=on_case,
                                **sweep)
    except store.StoreError as e:
        raise UsageError(str(e)) from None
    from attnbench.console import max_res_lines

    print("\n".join(max_res_lines(found, args.db, args.line_width)))
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``run`` through a launcher: the sweep as a job array, its shard stores merged into --db."""
    from attnbench.launch import LaunchError, jobs_folder, launch
    from attnbench.sweep import Sweep

    if args.launcher == "local" and args.partition:
        raise UsageError("--partition applies to --launcher slurm.")
    if args.shard:
        raise UsageError("--shard applies to a sweep run here; --launcher shards the sweep itself.")
    sweep = Sweep(**sweep_fields(args))
    run = dict(timeout=args.timeout, min_run_time=args.min_run_time, force=args.force, retry_failed=args.retry_failed)
    try:
        collected = launch(sweep, db=args.db, launcher=args.launcher, jobs=args.jobs or 1,
                           partitions=args.partition or [], timeout_min=args.job_minutes, gpus=args.gpus, run=run)
    except LaunchError as e:
        raise UsageError(str(e)) from None
    return _show(collected.rows, args, f"{count(args.jobs or 1, 'task')} per partition finished; merged into "
                 f"{args.db}: {collected} (shard stores and logs under {jobs_folder(args.db)})")


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
    from attnbench.columns import as_text, table

    try:
        text = as_text(table(args.db, args.table, args.columns, args.where), output_format(args.output, args.format))
    except (store.StoreError, ValueError) as e:
        raise UsageError(str(e)) from None
    if args.output:
        write_text(args.output, text)
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
    stores = len({os.path.realpath(src) for src in args.sources})  # a store named twice is one store
    print(f"merged {count(stores, 'store')} into {args.output}: {merged}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from attnbench import interrupt, store
    from attnbench.report import ReportError, os_error, report

    check_out_dir("--out", args.out, make=False)  # made by the report once it has its stores
    try:
        with interrupt.keeping(lambda: f"a report is swapped in only when whole: {args.out} holds the previous one"):
            rep = report(args.db or [DEFAULT_DB], args.out, formats=args.formats)
    except (ReportError, store.StoreError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:  # a full disk, a folder that went away, a file unreadable: the previous report stays
        raise UsageError(os_error(e, args.out)) from None
    print(f"wrote {count(len(rep.tables), 'table')} and {count(len(rep.figures), 'figure')} under {args.out} "
          f"(index: {args.out}/README.md)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from attnbench import store
    from attnbench.report import ReportError, summary

    try:
        print(summary(args.db or [DEFAULT_DB], as_markdown=args.markdown, width=args.line_width), end="")
    except (ReportError, store.StoreError) as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from attnbench.profiling import write_profile
    from attnbench.report import os_error

    cases = plan(args)
    check_out_dir("--out", args.out)
    try:
        written = write_profile(cases, args.out, iters=args.iters, top=args.top, formats=args.formats,
                                warn=lambda line: print(line, file=sys.stderr))
    except OSError as e:  # a full disk, a folder that went away: the cases profiled so far are kept
        raise UsageError(os_error(e, args.out)) from None
    return 0 if written else 1


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from attnbench import files, store
    from attnbench.data import DataError
    from attnbench.study import Study, run_study
    from attnbench.train import TrainError

    study = Study(**{f.name: getattr(args, f.name) for f in fields(Study)})
    try:
        diverged = run_study(study, warn=lambda line: print(line, file=sys.stderr))
    except (DataError, TrainError, store.StoreError, files.Unwritable) as e:
        raise UsageError(str(e)) from None
    return 1 if diverged else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from attnbench import store
    from attnbench.data import DataError
    from attnbench.evaluation import describe, evaluate_at_sides, say_verdict
    from attnbench.train import TrainError

    try:
        rows = evaluate_at_sides(args.checkpoint, args.dataset, args.res, on_row=lambda row: print(describe(row)),
                                 **{k: getattr(args, k) for k in ("data_dir", "db", "device", "batch", "model")})
    except (DataError, TrainError, store.StoreError) as e:
        raise UsageError(str(e)) from None
    return say_verdict(rows, args.db)


def build_parser() -> argparse.ArgumentParser:
    from attnbench import __version__

    parser = Parser(prog="attnbench", description="What each attention mechanism costs and what it buys.",
                     epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"attnbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    ls = sub.add_parser("list", help="the variants and networks")
    ls.add_argument("pattern", nargs="?", default="*",
                    help="only the variants and networks whose name (or variant) matches, e.g. 'gsa*' (fnmatch)")
    add_line_width_argument(ls)
    ls.set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="measure a sweep of cases and store the results")
    add_sweep_arguments(run.add_argument_group("sweep", "the cases: what runs, at which sides, batches and dtypes"),
                        scope=Scope.MODEL)
    measure = run.add_argument_group("measurement", "how each case is measured, and which are measured again")
    measure.add_argument("--timeout", type=timeout_s, default=600.0, help="seconds per case")
    measure.add_argument("--min-run-time", type=positive_float, default=0.5, help="seconds of timed runs per case")
    measure.add_argument("--force", action="store_true", help="measure again cases already stored")
    measure.add_argument("--retry-failed", action="store_true",
                         help="measure again stored failures (time-outs given more time and cases that now fit in "
                              "memory are retried without it)")
    measure.add_argument("--max-res", action="store_true",
                         help="find each case's largest side that runs (within --timeout and the device's memory) "
                              "by doubling from 16, then bisection; every side tried is stored")
    storage = run.add_argument_group("storage", "where the results are kept")
    storage.add_argument("--db", default=DEFAULT_DB, help="results store (SQLite)")
    storage.add_argument("--results-file", default=None, metavar="FILE",
                         help="also write the sweep's rows to FILE: .csv, .md or .json (as timm's)")
    storage.add_argument("--results-columns", choices=COLUMN_SETS, default="summary",
                         help="--results-file's columns: summary (network, side, batch, dtype, samples_per_s, "
                              "step_ms, gmacs_per_sample, params, ...) or all (every stored column)")
    launcher = run.add_argument_group("launcher", "the sweep split over machines or a cluster's jobs")
    launcher.add_argument("--shard", type=shard_spec, default=None, help="run slice i of n: i/n")
    launcher.add_argument("--launcher", choices=LAUNCHERS, default=None,
                          help="run the sweep as a submitit job array: slurm, or local (processes here); each task "
                               "runs one shard into its own store, merged into --db when the array finishes (needs "
                               "the [slurm] extra)")
    launcher.add_argument("--jobs", type=positive_int("jobs"), default=None, help="tasks per partition (default 1)")
    launcher.add_argument("--partition", type=split, default=None,
                          help="Slurm partitions, comma-separated: the whole sweep runs on each (e.g. a100,h100)")
    launcher.add_argument("--job-minutes", type=positive_int("job-minutes"), default=60, help="time limit per task")
    launcher.add_argument("--gpus", type=positive_int("gpus"), default=1, help="GPUs per Slurm task")
    output = run.add_argument_group("output", "what is printed")
    printed = output.add_mutually_exclusive_group()  # the rows as JSON, or one metric's grid: not both
    printed.add_argument("--json", action="store_true", help="print the rows as JSON")
    printed.add_argument("--pivot", nargs="?", const="latency", choices=PIVOTS, default=None,
                         help="print one metric as a grid of cases by resolution (latency if none named)")
    add_line_width_argument(output)
    output.add_argument("--quiet", action="store_true",
                        help="no progress on stderr (a bar on a terminal, else a line per finished case)")
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
    tr.add_argument("--width", type=positive_float, default=1.0, help="channel multiplier, e.g. 0.5")
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
                    help="the width giving the parameters (or MACs per image) of --match-to at --width, within 10 %%")
    tr.add_argument("--match-to", default=None, metavar="MODEL",
                    help="the network matched (default: the conv network of the same family, e.g. conv_probe)")
    tr.add_argument("--skip-finished", action="store_true",
                    help="skip the seeds whose run of this setup the store holds to its end (a table in sittings)")
    tr.add_argument("--out", default=None, help="checkpoint folder (default runs/MODEL-DATASET-sSEED, ':' as =3A)")
    tr.add_argument("--db", default=DEFAULT_DB, help="results store for the per-epoch metrics")
    tr.add_argument("--resume", default=None, help="checkpoint to continue from, exactly")
    tr.add_argument("--continue", dest="continue_unfinished", action="store_true",
                    help="continue each seed's unfinished run in --out (and its rate search) from its last epoch")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run's checkpoint in --out (refused otherwise, unless --resume names it)")
    tr.add_argument("--stop-after-epoch", type=positive_int("stop-after-epoch"), default=None,
                    help="stop after this epoch (the schedule still spans --epochs); continue with --resume")
    tr.add_argument("--eval-res", type=positive_ints("resolution"), default=None,
                    help="after training, evaluate each seed's network at these image sides (as `eval --res`)")
    tr.add_argument("--quiet", action="store_true",
                    help="no progress within an epoch (a bar on a terminal, else a line every 100 steps or 10 s)")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a data set's test split, at one side or several")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--dataset", required=True, choices=DATASETS)
    ev.add_argument("--model", default=None, help="the checkpoint's network where it is one of yours (module:callable)")
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
    summ.add_argument("--markdown", action="store_true", help="print Markdown tables (whole, at any width)")
    add_line_width_argument(summ)
    summ.set_defaults(func=cmd_summary)

    export = sub.add_parser("export", help="write a store's measurements (or training runs) as CSV or Markdown")
    export.add_argument("--db", default=DEFAULT_DB)
    export.add_argument("--table", choices=TABLES, default="results",
                        help="results (measured cases), training (training runs: with --columns summary, each run's "
                             "latest epoch; with all, every epoch) or evaluations (trained networks at other sides)")
    export.add_argument("--format", choices=("csv", "md", "json"), default=None,
                        help="csv, md (Markdown) or json; with -o, the file's suffix chooses it (default: csv)")
    export.add_argument("--columns", type=split, default=["all"],
                        help="summary (the columns compared first, as timm's results), all (every stored column), "
                             "or columns of either, comma-separated, in that order (default: all)")
    export.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep the rows where COLUMN=V1,V2 (any of), COLUMN!=V, or COLUMN>=N (also <=, >, <); "
                             "repeat for several, all must hold")
    export.add_argument("-o", "--output", default=None, help="a .csv, .md or .json file (default: stdout)")
    export.set_defaults(func=cmd_export)

    collect = sub.add_parser("collect", help="merge the shard stores of a launched sweep (--launcher) into --db")
    collect.add_argument("--db", default=DEFAULT_DB, help="the store the sweep was launched into")
    collect.set_defaults(func=cmd_collect)

    merge = sub.add_parser("merge", help="merge stores from several machines, without duplicates")
    merge.add_argument("sources", nargs="+")
    merge.add_argument("-o", "--output", required=True)
    merge.set_defaults(func=cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from attnbench import forkserver, interrupt

    plain_streams()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"] and not {"-h", "--help"} & set(argv):
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
