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
    forkserver.ensure_running()
    if not _STARTED:
        atexit.register(_end)
        _STARTED = True


def _end() -> None:
    """End this process's fork server (its cases have ended: the command waits for each)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                    child.kill()
