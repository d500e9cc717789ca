"""CUDA paths: synchronised timing, allocator statistics, device names, several devices.

Marked ``gpu`` and skipped (with the reason) on machines without CUDA.
"""

import pytest
import torch
from conftest import VARIANTS

import attnbench
from attnbench import store
from attnbench.env import environment
from attnbench.harness import _is_oom
from attnbench.measure.latency import make_step, measure_latency
from attnbench.measure.memory import peak_memory, predict_peak_memory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
MIB = 2**20


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_variants_on_cuda_match_cpu(name, dtype):
    torch.manual_seed(0)
    m = attnbench.build_variant(name, 32, size=24).eval()
    x = torch.randn(2, 32, 24, 20)
    want = m(x)
    got = m.to("cuda", dtype)(x.to("cuda", dtype)).float().cpu()
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    rel = ((got - want).norm() / want.norm()).item()
    assert torch.isfinite(got).all() and rel < tol, f"{name} {dtype}: relative error {rel:.3g}"


@pytest.mark.parametrize("name, impl", [(v, i) for v in VARIANTS for i in attnbench.list_impls(v)],
                         ids=str)
def test_every_implementation_on_cuda_trains_as_the_cpu_reference(name, impl):
    """fp32 on the GPU (TF32 off) against the reference on the CPU: output, gradients, batch-norm statistics."""
    torch.manual_seed(0)
    ref = attnbench.build_variant(name, 32, size=24).train()
    gpu = attnbench.build_variant(name, 32, size=24, impl=impl).train()
    gpu.load_state_dict(ref.state_dict())
    gpu.cuda()
    x, g = torch.randn(2, 32, 24, 20), torch.randn(2, 32, 24, 20)
    want = ref(x)
    (want * g).sum().backward()
    allow = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        got = gpu(x.cuda())
        (got * g.cuda()).sum().backward()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)
    for (pname, a), b in zip(gpu.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-3, atol=1e-3, msg=f"{name}/{impl}: grad of {pname}")
    for (bname, a), b in zip(gpu.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3, msg=f"{name}/{impl}: buffer {bname}")


def test_cuda_peak_reads_a_known_allocation():
    def step():
        return torch.ones(64 * MIB, device="cuda")  # 256 MiB

    got = peak_memory(step, "cuda")
    assert got["peak_mem_method"] == "cuda_max_allocated"
    assert abs(got["peak_mem_bytes"] - 256 * MIB) <= 0.1 * 256 * MIB
    assert got["peak_mem_reserved_bytes"] >= got["peak_mem_bytes"] - 2 * MIB


def test_prediction_is_close_to_the_cuda_peak():
    m = attnbench.build_variant("axial", 64, size=64).cuda()
    step = make_step(m, torch.randn(4, 64, 64, 64, device="cuda"), "train")
    step()
    measured = peak_memory(step, "cuda")["peak_mem_bytes"]
    predicted = predict_peak_memory(m, (4, 64, 64, 64), "train", device="cuda")
    assert 0.5 * measured <= predicted <= 2 * measured, (predicted, measured)


def test_cuda_timing_synchronises():
    a = torch.randn(4096, 4096, device="cuda")
    slow = measure_latency(lambda: a @ a @ a @ a, "cuda", batch=1, threads=1, min_run_time=0.2)
    fast = measure_latency(lambda: a + 1, "cuda", batch=1, threads=1, min_run_time=0.2)
    assert slow["latency_ms_median"] > 3 * fast["latency_ms_median"] > 0


def test_device_names_are_recorded():
    env = environment("cuda:0")
    assert env.gpu_name == torch.cuda.get_device_name(0) == env.device_name
    assert env.cuda_version == torch.version.cuda


def test_out_of_memory_is_recognised():
    try:
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
    except Exception as err:  # noqa: BLE001
        assert _is_oom(err)
    else:
        pytest.fail("a petabyte allocation succeeded")


def test_sweep_on_every_gpu(tmp_path):
    from attnbench.cli import main

    db = str(tmp_path / "r.sqlite")
    devices = ",".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    assert main(["run", "--scope", "module", "--variants", "gsa,local,nonlocal,axial,conv", "--res", "16,64",
                 "--device", devices, "--db", db, "--min-run-time", "0.05"]) == 0
    frame = store.load_results(db)
    assert set(frame.status) == {"ok"}
    assert len(frame) == 10 * torch.cuda.device_count()
    assert (frame.peak_mem_method == "cuda_max_allocated").all() and frame.gpu_name.notna().all()


def test_a_cuda_worker_stays_warm_across_cases_one_of_them_too_large():
    from attnbench.harness import Worker
    from attnbench.record import Case

    small = Case("module", "conv", "", 32, 8, 64, "fp32", "cuda:0", "infer", 1, "native")
    free, _ = torch.cuda.mem_get_info(0)
    side = int((free / 4 / 64) ** 0.5) + 64  # one input alone larger than the device: predicted, skipped at once
    with Worker("cuda:0") as worker:
        first, _ = worker.run(small, timeout=300, min_run_time=0.05)
        pid = worker.pid
        big, _ = worker.run(Case("module", "conv", "", side, 1, 64, "fp32", "cuda:0", "infer", 1, "native"),
                            timeout=300, min_run_time=0.05)
        again, _ = worker.run(small, timeout=300, min_run_time=0.05)
    assert first.status == again.status == "ok" and big.status in ("skipped", "oom") and worker.pid is None
    assert again.wall_s < first.wall_s  # torch and CUDA started once
    assert pid is not None


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_every_gpu_measures_at_once_into_one_store(tmp_path):
    from attnbench.harness import run_cases
    from attnbench.sweep import Subject, expand

    db = str(tmp_path / "r.sqlite")
    cases = expand(subjects=[Subject("conv"), Subject("gsa")], res=[32, 64], batch=[8], dims=[64],
                   dtypes=["fp32"], devices=["cuda:0", "cuda:1"], modes=["infer"], scope="module", threads=1)
    records = run_cases(cases, db, min_run_time=0.05)
    assert [r.case for r in records] == cases and {r.measurement.status for r in records} == {"ok"}
    frame = store.load_results(db)
    assert sorted(frame.device.unique()) == ["cuda:0", "cuda:1"] and len(frame) == len(cases)
