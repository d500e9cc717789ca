"""Global multi-head self-attention with 2D relative position logits (BoTNet's MHSA).

Paper: "Bottleneck Transformers for Visual Recognition", Srinivas, Lin, Parmar, Shlens, Abbeel,
Vaswani, arXiv 2101.11605 (Section 3, Figure 4).

Mechanism: per head, logits_ij = q_i . k_j + q_i . r^h_{a-y} + q_i . r^w_{b-x} for query i = (y, x)
and key j = (a, b), over all pixels; q, k, v from bias-free 1x1 projections, q scaled by
1/sqrt(d_head) before both products; y_i = sum_j softmax_j(logits_ij) v_j. The relative
embeddings r^h (height offsets) and r^w (width offsets) are learned tables of 2 size - 1 rows of
the head width, shared by the heads. No output projection: in a bottleneck the 1x1 convolution
after the layer is that projection. With stride 2, a 2x2 average pool follows.

Implementations (one parameter set, the same function):
* ``dense`` (reference): the N x N logits explicitly, one head at a time (the relative terms added
  by the product itself, which reads the head's slice of the projection in place), then softmax and
  the weighted sum.
* ``sdpa`` (GPUs): ``scaled_dot_product_attention`` with the relative logits as its additive mask,
  so fused kernels with a bias (memory-efficient attention) never store the softmax for backward.
* ``augmented`` (CPUs): the relative logits folded into the dot product, so that the fused kernel of
  ``scaled_dot_product_attention`` runs without a mask and no N x N tensor exists, in inference or
  training. For query i = (y, x) and key j = (a, b), q_i . r^h_{a-y} + q_i . r^w_{b-x} is
  [A_h(q_i), A_w(q_i)] . [onehot(a), onehot(b)] with A_h(q_i)[a'] = q_i . r^h_{a'-y} (H numbers) and
  A_w(q_i)[b'] = q_i . r^w_{b'-x} (W numbers): queries [q, A_h(q), A_w(q)] against keys
  [k, onehot(a), onehot(b)] give the whole logit, at d_head + H + W multiply-adds per pair instead of
  d_head (values are zero-padded to the same width, which the fused CPU kernel requires). While one
  head's logits over the batch fit in cache (B N^2 at most 2^23 values) it runs ``dense``, which is
  faster there. One thread, CPU time, dense / fused kernel: forward, 8 x 512 x 14 x 14 (BoT50's last
  stage) 36 / 39 ms, 1 x 128 x 56 x 56 312 / 256 ms, 8 x 64 x 56 x 56 2.1 / 1.8 s; forward + backward,
  8 x 256 x 28 x 28 374 / 444 ms, 64 x 16 x 32 x 32 (the probe's layer) 2.7 / 1.7 s.
* ``blocked`` (CPUs): every product over all (image, head) pairs at once (the projection's rows reordered so
  that q, k and v are each one batch of channel-major (d, N) matrices), the logits of a block of queries at a
  time (at most ``BLOCK_LOGITS`` over the batch and heads: one block for BoT50's last stage), each block
  the relative logits broadcast into a buffer, the content product accumulated into it and the softmax,
  all in cache; the product with the values writes the channel-major output directly. Unlike
  ``augmented`` its products have the head width, not d_head + H + W. Its backward recomputes each block
  of probabilities from q, k and the relative logits instead of keeping the N x N softmax. One thread, CPU
  time, forward, augmented / blocked / timm's BottleneckAttn: 8 x 512 x 14 x 14 35 / 40 / 44 ms (the
  1 x 1 projection is 23 of them), 8 x 256 x 28 x 28 180 / 135 / 325 ms, 1 x 128 x 56 x 56 245 / 140 /
  525 ms, 1 x 128 x 64 x 64 425 / 196 / 841 ms, 8 x 64 x 56 x 56 1.71 / 0.81 / 3.82 s; a training step of
  the probe (two layers of 14 channels, one head, batch 64, 32 x 32) 1.75 / 0.75 s.

At a side other than ``size`` (the largest side the layer will see): the tables serve a smaller map
with their central offsets and refuse a larger one, as BoTNet's code builds them for its feature
map's size (its relative logits have no row for a longer offset; dropping the far keys would change
the softmax). With the tables interpolated (``offset_tables``: r^h and r^w resized linearly over the
offsets to 2 side - 1 rows, as ViTDet and Segment Anything resize their decomposed relative tables
for another input size) every side runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import Variant, VariantConfig, register_impl, register_variant
from attnbench.variants._common import check_fits, downsample, project, relative_to_absolute


@dataclass(frozen=True)
class MHSAConfig(VariantConfig):
    heads: int = 4  # BoT50's

    def validate(self) -> None:
        super().validate()
        self.check_heads()


@register_variant(
    "mhsa",
    MHSAConfig,
    description="global multi-head self-attention with 2D relative position logits (BoTNet)",
    paper="Bottleneck Transformers for Visual Recognition",
    arxiv="2101.11605",
    global_receptive_field=True,
    scaling=(2.0, 2.0),  # N x N pairs
    reference="dense",
    preference={"cpu": ("blocked",), "cuda": ("sdpa",)},
)
class MultiHeadSelfAttention(Variant):
    """BoTNet's MHSA layer; output has the input's channels and, with stride 1, its size."""

    offset_tables = ("rel_height", "rel_width")

    def __init__(self, cfg: MHSAConfig):
        super().__init__(cfg)
        self.heads = cfg.heads
        dh = cfg.dim // cfg.heads
        self.to_qkv = nn.Conv2d(cfg.dim, 3 * cfg.dim, 1, bias=False)
        self.rel_height = nn.Parameter(torch.randn(2 * cfg.size - 1, dh) * dh**-0.5)  # r^h, offset a - y
        self.rel_width = nn.Parameter(torch.randn(2 * cfg.size - 1, dh) * dh**-0.5)  # r^w, offset b - x

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """``{"attention": (heads, H, W)}``: the softmax row of pixel ``query`` = (y, x) over all pixels."""
        attn, (H, W) = self.captured["attn"], self.captured["size"]
        y, x = query
        return {"attention": attn[image, :, y * W + x].view(-1, H, W)}

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, h, N, d) views of one token-major projection (B, N, 3C): its product reads x transposed
        in place, and the products after it read each head's slice in place."""
        B, C, H, W = x.shape
        for side in (H, W):
            check_fits("mhsa", side, None, self.cfg.size)
        h = self.heads
        rows = F.linear(x.flatten(2).transpose(1, 2), self.to_qkv.weight.view(3 * C, C))
        return rows.view(B, H * W, 3, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)

    def relative_logits(self, q: torch.Tensor, H: int, W: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``scale`` q . r^h and ``scale`` q . r^w for queries ``q`` (B, h, H W, d): (B, h, H, W, H) over the key
        rows a and (B, h, H, W, W) over the key columns b (the tables scaled, not the queries)."""
        B, h, _, dh = q.shape
        size = self.cfg.size
        rel_h = relative_to_absolute(self.rel_height[size - H : size + H - 1] * scale, H)  # (y, a, d)
        rel_w = relative_to_absolute(self.rel_width[size - W : size + W - 1] * scale, W)  # (x, b, d)
        qg = q.reshape(B, h, H, W, dh)
        # contiguous (they are small), so that sums broadcast from them are laid out as the (B, h, N, N) logits
        return (torch.einsum("bhyxd,yad->bhyxa", qg, rel_h).contiguous(),
                torch.einsum("bhyxd,xcd->bhyxc", qg, rel_w).contiguous())

    def finish(self, out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The heads' outputs (B, h, N, d) as the (B, C, H, W) map, then the optional pool."""
        B, C, H, W = shape
        return downsample(out.transpose(-1, -2).reshape(B, C, H, W), self.cfg.stride)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.projections(x)
        B, h, n, dh = q.shape
        H, W = x.shape[-2:]
        scale = dh**-0.5
        logits_h, logits_w = self.relative_logits(q, H, W, scale)
        maps, outputs = [], []
        for j in range(h):  # one head at a time: each product reads the head's slice of the projection in place
            relative = (logits_h[:, j, ..., :, None] + logits_w[:, j, ..., None, :]).view(B, n, n)  # (y, x, a, b)
            attn = torch.baddbmm(relative, q[:, j], k[:, j].transpose(1, 2), alpha=scale).softmax(dim=-1)
            maps.append(attn)
            outputs.append(torch.bmm(v[:, j].transpose(1, 2), attn.transpose(1, 2)))  # (B, d, N): channel-major
        if self.captured is not None:
            self.captured.update(attn=torch.stack(maps, 1).detach(), size=(H, W))
        return downsample(torch.cat(outputs, 1).view(x.shape), self.cfg.stride)


register_impl("mhsa", "dense", description="the N x N logits explicitly")(MultiHeadSelfAttention.dense)


@register_impl("mhsa", "sdpa", description="scaled_dot_product_attention, the relative logits as its additive mask")
def sdpa(self: MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    q, k, v = self.projections(x)
    B, h, n, dh = q.shape
    logits_h, logits_w = self.relative_logits(q, *x.shape[-2:], dh**-0.5)
    relative = (logits_h[..., :, None] + logits_w[..., None, :]).reshape(B, h, n, n)
    return self.finish(F.scaled_dot_product_attention(q, k, v, attn_mask=relative, scale=dh**-0.5), x.shape)


# blocked computes the logits of at most this many (image, head, query, key) pairs at once: 16 MiB in fp32, which
# stays in a CPU's last-level cache between the products and the softmax around it; smaller blocks mean more (and
# smaller) operations, each a parallel region for the threads (measured: see the module's docstring)
BLOCK_LOGITS = 1 << 22


def _blocks(batch: int, n: int) -> list[tuple[int, int]]:
    """Query ranges [i0, i1) of at most BLOCK_LOGITS logits each over ``batch`` (image, head) pairs and ``n`` keys."""
    rows = max(1, BLOCK_LOGITS // (batch * n))
    return [(i, min(n, i + rows)) for i in range(0, n, rows)]


def _block_probabilities(q, k, rel_h, rel_w, i0: int, i1: int, scale: float) -> torch.Tensor:
    """The softmax rows of queries i0..i1: (B', i1 - i0, N), from channel-major q, k (B', d, N) and the
    relative logits rel_h (B', N, H), rel_w (B', N, W) of every query."""
    Bp, n, H, W = q.shape[0], i1 - i0, rel_h.shape[-1], rel_w.shape[-1]
    logits = (rel_h[:, i0:i1, :, None] + rel_w[:, i0:i1, None, :]).view(Bp, n, H * W)
    return logits.baddbmm_(q[:, :, i0:i1].transpose(1, 2), k, alpha=scale).softmax(dim=-1)


def _attend(q, k, v, rel_h, rel_w, scale: float) -> torch.Tensor:
    """Channel-major outputs (B', d, N) of all heads, the logits block by block (nothing kept for a backward)."""
    outs = [torch.bmm(v, _block_probabilities(q, k, rel_h, rel_w, i0, i1, scale).transpose(1, 2))
            for i0, i1 in _blocks(q.shape[0], q.shape[-1])]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


class _BlockedAttention(torch.autograd.Function):
    """:func:`_attend` whose backward recomputes each block of probabilities (as fused attention kernels do) rather
    than keeping the N x N softmax of every head: for a block P of rows, with dO its outputs' gradient and
    D_i = dO_i . O_i, dS = P * (dO V^T - D) gives dq = scale dS k, dk = scale dS^T q, dv = P^T dO, and the relative
    logits' gradients are dS summed over the key columns (height table) and rows (width table)."""

    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, scale):
        out = _attend(q, k, v, rel_h, rel_w, scale)
        ctx.save_for_backward(q, k, v, rel_h, rel_w, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, rel_h, rel_w, out = ctx.saved_tensors
        scale = ctx.scale
        Bp, H, W = q.shape[0], rel_h.shape[-1], rel_w.shape[-1]
        delta = (grad * out).sum(dim=1)  # (B', N)
        dq, dh, dw = [], [], []
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        for i0, i1 in _blocks(Bp, q.shape[-1]):
            p = _block_probabilities(q, k, rel_h, rel_w, i0, i1, scale)
            g = grad[:, :, i0:i1]
            dv.baddbmm_(g, p)
            ds = torch.bmm(g.transpose(1, 2), v).sub_(delta[:, i0:i1, None]).mul_(p)  # d logits
            dq.append(torch.bmm(k, ds.transpose(1, 2)))
            dk.baddbmm_(q[:, :, i0:i1], ds)
            grid = ds.view(Bp, i1 - i0, H, W)
            dh.append(grid.sum(dim=3))
            dw.append(grid.sum(dim=2))
        return (torch.cat(dq, dim=2).mul_(scale), dk.mul_(scale), dv, torch.cat(dh, dim=1), torch.cat(dw, dim=1),
                None)


@register_impl("mhsa", "blocked",
               description="all heads in each product, the logits of blocks of queries at a time (cache-sized), the "
                           "relative logits broadcast into them; backward recomputes each block")
def blocked(self: MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    for side in (H, W):
        check_fits("mhsa", side, None, self.cfg.size)
    h, dh, n = self.heads, C // self.heads, H * W
    # the projection's rows reordered (head, q/k/v, channel), so that each of q, k, v is one (B h, d, N) batch
    weight = self.to_qkv.weight.view(3, h, dh, C).transpose(0, 1).reshape(3 * C, C)
    q, k, v = project(weight, None, x.reshape(B, C, n)).view(B * h, 3, dh, n).unbind(1)
    rel_h, rel_w = self.relative_logits(q.view(B, h, dh, n).transpose(2, 3), H, W, dh**-0.5)
    args = (q, k, v, rel_h.view(B * h, n, H), rel_w.view(B * h, n, W), dh**-0.5)
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in args[:5])
    out = _BlockedAttention.apply(*args) if grads else _attend(*args)
    return downsample(out.view(B, C, H, W), self.cfg.stride)


# augmented runs dense while one head's logits over the batch (B N^2 values) are at most this many: 32 MiB in fp32,
# about what stays in a CPU's last-level cache; beyond, dense's passes over them (and in training the softmax it
# keeps per head) cost more than the wider products of the fused kernel (measured: see the module's docstring)
EXPLICIT_LOGITS = 1 << 23


@register_impl("mhsa", "augmented",
               description="scaled_dot_product_attention's fused kernel, the relative logits folded into queries and "
                           "keys (no N x N tensor); dense while a head's B N^2 logits fit in cache")
def augmented(self: MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    if B * (H * W) ** 2 <= EXPLICIT_LOGITS:
        return self.dense(x)
    q, k, v = self.projections(x)
    h, n, dh = self.heads, H * W, C // self.heads
    logits_h, logits_w = self.relative_logits(q, H, W, 1.0)  # the kernel scales the whole dot product
    pos = torch.arange(n, device=x.device)
    onehot = torch.cat([F.one_hot(pos // W, H), F.one_hot(pos % W, W)], dim=1).to(x.dtype)  # key (a, b)
    queries = torch.cat([q, logits_h.reshape(B, h, n, H), logits_w.reshape(B, h, n, W)], dim=-1)
    keys = torch.cat([k, onehot.expand(B, h, n, H + W)], dim=-1)
    values = F.pad(v, (0, H + W))
    out = F.scaled_dot_product_attention(queries, keys, values, scale=dh**-0.5)[..., :dh]
    return self.finish(out, x.shape)
