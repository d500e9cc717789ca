"""Neighbourhood attention against NATTEN (the `[natten]` extra), a second library's reading of the same
clamped windows. NATTEN >= 0.20 has no relative position bias, so the bias is zeroed on our side; the
comparison checks which keys every query meets, at the borders above all. Marked ``natten``: skipped, with the
reason, where NATTEN does not import."""

import pytest
import torch

import attnbench

pytestmark = pytest.mark.natten


@pytest.mark.parametrize("window", [3, 5, 7])
@pytest.mark.parametrize("shape", [(2, 32, 9, 10), (1, 32, 7, 13)], ids=str)  # heads of 16: NATTEN's Flex minimum
def test_clamped_windows_match_natten(window, shape):
    import natten

    B, C, H, W = shape
    torch.manual_seed(0)
    for impl in ("tiles", "flex"):
        m = attnbench.build_variant("neighborhood", C, heads=2, window=window, impl=impl).eval()  # fp32: NATTEN's
        with torch.no_grad():
            m.rpb.zero_()
            x = torch.randn(*shape)
            q, k, v = m.split(x)  # (B, h, d, H, W), q already scaled
            layout = [t.permute(0, 3, 4, 1, 2).contiguous() for t in (q, k, v)]  # NATTEN's (B, H, W, heads, d)
            theirs = natten.na2d(*layout, kernel_size=window, scale=1.0)
            want = m.finish(theirs.permute(0, 3, 4, 1, 2).reshape(B, C, H, W))
            got = m(x)
        assert (got - want).abs().max().item() < 1e-5, impl
