"""Shifted-window attention (Swin).

Paper: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", Liu, Lin, Cao, Hu,
Wei, Zhang, Lin, Guo, arXiv 2103.14030 (Section 3.2, Equation 4, Figure 4).

Mechanism: the map is cut into non-overlapping ``window`` x ``window`` windows (7) and every pixel
attends to the pixels of its window: per head, softmax(q . k / sqrt(d_head) + B) v, with B a learned
relative position bias of (2M - 1)^2 entries per head; q, k, v from one linear projection with bias,
and a linear output projection with bias. Alternate blocks shift the windows by M // 2 (the network
builds its blocks unshifted, shifted, unshifted, ... within each stage): the map is rolled by
-M // 2, so windows straddle the previous partition, and pairs that the roll brought together from
far edges get -100 added to their logit, as Swin's mask does; the result is rolled back. A side that
is not a multiple of M is zero-padded at the bottom and right before the projection, and the padded
pixels take part as keys (their keys and values are the projection's bias), as in Swin's code. When
the smaller side is at most M, the window is that side and nothing is shifted, as in Swin.

Implementations (one parameter set, the same function):
* ``windows`` (reference; CPUs): the windows as one batch of M^2 x M^2 matrix products, the bias
  and the shift mask broadcast over the batch.
* ``sdpa`` (GPUs): ``scaled_dot_product_attention`` per window, the bias and shift mask as its
  additive mask (laid out per image and window, as fused kernels take it).
* ``tokens`` (CPUs): the projection's token-major rows (pixel by pixel, channels contiguous: a
  channels-last 1x1 convolution, or ``linear`` where a matrix product is faster, see
  ``_common.convolves``) gathered once, by one index that folds the padding's crop, the roll and the
  partition in, so the fused attention kernel reads q, k and v in place; the outputs are gathered back
  to pixel order by the inverse index and projected in the same layout, so the result is a
  channels-last map. Where the reference moves the map through two rolls and two window permutes in
  NCHW order (runs of a few pixels), each gather here moves whole rows of channels. In training (the
  bias learning) the attention is explicit products, as the fused kernel gives its mask no gradient.

Every implementation keeps, per map side, the token order, the shift mask and the bias table's index
of each pair (``layout``), as Swin keeps its mask and index in buffers; only the bias is gathered from
the table at each call.

Deviations: the bias table is built for ``window``; a smaller window (small maps) uses its central
offsets where Swin would build a smaller table.

At a side other than the network's own: the window stays M, so a larger map holds more windows, each
a smaller part of the image, and a map at most M on its shorter side is one window of that side (the
central offsets of the bias, as above). With the tables interpolated, the window scales with the
side (M x side / trained side, rounded: ``options_at``) and the bias table is resized bicubically to
(2M' - 1)^2 entries (``bias_tables``), as Swin fine-tunes at 384 a network trained at 224 (window 7
to 12, its load_pretrained interpolating the table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor

from attnbench.registry import VariantConfig, register_impl, register_variant
from attnbench.variants._common import BiasedWindowAttention, downsample, from_rows, pointwise, to_rows

MASKED = -100.0  # what Swin adds to the logits of pairs the shift brought together
LAYOUTS_KEPT = 16  # map sides whose layout a layer keeps (a network meets one or two; evaluation a few more)


class Layout(NamedTuple):
    """What a layer's windows on one map depend on besides the weights (sizes only)."""

    source: torch.Tensor  # the pixel of the padded, rolled map each token holds (window_order)
    target: torch.Tensor  # the token that holds each pixel of the map (window_order)
    mask: torch.Tensor | None  # (windows, m^2, m^2) shift mask, or None without a shift (shift_mask)
    entry: torch.Tensor  # (m^2, m^2) entry of the flattened bias table for each pair of a window's pixels


@dataclass(frozen=True)
class WindowConfig(VariantConfig):
    heads: int = 8  # attention heads
    window: int = 7  # window side M (pixels)
    shifted: bool = False  # windows shifted by window // 2 (the network sets it on alternate blocks)

    _positive: ClassVar[tuple[str, ...]] = (*VariantConfig._positive, "window")

    def validate(self) -> None:
        super().validate()
        self.check_heads()


