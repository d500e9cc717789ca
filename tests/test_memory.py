"""Peak memory: measured on a known allocation, and predicted without running."""

import math
from pathlib import Path

import pytest
import torch

from attnbench.measure.memory import _cgroup_left, cpu_peak_supported, peak_memory, predict_peak_memory

MIB = 2**20
GIB = 2**30


class Allocates(torch.nn.Module):
    """Allocates (and touches) ``mib`` MiB in forward, keeping it alive until the output exists."""

    def __init__(self, mib: int):
        super().__init__()
        self.n = mib * MIB // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(self.n, dtype=torch.float32, device=x.device)
        return x + big[:1]


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs Linux's resettable peak RSS")
def test_cpu_peak_reads_a_known_allocation():
    m, x = Allocates(256), torch.zeros(1)
    m(x)  # warm-up, as the harness does
    got = peak_memory(lambda: m(x), "cpu")
    assert got["peak_mem_method"] == "cpu_peak_rss"
    assert abs(got["peak_mem_bytes"] - 256 * MIB) <= 0.1 * 256 * MIB, got


def test_prediction_sees_the_allocation_without_making_it():
    predicted = predict_peak_memory(Allocates(4096), (1,), "infer")  # 4 GiB: never allocated
    assert abs(predicted - 4096 * MIB) <= 0.01 * 4096 * MIB


def test_prediction_leaves_the_module_untouched():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    predict_peak_memory(m, (2, 3, 8, 8), "train")
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in m.parameters())
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 4, 6, 6)



@pytest.mark.parametrize("mode", ["infer", "train"])
def test_every_implementation_of_every_variant_is_predicted(variant, mode):
    """The harness predicts every case before running it; an operation fake tensors cannot run (one whose
    output shape depends on data) would turn every case of the variant into an error, and a tensor cached
    during the prediction would be fake in the real runs that follow."""
    import attnbench

    shape = (2, 16, 17, 19)  # a shape no other test runs, so the prediction is the first to meet it
    for impl in attnbench.list_impls(variant):
        options = {"shifted": True} if "shifted" in attnbench.get_variant_spec(variant).options() else {}
        m = attnbench.build_variant(variant, 16, size=19, impl=impl, **options).train(mode == "train")
        assert predict_peak_memory(m, shape, mode) > math.prod(shape) * 4, impl
        with torch.no_grad():  # nothing the prediction made (a cached fake tensor) leaks into the real run after it
            y = m.eval()(torch.randn(shape))
        assert type(y) is torch.Tensor and torch.isfinite(y).all(), impl


FAULTS_PER_REUSE = """
import resource, sys
import torch
from attnbench.measure.memory import keep_freed_memory, peak_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else None

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def block():  # 64 MiB, made, written and freed, as a forward pass's activation is
    torch.ones(16 * 2**20).add_(1)

for _ in range(5):  # the heap settles after a few uses (aligned blocks need a free chunk a little larger)
    block()
per_block = []
for _ in range(9):
    before = faults()
    block()
    per_block.append(faults() - before)
per_block = sorted(per_block)[4]  # the median use, as the harness reports the median run
big = torch.zeros(1)
peak = peak_memory(lambda: big + torch.ones(64 * 2**20)[:1], "cpu")["peak_mem_bytes"]
print(kept, per_block, peak)
"""


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs Linux's resettable peak RSS")
def test_a_process_that_keeps_freed_memory_reuses_it_without_faults_and_still_reads_its_peak():
    """glibc maps and unmaps every freed 64 MiB block (16384 pages faulted in again on each use); after
    keep_freed_memory the heap keeps it and, once settled, a use faults nothing, while the peak of a 256 MiB
    allocation still reads 256 MiB (free memory goes back to the system before the peak is reset). The median
    use is compared, as the harness reports the median run: on a loaded machine the heap has been seen to grow
    once more after the warm-up (one use in five faulting the block in), which a median does not hide in the
    default allocator, where every use faults."""
    import subprocess
    import sys

    def run(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_REUSE, mode], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0], float(out[1]), int(out[2])

    kept, faults_kept, peak_kept = run("kept")
    _, faults_default, peak_default = run("default")
    pages = 64 * MIB // 4096
    assert kept == "True"
    assert faults_default >= 0.9 * pages  # the control: without it, every use faults the block in again
    assert faults_kept <= 0.01 * pages
    for peak in (peak_kept, peak_default):
        assert abs(peak - 256 * MIB) <= 0.1 * 256 * MIB, peak


