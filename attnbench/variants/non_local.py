"""Non-local block, embedded-Gaussian form.

Paper: "Non-local Neural Networks", Wang, Girshick, Gupta, He, arXiv 1711.07971 (Sections 3.2-3.3).

Mechanism: z = BN(W_z y) + x with y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j); theta, phi
and g are 1x1 convolutions to half the channels; W_z restores them and is followed by batch norm
whose scale starts at zero, so the block starts as the identity (``zero_init=False`` starts it at 1).
With ``subsample`` a 2x2 max-pool follows phi and g (not theta), cutting the pairwise work to a
quarter, as the paper does in every block. No 1/sqrt(d) scaling (embedded Gaussian: exp of the plain dot product).

Implementation: the attention runs through ``torch.nn.functional.scaled_dot_product_attention``
(scale 1), so backends with fused kernels never hold the N x N matrix.

Deviations: none. (timm's ``NonLocalAttn`` differs: 1/8 channels, scaled logits, no subsampling.)

At any side every pixel attends to all (subsampled) pixels: nothing is sized to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import Variant, VariantConfig, register_impl, register_variant
from attnbench.variants._common import downsample, pointwise


@dataclass(frozen=True)
class NonLocalConfig(VariantConfig):
    reduction: int = 2  # theta, phi and g have dim / reduction channels
    subsample: bool = True  # 2x2 max-pool after phi and g
    zero_init: bool = True  # the batch norm after W_z starts at scale 0 (the paper's: the block starts as x)

    def validate(self) -> None:
        super().validate()
        if self.reduction < 1:
            raise ValueError(f"Invalid reduction={self.reduction}: reduction must be a positive integer.")
        self.check_divisible("dim", self.dim, "reduction", self.reduction)


@register_variant(
    "nonlocal",
    NonLocalConfig,
    description="embedded-Gaussian non-local block: softmax attention over all pixels, residual",
    paper="Non-local Neural Networks",
    arxiv="1711.07971",
    ends_with_norm=True,  # its residual branch: BN(W_z y)
    placement="insert",
    global_receptive_field=True,
    scaling=(2.0, 2.0),  # N x N/4 pairs
    reference="sdpa",
)
class NonLocalBlock(Variant):
    """Non-local block; output has the input's channels and, with stride 1, its size."""

    def __init__(self, cfg: NonLocalConfig):
        super().__init__(cfg)
        inner = cfg.dim // cfg.reduction
        self.theta = nn.Conv2d(cfg.dim, inner, 1)
        self.phi = nn.Conv2d(cfg.dim, inner, 1)
        self.g = nn.Conv2d(cfg.dim, inner, 1)
        self.w_z = nn.Conv2d(inner, cfg.dim, 1)
        self.bn = nn.BatchNorm2d(cfg.dim)
        if cfg.zero_init:
            nn.init.zeros_(self.bn.weight)

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """``{"attention": (1, H, W)}``: the softmax row of pixel ``query`` = (y, x) over all keys. With
        subsampling each key is a max-pooled 2x2 block, and its weight is spread evenly over the block."""
        attn, (H, W) = self.captured["attn"], self.captured["size"]
        y, x = query
        row = attn[image, 0, y * W + x]
        if not self.cfg.subsample:
            return {"attention": row.view(1, H, W)}
        counts = F.avg_pool2d(row.new_ones(1, H, W), 2, ceil_mode=True, divisor_override=1)  # pixels per block
        blocks = row.view(counts.shape) / counts  # the last blocks are partial on odd sides
        return {"attention": blocks.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, :H, :W]}

    @staticmethod
    def attention_weights(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """softmax_j(theta_i . phi_j), explicitly: (B, 1, N, M)."""
        return (theta @ phi.transpose(-1, -2)).softmax(dim=-1)

    def attention_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """theta (B, 1, N, d), phi and g (B, 1, M, d): M = N, or N/4 when subsampled."""
        phi, g = pointwise(self.phi, x), pointwise(self.g, x)
        if self.cfg.subsample:
            phi, g = F.max_pool2d(phi, 2, ceil_mode=True), F.max_pool2d(g, 2, ceil_mode=True)
        # contiguous (B, 1, N, d): fused attention kernels refuse transposed inputs and fall back
        # to the path that materialises the N x M matrix
        return tuple(t.flatten(2).transpose(1, 2).contiguous().unsqueeze(1) for t in (pointwise(self.theta, x), phi, g))

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z = BN(W_z y) + x, then the optional downsampling."""
        B, C, H, W = x.shape
        y = y.squeeze(1).transpose(1, 2).reshape(B, -1, H, W)
        z = self.bn(pointwise(self.w_z, y)) + x
        return downsample(z, self.cfg.stride)


@register_impl("nonlocal", "sdpa", description="scaled_dot_product_attention (fused kernels where backends have them)")
def sdpa(self: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    theta, phi, g = self.attention_inputs(x)
    if self.captured is not None:  # fused kernels do not return their weights: explicitly, while capturing
        attn = self.attention_weights(theta, phi)
        self.captured.update(attn=attn.detach(), size=tuple(x.shape[-2:]))
        return self.finish(x, attn @ g)
    return self.finish(x, F.scaled_dot_product_attention(theta, phi, g, scale=1.0))
