"""SIGINT and SIGTERM end a command the same way: at once, with its processes, keeping what was finished.

Inside :func:`handled`, either signal raises :class:`Interrupted` (a ``KeyboardInterrupt``) in the main
thread, so that every ``finally`` and ``except KeyboardInterrupt`` runs as it does for Ctrl-C; a command
that knows what it kept says so in the exception's ``kept``. Threads that must not store work a signal
cut short ask :func:`caught`. Whoever catches the exception ends the processes the command started
(:func:`end_children`: case workers, multiprocessing's fork server, launched tasks and theirs). A second
signal while the first is handled ends the process at once. A signal the process was started with
ignored (as a shell starts background jobs) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import psutil

SIGNALS = (signal.SIGINT, signal.SIGTERM)
WAIT_S = 5.0  # the longest an interrupted command waits for the processes it killed to be gone

_caught = threading.Event()
_deferred: list[int] = []  # the signals that arrived inside deferred() (handlers run in the main thread)
_depth = 0  # how many deferred() blocks the main thread is in
T = TypeVar("T")
_signum = [signal.SIGINT]  # the signal that set _caught


class Interrupted(KeyboardInterrupt):
    """A command ended by ``signum``; ``kept``: what it kept, in a few words, when it can say."""

    def __init__(self, signum: int = signal.SIGINT, kept: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.kept = kept

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended (130, 143)."""
        return 128 + self.signum


def caught() -> bool:
    """Whether a signal has interrupted this process."""
    return _caught.is_set()


def _ignore(signum: int, frame) -> None:
    pass


def _children_may_end() -> None:
    """The command's processes ending from here on are expected, for the rest of this process: a Python
    handler of SIGCHLD is replaced by one that does nothing, so that it cannot raise an error of its own in
    place of the interrupt, during it or when the objects it left are collected at exit (PyTorch's DataLoader
    raises when a worker dies, as its workers do when the signal reaches their group, or when
    :func:`end_children` kills them). Main thread only, as handlers are."""
    if callable(signal.getsignal(signal.SIGCHLD)) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, _ignore)


def _handle(signum: int, frame) -> None:
    _children_may_end()
    if _depth:
        _deferred.append(signum)
        return
    if _caught.is_set():  # a second signal: no more waiting for the first to unwind
        end_children()
        os._exit(128 + signum)
    _caught.set()
    _signum[0] = signum
    raise Interrupted(signum)


def check() -> None:
    """Raise the interrupt again if a signal came and its exception was swallowed: a handler that ran inside
    a ``__del__`` (PyTorch's DataLoader shuts its workers down in one, between epochs) raises where Python
    only prints 'Exception ignored', and the command would go on. Loops that run long call this each turn."""
    if _caught.is_set():
        raise Interrupted(_signum[0])


def checked(items: Iterable[T]) -> Iterator[T]:
    """The items, :func:`check` before each, and the interrupt in place of an error that fetching one raised
    after a signal (a DataLoader whose workers the signal to the group ended says they exited unexpectedly)."""
    it = iter(items)
    while True:
        check()
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception:
            if _caught.is_set():
                raise Interrupted(_signum[0]) from None
            raise
        yield item


def _unraisable(previous: Callable) -> Callable:
    """sys.unraisablehook that prints nothing for an interrupt raised inside a ``__del__`` (check raises it
    again where it counts), and everything else as before."""
    def hook(args) -> None:
        if not isinstance(args.exc_value, Interrupted):
            previous(args)
    return hook


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread inside the block (from another
    thread, or where a signal is ignored, nothing changes)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            current = signal.getsignal(signum)
            if current in (signal.SIG_DFL, signal.default_int_handler):
                previous[signum] = signal.signal(signum, _handle)
    _caught.clear()
    unraisable = sys.unraisablehook
    sys.unraisablehook = _unraisable(unraisable)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside the block takes effect at its end: for writes that belong together
    (an epoch's checkpoint and its row in the store)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _deferred:
        signum = _deferred[0]
        _deferred.clear()
        _handle(signum, None)


@contextlib.contextmanager
def keeping(what: Callable[[], str]) -> Iterator[None]:
    """An interrupt inside the block says what the command kept, ``what()`` (unless an inner block said)."""
    try:
        yield
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted) and e.kept:
            raise
        raise Interrupted(getattr(e, "signum", signal.SIGINT), what()) from None


def end_children() -> None:
    """End every process this one started, and theirs, at once. All are stopped before any is killed, so
    that none sees another end and records it (a launched task would store the death of its case's process
    as the case's failure). Multiprocessing's resource trackers are left to end by themselves, as they do
    once every process that holds their pipe has gone, after releasing what those processes left."""
    _children_may_end()
    try:
        children = [c for c in psutil.Process().children(recursive=True) if not _resource_tracker(c)]
    except psutil.Error:
        return
    for signum in (signal.SIGSTOP, signal.SIGKILL):
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.send_signal(signum)
    deadline = time.monotonic() + WAIT_S
    while any(running(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.01)


def _resource_tracker(process: psutil.Process) -> bool:
    try:
        return "multiprocessing.resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a process whose parent was killed may stay one where nothing reaps it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
