"""A minimal third-party variant: a sigmoid-gated 1x1 convolution (no spatial mixing at all).

Installed as a package, it declares in its ``pyproject.toml``::

    [project.entry-points."attnbench.variants"]
    gate = "attnbench_gate"

and ``attnbench list``, sweeps, reports and networks (``gate_resnet50``) pick it up. The tests put
this folder (with the ``.dist-info`` that installing would write) on the path instead.
"""

from dataclasses import dataclass

import torch
from torch import nn

from attnbench.registry import Variant, VariantConfig, register_impl, register_variant


@dataclass(frozen=True)
class GateConfig(VariantConfig):
    pass


@register_variant("gate", GateConfig, description="sigmoid-gated 1x1 convolution (a plugin example)",
                  paper="(an example plugin)", arxiv="none", reference="eager")
class Gate(Variant):
    def __init__(self, cfg: GateConfig):
        super().__init__(cfg)
        self.value = nn.Conv2d(cfg.dim, cfg.dim, 1, stride=cfg.stride)
        self.gate = nn.Conv2d(cfg.dim, cfg.dim, 1, stride=cfg.stride)

    def attention_maps(self, query, image=0):
        """``{"support": (1, H, W)}``: the gate reads the query pixel alone."""
        H, W = self.captured["size"]
        support = torch.zeros(1, H, W)
        support[0, query[0], query[1]] = 1.0
        return {"support": support}


@register_impl("gate", "eager", description="two 1x1 convolutions")
def eager(self: Gate, x: torch.Tensor) -> torch.Tensor:
    if self.captured is not None:
        self.captured["size"] = tuple(x.shape[-2:])
    return self.value(x) * torch.sigmoid(self.gate(x))
