"""The results store: one SQLite file, with one row per measured case and environment (``results``), per
epoch of a training run (``training``) and per trained network evaluated at a side (``evaluations``).

Every write is its own transaction, so a run killed at any instant leaves only whole rows; WAL
journaling and a busy timeout let several processes write one store at once. Only writers switch
a store to WAL or add the columns of a newer attnbench (in one transaction); readers open it
read-only and fill in what an older store lacks as they read, so reading changes nothing, leaves no
file beside the store, and works on stores shipped in rollback-journal mode and in folders that
cannot be written (:func:`query`). Exports (CSV, Markdown) and reports are derived from
it, never the other way round.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import os
import re
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TypeVar

import pandas as pd

from attnbench import files
from attnbench.choices import EXPORT_FORMATS, Scope, count, unknown_name_message
from attnbench.record import EPOCH_COLUMNS, EVALUATION_COLUMNS, RESULT_COLUMNS, Case, Epoch, Evaluation, Record

SCHEMA_VERSION = 1

# (column, SQL type), derived from the records; units live in the names.
COLUMNS = RESULT_COLUMNS
NAMES = [c for c, _ in COLUMNS]

# Rows stored before the ``impl`` column were measured with what is now each variant's reference
# implementation, and before ``options`` with each variant's defaults: writers record that when they
# add the columns, readers as they read a store that lacks them.
LEGACY_IMPLS = {"gsa": "pixelmajor", "local": "halo", "axial": "dense", "nonlocal": "sdpa", "conv": "native"}
# A case field with a default (options, amp, ...) was that default in every row stored before it.
CASE_DEFAULTS = {f.name: f.default for f in fields(Case) if f.default is not MISSING}
BACKFILL = {
    ("results", "impl"): "UPDATE results SET impl = CASE variant "
    + " ".join(f"WHEN '{v}' THEN '{i}'" for v, i in LEGACY_IMPLS.items()) + " END",
    **{("results", name): f"UPDATE results SET {name} = {int(value) if isinstance(value, bool) else repr(value)}"
       for name, value in CASE_DEFAULTS.items()},
    ("training", "macs_per_image"): "UPDATE training SET macs_per_image = macs",  # the column's older name
    ("training", "options"): "UPDATE training SET options = ''",  # runs before it trained with the defaults
    ("training", "image_size"): "UPDATE training SET image_size = 32",  # every data set before it was 32 x 32
}
# A network was named by its variant and architecture before the ``model`` column: gsa and resnet50 are
# gsa_resnet50, conv and resnet50 is resnet50, and Axial-DeepLab's networks were their own architecture.
LEGACY_MODEL_SQL = ("CASE WHEN scope != 'model' THEN '' WHEN arch LIKE 'axial\\_deeplab\\_%' ESCAPE '\\' THEN arch "
                    "WHEN variant = 'conv' AND arch LIKE 'resnet%' THEN arch ELSE variant || '_' || arch END")
BACKFILL[("results", "model")] = f"UPDATE results SET model = {LEGACY_MODEL_SQL}"
# Training runs before the ``variant`` column trained built-in networks, whose names begin with their variant
# (resnetN and botnet50 aside).
LEGACY_VARIANT_SQL = ("CASE WHEN model LIKE 'resnet%' THEN 'conv' WHEN model = 'botnet50' THEN 'mhsa' "
                      "WHEN instr(model, '_') > 0 THEN substr(model, 1, instr(model, '_') - 1) ELSE '' END")
BACKFILL.update({(table, "variant"): f"UPDATE {table} SET variant = {LEGACY_VARIANT_SQL}"
                 for table in ("training", "evaluations")})


def _legacy_model(frame: pd.DataFrame) -> pd.Series:
    """The ``model`` of rows stored before the column (as ``LEGACY_MODEL_SQL`` fills it in a store)."""
    own = frame.arch.str.startswith("axial_deeplab_") | ((frame.variant == "conv") & frame.arch.str.startswith(
        "resnet"))
    name = frame.arch.where(own, frame.variant + "_" + frame.arch)
    return name.where(frame.scope == Scope.MODEL, "")


def _legacy_variant(frame: pd.DataFrame) -> pd.Series:
    """The ``variant`` of training runs stored before the column (as ``LEGACY_VARIANT_SQL`` fills it)."""
    first = frame.model.str.split("_").str[0].where(frame.model.str.contains("_"), "")
    return first.mask(frame.model.str.startswith("resnet"), "conv").mask(frame.model == "botnet50", "mhsa")


READ_FILL = {
    ("results", "impl"): lambda frame: frame.variant.map(LEGACY_IMPLS),
    **{("results", name): (lambda frame, value=value: value) for name, value in CASE_DEFAULTS.items()},
    ("results", "model"): _legacy_model,
    ("training", "variant"): _legacy_variant,
    ("evaluations", "variant"): _legacy_variant,
    ("training", "macs_per_image"): lambda frame: frame["macs"] if "macs" in frame else None,
    ("training", "options"): lambda frame: "",
    ("training", "image_size"): lambda frame: 32,
}

TRAINING_COLUMNS = EPOCH_COLUMNS  # one row per epoch of a training run (attnbench train)
TRAINING_NAMES = [c for c, _ in TRAINING_COLUMNS]
# one row per trained network, side and tables (attnbench eval, train --eval-res): never a training epoch
EVALUATION_NAMES = [c for c, _ in EVALUATION_COLUMNS]
TABLES = {"results": (COLUMNS, "case_key, env_key"), "training": (TRAINING_COLUMNS, "run_id, epoch"),
          "evaluations": (EVALUATION_COLUMNS, "run_id, side, tables")}  # columns and unique key of each table


T = TypeVar("T")


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


def _check_tables(conn: sqlite3.Connection, path: Path) -> set[str]:
    """The store's tables; ``StoreError`` for a foreign database or a newer schema."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables and tables:
        raise StoreError(f"{path} is an SQLite database but not an attnbench results store.")
    if "meta" in tables:
        found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            version = int(found[0])
        except (TypeError, ValueError):
            raise StoreError(f"{path} has no readable schema version ({found[0] if found else 'none'!r}); "
                             "it is not a store this attnbench wrote.") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {version}, newer than this attnbench reads "
                             f"({SCHEMA_VERSION}); upgrade attnbench.")
    return tables


