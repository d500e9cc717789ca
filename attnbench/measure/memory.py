"""Peak memory of one iteration, as a delta over what already lived (weights, inputs).

CUDA: the caching allocator's peak statistics (allocated and reserved). CPU: there is no
allocator peak API and tracemalloc does not see tensors, so the process's peak resident memory
(VmHWM) is reset, the iteration runs, and the peak is read back; freed heap memory is returned to
the system first, so the peak is not hidden by memory the allocator kept. The CPU figure is only
meaningful in a process that runs nothing else at the time: the harness runs every case in a
fresh child process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import re
from collections.abc import Callable
from pathlib import Path

import torch

from attnbench.registry import fake_safe

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{_STATUS} has no {field} line")
    return int(match.group(1)) * 1024


def cpu_peak_supported() -> bool:
    """Linux with a resettable peak-RSS counter (``/proc/self/clear_refs``)."""
    return _STATUS.exists() and _CLEAR_REFS.exists()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEPT_HEAP_BYTES = 1 << 30


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library, found once per process (each case asks twice: its allocator, then each peak reading)."""
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _release_free_memory() -> None:
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def keep_freed_memory() -> bool:
    """Make glibc's heap keep what it frees and serve every block up to ``KEPT_HEAP_BYTES`` from it, so that a
    forward pass in steady state reuses memory instead of mapping and faulting in fresh pages each time.

    glibc maps each large block (activations, above 128 KiB at first) with its own ``mmap`` and returns it to
    the system when freed, so every iteration page-faults its activations in again; a long-lived process
    raises that threshold as it frees such blocks (to 32 MiB at most) and so faults less, and a process
    using jemalloc or tcmalloc (PyTorch's CPU tuning advice) hardly at all. A case's process is fresh:
    without this it timed resnet50 (batch 8, 224) about 1.4x slower than a plain timer of the same network
    in a warm process, on the cost of page faults, not of the network. The peak-memory reading is unchanged:
    :func:`peak_memory` returns free memory to the system before it resets the peak. Returns whether the
    allocator took the setting (False outside glibc)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEPT_HEAP_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * KEPT_HEAP_BYTES))


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> dict[str, int | str | None]:
    """Run ``fn`` once and return its peak memory over the baseline before it.

    Returns ``peak_mem_bytes`` (allocated on CUDA, resident on CPU), ``peak_mem_reserved_bytes``
    (CUDA caching allocator only, else None) and ``peak_mem_method``. Where the platform cannot
    measure, the byte counts are None, never 0.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        fn()
        torch.cuda.synchronize(device)
        return {
            "peak_mem_bytes": torch.cuda.max_memory_allocated(device) - allocated,
            "peak_mem_reserved_bytes": torch.cuda.max_memory_reserved(device) - reserved,
            "peak_mem_method": "cuda_max_allocated",
        }
    if not cpu_peak_supported():
        return {"peak_mem_bytes": None, "peak_mem_reserved_bytes": None, "peak_mem_method": "unavailable"}
    _release_free_memory()
    _CLEAR_REFS.write_text("5")  # reset VmHWM to the current resident size
    baseline = _status_bytes("VmRSS")
    fn()
    return {
        "peak_mem_bytes": max(0, _status_bytes("VmHWM") - baseline),
        "peak_mem_reserved_bytes": None,
        "peak_mem_method": "cpu_peak_rss",
    }


class _LiveBytes:
    """Dispatch mode that follows the bytes of every storage an op creates, until it is freed."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker.add(out)
                return out

        self.mode = Mode()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def add(self, out: object) -> None:
        import weakref

        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._sizes:
                    self._sizes[key] = storage.nbytes()
                    self.live += self._sizes[key]
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key)


def predict_peak_memory(
    module: torch.nn.Module, input_shape: tuple[int, ...], mode: str, *, dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> int:
    """Predicted peak bytes of one iteration over the weights, without running it or making its input.

    The iteration runs under ``FakeTensorMode`` on a fake input (the weights are used as they
    are), so nothing is computed or allocated, while every storage an operation creates, the
    input included, is counted until it is freed. Kernel workspaces are not seen, so the real
    peak can be somewhat higher. Implementations that cannot run on fake tensors (FlexAttention's)
    are predicted on the variant's reference implementation instead.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from attnbench.measure.latency import make_step

    state = {k: v.clone() for k, v in module.state_dict().items()}  # batch-norm statistics
    tracker = _LiveBytes()
    with fake_safe(module):
        with FakeTensorMode(allow_non_fake_inputs=True), tracker.mode:
            make_step(module, torch.empty(input_shape, dtype=dtype, device=device), mode)()
    module.zero_grad(set_to_none=True)
    module.load_state_dict(state)
    return tracker.peak


def available_memory(device: torch.device | str) -> int | None:
    """Bytes a new allocation can use now: free GPU memory; on the CPU the least of the system's MemAvailable,
    what this process's address-space limit (``ulimit -v``) leaves above its virtual size, and what its cgroup's
    memory limit (a container's, a Slurm job's) leaves above the cgroup's use. None when none of them is known."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    known = [b for b in (_meminfo_available(), _address_space_left(), _cgroup_left()) if b is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _address_space_left() -> int | None:
    """RLIMIT_AS's soft limit less this process's virtual size (VmSize), or None without a limit."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        return max(0, limit - _status_bytes("VmSize"))
    except (OSError, RuntimeError):  # no /proc, or no VmSize in it
        return None


CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_FILES = {2: ("memory.max", "memory.current"), 1: ("memory.limit_in_bytes", "memory.usage_in_bytes")}


def _cgroup_left(membership: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> int | None:
    """What the memory limits of this process's cgroup and its ancestors (v2, or v1's memory controller) leave
    above each one's use, the least of them; None without a limit (v2 writes "max", v1 a number near 2^63)."""
    try:
        lines = [line.split(":", 2) for line in membership.read_text().splitlines()]
    except OSError:
        return None
    for _, controllers, path in (parts for parts in lines if len(parts) == 3):
        if controllers == "":
            version, top = 2, root
        elif "memory" in controllers.split(","):
            version, top = 1, root / "memory"
        else:
            continue
        limit_file, use_file = CGROUP_FILES[version]
        folder = top / path.strip("/")
        left = []
        for level in (folder, *folder.parents[: len(folder.parts) - len(top.parts)]):  # up to the top, inclusive
            try:
                limit, use = (level / limit_file).read_text().strip(), (level / use_file).read_text().strip()
                if limit != "max" and int(limit) < 2**62:
                    left.append(max(0, int(limit) - int(use)))
            except (OSError, ValueError):
                continue
        if left:
            return min(left)
    return None
