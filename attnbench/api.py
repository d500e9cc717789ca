"""The Python entry points behind the command line: ``plan`` and ``run`` a sweep, read its results back."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pandas as pd

from attnbench import store
from attnbench.choices import DEFAULT_DB
from attnbench.env import environment
from attnbench.harness import MIN_RUN_TIME_S, run_cases
from attnbench.record import Case, Record
from attnbench.sweep import Sweep


def plan(**sweep) -> list[Case]:
    """The cases of a sweep: :class:`attnbench.sweep.Sweep`'s fields as keywords (its defaults where not
    given). ``ValueError`` with a one-line reason for anything invalid."""
    return Sweep(**sweep).cases()


def results_for(db: str, cases: Sequence[Case], records: Sequence[Record] = ()) -> pd.DataFrame:
    """The rows of ``cases``, in their order: ``records`` just measured, and for the others what the store
    holds for this machine's environment (read from the store, only those)."""
    fresh = {r.case.key: r.row() for r in records}
    envs = {c.device: environment(c.device).key for c in cases if c.key not in fresh}
    stored = store.load_results(db, env_keys=set(envs.values())) if envs and os.path.exists(db) else None
    rows = []
    for case in cases:
        if case.key in fresh:
            rows.append(fresh[case.key])
        elif stored is not None:
            match = stored[(stored.case_key == case.key) & (stored.env_key == envs[case.device])]
            rows += match.to_dict("records")
    return pd.DataFrame(rows, columns=store.NAMES)


def run(
    *,
    db: str = DEFAULT_DB,
    timeout: float = 600,
    min_run_time: float = MIN_RUN_TIME_S,
    force: bool = False,
    retry_failed: bool = False,
    on_case: Callable[[Case, Record | None], None] | None = None,
    cases: Sequence[Case] | None = None,
    **sweep,
) -> pd.DataFrame:
    """Run a sweep (its options as :func:`plan` takes them, or its ``cases`` planned already) and return
    its rows, stored ones included.

    Every case runs in its own process; cases already stored for this environment are not run
    again unless ``force``, except failures that may now succeed (a time-out given more time, a case
    that now fits in memory; all failures with ``retry_failed``).
    """
    cases = plan(**sweep) if cases is None else list(cases)
    records = run_cases(cases, db, timeout=timeout, min_run_time=min_run_time, force=force,
                        retry_failed=retry_failed, on_case=on_case)
    return results_for(db, cases, records)


def load_results(db: str = DEFAULT_DB) -> pd.DataFrame:
    """Every row of a results store."""
    return store.load_results(db)