def store_path(path: str | Path) -> Path:
    """``path`` as a store's file, or StoreError in one line for a path that names no file: empty, or ending in
    a separator (Path would drop it, and SQLite make a file where the user meant a folder)."""
    text = os.fspath(path)
    if not text:
        raise StoreError("The store's path is empty; name a file, e.g. reports/results.sqlite.")
    if text.endswith(("/", os.sep)):
        raise StoreError(f"{text} ends in a separator: it names a folder, not a results store file "
                         f"(e.g. {text}results.sqlite).")
    return Path(text)


def _make_parent(path: Path, *, create: bool = True) -> None:
    """The folder a store at ``path`` goes in, made if need be (if ``create``, else the store must exist);
    StoreError if ``path`` or its folder cannot be."""
    try:
        if path.is_dir():
            raise StoreError(f"{path} is a folder, not a results store.")
        if not path.exists():
            if not create:
                raise StoreError(f"No results store at {path}.")
            if path.suffix.lower() in EXPORT_FORMATS:  # an SQLite file is never made under a text format's name
                raise StoreError(f"Cannot create the store {path}: a store is an SQLite file, and {path.suffix} names "
                                 "text; name it .sqlite (attnbench export writes .csv, .md and .json).")
            if path.parent.exists() and not path.parent.is_dir():
                raise StoreError(f"Cannot create the store {path}: {path.parent} is not a directory.")
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"Cannot create the store {path}: {e.strerror}.") from None


