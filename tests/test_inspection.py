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
    net = attnbench.build_model("conv_probe", num_classes=2, width=0.25)
    erf = effective_receptive_field(net, (3, 17, 17), samples=2)
    # stem and two 3x3 blocks: a 7x7 field around the centre
    assert nz_box(erf) == (5, 11)
    fig = erf_figure({"conv_probe": erf})
    assert len(fig.axes) >= 1


def nz_box(m):
    idx = torch.nonzero(m > 0)
    return int(idx.min()), int(idx.max())
