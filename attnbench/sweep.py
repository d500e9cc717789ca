"""Sweeps: the cross product of the user's options, as small frozen cases with stable keys."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch

from attnbench.choices import DTYPES as DTYPE_NAMES
from attnbench.choices import SCOPES  # noqa: F401  (re-exported)
from attnbench.registry import AUTO, get_impl, get_variant_spec, list_impls, resolve_impl

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16)))


@dataclass(frozen=True, order=True)
class Case:
    """One point of a sweep.

    At ``module`` scope a variant runs alone on a ``dim`` x ``res`` x ``res`` feature map; at
    ``model`` scope ``variant`` stands for its network of depth ``arch`` (``gsa`` with
    ``resnet50`` is ``gsa_resnet50``) on ``res`` x ``res`` images, and ``dim`` is unused (0).
    """

    scope: str
    variant: str
    arch: str  # network depth at model scope ("resnet50"), "" at module scope
    res: int  # feature-map side (module) or image side (model), pixels
    batch: int
    dim: int  # channels at module scope, 0 at model scope
    dtype: str  # fp32 | bf16 | fp16
    device: str  # cpu | cuda:N
    mode: str  # infer | train
    threads: int  # intra-op CPU threads
    impl: str  # the variant's implementation, resolved for the device
    options: str = ""  # the variant's options set by the sweep, "key=value,..." sorted ("" for none)

    @property
    def key(self) -> str:
        """Stable identity, the same on every machine and Python version (default options unnamed)."""
        return "/".join(f"{k}={v}" for k, v in asdict(self).items() if k != "options" or v)

    @property
    def variant_options(self) -> dict[str, object]:
        """The options as values: what ``build_variant`` takes."""
        return self.parse_options(self.options)

    @staticmethod
    def parse_options(text: str) -> dict[str, object]:
        """``"key=value,..."`` as values."""
        return dict(parse_option(item) for item in text.split(",")) if text else {}

    @property
    def label(self) -> str:
        what = self.variant if self.scope == "module" else f"{self.variant}:{self.arch}"
        return f"{what} res={self.res} b={self.batch} {self.dtype} {self.device} {self.mode}"


def expand(
    *,
    variants: list[str],
    res: list[int],
    batch: list[int],
    dims: list[int],
    dtypes: list[str],
    devices: list[str],
    modes: list[str],
    scope: str,
    arch: str,
    threads: int,
    impls: list[str] = (AUTO,),
    options: dict[str, str] | None = None,
) -> list[Case]:
    """Every combination, ordered so that each variant's resolutions run smallest first. ``impls`` as
    :func:`variant_impls` reads them; each is resolved for its device, and duplicates dropped.
    ``options``: each variant's options as :func:`variant_options` spells them (none: the defaults)."""
    if scope == "model":
        dims = [0]
    arch = arch if scope == "model" else ""
    chosen = variant_impls(variants, list(impls))
    opts = options or {}
    cases = []
    for dev, v in itertools.product(devices, variants):
        resolved = list(dict.fromkeys(resolve_impl(v, i, dev) for i in chosen[v]))
        cases += [
            Case(scope, v, arch, r, b, d, dt, dev, m, threads, i, opts.get(v, ""))
            for dt, m, i, d, b, r in itertools.product(dtypes, modes, resolved, dims, batch, sorted(res))
        ]
    return cases


def variant_impls(variants: list[str], impls: list[str]) -> dict[str, list[str]]:
    """Which implementations each variant runs: ``VARIANT=NAME`` names one for a variant, a bare ``NAME``
    applies to every variant that has it (``auto`` to all), and a variant named by none runs ``auto``.
    ``ValueError`` for an item that no variant of the sweep has, or a malformed one."""
    chosen: dict[str, list[str]] = {v: [] for v in variants}
    for item in impls:
        variant, _, name = item.rpartition("=")
        if variant:
            if variant not in chosen:
                raise ValueError(f"Invalid --impl {item}: '{variant}' is not a variant of this sweep "
                                 f"({', '.join(variants)}).")
            get_impl(variant, name)
            chosen[variant].append(name)
            continue
        takers = [v for v in variants if name == AUTO or name in list_impls(v)]
        if not takers:
            options = sorted({i for v in variants for i in list_impls(v)})
            raise ValueError(f"Invalid --impl {name}: no variant of this sweep has it (implementations: "
                             f"{', '.join([AUTO, *options])}).")
        for v in takers:
            chosen[v].append(name)
    return {v: names or [AUTO] for v, names in chosen.items()}


SWEEP_SET = ("dim", "size", "stride")  # options the sweep itself sets


def parse_option(item: str) -> tuple[str, object]:
    """``key=value`` with the value read by :func:`parse_value`."""
    key, _, text = item.partition("=")
    return key, parse_value(text)


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
        if key in SWEEP_SET:
            raise ValueError(f"Invalid --opt {item}: {key} is set by the sweep (--dim, --res, the network).")
        if target and target not in chosen:
            raise ValueError(f"Invalid --opt {item}: '{target}' is not a variant of this sweep "
                             f"({', '.join(variants)}).")
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
