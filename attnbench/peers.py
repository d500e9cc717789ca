"""Our mechanisms beside maintained libraries' implementations of the same functions, with our weights.

A *peer* of a variant is another library's module that computes exactly the variant's function once
our parameters are mapped onto it: the same outputs in float64, up to rounding. ``build_peer(name,
module, shape)`` returns it for one of our modules (any dtype and device; the peer takes the same
NCHW input and returns the same NCHW output). The peers:

* ``mhsa``: timm's ``BottleneckAttn`` with ``scale_pos_embed=True`` (BoTNet's layer: q scaled before
  both the content and the relative products). Same projection layout and the same relative index
  (row ``offset + size - 1`` embeds ``key - query``); timm's tables cover the map it is built for,
  ours ``size``, so the peer takes our central rows.
* ``window``: timm's Swin ``WindowAttention`` inside what a Swin block does around it (the roll, the
  partition into windows, the shift mask, the merge, the roll back), with the NCHW <-> NHWC permutes
  an NCHW network needs. timm's bias table is indexed by ``query - key``, ours by ``key - query``:
  the table is flipped. Sides must be multiples of the window: timm pads after the roll, Swin's code
  (and ours) before, so a shifted padded map differs at its border.
* ``nonlocal``: timm's ``NonLocalAttn`` without its 1/sqrt(C) scale and at our width, which is the
  embedded-Gaussian block without subsampling (``subsample=False``).
* ``neighborhood``: NATTEN's ``na2d`` between our projections, with our bias zeroed (NATTEN >= 0.20 has
  no relative position bias), so the peer computes our function only for a module whose bias is zero.
  Without its compiled library (a CPU, or a source install without CUDA) NATTEN runs its Flex Attention
  backend, eager (it compiles Flex on CUDA only), in float32, float16 or bfloat16: the pair is compared
  in float32 (``Peer.exact_dtype``).

The other variants have no peer computing their function: ``efficient`` and GSA's content branch are
linear (a softmax over positions of the keys, no query-key product), GSA's positional branch and
``axial`` have no softmax over a query's keys that a library implements with our relative terms,
``local`` (SASA) is a window centred on every pixel (timm's ``HaloAttn`` shares one halo per block of
queries), and ``conv`` is PyTorch's own convolution.

timm and NATTEN are optional: :func:`missing` says which one a peer needs and cannot import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Peer:
    variant: str
    library: str  # the module that must import
    description: str  # what the peer is, in a few words
    build: Callable[[nn.Module, tuple[int, ...]], nn.Module]
    exact_dtype: torch.dtype = torch.float64  # the most precise dtype the peer computes in: equality is checked in it


def _to(peer: nn.Module, like: nn.Module) -> nn.Module:
    p = next(like.parameters())
    return peer.to(p.device, p.dtype).train(like.training)


def _central(table: torch.Tensor, size: int, side: int) -> torch.Tensor:
    """The rows of a relative table built for ``size`` that cover the offsets of ``side``."""
    return table[size - side : size + side - 1]


def timm_mhsa(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    _, C, H, W = shape
    cfg = module.cfg
    if C % 8:
        raise ValueError(f"mhsa peer: {C} channels; timm's BottleneckAttn rounds its query width to a multiple of 8")
    from timm.layers.bottleneck_attn import BottleneckAttn

    peer = BottleneckAttn(C, feat_size=(H, W), stride=cfg.stride, num_heads=cfg.heads, scale_pos_embed=True)
    peer = _to(peer, module)
    with torch.no_grad():
        peer.qkv.weight.copy_(module.to_qkv.weight)
        peer.pos_embed.height_rel.copy_(_central(module.rel_height, cfg.size, H))
        peer.pos_embed.width_rel.copy_(_central(module.rel_width, cfg.size, W))
    return peer


class SwinWindow(nn.Module):
    """A Swin block's attention path on an NCHW map: permuted to NHWC, timm's roll, partition, window attention
    with the shift mask, merge and roll back, permuted back."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block._attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def timm_window(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    _, C, H, W = shape
    cfg = module.cfg
    m = cfg.window
    if H % m or W % m or min(H, W) <= m:
        raise ValueError(f"window peer: sides {H}x{W} must be multiples of the window {m} and larger than it "
                         "(timm pads after the shift, Swin's code and ours before)")
    if cfg.stride != 1:
        raise ValueError("window peer: stride 1 only (a Swin block does not pool)")
    from timm.models.swin_transformer import SwinTransformerBlock

    block = SwinTransformerBlock(C, (H, W), num_heads=cfg.heads, window_size=m, shift_size=m // 2 if cfg.shifted else 0)
    peer = _to(SwinWindow(block), module)
    attn = peer.block.attn
    with torch.no_grad():
        attn.qkv.weight.copy_(module.qkv.weight.flatten(1))
        attn.qkv.bias.copy_(module.qkv.bias)
        attn.proj.weight.copy_(module.proj.weight.flatten(1))
        attn.proj.bias.copy_(module.proj.bias)
        attn.relative_position_bias_table.copy_(module.rpb.flip(1, 2).flatten(1).t())  # query - key
    return peer


def timm_nonlocal(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    cfg = module.cfg
    if cfg.subsample or cfg.stride != 1:
        raise ValueError("nonlocal peer: subsample=False and stride 1 only (timm's block neither pools nor subsamples)")
    from timm.layers.non_local_attn import NonLocalAttn

    inner = cfg.dim // cfg.reduction
    peer = _to(NonLocalAttn(cfg.dim, use_scale=False, rd_channels=inner), module)
    with torch.no_grad():
        for theirs, ours in ((peer.t, module.theta), (peer.p, module.phi), (peer.g, module.g), (peer.z, module.w_z)):
            theirs.load_state_dict(ours.state_dict())
        peer.norm.load_state_dict(module.bn.state_dict())
    return peer


class NattenNeighborhood(nn.Module):
    """NATTEN's ``na2d`` between the projections of one of our neighbourhood layers (whose bias must be zero)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import natten

        B, C, H, W = x.shape
        q, k, v = self.module.split(x)  # (B, h, d, H, W), q scaled
        layout = [t.permute(0, 3, 4, 1, 2) for t in (q, k, v)]  # NATTEN's (B, H, W, heads, d)
        out = natten.na2d(*layout, kernel_size=self.module.cfg.window, scale=1.0)
        return self.module.finish(out.permute(0, 3, 4, 1, 2).reshape(B, C, H, W))


def natten_neighborhood(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    if module.rpb.detach().abs().max() != 0:
        raise ValueError("neighborhood peer: NATTEN has no relative position bias; zero the module's rpb first")
    return NattenNeighborhood(module)


PEERS = {
    "mhsa": Peer("mhsa", "timm", "timm BottleneckAttn (scale_pos_embed)", timm_mhsa),
    "window": Peer("window", "timm", "timm Swin WindowAttention + block's roll/partition", timm_window),
    "nonlocal": Peer("nonlocal", "timm", "timm NonLocalAttn (use_scale=False)", timm_nonlocal),
    "neighborhood": Peer("neighborhood", "natten", "NATTEN na2d (no bias; compared in fp32)", natten_neighborhood,
                         exact_dtype=torch.float32),
}


def library_missing(library: str) -> str | None:
    """Why ``library`` (timm, natten) does not import here, as its error's type and first line, or None."""
    try:
        importlib.import_module(library)
    except Exception as err:  # noqa: BLE001 - an import can fail in many ways (a torch mismatch among them)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def missing(name: str) -> str | None:
    """Why the peer of variant ``name`` cannot be built here (its library does not import), or None."""
    library = PEERS[name].library
    cause = library_missing(library)
    return None if cause is None else f"{library} does not import ({cause})"


def build_peer(name: str, module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """The peer of variant ``name`` with ``module``'s weights, for inputs of ``shape`` (B, C, H, W)."""
    if name not in PEERS:
        raise KeyError(f"No peer for variant '{name}'. Peers: {', '.join(PEERS)}.")
    return PEERS[name].build(module, shape)


EQUAL_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}  # max abs difference over the output's largest magnitude


def same_function(name: str, options: dict, shape: tuple[int, ...], seed: int = 0) -> tuple[float, bool]:
    """Max abs difference of ours and the peer on one random input of ``shape``, in the peer's exact dtype, and
    whether that is equality up to that dtype's rounding (:data:`EQUAL_TOLERANCE`, relative to the output's
    largest magnitude)."""
    dtype = PEERS[name].exact_dtype
    ours, peer = build_pair(name, options, shape, dtype=dtype, seed=seed)
    x = torch.randn(*shape, dtype=dtype)
    with torch.no_grad():
        want, got = peer(x), ours(x)
    diff = (got - want).abs().max().item()
    return diff, diff <= EQUAL_TOLERANCE[dtype] * max(1.0, want.abs().max().item())


def build_pair(name: str, options: dict, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Ours (``impl="auto"``, in eval mode, its batch norms given non-trivial statistics so that a mismatch in them
    shows; a neighbourhood layer's bias zeroed, as NATTEN has none) and its peer, for inputs of ``shape``."""
    from attnbench.registry import build_variant

    torch.manual_seed(seed)
    ours = build_variant(name, shape[1], size=max(shape[2:]), **options)
    with torch.no_grad():
        if name == "neighborhood":
            ours.rpb.zero_()
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    ours = ours.to(device, dtype).eval()
    return ours, build_peer(name, ours, shape).eval()
