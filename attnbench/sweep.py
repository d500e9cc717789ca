"""Sweeps: one spec (:class:`Sweep`) owns a sweep's defaults and checks, for the command line and the
Python API alike, and expands into the cross product of its options as small frozen cases with stable keys."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from attnbench.choices import (
    AMP_DTYPES,
    COMPILE_MODES,
    DEFAULT_RES,
    MODES,
    SCOPES,
    SWEEP_DEFAULTS,
    SWEEP_SET,
    Scope,
    torch_dtype,
    unknown_name_message,
)
from attnbench.choices import DTYPES as DTYPE_NAMES
from attnbench.record import Case, parse_options, parse_value
from attnbench.registry import (
    AUTO,
    NoImplementationError,
    get_impl,
    get_variant_spec,
    list_impls,
    list_variants,
    resolve_impl,
)


@dataclass(frozen=True)
class Subject:
    """What a sweep measures at one point: a variant alone (module scope; ``model`` "") or a network, with
    the variant in its attention slot ("" for a network from elsewhere) and its architecture."""

    variant: str
    arch: str = ""
    model: str = ""


def expand(
    *,
    subjects: list[Subject],
    res: list[int],
    batch: list[int],
    dims: list[int],
    dtypes: list[str],
    devices: list[str],
    modes: list[str],
    scope: str,
    threads: int,
    impls: list[str] = (AUTO,),
    options: dict[str, str] | None = None,
    amp: str = "",
    channels_last: bool = False,
    compile: str = "",
    widths: list[float] = (1.0,),
) -> list[Case]:
    """Every combination, ordered so that each subject's resolutions run smallest first. ``impls`` as
    :func:`variant_impls` reads them, for the subjects' variants; each is resolved for its case
    (:func:`planned_impl`), and duplicates dropped. ``options``: each variant's options as
    :func:`variant_options` spells them (none: the defaults). ``amp``, ``channels_last``, ``compile``: set on
    every case (see :class:`attnbench.record.Case`)."""
    if scope == Scope.MODEL:
        dims = [0]
    variants = list(dict.fromkeys(s.variant for s in subjects if s.variant))
    chosen = variant_impls(variants, list(impls))
    opts = options or {}
    cases = []
    for dev, s in itertools.product(devices, subjects):
        cases += [
            Case(scope, s.variant, s.arch, r, b, d, dt, dev, m, threads,
                 planned_impl(s.variant, i, dev, dt, m, (b, d, r, r) if scope == Scope.MODULE else None),
                 opts.get(s.variant, ""), amp, channels_last, compile, s.model, w)
            for dt, m, i, d, w, b, r in itertools.product(dtypes, modes, chosen.get(s.variant, [""]), dims, widths,
                                                          batch, sorted(res))
        ]
    return list(dict.fromkeys(cases))  # a value given twice (--res 16,16), or two names of one implementation


def planned_impl(variant: str, impl: str, device: str, dtype: str, mode: str, shape: tuple[int, ...] | None) -> str:
    """``impl`` of ``variant`` as a case runs it: ``auto`` chosen for the case's inputs (a module's ``shape``; a
    network's layers see theirs later), and kept as ``auto`` where no implementation can run them (the case is
    then skipped, saying every implementation's reasons). A network from elsewhere has none: ""."""
    if not variant:
        return ""
    try:
        return resolve_impl(variant, impl, device, dtype=torch_dtype(dtype), grad=mode == "train", shape=shape)
    except NoImplementationError:
        return AUTO


def not_in_sweep(flag: str, item: str, variant: str, variants: list[str]) -> str:
    """The refusal of ``flag``'s ``item`` that names ``variant``, which is not among the sweep's ``variants``."""
    those = ", ".join(variants) or "it has none: its networks come from elsewhere"
    return f"Invalid {flag} {item}: '{variant}' is not a variant of this sweep ({those})."


def variant_impls(variants: list[str], impls: list[str]) -> dict[str, list[str]]:
    """Which implementations each variant runs: ``VARIANT=NAME`` names one for a variant, a bare ``NAME``
    applies to every variant that has it (``auto`` to all), and a variant named by none runs ``auto``.
    ``ValueError`` for an item that no variant of the sweep has, or a malformed one."""
    chosen: dict[str, list[str]] = {v: [] for v in variants}
    for item in impls:
        variant, _, name = item.rpartition("=")
        if variant:
            if variant not in chosen:
                raise ValueError(not_in_sweep("--impl", item, variant, variants))
            get_impl(variant, name)
            chosen[variant].append(name)
            continue
        takers = [v for v in variants if name == AUTO or name in list_impls(v)]
        if not takers and name != AUTO:
            options = sorted({i for v in variants for i in list_impls(v)})
            raise ValueError(f"Invalid --impl {name}: no variant of this sweep has it (implementations: "
                             f"{', '.join([AUTO, *options])}).")
        for v in takers:
            chosen[v].append(name)
    return {v: names or [AUTO] for v, names in chosen.items()}




