"""The ResNet family (bottleneck v1.5, as torchvision) with any registered variant in the spatial slot.

Papers: "Deep Residual Learning for Image Recognition" (arXiv 1512.03385) for the network;
SASA (arXiv 1906.05909) and GSA (arXiv 2010.03019) for replacing every bottleneck's 3x3
convolution by attention, with a 2x2 stride-2 average pool after the attention layer where a block
downsamples; Non-local Networks (arXiv 1711.07971) for inserting non-local blocks between
bottlenecks (default: 2 in res3 and 3 in res4, after every other block); Axial-DeepLab (arXiv
2003.07853, and its public ``axialnet.py``) for its own networks: bottleneck expansion 2, widths
0.5 x (128, 256, 512, 1024), a height and a width axial layer in place of the 3x3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from attnbench.models.registry import check_multiplier, register_family, register_model
from attnbench.registry import build_variant, get_variant_spec

DEPTHS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STEMS = ("conv", "cifar")


def ceil_half(n: int) -> int:
    """Side of a map after a stride-2 layer with "same" padding."""
    return -(-n // 2)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """1x1 down, the variant (with its stride), 1x1 up, residual."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, variant: str, size: int,
                 options: dict[str, Any]):
        super().__init__()
        self.conv1 = conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.spatial = build_variant(variant, width, size=size, stride=stride, **options)
        self.bn2 = nn.Identity() if get_variant_spec(variant).ends_with_norm else nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.spatial(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def default_nonlocal_blocks(blocks: Iterable[int]) -> list[tuple[int, int]]:
    """Wang et al.'s 5-block placement generalised: every other block (odd index) of res3 and res4."""
    blocks = list(blocks)
    return [(stage, i) for stage in (1, 2) for i in range(blocks[stage]) if i % 2 == 1]


class ResNet(nn.Module):
    """ResNet of ``depth`` whose spatial layers are ``variant`` (in ``stages``, default all; 3x3 convolutions
    elsewhere), or, for an ``insert`` variant, with its blocks inserted after the (stage, block) pairs of
    ``nonlocal_blocks``."""

    def __init__(
        self,
        variant: str,
        depth: int,
        *,
        num_classes: int = 1000,
        stem: str = "conv",
        width: float = 1.0,
        expansion: int = 4,
        stem_width: int = 64,
        image_size: int | None = None,
        nonlocal_blocks: Iterable[tuple[int, int]] | None = None,
        stages: Iterable[int] | None = None,
        **options: Any,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"Invalid depth={depth}: depth must be one of {', '.join(map(str, DEPTHS))}.")
        if stem not in STEMS:
            raise ValueError(f"Invalid stem={stem!r}: stem must be one of {', '.join(STEMS)}.")
        check_multiplier(width)
        spec = get_variant_spec(variant)
        inserted = spec.placement == "insert"
        spatial = "conv" if inserted else variant
        if nonlocal_blocks is not None and not inserted:
            raise ValueError(f"Invalid nonlocal_blocks for variant '{variant}': only inserted variants take it.")
        image_size = image_size or (32 if stem == "cifar" else 224)
        blocks = DEPTHS[depth]
        stages = set(range(len(blocks)) if stages is None else stages)
        if inserted and stages != set(range(len(blocks))):
            raise ValueError(f"Invalid stages for variant '{variant}': an inserted variant is placed by "
                             "nonlocal_blocks.")
        if not stages <= set(range(len(blocks))):
            raise ValueError(f"Invalid stages {sorted(stages)}: a ResNet has stages 0 to {len(blocks) - 1}.")
        places = set(map(tuple, nonlocal_blocks)) if nonlocal_blocks is not None else set(
            default_nonlocal_blocks(blocks)) if inserted else set()

        def scaled(c: int) -> int:
            return max(8, int(round(c * width / 8)) * 8)

        stem_c = scaled(stem_width)
        if stem == "conv":
            self.stem = nn.Sequential(nn.Conv2d(3, stem_c, 7, 2, 3, bias=False), nn.BatchNorm2d(stem_c),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            size = ceil_half(ceil_half(image_size))  # stride-2 conv, then stride-2 max-pool
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, stem_c, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_c),
                                      nn.ReLU(inplace=True))
            size = image_size
        layers: list[nn.Module] = []
        cin = stem_c
        for stage, count in enumerate(blocks):
            w = scaled(64 * 2**stage)
            cout = w * expansion
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                here = spatial if stage in stages else "conv"
                layers.append(Bottleneck(cin, w, cout, stride, here, size,
                                         spec.block_options(i, options) if here == variant else {}))
                cin = cout
                size = ceil_half(size) if stride == 2 else size
                if (stage, i) in places:
                    layers.append(build_variant(variant, cout, size=size, **options))
        bad = places - {(s, i) for s, n in enumerate(blocks) for i in range(n)}
        if bad:
            raise ValueError(f"Invalid nonlocal_blocks {sorted(bad)}: no such (stage, block) in blocks {blocks}.")
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) or m in (self.stem[0],):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, before pooling."""
        return self.layers(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _resnet_family(depth: int) -> None:
    @register_family(f"resnet{depth}", description=f"ResNet-{depth}", plain=f"resnet{depth}")
    def family(variant: str, num_classes: int = 1000, **options: Any) -> ResNet:
        return ResNet(variant, depth, num_classes=num_classes, **options)


for _depth in DEPTHS:
    _resnet_family(_depth)


def _axial_deeplab(name: str, depth: int) -> None:
    @register_model(name=name, variant="axial",
                    description=f"Axial-DeepLab's ImageNet {name[-3:].upper()} (bottleneck expansion 2, widths x 0.5)")
    def build(num_classes: int = 1000, **options: Any) -> ResNet:
        return ResNet("axial", depth, num_classes=num_classes, expansion=2, stem_width=32, **options)


_axial_deeplab("axial_deeplab_26s", 26)
_axial_deeplab("axial_deeplab_50s", 50)


@register_model(variant="mhsa")
def botnet50(num_classes: int = 1000, **options: Any) -> ResNet:
    """BoTNet's BoT50: ResNet-50 with MHSA in place of the last stage's 3x3 convolutions."""
    return ResNet("mhsa", 50, num_classes=num_classes, stages=(3,), **options)