def open_store(path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open a store for writing (creating it, if asked), checking that it is one and that its schema is
    known; a store from before a column was added gains it here."""
    path = store_path(path)
    _make_parent(path, create=create)

    def prepare(conn: sqlite3.Connection) -> None:
        tables = _check_tables(conn, path)
        _use_wal(conn)
        if not {"meta", *TABLES} <= tables:  # a new store, or one from before a table was added
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            for table, (columns, key) in TABLES.items():
                cols = ", ".join(f"{c} {t}" for c, t in columns)
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols}, UNIQUE ({key}))")
            conn.execute("COMMIT")
        _check_structure(conn, path)
        _add_missing_columns(conn)
        if conn.execute("SELECT 1 FROM meta WHERE key = 'store_id'").fetchone() is None:  # new, or from before ids
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))

    return _opened(path, lambda: _connect(path), prepare)


def refuse_read_only(path: str | Path) -> Path:
    """``path`` as a store's file (:func:`store_path`), StoreError where it names a store file that cannot be
    opened for writing (read-only, immutable): found before SQLite opens it, which would leave its -wal and -shm
    files beside it. Makes nothing."""
    path = store_path(path)
    try:
        with open(path, "r+b"):
            pass
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass  # made when it is written, or refused then with its reason
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StoreError(f"Cannot write the store {path}: {e.strerror}.") from None
    return path


def check_writable(path: str | Path) -> None:
    """The store opens for writing (made if it is missing), found before any work is done: ``StoreError``
    otherwise (a read-only store before SQLite opens it: :func:`refuse_read_only`)."""
    path = refuse_read_only(path)
    try:
        with closing(open_store(path)) as conn:
            conn.execute("BEGIN IMMEDIATE")  # fails at once on a store that cannot be written
            conn.execute("ROLLBACK")
    except sqlite3.Error as e:
        raise StoreError(f"Cannot write the store {path}: {e}.") from None


def meta(path: str | Path, key: str) -> str | None:
    """A value of the store's ``meta`` table (``store_id``: the id a store gets when it is made; ``shard_of``:
    the id of the store a launched sweep's shard store belongs to), None where the store or the key is not."""
    if not Path(path).exists():
        return None

    def value(conn: sqlite3.Connection) -> str | None:
        found = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    return query(path, value)


def tie(path: str | Path, store_id: str) -> None:
    """Make ``path`` (if need be) a shard store of the store whose id is ``store_id``."""
    with closing(open_store(path)) as conn:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('shard_of', ?)", (store_id,))


def _opened(path: Path, connect, prepare) -> sqlite3.Connection:
    """``connect()``, then ``prepare`` the connection; a failure closes it and becomes a one-line StoreError."""
    conn = None
    try:
        conn = connect()
        prepare(conn)
        return conn
    except (StoreError, sqlite3.DatabaseError, OSError) as e:
        if conn is not None:
            conn.close()
        if isinstance(e, sqlite3.DatabaseError):
            raise StoreError(f"{path} is not a usable results store: {e}.") from None
        if isinstance(e, OSError):
            raise StoreError(f"Cannot open the store {path}: {e.strerror}.") from None
        raise


SQLITE_HEADER = b"SQLite format 3\x00"
READ_ATTEMPTS = 3  # reads of a store that changed while it was read, before reading a copy of it


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is an SQLite database (any, by its header)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _in_wal_mode(path: Path) -> bool:
    """Whether the database at ``path`` uses WAL journaling (its header's read version is 2)."""
    with open(path, "rb") as f:
        header = f.read(20)
    return len(header) == 20 and header.startswith(SQLITE_HEADER) and header[18] == 2


def _writable(path: Path) -> bool:
    """Whether this process may write the existing file ``path`` (tried, not inferred from its mode)."""
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError:
        return False
    return True


def _state(path: Path) -> tuple:
    """What a writer changes: the file, and the WAL beside it."""
    st = path.stat()
    wal = Path(f"{path}-wal")
    return st.st_ino, st.st_size, st.st_mtime_ns, wal.stat().st_size if wal.exists() else None


def query(path: str | Path, body: Callable[[sqlite3.Connection], T]) -> T:
    """``body(conn)`` on a read-only connection to the store at ``path``, whose tables are checked first.
    Reading changes nothing and leaves nothing beside the store (no journal switch, no upgrade, no ``-wal``
    or ``-shm`` file; columns it lacks are filled in by the loaders), and works where nothing can be
    written: a store in rollback-journal mode is read as it is; a WAL store whose WAL holds nothing is read
    as an immutable file, again if a writer changed it meanwhile; one whose WAL holds rows is read through
    its own ``-shm`` where this process may write that, else from a copy of both in a temporary folder."""
    path = store_path(path)
    try:
        if not path.is_file():
            raise StoreError(f"No results store at {path}.")
    except OSError as e:
        raise StoreError(f"Cannot open the store {path}: {e.strerror}.") from None

    def check(conn: sqlite3.Connection) -> None:
        if not {"meta", "results"} <= _check_tables(conn, path):  # training came later
            raise StoreError(f"{path} is not an attnbench results store.")

    def read(where: Path, options: str = "") -> T:
        uri = f"{where.resolve().as_uri()}?mode=ro{options}"
        with closing(_opened(path, lambda: sqlite3.connect(uri, uri=True, timeout=60), check)) as conn:
            return body(conn)

    for _ in range(READ_ATTEMPTS):
        try:
            before = _state(path)
            if not _in_wal_mode(path):
                return read(path)  # a rollback-journal reader takes a shared lock and writes nothing
            wal, shm = before[3], Path(f"{path}-shm")
            if wal is None or wal == 0:  # the file holds every row
                result = read(path, "&immutable=1")
            elif _writable(shm):  # a writer's files, there already: share them
                return read(path)
            else:
                with tempfile.TemporaryDirectory(prefix="attnbench-read-") as folder:
                    copy = Path(folder) / path.name
                    shutil.copyfile(path, copy)
                    shutil.copyfile(f"{path}-wal", f"{copy}-wal")
                    result = read(copy)
            if _state(path) == before:
                return result
        except OSError as e:
            raise StoreError(f"Cannot read the store {path}: {e.strerror or e}.") from None
    raise StoreError(f"Cannot read the store {path}: it changed each of the {READ_ATTEMPTS} times it was read.")


# what every store of this schema has had from the start: its tables' UNIQUE keys (TABLES) and NOT NULL columns
# (those added since are filled in, above); a store without them was damaged, and is refused, not read wrong
REQUIRED = {table: [name for name, kind in columns if "NOT NULL" in kind and (table, name) not in READ_FILL]
            for table, (columns, _) in TABLES.items()}


def _check_required(path: Path, table: str, have: Iterable[str]) -> None:
    """StoreError naming the columns of ``table`` every store has that it lacks."""
    lost = [name for name in REQUIRED[table] if name not in set(have)]
    if lost:
        raise StoreError(f"{path} is damaged: its {table} table lacks the column{'s' * (len(lost) > 1)} "
                         f"{', '.join(lost)}, which every store has.")


def _check_numbers(path: Path, table: str, frame: pd.DataFrame) -> None:
    """StoreError naming a column of numbers in ``table`` that holds text (SQLite keeps what it is given: a
    store edited by hand, or by another program), on which every reader of the column would fail."""
    numbers = [name for name, sql_type in TABLES[table][0] if sql_type.split()[0] in ("INTEGER", "REAL")]
    for name in numbers:
        if name in frame and not pd.api.types.is_numeric_dtype(frame[name]):
            text = frame[name][frame[name].map(lambda value: isinstance(value, str))]
            if len(text):
                raise StoreError(f"{path} is damaged: its {table} table's column {name} holds {text.iloc[0]!r} "
                                 f"({count(len(text), 'row')} of text), where every store holds numbers.")


def _check_structure(conn: sqlite3.Connection, path: Path) -> None:
    """Before anything is written: every required column, and the UNIQUE key that keeps one row per case and
    environment (per run and epoch, ...), without which a store takes duplicates."""
    for table, (_, key) in TABLES.items():
        _check_required(path, table, [r[1] for r in conn.execute(f"PRAGMA table_info({table})")])
        unique = [r[1] for r in conn.execute(f"PRAGMA index_list({table})") if r[2]]
        if not any({c[2] for c in conn.execute(f"PRAGMA index_info('{name}')")} == set(key.split(", "))
                   for name in unique):
            raise StoreError(f"{path} is damaged: its {table} table has lost its UNIQUE ({key}) constraint and "
                             f"would store rows twice; `attnbench merge {path} -o NEW` copies it into a sound store "
                             "(one row each, the newest).")


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    missing = []
    for table, (columns, _) in TABLES.items():
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


def _identity(path: str | Path) -> tuple[int, int] | None:
    """The file at ``path`` (device and inode), or None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Writer:
    """One open store that takes rows, each insert its own transaction (a sweep writes through one). Before
    each insert and when it closes, it checks that its path still names the file it opened: a store deleted
    or replaced meanwhile is a StoreError (SQLite would go on writing into the file no path names)."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.conn = open_store(path)
        self.identity = _identity(path)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.conn.close()
        if kind is None:
            self._check_identity()

    def _check_identity(self) -> None:
        now = _identity(self.path)
        if now == self.identity:
            return
        if now is None:
            raise StoreError(f"The store {self.path} was deleted while this command wrote to it: the rows it had "
                             "written went with it, and nothing more is written; run the command again.")
        raise StoreError(f"The store {self.path} was replaced by another file while this command wrote to it: the "
                         "rows written before stay in the file it had opened, and nothing is written into the new "
                         "one; run the command again to write there.")

    def _insert(self, table: str, names: list[str], row: dict, replace: bool) -> None:
        self._check_identity()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            verb = "OR REPLACE" if replace else "OR IGNORE"
            self.conn.execute(_insert_sql(table, names, verb), [row.get(k) for k in names])
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise StoreError(f"Cannot write to the store {self.path}: {e}.") from None

    def write(self, record: Record, *, replace: bool = False) -> None:
        """Insert one measured case (``replace`` overwrites the same case and environment)."""
        self._insert("results", NAMES, record.row(), replace)

    def write_training(self, epoch: Epoch) -> None:
        """Insert (or replace) one epoch of a training run."""
        self._insert("training", TRAINING_NAMES, epoch.row(), replace=True)

    def write_evaluation(self, evaluation: Evaluation) -> None:
        """Insert (or replace) a trained network's evaluation at one side."""
        self._insert("evaluations", EVALUATION_NAMES, evaluation.row(), replace=True)


def write(path: str | Path, record: Record, *, replace: bool = False) -> None:
    """Insert one measured case in its own transaction (``replace`` overwrites the same case and environment)."""
    with Writer(path) as writer:
        writer.write(record, replace=replace)


def write_training(path: str | Path, epoch: Epoch) -> None:
    """Insert (or replace) one epoch of a training run."""
    with Writer(path) as writer:
        writer.write_training(epoch)


def write_evaluation(path: str | Path, evaluation: Evaluation) -> None:
    """Insert (or replace) a trained network's evaluation at one side."""
    with Writer(path) as writer:
        writer.write_evaluation(evaluation)


def _read(path: str | Path, table: str, names: list[str], order: str, where: str = "",
          params: Sequence[object] = ()) -> pd.DataFrame:
    """The rows of ``table`` (those ``where`` selects), with the columns of this schema (those a store from
    before them lacks are filled as the migration would fill them)."""
    def rows(conn: sqlite3.Connection) -> pd.DataFrame:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if table not in tables:
            return pd.DataFrame(columns=names)
        return pd.read_sql_query(f"SELECT * FROM {table} {where} ORDER BY {order}", conn, params=list(params))

    try:
        frame = query(path, rows)
    except sqlite3.DatabaseError as e:
        raise StoreError(f"Cannot read {path}: {e}.") from None
    _check_required(Path(path), table, frame.columns)
    _check_numbers(Path(path), table, frame)
    for name in names:
        if name not in frame:
            fill = READ_FILL.get((table, name))
            frame[name] = fill(frame) if fill else None
    return frame[names + [c for c in frame.columns if c not in names]]


def load_training(path: str | Path) -> pd.DataFrame:
    """Every training epoch stored, as a DataFrame."""
    return _read(path, "training", TRAINING_NAMES, "rowid")


def load_evaluations(path: str | Path) -> pd.DataFrame:
    """Every evaluation of a trained network at a side, as a DataFrame (empty for a store from before them)."""
    return _read(path, "evaluations", EVALUATION_NAMES, "rowid")


def holds_nothing(path: str | Path) -> bool:
    """Whether the store holds no row: no case, no training epoch, no evaluation."""
    def counted(conn: sqlite3.Connection) -> int:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 - our own table names
                   for t in ("results", "training", "evaluations") if t in tables)

    return query(path, counted) == 0


