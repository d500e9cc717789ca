import pytest
import torch

import attnbench
from attnbench.inspection import effective_receptive_field, erf_figure


def test_erf_support_matches_each_mechanism():
    torch.manual_seed(0)
    conv = effective_receptive_field(attnbench.build_variant("conv", 8, size=11), (8, 11, 11), samples=2)
    local = effective_receptive_field(attnbench.build_variant("local", 8, size=11, window=5, heads=2),
                                      (8, 11, 11), samples=2)
    gsa = effective_receptive_field(attnbench.build_variant("gsa", 8, size=11, heads=2), (8, 11, 11), samples=2)
    nz = lambda m: torch.nonzero(m > 0)  # noqa: E731
    assert nz(conv).min(0).values.tolist() == [4, 4] and nz(conv).max(0).values.tolist() == [6, 6]
    assert nz(local).min(0).values.tolist() == [3, 3] and nz(local).max(0).values.tolist() == [7, 7]
    assert (gsa > 0).all() and gsa.max() == 1


def test_erf_of_a_network_and_its_figure():
    net = attnbench.build_model("conv_probe", num_classes=2, width=0.5)
    erf = effective_receptive_field(net, (3, 17, 17), samples=2)
    # stem and two 3x3 blocks: a 7x7 field around the centre
    assert nz_box(erf) == (5, 11)
    fig = erf_figure({"conv_probe": erf})
    assert len(fig.axes) >= 1


def nz_box(m):
    idx = torch.nonzero(m > 0)
    return int(idx.min()), int(idx.max())


def _values(module, x, channels):
    """v of a variant's 1x1 projection: the last ``channels`` outputs of its qkv weight."""
    w = module.to_qkv.weight[-channels:, :, 0, 0]
    return torch.einsum("oc,bchw->bohw", w, x)


def test_local_maps_reproduce_the_output_and_stay_in_the_window():
    torch.manual_seed(0)
    m = attnbench.build_variant("local", 8, size=10, heads=2, window=3, block=4).double().eval()
    x = torch.randn(1, 8, 9, 10, dtype=torch.float64)
    for y, xq in [(0, 0), (4, 5), (8, 9)]:
        maps = attnbench.attention_maps(m, x[0], (y, xq))["attention"]  # (2, 9, 10)
        assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(2, dtype=torch.float64))
        outside = torch.ones(9, 10, dtype=torch.bool)
        outside[max(0, y - 1) : y + 2, max(0, xq - 1) : xq + 2] = False
        assert (maps[:, outside] == 0).all()
        v = _values(m, x, 8)[0].view(2, 4, 9, 10)
        rebuilt = torch.einsum("nhw,nehw->ne", maps, v).reshape(8)
        torch.testing.assert_close(rebuilt, m(x)[0, :, y, xq])


def test_nonlocal_maps_reproduce_the_output():
    from naive import bn

    torch.manual_seed(0)
    for subsample in (True, False):
        m = attnbench.build_variant("nonlocal", 8, subsample=subsample).double().eval()
        torch.nn.init.normal_(m.bn.weight)
        x = torch.randn(1, 8, 6, 8, dtype=torch.float64)
        y, xq = 3, 5
        maps = attnbench.attention_maps(m, x[0], (y, xq))["attention"][0]  # (6, 8)
        assert torch.isclose(maps.sum(), torch.tensor(1.0, dtype=torch.float64))
        weights = maps.view(3, 2, 4, 2).sum(dim=(1, 3)).flatten() if subsample else maps.flatten()
        _, _, g = m.attention_inputs(x)
        gathered = weights @ g[0, 0]  # (d,)
        z = m.w_z.weight[:, :, 0, 0] @ gathered + m.w_z.bias
        z = bn(z[:, None, None], m.bn)[:, 0, 0] + x[0, :, y, xq]
        torch.testing.assert_close(z, m(x)[0, :, y, xq])


