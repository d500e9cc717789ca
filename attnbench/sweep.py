"""Sweeps: the cross product of the user's options, as small frozen cases with stable keys."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch

from attnbench.choices import DTYPES as DTYPE_NAMES
from attnbench.choices import SCOPES  # noqa: F401  (re-exported)
from attnbench.registry import AUTO, get_impl, list_impls, resolve_impl

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

    @property
    def key(self) -> str:
        """Stable identity, the same on every machine and Python version."""
        return "/".join(f"{k}={v}" for k, v in asdict(self).items())

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
) -> list[Case]:
    """Every combination, ordered so that each variant's resolutions run smallest first. ``impls`` as
    :func:`variant_impls` reads them; each is resolved for its device, and duplicates dropped."""
    if scope == "model":
        dims = [0]
    arch = arch if scope == "model" else ""
    chosen = variant_impls(variants, list(impls))
    cases = []
    for dev, v in itertools.product(devices, variants):
        resolved = list(dict.fromkeys(resolve_impl(v, i, dev) for i in chosen[v]))
        cases += [
            Case(scope, v, arch, r, b, d, dt, dev, m, threads, i)
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


def shard(cases: list[Case], index: int, count: int) -> list[Case]:
    """The ``index``-th (1-based) of ``count`` deterministic slices: every ``count``-th case from ``index``."""
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"Invalid shard {index}/{count}: the shard must be i/n with 1 <= i <= n.")
    return [c for i, c in enumerate(cases) if i % count == index - 1]
