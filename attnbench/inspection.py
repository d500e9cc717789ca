"""Looking inside: effective receptive fields (Luo et al., "Understanding the Effective Receptive
Field in Deep Convolutional Neural Networks", arXiv 1701.04128)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.choices import count
from attnbench.registry import Variant


def effective_receptive_field(module: nn.Module, input_shape: tuple[int, int, int], *, samples: int = 16,
                              seed: int = 0) -> torch.Tensor:
    """How strongly each input pixel moves the central output: |d out[center] / d x|, averaged.

    Args:
        module: a variant, or a network with a ``features`` method (its last feature map is used).
        input_shape: ``(C, H, W)`` of one input.
        samples: random inputs averaged over (the module keeps its weights).

    Returns:
        ``(H, W)``, normalised to a maximum of 1.
    """
    g = torch.Generator().manual_seed(seed)
    forward = getattr(module, "features", module)
    was_training = module.training
    module.eval()
    total = torch.zeros(input_shape[1:])
    try:
        for _ in range(samples):
            x = torch.randn(1, *input_shape, generator=g).requires_grad_(True)
            out = forward(x)
            h, w = out.shape[-2:]
            out[0, :, h // 2, w // 2].sum().backward()
            total += x.grad[0].abs().sum(dim=0)
    finally:
        module.train(was_training)
    return total / total.max().clamp_min(1e-30)


def erf_figure(maps: dict[str, torch.Tensor], title: str = "Effective receptive field"):
    """One panel per map, shared colour scale (log10 of the normalised gradient)."""
    from attnbench.plots import new_figure

    fig, axes = new_figure(len(maps), 3.2, layout="constrained")
    for ax, (name, m) in zip(axes, maps.items()):
        image = ax.imshow(torch.log10(m.clamp_min(1e-6)).numpy(), cmap="magma", vmin=-6, vmax=0)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="log10 |gradient| (max = 0)")
    fig.suptitle(title, fontsize=10)
    return fig


def maps_figure(panels: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]], title: str, *,
                ncols: int = 3, decades: float = 3.0):
    """Attention maps over their images, every panel on one colour scale with one colour bar.

    ``panels``: title -> (grey image ``(H, W)``, map ``(H, W)``, query ``(y, x)``). The scale is
    logarithmic in the weight's magnitude, over ``decades`` below the largest weight of any panel, so
    that a 7 x 7 window and a map spread over every pixel read on the same scale; weights under the
    scale (zero ones among them: outside a window) leave the image bare. Signed maps (GSA's) show |weight|.
    """
    import numpy as np
    from matplotlib.colors import LogNorm

    from attnbench.plots import new_figure

    top = max(float(m.abs().max()) for _, m, _ in panels.values()) or 1.0
    norm = LogNorm(vmin=top * 10**-decades, vmax=top)
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(ncols, 3.0, layout="constrained", nrows=nrows, height=3.0)
    for ax, (name, (grey, m, (y, x))) in zip(axes, panels.items()):
        ax.imshow(grey.numpy(), cmap="gray")
        magnitude = m.abs().numpy()
        shown = ax.imshow(np.ma.masked_where(magnitude < norm.vmin, magnitude), cmap="magma", norm=norm, alpha=0.8)
        ax.plot(x, y, "c+", ms=12, mew=2)
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes, shrink=0.6, label="|weight| (log scale, shared)")
    fig.suptitle(title, fontsize=10)
    return fig


def attention_maps(model: nn.Module, image: torch.Tensor, query: tuple[int, int], *,
                   in_image: bool = True) -> dict[str, torch.Tensor]:
    """For every attention layer of ``model``, the weights with which the pixel under ``query`` gathers.

    Args:
        model: a variant or a network built from variants.
        image: one input, ``(C, H, W)`` or ``(1, C, H, W)``.
        query: ``(y, x)`` in the image's pixels; a layer working at a lower resolution is asked for
            the pixel at the same relative position.

        in_image: lay every map out on the image's pixels (a layer pixel's weight spread evenly over
            the image pixels it covers, so sums are kept); otherwise in the layer's input coordinates.

    Returns:
        ``{"<layer>.<kind>": (heads, H, W)}`` (or ``(heads, h, w)`` per layer): ``kind`` is
        ``attention`` (local, non-local, axial), ``content`` and ``positional`` (GSA) or ``support``
        (convolution); each variant's ``attention_maps`` says what its map means. The maps come from
        the layers' own forward pass (captured), not from a second implementation. A variant may leave
        ``attention_maps`` undefined (a plugin's): its layers are left out, in one warning.
    """
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or image.dim() == 4 and len(image) != 1:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"attention_maps takes one input, (C, H, W) or (1, C, H, W); got {got}.")
    image = image[0] if image.dim() == 4 else image
    H, W = image.shape[-2:]
    if not (0 <= query[0] < H and 0 <= query[1] < W):
        raise ValueError(f"query {tuple(query)} is outside the {H} x {W} input.")
    layers = {name: m for name, m in model.named_modules() if callable(getattr(m, "attention_maps", None))}
    mapless = {name: m.variant_name for name, m in layers.items() if isinstance(m, Variant) and not m.draws_maps()}
    if mapless:
        names = ", ".join(sorted(set(mapless.values())))
        warnings.warn(f"attention_maps: {count(len(mapless), 'layer')} of {names} left out: no attention_maps defined",
                      stacklevel=2)
        layers = {name: m for name, m in layers.items() if name not in mapless}
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, args[0].shape[-2:]))
             for name, m in layers.items()]
    was_training = model.training
    model.eval()
    for m in layers.values():
        m.capture(True)
    try:
        with torch.no_grad():
            model(image[None])
        maps = {}
        for name, m in layers.items():
            h, w = sizes[name]
            local_query = (query[0] * h // H, query[1] * w // W)
            for kind, value in m.attention_maps(local_query).items():
                if in_image and (h, w) != (H, W):
                    value = F.interpolate(value[None], size=(H, W), mode="nearest")[0] * (h * w) / (H * W)
                maps[f"{name}.{kind}" if name else kind] = value
        return maps
    finally:
        for h in hooks:
            h.remove()
        for m in layers.values():
            m.capture(False)
        model.train(was_training)