def test_gsa_maps_reproduce_each_branch():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 6, 7, dtype=torch.float64)
    y, xq = 2, 4
    content = attnbench.build_variant("gsa", 8, size=7, heads=2, positional=False).double().eval()
    maps = attnbench.attention_maps(content, x[0], (y, xq))["content"]
    v = _values(content, x, 8)[0].view(2, 4, 6, 7)
    torch.testing.assert_close(torch.einsum("nhw,nehw->ne", maps, v).reshape(8), content(x)[0, :, y, xq])
    positional = attnbench.build_variant("gsa", 8, size=7, heads=2, content=False).double().eval()
    maps = attnbench.attention_maps(positional, x[0], (y, xq))["positional"]
    v = _values(positional, x, 8)[0].view(2, 4, 6, 7)
    scale = (1 + positional.norm.eps) ** -0.5  # the untrained batch norm between the layers
    torch.testing.assert_close(torch.einsum("nhw,nehw->ne", maps, v).reshape(8) * scale,
                               positional(x)[0, :, y, xq])


def test_network_maps_follow_each_layer_resolution():
    net = attnbench.build_model("axial_resnet26", num_classes=10, stem="cifar", width=0.25, image_size=32)
    image = torch.randn(3, 32, 32)
    maps = attnbench.attention_maps(net, image, (31, 0), in_image=False)
    sizes = {tuple(m.shape[-2:]) for m in maps.values()}
    # each stage's first block attends at the previous stage's resolution, then downsamples;
    # ResNet-26's last stage has one block, so no layer sees 4 x 4
    assert sizes == {(32, 32), (16, 16), (8, 8)}
    for m in maps.values():
        torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(m.shape[0]))
    on_image = attnbench.attention_maps(net, image, (31, 0))
    assert on_image.keys() == maps.keys()
    for m in on_image.values():
        assert m.shape[-2:] == (32, 32)
        torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(m.shape[0]))


def test_maps_take_one_input_with_or_without_its_batch_axis():
    layer = attnbench.build_variant("nonlocal", 8, size=6)
    image = torch.randn(8, 6, 6)
    plain = attnbench.attention_maps(layer, image, (2, 3))
    batched = attnbench.attention_maps(layer, image[None], (2, 3))
    assert plain.keys() == batched.keys()
    for key in plain:
        torch.testing.assert_close(plain[key], batched[key])
    for bad, message in ((torch.randn(2, 8, 6, 6), r"one input, \(C, H, W\) or \(1, C, H, W\); got \(2, 8, 6, 6\)"),
                         (torch.randn(6, 6), r"got \(6, 6\)"), ([[0.0]], "got list")):
        with pytest.raises(ValueError, match=message):
            attnbench.attention_maps(layer, bad, (0, 0))
    with pytest.raises(ValueError, match=r"query \(6, 0\) is outside the 6 x 6 input"):
        attnbench.attention_maps(layer, image, (6, 0))


def test_layers_of_a_variant_without_attention_maps_are_left_out_in_one_warning(scratch):
    """attention_maps is optional (a plugin's variant may not define it): inspection says so once and maps the
    other layers."""
    from dataclasses import dataclass

    from attnbench.inspection import attention_maps
    from attnbench.registry import Variant, VariantConfig, register_impl, register_variant

    @dataclass(frozen=True)
    class Config(VariantConfig):
        pass

    @register_variant("mapless", Config, description="a 1x1 convolution", paper="none", arxiv="none",
                      reference="eager")
    class Mapless(Variant):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.proj = torch.nn.Conv2d(cfg.dim, cfg.dim, 1)

    register_impl("mapless", "eager", description="its convolution")(lambda m, x: m.proj(x))
    spec = attnbench.get_variant_spec("mapless")
    assert not spec.draws_maps and not spec.builtin and attnbench.get_variant_spec("conv").draws_maps
    torch.manual_seed(0)
    conv = attnbench.build_variant("conv", 4)
    net = torch.nn.Sequential(attnbench.build_variant("mapless", 4), conv, attnbench.build_variant("mapless", 4))
    image = torch.randn(4, 6, 6)
    with pytest.warns(UserWarning) as caught:
        maps = attention_maps(net, image, (2, 3))
    assert [str(w.message) for w in caught] == [
        "attention_maps: 2 layers of mapless left out: no attention_maps defined"]
    assert list(maps) == ["1.support"]
    torch.testing.assert_close(maps["1.support"], attention_maps(conv, net[0](image[None])[0], (2, 3))["support"])
    with pytest.warns(UserWarning, match="1 layer"):
        assert attention_maps(net[0], image, (2, 3)) == {}
