"""The command line's vocabulary: argument types that validate and explain, a parser whose every error is
one line, the options that describe a sweep (the same for every command that takes one), and the checks
made before any work is done. ``UsageError`` is bad command-line input; ``attnbench.cli`` prints its
message as one line and exits with code 2.

The numerical stack loads only inside the types that need it, so that ``attnbench --help`` answers at once.
"""

from __future__ import annotations

import argparse
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from attnbench.choices import (
    AMP_DTYPES,
    COMPILE_MODES,
    DEFAULT_RES,
    DTYPES,
    FIGURE_FORMATS,
    FORMATS,
    MODES,
    SCOPES,
    SWEEP_DEFAULTS,
    unknown_name_message,
)


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):  # every command's --help shows the defaults
        kwargs.setdefault("formatter_class", Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2
        if message.startswith("unrecognized arguments"):
            message += " (options take one word: lists are comma-separated, e.g. --batch 1,8)"
        raise UsageError(f"{self.prog}: {message}")


class Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (unless the help says its own); the examples of the epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        shown = default is not None and default is not False and default not in ("", [], argparse.SUPPRESS)
        if "default" in text or not shown:
            return text
        return f"{text} (default: {','.join(map(str, default)) if isinstance(default, list) else default})"



# ---- argument types: each validates and explains -------------------------------------------------


def split(text: str) -> list[str]:
    """A comma-separated list, each item once, in order."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"'{text}' has an empty item; give a comma-separated list")
    return list(dict.fromkeys(items))


def _storable(name: str, value: int) -> int:
    from attnbench.record import INTEGER_MAX

    if value > INTEGER_MAX:
        raise argparse.ArgumentTypeError(f"{name} {value} is more than a store holds (at most 2^63 - 1)")
    return value


def positive_ints(name: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        values = []
        for item in split(text):
            try:
                value = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name} '{item}' is not a whole number") from None
            if value < 1:
                raise argparse.ArgumentTypeError(f"{name} {value} must be at least 1")
            values.append(_storable(name, value))
        return list(dict.fromkeys(values))

    return parse


def non_negative_ints(name: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(item) for item in split(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}s '{text}' are not whole numbers") from None
        if min(values) < 0:
            raise argparse.ArgumentTypeError(f"{name} {min(values)} must be at least 0")
        return list(dict.fromkeys(_storable(name, value) for value in values))

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

    names = split(text)
    for name in names:
        if name not in list_variants():
            raise argparse.ArgumentTypeError(unknown_name_message("variant", name, list_variants()))
    return names


def choice_list(name: str, choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = split(text)
        for item in items:
            if item not in choices:
                raise argparse.ArgumentTypeError(unknown_name_message(name, item, list(choices)))
        return items

    return parse


def device_list(text: str) -> list[str]:
    import torch

    from attnbench.env import parse_device

    devices = []
    for item in split(text):
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
            return list(dict.fromkeys(positive_float(item) for item in split(text)))
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



# ---- checks made before any work ---------------------------------------------------------------------


def check_db(path: str) -> None:
    """The store opens for writing, before any work is done."""
    from attnbench import store

    try:
        store.check_writable(path)
    except store.StoreError as e:
        raise UsageError(str(e)) from None


def check_out_dir(option: str, path: str, *, make: bool = True) -> None:
    """An output folder that exists as one, or can be made (here, unless ``make`` is false), and can be written,
    before any work is done."""
    from attnbench import files

    try:
        files.check_folder(option, path, make=make)
    except files.Unwritable as e:
        raise UsageError(str(e)) from None


def results_file(text: str) -> str:
    """``--results-file``, checked before the sweep: a .csv, .md or .json name (``EXPORT_FORMATS``), its ``..``
    resolved (no folder is made that the path only passes through), its folder made, and a trial write
    (:func:`files.trial`)."""
    from attnbench import files
    from attnbench.columns import export_format

    try:
        export_format(text)
    except ValueError as e:
        raise UsageError(f"--results-file: {e}") from None
    path = Path(text).resolve()
    check_out_dir("--results-file's folder", str(path.parent))
    try:
        files.trial(path)
    except OSError as e:
        raise UsageError(f"cannot write --results-file {text}: {e.strerror or e}.") from None
    return str(path)


def _not_a_store(path: str) -> None:
    """A store is never replaced by a file written at ``path``."""
    from attnbench import store

    if store.is_store(path):
        raise UsageError(f"cannot write {path}: it is a results store, which this never replaces; name another file.")


def output_format(path: str | None, given: str | None = None) -> str:
    """The format of an export to ``path`` (stdout: None) by the file's name (see
    :func:`attnbench.columns.export_format`); a store there is refused first, as :func:`write_text` refuses it."""
    from attnbench.columns import export_format

    if path is not None:
        _not_a_store(path)
        if Path(path).is_dir():
            raise UsageError(f"cannot write {path}: Is a directory.")
    try:
        return export_format(path, given)
    except ValueError as e:
        raise UsageError(str(e)) from None


def write_text(path: str, text: str) -> None:
    """``text`` into the file ``path`` (whole, or the previous file left as it was), with a one-line error
    when that is not possible. A store there is never replaced (``export -o`` naming its own store wrote the
    CSV over every row)."""
    from attnbench import files

    _not_a_store(path)
    try:
        files.write_text(path, text)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}.") from None



def sweep_fields(args: argparse.Namespace) -> dict:
    """The sweep the arguments describe (see :func:`add_sweep_arguments`), as ``Sweep``'s fields."""
    from dataclasses import fields

    from attnbench.sweep import Sweep

    return {f.name: getattr(args, f.name) for f in fields(Sweep) if hasattr(args, f.name)}


def plan(args: argparse.Namespace) -> list:
    """The cases of the sweep the arguments describe."""
    from attnbench.sweep import Sweep

    try:
        return Sweep(**sweep_fields(args)).cases()
    except ValueError as e:
        raise UsageError(str(e)) from None


# ---- options shared by commands ------------------------------------------------------------------


def add_sweep_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, scope: str) -> None:
    """The options that define a sweep's cases, the same for every command that takes a sweep."""
    p.add_argument("--variants", type=variant_list, default=None, help="comma-separated (default: all)")
    p.add_argument("--scope", choices=SCOPES, default=scope,
                   help="model: each variant's network at image side --res; module: the variant alone")
    p.add_argument("--arch", default=SWEEP_DEFAULTS["arch"],
                   help="the variants' networks at model scope: resnet26/38/50/101, or probe (two blocks at full "
                        "resolution)")
    p.add_argument("--model", type=split, default=None, metavar="NAME[,NAME...]",
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
    p.add_argument("--impl", type=split, default=list(SWEEP_DEFAULTS["impl"]),
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


def add_line_width_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--line-width``: the terminal's width (``COLUMNS`` where set) unless given, 100 off a terminal."""
    p.add_argument("--line-width", type=positive_int("line-width"), default=shutil.get_terminal_size((100, 1)).columns,
                   help="characters per printed line; wider tables are printed in blocks of columns, each "
                        "repeating the row's key (default: the terminal's width, 100 off a terminal)")


def add_formats_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", type=choice_list("format", FORMATS), default=list(FIGURE_FORMATS),
                   help=f"figure files, comma-separated: {', '.join(FORMATS)}")
