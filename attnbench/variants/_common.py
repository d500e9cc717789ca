"""Pieces shared by several variants: relative position tables and banded products along an axis
(whole or blocked), 1x1 projections, batch norm in any layout, and the stride-2 pooling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.plain import downsample  # noqa: F401  (re-exported: the variants' stride rule)
from attnbench.registry import Variant, VariantConfig


def window_radius(span: int | None, size: int) -> int:
    """Largest |key - query| offset a layer reaches: ``(span - 1) // 2``, or ``size - 1`` for the whole axis."""
    return size - 1 if span is None else (span - 1) // 2


def table_entries(span: int | None, size: int) -> int:
    """Rows of a relative table covering offsets ``-r .. r``."""
    return 2 * window_radius(span, size) + 1


def relative_to_absolute(table: torch.Tensor, length: int) -> torch.Tensor:
    """Lay a relative table out per (query, key) pair along one axis.

    Args:
        table: ``(2r + 1, d)``; row ``o + r`` embeds the offset ``o = key - query``.
        length: the axis length of the input.

    Returns:
        ``(length, length, d)`` with ``out[q, k] = table[k - q + r]`` where ``|k - q| <= r``
        and zeros outside the window, so a product with it ignores keys out of reach.
    """
    r = (table.shape[0] - 1) // 2
    pos = torch.arange(length, device=table.device)
    offset = pos[None, :] - pos[:, None]  # (query, key)
    inside = offset.abs() <= r
    rows = table[(offset + r).clamp(0, 2 * r)]  # (length, length, d)
    return rows * inside[..., None].to(table.dtype)


def keys_per_query(span: int | None, length: int) -> int:
    """Keys one query meets along an axis of ``length`` as the mechanism is written: min(span, length)."""
    return length if span is None else min(span, length)


def blocked(span: int | None, length: int) -> bool:
    """Whether a banded product along this axis is cheaper blocked than whole: tiles of ``span`` queries
    meet the ``2 span - 1`` keys of their halo, against ``length`` for the whole axis."""
    return span is not None and 2 * span - 1 < length


def band_tiles(table: torch.Tensor, tile: int) -> torch.Tensor:
    """``(tile, d, tile + 2r)``: for query ``u`` of a tile and key ``p`` of its halo (the tile widened by
    ``r`` on each side), the embedding of the offset ``p - r - u``, zero outside ``-r .. r``."""
    r = (table.shape[0] - 1) // 2
    u = torch.arange(tile, device=table.device)[:, None]
    p = torch.arange(tile + 2 * r, device=table.device)[None, :]
    offset = p - r - u
    inside = offset.abs() <= r
    rows = table[(offset + r).clamp(0, 2 * r)] * inside[..., None].to(table.dtype)  # (tile, halo, d)
    return rows.transpose(1, 2)


