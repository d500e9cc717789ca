"""The results store: one SQLite file, one row per measured case and environment.

Every write is its own transaction, so a run killed at any instant leaves only whole rows; WAL
journaling and a busy timeout let several processes write one store at once. Exports (CSV,
Markdown) and reports are derived from it, never the other way round.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import pandas as pd

SCHEMA_VERSION = 1

# (column, SQL type). Units live in the names.
COLUMNS: list[tuple[str, str]] = [
    ("case_key", "TEXT NOT NULL"),
    ("env_key", "TEXT NOT NULL"),
    ("run_id", "TEXT NOT NULL"),
    ("scope", "TEXT NOT NULL"),
    ("variant", "TEXT NOT NULL"),
    ("arch", "TEXT NOT NULL"),
    ("res", "INTEGER NOT NULL"),
    ("batch", "INTEGER NOT NULL"),
    ("dim", "INTEGER NOT NULL"),
    ("dtype", "TEXT NOT NULL"),
    ("device", "TEXT NOT NULL"),
    ("mode", "TEXT NOT NULL"),
    ("threads", "INTEGER NOT NULL"),
    ("impl", "TEXT"),  # the implementation that ran (see attnbench.list_impls), "auto" resolved
    ("status", "TEXT NOT NULL"),  # ok | skipped | oom | error | timeout
    ("reason", "TEXT"),
    ("params", "INTEGER"),
    ("params_trainable", "INTEGER"),
    ("macs", "INTEGER"),  # per forward pass of the whole batch; one fused multiply-add = 1
    ("macs_counter", "TEXT"),
    ("uncounted_ops", "TEXT"),  # JSON {op: count}
    ("latency_ms_median", "REAL"),
    ("latency_ms_iqr", "REAL"),
    ("latency_runs", "INTEGER"),
    ("latency_noisy", "INTEGER"),
    ("throughput_per_s", "REAL"),
    ("peak_mem_bytes", "INTEGER"),
    ("peak_mem_reserved_bytes", "INTEGER"),
    ("peak_mem_method", "TEXT"),
    ("predicted_mem_bytes", "INTEGER"),
    ("device_peak_gflops", "REAL"),  # matmul rate of the device in this dtype (2 FLOPs per MAC)
    ("host", "TEXT"),
    ("device_name", "TEXT"),
    ("cpu_model", "TEXT"),
    ("gpu_name", "TEXT"),
    ("cpu_count", "INTEGER"),
    ("torch_version", "TEXT"),
    ("cuda_version", "TEXT"),
    ("python_version", "TEXT"),
    ("attnbench_version", "TEXT"),
    ("git_commit", "TEXT"),
    ("created_utc", "TEXT"),
    ("wall_s", "REAL"),
]
NAMES = [c for c, _ in COLUMNS]

# Rows stored before the ``impl`` column were measured with what is now each variant's reference
# implementation: the migration records that.
LEGACY_IMPLS = {"gsa": "pixelmajor", "local": "halo", "axial": "dense", "nonlocal": "sdpa", "conv": "native"}
BACKFILL = {
    ("results", "impl"): "UPDATE results SET impl = CASE variant "
    + " ".join(f"WHEN '{v}' THEN '{i}'" for v, i in LEGACY_IMPLS.items()) + " END",
}

# One row per epoch of a training run (attnbench train).
TRAINING_COLUMNS: list[tuple[str, str]] = [
    ("run_id", "TEXT NOT NULL"),
    ("epoch", "INTEGER NOT NULL"),
    ("epochs", "INTEGER NOT NULL"),
    ("model", "TEXT NOT NULL"),
    ("dataset", "TEXT NOT NULL"),
    ("train_loss", "REAL"),
    ("test_loss", "REAL"),
    ("top1_pct", "REAL"),
    ("top5_pct", "REAL"),
    ("images_per_s", "REAL"),
    ("epoch_s", "REAL"),
    ("params", "INTEGER"),
    ("macs", "INTEGER"),  # per image (batch 1, 32 x 32)
    ("batch", "INTEGER"),
    ("lr", "REAL"),
    ("width", "REAL"),
    ("stem", "TEXT"),
    ("dtype", "TEXT"),
    ("device", "TEXT"),
    ("world_size", "INTEGER"),
    ("seed", "INTEGER"),
    ("host", "TEXT"),
    ("device_name", "TEXT"),
    ("torch_version", "TEXT"),
    ("attnbench_version", "TEXT"),
    ("git_commit", "TEXT"),
    ("created_utc", "TEXT"),
]
TRAINING_NAMES = [c for c, _ in TRAINING_COLUMNS]


class StoreError(Exception):
    """A store that cannot be opened, read or written, with the reason in one line."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)  # explicit transactions only
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


