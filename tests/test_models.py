"""Networks: names from the registry, architecture checks, and the published parameter and MAC counts."""

import pytest
import torch
from conftest import VARIANTS

import attnbench
from attnbench.baselines import compare_published, load_published
from attnbench.models import get_model_spec, list_models
from attnbench.models.resnet import DEPTHS


@pytest.fixture(scope="module")
def published():
    return compare_published(live=True)


@pytest.mark.slow
def test_shipped_counts_are_current(published):
    """attnbench/baselines/ours.csv (what reports read) holds what our networks count now; when this fails,
    regenerate it with `python -m attnbench.baselines` (where timm imports, for timm's rows)."""
    shipped = compare_published()
    counted = published.ours.notna()
    assert shipped.ours[counted].tolist() == published.ours[counted].tolist()
    # what was not counted here: rows naming no network of ours, and timm's where timm does not import
    assert set(published[~counted].expect) <= {"unmatched"} or not _timm_imports()
    assert all(m.startswith("timm:") for m in published[~counted & (published.expect != "unmatched")].model)


def _timm_imports() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or broken beside this torch
        return False
    return True


ROWS = [pytest.param(i, marks=pytest.mark.timm) if model.startswith("timm:") else i
        for i, model in enumerate(load_published().model)]


def test_shipped_variant_facts_are_current():
    """attnbench/baselines/variants.csv (names, papers and expected exponents that reports print without loading
    torch) is what the registry says now; a name it lacks sends a report to the registry."""
    from attnbench.baselines import count_variant_facts, variant_facts

    assert variant_facts().to_dict("records") == count_variant_facts(builtin=True).to_dict("records")
    assert variant_facts({"not-shipped"}).name.tolist() == attnbench.list_variants()


def test_every_variant_gets_its_networks_and_the_registry_says_what_each_is_built_of():
    names = list_models()
    for variant in VARIANTS:
        for depth in DEPTHS:
            spec = get_model_spec(f"{variant}_resnet{depth}")  # conv_resnet50: an alias of resnet50
            assert (spec.variant, spec.arch) == (variant, f"resnet{depth}") and spec.name in names
            assert spec.name == (f"resnet{depth}" if variant == "conv" else f"{variant}_resnet{depth}")
        assert (get_model_spec(f"{variant}_probe").variant, get_model_spec(f"{variant}_probe").arch) == (variant,
                                                                                                        "probe")
    assert {"resnet26", "resnet38", "resnet50", "resnet101", "axial_deeplab_26s", "axial_deeplab_50s"} <= set(names)
    assert (get_model_spec("botnet50").variant, get_model_spec("axial_deeplab_50s").variant) == ("mhsa", "axial")


def test_conv_resnet50_is_resnet50():
    a, b = attnbench.build_model("resnet50"), attnbench.build_model("conv_resnet50")
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]


def test_unknown_model():
    with pytest.raises(KeyError, match="Unknown model 'gsa_resnet51'.*Did you mean 'gsa_resnet50'"):
        get_model_spec("gsa_resnet51")


@pytest.mark.parametrize("row", ROWS)
def test_published_figures(published, row):
    r = published.iloc[row]
    if r.model.startswith("timm:") and not _timm_imports():
        pytest.skip("timm does not import here; .ci/run checks timm's rows in its timm environment")
    if r.expect == "unmatched":
        assert r.model not in list_models(), "an unmatched row must not name one of our networks"
        return
    detail = f"{r.model} {r.metric}: ours {r.ours:,.0f}, published {r.value:,.0f} ({r.printed}, {r.source})"
    if r.expect == "match":
        assert r.within, detail
    else:  # a known, explained difference: it must still be there, or the note is stale
        assert not r.within and isinstance(r.note, str) and r.note, detail


def test_resnet50_parameters_exactly(published):
    row = published[(published.model == "resnet50") & (published.metric == "params")].iloc[0]
    assert row.ours == 25_557_032


def test_gsa_resnet50_in_range(published):
    row = published[(published.model == "gsa_resnet50") & (published.metric == "params")].iloc[0]
    assert 18_000_000 <= row.ours <= 18_200_000


@pytest.mark.parametrize("name", ["gsa_resnet26", "local_resnet26", "axial_resnet26", "nonlocal_resnet26",
                                  "resnet26", "axial_deeplab_26s"])
def test_cifar_stem_small_network_trains_a_step(name):
    torch.manual_seed(0)
    net = attnbench.build_model(name, num_classes=10, stem="cifar", width=0.25)
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert out.shape == (2, 10)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_nonlocal_placement():
    from attnbench.variants.non_local import NonLocalBlock

    net = attnbench.build_model("nonlocal_resnet50")
    assert sum(isinstance(m, NonLocalBlock) for m in net.modules()) == 5  # 2 in res3, 3 in res4
    net = attnbench.build_model("nonlocal_resnet50", nonlocal_blocks=[(3, 2)])
    assert sum(isinstance(m, NonLocalBlock) for m in net.modules()) == 1
    with pytest.raises(ValueError, match="no such"):
        attnbench.build_model("nonlocal_resnet50", nonlocal_blocks=[(3, 3)])


