"""Probe networks: a stem, two blocks of one variant at full resolution, global pooling, a classifier.

Small enough to train on a CPU (16 channels; attention variants get the most heads of at least 8
channels each that the variant accepts at that width, unless told otherwise), and shallow enough that
whether a network relates distant pixels depends on the variant alone: with 3x3 convolutions the
receptive field before pooling is 7x7. A variant that is a residual block of its own (non-local,
inserted between blocks in its paper) is used as it is, not wrapped in a second norm and residual.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.registry import build_variant, get_variant_spec


def _heads(spec, width: int, options: dict) -> int:
    """The most heads of at least 8 channels each that ``spec``'s config accepts at ``width`` with the config's
    share of ``options`` (not ``impl``, which the module takes) (16 channels: 2 heads; 26 channels, where 3
    heads do not divide and 2 leave local's head width odd: 1)."""
    config_options = {k: v for k, v in options.items() if k in spec.options()}
    for heads in range(max(1, width // 8), 1, -1):
        try:
            spec.make_config(width, **{**config_options, "heads": heads})
            return heads
        except ValueError:
            continue
    return 1


class ProbeNet(nn.Module):
    def __init__(self, variant: str, *, num_classes: int = 10, width: int = 16, image_size: int = 32, **options):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        spec = get_variant_spec(variant)
        if "heads" in spec.options() and options.get("heads") is None:
            options["heads"] = _heads(spec, width, options)
        norm = spec.ends_with_norm
        self.residual = spec.placement != "insert"  # an inserted block (non-local) is already residual
        self.blocks = nn.ModuleList(build_variant(variant, width, size=image_size, **spec.block_options(i, options))
                                    for i in range(2))
        self.norms = nn.ModuleList(nn.Identity() if norm or not self.residual else nn.BatchNorm2d(width)
                                   for _ in range(2))
        self.fc = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before pooling: each block wrapped as relu(x + norm(block(x))), or applied as it
        is when it is a residual block of its own (placement "insert", as non-local)."""
        x = self.stem(x)
        for block, norm in zip(self.blocks, self.norms):
            x = torch.relu(x + norm(block(x))) if self.residual else block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))