ADDRESS_SPACE = """
import resource, sys
from attnbench.data import check_fits
from attnbench.measure.memory import _status_bytes, available_memory
size = _status_bytes("VmSize")
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[1]), resource.RLIM_INFINITY))
available = available_memory("cpu")
grown = _status_bytes("VmSize") - size
try:
    check_fits("digits", 150)  # 1797 images, 3 x 150 x 150 floats, held twice: about 0.9 GiB
    refused = ""
except MemoryError as err:
    refused = str(err)
print(available, grown)
print(refused)
"""


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs Linux's /proc/self/status")
def test_available_memory_is_what_the_address_space_limit_leaves():
    """Under ``ulimit -v`` a process can allocate only up to its limit, however much the machine has free: with
    the limit set 512 MiB above the process's size, what is available is 512 MiB less what the process has grown
    by since, not the machine's MemAvailable; and eval refuses a side whose images would not fit in it, in one
    line, rather than failing to allocate them."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", ADDRESS_SPACE, str(512 * MIB)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    available, grown = (int(v) for v in out[0].split())
    assert abs(available - (512 * MIB - grown)) <= MIB, (available, grown)
    assert "need about 0.9 GiB" in out[1] and "0.5 GiB is available" in out[1], out[1]


def cgroup_tree(tmp_path, version: int, levels: dict[str, tuple[str, int]]) -> tuple[Path, Path]:
    """A cgroup hierarchy under tmp_path (levels: path -> (limit, use)) and a /proc/self/cgroup naming the
    deepest level for this process."""
    top = tmp_path / "cgroup" if version == 2 else tmp_path / "cgroup" / "memory"
    limit_file, use_file = ("memory.max", "memory.current") if version == 2 else (
        "memory.limit_in_bytes", "memory.usage_in_bytes")
    for path, (limit, use) in levels.items():
        folder = top / path.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / limit_file).write_text(f"{limit}\n")
        (folder / use_file).write_text(f"{use}\n")
    deepest = max(levels, key=len)
    membership = tmp_path / "proc-self-cgroup"
    membership.write_text(f"0::{deepest}\n" if version == 2 else f"5:cpu,cpuacct:/\n4:memory:{deepest}\n0::/\n")
    return membership, tmp_path / "cgroup"


@pytest.mark.parametrize("version", [1, 2])
def test_available_memory_is_what_the_tightest_cgroup_limit_leaves(tmp_path, version):
    """A container's or a Slurm job's memory limit is its cgroup's, or an ancestor's: what is left is the least of
    each level's limit less its use; a level without a limit ("max" in v2, about 2^63 in v1) limits nothing."""
    unlimited = "max" if version == 2 else str(2**63 - 4096)
    membership, root = cgroup_tree(tmp_path, version, {
        "/": (unlimited, 50 * GIB),
        "/job": (8 * GIB, 7 * GIB),  # 1 GiB left: the tightest
        "/job/step": (4 * GIB, 1 * GIB),  # 3 GiB left
    })
    assert _cgroup_left(membership, root) == 1 * GIB
    membership, root = cgroup_tree(tmp_path / "free", version, {"/": (unlimited, 1), "/a": (unlimited, 1)})
    assert _cgroup_left(membership, root) is None
    membership, root = cgroup_tree(tmp_path / "over", version, {"/a": (2 * GIB, 3 * GIB)})  # over its limit
    assert _cgroup_left(membership, root) == 0
    assert _cgroup_left(tmp_path / "no-such-file", root) is None
