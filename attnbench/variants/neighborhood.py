"""Neighbourhood attention (NAT).

Paper: "Neighborhood Attention Transformer", Hassani, Walton, Li, Li, Shi, arXiv 2204.07143
(Section 3.1, Equations 2-5).

Mechanism: every query attends to its k x k nearest pixels: the window is centred on the query
where it fits and shifted inwards at the borders (clamped, never zero-padded, unlike SASA), so
every query meets k^2 keys. Per head, logits = q . k / sqrt(d_head) + B[dy, dx] with B a learned
relative position bias of (2k - 1) x (2k - 1) entries per head; q, k, v from one linear projection
with bias, and a linear output projection with bias after the heads are joined. With stride 2, a
2x2 average pool follows.

Implementations (one parameter set, the same function):
* ``tiles`` (reference; CPUs): queries in ``block`` x ``block`` tiles; a tile's clamped windows all
  lie in one (block + k - 1)^2 stretch of keys, gathered once per tile; logits against it are
  masked to each query's window. Dense products, no k^2 copies of keys and values. The MACs
  reported are the mechanism's (k^2 keys per query), not this path's extra masked work.
* ``flex`` (GPUs): FlexAttention with a block mask of the clamped windows and the bias as a
  ``score_mod``; compiled into fused kernels on GPUs. FlexAttention has no backward on CPUs.

NATTEN (the neighbourhood-attention library, the ``[natten]`` extra) agrees on which keys every query
meets: ``tests/test_natten.py`` checks both implementations against its ``na2d`` with the bias zeroed.
It is not an implementation here: NATTEN 0.20 and later have no relative position bias, which is part
of NAT's mechanism.

Deviations: on a side shorter than k the window is the whole side (NAT requires sides of at least
k). No dilation (that is DiNAT).

At a side other than the network's own the window stays k, as NAT keeps k = 7 on the larger inputs
of detection and segmentation: nothing is sized to the image (the bias covers the window's
offsets), so there is nothing to interpolate.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from attnbench.registry import VariantConfig, register_impl, register_variant
from attnbench.variants._common import BiasedWindowAttention, downsample, pointwise
from attnbench.variants.local import _flex, _flex_check, create_block_mask

CHUNK_ELEMENTS = 1 << 20  # attention logits per chunk of tiles (4 MiB in fp32)


@dataclass(frozen=True)
class NeighborhoodConfig(VariantConfig):
    heads: int = 8  # attention heads
    window: int = 7  # the k of the k x k neighbourhood (pixels, odd)
    block: int = 8  # query tile side of the tiled computation; does not change the result

    _positive: ClassVar[tuple[str, ...]] = (*VariantConfig._positive, "block")

    def validate(self) -> None:
        super().validate()
        self.check_heads()
        self.check_odd("window")


@register_variant(
    "neighborhood",
    NeighborhoodConfig,
    description="neighbourhood attention: each pixel's k x k nearest pixels, clamped at borders, relative bias (NAT)",
    paper="Neighborhood Attention Transformer",
    arxiv="2204.07143",
    preference={"cuda": ("flex",)},
    reference="tiles",
)
class NeighborhoodAttention(BiasedWindowAttention):
    """NAT layer: multi-head attention over each pixel's clamped ``window`` x ``window`` neighbourhood."""

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the mechanism: the projections, then q . k and the weighted sum over k^2 keys per query."""
        B, C, H, W = input_shape
        n = B * H * W
        return n * C * 4 * C + 2 * n * min(self.cfg.window, H) * min(self.cfg.window, W) * C

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """``{"attention": (heads, H, W)}``: pixel ``query`` = (y, x)'s softmax weights over its window."""
        attn, (H, W, b, span_h, span_w) = torch.cat(self.captured["attn"], dim=1), self.captured["geometry"]
        y, x = query
        tile = (y // b) * math.ceil(W / b) + x // b
        top, left = _halo_start(y // b * b, b, H, self.cfg.window), _halo_start(x // b * b, b, W, self.cfg.window)
        canvas = attn.new_zeros(attn.shape[2], H, W)
        weights = attn[image, tile, :, (y % b) * b + x % b].view(-1, span_h, span_w)
        canvas[:, top : top + span_h, left : left + span_w] = weights
        return {"attention": canvas}

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (scaled), k, v as (B, h, d, H, W)."""
        B, C, H, W = x.shape
        h = self.heads
        q, k, v = pointwise(self.qkv, x).view(B, 3, h, C // h, H, W).unbind(1)
        return q * (C // h) ** -0.5, k, v

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        return downsample(pointwise(self.proj, out), self.cfg.stride)

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        """The tiled computation (see the module's docstring)."""
        B, C, H, W = x.shape
        h, k, dh = self.heads, self.cfg.window, C // self.heads
        b = min(self.cfg.block, max(H, W))
        nby, nbx = math.ceil(H / b), math.ceil(W / b)
        span_h, span_w = min(b + k - 1, H), min(b + k - 1, W)  # every tile's keys lie in this stretch
        q, keys, values = self.split(x)
        # queries in b x b tiles (zero rows past the image, dropped at the end): (B, tiles, h, b*b, dh)
        q = F.pad(q, (0, nbx * b - W, 0, nby * b - H))
        q = q.reshape(B, h, dh, nby, b, nbx, b).permute(0, 3, 5, 1, 4, 6, 2).reshape(B, -1, h, b * b, dh)
        rows, cols = _halo_index(H, b, k, span_h, x.device), _halo_index(W, b, k, span_w, x.device)

        def gathered(t: torch.Tensor) -> torch.Tensor:  # each tile's stretch of keys: (B, tiles, h, span, dh)
            t = t[:, :, :, rows][..., cols]  # (B, h, dh, nby, span_h, nbx, span_w)
            return t.permute(0, 3, 5, 1, 4, 6, 2).reshape(B, -1, h, span_h * span_w, dh)

        keys, values = gathered(keys), gathered(values)
        bias, outside, pattern = self._patterns(H, W, b, span_h, span_w, x.device)
        # the mask folded into the bias once per pattern: one pass over the logits instead of two
        additive = bias.to(q.dtype).masked_fill(outside, torch.finfo(q.dtype).min)
        if self.captured is not None:
            self.captured.update(attn=[], geometry=(H, W, b, span_h, span_w))
        chunk = max(1, CHUNK_ELEMENTS // (B * h * b * b * span_h * span_w))  # tiles whose logits stay cache-sized
        # split, not sliced: a slice's backward writes a zero tensor of the whole input per chunk, split's one for all
        out = [self._attend(*parts, additive.index_select(0, which))
               for *parts, which in zip(q.split(chunk, 1), keys.split(chunk, 1), values.split(chunk, 1),
                                        pattern.split(chunk))]
        out = torch.cat(out, dim=1).reshape(B, nby, nbx, h, b, b, dh).permute(0, 3, 6, 1, 4, 2, 5)
        return self.finish(out.reshape(B, C, nby * b, nbx * b)[:, :, :H, :W])

    def _attend(self, q, keys, values, additive):
        logits = q @ keys.transpose(-1, -2)
        attn = logits.add_(additive).softmax(dim=-1)  # masked pairs: the dtype's lowest value added, weight 0
        if self.captured is not None:
            self.captured["attn"].append(attn.detach())
        return attn @ values

    def _patterns(self, H: int, W: int, b: int, span_h: int, span_w: int, device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a tile adds to its logits depends only on where it lies: at a border, or inside, where every
        tile sees the same offsets. Returns, per distinct pattern, the relative bias of each (query, key of
        the stretch) pair, (patterns, h, b*b, span), and True where the pair is masked (the key outside the
        query's window), (patterns, 1, b*b, span); and each tile's pattern. A query past the image (a tile's
        padding, dropped at the end) meets the window of the image's last pixel: every query meets unmasked keys,
        so no softmax runs over masked pairs alone (their logits, the dtype's lowest value plus the product, may
        be -inf in half precision)."""
        k = self.cfg.window
        patterns = _axis_patterns.__wrapped__ if torch.compiler.is_compiling() else _axis_patterns

        def axis(length: int, span: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            offsets, outside, tiles = patterns(length, b, k, span)
            return (torch.tensor(offsets, device=device).view(-1, b, span),
                    torch.tensor(outside, device=device).view(-1, b, span), torch.tensor(tiles, device=device))

        off_r, far_r, tile_r = axis(H, span_h)
        off_c, far_c, tile_c = axis(W, span_w)
        entry = off_r[:, None, :, None, :, None] * (2 * k - 1) + off_c[None, :, None, :, None, :]  # flat table index
        bias = self.rpb.flatten(1)[:, entry]  # (h, rows, cols, b_u, b_v, span_h, span_w)
        bias = bias.movedim(0, 2).reshape(-1, self.heads, b * b, span_h * span_w)
        outside = far_r[:, None, :, None, :, None] | far_c[None, :, None, :, None, :]
        pattern = (tile_r[:, None] * len(off_c) + tile_c[None, :]).flatten()  # (tiles,)
        return bias, outside.reshape(-1, 1, b * b, span_h * span_w), pattern


@functools.lru_cache(maxsize=64)
def _axis_patterns(length: int, b: int, k: int, span: int) -> tuple[tuple, tuple, tuple]:
    """Along an axis of ``length`` cut into tiles of ``b`` queries, each meeting the ``span`` keys of its
    stretch: the distinct patterns of (bias-table row of each query-key offset, whether the pair is masked),
    each b x span flattened, and the pattern of each tile. Plain integers (sizes only: no tensor data)."""
    window = min(k, length)
    found: dict[tuple, int] = {}
    tiles = []
    for t in range(-(-length // b)):
        first = _halo_start(t * b, b, length, k)
        offsets, outside = [], []
        for query in range(t * b, t * b + b):
            start = max(0, min(min(query, length - 1) - k // 2, length - window))
            for key in range(first, first + span):
                offsets.append(min(max(key - query + k - 1, 0), 2 * k - 2))
                outside.append(not start <= key < start + window)
        tiles.append(found.setdefault((tuple(offsets), tuple(outside)), len(found)))
    return tuple(p[0] for p in found), tuple(p[1] for p in found), tuple(tiles)


def _halo_start(t0: int, b: int, length: int, k: int) -> int:
    """First key of the stretch that holds the windows of the tile starting at query ``t0``."""
    span = min(b + k - 1, length)
    first = max(0, min(t0 - k // 2, length - min(k, length)))
    return min(first, length - span)


def _halo_index(length: int, b: int, k: int, span: int, device) -> torch.Tensor:
    """(tiles along the axis, span): the keys each tile gathers along an axis."""
    starts = [_halo_start(t * b, b, length, k) for t in range(math.ceil(length / b))]
    return torch.tensor(starts, device=device)[:, None] + torch.arange(span, device=device)


register_impl("neighborhood", "tiles", description="query tiles against the stretch their clamped windows share")(
    NeighborhoodAttention.tiles)


@register_impl("neighborhood", "flex", check=_flex_check, fakeable=False,
               description="FlexAttention: a block mask of the clamped windows, the bias as score_mod")
def flex(self: NeighborhoodAttention, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    k = self.cfg.window
    q, keys, values = (t.flatten(3).transpose(-1, -2).contiguous() for t in self.split(x))  # (B, h, N, dh)
    rpb = self.rpb

    def bias(score, b, head, qi, ki):  # pairs outside the mask are scored too, unfused: clamp their lookups
        dy = (ki // W - qi // W + k - 1).clamp(0, 2 * k - 2)
        dx = (ki % W - qi % W + k - 1).clamp(0, 2 * k - 2)
        return score + rpb[head, dy, dx]

    mask = (clamped_mask.__wrapped__ if torch.compiler.is_compiling() else clamped_mask)(H, W, k, x.device)
    out = _flex(x.device)(q, keys, values, score_mod=bias, block_mask=mask, scale=1.0)  # q is already scaled
    return self.finish(out.transpose(-1, -2).reshape(B, C, H, W))


@functools.lru_cache(maxsize=32)
def clamped_mask(H: int, W: int, k: int, device: torch.device):
    """Block mask of the raster-order (query, key) pairs where the key is in the query's clamped window."""
    span_h, span_w = min(k, H), min(k, W)

    def inside(b, head, qi, ki):
        top = (qi // W - k // 2).clamp(0, H - span_h)
        left = (qi % W - k // 2).clamp(0, W - span_w)
        row, col = ki // W, ki % W
        return (row >= top) & (row < top + span_h) & (col >= left) & (col < left + span_w)

    return create_block_mask(inside, None, None, H * W, H * W, device=device)
