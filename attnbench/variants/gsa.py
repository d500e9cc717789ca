"""Global self-attention (GSA): a content layer and a positional layer, summed.

Paper: "Global Self-Attention Networks for Image Recognition", Shen, Bello, Vemulapalli, Jia,
Chen, arXiv 2010.03019 (Figure 1).

Mechanism: 1x1 projections give K, Q (``dim_key`` channels) and V (``dim`` channels), split into
``heads``. Content layer: per head, keys softmax-normalised over all H*W positions form the global
context rho(K)^T V (``dim_key/heads`` vectors of ``dim/heads`` channels), which each query then
mixes (no query normalisation, unlike Efficient Attention). Positional layer: a column-only layer
(queries against learned relative embeddings R^c used as keys, aggregating V along the column),
batch norm, then a row-only layer (R^r, aggregating the column layer's output along the row).
Output = content + positional; no softmax in the positional layer, no 1/sqrt(d) scaling.

Deviations / choices where the figure is silent:
* The relative tables are shared by all heads, ``dim_key/heads`` wide, and cover the offsets
  ``-(L-1)/2 .. (L-1)/2`` of a span L; the default span is the whole axis (offsets up to
  ``size - 1``, i.e. ``2*size - 1`` rows). Sharing follows Axial-DeepLab and the public port; it
  keeps GSA-ResNet-50 at 18.05 M parameters, inside the paper's reported ~18 M.
* No output reprojection after the sum (the figure has none; the public port adds one).
* Cost is linear in pixels x axis length: the positional layer multiplies by per-axis banded
  (length x length) matrices, which is exact for any span and the fastest form on dense hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import VariantConfig, register_variant
from attnbench.variants._relative import check_fits, relative_to_absolute, table_entries


@dataclass(frozen=True)
class GsaConfig(VariantConfig):
    heads: int = 8  # attention heads
    dim_key: int | None = None  # total query/key channels d_k (None: dim)
    span: int | None = None  # positional neighbourhood L along each axis, odd (None: the whole axis)
    content: bool = True  # keep the content layer
    positional: bool = True  # keep the positional layer

    @property
    def key_dim(self) -> int:
        return self.dim if self.dim_key is None else self.dim_key

    def validate(self) -> None:
        super().validate()
        if self.heads < 1:
            raise ValueError(f"Invalid heads={self.heads}: heads must be a positive integer.")
        if self.dim_key is not None and self.dim_key < 1:
            raise ValueError(f"Invalid dim_key={self.dim_key}: dim_key must be a positive integer.")
        self.check_divisible("dim", self.dim, "heads", self.heads)
        self.check_divisible("dim_key", self.key_dim, "heads", self.heads)
        if self.span is not None and (self.span < 1 or self.span % 2 == 0):
            raise ValueError(f"Invalid span={self.span}: span must be a positive odd integer (or None).")
        if not (self.content or self.positional):
            raise ValueError("Invalid content=False, positional=False: at least one branch must be kept.")


@register_variant(
    "gsa",
    GsaConfig,
    description="global self-attention: content + axial positional attention",
    paper="Global Self-Attention Networks for Image Recognition",
    arxiv="2010.03019",
    global_receptive_field=True,
)
class GlobalSelfAttention(nn.Module):
    """GSA module; ``content``/``positional`` switch the branches off for the paper's ablations."""

    def __init__(self, cfg: GsaConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = cfg.heads
        self.dim_key = cfg.key_dim
        self.to_qkv = nn.Conv2d(cfg.dim, 2 * self.dim_key + cfg.dim, 1, bias=False)
        if cfg.positional:
            entries = table_entries(cfg.span, cfg.size)
            head_key = self.dim_key // cfg.heads
            self.rel_col = nn.Parameter(torch.randn(entries, head_key) * head_key**-0.5)  # R^c
            self.rel_row = nn.Parameter(torch.randn(entries, head_key) * head_key**-0.5)  # R^r
            self.norm = nn.BatchNorm2d(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h, dk = self.heads, self.dim_key
        q, k, v = self.to_qkv(x).split([dk, dk, C], dim=1)
        out = torch.zeros_like(x) if not self.cfg.content else self.content(q, k, v)
        if self.cfg.positional:
            out = out + self.positional(q, v)
        return F.avg_pool2d(out, 2) if self.cfg.stride == 2 else out

    def content(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """F^c = Q (softmax_positions(K)^T V), per head."""
        B, C, H, W = v.shape
        h = self.heads
        keys = k.reshape(B, h, -1, H * W).softmax(dim=-1)  # (B, h, dkh, N)
        context = keys @ v.reshape(B, h, C // h, H * W).transpose(-1, -2)  # (B, h, dkh, dvh)
        out = context.transpose(-1, -2) @ q.reshape(B, h, -1, H * W)  # (B, h, dvh, N)
        return out.reshape(B, C, H, W)

    def positional(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Column-only layer, batch norm, row-only layer (Figure 1)."""
        B, C, H, W = v.shape
        h = self.heads
        check_fits("gsa", max(H, W), self.cfg.span, self.cfg.size)
        qh = q.reshape(B, h, -1, H, W)  # (B, h, dkh, H, W)
        # column: y[x, col] = sum_i (q[x, col] . R^c[i - x]) v[i, col]
        r_col = relative_to_absolute(self.rel_col, H)  # (H_query, H_key, dkh)
        logits = torch.einsum("bndxy,xid->bnyxi", qh, r_col)  # (B, h, W, H, H)
        vh = v.reshape(B, h, C // h, H, W).permute(0, 1, 4, 3, 2)  # (B, h, W, H, dvh)
        y = (logits @ vh).permute(0, 1, 4, 3, 2).reshape(B, C, H, W)
        y = self.norm(y)
        # row: out[row, y] = sum_j (q[row, y] . R^r[j - y]) ycol[row, j]
        r_row = relative_to_absolute(self.rel_row, W)  # (W_query, W_key, dkh)
        logits = torch.einsum("bndxy,yjd->bnxyj", qh, r_row)  # (B, h, H, W, W)
        yh = y.reshape(B, h, C // h, H, W).permute(0, 1, 3, 4, 2)  # (B, h, H, W, dvh)
        return (logits @ yh).permute(0, 1, 4, 2, 3).reshape(B, C, H, W)
