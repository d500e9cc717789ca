"""Probe networks: a stem, two blocks of one variant at full resolution, global pooling, a classifier.

Small enough to train on a CPU (16 channels, width x 16 at another width; attention variants get the most heads
of at least 8 channels each that the variant accepts at that width, unless told otherwise), and shallow enough
that whether a network relates distant pixels depends on the variant alone: with 3x3 convolutions the receptive
field before pooling is 7x7.

Every variant gets the same block: ``x <- relu(x + norm(branch(x)))``. The branch of a variant that
replaces a convolution (``placement`` "replace") is the layer itself; a variant that is a residual
block of its own (``insert``: non-local, efficient attention, inserted between blocks in their
papers) computes ``x + branch(x)``, so its branch is its output less its input, and it keeps its own
residual rather than gaining a second. ``norm`` is a batch norm unless the branch already ends with a
normalisation of its own (``ends_with_norm``: the convolution's batch norm, axial attention's output
norm, the non-local block's batch norm after W_z); efficient attention, whose paper has none, gets
the probe's. So every probe has one normalisation and one ReLU per block, and none has two.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnbench.models.registry import WidthError, check_multiplier, family_name, register_family
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
        self.inserted = spec.placement == "insert"  # a residual block of its own: x + branch(x)
        self.blocks = nn.ModuleList(build_variant(variant, width, size=image_size, **spec.block_options(i, options))
                                    for i in range(2))
        self.norms = nn.ModuleList(nn.Identity() if spec.ends_with_norm else nn.BatchNorm2d(width)
                                   for _ in range(2))
        self.fc = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before pooling: each block as relu(x + norm(branch(x))) (see the module's docstring)."""
        x = self.stem(x)
        for block, norm in zip(self.blocks, self.norms):
            branch = block(x) - x if self.inserted else block(x)
            x = torch.relu(x + norm(branch))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


CHANNELS = 16  # a probe's channels at width 1
LEAST_CHANNELS = 8  # and its fewest


def probe_channels(variant: str, width: float) -> int:
    """The channels of ``variant``'s probe at ``width``: exactly ``width`` x 16, so that the width a case or a run
    is labelled with is the network's. :class:`WidthError` for a width that would give fewer than 8 channels or a
    fraction of one (stored as that width, it would be measured as another), naming the nearest widths that give
    a whole number."""
    check_multiplier(width)
    channels = width * CHANNELS
    if channels >= LEAST_CHANNELS and float(channels).is_integer():
        return int(channels)
    nearest = dict.fromkeys(max(LEAST_CHANNELS, c) for c in (math.floor(channels), math.ceil(channels)))
    raise WidthError(f"{family_name(variant, 'probe')} at width {width:g} would have {channels:g} channels: probe "
                     f"widths are multiples of 1/{CHANNELS} (one channel), at least {LEAST_CHANNELS / CHANNELS:g} "
                     f"({LEAST_CHANNELS} channels); nearest: {', '.join(f'{c / CHANNELS:g}' for c in nearest)}.")


@register_family("probe", description="probe: a stem and two blocks at full resolution")
def probe(variant: str, num_classes: int = 1000, **options) -> ProbeNet:
    """``width`` multiplies the 16 channels (see :func:`probe_channels`); ``stem`` is ignored (a probe has its
    own)."""
    options.pop("stem", None)
    width = probe_channels(variant, options.pop("width", 1.0))
    return ProbeNet(variant, num_classes=num_classes, width=width, **options)
