"""Efficient attention.

Paper: "Efficient Attention: Attention with Linear Complexities", Shen, Zhang, Zhao, Yi, Li,
arXiv 1812.01243 (Section 3, Figure 1 and Equation 3).

Mechanism: E(Q, K, V) = rho_q(Q) (rho_k(K)^T V), per head. Keys, queries and values come from 1x1
convolutions (with bias); rho_k is a softmax over positions of every key channel (each key channel
becomes a global template, and rho_k(K)^T V a d_k x d_v summary of the image), rho_q a softmax over
the channels of every query. No pixel-by-pixel matrix is ever formed, so the cost is linear in the
pixels. A 1x1 reprojection back to the input's channels follows, and the module adds its input: it
is a residual block of its own, inserted into a network after the blocks where non-local blocks go
(the paper compares the two this way).

Attention maps: a query's weights over the pixels, sum_d rho_q(q)_d rho_k(k_d)_j, sum to one over the
pixels j like a softmax row; they are what its output averages the values with.

Implementation: ``einsum`` (reference), two batched matrix products per head group.

Deviations: the key and value widths are options (the paper's repository takes them as arguments);
the defaults follow non-local's half of the channels; the paper's multi-head form does not fix the
number of heads (its repository takes it as an argument): 4 here, as BoTNet's MHSA.
GSA's content branch descends from this mechanism without rho_q.

At any side every pixel reads the same global summaries: nothing is sized to the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from attnbench.registry import Variant, VariantConfig, register_impl, register_variant
from attnbench.variants._common import downsample, pointwise


@dataclass(frozen=True)
class EfficientConfig(VariantConfig):
    heads: int = 4  # the keys' and values' channels split into this many heads
    key_channels: int | None = None  # d_k over all heads (None: dim / 2)
    value_channels: int | None = None  # d_v over all heads (None: dim / 2)

    _positive: ClassVar[tuple[str, ...]] = (*VariantConfig._positive, "heads", "key_channels", "value_channels")

    def validate(self) -> None:
        super().validate()
        self.check_divisible("key_channels", self.keys, "heads", self.heads)
        self.check_divisible("value_channels", self.values, "heads", self.heads)
        if self.keys // self.heads < 2:
            raise ValueError(f"Invalid heads={self.heads}: each head needs at least 2 of the {self.keys} key channels "
                             "(rho_q over one channel is constant: the query would be ignored).")

    @property
    def keys(self) -> int:
        return self.key_channels or max(1, self.dim // 2)

    @property
    def values(self) -> int:
        return self.value_channels or max(1, self.dim // 2)


@register_variant(
    "efficient",
    EfficientConfig,
    description="efficient attention: softmax over positions for keys, over channels for queries, linear in pixels",
    paper="Efficient Attention: Attention with Linear Complexities",
    arxiv="1812.01243",
    placement="insert",
    global_receptive_field=True,
    scaling=(1.0, 1.0),
    reference="einsum",
)
class EfficientAttention(Variant):
    """Efficient attention module; output has the input's channels and, with stride 1, its size."""

    def __init__(self, cfg: EfficientConfig):
        super().__init__(cfg)
        self.heads = cfg.heads
        self.keys = nn.Conv2d(cfg.dim, cfg.keys, 1)
        self.queries = nn.Conv2d(cfg.dim, cfg.keys, 1)
        self.values = nn.Conv2d(cfg.dim, cfg.values, 1)
        self.reprojection = nn.Conv2d(cfg.values, cfg.dim, 1)

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """``{"attention": (heads, H, W)}``: sum_d rho_q(q)_d rho_k(k_d) for pixel ``query`` = (y, x)."""
        q, k, (H, W) = self.captured["q"], self.captured["k"], self.captured["size"]
        y, x = query
        weights = torch.einsum("hd,hdn->hn", q[image, :, :, y * W + x], k[image])
        return {"attention": weights.view(-1, H, W)}

    def einsum(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, n = self.heads, H * W
        k = pointwise(self.keys, x).view(B, h, -1, n).softmax(dim=-1)  # rho_k: over positions
        q = pointwise(self.queries, x).view(B, h, -1, n).softmax(dim=-2)  # rho_q: over a head's channels
        v = pointwise(self.values, x).view(B, h, -1, n)
        if self.captured is not None:
            self.captured.update(q=q.detach(), k=k.detach(), size=(H, W))
        context = k @ v.transpose(-1, -2)  # (B, h, d_k, d_v): each key template's summary of the values
        attended = (context.transpose(-1, -2) @ q).reshape(B, -1, H, W)  # (B, d_v, H, W)
        return downsample(pointwise(self.reprojection, attended) + x, self.cfg.stride)


register_impl("efficient", "einsum", description="two batched matrix products per head (never a pixel x pixel matrix)")(
    EfficientAttention.einsum)
