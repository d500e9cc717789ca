"""Position-sensitive axial attention (Axial-DeepLab): a height layer, then a width layer.

Paper: "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", Wang, Zhu, Green,
Adam, Yuille, Chen, arXiv 2003.07853 (Equations 3-4, Section 3.2).

Mechanism, per axis layer: y_o = sum_{p in N_{1 x m}(o)} softmax_p(q_o.k_p + q_o.r^q_{p-o} +
k_p.r^k_{p-o}) (v_p + r^v_{p-o}) along one axis, multi-head, with relative embeddings shared by
the heads. Batch norm in the attention as the paper and its code do it: on the q/k/v projection,
on each of the three similarity terms (before they are summed), and on the two output terms (before
they are summed). Per head, queries and keys are half as wide as values (d_out = 2 d_q). The span m
defaults to the whole axis. With stride 2 a 2x2 average pool follows the width layer.

Implementations (one parameter set, the same function): ``dense`` (reference), as written above,
a fixed span masking the whole-axis product; ``lines`` (GPUs), the same products on contiguous
lines without the intermediate stacks and permuted copies, each eval-mode batch norm folded into a
weighted sum of its terms, and a fixed span much shorter than the axis blocked (tiles of span
queries against their halos), so it costs pixels x span. With a fixed span, the training
statistics of the similarity batch norm are those of the pairs within the span. The MACs
(``macs``) count the span's keys only.

Deviations: the relative offset is taken as key - query for all three tables (the public code
indexes r^q and r^v by query - key); this mirrors the tables and changes nothing else. Unlike the
public code, the span is not tied to the input size: a fixed odd span m masks keys farther than
(m - 1) / 2 along the axis.

At a side other than ``size`` (a network evaluated at a side it was not trained at): a fixed span is
the same span at every side (Axial-DeepLab's answer to large inputs: m = 65). Whole-axis tables serve
a smaller side with their central offsets and refuse a larger one: the public code builds its tables
for one feature size, and dropping the far keys would change the layer (its softmax would
renormalise over fewer keys). With the tables interpolated (``offset_tables``: r^q, r^k and r^v
resized linearly over the offsets to 2 side - 1 rows, as ViTDet and Segment Anything resize theirs)
every side runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import Variant, VariantConfig, register_impl, register_variant
from attnbench.variants._common import (
    band_tiles,
    batch_norm,
    blocked,
    check_fits,
    downsample,
    keys_per_query,
    pointwise,
    relative_to_absolute,
    table_entries,
    window_mask,
)


@dataclass(frozen=True)
class AxialConfig(VariantConfig):
    heads: int = 8  # attention heads
    span: int | None = None  # neighbourhood m along each axis, odd (None: the whole axis)

    def validate(self) -> None:
        super().validate()
        self.check_heads(halves="queries and keys take half of it")
        self.check_odd("span", optional=True)


class AxialLayer(nn.Module):
    """One position-sensitive axial attention layer along the height axis of its input."""

    def __init__(self, cfg: AxialConfig):
        super().__init__()
        self.cfg = cfg
        C, h = cfg.dim, cfg.heads
        self.head_dim = C // h
        self.qkv = nn.Conv2d(C, 2 * C, 1, bias=False)
        self.bn_qkv = nn.BatchNorm2d(2 * C)
        self.bn_similarity = nn.BatchNorm2d(3 * h)
        self.bn_output = nn.BatchNorm2d(2 * C)
        entries = table_entries(cfg.span, cfg.size)
        # rows: r^q (d/2), r^k (d/2), r^v (d) for d = head width; columns: offsets -r .. r
        self.relative = nn.Parameter(torch.randn(entries, 2 * self.head_dim) * self.head_dim**-0.5)
        nn.init.normal_(self.qkv.weight, 0.0, C**-0.5)
        self.captured: dict | None = None  # attention weights of the last forward, when capturing

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The layer as the paper writes it: the three similarity terms stacked, then normalised."""
        B, C, H, W = x.shape
        h, d = self.cfg.heads, self.head_dim
        check_fits("axial", H, self.cfg.span, self.cfg.size)
        qkv = self.bn_qkv(pointwise(self.qkv, x)).reshape(B, h, 2 * d, H, W).permute(0, 4, 1, 3, 2)  # (B, W, h, H, 2d)
        q, k, v = qkv.split([d // 2, d // 2, d], dim=-1)
        rel = relative_to_absolute(self.relative, H)  # (H_query, H_key, 2d)
        r_q, r_k, r_v = rel.split([d // 2, d // 2, d], dim=-1)
        qk = q @ k.transpose(-1, -2)  # (B, W, h, H, H)
        qr = torch.einsum("bwnic,ijc->bwnij", q, r_q)  # q_o . r^q_{p-o}
        kr = torch.einsum("bwnjc,ijc->bwnij", k, r_k)  # k_p . r^k_{p-o}
        outside = window_mask(H, self.cfg.span, self.cfg.size, x.device)
        sim = self.norm_similarity(torch.stack([qk, qr, kr], dim=2).reshape(B * W, 3 * h, H, H), outside)
        sim = sim.reshape(B, W, 3, h, H, H).sum(dim=2)
        if outside is not None:
            sim = sim.masked_fill(outside, torch.finfo(sim.dtype).min)
        attn = sim.softmax(dim=-1)
        if self.captured is not None:
            self.captured["attn"] = attn.detach()  # (B, lines, h, query, key)
        sv = attn @ v  # (B, W, h, H, d)
        sve = torch.einsum("bwnij,ijc->bwnic", attn, r_v)
        out = torch.stack([sv, sve], dim=-1).permute(0, 2, 4, 5, 3, 1).reshape(B, 2 * C, H, W)
        return self.bn_output(out).reshape(B, C, 2, H, W).sum(dim=2)

    def norm_similarity(self, sim: torch.Tensor, outside: torch.Tensor | None) -> torch.Tensor:
        """``bn_similarity`` on the stacked terms ``(lines, 3 heads, query, key)``; with a fixed span its
        training statistics are those of the pairs within the span, the similarities the mechanism has."""
        if outside is None:
            return self.bn_similarity(sim)
        return batch_norm(sim, self.bn_similarity, channel_dims=(1,), valid=~outside)

    def lines(self, x: torch.Tensor) -> torch.Tensor:
        """The same layer shaped for GPUs: lines contiguous, every product one batched matrix product on
        views; in eval mode each batch norm is folded into the sum of its terms. A fixed span much
        shorter than the axis runs blocked (:meth:`tiles`)."""
        B, C, H, W = x.shape
        h, d = self.cfg.heads, self.head_dim
        check_fits("axial", H, self.cfg.span, self.cfg.size)
        if blocked(self.cfg.span, H):
            return self.tiles(x)
        qkv = self.bn_qkv(pointwise(self.qkv, x)).view(B, h, 2 * d, H, W).permute(0, 4, 1, 3, 2)
        qkv = qkv.reshape(B * W * h, H, 2 * d)  # (line, position, channel), contiguous
        q, k, v = qkv.split([d // 2, d // 2, d], dim=-1)
        rel = relative_to_absolute(self.relative, H)  # (H_query, H_key, 2d)
        r_q, r_k, r_v = rel.split([d // 2, d // 2, d], dim=-1)
        qk = torch.bmm(q, k.transpose(1, 2))  # (line, i, j)
        qr = torch.bmm(q.transpose(0, 1), r_q.transpose(1, 2)).transpose(0, 1)  # batched over i: q_i . r^q_{j-i}
        kr = torch.bmm(k.transpose(0, 1), r_k.permute(1, 2, 0)).permute(1, 2, 0)  # batched over j: k_j . r^k_{j-i}
        terms = [t.view(B, W, h, H, H) for t in (qk, qr, kr)]
        outside = window_mask(H, self.cfg.span, self.cfg.size, x.device)
        if self.training:
            sim = self.norm_similarity(torch.stack(terms, dim=2).view(B * W, 3 * h, H, H), outside)
            sim = sim.view(B, W, 3, h, H, H).sum(dim=2)
        else:
            scale, shift = folded(self.bn_similarity)
            scale, shift = scale.view(3, h, 1, 1), shift.view(3, h, 1, 1).sum(dim=0)
            sim = torch.addcmul(shift, terms[0], scale[0])
            sim = sim.addcmul_(terms[1], scale[1]).addcmul_(terms[2], scale[2])
        if outside is not None:
            sim = sim.masked_fill(outside, torch.finfo(sim.dtype).min)
        attn = sim.softmax(dim=-1).view(B * W * h, H, H)
        sv = torch.bmm(attn, v).view(B, W, h, H, d)
        sve = torch.bmm(attn.transpose(0, 1), r_v).transpose(0, 1).view(B, W, h, H, d)  # batched over i
        return self.finish(sv, sve)

    def finish(self, sv: torch.Tensor, sve: torch.Tensor) -> torch.Tensor:
        """``bn_output`` on the two output terms ``(B, lines, heads, position, d)``, summed, as ``(B, C, H, W)``."""
        B, W, h, H, d = sv.shape
        C = h * d
        if self.training:
            out = torch.stack([sv, sve], dim=-1).permute(0, 2, 4, 5, 3, 1).reshape(B, 2 * C, H, W)
            return self.bn_output(out).view(B, C, 2, H, W).sum(dim=2)
        scale, shift = folded(self.bn_output)
        scale, shift = scale.view(h, d, 2), shift.view(h, d, 2).sum(dim=-1)
        out = torch.addcmul(shift[:, None, :], sv, scale[:, None, :, 0]).addcmul_(sve, scale[:, None, :, 1])
        return out.permute(0, 2, 4, 3, 1).reshape(B, C, H, W)  # (b, n, c, i, w)

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`lines` for a fixed span blocked along the axis: tiles of ``span`` queries, each against
        the ``2 span - 1`` keys of its halo, so the work is pixels x span. Pairs out of the window or the
        line are masked before the softmax and left out of the similarity statistics."""
        B, C, H, W = x.shape
        h, d, t = self.cfg.heads, self.head_dim, self.cfg.span
        r = (t - 1) // 2
        nb, halo = -(-H // t), t + 2 * r
        M = B * W * h
        qkv = self.bn_qkv(pointwise(self.qkv, x)).view(B, h, 2 * d, H, W).permute(0, 4, 1, 3, 2)
        qkv = qkv.reshape(M, H, 2 * d)
        q, kv = F.pad(qkv[..., : d // 2], (0, 0, 0, nb * t - H)), qkv[..., d // 2 :]
        q = q.view(M * nb, t, d // 2)  # query tiles
        kv = F.pad(kv, (0, 0, r, r + nb * t - H)).unfold(1, halo, t)  # (M, nb, 3d/2, halo), a view
        kv = kv.transpose(2, 3).reshape(M * nb, halo, 3 * d // 2)
        k, v = kv.split([d // 2, d], dim=-1)
        band = band_tiles(self.relative, t)  # (u, 2d, p): the embedding of offset p - r - u
        r_q, r_k, r_v = band.split([d // 2, d // 2, d], dim=1)
        qk = torch.bmm(q, k.transpose(1, 2))  # (tile, u, p)
        qr = torch.bmm(q.transpose(0, 1), r_q).transpose(0, 1)  # batched over u
        kr = torch.bmm(k.transpose(0, 1), r_k.permute(2, 1, 0)).permute(1, 2, 0)  # batched over p
        u = torch.arange(t, device=x.device)[:, None]
        p = torch.arange(halo, device=x.device)[None, :]
        start = torch.arange(nb, device=x.device)[:, None, None] * t
        valid = ((p - r - u).abs() <= r) & (start + p - r >= 0) & (start + p - r < H) & (start + u < H)  # (nb, u, p)
        terms = [term.view(B, W, h, nb, t, halo) for term in (qk, qr, kr)]
        if self.training:
            sim = batch_norm(torch.stack(terms, dim=2), self.bn_similarity, channel_dims=(2, 3), valid=valid)
            sim = sim.sum(dim=2)
        else:
            scale, shift = folded(self.bn_similarity)
            scale, shift = scale.view(3, h, 1, 1, 1), shift.view(3, h, 1, 1, 1).sum(dim=0)
            sim = torch.addcmul(shift, terms[0], scale[0])
            sim = sim.addcmul_(terms[1], scale[1]).addcmul_(terms[2], scale[2])
        attn = sim.masked_fill(~valid, torch.finfo(sim.dtype).min).softmax(dim=-1).view(M * nb, t, halo)
        sv = torch.bmm(attn, v).view(B, W, h, nb * t, d)[:, :, :, :H]
        sve = torch.bmm(attn.view(M, nb, t, halo).permute(2, 0, 1, 3).reshape(t, M * nb, halo), r_v.transpose(1, 2))
        sve = sve.view(t, B, W, h, nb, d).permute(1, 2, 3, 4, 0, 5).reshape(B, W, h, nb * t, d)[:, :, :, :H]
        return self.finish(sv, sve)


def folded(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``x * scale + shift`` per channel."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@register_variant(
    "axial",
    AxialConfig,
    description="position-sensitive axial attention: a height layer then a width layer (Axial-DeepLab)",
    paper="Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation",
    arxiv="2003.07853",
    ends_with_norm=True,
    global_receptive_field=True,
    scaling=(1.0, 1.5),  # N (H + W): 1.5 with whole-axis spans, 1 with a fixed span
    preference={"cpu": ("lines",), "cuda": ("lines",)},  # lines measured 1.1-2.3x faster than dense on CPUs too
    reference="dense",
)
class AxialAttention(Variant):
    """Height-axis layer, then width-axis layer; each ends with its output batch norm."""

    offset_tables = ("height.relative", "width.relative")

    def __init__(self, cfg: AxialConfig):
        super().__init__(cfg)
        self.height = AxialLayer(cfg)
        self.width = AxialLayer(cfg)

    def capture(self, enabled: bool = True) -> None:
        """Keep both layers' attention weights of the next forward (for :meth:`attention_maps`)."""
        super().capture(enabled)
        for layer in (self.height, self.width):
            layer.captured = {} if enabled else None

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the mechanism, per axis layer: the q/k/v projection, then for each query and each of
        the min(span, axis) keys it reaches q.k, q.r^q and k.r^k (half-width) and the sums over v and r^v."""
        B, C, H, W = input_shape
        n = B * H * W
        return sum(n * 2 * C * C + n * keys_per_query(self.cfg.span, side) * (3 * C // 2 + 2 * C) for side in (H, W))

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """``{"attention": (heads, H, W)}``: the width layer's weight of (y, j) for pixel ``query`` = (y, x),
        per head, times the height layer's weight of (i, j) for (y, j), averaged over heads (the width
        layer's projections mix the height layer's heads), in the last captured forward."""
        y, x = query
        along_height = self.height.captured["attn"][image]  # (W, h, H_query, H_key)
        along_width = self.width.captured["attn"][image]  # (H, h, W_query, W_key)
        w_width = along_width[y, :, x]  # (h, j)
        w_height = along_height[:, :, y].mean(dim=1).T  # (i, j)
        return {"attention": w_width[:, None, :] * w_height[None]}



def _both_axes(layer_forward):
    def forward(self: AxialAttention, x: torch.Tensor) -> torch.Tensor:
        x = layer_forward(self.height, x)
        x = layer_forward(self.width, x.transpose(-1, -2)).transpose(-1, -2)
        return downsample(x, self.cfg.stride)

    return forward


register_impl("axial", "dense", description="the similarity terms stacked and normalised, as the paper writes it")(
    _both_axes(AxialLayer.dense))
register_impl("axial", "lines", description="contiguous lines, products on views, eval-mode norms folded (GPUs)")(
    _both_axes(AxialLayer.lines))
