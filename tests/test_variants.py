"""Every registered variant, against the contract and against a naive implementation of its paper."""

import warnings

import pytest
import torch
from conftest import DEVICE, VARIANTS, randomize_norms
from naive import NAIVE

import attnbench
from attnbench.registry import Inputs

TEST_DIM = 16
TEST_RES = 12


def make(name: str, dim: int = TEST_DIM, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norms(attnbench.build_variant(name, dim, size=TEST_RES, **options)).to(DEVICE)


def test_registry_lists_the_nine_variants():
    assert set(attnbench.list_variants()) >= {"gsa", "local", "nonlocal", "axial", "conv", "window", "neighborhood",
                                              "mhsa", "efficient"}


def test_shape_and_dtype(variant):
    m = make(variant).eval()
    for shape in [(2, TEST_DIM, TEST_RES, TEST_RES), (1, TEST_DIM, 7, 10)]:
        x = torch.randn(*shape, device=DEVICE)
        y = m(x)
        assert y.shape == x.shape and y.dtype == x.dtype
    m64 = make(variant).double().eval()
    assert m64(torch.randn(1, TEST_DIM, 6, 6, dtype=torch.float64, device=DEVICE)).dtype == torch.float64


def test_stride_two_halves_the_map(variant):
    m = make(variant, stride=2).eval()
    assert m(torch.randn(2, TEST_DIM, 8, 12, device=DEVICE)).shape == (2, TEST_DIM, 4, 6)
    assert m(torch.randn(2, TEST_DIM, 9, 11, device=DEVICE)).shape == (2, TEST_DIM, 5, 6)  # odd sides round up


def test_finite_for_large_inputs(variant):
    m = make(variant).eval()
    y = m(torch.randn(2, TEST_DIM, TEST_RES, TEST_RES, device=DEVICE) * 1e3)
    assert torch.isfinite(y).all()


def test_every_parameter_gets_a_gradient(variant):
    m = make(variant).train()
    x = torch.randn(2, TEST_DIM, 8, 8, device=DEVICE)
    (m(x) * torch.randn(2, TEST_DIM, 8, 8, device=DEVICE)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{variant}.{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{variant}.{name} got a zero gradient"


def test_batch_independence_in_eval(variant):
    m = make(variant).eval()
    x = torch.randn(3, TEST_DIM, 9, 9, device=DEVICE)
    together = m(x)
    for i in range(3):
        torch.testing.assert_close(m(x[i : i + 1]), together[i : i + 1], rtol=1e-4, atol=1e-5)


CASES = {  # options exercising each variant's paths on tiny inputs
    "gsa": [{}, {"span": 3}, {"content": False}, {"positional": False}, {"dim_key": 8, "heads": 4}, {"stride": 2}],
    "local": [{}, {"window": 3}, {"window": 3, "block": 2}, {"stride": 2}],
    "nonlocal": [{}, {"subsample": False}, {"stride": 2}],
    "axial": [{}, {"span": 3}, {"stride": 2}],
    "conv": [{}, {"stride": 2}],
    "efficient": [{}, {"key_channels": 4, "value_channels": 8}, {"stride": 2}],
    "mhsa": [{}, {"stride": 2}],
    "neighborhood": [{}, {"window": 3}, {"window": 3, "block": 2}, {"window": 5, "block": 3}, {"stride": 2}],
    "window": [{}, {"window": 3}, {"window": 3, "shifted": True}, {"window": 4, "shifted": True}, {"stride": 2}],
}


def test_every_variant_has_a_naive_reference(variant):
    assert variant in NAIVE and variant in CASES, f"write a naive implementation of '{variant}' in tests/naive.py"


IMPL_CASES = [(v, i, o) for v in VARIANTS for i in attnbench.list_impls(v) for o in CASES.get(v, [{}])]
SHAPES = [(2, 8, 6, 5), (2, 8, 11, 13)]  # even and odd sides, non-square


def two_heads(variant: str) -> dict:
    """8 channels in 2 heads, for the variants that have heads."""
    return {"heads": 2} if "heads" in attnbench.get_variant_spec(variant).options() else {}


def make_fp64(variant: str, impl: str, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    m = attnbench.build_variant(variant, 8, size=13, impl=impl, **{**two_heads(variant), **options})
    return randomize_norms(m).double().cpu()


def skip_unless_supported(variant: str, impl: str, grad: bool) -> None:
    reasons = attnbench.get_impl(variant, impl).reasons(Inputs("cpu", torch.float64, grad, SHAPES[1]))
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.mark.parametrize("variant, impl, options", IMPL_CASES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_implementation_matches_naive_implementation(variant, impl, options, shape):
    m = make_fp64(variant, impl, options).eval()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():  # the naive one's many small steps too: no gradient is asked for, none is recorded
        got = m(x)
        want = NAIVE[variant](m, x)
    diff = (got - want).abs().max().item()
    assert diff < 1e-5, f"{variant}/{impl} {options} {shape}: max abs difference {diff:.3g} from the naive one"


@pytest.mark.parametrize("variant, impl, options", [c for c in IMPL_CASES if c[1] != attnbench.list_impls(c[0])[0]],
                         ids=str)
def test_every_implementation_trains_as_the_reference(variant, impl, options):
    """Train mode: same output, same batch-norm statistics and the same gradients as the reference."""
    skip_unless_supported(variant, impl, grad=True)
    assert_trains_as_the_reference(variant, impl, options)


def assert_trains_as_the_reference(variant: str, impl: str, options: dict) -> None:
    reference = make_fp64(variant, attnbench.list_impls(variant)[0], options).train()
    other = make_fp64(variant, impl, options).train()
    x = torch.randn(*SHAPES[1], dtype=torch.float64)
    y_ref, y = reference(x), other(x)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    for (name, a), b in zip(other.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=f"{variant}/{impl}: gradient of {name}")
    for (name, a), b in zip(other.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, msg=f"{variant}/{impl}: buffer {name}")


@pytest.mark.parametrize("variant, impl", [(v, i) for v in VARIANTS for i in attnbench.list_impls(v)], ids=str)
def test_every_implementation_compiles_without_graph_breaks(variant, impl):
    m = make_fp64(variant, impl, {}).eval()
    x = torch.randn(*SHAPES[1], dtype=torch.float64)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))


def test_state_dicts_load_into_every_implementation(variant):
    source = make_fp64(variant, "auto", {})
    x = torch.randn(*SHAPES[0], dtype=torch.float64)
    with torch.no_grad():
        want = source.eval()(x)
        for impl in attnbench.list_impls(variant):
            target = attnbench.build_variant(variant, 8, size=13, impl=impl, **two_heads(variant))
            target.double().load_state_dict(source.state_dict())
            torch.testing.assert_close(target.eval()(x), want, msg=f"{variant}/{impl}")


AUTO_RULE = {  # the rule README.md documents (measured on CPUs, designed for CUDA): (cpu, cuda)
    "gsa": ("pixelmajor", "batched"), "local": ("halo", "flex"), "axial": ("lines", "lines"),
    "nonlocal": ("sdpa", "sdpa"), "conv": ("native", "native"), "efficient": ("einsum", "einsum"),
    "mhsa": ("blocked", "sdpa"), "neighborhood": ("tiles", "flex"), "window": ("tokens", "sdpa"),
}


def test_auto_follows_the_documented_rule_per_input_device(variant):
    assert variant in AUTO_RULE, f"document the auto rule of '{variant}' in README.md and here"
    cpu, cuda = AUTO_RULE[variant]
    assert (attnbench.resolve_impl(variant, "auto", "cpu"), attnbench.resolve_impl(variant, "auto", "cuda")) == (
        cpu, cuda)
    m = attnbench.build_variant(variant, 16)
    assert m.implementation(torch.empty(1, 16, 4, 4)).name == cpu  # the input's device decides
    assert m.implementation(torch.empty(1, 16, 4, 4, device="meta")).name == attnbench.list_impls(variant)[0]


def test_unknown_implementation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown implementation of variant 'local': 'flx'. Available: auto, halo"):
        attnbench.build_variant("local", 16, impl="flx")


def test_capturing_runs_the_reference_implementation(variant):
    m = attnbench.build_variant(variant, 16, size=TEST_RES, impl=attnbench.list_impls(variant)[-1])
    x = torch.randn(1, 16, 6, 6)
    m.capture(True)
    assert m.implementation(x).name == attnbench.list_impls(variant)[0]
    m.capture(False)
    assert m.implementation(x).name == attnbench.list_impls(variant)[-1]


def _changed_pixels(m, x, at):
    y0 = m(x)
    x1 = x.clone()
    x1[0, :, at[0], at[1]] += 1.0
    return (m(x1) - y0).abs().amax(dim=(0, 1)) > 1e-9


@pytest.mark.parametrize("at", [(0, 0), (4, 5), (1, 9)])
def test_receptive_field(variant, at):
    spec = attnbench.get_variant_spec(variant)
    options = {"window": 3} if variant in ("local", "neighborhood", "window") else {}
    m = make(variant, **options).double().eval()
    x = torch.randn(1, TEST_DIM, 9, 10, dtype=torch.float64, device=DEVICE)
    changed = _changed_pixels(m, x, at)
    if spec.global_receptive_field:
        expected = torch.ones_like(changed)
    elif variant == "neighborhood":  # the queries whose 3 x 3 window, shifted inwards at the borders, holds it
        def holds(length: int, key: int) -> torch.Tensor:
            start = (torch.arange(length, device=DEVICE) - 1).clamp(0, length - 3)
            return (start <= key) & (key < start + 3)

        expected = holds(9, at[0])[:, None] & holds(10, at[1])[None, :]
    elif variant == "window":  # the pixels of its 3 x 3 window
        rows = torch.arange(9, device=DEVICE) // 3 == at[0] // 3
        cols = torch.arange(10, device=DEVICE) // 3 == at[1] // 3
        expected = rows[:, None] & cols[None, :]
    else:
        reach = {"conv": 1, "local": 1}[variant]
        rows = (torch.arange(9, device=DEVICE) - at[0]).abs() <= reach
        cols = (torch.arange(10, device=DEVICE) - at[1]).abs() <= reach
        expected = rows[:, None] & cols[None, :]
    assert torch.equal(changed, expected), f"{variant}: outputs changed by pixel {at}:\n{changed.int()}"


def test_bf16_forward_on_cpu(variant):
    m = make(variant).eval().cpu()
    x = torch.randn(2, TEST_DIM, TEST_RES, TEST_RES)
    want = m(x)
    got = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    rel = (got.float() - want).norm() / want.norm()
    assert rel < 0.05, f"{variant}: bf16 relative error {rel:.3g}"


def test_unknown_variant_lists_names_and_closest():
    with pytest.raises(KeyError) as err:
        attnbench.build_variant("gssa", 16)
    msg = str(err.value)
    assert "Available: axial, conv, efficient, gsa, local, mhsa, neighborhood, nonlocal, window" in msg
    assert "Did you mean 'gsa'?" in msg


@pytest.mark.parametrize(
    "name, options, fragment",
    [
        ("gsa", {"heads": 3}, "Invalid dim=16: dim must be divisible by heads=3"),
        ("local", {"window": 0}, "Invalid window=0: window must be a positive odd integer"),
        ("local", {"window": 4}, "Invalid window=4"),
        ("axial", {"span": 2}, "Invalid span=2"),
        ("nonlocal", {"reduction": 3}, "Invalid dim=16: dim must be divisible by reduction=3"),
        ("conv", {"stride": 3}, "Invalid stride=3: stride must be 1 or 2"),
        ("gsa", {"content": False, "positional": False}, "at least one branch"),
        ("gsa", {"size": 0}, "Invalid size=0"),
    ],
)
def test_invalid_option_says_which_and_why(name, options, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        attnbench.build_variant(name, 16, **options)


def test_unknown_option_is_an_error():
    with pytest.raises(TypeError, match="Unknown option 'windw' for variant 'local'.*Did you mean 'window'"):
        attnbench.build_variant("local", 16, windw=7)


@pytest.mark.parametrize("variant", ["gsa", "local"])
def test_chunked_computation_matches_naive(variant, monkeypatch):
    """Force one image (gsa) or one tile (local) per chunk; train-mode BN must still see the whole batch."""
    module = {"gsa": "attnbench.variants.gsa", "local": "attnbench.variants.local"}[variant]
    monkeypatch.setattr(f"{module}.CHUNK_ELEMENTS", 1)
    m = make(variant, dim=8, heads=2).double().eval().cpu()
    x = torch.randn(3, 8, 6, 5, dtype=torch.float64)
    diff = (m(x) - NAIVE[variant](m, x)).abs().max().item()
    assert diff < 1e-5, f"{variant}: max abs difference {diff:.3g}"
    m.train()
    monkeypatch.setattr(f"{module}.CHUNK_ELEMENTS", 1 << 30)
    whole = m(x)
    monkeypatch.setattr(f"{module}.CHUNK_ELEMENTS", 1)
    torch.testing.assert_close(m(x), whole)


def test_mhsa_augmented_kernel_path_matches_naive_and_trains_as_the_reference(monkeypatch):
    """augmented runs dense while a head's logits fit in EXPLICIT_LOGITS: with none, its fused-kernel path (augmented
    queries and keys) runs at the test sizes, and must be the same function, in training too."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr("attnbench.variants.mhsa.EXPLICIT_LOGITS", 0)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *args, **kw: calls.append(q.shape) or sdpa(q, *args, **kw))
    for options in CASES["mhsa"]:
        m = make_fp64("mhsa", "augmented", options).eval()
        for shape in SHAPES:
            x = torch.randn(*shape, dtype=torch.float64)
            with torch.no_grad():
                diff = (m(x) - NAIVE["mhsa"](m, x)).abs().max().item()
            assert diff < 1e-5, f"mhsa/augmented {options} {shape}: max abs difference {diff:.3g} from the naive one"
        assert_trains_as_the_reference("mhsa", "augmented", options)
    H, W = SHAPES[1][2:]
    assert (2, 2, H * W, 4 + H + W) in calls  # 8 channels in 2 heads of 4, widened by H + W


def test_mhsa_blocked_in_blocks_of_few_queries_matches_naive_and_trains_as_the_reference(monkeypatch):
    """blocked computes the logits of BLOCK_LOGITS pairs at a time: with blocks of one or two queries (the last one
    shorter), forward and the recomputing backward are the same function as the naive one and the reference, the
    input's gradient included."""
    import attnbench.variants.mhsa as mhsa

    ranges = []
    blocks = mhsa._blocks
    monkeypatch.setattr(mhsa, "_blocks", lambda batch, n: ranges.append(blocks(batch, n)) or ranges[-1])
    for pairs in (4 * 11 * 13 * 2, 1):  # (2 images x 2 heads) x 11 x 13 keys x 2 queries a block, then 1 query
        monkeypatch.setattr(mhsa, "BLOCK_LOGITS", pairs)
        for options in CASES["mhsa"]:
            m = make_fp64("mhsa", "blocked", options)
            x = torch.randn(*SHAPES[1], dtype=torch.float64, requires_grad=True)
            with torch.no_grad():
                diff = (m.eval()(x) - NAIVE["mhsa"](m, x)).abs().max().item()
            assert diff < 1e-12, f"mhsa/blocked {options}: max abs difference {diff:.3g} from the naive one"
            assert_trains_as_the_reference("mhsa", "blocked", options)
            reference = make_fp64("mhsa", "dense", options).train()
            y = m.train()(x)
            (grad,) = torch.autograd.grad((y * y).sum(), x)
            x_ref = x.detach().requires_grad_()
            y_ref = reference(x_ref)
            (grad_ref,) = torch.autograd.grad((y_ref * y_ref).sum(), x_ref)
            torch.testing.assert_close(grad, grad_ref)
        n = 11 * 13
        assert [len(r) for r in ranges[-2:]] == ([(n + 1) // 2] * 2 if pairs > 1 else [n] * 2), ranges[-2:]
        ranges.clear()


def test_gsa_train_mode_batch_norm_matches_the_plain_implementation():
    """GSA normalises the column layer in its own layout; in training it must behave as nn.BatchNorm2d:
    same output, same running statistics, same gradients."""
    import copy

    fast = make("gsa", dim=8, heads=2).double().train()
    plain = copy.deepcopy(fast)
    x = torch.randn(3, 8, 6, 5, dtype=torch.float64)
    y_fast, y_plain = fast(x), attnbench.get_impl("gsa", "plain").forward(plain, x)
    torch.testing.assert_close(y_fast, y_plain)
    torch.testing.assert_close(fast.norm.running_mean, plain.norm.running_mean)
    torch.testing.assert_close(fast.norm.running_var, plain.norm.running_var)
    assert fast.norm.num_batches_tracked == plain.norm.num_batches_tracked == 1
    g = torch.randn_like(y_fast)
    (y_fast * g).sum().backward()
    (y_plain * g).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=f"gradient of {name}")


def test_empty_batches_and_wrong_inputs_are_the_same_for_every_variant(variant):
    for impl in attnbench.list_impls(variant):
        for stride in (1, 2):
            m = attnbench.build_variant(variant, 16, size=9, stride=stride, impl=impl)
            assert m(torch.randn(0, 16, 9, 7)).shape == (0, 16, -(-9 // stride), -(-7 // stride))
        with pytest.raises(ValueError, match=rf"{variant}: expected input \(B, 16, H, W\), got \(1, 8, 9, 9\)"):
            m(torch.randn(1, 8, 9, 9))


@pytest.mark.parametrize("call, error", [
    (lambda: attnbench.build_variant(None, 16), "A variant name is a string, not None"),
    (lambda: attnbench.build_model(None), "A model name is a string, not None"),
    (lambda: attnbench.build_model("resnet26", num_classes=0), "Invalid num_classes=0"),
    (lambda: attnbench.build_model("gsa_probe", width=0), "Invalid width=0"),
])
def test_bad_builder_arguments_are_named(call, error):
    with pytest.raises((KeyError, ValueError), match=error):
        call()


def test_set_impl_chooses_for_every_layer_of_a_network():
    net = attnbench.build_model("gsa_resnet26", num_classes=10, stem="cifar", width=0.25)
    attnbench.set_impl(net, "batched")
    layers = [m for m in net.modules() if isinstance(m, attnbench.registry.Variant)]
    assert {m.impl for m in layers if m.variant_name == "gsa"} == {"batched"}
    assert {m.impl for m in layers if m.variant_name == "conv"} <= {"auto"}  # conv has no 'batched'
    with pytest.raises(ValueError, match="Unknown implementation of variant 'gsa': 'bached'"):
        attnbench.set_impl(net, "bached")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = attnbench.set_impl(net.eval(), "pixelmajor")(x)
        torch.testing.assert_close(attnbench.set_impl(net, "batched")(x), want)


def _block(rows: range, cols: range, shape=(9, 9)) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.bool, device=DEVICE)
    out[rows.start : rows.stop, cols.start : cols.stop] = True
    return out


def test_shifted_windows_mask_what_the_roll_brought_together_and_cross_the_previous_partition():
    shifted = make("window", window=3, shifted=True).double().eval()
    x = torch.randn(1, TEST_DIM, 9, 9, dtype=torch.float64, device=DEVICE)
    # windows rolled by one pixel: pixel (4, 4) shares the window of rows and columns 4-6
    assert torch.equal(_changed_pixels(shifted, x, (4, 4)), _block(range(4, 7), range(4, 7)))
    # pixel (0, 0) is rolled to the far corner, beside pixels from the far edges: the mask keeps it alone
    assert torch.equal(_changed_pixels(shifted, x, (0, 0)), _block(range(0, 1), range(0, 1)))
    # an unshifted block then a shifted one: pixel (2, 2) reaches beyond its first window, to rows and columns 0-3
    plain = make("window", window=3).double().eval()
    two = torch.nn.Sequential(plain, shifted)
    assert torch.equal(_changed_pixels(plain, x, (2, 2)), _block(range(0, 3), range(0, 3)))
    assert torch.equal(_changed_pixels(two, x, (2, 2)), _block(range(0, 4), range(0, 4)))


@pytest.mark.parametrize("impl", attnbench.list_impls("window"))
def test_windows_keep_their_layout_per_map_and_never_a_fake_one(impl):
    """A window layer keeps the shift mask and token order of each map side it met: other sides, and memory
    prediction on fake tensors before and between, leave every real forward as a fresh layer's."""
    from attnbench.measure.memory import predict_peak_memory

    options = {"window": 3, "shifted": True, "heads": 2, "impl": impl}
    layer = make("window", **options).double().eval()
    predict_peak_memory(layer, (1, TEST_DIM, 12, 12), "infer", dtype=torch.float64, device=DEVICE)
    for shape in [(1, TEST_DIM, 9, 9), (2, TEST_DIM, 7, 11), (1, TEST_DIM, 9, 9), (1, TEST_DIM, 12, 12)]:
        x = torch.randn(*shape, dtype=torch.float64, device=DEVICE)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), make("window", **options).double().eval()(x), rtol=0, atol=0)
        predict_peak_memory(layer, shape, "infer", dtype=torch.float64, device=DEVICE)


@pytest.mark.parametrize("channels", [8, 64])  # below and from the channels a CPU convolves from
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_1x1_projections_compute_the_convolution_by_either_kernel_with_its_gradients(channels, dtype, channels_last):
    """project / pointwise, to_rows and from_rows against nn.Conv2d in float64, forward without gradients and
    forward and backward with, in both dtypes and input layouts, by the kernel each regime takes."""
    from attnbench.variants._common import convolves, from_rows, pointwise, to_rows

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, 24, 1).to(dtype)
    x = torch.randn(3, channels, 5, 7).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = torch.nn.Conv2d(channels, 24, 1).double()
    ref.load_state_dict(conv.state_dict())
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 0.1, "rtol": 0.02}

    def rows_of(m):
        return m.permute(0, 2, 3, 1).flatten(1, 2)

    forms = {"pointwise": lambda t: pointwise(conv, t), "to_rows": lambda t: to_rows(conv, t),
             "from_rows": lambda t: from_rows(conv, rows_of(t), 5, 7)}
    for name, form in forms.items():
        want_of = (lambda t: rows_of(ref(t))) if name == "to_rows" else ref
        assert convolves(x) == (dtype == torch.float32 and channels >= 64)
        with torch.no_grad():
            torch.testing.assert_close(form(x).double(), want_of(x.double()), **tol, msg=name)
        xg = x.detach().requires_grad_()
        out = form(xg)
        grad = torch.randn_like(out)
        out.backward(grad)
        xr = x.double().requires_grad_()
        want = want_of(xr)
        want.backward(grad.double())
        torch.testing.assert_close(out.double(), want, **tol, msg=name)
        torch.testing.assert_close(xg.grad.double(), xr.grad, **tol, msg=name)
        for p, q in zip(conv.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad.double(), q.grad, **{k: 10 * v for k, v in tol.items()}, msg=name)
        conv.zero_grad(), ref.zero_grad()


@pytest.mark.parametrize("name", ["local", "neighborhood"])
def test_flex_runs_eagerly_off_gpus_without_torchs_warning_on_every_call(name):
    """torch warns that flex_attention was called without torch.compile; attnbench runs it so on purpose on a CPU
    (checked, not fast), and says so in the README, so the warning would only fill a sweep's stderr."""
    if "flex" not in attnbench.list_impls(name):
        pytest.skip("this torch has no FlexAttention")
    layer = attnbench.build_variant(name, 16, size=8, impl="flex").eval()
    with warnings.catch_warnings(record=True) as heard, torch.no_grad():
        warnings.simplefilter("always")
        out = layer(torch.randn(1, 16, 8, 8))
    assert out.shape == (1, 16, 8, 8) and not [w for w in heard if "torch.compile" in str(w.message)]
