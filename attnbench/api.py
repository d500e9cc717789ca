"""The Python entry points behind the command line: ``run`` a sweep, read its results back."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from attnbench import store
from attnbench.choices import DEFAULT_DB, DEFAULT_RES
from attnbench.env import env_key, environment
from attnbench.harness import MIN_RUN_TIME_S, run_cases
from attnbench.models import list_models
from attnbench.registry import get_variant_spec, list_variants, unknown_name_message
from attnbench.sweep import SCOPES, Case, expand, shard, variant_options

MAX_THREADS_PER_CORE = 4  # more intra-op threads than this crash OpenMP runtimes, and never help


def default_devices() -> list[str]:
    """Every CUDA device present, else the CPU."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def default_threads() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def plan(
    *,
    variants: Sequence[str] | None = None,
    res: Sequence[int] | None = None,
    batch: Sequence[int] = (1,),
    dim: Sequence[int] = (64,),
    dtype: Sequence[str] = ("fp32",),
    device: Sequence[str] | None = None,
    mode: Sequence[str] = ("infer",),
    scope: str = "model",
    arch: str = "resnet50",
    threads: int | None = None,
    impl: Sequence[str] = ("auto",),
    opt: Sequence[str] = (),
    shard_spec: tuple[int, int] | None = None,
) -> list[Case]:
    """The cases of a sweep (one shard of it, with ``shard_spec=(i, n)``). ``res`` defaults to 224 at
    model scope and 56 at module scope.

    ``impl``: which implementations run (see :func:`attnbench.sweep.variant_impls`): ``auto`` (each
    variant's choice for the device), a name such as ``plain`` for every variant that has it, or
    ``VARIANT=NAME``; several sweep them side by side. ``opt``: variant options, ``KEY=VALUE`` for every
    variant that has the option or ``VARIANT.KEY=VALUE`` (see :func:`attnbench.sweep.variant_options`).
    """
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}. Available: {', '.join(SCOPES)}.")
    if scope == "module" and arch != "resnet50":
        raise ValueError("--arch applies to --scope model only")
    if scope == "model":
        archs = sorted({m[len("conv_"):] for m in list_models() if m.startswith("conv_")})
        if arch not in archs:
            raise ValueError("--arch: " + unknown_name_message("architecture", arch, archs))
    options = variant_options(list(variants or list_variants()), list(opt))
    for v in variants or list_variants():
        # module scope: each --dim; model scope: the narrowest bottleneck width, of which the others are multiples
        for d in dim if scope == "module" else [64]:
            try:
                get_variant_spec(v).make_config(d, **Case.parse_options(options[v]))
            except (ValueError, TypeError) as e:
                what = f"--dim {d}" if scope == "module" else "--opt"
                raise ValueError(f"{what} for variant '{v}': {e}") from None
    if threads is not None and not 1 <= threads <= MAX_THREADS_PER_CORE * (os.cpu_count() or 1):
        raise ValueError(f"Invalid threads={threads}: at most {MAX_THREADS_PER_CORE} per core, "
                         f"{MAX_THREADS_PER_CORE * (os.cpu_count() or 1)} on this machine.")
    cases = expand(
        variants=list(variants or list_variants()), res=list(res or [DEFAULT_RES[scope]]), batch=list(batch),
        dims=list(dim), dtypes=list(dtype), devices=list(device or default_devices()), modes=list(mode), scope=scope,
        arch=arch, threads=threads or default_threads(), impls=list(impl), options=options,
    )
    return shard(cases, *shard_spec) if shard_spec else cases


def results_for(db: str, cases: Sequence[Case]) -> pd.DataFrame:
    """The stored rows of ``cases`` for this machine's environment, in the cases' order."""
    if not cases or not os.path.exists(db):
        return pd.DataFrame(columns=store.NAMES)
    frame = store.load_results(db)
    envs = {c.device: env_key(environment(c.device)) for c in cases}
    order = {c.key: i for i, c in enumerate(cases)}
    keep = frame[[order.get(k) is not None and envs.get(d) == e
                  for k, d, e in zip(frame.case_key, frame.device, frame.env_key)]]
    return keep.sort_values("case_key", key=lambda s: s.map(order)).reset_index(drop=True)


def run(
    *,
    db: str = DEFAULT_DB,
    timeout: float = 600,
    min_run_time: float = MIN_RUN_TIME_S,
    force: bool = False,
    retry_failed: bool = False,
    on_case: Callable[[Case, dict | None], None] | None = None,
    **sweep,
) -> pd.DataFrame:
    """Run a sweep (see :func:`plan` for its options) and return its rows, stored ones included.

    Every case runs in its own process; cases already stored for this environment are not run
    again unless ``force``, except failures that may now succeed (a time-out given more time, a case
    that now fits in memory; all failures with ``retry_failed``).
    """
    cases = plan(**sweep)
    run_cases(cases, db, timeout=timeout, min_run_time=min_run_time, force=force, retry_failed=retry_failed,
              on_case=on_case)
    return results_for(db, cases)


def load_results(db: str = DEFAULT_DB) -> pd.DataFrame:
    """Every row of a results store."""
    return store.load_results(db)
