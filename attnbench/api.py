"""The Python entry points behind the command line: ``plan`` and ``run`` a sweep, read its results back."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from attnbench import store
from attnbench.choices import DEFAULT_DB, Status
from attnbench.harness import MIN_RUN_TIME_S, case_environment, run_cases
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
    envs = {c: case_environment(c).key for c in cases if c.key not in fresh}
    stored = store.load_results(db, env_keys=set(envs.values())) if envs and os.path.exists(db) else None
    held = {} if stored is None else {(row["case_key"], row["env_key"]): row for row in stored.to_dict("records")}
    rows = [fresh.get(c.key) or held.get((c.key, envs.get(c))) for c in cases]
    return pd.DataFrame([row for row in rows if row is not None], columns=store.NAMES)


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

    Cases run in worker processes (see :mod:`attnbench.harness`); cases already stored for this
    environment are not run again unless ``force``, except failures that may now succeed (a time-out
    given more time, a case that now fits in memory; all failures with ``retry_failed``).
    """
    cases = plan(**sweep) if cases is None else list(cases)
    records = run_cases(cases, db, timeout=timeout, min_run_time=min_run_time, force=force,
                        retry_failed=retry_failed, on_case=on_case)
    return results_for(db, cases, records)


MAX_RES_START = 16  # the first side --max-res tries; it doubles from there until a case fails
MAX_RES_LIMIT = 1 << 16  # and never beyond this side


@dataclass(frozen=True)
class Largest:
    """What ``max_res`` found for one case (its ``res`` aside): the largest side that ran, and the
    first that did not (one pixel more, or the smallest side tried) with its status."""

    case: Case
    largest: int | None  # None: not even the smallest side ran
    failed: int
    status: str


def max_res(*, db: str = DEFAULT_DB, timeout: float = 600, min_run_time: float = MIN_RUN_TIME_S,
            on_case: Callable[[Case, Record | None], None] | None = None, **sweep) -> list[Largest]:
    """For each case of the sweep but its resolution, the largest side that runs on the device, found by
    doubling from ``MAX_RES_START`` until a case fails, then bisecting to one pixel. Every probe is an
    ordinary case: predicted first (a case predicted not to fit is skipped at once), then run, and stored,
    so the report's largest-fit table is exact and a second search reuses what the first measured."""
    if sweep.pop("res", None):
        raise ValueError("--max-res finds the resolution: leave out --res.")
    templates = plan(**sweep, res=[1])

    def status(case: Case) -> str:
        fresh = run_cases([case], db, timeout=timeout, min_run_time=min_run_time, on_case=on_case)
        if fresh:
            return fresh[0].measurement.status
        return store.stored_cases(db, case_environment(case).key)[case.key]["status"]

    return [_largest(t, lambda side, t=t: status(replace(t, res=side))) for t in templates]


def _largest(template: Case, status: Callable[[int], str]) -> Largest:
    """Double from ``MAX_RES_START`` until a side fails, then bisect between the last that ran and it."""
    ran, side = 0, MAX_RES_START
    while side <= MAX_RES_LIMIT:
        got = status(side)
        if got != Status.OK:
            break
        ran, side = side, 2 * side
    else:
        return Largest(template, ran, side, "beyond the search limit")
    failed = side
    while failed - ran > 1:
        mid = (ran + failed) // 2
        mid_status = status(mid)
        if mid_status == Status.OK:
            ran = mid
        else:
            failed, got = mid, mid_status
    return Largest(template, ran or None, failed, got)


def load_results(db: str = DEFAULT_DB) -> pd.DataFrame:
    """Every row of a results store."""
    return store.load_results(db)