@contextlib.contextmanager
def outputs_made(db: str | Path | None, outs: Iterable[str | Path] = ()) -> Iterator[None]:
    """The store ``db`` (made if missing) and every ``--out`` folder, checked writable (a command's outputs, after
    every check that makes nothing); once the block ends, the store and the folders this made (with their new
    parents, the store's among them) are removed again while they hold nothing, as is what is empty inside
    them: a refused or interrupted command (a data set refused as it loads, a signal before the first epoch, in
    a learning-rate search) or one with nothing to do (every seed trained already) leaves nothing behind."""
    outs = [Path(out) for out in outs]
    paths = outs + ([Path(db).parent] if db is not None else [])
    made = {f for path in paths for f in itertools.takewhile(lambda f: not files.exists(f), (path, *path.parents))}
    new_store = db is not None and not files.exists(db)
    try:
        if db is not None:
            check_writable(db)
        for out in outs:
            files.check_folder("--out", out)
        yield
    finally:
        if new_store and files.exists(db) and holds_nothing(db):
            Path(db).unlink()
        for folder in sorted(made, key=lambda f: len(f.parts), reverse=True):  # the deepest first
            for inner, _, _ in sorted(os.walk(folder), key=lambda walked: -len(Path(walked[0]).parts)):
                with contextlib.suppress(OSError):
                    Path(inner).rmdir()  # only where empty


