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
  keeps GSA-ResNet-50 at 18.05 M parameters, inside the 18.0-18.2 M that the paper is recalled to
  report (unverified; see attnbench/baselines/published.csv).
* No output reprojection after the sum (the figure has none; the public port adds one).
* The MACs are the mechanism's (``macs``): a query meets min(span, axis) relative embeddings and
  values along each axis, whatever an implementation computes to get there.

At a side other than ``size`` (a network evaluated at a side it was not trained at): a fixed span is
the same span at every side. Whole-axis tables serve a smaller side with the offsets it has (their
central rows); on a larger side they reach the 2 size - 1 offsets they hold, and keys farther along
the axis contribute nothing (they have no embedding, and the positional layer has no softmax to
renormalise), as a layer of span 2 size - 1 would: what the public port's reindexing does too (it
has no row for longer offsets). The paper is silent and its code is not public. With the tables
interpolated (``offset_tables``, resized linearly over the offsets to 2 side - 1 rows, as ViTDet and
Segment Anything resize theirs) every key of the larger axis is in reach again.

Implementations (one parameter set, the same function):
* ``pixelmajor`` (reference; CPUs): images one by one in a pixel-major layout, in which every slice
  the column and row layers need is a plain matrix, so both are batched matrix products on views,
  with the logits taken in cache-sized chunks; the batch norm between them is applied in that
  layout with the statistics of nn.BatchNorm2d. A fixed span masks a whole-axis product.
* ``batched`` (GPUs): the whole batch at once, every head and line in one batched matrix product
  per step; a fixed span shorter than about half the axis runs blocked along the axis (tiles of
  ``span`` queries against their ``2 span - 1`` key halo), so it costs pixels x span.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attnbench.registry import Variant, VariantConfig, register_impl, register_variant
from attnbench.variants._common import (
    banded_axis,
    batch_norm,
    downsample,
    keys_per_query,
    pointwise,
    relative_to_absolute,
    table_entries,
)


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
        self.check_heads()
        if self.dim_key is not None and self.dim_key < 1:
            raise ValueError(f"Invalid dim_key={self.dim_key}: dim_key must be a positive integer.")
        self.check_divisible("dim_key", self.key_dim, "heads", self.heads)
        self.check_odd("span", optional=True)
        if not (self.content or self.positional):
            raise ValueError("Invalid content=False, positional=False: at least one branch must be kept.")


