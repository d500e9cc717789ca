"""MAC counts: every variant against an analytic formula and against torch's FlopCounterMode."""

import subprocess
import sys

import pytest
import torch
from conftest import VARIANTS
from torch.utils.flop_counter import FlopCounterMode

import attnbench
from attnbench.measure.flop_handles import einsum_equation_macs, matmul_macs
from attnbench.measure.macs import analyse_macs, count_macs

# C = 32 keeps every per-head width above 1: torch.einsum turns size-1 contractions into mul + sum,
# which FlopCounterMode does not count
B, C, H, W = 2, 32, 12, 10
N = H * W


def analytic(name: str, m) -> int:
    """MACs from each paper's equations (one multiply-add = 1), per forward pass of B images."""
    cfg = m.cfg
    if name == "conv":
        return B * N * 9 * C * C
    reach = lambda side: side if getattr(cfg, "span", None) is None else min(cfg.span, side)  # noqa: E731
    if name == "gsa":
        dk, h = m.dim_key, cfg.heads
        projections = N * C * (2 * dk + C)
        content = 2 * N * dk * C // h  # rho(K)^T V, then Q times it
        positional = N * reach(H) * (dk + C) + N * reach(W) * (dk + C)  # column, row: q.r, weighted sum
        return B * (projections + content + positional)
    if name == "local":
        return B * (3 * N * C * C + 3 * N * cfg.window**2 * C)  # q.k, q.r, weighted sum per window element
    if name == "nonlocal":
        d = C // cfg.reduction
        keys = -(-H // 2) * -(-W // 2) if cfg.subsample else N
        return B * (3 * N * C * d + N * d * C + 2 * N * keys * d)
    if name == "axial":
        layer = lambda length: N * C * 2 * C + N * length * (3 * C // 2 + 2 * C)  # noqa: E731
        return B * (layer(reach(H)) + layer(reach(W)))
    if name == "efficient":
        dk, dv = cfg.keys, cfg.values
        # projections and reprojection, then rho_k(K)^T V and rho_q(Q) times it, per head
        return B * (N * C * (2 * dk + dv) + N * dv * C + 2 * N * dk * dv // cfg.heads)
    if name == "mhsa":
        return B * (3 * N * C * C + 2 * N * N * C + N * (H + W) * C)  # q.k and the weighted sum over all pairs; q.r
    if name == "neighborhood":
        return B * (4 * N * C * C + 2 * N * min(cfg.window, H) * min(cfg.window, W) * C)
    if name == "window":  # every pixel of the map padded to whole windows is a query meeting its window's m^2 keys
        m = min(cfg.window, H, W)
        padded = -(-H // m) * m * (-(-W // m) * m)
        return B * (3 * padded * C * C + N * C * C + 2 * padded * m * m * C)
    raise AssertionError(f"no analytic MAC formula for '{name}'")


OPTIONS = {"nonlocal": [{}, {"subsample": False}], "gsa": [{}, {"dim_key": 16}, {"span": 5}],
           "local": [{}, {"window": 3}], "axial": [{}, {"span": 5}], "efficient": [{}, {"key_channels": 8}],
           "neighborhood": [{}, {"window": 3}, {"window": 15}],
           "window": [{}, {"window": 3}, {"window": 5, "shifted": True}]}


@pytest.mark.parametrize("name, options", [(v, o) for v in VARIANTS for o in OPTIONS.get(v, [{}])], ids=str)
def test_count_matches_the_analytic_formula(name, options):
    """The same count whichever implementation the layer runs."""
    for impl in attnbench.list_impls(name):
        m = attnbench.build_variant(name, C, size=max(H, W), impl=impl, **options)
        assert attnbench.count_macs(m, torch.randn(B, C, H, W)) == analytic(name, m), impl


def flop_counter_macs(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    total = counter.get_total_flops()
    assert total % 2 == 0
    return total // 2


@pytest.mark.parametrize("name", VARIANTS)
def test_count_matches_torch_flop_counter(name):
    """FlopCounterMode counts 2 per MAC; for variants whose fast path does masked or fused work
    (local: halo tiles; nonlocal, window and mhsa: fused attention, which the counter misses on CPU, mhsa's
    on widened queries) it counts the textbook implementation (window's and mhsa's reference), whose every
    multiply-add is one the mechanism needs."""
    m = attnbench.build_variant(name, C, size=max(H, W)).eval()
    x = torch.randn(B, C, H, W)
    textbook = {"local": "plain", "nonlocal": "plain", "neighborhood": "plain", "mhsa": "dense",
                "window": "windows"}
    fn = (lambda t: attnbench.get_impl(name, textbook[name]).forward(m, t)) if name in textbook else m
    with torch.no_grad():
        assert attnbench.count_macs(m, x) == flop_counter_macs(fn, x)


def test_resnet50_matches_torchvision_count():
    m = attnbench.build_model("resnet50")
    assert attnbench.count_macs(m, torch.randn(1, 3, 224, 224)) == 4_089_184_256


def test_a_count_allocates_none_of_the_reference_implementations_work():
    """mhsa's reference (dense) makes all of its N x N logits at once: 64 GiB at 256 x 256 with 4 heads. The count
    traces shapes alone, so it is made in a process that may map 8 GiB, and is the analytic one."""
    side, dim = 256, 16
    script = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({8 * 2**30}, {8 * 2**30})); import torch; "
              f"import attnbench; m = attnbench.build_variant('mhsa', {dim}, size={side}); "
              f"print(attnbench.count_macs(m, torch.randn(1, {dim}, {side}, {side})))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    n = side * side
    assert done.returncode == 0, done.stderr[-500:]
    assert int(done.stdout) == 3 * n * dim * dim + 2 * n * n * dim + n * 2 * side * dim


@pytest.mark.parametrize("name", VARIANTS)
def test_a_network_counts_as_if_traced_whole_on_the_reference(name):
    """A network does not trace on meta tensors (its convolutions), so it is traced on real ones with each attention
    layer counted alone on meta: the count is the one a real trace of the whole network on the references gives."""
    from attnbench.measure.macs import _analyse

    net = attnbench.build_model(f"{name}_probe", num_classes=10, image_size=24).eval()
    x = torch.randn(1, 3, 24, 24)
    whole = _analyse(net, (x,))  # every layer on its reference, on real tensors
    count = analyse_macs(net, x)
    assert (count.macs, count.uncounted_ops) == (whole.macs, whole.uncounted_ops)


def test_a_networks_count_allocates_none_of_its_attention_references_work():
    """mhsa_probe at 256: its layers' dense logits (256^2 squared: 16 GiB a head) would not fit; counted in a
    process that may map 12 GiB."""
    script = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({12 * 2**30}, {12 * 2**30})); import torch; "
              "import attnbench; m = attnbench.build_model('mhsa_probe', num_classes=10, image_size=256); "
              "print(attnbench.count_macs(m, torch.randn(1, 3, 256, 256)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and int(done.stdout) > 0, done.stderr[-500:]


def test_a_module_that_cannot_be_copied_is_counted_on_its_inputs():
    """A user's network holding a lock cannot be copied onto the meta device: it is traced as it is, to the same
    count."""
    import threading

    net = attnbench.build_model("gsa_probe", num_classes=10, image_size=16).eval()
    x = torch.randn(1, 3, 16, 16)
    plain = count_macs(net, x)
    net.lock = threading.Lock()
    assert count_macs(net, x) == plain


def test_uncounted_ops_are_reported():
    count = analyse_macs(attnbench.build_variant("gsa", C, size=12), torch.randn(1, C, 12, 12))
    assert "aten::softmax" in count.uncounted_ops


def test_declared_macs_replace_the_traced_work():
    count = analyse_macs(attnbench.build_variant("local", C, size=12), torch.randn(1, C, 12, 12))
    assert count.declared_by == ("LocalSelfAttention",)


@pytest.mark.parametrize(
    "a, b, want",
    [([3, 4], [4, 5], 60), ([2, 3, 4], [4, 5], 120), ([4], [4, 5], 20), ([2, 1, 3, 4], [5, 4, 6], 2 * 5 * 3 * 4 * 6)],
)
def test_matmul_macs_follow_broadcasting(a, b, want):
    assert matmul_macs(a, b) == want


class _Baddbmm(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, n, k): x + x @ x^T, scaled
        return torch.baddbmm(x[..., :1], x, x.transpose(1, 2), alpha=0.5)


def test_baddbmm_counts_its_product():
    count = analyse_macs(_Baddbmm(), torch.randn(2, 3, 4))
    assert count.macs == 2 * 3 * 4 * 3 and "aten::baddbmm" not in count.uncounted_ops


def test_einsum_macs_and_refusals():
    assert einsum_equation_macs("bij,bjk->bik", [[2, 3, 4], [2, 4, 5]]) == 2 * 3 * 4 * 5
    with pytest.raises(ValueError, match="summed out of one operand"):
        einsum_equation_macs("ij,jk->k", [[3, 4], [4, 5]])


@pytest.mark.parametrize("name, impl", [("gsa", "batched"), ("axial", "lines")])
def test_a_fixed_span_costs_pixels_times_span(name, impl):
    """Blocked along the axis, the GPU-shaped implementations do at most twice the mechanism's work
    (tiles of span queries meet 2 span - 1 keys), however long the axis; whole-axis products would
    do side / span times more."""
    side, span = 96, 5
    m = attnbench.build_variant(name, C, size=side, span=span, impl=impl).eval()
    x = torch.randn(1, C, side, side)
    with torch.no_grad():
        work = flop_counter_macs(m, x)
    mechanism = attnbench.count_macs(m, x)
    projections = flop_counter_macs(lambda t: m.to_qkv(t) if name == "gsa" else (m.height.qkv(t), m.width.qkv(t)), x)
    assert mechanism < work <= projections + 2 * (mechanism - projections)