def variant_options(variants: list[str], options: list[str]) -> dict[str, str]:
    """Each variant's options as its cases spell them: ``KEY=VALUE`` applies to every variant that has the
    option, ``VARIANT.KEY=VALUE`` to one. ``ValueError`` for a malformed item, an option that no variant
    of the sweep has, or one the sweep sets itself; the values are checked by each variant's config
    when the sweep is planned (:func:`attnbench.api.plan`)."""
    chosen: dict[str, dict[str, object]] = {v: {} for v in variants}
    for item in options:
        lhs, eq, text = item.partition("=")
        target, _, key = lhs.rpartition(".")
        if not eq or not key:
            raise ValueError(f"Invalid --opt {item}: options are KEY=VALUE (or VARIANT.KEY=VALUE).")
        if not text:
            raise ValueError(f"Invalid --opt {item}: give {key} a value (KEY=VALUE).")
        if key in SWEEP_SET:
            raise ValueError(f"Invalid --opt {item}: {key} is set by the sweep (--dim, --res, the network).")
        if target and target not in chosen:
            raise ValueError(not_in_sweep("--opt", item, target, variants))
        takers = [v for v in ([target] if target else variants) if key in get_variant_spec(v).options()]
        if not takers:
            raise ValueError(f"Invalid --opt {item}: no variant of this sweep has an option '{key}'.")
        for v in takers:
            chosen[v][key] = parse_value(text)
    return {v: ",".join(f"{k}={opts[k]}" for k in sorted(opts)) for v, opts in chosen.items()}


def shard(cases: list[Case], index: int, count: int) -> list[Case]:
    """The ``index``-th (1-based) of ``count`` deterministic slices: every ``count``-th case from ``index``."""
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"Invalid shard {index}/{count}: the shard must be i/n with 1 <= i <= n.")
    return [c for i, c in enumerate(cases) if i % count == index - 1]


MAX_THREADS_PER_CORE = 4  # more intra-op threads than this crash OpenMP runtimes, and never help


