import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

import attnbench

# the shipped variants: an installed plugin's are its own to test
VARIANTS = attnbench.list_variants(builtin=True)
assert VARIANTS, "the variant registry is empty: no variant would be tested"

DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))

# Each pytest-xdist worker computes on its share of the cores, it and the processes it starts (a command under
# test, a notebook's kernel): two workers of two threads each on two cores wait at every parallel region for a
# thread that is not running (an axial probe's training step: 5 s, against 0.05 s on one thread). A measured case
# sets its own threads, so what a sweep measures and stores is unchanged.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, len(os.sched_getaffinity(0)) // WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)


def randomize_norms(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters (so none is an identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return module


def library_missing(library: str) -> str | None:
    """Why ``library`` (timm, natten) cannot be used here (attnbench.peers says), as a test's skip reason, or None."""
    from attnbench.peers import library_missing as why

    reason = why(library)
    return None if reason is None else (f"needs {library}, which does not import here ({reason}); .ci/run's second "
                                        "stage installs it")


LIBRARY_MARKS = ("timm", "natten")  # a test marked with one needs that library


def pytest_collection_modifyitems(config, items):
    """Tests marked ``timm`` or ``natten`` are skipped, with the reason, where that library does not import
    (imported only when such a test was collected)."""
    for library in LIBRARY_MARKS:
        marked = [item for item in items if item.get_closest_marker(library)]
        reason = library_missing(library) if marked else None
        for item in marked if reason else ():
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(params=VARIANTS)
def variant(request) -> str:
    return request.param


@pytest.fixture
def scratch(monkeypatch):
    """A variant registry whose registrations end with the test (the shipped variants loaded first)."""
    from attnbench import registry

    registry.list_variants()
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))
    monkeypatch.setattr(registry, "_IMPLS", {name: dict(impls) for name, impls in registry._IMPLS.items()})
    registry.choose_impl.cache_clear()
    yield
    registry.choose_impl.cache_clear()


@contextlib.contextmanager
def stopped_midway(module: str, name: str, call: str, *, after: bool = False) -> Iterator[subprocess.Popen]:
    """A new Python process running ``call``, waiting where it calls ``module.name`` (after that ran, with
    ``after``) while the block runs; killed after it, unless the block ended it."""
    code = ("import importlib, time\n"
            f"module = importlib.import_module({module!r})\n"
            f"original = getattr(module, {name!r})\n"
            "def midway(*args, **kwargs):\n"
            f"    {'original(*args, **kwargs)' if after else 'pass'}\n"
            "    print('midway', flush=True)\n"
            "    time.sleep(600)\n"
            f"setattr(module, {name!r}, midway)\n"
            f"{call}\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "midway\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
