"""Files written whole or not at all, folders used by one process at a time, and the debris of
processes that died on the way.

* :func:`atomic` hands out a temporary name in the target's folder; what is written there replaces the
  target in one rename when the block ends, and is removed when the block fails (an exception, a full
  disk, a size limit, Ctrl-C): the previous file stays whole and nothing partial is left.
* :func:`hold` locks a folder (``fcntl.flock``) for one process at a time; a second is refused with the
  name of the holder.
* A temporary name carries its writer's host and process id, so that the next writer of the same file
  can prove a leftover is the debris of a process that died (killed mid-write) and remove it; staging
  folders carry the same proof in a marker file (:func:`owned`, :func:`remove_stale`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]  # names stay short and plain
# .NAME.HOST-PID-RANDOM.tmp, and the files SQLite keeps beside a store of that name
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp(?:-wal|-shm|-journal)?$")
SIDECARS = ("-wal", "-shm", "-journal")  # SQLite's files beside a database
OWNER = ".owner"  # the marker in a staging folder: HOST-PID of the process that made it
LOCK = ".attnbench.lock"


PLAIN = re.compile(r"[A-Za-z0-9._+-]")  # kept as they are in a name made into a path (and '=', escaped)


def safe_name(name: str) -> str:
    """``name`` (a network's, say) as one path component that every file system, ``scp`` and ``make`` take:
    letters, digits and ``._+-`` as they are, every other character as ``=XX`` per byte of its UTF-8 (``=``
    itself too, and a leading ``.``, which would hide the file or climb a folder): ``timm:resnet18`` ->
    ``timm=3Aresnet18``. The mapping can be undone, so two names never share a path."""
    escaped = "".join(c if PLAIN.fullmatch(c) else "".join(f"={b:02X}" for b in c.encode()) for c in name)
    return "=2E" + escaped[1:] if escaped.startswith(".") else escaped


def _stamp() -> str:
    return f"{HOST}-{os.getpid()}"


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_here(host: str, pid: str) -> bool:
    """Whether ``host``-``pid`` names a process of this host that no longer runs (never our own)."""
    return host == HOST and int(pid) != os.getpid() and not alive(int(pid))


def remove_debris(path: str | Path) -> int:
    """Remove the temporary files that writers of ``path`` killed mid-write left beside it (written on this
    host by processes that no longer run); returns how many."""
    path = Path(path)
    removed = 0
    try:
        names = os.listdir(path.parent)
    except OSError:
        return 0
    for name in names:
        match = TEMPORARY.match(name)
        if match and match["name"] == path.name and _dead_here(match["host"], match["pid"]):
            (path.parent / name).unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def atomic(path: str | Path) -> Iterator[Path]:
    """``with atomic(path) as tmp: write(tmp)``: the file written at ``tmp`` (in ``path``'s folder, made
    empty with the permissions a new file gets) replaces ``path`` in one rename once it is on disk. If the
    block fails, ``tmp`` (and any SQLite journal beside it) is removed and ``path`` is left as it was."""
    path = Path(path)
    remove_debris(path)
    tmp = path.with_name(f".{path.name}.{_stamp()}-{uuid.uuid4().hex[:8]}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, *(Path(f"{tmp}{s}") for s in SIDECARS)):
            leftover.unlink(missing_ok=True)
        raise


class _Trial(Exception):
    """Ends a trial write before anything is written."""


def trial(path: str | Path) -> None:
    """Whether ``path`` can be written by :func:`atomic`, found before the work whose result it is: OSError if
    it is a folder, its name is too long, or its folder cannot be written. Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        with atomic(path):
            raise _Trial
    except _Trial:
        pass


class Unwritable(Exception):
    """A folder that cannot be made or written; the message says why, in one line."""


def exists(path: str | Path) -> bool:
    """Whether ``path`` exists: False too for a name the system refuses (too long), which cannot."""
    try:
        return Path(path).exists()
    except OSError:
        return False


def check_folder(what: str, path: str | Path, *, make: bool = True) -> None:
    """``path`` is a folder, or can be made one, and can be written, found before the work whose results go there:
    :class:`Unwritable` (naming it as ``what``, e.g. ``--out``) otherwise. It is made here unless ``make`` is
    false (a command that makes it only once it has something to put there): then a missing one is judged by the
    nearest folder above it that exists."""
    if not str(path).strip():  # Path("") is the working folder
        raise Unwritable(f"{what} is empty: name a folder.")
    folder = Path(path)
    try:
        if folder.exists() and not folder.is_dir():
            raise Unwritable(f"{what} {path} is a file, not a folder.")
        if make:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = next(f for f in (folder, *folder.absolute().parents) if f.exists())
            if not folder.is_dir():
                raise Unwritable(f"cannot make {what} {path}: {folder} is a file.")
    except OSError as e:  # a name over 255 characters, a folder in the way of its parents, ...
        raise Unwritable(f"cannot make {what} {path}: {e.strerror}.") from None
    if not os.access(folder, os.W_OK):
        raise Unwritable(f"{what} {path} cannot be written.")


def write_text(path: str | Path, text: str) -> None:
    """``text`` as the whole of ``path``, atomically (see :func:`atomic`)."""
    with atomic(path) as tmp:
        tmp.write_text(text)


def owned(folder: str | Path) -> Path:
    """Mark ``folder`` (a staging folder this process made) as this process's."""
    marker = Path(folder) / OWNER
    marker.write_text(_stamp() + "\n")
    return marker


def remove_stale(parent: str | Path, prefix: str) -> int:
    """Remove the folders ``prefix*`` under ``parent`` that a process of this host made (their marker says
    so) and that no longer runs; returns how many. Folders without a marker are not provably debris, and
    are left."""
    removed = 0
    for folder in Path(parent).glob(prefix + "*"):
        try:
            host, _, pid = (folder / OWNER).read_text().strip().partition("-")
        except OSError:
            continue
        if pid.isdigit() and _dead_here(host, pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class Busy(Exception):
    """A folder another process holds (:func:`hold`), with the holder, in one line."""


_held: dict[Path, int] = {}  # folder -> how many holds of this process (a hold inside a hold is free)


@contextmanager
def hold(folder: str | Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold ``folder`` for this process while the block runs: an exclusive ``flock`` on a lock file in it,
    which names the holder (``what``, the process, the host, since when, the command). Another process's
    hold raises :class:`Busy` at once, naming that holder (or, with ``wait``, is waited for). The lock goes
    with the process, so a holder that dies frees the folder; the lock file is removed when the block ends."""
    folder = Path(folder).resolve()
    if _held.get(folder):
        _held[folder] += 1
        try:
            yield
        finally:
            _held[folder] -= 1
        return
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process (starting)"
            os.close(fd)
            raise Busy(f"{folder} is in use by {holder}.") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the holder before us removed it as we opened it: try again
            same = False
        if same:
            break
        os.close(fd)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    os.ftruncate(fd, 0)
    os.write(fd, f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {since}: "
                 f"{' '.join(sys.argv)[:300]})\n".encode())
    _held[folder] = 1
    try:
        yield
    finally:
        del _held[folder]
        path.unlink(missing_ok=True)  # while still locked: a process that opened it meanwhile sees it go
        os.close(fd)
