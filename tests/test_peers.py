"""Our variants against maintained libraries' implementations of the same functions (attnbench.peers), in
float64: timm's BottleneckAttn, Swin's WindowAttention with its block's roll and partition, NonLocalAttn
(marked ``timm``: skipped where timm does not import); and in float32, its most precise on a CPU, NATTEN's
na2d (marked ``natten``: skipped where NATTEN does not import).
Every implementation of ours is compared, so each has a second library's check besides tests/naive.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import library_missing, randomize_norms

import attnbench
from attnbench import peers
from attnbench.peers import EQUAL_TOLERANCE, PEERS, build_pair, build_peer, missing, same_function

ROOT = Path(__file__).resolve().parent.parent


def assert_same_function(variant: str, options: dict, shape: tuple[int, ...], size: int | None = None,
                         zero_bias: bool = False) -> None:
    dtype = PEERS[variant].exact_dtype
    torch.manual_seed(0)
    ours = randomize_norms(attnbench.build_variant(variant, shape[1], size=size or max(shape[2:]), **options))
    ours = ours.to(dtype).eval()
    if zero_bias:
        with torch.no_grad():
            ours.rpb.zero_()
    x = torch.randn(*shape, dtype=dtype)
    peer = build_peer(variant, ours, shape).eval()
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        want = peer(x)
        assert want.shape == ours(x).shape
        for impl in attnbench.list_impls(variant):
            ours.impl = impl
            diff = (ours(x) - want).abs().max().item()
            assert diff < tolerance, f"{variant}/{impl} {options} {shape}: max abs difference {diff:.3g} from the peer"


@pytest.mark.timm
@pytest.mark.parametrize("shape, options, size", [
    ((2, 32, 6, 6), {"heads": 4}, None),
    ((2, 32, 5, 7), {"heads": 2}, None),  # non-square: timm's tables per axis, ours cover the larger side
    ((2, 32, 6, 6), {"heads": 4}, 9),  # tables built larger than the map: the central rows
    ((2, 32, 6, 8), {"heads": 4, "stride": 2}, None),
], ids=str)
def test_mhsa_is_timms_bottleneck_attention(shape, options, size):
    assert_same_function("mhsa", options, shape, size)


@pytest.mark.timm
@pytest.mark.parametrize("shape, options", [
    ((2, 32, 12, 12), {"heads": 2, "window": 3}),
    ((2, 32, 12, 12), {"heads": 2, "window": 3, "shifted": True}),
    ((2, 32, 8, 12), {"heads": 4, "window": 4, "shifted": True}),  # even window, non-square
    ((1, 64, 14, 21), {"heads": 2, "window": 7, "shifted": True}),
], ids=str)
def test_window_is_swins_window_attention(shape, options):
    assert_same_function("window", options, shape)


@pytest.mark.timm
@pytest.mark.parametrize("shape", [(2, 32, 7, 9), (1, 16, 6, 6)], ids=str)
def test_nonlocal_is_timms_non_local_attention(shape):
    assert_same_function("nonlocal", {"subsample": False}, shape)


@pytest.mark.timm
@pytest.mark.parametrize("variant, options, shape, fragment", [
    ("window", {"heads": 2, "window": 3, "shifted": True}, (1, 32, 10, 12), "multiples of the window"),
    ("window", {"heads": 2, "window": 3, "stride": 2}, (1, 32, 12, 12), "stride 1 only"),
    ("nonlocal", {}, (1, 32, 8, 8), "subsample=False"),
])
def test_peers_refuse_what_would_not_be_the_same_function(variant, options, shape, fragment):
    m = attnbench.build_variant(variant, shape[1], **options)
    with pytest.raises(ValueError, match=fragment):
        build_peer(variant, m, shape)


@pytest.mark.natten
@pytest.mark.parametrize("window", [3, 5])
def test_neighborhood_is_nattens_na2d_without_bias(window):
    assert_same_function("neighborhood", {"heads": 2, "window": window}, (2, 32, 9, 10), zero_bias=True)


@pytest.mark.timm
@pytest.mark.natten
@pytest.mark.parametrize("variant, options, shape", [
    ("mhsa", {"heads": 4}, (1, 32, 6, 6)),
    ("window", {"heads": 2, "window": 3, "shifted": True}, (1, 32, 9, 9)),
    ("nonlocal", {"subsample": False}, (1, 16, 6, 6)),
    ("neighborhood", {"heads": 2, "window": 3}, (1, 32, 7, 8)),
])
def test_the_peers_scripts_equality_holds_for_the_same_function_and_fails_for_another(variant, options, shape,
                                                                                       monkeypatch):
    diff, equal = same_function(variant, options, shape)
    assert equal and diff <= EQUAL_TOLERANCE[PEERS[variant].exact_dtype], (variant, diff)

    def off_by_one_unit(*args, **kwargs):  # a peer whose outputs differ from ours by one part in 10^4
        ours, peer = build_pair(*args, **kwargs)
        return ours, Scaled(peer)

    monkeypatch.setattr(peers, "build_pair", off_by_one_unit)
    diff, equal = same_function(variant, options, shape)
    assert not equal and diff > 0, (variant, diff)


class Scaled(torch.nn.Module):
    def __init__(self, peer: torch.nn.Module):
        super().__init__()
        self.peer = peer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.peer(x) * (1 + 1e-4)


@pytest.mark.parametrize("only, library", [([], "timm"), (["--only", "neighborhood"], "natten")])
def test_the_peers_script_says_in_one_line_when_the_library_it_needs_is_missing(tmp_path, only, library):
    """Each comparison names the library it needs: --only neighborhood said timm was missing, where NATTEN is
    what it compares against."""
    if library_missing(library) is None:
        pytest.skip(f"{library} imports here; the script runs its comparisons instead")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), *only], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and f"{library} does not import here" in done.stdout, done.stdout
    if library == "natten":
        assert "timm" not in done.stdout


@pytest.mark.parametrize("args, said", [
    (["--only", "gsa"], "argument --only: Unknown comparison 'gsa'. Available: mhsa, window, nonlocal, neighborhood, "
                        "resnet50."),
    (["--rounds", "0"], "argument --rounds: rounds 0 must be at least 1"),
    (["--min-run-time", "-1"], "argument --min-run-time: -1.0 must be a positive number"),
])
def test_the_peers_script_refuses_what_would_compare_nothing_or_fail_after_the_work(args, said):
    """An --only that names nothing the script compares selected nothing and passed every goal, --rounds 0 or
    --threads 0 ended in a traceback, a negative --min-run-time was taken: each is refused before anything
    runs, timm or not."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and not done.stdout, done.stdout
    assert done.stderr.splitlines()[-1].startswith(f"peers.py: error: {said}"), done.stderr
    assert "Traceback" not in done.stderr


def test_the_gpu_scripts_peer_and_timm_sections_say_in_one_line_what_cannot_run(tmp_path):
    """benchmarks/gpu.py's peer and timm sections, on the CPU at a small size: a library that does not import is one
    line each, not a failure."""
    if not missing("mhsa"):
        pytest.skip("timm imports here; the sections measure instead")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--batch", "1",
                           "--dim", "32", "--res", "14", "--net-batch", "1", "--net-res", "32", "--arch", "resnet26",
                           "--dtype", "fp32", "--sections", "peers,timm", "--db", str(tmp_path / "gpu.sqlite")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum("no peer row (timm does not import" in line for line in lines) == 4, done.stdout  # mhsa, 2 window, nl
    assert sum("timm does not import here" in line for line in lines) == 1, done.stdout
