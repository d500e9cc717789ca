"""Standard output and error, for a terminal and a log alike: progress that reaches both (on a terminal a
bar, tqdm's, redrawn in place; elsewhere, a file, a pipe or a job's log, plain lines, flushed as they are
written, so that a long command is never silent until it ends), and streams that cannot encode a
character write an ASCII spelling of it instead of failing.
"""

from __future__ import annotations

import codecs
import sys
import time
import warnings
from collections.abc import Callable
from typing import TextIO

EVERY_STEPS = 100  # a training run says where it is every this many steps ...
EVERY_S = 10.0  # ... or this many seconds, whichever comes first


class Progress:
    """``total`` items done one by one (:meth:`done`): a bar on ``stream`` where it is a terminal (and ``bar``),
    else one line per item, ``[3/10] what``; nothing with ``quiet``."""

    def __init__(self, total: int, unit: str, *, quiet: bool = False, bar: bool = True,
                 stream: TextIO | None = None) -> None:
        self.total, self.count, self.stream = total, 0, stream or sys.stderr
        self.bar = None
        if not quiet and bar and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=self.stream, dynamic_ncols=True)
        self.lines = not quiet and self.bar is None

    def done(self, what: str) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update()
        elif self.lines:
            print(f"[{self.count}/{self.total}] {what}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Every:
    """Calls itself due (``True``) every ``steps`` calls or ``seconds`` seconds, whichever comes first
    (``EVERY_STEPS`` and ``EVERY_S`` unless given)."""

    def __init__(self, steps: int | None = None, seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.steps, self.seconds, self.clock = steps or EVERY_STEPS, seconds or EVERY_S, clock
        self.count, self.since = 0, clock()

    def __call__(self) -> bool:
        self.count += 1
        now = self.clock()
        if self.count < self.steps and now - self.since < self.seconds:
            return False
        self.count, self.since = 0, now
        return True


PLAIN = {"µ": "u", "±": "+-", "×": "x"}  # how our tables' characters are spelled where they cannot be


def _plain(err: UnicodeError) -> tuple[str, int]:
    chunk = err.object[err.start:err.end]
    return "".join(PLAIN.get(c) or c.encode("ascii", "backslashreplace").decode("ascii") for c in chunk), err.end


def plain_streams() -> None:
    """Standard output and error that cannot encode a character (``PYTHONIOENCODING=ascii``, a C locale) write
    an ASCII spelling of it (``µs`` as ``us``, ``±`` as ``+-``, others escaped) instead of failing; a warning is
    one line, its message (not the file, line and source that raised it)."""
    warnings.formatwarning = _one_line
    codecs.register_error("attnbench.plain", _plain)
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="attnbench.plain")


def _one_line(message: Warning | str, category: type[Warning], *where: object, **kwargs: object) -> str:
    first = str(message).splitlines()[0] if str(message) else category.__name__
    return f"attnbench: warning: {first}\n"