def test_attention_replaces_every_spatial_convolution():
    net = attnbench.build_model("gsa_resnet50")
    kernels = [m.kernel_size for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (3, 3) not in kernels and kernels.count((7, 7)) == 1  # only the stem stays spatial


def test_model_scope_run(capsys, tmp_path):
    from attnbench import store
    from attnbench.cli import main

    db = str(tmp_path / "r.sqlite")
    assert main(["run", "--variants", "gsa,conv", "--arch", "resnet26", "--res", "64", "--db", db,
                 "--min-run-time", "0.01", "--threads", "1"]) == 0
    frame = store.load_results(db).set_index("variant")
    assert set(frame.status) == {"ok"} and set(frame.arch) == {"resnet26"}
    net = attnbench.build_model("gsa_resnet26", image_size=64)
    assert frame.loc["gsa", "params"] == sum(p.numel() for p in net.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_resnet50_runs_at_any_side(variant):
    """Odd sides after a stride: the attention's average pool and the strided shortcut both round up (at a
    quarter of the width: the sides do not depend on it)."""
    for side in (112, 144, 200, 225):
        net = attnbench.build_model(f"{variant}_resnet50", num_classes=10, image_size=side, width=0.25).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, side, side)).shape == (1, 10), side


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"{v}_resnet26" for v in VARIANTS] + ["axial_deeplab_26s"])
def test_every_network_compiles_without_graph_breaks(name):
    torch.manual_seed(0)
    net = attnbench.build_model(name, num_classes=10, stem="cifar", width=0.25, image_size=20).eval()
    x = torch.randn(2, 3, 20, 20)
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))


def test_botnet50_is_resnet50_with_mhsa_in_place_of_the_last_stage_convolutions():
    """BoT50: c5's three 3x3 convolutions (512 channels) replaced by MHSA, 4 heads, the first followed by the
    stride-2 pool; each trades 9 x 512^2 weights for q, k, v (3 x 512^2) and two relative tables of
    2 size - 1 rows of the 128-channel head width (size 14 before the pool, then 7)."""
    def params(net):
        return sum(p.numel() for p in net.parameters())

    bot = attnbench.build_model("botnet50")
    layers = [m for m in bot.modules() if isinstance(m, attnbench.registry.Variant) and m.variant_name == "mhsa"]
    assert [(m.cfg.dim, m.cfg.heads, m.cfg.stride, m.cfg.size) for m in layers] == [
        (512, 4, 2, 14), (512, 4, 1, 7), (512, 4, 1, 7)]
    tables = sum(2 * (2 * size - 1) * 128 for size in (14, 7, 7))
    assert params(bot) == params(attnbench.build_model("resnet50")) - 3 * 9 * 512**2 + 3 * 3 * 512**2 + tables
    with torch.no_grad():
        assert bot.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    with pytest.raises(ValueError, match="Invalid stages \\[4\\]"):
        attnbench.build_model("mhsa_resnet50", stages=(4,))


@pytest.mark.timm
def test_timm_counts_are_shipped_and_differ_from_timms_by_what_fvcore_also_counts():
    """Our MACs of timm's networks are shipped as counted; timm's published GMACs are fvcore's default count,
    which adds normalisation and pooling to the products we count: that count, made here, is what timm printed."""
    if not _timm_imports():
        pytest.skip("timm does not import here; .ci/run checks timm's rows in its timm environment")
    import timm
    from fvcore.nn import FlopCountAnalysis

    live = compare_published(live=True)
    rows = live[live.model.str.startswith("timm:")]
    assert len(rows) == 6 and rows.ours.tolist() == compare_published().loc[rows.index, "ours"].tolist()
    for r in rows[rows.metric == "macs"].itertuples():
        net = timm.create_model(r.model[len("timm:"):], pretrained=False).eval()
        count = FlopCountAnalysis(net, torch.randn(1, 3, 224, 224))
        count.unsupported_ops_warnings(False)
        count.uncalled_modules_warnings(False)
        assert round(count.total() / 1e9, 2) == round(r.value / 1e9, 2), r.model
        extra = sum(v for op, v in count.by_operator().items() if op in ("batch_norm", "layer_norm", "group_norm",
                                                                           "adaptive_avg_pool2d"))
        assert abs(count.total() - extra - r.ours) <= 1e-4 * r.ours, r.model  # the rest is what we count
