"""Parameter counts."""

from __future__ import annotations

from torch import nn


def count_params(module: nn.Module) -> dict[str, int]:
    """``{"params": total, "params_trainable": requires_grad only}``, counting shared tensors once."""
    unique = {id(p): p for p in module.parameters()}.values()
    return {
        "params": sum(p.numel() for p in unique),
        "params_trainable": sum(p.numel() for p in unique if p.requires_grad),
    }
