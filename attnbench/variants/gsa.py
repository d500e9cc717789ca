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
from attnbench.variants._common import check_fits, pointwise, relative_to_absolute, table_entries


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
        dk = self.dim_key
        if self.cfg.positional:
            check_fits("gsa", max(H, W), self.cfg.span, self.cfg.size)
            rel_col = relative_to_absolute(self.rel_col, H)  # (H_query, H_key, dkh)
            rel_row = relative_to_absolute(self.rel_row, W)
        # Images are processed in chunks whose attention logits stay cache-sized; the batch norm
        # between the column and row layers still sees the whole batch.
        chunk = max(1, CHUNK_ELEMENTS // (self.heads * H * W * max(H, W)))
        pieces = []
        for xs in x.split(chunk):
            q, k, v = pointwise(self.to_qkv, xs).split([dk, dk, C], dim=1)
            content = self.content(q, k, v) if self.cfg.content else None
            column = self.column(q, v, rel_col) if self.cfg.positional else None
            pieces.append((q, content, column))
        if self.cfg.positional:
            columns = self.norm(torch.cat([column for *_, column in pieces])).split(chunk)
            parts = [
                self.row(q, col, rel_row) if c is None else c + self.row(q, col, rel_row)
                for (q, c, _), col in zip(pieces, columns)
            ]
        else:
            parts = [c for _, c, _ in pieces]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return F.avg_pool2d(out, 2) if self.cfg.stride == 2 else out

    def content(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """F^c = Q (softmax_positions(K)^T V), per head."""
        B, C, H, W = v.shape
        h = self.heads
        keys = k.reshape(B, h, -1, H * W).softmax(dim=-1)  # (B, h, dkh, N)
        context = keys @ v.reshape(B, h, C // h, H * W).transpose(-1, -2)  # (B, h, dkh, dvh)
        out = context.transpose(-1, -2) @ q.reshape(B, h, -1, H * W)  # (B, h, dvh, N)
        return out.reshape(B, C, H, W)

    def column(self, q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Column-only layer: y[x, c] = sum_i (q[x, c] . R^c[i - x]) v[i, c]."""
        B, C, H, W = v.shape
        h = self.heads
        qc = q.reshape(B, h, -1, H, W).permute(0, 1, 4, 3, 2).reshape(B * h * W, H, -1)  # (B h W, H, dkh)
        vc = v.reshape(B, h, -1, H, W).permute(0, 1, 4, 3, 2).reshape(B * h * W, H, C // h)
        y = axis_attend(qc, vc, rel)  # (B h W, H, dvh)
        return y.view(B, h, W, H, -1).permute(0, 1, 4, 3, 2).reshape(B, C, H, W)

    def row(self, q: torch.Tensor, col: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Row-only layer on the column layer's output: y[r, y] = sum_j (q[r, y] . R^r[j - y]) col[r, j]."""
        B, C, H, W = col.shape
        h = self.heads
        qr = q.reshape(B, h, -1, H, W).permute(0, 1, 3, 4, 2).reshape(B * h * H, W, -1)  # (B h H, W, dkh)
        vr = col.reshape(B, h, -1, H, W).permute(0, 1, 3, 4, 2).reshape(B * h * H, W, C // h)
        y = axis_attend(qr, vr, rel)  # (B h H, W, dvh)
        return y.view(B, h, H, W, -1).permute(0, 1, 4, 2, 3).reshape(B, C, H, W)


CHUNK_ELEMENTS = 1 << 21  # attention logits per chunk of images (8 MiB in fp32)


def axis_attend(q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Positional attention along one axis, relative embeddings as keys, no softmax.

    Args:
        q: ``(M, L, d)`` queries of M lines of length L.
        v: ``(M, L, e)`` values of the same lines.
        rel: ``(L, L, d)`` embedding of each (query, key) offset, zero outside the span.

    Returns:
        ``(M, L, e)``: ``out[m, x] = sum_i (q[m, x] . rel[x, i]) v[m, i]``.
    """
    logits = torch.bmm(q.transpose(0, 1), rel.transpose(1, 2))  # (L_query, M, L_key), batched over x
    return torch.bmm(logits.transpose(0, 1), v)  # (M, L_query, e)
