"""The environment a measurement was taken in, recorded with every result."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import re
import socket
import subprocess
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import torch

from attnbench import __version__
from attnbench.choices import count
from attnbench.record import Environment

PACKAGE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, else platform's processor string."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the attnbench checkout this code runs from, or None outside a checkout."""
    root = PACKAGE.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# The code that measures: what builds the variants and networks and what times, counts and records them.
# Its hash is part of every result's key, so a change to it measures again; reporting, the command line and
# training are outside it, so an edit there measures nothing again.
MEASURING_CODE = ("registry.py", "plain.py", "harness.py", "worker.py", "variants", "models", "measure")


def _digest(root: Path, paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def measuring_code_hash() -> str:
    """A hash of attnbench's measuring code (``MEASURING_CODE``), in a git checkout or not."""
    files = [p for name in MEASURING_CODE for p in ([PACKAGE / name] if name.endswith(".py")
                                                     else (PACKAGE / name).rglob("*.py"))]
    return _digest(PACKAGE, files)


@functools.cache
def package_hash(module: str) -> str | None:
    """A hash of the source of the top-level package that ``module`` belongs to (a plugin, timm, a user's
    builder; for a module in no package, its folder's modules), or None for attnbench's own (covered by
    :func:`measuring_code_hash`) and for code without source files (built-in modules)."""
    top = module.split(".")[0]
    if not top or top == "attnbench":
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package: every source file under it
        roots = [Path(p) for p in spec.submodule_search_locations]
        files = [(root.parent, f) for root in roots for f in sources_under(root)]
    elif spec.origin and spec.origin.endswith(".py"):  # a module in no package: it and the modules beside it,
        folder = Path(spec.origin).parent  # which it may import as its own (nets.py importing layers.py)
        files = [(folder, f) for f in folder.glob("*.py")]
    else:
        return None
    digest = hashlib.sha256()
    for base, path in sorted(files, key=lambda pair: str(pair[1])):
        if not path.is_file():  # an editor's lock (.#nets.py, a dangling link) or a folder named *.py: no source
            continue
        try:
            source = path.read_bytes()
        except OSError:  # unreadable: nothing imports it either; its name still counts
            source = b"\0unreadable"
        digest.update(os.fsencode(path.relative_to(base).as_posix()) + b"\0" + source + b"\0")
    return digest.hexdigest()[:16]


def sources_under(root: Path) -> list[Path]:
    """The ``*.py`` files under ``root``, through linked folders too (a subpackage linked in from elsewhere is
    imported as the package's own; ``rglob`` skips links), each real folder once (a link loop ends)."""
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            subfolders.clear()
            continue
        if (st.st_dev, st.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        subfolders.sort()
        found += [Path(folder, name) for name in sorted(names) if name.endswith(".py")]
    return found


def code_hash(modules: Iterable[str] = ()) -> str:
    """Identity of the code that measures a case: attnbench's measuring code, and the source of every package
    outside attnbench among ``modules`` (those that define the variant, its implementation or the network
    measured: a plugin, timm, a user's builder), so that a change to any of them gives new results."""
    outside = sorted({h for h in map(package_hash, modules) if h is not None})
    if not outside:
        return measuring_code_hash()
    return hashlib.sha256("+".join([measuring_code_hash(), *outside]).encode()).hexdigest()[:16]


def device_name(device: str) -> str:
    """Human name of a device: the GPU's name, or the CPU model."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def parse_device(text: str) -> torch.device:
    """A device of this machine that attnbench runs on: ``cpu``, ``cuda`` (the current GPU) or ``cuda:N``;
    ValueError in one line otherwise."""
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device '{text}'; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index is not None):  # the CPU has no index
        raise ValueError(f"unsupported device '{text}'; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            raise ValueError(f"device '{text}' requested but this machine has no CUDA device")
        if dev.index is not None and dev.index >= gpus:
            raise ValueError(f"device '{text}' does not exist: this machine has {count(gpus, 'CUDA device')}")
    return dev


def environment(device: str, modules: Iterable[str] = ()) -> Environment:
    """Facts that identify where and with what a number was measured, now; ``modules``: those that define
    what is measured (see :func:`code_hash`)."""
    dev = torch.device(device)
    return Environment(
        host=socket.gethostname(),
        device_name=device_name(device),
        cpu_model=cpu_model(),
        gpu_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        cpu_count=os.cpu_count(),
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        python_version=platform.python_version(),
        attnbench_version=__version__,
        git_commit=git_commit(),
        code_hash=code_hash(modules),
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