def banded_axis(q: torch.Tensor, v: torch.Tensor, table: torch.Tensor, span: int | None) -> torch.Tensor:
    """Relative-position attention without softmax along one axis: ``out[m, x] = sum_i (q[x, m] .
    table[i - x]) v[m, i]`` over the keys ``i`` within reach (``|i - x| <= r``, r from the table).

    Args:
        q: ``(L, M, d)``, the queries of M lines of length L, position first.
        v: ``(M, L, e)``, their values.
        table: ``(2r + 1, d)``, row ``o + r`` embeds the offset ``o``.
        span: the layer's span (None: the whole axis), which decides the blocking.

    Returns ``(M, L, e)``. Whole-axis: two batched products with the ``(L, d, L)`` banded matrix.
    Blocked (see :func:`blocked`): the axis in tiles of ``span`` queries, each against its halo of
    keys (zero-padded outside the line, which adds nothing without a softmax), so the work is
    proportional to L x span.
    """
    L, M, d = q.shape
    if not blocked(span, L):
        logits = torch.bmm(q, relative_to_absolute(table, L).transpose(1, 2))  # (L_query, M, L_key)
        return torch.bmm(logits.transpose(0, 1), v)
    r = (table.shape[0] - 1) // 2
    t = span
    nb = -(-L // t)
    e = v.shape[-1]
    q = F.pad(q, (0, 0, 0, 0, 0, nb * t - L)).view(nb, t, M, d).transpose(0, 1).reshape(t, nb * M, d)
    logits = torch.bmm(q, band_tiles(table, t)).view(t, nb, M, t + 2 * r)  # (u, tile, line, halo)
    halo = F.pad(v, (0, 0, r, r + nb * t - L)).unfold(1, t + 2 * r, t)  # (M, tile, e, halo), a view
    out = torch.matmul(logits.permute(1, 2, 0, 3), halo.permute(1, 0, 3, 2))  # (tile, M, u, e)
    return out.permute(1, 0, 2, 3).reshape(M, nb * t, e)[:, :L]


def window_mask(length: int, span: int | None, size: int, device: torch.device) -> torch.Tensor | None:
    """Boolean ``(length, length)`` mask of (query, key) pairs outside the window; None when there are none."""
    r = window_radius(span, size)
    if r >= length - 1:
        return None
    pos = torch.arange(length, device=device)
    return (pos[None, :] - pos[:, None]).abs() > r


def check_fits(name: str, length: int, span: int | None, size: int) -> None:
    """Whole-axis tables are sized for ``size``; a longer axis would silently lose its far pixels."""
    if span is None and length > size:
        raise ValueError(
            f"{name}: input side {length} exceeds size={size} that the whole-axis relative tables were "
            f"built for; build the layer with size={length}, resize its tables to it (attnbench eval's "
            "interpolated tables), or give it a fixed span where it has one."
        )


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution, through :func:`project` (same result and MACs)."""
    B, C, H, W = x.shape
    return project(conv.weight.view(conv.out_channels, C), conv.bias, x.reshape(B, C, H * W)).view(B, -1, H, W)


# a float32 projection on a CPU runs as oneDNN's 1x1 convolution from this many input channels; below, in other
# dtypes and on GPUs, as a matrix product (measured: see project)
CONV_FROM_CHANNELS = 64


def convolves(x: torch.Tensor) -> bool:
    """Whether the 1x1 projection of ``x`` (channels in dim 1) is faster as a convolution than as a matrix product."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[1] >= CONV_FROM_CHANNELS


def project(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``weight`` (O, C) times each image's (C, N) matrix of ``x`` (B, C, N), plus ``bias`` (O) where given:
    the product of :func:`pointwise`, also for a weight arranged otherwise than its convolution's (rows
    reordered). Returns a contiguous (B, O, N).

    Two kernels, the same function (:func:`convolves` chooses). A batched matrix product, the weight expanded
    over the batch (a view; ``matmul`` of a matrix and a batch goes through transposed copies of the input and
    output, and its backward through more). And oneDNN's 1x1 convolution, which on a CPU in float32 from 64
    channels takes about half the time of every matrix-product form (batched, one product over the batch, per
    image, token-major ``linear``) at 2 threads. ms at 2 threads, in a process that keeps its freed memory (as
    a case's does), product / convolution, forward: 8x512x14x14 to 1536 (BoT50's last stage) 12.6 / 5.7,
    1x128x56x56 to 384 1.47 / 0.75, 8x128x56x56 to 384 12.5 / 7.4, 8x64x56x56 to 192 3.6 / 2.4; forward and
    backward: 8x128x56x56 to 384 38.9 / 25.6, 64x64x32x32 to 192 29.1 / 26.1. With fewer channels the
    convolution's reorders cost more than it saves (64x14x32x32 to 42, a probe's layer: forward 0.8 / 1.4,
    forward and backward 3.0 / 3.8; 32 channels about even), and in bfloat16 the product (AMX) wins
    (8x128x56x56 to 384: 3.3 / 4.4).
    """
    if convolves(x):
        return F.conv2d(x.unsqueeze(-1), weight[:, :, None, None], bias).squeeze(-1).contiguous()
    weight = weight.expand(x.shape[0], -1, -1)
    return torch.bmm(weight, x) if bias is None else torch.baddbmm(bias[:, None], weight, x)


def to_rows(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` of a 1x1 convolution as token-major rows (B, H W, O): pixel by pixel, channels contiguous.
    As a convolution in channels-last layout where :func:`convolves` says so, else as ``linear`` of x's rows."""
    if convolves(x):
        out = F.conv2d(x.contiguous(memory_format=torch.channels_last), conv.weight, conv.bias)
        return out.permute(0, 2, 3, 1).flatten(1, 2)
    return F.linear(x.flatten(2).transpose(1, 2), conv.weight.flatten(1), conv.bias)


def from_rows(conv: nn.Conv2d, rows: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``conv`` of the map whose token-major rows (B, H W, C) are ``rows``: (B, O, H, W) in channels-last layout."""
    B, _, C = rows.shape
    grid = rows.view(B, H, W, C).permute(0, 3, 1, 2)
    if convolves(grid):
        return F.conv2d(grid, conv.weight, conv.bias)
    return F.linear(rows, conv.weight.flatten(1), conv.bias).view(B, H, W, -1).permute(0, 3, 1, 2)


def batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, channel_dims: tuple[int, ...],
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """``bn`` applied to a tensor whose channels are spread over some dims, in any layout.

    Same statistics, running averages and gradients as ``bn`` on the (B, C, H, W) form of ``x``;
    the channel dims must be in channel order (outer first). With ``valid`` (a boolean tensor that
    broadcasts against ``x`` and is constant along the channel dims), training statistics are taken
    over the valid entries only, as if the others did not exist; they are normalised all the same.
    """
    shape = [x.shape[d] if d in channel_dims else 1 for d in range(x.dim())]
    if bn.training or not bn.track_running_stats:
        dims = [d for d in range(x.dim()) if d not in channel_dims]
        if valid is None:
            var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
            n = x.numel() // mean.numel()
        else:
            weight = valid.to(x.dtype).expand_as(x)
            n = weight.sum(dim=dims, keepdim=True)  # the same for every channel; a tensor, so no sync
            mean = (x * weight).sum(dim=dims, keepdim=True) / n
            var = ((x - mean).square() * weight).sum(dim=dims, keepdim=True) / n
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.lerp_(mean.flatten(), momentum)
                unbiased = n / (n - 1).clamp(min=1) if isinstance(n, torch.Tensor) else n / max(n - 1, 1)
                bn.running_var.lerp_((var * unbiased).flatten(), momentum)
    else:
        mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    scale = torch.rsqrt(var + bn.eps) * bn.weight.view(shape)
    return torch.addcmul(bn.bias.view(shape) - mean * scale, x, scale)


class BiasedWindowAttention(Variant):
    """The parameters Swin and NAT share: one q/k/v projection and an output projection, both with bias, and a
    relative position bias of (2 window - 1)^2 entries per head, initialised at std 0.02 as both papers' code."""

    def __init__(self, cfg: VariantConfig):
        super().__init__(cfg)
        self.heads = cfg.heads
        self.qkv = nn.Conv2d(cfg.dim, 3 * cfg.dim, 1)
        self.proj = nn.Conv2d(cfg.dim, cfg.dim, 1)
        self.rpb = nn.Parameter(torch.randn(cfg.heads, 2 * cfg.window - 1, 2 * cfg.window - 1) * 0.02)