def geometry(H: int, W: int, window: int, shifted: bool) -> tuple[int, int, int, int]:
    """(window side, shift, padded height, padded width) for an H x W map."""
    m = min(window, H, W)
    shift = m // 2 if shifted and min(H, W) > window else 0
    return m, shift, -(-H // m) * m, -(-W // m) * m


def window_order(H: int, W: int, m: int, shift: int, Hp: int, Wp: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows' tokens, window by window and row by row within each (the order of the reference's
    partition): the pixel of the padded Hp x Wp map each one holds, rolled by -shift; and, for each pixel of
    the H x W map, the token that holds it."""
    nh, nw = Hp // m, Wp // m
    rows = torch.arange(Hp, device=device).view(nh, 1, m, 1)
    cols = torch.arange(Wp, device=device).view(1, nw, 1, m)
    source = ((rows + shift) % Hp) * Wp + (cols + shift) % Wp  # (window row, window column, y, x)
    y = (torch.arange(H, device=device) - shift) % Hp  # where the roll took each pixel
    x = (torch.arange(W, device=device) - shift) % Wp
    target = ((y // m)[:, None] * nw + x // m) * m * m + (y % m)[:, None] * m + x % m
    return source.flatten(), target.flatten()


def shift_mask(Hp: int, Wp: int, m: int, shift: int, device: torch.device) -> torch.Tensor | None:
    """(windows, m^2, m^2): MASKED where two pixels of a shifted window came from different regions of the
    rolled map (Swin's mask: the last ``m`` rows and columns split at ``shift``), 0 elsewhere; None without a
    shift."""
    if not shift:
        return None

    def strips(length: int) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        return (pos >= length - m).long() + (pos >= length - shift).long()  # 0, 1, 2 along the axis

    region = strips(Hp)[:, None] * 3 + strips(Wp)[None, :]
    ids = region.view(Hp // m, m, Wp // m, m).transpose(1, 2).reshape(-1, m * m)
    return (ids[:, None, :] != ids[:, :, None]).float() * MASKED


@register_variant(
    "window",
    WindowConfig,
    description="Swin's window attention: M x M windows, relative position bias, shifted on alternate blocks",
    paper="Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
    arxiv="2103.14030",
    reference="windows",
    preference={"cpu": ("tokens",), "cuda": ("sdpa",)},
    alternate=({"shifted": False}, {"shifted": True}),
)
class WindowAttention(BiasedWindowAttention):
    """Swin layer: multi-head attention within (shifted) ``window`` x ``window`` windows."""

    bias_tables = ("rpb",)

    def __init__(self, cfg: WindowConfig):
        super().__init__(cfg)
        self._layouts: dict[tuple, Layout] = {}  # per (height, width, device): see layout

    @classmethod
    def options_at(cls, options: dict, ratio: float) -> dict:
        """The window scaled with the side, to the nearest pixel (Swin: 7 at 224, 12 at 384)."""
        window = options.get("window") or WindowConfig.window
        scaled = max(1, math.floor(window * ratio + 0.5))
        return options if scaled == window else {**options, "window": scaled}

    def macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of the mechanism: the projections, then q . k and the weighted sum over the m^2 pixels of each
        query's window, for every pixel of the padded map (padded pixels are queries too, as in Swin)."""
        B, C, H, W = input_shape
        m, _, Hp, Wp = geometry(H, W, self.cfg.window, self.cfg.shifted)
        return B * (3 * Hp * Wp * C * C + H * W * C * C + 2 * Hp * Wp * m * m * C)

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """``{"attention": (heads, H, W)}``: the weights with which pixel ``query`` = (y, x) gathered within its
        window (shifted windows: laid back where the pixels were before the roll)."""
        attn, (H, W, m, shift, Hp, Wp) = self.captured["attn"], self.captured["geometry"]
        y, x = (query[0] - shift) % Hp, (query[1] - shift) % Wp  # where the roll moved it
        nwx = Wp // m
        win = image * (Hp // m) * nwx + (y // m) * nwx + x // m
        canvas = attn.new_zeros(attn.shape[1], Hp, Wp)
        top, left = y // m * m, x // m * m
        canvas[:, top : top + m, left : left + m] = attn[win, :, (y % m) * m + x % m].view(-1, m, m)
        return {"attention": canvas.roll((shift, shift), dims=(1, 2))[:, :H, :W]}

    def layout(self, x: torch.Tensor) -> Layout:
        """What the windows of ``x``'s map depend on besides the weights. Sizes alone decide it, so it is built
        once per map side and device and kept, as Swin keeps its shift mask and bias index in buffers; except on
        fake tensors (memory prediction: a kept fake tensor would serve the real calls after it) and while a
        graph is compiled (the graph holds its own)."""
        H, W = x.shape[2:]
        if torch.compiler.is_compiling() or self.fake_inputs or isinstance(x, FakeTensor):
            return self._build_layout(H, W, x.device)
        key = (H, W, x.device)
        if key not in self._layouts:
            if len(self._layouts) >= LAYOUTS_KEPT:
                self._layouts.clear()
            self._layouts[key] = self._build_layout(H, W, x.device)
        return self._layouts[key]

    def _build_layout(self, H: int, W: int, device: torch.device) -> Layout:
        m, shift, Hp, Wp = geometry(H, W, self.cfg.window, self.cfg.shifted)
        pos = torch.arange(m, device=device)
        dy = pos[None, :] - pos[:, None] + self.cfg.window - 1  # (query row, key row): the table's row
        entry = dy[:, None, :, None] * (2 * self.cfg.window - 1) + dy[None, :, None, :]  # (y, x, key y, key x)
        return Layout(*window_order(H, W, m, shift, Hp, Wp, device), shift_mask(Hp, Wp, m, shift, device),
                      entry.reshape(m * m, m * m))

    def bias(self, layout: Layout) -> torch.Tensor:
        """(heads, m^2, m^2): the relative position bias of every pair of a window's pixels."""
        return self.rpb.flatten(1)[:, layout.entry]

    def partition(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """q (scaled), k, v per window: (B, windows, heads, m^2, d), and the geometry."""
        B, C, H, W = x.shape
        m, shift, Hp, Wp = geometry(H, W, self.cfg.window, self.cfg.shifted)
        h = self.heads
        qkv = pointwise(self.qkv, F.pad(x, (0, Wp - W, 0, Hp - H)))
        if shift:
            qkv = qkv.roll((-shift, -shift), dims=(2, 3))
        qkv = qkv.view(B, 3, h, C // h, Hp // m, m, Wp // m, m).permute(1, 0, 4, 6, 2, 5, 7, 3)
        q, k, v = qkv.reshape(3, B, -1, h, m * m, C // h).unbind(0)
        return q * (C // h) ** -0.5, k, v, (H, W, m, shift, Hp, Wp)

    def additive(self, layout: Layout) -> torch.Tensor:
        """(windows or 1, heads, m^2, m^2): the bias, plus the shift mask where there is one."""
        bias = self.bias(layout)[None]
        return bias if layout.mask is None else bias + layout.mask.to(bias.dtype)[:, None]

    def merge(self, out: torch.Tensor, shape: tuple[int, ...], B: int) -> torch.Tensor:
        """Windows back into the map: rolled back, cropped, projected, then the optional pool."""
        H, W, m, shift, Hp, Wp = shape
        C = self.cfg.dim
        out = out.view(B, Hp // m, Wp // m, self.heads, m, m, C // self.heads).permute(0, 3, 6, 1, 4, 2, 5)
        out = out.reshape(B, C, Hp, Wp)
        if shift:
            out = out.roll((shift, shift), dims=(2, 3))
        return downsample(pointwise(self.proj, out[:, :, :H, :W]), self.cfg.stride)

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, shape = self.partition(x)
        attn = (q @ k.transpose(-1, -2) + self.additive(self.layout(x))).softmax(dim=-1)
        if self.captured is not None:
            self.captured.update(attn=attn.detach().flatten(0, 1), geometry=shape)
        return self.merge(attn @ v, shape, x.shape[0])


register_impl("window", "windows", description="every window as one batch of dense products")(WindowAttention.windows)


@register_impl("window", "sdpa", description="scaled_dot_product_attention per window, bias and shift mask as its mask")
def sdpa(self: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    q, k, v, shape = self.partition(x)
    B, windows = q.shape[:2]
    mask = self.additive(self.layout(x)).to(q.dtype).expand(B, windows, -1, -1, -1).flatten(0, 1)  # fused: 4D
    out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=mask, scale=1.0)
    return self.merge(out, shape, B)


def gather_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[:, index]`` for rows (B, N, C): one ``index_select`` over the B N rows, which copies whole rows
    (2.5-3x faster than the indexing, 8 x 3136 x 384 floats at 2 threads: 1.64 ms against 4.84)."""
    B, N, C = rows.shape
    flat = (index[None] + N * torch.arange(B, device=index.device)[:, None]).flatten()
    return rows.reshape(B * N, C).index_select(0, flat).view(B, -1, C)


@register_impl("window", "tokens",
               description="token-major rows gathered by one index (roll and partition folded in), fused attention")
def tokens(self: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    m, shift, Hp, Wp = geometry(H, W, self.cfg.window, self.cfg.shifted)
    h, dh, windows = self.heads, C // self.heads, (Hp // m) * (Wp // m)
    layout = self.layout(x)
    if (Hp, Wp) != (H, W):
        x = F.pad(x, (0, Wp - W, 0, Hp - H))
    qkv = gather_rows(to_rows(self.qkv, x), layout.source)  # (B, windows m^2, 3C)
    q, k, v = qkv.view(B * windows, m * m, 3, h, dh).permute(2, 0, 3, 1, 4).unbind(0)  # (B windows, h, m^2, d)
    mask = self.additive(layout).to(q.dtype)
    if mask.requires_grad:  # the bias learns: the fused kernel gives its mask no gradient (its fallback would
        # compute this, checking every row for -inf besides), so the products, the mask broadcast over the images
        logits = ((q * dh**-0.5) @ k.transpose(-1, -2)).view(B, windows, h, m * m, m * m) + mask
        out = logits.softmax(dim=-1).view(B * windows, h, m * m, m * m) @ v
    else:
        if shift:  # one mask per window: the kernel takes it per image and window
            mask = mask.expand(B, -1, -1, -1, -1).flatten(0, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=dh**-0.5)  # memory: (B windows, m^2, h, d)
    out = gather_rows(out.transpose(1, 2).reshape(B, windows * m * m, C), layout.target)  # (B, H W, C)
    return downsample(from_rows(self.proj, out, H, W), self.cfg.stride)