def default_devices() -> list[str]:
    """Every CUDA device present, else the CPU."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def default_threads() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Sweep:
    """A sweep as the user gives it; :meth:`cases` checks it and expands it. None means the default:
    every variant (unless ``model`` names networks), every GPU (else the CPU), all cores, and ``res`` 224 at
    model scope, 56 at module scope.

    At model scope, ``variants`` stand for their networks of the architecture ``arch`` (``gsa`` with
    ``resnet50``: ``gsa_resnet50``), and ``model`` names networks directly: registered ones
    (``botnet50``), ``timm:NAME`` or ``package.module:callable`` (see :mod:`attnbench.models.registry`);
    both may be given. ``width``: channel multipliers of attnbench's networks.
    ``impl``: which implementations run (see :func:`variant_impls`): ``auto`` (each variant's choice for
    the device), a name such as ``plain`` for every variant that has it, or ``VARIANT=NAME``; several
    sweep them side by side. ``opt``: variant options, ``KEY=VALUE`` for every variant that has the
    option or ``VARIANT.KEY=VALUE`` (see :func:`variant_options`). ``amp`` (``bf16`` or ``fp16``: autocast
    over weights kept in ``dtype``), ``channels_last`` and ``compile`` (a ``torch.compile`` mode) as timm's
    benchmark spells them. ``shard=(i, n)``: the i-th of n slices.
    """

    variants: Sequence[str] | None = None
    res: Sequence[int] | None = None
    batch: Sequence[int] = SWEEP_DEFAULTS["batch"]
    dim: Sequence[int] = SWEEP_DEFAULTS["dim"]
    dtype: Sequence[str] = SWEEP_DEFAULTS["dtype"]
    device: Sequence[str] | None = None
    mode: Sequence[str] = SWEEP_DEFAULTS["mode"]
    scope: str = Scope.MODEL
    arch: str = SWEEP_DEFAULTS["arch"]
    threads: int | None = None
    impl: Sequence[str] = SWEEP_DEFAULTS["impl"]
    opt: Sequence[str] = ()
    amp: str = ""
    channels_last: bool = False
    compile: str = ""
    shard: tuple[int, int] | None = None
    model: Sequence[str] | None = None
    width: Sequence[float] = SWEEP_DEFAULTS["width"]

    def __post_init__(self) -> None:
        """A lone item where a list is expected (``model="timm:resnet50"``, ``res=224``) is that one item: a
        string was read letter by letter ("Unknown model 'm'") and a number raised TypeError."""
        for f in fields(self):
            value = getattr(self, f.name)
            if "Sequence" in str(f.type) and isinstance(value, str | int | float):
                object.__setattr__(self, f.name, (value,))

    def subjects(self) -> list[Subject]:
        """What the sweep measures: its variants (module scope), or its networks (model scope)."""
        from attnbench.models import UnknownModelError, get_model_spec, list_archs, model_spec_for
        from attnbench.models.registry import NotAModuleError

        if self.scope not in SCOPES:
            raise ValueError(f"Unknown scope {self.scope!r}. Available: {', '.join(SCOPES)}.")
        for name in self.variants or ():
            if name not in list_variants():
                raise ValueError(unknown_name_message("variant", name, list_variants()))
        if self.scope == Scope.MODULE:
            for name, given in (("arch", self.arch != SWEEP_DEFAULTS["arch"]), ("model", bool(self.model)),
                                ("width", tuple(self.width) != SWEEP_DEFAULTS["width"])):
                if given:
                    raise ValueError(f"--{name} applies to --scope model only")
            return [Subject(v) for v in self.variants or list_variants()]
        if self.arch not in list_archs():
            raise ValueError("--arch: " + unknown_name_message("architecture", self.arch, list_archs()))
        if self.model and not self.variants and self.arch != SWEEP_DEFAULTS["arch"]:
            raise ValueError("--arch applies to --variants (--model names whole networks)")
        try:
            specs = [model_spec_for(v, self.arch) for v in self.variants or ([] if self.model else list_variants())]
            specs += [get_model_spec(name) for name in self.model or ()]
            for spec in specs:
                spec.check_reachable()
        except UnknownModelError as e:
            raise ValueError(f"--model: {e}") from None
        for spec in specs:  # a user's builder that returns no nn.Module is refused before anything runs
            try:
                spec.check_builds(max(self.res or [DEFAULT_RES[self.scope]]))
            except NotAModuleError as e:
                raise ValueError(f"--model: {e}") from None
        foreign = [s.name for s in specs if s.foreign]
        if foreign and tuple(self.width) != SWEEP_DEFAULTS["width"]:
            raise ValueError(f"--width applies to attnbench's networks; {foreign[0]} has no channel multiplier")
        specs = list({s.name: s for s in specs}.values())
        return [Subject(s.variant, s.arch, s.name) for s in specs]

    def cases(self) -> list[Case]:
        """The sweep's cases (its shard's); ``ValueError`` with a one-line reason for anything invalid."""
        from attnbench.models import get_model_spec
        from attnbench.models.registry import check_multiplier

        subjects = self.subjects()
        for name, choices in (("dtype", DTYPE_NAMES), ("mode", MODES)):
            for item in getattr(self, name):
                if item not in choices:
                    raise ValueError(f"--{name}: " + unknown_name_message(name, item, list(choices)))
        for name, value, choices in (("amp", self.amp, AMP_DTYPES), ("compile", self.compile, COMPILE_MODES)):
            if value and value not in choices:
                raise ValueError(f"--{name}: " + unknown_name_message(f"{name} mode", value, list(choices)))
        for name in ("res", "batch", "dim"):
            bad = [v for v in getattr(self, name) or () if not isinstance(v, int) or v < 1]
            if bad:
                raise ValueError(f"Invalid {name}={bad[0]!r}: give whole numbers of at least 1.")
        for w in self.width:
            check_multiplier(w)
        variants = list(dict.fromkeys(s.variant for s in subjects if s.variant))
        options = variant_options(variants, list(self.opt))
        side = max(self.res or [DEFAULT_RES[self.scope]])
        for v in variants:
            spec, given = get_variant_spec(v), parse_options(options[v])
            try:
                spec.config_cls.check_extents(given, side)
            except ValueError as e:
                raise ValueError(f"--opt for variant '{v}': {e}") from None
            for d in self.dim if self.scope == Scope.MODULE else []:
                try:
                    spec.make_config(d, **given)
                except (ValueError, TypeError) as e:
                    raise ValueError(f"--dim {d} for variant '{v}': {e}") from None
        registered = [s for s in subjects if s.model and s.variant]  # networks with a variant: their widths and options
        for s, w in itertools.product(registered, self.width):
            get_model_spec(s.model).check_options(side, parse_options(options[s.variant]), width=float(w))
        most = MAX_THREADS_PER_CORE * (os.cpu_count() or 1)
        if self.threads is not None and not 1 <= self.threads <= most:
            raise ValueError(f"Invalid threads={self.threads}: at most {MAX_THREADS_PER_CORE} per core, "
                             f"{most} on this machine.")
        cases = expand(
            subjects=subjects, res=list(self.res or [DEFAULT_RES[self.scope]]), batch=list(self.batch),
            dims=list(self.dim), dtypes=list(self.dtype), devices=list(self.device or default_devices()),
            modes=list(self.mode), scope=self.scope, threads=self.threads or default_threads(),
            impls=list(self.impl), options=options, amp=self.amp, channels_last=self.channels_last,
            compile=self.compile, widths=[float(w) for w in self.width],
        )
        return shard(cases, *self.shard) if self.shard else cases
