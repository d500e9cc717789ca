"""Networks built from the variant registry: the ResNet family with any variant in the spatial slot.

Names: ``resnet{26,38,50,101}`` (3x3 convolutions), ``<variant>_resnet{26,38,50,101}`` for every
registered variant (``conv_resnet50`` is ``resnet50``), Axial-DeepLab's own ImageNet networks
``axial_deeplab_26s`` and ``axial_deeplab_50s``, and ``<variant>_probe``, two blocks of a variant at
full resolution (:mod:`attnbench.models.probe`). A newly registered variant gets its networks with
no change here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from attnbench.models.probe import ProbeNet
from attnbench.models.resnet import DEPTHS, ResNet
from attnbench.registry import list_variants, unknown_name_message

AXIAL_DEEPLAB = {"axial_deeplab_26s": 26, "axial_deeplab_50s": 50}  # Axial-DeepLab, multiplier s = 0.5
BOTNET = {"botnet50": 50}  # BoTNet's BoT50: ResNet-50 with MHSA in place of the last stage's 3x3 convolutions


def list_models() -> list[str]:
    """Every network name, plain ResNets first."""
    plain = [f"resnet{d}" for d in DEPTHS]
    return (plain + [f"{v}_resnet{d}" for v in list_variants() for d in DEPTHS] + list(AXIAL_DEEPLAB) + list(BOTNET)
            + [f"{v}_probe" for v in list_variants()])


def parse_model_name(name: str) -> tuple[str, int]:
    """``(variant, depth)`` of a ResNet-family name; ``KeyError`` listing the names otherwise."""
    variant, _, arch = name.rpartition("_") if "_resnet" in name else ("conv", "", name)
    if arch.startswith("resnet") and arch[6:].isdigit() and int(arch[6:]) in DEPTHS and (
        variant in list_variants()
    ):
        return variant, int(arch[6:])
    raise KeyError(unknown_name_message("model", name, list_models()))


def model_variant(name: str) -> str:
    """The variant network ``name`` is built of (the one its options go to): ``gsa`` for ``gsa_resnet50`` and
    ``gsa_probe``, ``conv`` for ``resnet50``, ``axial`` for ``axial_deeplab_26s``, ``mhsa`` for ``botnet50``."""
    if name in BOTNET:
        return "mhsa"
    if name in AXIAL_DEEPLAB:
        return "axial"
    if name.endswith("_probe") and name[: -len("_probe")] in list_variants():
        return name[: -len("_probe")]
    return parse_model_name(name)[0]


def build_model(name: str, num_classes: int = 1000, **options: Any) -> nn.Module:
    """Build network ``name``.

    Options: ``stem`` ("conv": 7x7 + max-pool, or "cifar": 3x3, no pool), ``width`` (channel
    multiplier), ``image_size`` (side of the input images; sizes whole-axis relative tables,
    default 224, or 32 with the CIFAR stem), ``nonlocal_blocks`` (for ``nonlocal_*``: (stage,
    block) pairs after which a block is inserted), ``stages`` (the stages whose 3x3 convolutions the
    variant replaces; default all), and any option of the variant (``heads``, ...).
    """
    if not isinstance(name, str):
        raise KeyError(f"A model name is a string, not {name!r}; see attnbench.list_models().")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Invalid num_classes={num_classes!r}: num_classes must be a positive integer.")
    if name.endswith("_probe") and name[: -len("_probe")] in list_variants():
        options.pop("stem", None)
        width = options.pop("width", 1.0)  # a multiplier here as for ResNets, which check theirs
        if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
            raise ValueError(f"Invalid width={width!r}: width must be a positive multiplier.")
        return ProbeNet(name[: -len("_probe")], num_classes=num_classes, width=max(8, int(16 * width)), **options)
    if name in BOTNET:
        return ResNet("mhsa", BOTNET[name], num_classes=num_classes, stages=(3,), **options)
    if name in AXIAL_DEEPLAB:
        return ResNet("axial", AXIAL_DEEPLAB[name], num_classes=num_classes, expansion=2, stem_width=32,
                      **options)
    variant, depth = parse_model_name(name)
    return ResNet(variant, depth, num_classes=num_classes, **options)


def model_for_variant(variant: str, arch: str, **options: Any) -> nn.Module:
    """The network a variant stands for at model scope: ``arch`` ``resnet50`` with ``gsa`` is ``gsa_resnet50``."""
    name = arch if arch in AXIAL_DEEPLAB else f"{variant}_{arch}"
    return build_model(name, **options)


__all__ = ["build_model", "list_models", "model_for_variant", "model_variant", "parse_model_name"]