FINISHED = ("plateau", "budget")  # why a run that reached its end stopped (a run that diverged did not)


def reached_end(stopped: str | None, epoch: int, epochs: int) -> bool:
    """Whether a run whose latest epoch is ``epoch`` of ``epochs`` and says it ``stopped`` so reached its end: it
    says why it stopped (``plateau`` or ``budget``) or, stored before runs said so, it is the last of its epochs.
    A run still in progress, killed in a sitting, or stopped because its loss went non-finite (``diverged``) has
    not: its latest epoch is not a result."""
    return stopped in FINISHED or (pd.isna(stopped) and epoch == epochs)


def finished_runs(training: pd.DataFrame) -> pd.DataFrame:
    """The last epoch of each run that reached its end (:func:`reached_end`)."""
    last = training.sort_values("epoch").groupby("run_id", sort=False).tail(1)
    ended = [reached_end(*run) for run in zip(last.stopped, last.epoch, last.epochs)]
    return last[pd.Series(ended, index=last.index, dtype=bool)]


def stored_cases(path: str | Path, env_key: str) -> dict[str, dict]:
    """What is stored for an environment, by case key: status, wall_s and predicted_mem_bytes."""
    if not Path(path).exists():
        return {}

    def cases(conn: sqlite3.Connection) -> dict[str, dict]:
        rows = conn.execute("SELECT case_key, status, wall_s, predicted_mem_bytes FROM results WHERE env_key = ?",
                            (env_key,))
        return {key: {"status": status, "wall_s": wall, "predicted_mem_bytes": predicted}
                for key, status, wall, predicted in rows}

    return query(path, cases)


