"""Looking inside: effective receptive fields (Luo et al., "Understanding the Effective Receptive
Field in Deep Convolutional Neural Networks", arXiv 1701.04128)."""

from __future__ import annotations

import torch
from torch import nn


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
    from attnbench.report import _new_figure

    fig, axes = _new_figure(len(maps), 3.2)
    for ax, (name, m) in zip(axes, maps.items()):
        image = ax.imshow(torch.log10(m.clamp_min(1e-6)).numpy(), cmap="magma", vmin=-6, vmax=0)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="log10 |gradient| (max = 0)")
    fig.suptitle(title, fontsize=10)
    return fig
