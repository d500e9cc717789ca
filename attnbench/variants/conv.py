"""3x3 convolution with batch norm: the control every attention variant is compared with.

Paper: "Deep Residual Learning for Image Recognition", He et al., arXiv 1512.03385. The layer is
the spatial convolution of a ResNet bottleneck (v1.5: the stride, when there is one, is on this
3x3, as in torchvision), followed by its batch norm.

Deviations: none.

A convolution runs at any side with the same weights: nothing is sized to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnbench.registry import Variant, VariantConfig, register_impl, register_variant


@dataclass(frozen=True)
class ConvConfig(VariantConfig):
    kernel_size: int = 3  # spatial extent of the convolution (pixels, odd)

    def validate(self) -> None:
        super().validate()
        self.check_odd("kernel_size")


@register_variant(
    "conv",
    ConvConfig,
    description="3x3 convolution + batch norm (the ResNet baseline)",
    paper="Deep Residual Learning for Image Recognition",
    arxiv="1512.03385",
    ends_with_norm=True,
    reference="native",
)
class Conv(Variant):
    """``kernel_size`` x ``kernel_size`` convolution, bias-free, then batch norm."""

    def __init__(self, cfg: ConvConfig):
        super().__init__(cfg)
        k = cfg.kernel_size
        self.conv = nn.Conv2d(cfg.dim, cfg.dim, k, stride=cfg.stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cfg.dim)

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """``{"support": (1, H, W)}``: a convolution's weights do not depend on the input, so its map is
        its k x k support around ``query``, uniform (in-image part)."""
        H, W = self.captured["size"]
        y, x = query
        r = self.cfg.kernel_size // 2
        support = torch.zeros(1, H, W)
        support[:, max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = 1.0
        return {"support": support / support.sum()}


@register_impl("conv", "native", description="torch's convolution (cuDNN, oneDNN)")
def native(self: Conv, x: torch.Tensor) -> torch.Tensor:
    if self.captured is not None:
        self.captured["size"] = tuple(x.shape[-2:])
    return self.bn(self.conv(x))
