"""The fork server that the processes of CPU cases are forked from.

One per command: a clean process that imports torch and attnbench and warms them once
(:mod:`attnbench.worker`), so that each case's process, a fork of it, starts in milliseconds with nothing
of the command's own in it. Its start takes seconds (torch's import above all): :func:`start` begins it in
the background, and ``attnbench run`` calls it before it imports torch itself, so that the two imports run
side by side. A command that then measures no CPU case (GPU cases only, a launched sweep, cases stored
already, an error in its options) has spent a core beside its own work while it ran: as it exits, the
server is ended, whether it has finished starting or not (it would hold the command's output open until
then). No torch here.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import sys
import tempfile
from multiprocessing import forkserver

PRELOAD = ["attnbench.worker"]
MAX_SOCKET_DIR = 80  # the fork server's socket lives in the temporary folder; Unix socket paths end at 108 bytes

_CONTEXT: mp.context.BaseContext | None = None
_STARTED = False


def context() -> mp.context.BaseContext | None:
    """The fork server's multiprocessing context, or None where there can be none (no forkserver start
    method, or a temporary folder whose path leaves no room for its socket)."""
    global _CONTEXT
    if "forkserver" not in mp.get_all_start_methods() or len(tempfile.gettempdir()) > MAX_SOCKET_DIR:
        return None
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def start() -> None:
    """Start the fork server, unless it runs already; it goes on importing in the background."""
    global _STARTED
    if context() is None:
        return
    with main_without_a_file():
        forkserver.ensure_running()
    if not _STARTED:
        atexit.register(_end)
        _STARTED = True


@contextlib.contextmanager
def main_without_a_file():
    """While a process starts, hide a ``__main__.__file__`` that names no file (a script read from standard
    input, ``python - <<EOF``, has ``<stdin>``): multiprocessing runs ``__main__``'s file again in each new
    process, and there it would fail, ending every case. Hidden, the processes start with an empty
    ``__main__``, which is all they need (networks registered there are refused before a sweep)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    hide = path is not None and not os.path.isfile(path)
    if hide:
        del main.__file__
    try:
        yield
    finally:
        if hide:
            main.__file__ = path


def _end() -> None:
    """End this process's fork server (its cases have ended: the command waits for each)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                    child.kill()