def load_results(path: str | Path, *, env_keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Every row of a store (of the environments ``env_keys`` only, if given) as a DataFrame: one column
    per field, units in the names."""
    if env_keys is None:
        return _read(path, "results", NAMES, "rowid")
    keys = sorted(env_keys)
    return _read(path, "results", NAMES, "rowid", f"WHERE env_key IN ({', '.join('?' * len(keys))})", keys)


CONDITION = re.compile(r"^(\w+)(!=|>=|<=|=|>|<)(.*)$")


def select(frame: pd.DataFrame, columns: Sequence[str] | None = None, where: Sequence[str] = ()) -> pd.DataFrame:
    """The rows that meet every condition of ``where`` (``COLUMN=V1,V2`` for any of the values,
    ``COLUMN!=V``, or ``COLUMN>=N``, ``<=``, ``>``, ``<`` on a number), with ``columns`` only, in that order.
    ``ValueError`` in one line for an unknown column, a malformed condition or a value that is not a number."""
    for name in list(columns or []):
        if name not in frame.columns:
            raise ValueError(unknown_name_message("column", name, list(frame.columns)))
    keep = pd.Series(True, index=frame.index)
    for condition in where:
        match = CONDITION.match(condition)
        if not match:
            raise ValueError(f"Invalid condition {condition!r}: write COLUMN=VALUE (or !=, >=, <=, >, <).")
        name, op, text = match.groups()
        if name not in frame.columns:
            raise ValueError(unknown_name_message("column", name, list(frame.columns)))
        column = frame[name]
        if op in ("=", "!="):
            wanted = set(text.split(",")) if op == "=" else {text}
            hit = column.map(_text).isin(wanted)
            keep &= hit if op == "=" else ~hit
            continue
        try:
            bound = float(text)
        except ValueError:
            raise ValueError(f"Invalid condition {condition!r}: {op} compares numbers, and {text!r} is not one.") \
                from None
        values = pd.to_numeric(column, errors="coerce")
        keep &= {">=": values >= bound, "<=": values <= bound, ">": values > bound, "<": values < bound}[op]
    chosen = frame[keep]
    return chosen[list(columns)] if columns else chosen


def _text(value: object) -> str:
    """A cell as a condition spells it: whole numbers without '.0', a missing value as ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _insert_sql(table: str, names: list[str], verb: str = "") -> str:
    return f"INSERT {verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


def _plain_rows(frame: pd.DataFrame) -> list[tuple]:
    """The rows as tuples of Python values, missing ones None (what sqlite3 binds)."""
    return [tuple(None if pd.isna(v) else v.item() if hasattr(v, "item") else v for v in row)
            for row in frame.itertuples(index=False)]


@dataclass(frozen=True)
class Merged:
    """What a merge did: results rows added, measurements of one case and environment that differed between
    the stores (the newer kept), training epochs and evaluations added (those of a run and epoch, or run and
    side, already held are not added twice), and those held in different versions (the newer kept)."""

    added: int
    conflicts: int
    epochs: int = 0
    evaluations: int = 0
    redone: int = 0  # training epochs and evaluations held in different versions (a run resumed, evaluated again)

    def __str__(self) -> str:
        """"2 new rows", and the training epochs and evaluations added where there are any, and the conflicts."""
        added = [count(self.added, "new row")] + [count(n, what) for n, what in (
            (self.epochs, "training epoch"), (self.evaluations, "evaluation")) if n]
        return ", ".join(added) + (f"; {count(self.conflicts, 'case')} measured differently in the same "
                                   "environment, the newest kept" if self.conflicts else "") + (
            f"; {count(self.redone, 'training epoch or evaluation', 'training epochs or evaluations')} stored "
            "differently by different sittings, the newest kept" if self.redone else "")


def merge(sources: Iterable[str | Path], out: str | Path) -> Merged:
    """Copy the rows of every source store into ``out``, all or nothing. A case measured in the same
    environment in several stores (different runs) is a conflict: the newest measurement is kept and
    the conflicts are counted. Sources are only read (older ones as the migration would fill them)."""
    sources, out = list(sources), store_path(out)
    if Path(out).exists() and any(Path(src).exists() and os.path.samefile(src, out) for src in sources):  # links too
        raise StoreError(f"Cannot merge {out} into itself: name an output that is not a source.")
    read = [(load_results(src), load_training(src), load_evaluations(src)) for src in sources]  # a bad one stops all
    if Path(out).exists():  # one transaction, in place (a sweep may be writing it meanwhile)
        check_writable(out)
        return _merge_into(read, sources, out, out)
    _make_parent(Path(out))
    try:
        with files.atomic(out) as tmp:  # a new output appears whole, or not at all
            return _merge_into(read, sources, out, tmp)
    except OSError as e:
        raise StoreError(f"Cannot write the store {out}: {e.strerror or e}.") from None


def _merge_into(read: list[tuple[pd.DataFrame, ...]], sources: list, out: str | Path,
                path: str | Path) -> Merged:
    """Merge the rows ``read`` from ``sources`` into the store at ``path`` (``out``, or the temporary file
    that becomes it): of rows under one key (a case in an environment, a run's epoch, a run's evaluation at a
    side), the newest is kept."""
    with closing(open_store(path)) as dst:
        columns = {table: list(dict.fromkeys([*key.split(", "), "run_id", "created_utc"]))
                   for table, (_, key) in TABLES.items()}
        held = {table: pd.read_sql_query(f"SELECT {', '.join(columns[table])} FROM {table}", dst)  # noqa: S608
                for table in TABLES}
        twice = []  # per table, the keys stored in different versions: other runs, or the same at other times
        for (table, (_, key)), rows in zip(TABLES.items(), zip(*read)):
            keys = key.split(", ")
            same = ["run_id"] if table == "results" else ["created_utc"]
            versions = pd.concat([held[table], *(r[columns[table]] for r in rows)],
                                 ignore_index=True).drop_duplicates(keys + same)
            twice.append(int((versions.groupby(keys, dropna=False).size() > 1).sum()))
        try:
            dst.execute("BEGIN IMMEDIATE")
            for frames in read:
                for (table, (_, key)), names, rows in zip(TABLES.items(), (NAMES, TRAINING_NAMES, EVALUATION_NAMES),
                                                          frames):
                    dst.executemany(_insert_sql(table, names) + f" ON CONFLICT ({key}) DO UPDATE SET "
                                    + ", ".join(f"{c} = excluded.{c}" for c in names)
                                    + f" WHERE excluded.created_utc > {table}.created_utc OR ({table}.created_utc IS "
                                    "NULL AND excluded.created_utc IS NOT NULL)", _plain_rows(rows[names]))
            dst.execute("COMMIT")
        except sqlite3.Error as e:
            dst.execute("ROLLBACK")
            raise StoreError(f"Cannot merge {', '.join(map(str, sources))} into {out}: {e}.") from None
        added, epochs, evaluations = (dst.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] - len(held[table])
                                      for table in TABLES)
        return Merged(added, twice[0], epochs, evaluations, twice[1] + twice[2])
