"""Pieces shared by several variants: relative position tables and 1x1 projections."""

from __future__ import annotations

import torch
from torch import nn


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
            f"built for; build the layer with size={length} (or a fixed span)."
        )


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as one matrix product per image.

    Same result and MACs as ``conv(x)``; on CPUs the NCHW convolution kernel is several times
    slower than the matrix product for 1x1 kernels.
    """
    B, C, H, W = x.shape
    out = torch.matmul(conv.weight.view(conv.out_channels, C), x.reshape(B, C, H * W))
    if conv.bias is not None:
        out = out + conv.bias[:, None]
    return out.view(B, conv.out_channels, H, W)