@register_variant(
    "gsa",
    GsaConfig,
    description="global self-attention: content + axial positional attention",
    paper="Global Self-Attention Networks for Image Recognition",
    arxiv="2010.03019",
    global_receptive_field=True,
    scaling=(1.0, 1.5),  # N (H + W): 1.5 with whole-axis spans, 1 with a fixed span
    preference={"cuda": ("batched",)},
    reference="pixelmajor",
)
class GlobalSelfAttention(Variant):
    """GSA module; ``content``/``positional`` switch the branches off for the paper's ablations."""

    offset_tables = ("rel_col", "rel_row")

    def __init__(self, cfg: GsaConfig):
        super().__init__(cfg)
        self.heads = cfg.heads
        self.dim_key = cfg.key_dim
        self.to_qkv = nn.Conv2d(cfg.dim, 2 * self.dim_key + cfg.dim, 1, bias=False)
        if cfg.positional:
            entries = table_entries(cfg.span, cfg.size)
            head_key = self.dim_key // cfg.heads
            self.rel_col = nn.Parameter(torch.randn(entries, head_key) * head_key**-0.5)  # R^c
            self.rel_row = nn.Parameter(torch.randn(entries, head_key) * head_key**-0.5)  # R^r
            self.norm = nn.BatchNorm2d(cfg.dim)

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """Per head, how much each pixel contributes to pixel ``query`` = (y, x), in the last captured forward.

        ``content`` (heads, H, W): the effective weight of pixel p, sum_d q_d(query) softmax_positions(k_d)(p),
        with which the content layer adds v(p). ``positional`` (heads, H, W): the column layer's weight of
        (i, x') for (y, x') times the row layer's weight of (y, x') for (y, x), composed; the batch norm
        between the two layers (a per-channel scale and shift) is left out. Positional weights have no
        softmax and can be negative.
        """
        c = self.captured
        H, W = c["size"]
        h = self.heads
        y, x = query
        maps = {}
        if c["keys"]:
            q = c["queries"][image].view(H * W, h, -1)[y * W + x]  # (h, dkh)
            maps["content"] = torch.einsum("nd,ndp->np", q, c["keys"][image]).view(h, H, W)
        if c["col"]:
            per_image = len(c["col"]) // len(c["queries"])
            col = torch.cat(c["col"][image * per_image : (image + 1) * per_image], dim=1)  # (x, (y', n), i)
            row = torch.cat(c["row"][image * per_image : (image + 1) * per_image], dim=1)  # (y, (x', n), j)
            w_col = col[y].view(W, h, H).permute(1, 2, 0)  # (n, i, j): row y's pixel (i, j) into (y, j)
            w_row = row[x].view(H, h, W)[y]  # (n, j): (y, j) into (y, x)
            maps["positional"] = w_col * w_row[:, None, :]
        return maps

    def span_at(self, side: int) -> int | None:
        """The positional layer's span on an axis of ``side``: its own; with whole-axis tables (None), the whole
        axis up to ``size`` and beyond it the 2 size - 1 offsets its tables hold."""
        return 2 * self.cfg.size - 1 if self.cfg.span is None and side > self.cfg.size else self.cfg.span

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the mechanism: the projections; the content layer's context and its mixing by the
        queries; per axis, each query's logits against the min(span, axis) relative embeddings it
        reaches and the weighted sum of as many values."""
        B, C, H, W = input_shape
        n, dk = B * H * W, self.dim_key
        total = n * C * (2 * dk + C)
        if self.cfg.content:
            total += 2 * n * dk * (C // self.heads)
        if self.cfg.positional:
            total += n * (dk + C) * (keys_per_query(self.span_at(H), H) + keys_per_query(self.span_at(W), W))
        return total


@register_impl("gsa", "pixelmajor", description="image by image, pixel-major views, chunked logits (CPU caches)")
def pixelmajor(self: GlobalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    h, dk = self.heads, self.dim_key
    dkh, dvh = dk // h, C // h
    if self.cfg.positional:  # offsets beyond the tables' reach are zero: see the module's docstring
        rel_col = relative_to_absolute(self.rel_col, H).transpose(1, 2)  # (x, d, i)
        rel_row = relative_to_absolute(self.rel_row, W).transpose(1, 2)  # (y, d, j)
    weight = self.to_qkv.weight.view(-1, C).t()  # (C, 2dk + C)
    # Image by image, pixel-major: each (x, ...) or (..., y) slice of q, k, v is then a plain
    # matrix, so every product below is a batched matrix product on views.
    queries, contents, cols = [], [], []
    kept = self.captured
    if kept is not None:
        kept.update(keys=[], queries=queries, col=[], row=[], size=(H, W))
    for image in x:
        qkv = image.view(C, H * W).t() @ weight  # (N, 2dk + C): 1x1 projections
        q, k, v = qkv.split([dk, dk, C], dim=1)
        queries.append(q)
        if self.cfg.content:
            # F^c = Q (softmax_positions(K)^T V), per head
            keys = k.softmax(dim=0).view(H * W, h, dkh).permute(1, 2, 0)  # (h, dkh, N)
            if kept is not None:
                kept["keys"].append(keys.detach())
            context = torch.bmm(keys, v.view(H * W, h, dvh).transpose(0, 1))  # (h, dkh, dvh)
            contents.append(torch.bmm(context.transpose(1, 2), q.view(H * W, h, dkh).permute(1, 2, 0)))
        if self.cfg.positional:
            # column: col[(y, n), x] = sum_i (q[x, (y, n)] . R^c[i - x]) v[(y, n), i]
            cols.append(axis_attend(q.reshape(H, W * h, dkh), v.reshape(H, W * h, dvh).transpose(0, 1), rel_col,
                                    None if kept is None else kept["col"]))
    outs = contents
    if self.cfg.positional:
        col = batch_norm(torch.stack(cols).view(B, W, h, H, dvh), self.norm, channel_dims=(2, 4))  # (b, y, n, x, e)
        outs = []
        for b, q in enumerate(queries):
            # row: out[(x, n), y] = sum_j (q[y, (x, n)] . R^r[j - y]) col[(x, n), j]
            row = axis_attend(
                q.view(H, W, dk).transpose(0, 1).reshape(W, H * h, dkh),  # (y, x, n, d): pixel vectors move
                col[b].permute(2, 1, 0, 3).reshape(H * h, W, dvh),  # (x, n, j, e)
                rel_row,
                None if kept is None else kept["row"],
            ).view(H, h, W, dvh).permute(1, 3, 0, 2)  # (n, e, x, y)
            outs.append(row if not contents else contents[b].view(h, dvh, H, W) + row)
    out = torch.stack(outs).view(B, C, H, W)
    return downsample(out, self.cfg.stride)


@register_impl("gsa", "batched", description="whole batch per step: batched matrix products, blocked fixed spans")
def batched(self: GlobalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    h, dk = self.heads, self.dim_key
    dkh, dvh = dk // h, C // h
    qkv = pointwise(self.to_qkv, x)
    q, k, v = qkv.split([dk, dk, C], dim=1)
    out = None
    if self.cfg.content:
        keys = k.reshape(B * h, dkh, H * W).softmax(dim=-1)
        context = torch.bmm(keys, v.reshape(B * h, dvh, H * W).transpose(1, 2))  # (Bh, dkh, dvh)
        out = torch.bmm(context.transpose(1, 2), q.reshape(B * h, dkh, H * W)).view(B, C, H, W)
    if self.cfg.positional:
        q = q.view(B, h, dkh, H, W)
        v = v.view(B, h, dvh, H, W)
        # column layer, along H: lines are (b, n, y)
        col = banded_axis(
            q.permute(3, 0, 1, 4, 2).reshape(H, B * h * W, dkh),
            v.permute(0, 1, 4, 3, 2).reshape(B * h * W, H, dvh),
            self.rel_col, self.span_at(H),
        ).view(B, h, W, H, dvh)
        col = batch_norm(col, self.norm, channel_dims=(1, 4))
        # row layer, along W: lines are (b, n, x), values the column layer's output
        row = banded_axis(
            q.permute(4, 0, 1, 3, 2).reshape(W, B * h * H, dkh),
            col.permute(0, 1, 3, 2, 4).reshape(B * h * H, W, dvh),
            self.rel_row, self.span_at(W),
        ).view(B, h, H, W, dvh).permute(0, 1, 4, 2, 3).reshape(B, C, H, W)
        out = row if out is None else out + row
    return downsample(out, self.cfg.stride)


CHUNK_ELEMENTS = 1 << 21  # attention logits per chunk of lines (8 MiB in fp32)


def axis_attend(q: torch.Tensor, v: torch.Tensor, rel: torch.Tensor, keep: list | None = None) -> torch.Tensor:
    """Positional attention along one axis, relative embeddings as keys, no softmax.

    Args:
        q: ``(L, M, d)``: the queries at each position of M lines of length L.
        v: ``(M, L, e)``: the values of the same lines.
        rel: ``(L, d, L)``: ``rel[x, :, i]`` embeds the offset ``i - x``, zero outside the span.

    Returns:
        ``(M, L, e)``: ``out[m, x] = sum_i (q[x, m] . rel[x, :, i]) v[m, i]``, a transposed view of an
        ``(M, e, L)`` product (on CPUs the e x L by L x L products are several times faster than the
        L x L by L x e ones, e being a head's few channels). The lines are taken in chunks whose logits
        stay cache-sized; with ``keep``, the logit chunks are appended to it.
    """
    L, M, _ = q.shape
    step = max(1, CHUNK_ELEMENTS // (L * L))
    parts = []
    for m in range(0, M, step):
        logits = torch.bmm(q[:, m : m + step], rel)  # (L_query, chunk, L_key), batched over the query position
        if keep is not None:
            keep.append(logits.detach())
        parts.append(torch.bmm(v[m : m + step].transpose(1, 2), logits.permute(1, 2, 0)))  # (chunk, e, L_query)
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).transpose(1, 2)
