"""Sweeps beyond one machine, on an existing engine: a Slurm job array through submitit.

``attnbench run ... --launcher slurm --partition P --jobs N`` submits one array of N tasks per
partition; task i plans the sweep on its node (so ``--device`` defaults to the GPUs it was given)
and runs shard i/N into a store of its own, under ``<db stem>-jobs/`` beside ``--db``. When the
arrays finish, the shard stores are merged into ``--db``; ``attnbench collect`` merges whatever
shards exist (after the submitting process was stopped, say). ``--launcher local`` runs the same
tasks as local processes (submitit's local executor): for trying a sweep, and for the tests.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from attnbench import interrupt, store
from attnbench.choices import LAUNCHERS, count
from attnbench.files import safe_name
from attnbench.sweep import Sweep


class LaunchError(Exception):
    """A launch that cannot start or whose tasks failed, with the reason in one line."""


def jobs_folder(db: str | Path) -> Path:
    """Where the shard stores and submitit's logs of a sweep into ``db`` live."""
    db = Path(db)
    return db.with_name(f"{db.stem}-jobs")


def run_shard(sweep: Sweep, index: int, count: int, db: str, run: dict, of_store: str) -> pd.DataFrame:
    """One task: shard ``index`` of ``count`` of ``sweep``, planned here, into ``db``, a shard store of the store
    whose id is ``of_store``. Returns its cases' rows, as ``api.run`` does."""
    from attnbench import api

    cases = dataclasses.replace(sweep, shard=(index, count)).cases()
    store.tie(db, of_store)
    return api.run(cases=cases, db=db, **run)


def executor(launcher: str, folder: Path, *, partition: str | None, timeout_min: int, gpus: int):
    """A submitit executor for ``launcher``; LaunchError when submitit is not installed."""
    try:
        import submitit
    except ImportError:
        raise LaunchError(f"--launcher {launcher} needs submitit: pip install 'attnbench[slurm]'.") from None
    try:
        ex = submitit.AutoExecutor(folder=folder / "logs", cluster="local" if launcher == "local" else "slurm")
    except RuntimeError as e:  # submitit finds no srun: not a Slurm cluster
        raise LaunchError(f"--launcher {launcher} cannot start: {e} (--launcher local runs the tasks here)") from None
    ex.update_parameters(timeout_min=timeout_min, name="attnbench")
    if launcher == "slurm":
        ex.update_parameters(gpus_per_node=gpus, **({"slurm_partition": partition} if partition else {}))
    return ex


@dataclasses.dataclass(frozen=True)
class Collected:
    """What collecting a launched sweep did: the merge of its shard stores, and how many shard stores in its
    jobs folder were left out as another store's (one deleted since, whose path this store took); after a launch,
    the rows its tasks returned (their cases' results, for the sweep's verdict)."""

    merged: store.Merged
    ignored: int
    rows: pd.DataFrame | None = None

    def __str__(self) -> str:
        left = f"; {count(self.ignored, 'shard store')} of another store at this path left out" if self.ignored else ""
        return f"{self.merged}{left}"


def launch(sweep: Sweep, *, db: str | Path, launcher: str, jobs: int, partitions: Sequence[str] = (),
           timeout_min: int = 60, gpus: int = 1, run: dict | None = None) -> Collected:
    """Run ``sweep`` as ``jobs`` tasks per partition (one array each), wait, and merge their stores into ``db``
    (which must exist: its id ties the shard stores to it). Tasks that failed are named in a LaunchError after
    the others' results are merged."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f"Unknown launcher '{launcher}'. Available: {', '.join(LAUNCHERS)}.")
    of_store = store.meta(db, "store_id")
    folder = jobs_folder(db)
    folder.mkdir(parents=True, exist_ok=True)
    submitted = []
    for partition in list(partitions) or [None]:
        ex = executor(launcher, folder, partition=partition, timeout_min=timeout_min, gpus=gpus)
        # named after the store too, so that a store made anew at this path never reuses another's shards
        shards = [str(folder / f"{safe_name(partition or launcher)}-shard-{i}-of-{jobs}-{of_store[:8]}.sqlite")
                  for i in range(1, jobs + 1)]
        array = ex.map_array(run_shard, [sweep] * jobs, range(1, jobs + 1), [jobs] * jobs, shards,
                             [run or {}] * jobs, [of_store] * jobs)
        submitted += [(partition or launcher, i + 1, job) for i, job in enumerate(array)]
    failed, rows = [], []
    try:
        for where, index, job in submitted:
            try:
                rows.append(job.result())
            except Exception as e:  # noqa: BLE001 - one failed task must not lose the others' results
                failed.append(f"{where} task {index} ({job.job_id}): {str(e).strip().splitlines()[-1][:200]}")
    except KeyboardInterrupt as e:  # the tasks end here, and what they finished is merged
        interrupt.end_children()
        try:
            kept = collect(db).merged.added
        except LaunchError:  # no task had made its store
            kept = 0
        raise interrupt.Interrupted(getattr(e, "signum", signal.SIGINT),
                                    f"what its tasks finished is merged into {db} ({count(kept, 'new row')})") from None
    merged = collect(db)
    if failed:
        raise LaunchError(f"{len(failed)} of {count(len(submitted), 'task')} failed (the others are merged into {db}): "
                          + "; ".join(failed))
    return dataclasses.replace(merged, rows=pd.concat(rows, ignore_index=True))


def collect(db: str | Path) -> Collected:
    """Merge the shard stores under ``db``'s jobs folder that belong to ``db`` (their ``shard_of`` is its id)
    into it; those of another store are left out and counted."""
    of_store = store.meta(db, "store_id")
    shards = sorted(jobs_folder(db).glob("*-shard-*.sqlite"))
    ours = [s for s in shards if of_store is not None and store.meta(s, "shard_of") == of_store]
    ignored = len(shards) - len(ours)
    if not ours:
        foreign = f" ({ignored} of another store at that path, ignored)" if ignored else ""
        raise LaunchError(f"No shard stores under {jobs_folder(db)} belong to {db}{foreign}: nothing was launched "
                          "into it.")
    return Collected(store.merge(ours, db), ignored)