def _use_wal(conn: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """Switch to WAL journaling unless the store already uses it. The switch needs the database to
    itself and SQLite does not wait for that (no busy timeout), so it is retried while others read."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_store(path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and create, if asked) a store, checking that it is one and that its schema is known."""
    path = Path(path)
    if not path.exists():
        if not create:
            raise StoreError(f"No results store at {path}.")
        if path.parent.exists() and not path.parent.is_dir():
            raise StoreError(f"Cannot create the store {path}: {path.parent} is not a directory.")
        if not path.parent.exists():
            try:
                path.parent.mkdir(parents=True)
            except OSError as e:
                raise StoreError(f"Cannot create the directory of the store {path}: {e.strerror}.") from None
    try:
        conn = _connect(path)
        _use_wal(conn)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables and tables:
            raise StoreError(f"{path} is an SQLite database but not an attnbench results store.")
        if "meta" in tables:
            version = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
            if version > SCHEMA_VERSION:
                conn.close()
                raise StoreError(f"{path} has schema version {version}, newer than this attnbench reads "
                                 f"({SCHEMA_VERSION}); upgrade attnbench.")
        if not {"meta", "results", "training"} <= tables:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            cols = ", ".join(f"{c} {t}" for c, t in COLUMNS)
            conn.execute(f"CREATE TABLE IF NOT EXISTS results ({cols}, UNIQUE (case_key, env_key))")
            cols = ", ".join(f"{c} {t}" for c, t in TRAINING_COLUMNS)
            conn.execute(f"CREATE TABLE IF NOT EXISTS training ({cols}, UNIQUE (run_id, epoch))")
            conn.execute("COMMIT")
        _add_missing_columns(conn)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{path} is not a usable results store: {e}.") from None
    except OSError as e:
        raise StoreError(f"Cannot open the store {path}: {e.strerror}.") from None
    return conn


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    missing = []
    for table, columns in (("results", COLUMNS), ("training", TRAINING_COLUMNS)):
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        missing += [(table, name, kind) for name, kind in columns if name not in have]
    return missing


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns added within this schema version are nullable: a store from before them gains them, with
    their backfill, in one transaction (several processes may open an old store at once)."""
    if not _missing_columns(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, name, kind in _missing_columns(conn):  # again, now that no other writer can add them
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind.replace(' NOT NULL', '')}")
            if (table, name) in BACKFILL:
                conn.execute(BACKFILL[table, name])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _insert(path: str | Path, table: str, names: list[str], row: dict, replace: bool) -> None:
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    try:
        with closing(open_store(path)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                         [row.get(k) for k in names])
            conn.execute("COMMIT")
    except sqlite3.Error as e:
        raise StoreError(f"Cannot write to the store {path}: {e}.") from None


def write(path: str | Path, record: dict, *, replace: bool = False) -> None:
    """Insert one measured case in its own transaction (``replace`` overwrites the same case and environment)."""
    row = dict(record)
    if isinstance(row.get("uncounted_ops"), dict):
        row["uncounted_ops"] = json.dumps(row["uncounted_ops"], sort_keys=True)
    _insert(path, "results", NAMES, row, replace)


def write_training(path: str | Path, record: dict) -> None:
    """Insert (or replace) one epoch of a training run."""
    _insert(path, "training", TRAINING_NAMES, record, replace=True)


def load_training(path: str | Path) -> pd.DataFrame:
    """Every training epoch stored, as a DataFrame."""
    with closing(open_store(path, create=False)) as conn:
        return pd.read_sql_query("SELECT * FROM training ORDER BY rowid", conn)


def stored_keys(path: str | Path, env_key: str) -> set[str]:
    """Case keys already stored for an environment."""
    if not Path(path).exists():
        return set()
    with closing(open_store(path, create=False)) as conn:
        return {r[0] for r in conn.execute("SELECT case_key FROM results WHERE env_key = ?", (env_key,))}


def load_results(path: str | Path) -> pd.DataFrame:
    """Every row of a store as a DataFrame (one column per field, units in the names)."""
    with closing(open_store(path, create=False)) as conn:
        return pd.read_sql_query("SELECT * FROM results ORDER BY rowid", conn)


def merge(sources: Iterable[str | Path], out: str | Path) -> int:
    """Copy the rows of every source store into ``out`` without duplicates; returns rows added."""
    with closing(open_store(out)) as dst:
        before = dst.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        for src in sources:
            open_store(src, create=False).close()  # checks it is a store of a known schema
            try:
                dst.execute("ATTACH DATABASE ? AS src", (str(src),))
                dst.execute("BEGIN IMMEDIATE")
                cols = ", ".join(NAMES)
                dst.execute(f"INSERT OR IGNORE INTO results ({cols}) SELECT {cols} FROM src.results")
                tcols = ", ".join(TRAINING_NAMES)
                dst.execute(f"INSERT OR IGNORE INTO training ({tcols}) SELECT {tcols} FROM src.training")
                dst.execute("COMMIT")
                dst.execute("DETACH DATABASE src")
            except sqlite3.Error as e:
                raise StoreError(f"Cannot merge {src} into {out}: {e}.") from None
        return dst.execute("SELECT COUNT(*) FROM results").fetchone()[0] - before
