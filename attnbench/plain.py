"""Textbook implementations of the attention variants, with the weights of the fast modules.

They compute the same function as the registered variants the way a first implementation
usually does: ``local`` unfolds k^2 copies of keys and values, ``neighborhood`` gathers them,
``nonlocal`` forms the N x M attention matrix, ``gsa`` is written as plain einsums with a
relative-position reindexing tensor.
They are registered as each variant's ``plain`` implementation, so the registry's equality tests
cover them and a sweep can measure them (``--impl plain``). The efficiency benchmarks measure the
variants against them, and the MAC tests count them with a second counter: every multiply-add they
perform is one the mechanism needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.registry import register_impl

TEXTBOOK = "the textbook implementation"


def downsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The 2x2 average pool after an attention layer of stride 2, shared by the textbook implementations
    and the variants' own. An odd side rounds up (the last window averages the pixels it has), as the
    strided convolutions of the residual path do, so a network runs at any input side."""
    return F.avg_pool2d(x, 2, ceil_mode=True) if stride == 2 else x


@register_impl("local", "plain", description=f"{TEXTBOOK}: unfold k^2 copies of keys and values")
def plain_local(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SASA by ``unfold``: each pixel's k x k keys and values are copied out, k^2 copies in all."""
    B, C, H, W = x.shape
    h, k = m.cfg.heads, m.cfg.window
    dh = C // h
    q, keys, values = m.to_qkv(x).chunk(3, dim=1)
    keys = F.unfold(keys, k, padding=k // 2).view(B, h, dh, k * k, H * W)  # k^2 copies
    values = F.unfold(values, k, padding=k // 2).view(B, h, dh, k * k, H * W)
    inside = F.unfold(torch.ones(1, 1, H, W, device=x.device, dtype=x.dtype), k, padding=k // 2)  # (1, k^2, N)
    rel = torch.cat(
        [m.rel_row[:, :, None, :].expand(h, k, k, dh // 2), m.rel_col[:, None, :, :].expand(h, k, k, dh // 2)],
        dim=-1,
    ).reshape(h, k * k, dh)
    q = q.reshape(B, h, dh, H * W)
    logits = torch.einsum("bhdn,bhdkn->bhkn", q, keys) + torch.einsum("bhdn,hkd->bhkn", q, rel)
    logits = logits.masked_fill(inside[:, None] == 0, float("-inf"))
    attn = logits.softmax(dim=2)
    out = torch.einsum("bhkn,bhdkn->bhdn", attn, values).reshape(B, C, H, W)
    return downsample(out, m.cfg.stride)


@register_impl("neighborhood", "plain", description=f"{TEXTBOOK}: gather k^2 copies of keys and values")
def plain_neighborhood(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """NAT by gathering: each pixel's clamped k x k window of keys and values copied out, k^2 copies in all."""
    B, C, H, W = x.shape
    h, k = m.cfg.heads, m.cfg.window
    dh = C // h
    kh, kw = min(k, H), min(k, W)
    q, keys, values = (t.reshape(B, h, dh, H * W) for t in m.qkv(x).chunk(3, dim=1))
    rows = (torch.arange(H, device=x.device) - k // 2).clamp(0, H - kh)[:, None] + torch.arange(kh, device=x.device)
    cols = (torch.arange(W, device=x.device) - k // 2).clamp(0, W - kw)[:, None] + torch.arange(kw, device=x.device)
    window = (rows[:, None, :, None] * W + cols[None, :, None, :]).reshape(H * W, kh * kw)  # (N, k^2) key indices
    keys, values = keys[..., window], values[..., window]  # (B, h, dh, N, k^2): k^2 copies
    dy = rows - torch.arange(H, device=x.device)[:, None] + k - 1  # (H, kh)
    dx = cols - torch.arange(W, device=x.device)[:, None] + k - 1  # (W, kw)
    bias = m.rpb[:, dy[:, None, :, None], dx[None, :, None, :]].reshape(h, H * W, kh * kw)
    logits = torch.einsum("bhdn,bhdnk->bhnk", q * dh**-0.5, keys) + bias
    out = torch.einsum("bhnk,bhdnk->bhdn", logits.softmax(dim=-1), values).reshape(B, C, H, W)
    return downsample(m.proj(out), m.cfg.stride)


@register_impl("nonlocal", "plain", description=f"{TEXTBOOK}: the explicit N x M attention matrix")
def plain_nonlocal(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Non-local block with the explicit N x M attention matrix."""
    theta, phi, g = m.attention_inputs(x)
    return m.finish(x, m.attention_weights(theta, phi) @ g)  # the (B, 1, N, M) matrix, explicitly


def _reindex(length: int, entries: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One-hot (length, length, entries): query x, key i -> table row i - x + r, zero outside reach."""
    r = (entries - 1) // 2
    pos = torch.arange(length, device=device)
    rows = pos[None, :] - pos[:, None] + r
    return F.one_hot(rows.clamp(0, entries - 1), entries).to(dtype) * ((rows >= 0) & (rows < entries))[..., None]


@register_impl("gsa", "plain", description=f"{TEXTBOOK}: einsums over (batch, head), one-hot reindexing")
def plain_gsa(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GSA as plain einsums over (batch, head) with a one-hot reindexing of the relative tables."""
    B, C, H, W = x.shape
    h, dk = m.heads, m.dim_key
    q, k, v = m.to_qkv(x).split([dk, dk, C], dim=1)
    q = q.reshape(B * h, dk // h, H, W)
    k = k.reshape(B * h, dk // h, H * W)
    v = v.reshape(B * h, C // h, H, W)
    out = torch.zeros(B * h, C // h, H, W, device=x.device, dtype=x.dtype)
    if m.cfg.content:
        context = torch.einsum("ndm,nem->nde", k.softmax(dim=-1), v.reshape(B * h, C // h, H * W))
        out = out + torch.einsum("nde,ndxy->nexy", context, q)
    if m.cfg.positional:
        entries = m.rel_col.shape[0]
        keys_col = torch.einsum("xim,md->xid", _reindex(H, entries, x.device, x.dtype), m.rel_col)
        col = torch.einsum("nixy,neiy->nexy", torch.einsum("ndxy,xid->nixy", q, keys_col), v)
        col = m.norm(col.reshape(B, C, H, W)).reshape(B * h, C // h, H, W)
        keys_row = torch.einsum("yjm,md->yjd", _reindex(W, entries, x.device, x.dtype), m.rel_row)
        out = out + torch.einsum("njxy,nexj->nexy", torch.einsum("ndxy,yjd->njxy", q, keys_row), col)
    out = out.reshape(B, C, H, W)
    return downsample(out, m.cfg.stride)

