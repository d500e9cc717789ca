"""Stand-alone local self-attention (SASA).

Paper: "Stand-Alone Self-Attention in Vision Models", Ramachandran, Parmar, Vaswani, Bello,
Levskaya, Shlens, arXiv 1906.05909 (Section 3).

Mechanism: y_ij = sum_{ab in N_k(ij)} softmax_ab(q_ij . k_ab + q_ij . r_{a-i,b-j}) v_ab over the
k x k window around each pixel, per head; q, k, v from full (ungrouped) bias-free 1x1 projections,
as the published 18.0 M parameters of SASA-ResNet-50 require. The relative embedding of an offset
is the concatenation of a row-offset embedding and a column-offset embedding, each half of the head
width, learned per head. No 1/sqrt(d) scaling (the paper's equation has none). Pixels outside the
image are never attended to: the softmax runs over the in-image part of the window only.

Implementations (one parameter set, the same function):
* ``halo`` (reference; CPUs): queries are processed in ``block`` x ``block`` tiles that attend to their
(block + k - 1)^2 halo with dense matrix products; pairs outside each query's window are masked
before the softmax, so the result is exactly the windowed attention. The blocked form computes
(block + k - 1)^2 / k^2 more logits than the mechanism needs but runs as large matrix products and
never copies keys and values k^2 times; it also computes q.r once per row and column offset
rather than once per window element. The MACs reported for this layer are the mechanism's as the
paper writes it (``macs``: q.k, q.r and the weighted sum over the k^2 window), not the work of
this implementation, so they compare with SASA's published figures.
* ``flex`` (GPUs): FlexAttention over the raster-ordered pixels with a block mask of the k x k
  neighbourhoods (pairs outside the window or the image are never scored) and the q.r terms added
  by a ``score_mod`` from per-query tables of k row and k column offsets; compiled into fused kernels
  on GPUs. FlexAttention has no backward on CPUs, where this path serves only to check it.

Deviations: none in the result.

At a side other than the network's own the window stays k x k with its embeddings (one per offset
within it), as in the paper's every stage: nothing is sized to the image, so there is nothing to
interpolate.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import Inputs, Variant, VariantConfig, register_impl, register_variant
from attnbench.variants._common import downsample, pointwise

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # torch < 2.5
    create_block_mask = flex_attention = None

CHUNK_ELEMENTS = 1 << 21  # attention logits per chunk of tiles (8 MiB in fp32)


@dataclass(frozen=True)
class LocalConfig(VariantConfig):
    heads: int = 8  # attention heads
    window: int = 7  # spatial extent k of the window (pixels, odd)
    block: int = 8  # query tile side of the blocked computation; does not change the result

    _positive: ClassVar[tuple[str, ...]] = (*VariantConfig._positive, "block")

    def validate(self) -> None:
        super().validate()
        self.check_heads(halves="its halves hold the row and column embeddings")
        self.check_odd("window")


@register_variant(
    "local",
    LocalConfig,
    description="stand-alone local self-attention over a k x k window (SASA)",
    paper="Stand-Alone Self-Attention in Vision Models",
    arxiv="1906.05909",
    preference={"cuda": ("flex",)},
    reference="halo",
)
class LocalSelfAttention(Variant):
    """SASA layer: multi-head attention over each pixel's ``window`` x ``window`` neighbourhood."""

    def __init__(self, cfg: LocalConfig):
        super().__init__(cfg)
        self.heads = cfg.heads
        half = cfg.dim // cfg.heads // 2
        self.to_qkv = nn.Conv2d(cfg.dim, 3 * cfg.dim, 1, bias=False)
        self.rel_row = nn.Parameter(torch.randn(cfg.heads, cfg.window, half) * half**-0.5)  # r_{a-i}
        self.rel_col = nn.Parameter(torch.randn(cfg.heads, cfg.window, half) * half**-0.5)  # r_{b-j}

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """``{"attention": (heads, H, W)}``: the softmax weights with which pixel ``query`` = (y, x) of
        ``image`` gathered values in the last captured forward; they fill its k x k window (in-image
        part) and are zero elsewhere."""
        attn = torch.cat(self.captured["attn"])  # (tiles, h, b*b, halo*halo)
        B, H, W, b = self.captured["geometry"]
        pad = self.cfg.window // 2
        halo = b + 2 * pad
        nby, nbx = math.ceil(H / b), math.ceil(W / b)
        y, x = query
        tile = (image * nby + y // b) * nbx + x // b
        weights = attn[tile, :, (y % b) * b + x % b].view(-1, halo, halo)
        canvas = weights.new_zeros(weights.shape[0], nby * b + 2 * pad, nbx * b + 2 * pad)
        top, left = (y // b) * b, (x // b) * b
        canvas[:, top : top + halo, left : left + halo] = weights  # halo row 0 is image row top - pad
        return {"attention": canvas[:, pad : pad + H, pad : pad + W]}

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the mechanism as the paper writes it: the projections, then per window element
        q.k, q.r and the weighted sum of values (3 k^2 C per pixel)."""
        B, C, H, W = input_shape
        n = B * H * W
        return n * C * 3 * C + 3 * n * self.cfg.window**2 * C

    def halo(self, x: torch.Tensor) -> torch.Tensor:
        """The blocked computation (see the module's docstring)."""
        B, C, H, W = x.shape
        h, k, dh = self.heads, self.cfg.window, C // self.heads
        pad = k // 2
        b = min(self.cfg.block, max(H, W))
        nby, nbx = math.ceil(H / b), math.ceil(W / b)
        halo = b + 2 * pad
        q, kv = pointwise(self.to_qkv, x).split([C, 2 * C], dim=1)

        # queries in b x b tiles: (B*nby*nbx, h, b*b, dh)
        q = F.pad(q, (0, nbx * b - W, 0, nby * b - H))
        q = q.reshape(B, h, dh, nby, b, nbx, b).permute(0, 3, 5, 1, 4, 6, 2).reshape(-1, h, b * b, dh)
        # keys and values in each tile's halo: (2, B*nby*nbx, h, halo*halo, dh)
        kv = F.pad(kv, (pad, pad + nbx * b - W, pad, pad + nby * b - H))
        kv = kv.unfold(2, halo, b).unfold(3, halo, b)  # (B, 2C, nby, nbx, halo, halo), a view
        kv = kv.view(B, 2, h, dh, nby, nbx, halo, halo).permute(1, 0, 4, 5, 2, 6, 7, 3)
        keys, values = kv.reshape(2, -1, h, halo * halo, dh).unbind(0)

        if self.captured is not None:
            self.captured.update(attn=[], geometry=(B, H, W, b))
        place = self._placement(b, k, halo, x.device, q.dtype)  # (b, k, halo): offset -> halo index
        far_rows, far_cols = self._outside(B, H, W, b, k, x.device)  # (Bt, 1, b, 1, halo), (Bt, 1, 1, b, halo)
        # tiles in chunks whose logits stay cache-sized; split, not sliced: a slice's backward writes a zero tensor
        # of the whole input per chunk, split's one for all
        chunk = max(1, CHUNK_ELEMENTS // (h * b * b * halo * halo))
        parts = zip(*(t.split(chunk) for t in (q, keys, values, far_rows, far_cols)))
        out = torch.cat([self._attend(*part, place) for part in parts])  # (Bt, h, b*b, dh)
        out = out.reshape(B, nby, nbx, h, b, b, dh).permute(0, 3, 6, 1, 4, 2, 5)
        out = out.reshape(B, C, nby * b, nbx * b)[:, :, :H, :W]
        return downsample(out, self.cfg.stride)

    def _attend(self, q, keys, values, far_rows, far_cols, place):
        """Attention of tiles of queries over their halos.

        Args:
            q: ``(T, h, b*b, dh)``; keys, values: ``(T, h, halo*halo, dh)``.
            far_rows: ``(T, 1, b, 1, halo)``, True where a halo row is out of the query's window or the image;
                far_cols: ``(T, 1, 1, b, halo)``, the same for columns.
            place: ``(b, k, halo)`` one-hot of window offset to halo index.
        """
        T, h, _, dh = q.shape
        b, k, halo = place.shape
        logits = q @ keys.transpose(-1, -2)  # (T, h, b*b, halo*halo): q . k
        # q . r: the row half of q meets row-offset embeddings, the column half column-offset ones
        qt = q.view(T, h, b, b, dh)
        rel_row = torch.einsum("nhuvd,hod->nhuvo", qt[..., : dh // 2], self.rel_row)  # (T, h, b, b, k)
        rel_col = torch.einsum("nhuvd,hod->nhuvo", qt[..., dh // 2 :], self.rel_col)
        rel_row = torch.einsum("nhuvo,uop->nhuvp", rel_row, place)  # (T, h, b, b, halo)
        rel_col = torch.einsum("nhuvo,vos->nhuvs", rel_col, place)
        # a pair out of reach along either axis is masked through that axis's term (a quarter of the dtype's range
        # each: their sum stays finite), so the mask costs no pass over the logits
        low = -torch.finfo(rel_row.dtype).max / 4
        rel_row, rel_col = rel_row.masked_fill(far_rows, low), rel_col.masked_fill(far_cols, low)
        # the first sum a new tensor, so that the in-place step changes no view (whose backward copies the whole base)
        logits = torch.add(logits.view(T, h, b, b, halo, halo), rel_row[..., :, None]).add_(rel_col[..., None, :])
        attn = logits.view(T, h, b * b, halo * halo).softmax(dim=-1)
        if self.captured is not None:
            self.captured["attn"].append(attn.detach())
        return attn @ values  # (T, h, b*b, dh)

    @staticmethod
    def _placement(b: int, k: int, halo: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """One-hot (b, k, halo): a query at tile row u sees window row o at halo row u + o."""
        u = torch.arange(b, device=device)[:, None, None]
        o = torch.arange(k, device=device)[None, :, None]
        p = torch.arange(halo, device=device)[None, None, :]
        return (p == u + o).to(dtype)

    @staticmethod
    def _outside(B: int, H: int, W: int, b: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """True where a halo row is outside the window of a tile's query row or outside the image, (tiles, 1, b,
        1, halo); and the same for columns, (tiles, 1, 1, b, halo): a pair is masked where either is."""
        pad = k // 2
        halo = b + 2 * pad
        nby, nbx = math.ceil(H / b), math.ceil(W / b)
        u = torch.arange(b, device=device)
        p = torch.arange(halo, device=device)
        off = p[None, :] - u[:, None]  # (b, halo): key row - query row + pad
        far = (off < 0) | (off >= k)  # (b, halo)
        # key rows/cols of each tile's halo in image coordinates
        rows = torch.arange(nby, device=device)[:, None] * b + p[None, :] - pad  # (nby, halo)
        cols = torch.arange(nbx, device=device)[:, None] * b + p[None, :] - pad  # (nbx, halo)
        out_r = (rows < 0) | (rows >= H)
        out_c = (cols < 0) | (cols >= W)
        rows = (far[None] | out_r[:, None, :])[:, None, None, :, None, :].expand(B, nby, nbx, 1, b, 1, halo)
        cols = (far[None] | out_c[:, None, :])[None, :, None, None, :, :].expand(B, nby, nbx, 1, 1, b, halo)
        return rows.reshape(-1, 1, b, 1, halo), cols.reshape(-1, 1, 1, b, halo)


register_impl("local", "halo", description="query tiles against their key halos, masked, chunked (CPU caches)")(
    LocalSelfAttention.halo)


def _flex_check(inputs: Inputs) -> str | None:
    if flex_attention is None:
        return f"this torch ({torch.__version__}) has no FlexAttention"
    if inputs.device_type == "cpu" and inputs.grad:
        return "FlexAttention has no backward on CPUs"
    return None


@register_impl("local", "flex", check=_flex_check, fakeable=False,
               description="FlexAttention: a k x k neighbourhood block mask, relative terms as score_mod")
def flex(self: LocalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    h, k, dh = self.heads, self.cfg.window, C // self.heads
    pad = k // 2
    qkv = pointwise(self.to_qkv, x).view(B, 3, h, dh, H * W).permute(1, 0, 2, 4, 3)  # (3, B, h, N, dh)
    q, keys, values = (t.contiguous() for t in qkv.unbind(0))
    # q . r per query and row / column offset: (B, h, N, k) each, looked up by the score_mod
    rel_row = torch.einsum("bhnd,hod->bhno", q[..., : dh // 2], self.rel_row)
    rel_col = torch.einsum("bhnd,hod->bhno", q[..., dh // 2 :], self.rel_col)

    def relative(score, b, head, qi, ki):
        dy = (ki // W - qi // W + pad).clamp(0, k - 1)
        dx = (ki % W - qi % W + pad).clamp(0, k - 1)
        return score + rel_row[b, head, qi, dy] + rel_col[b, head, qi, dx]

    # a graph being compiled builds the mask in the graph (dynamo does not trace through caches)
    mask = (neighbourhood_mask.__wrapped__ if torch.compiler.is_compiling() else neighbourhood_mask)(H, W, k, x.device)
    out = _flex(x.device)(q, keys, values, score_mod=relative, block_mask=mask, scale=1.0)
    out = out.transpose(2, 3).reshape(B, C, H, W)
    return downsample(out, self.cfg.stride)


def _flex(device: torch.device):
    """FlexAttention, compiled into fused kernels for GPU inputs (eager, unfused, for others and inside a
    graph that is itself being compiled)."""
    global _FLEX_COMPILED
    if torch.compiler.is_compiling():
        return flex_attention
    if device.type != "cuda":
        return _eager_flex
    if _FLEX_COMPILED is None:
        compiled = torch.compile(flex_attention, dynamic=False)

        def run(*args, **kwargs):
            # one compiled kernel per map shape and grad mode: a ResNet has about 8 shapes, each in
            # inference and training, past dynamo's default limit of 8 per function
            with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT):
                return compiled(*args, **kwargs)

        _FLEX_COMPILED = run
    return _FLEX_COMPILED


def _eager_flex(*args, **kwargs):
    """FlexAttention run eagerly, as it is on purpose off GPUs (there it is checked, not fast), without torch's
    multi-line warning that it was called without torch.compile on every sweep's stderr."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile", UserWarning)
        return flex_attention(*args, **kwargs)


FLEX_RECOMPILE_LIMIT = 64
_FLEX_COMPILED = None


@functools.lru_cache(maxsize=32)
def neighbourhood_mask(H: int, W: int, k: int, device: torch.device):
    """Block mask of the raster-order (query, key) pairs within each other's k x k window."""
    pad = k // 2

    def inside(b, head, qi, ki):
        return ((ki // W - qi // W).abs() <= pad) & ((ki % W - qi % W).abs() <= pad)

    return create_block_mask(inside, None, None, H * W, H * W, device=device)
