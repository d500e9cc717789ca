"""What ``attnbench list`` prints: the variants (each with its paper, the options ``--opt`` sets and its
implementations, marked where ``auto`` picks them) and the registered networks, those whose name (or whose
variant's name) matches an fnmatch pattern, in lines of at most ``width`` characters."""

from __future__ import annotations

import fnmatch
import textwrap

from attnbench.choices import SWEEP_SET
from attnbench.models import get_model_spec, list_models
from attnbench.registry import NoImplementationError, get_impl, iter_specs, list_impls, resolve_impl

INDENT = 4  # a variant's details, under its name


def _wrapped(text: str, width: int, indent: int, hang: int = 0) -> list[str]:
    """``text`` in lines of at most ``width`` characters, indented by ``indent`` (and ``hang`` more after the
    first)."""
    return textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * (indent + hang),
                         break_on_hyphens=False) or [" " * indent]


def _auto(variant: str, device: str) -> str | None:
    """What ``auto`` runs for a forward pass in float32 on this device type; None where no implementation can."""
    try:
        return resolve_impl(variant, "auto", device)
    except NoImplementationError:
        return None


def catalog(pattern: str = "*", width: int = 100) -> list[str]:
    """The lines of ``attnbench list PATTERN``; empty where nothing matches."""
    lines: list[str] = []
    specs = [s for s in iter_specs() if fnmatch.fnmatch(s.name, pattern)]
    if specs:
        lines.append("Variants (--variants; options: --opt KEY=VALUE; implementations: --impl):")
    for spec in specs:
        lines += _wrapped(f"{spec.name}: {spec.description}", width, 2, INDENT - 2)
        lines += _wrapped(f"{spec.paper} (arXiv {spec.arxiv})", width, INDENT, 2)
        options = [o for o in spec.options() if o not in SWEEP_SET]
        lines += _wrapped(f"options: {', '.join(options) or 'none'}", width, INDENT, 2)
        auto = {d: _auto(spec.name, d) for d in ("cpu", "cuda")}
        for name in list_impls(spec.name):
            runs = [d for d, chosen in auto.items() if chosen == name]
            tag = f" [auto on {', '.join(runs)}]" if runs else ""
            lines += _wrapped(f"impl {name}{tag}: {get_impl(spec.name, name).description}", width, INDENT, 2)
    names = [n for n in list_models() if fnmatch.fnmatch(n, pattern)
             or fnmatch.fnmatch(get_model_spec(n).variant or "", pattern)]
    if names:
        lines += [""] * bool(lines) + ["Networks (--model; also timm:NAME and package.module:callable):"]
        column = max(map(len, names)) + 2
        per_line = max(1, (width - 2) // column)
        for i in range(0, len(names), per_line):
            lines.append(("  " + "".join(f"{n:{column}}" for n in names[i: i + per_line])).rstrip())
    return lines
