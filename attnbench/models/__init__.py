"""The networks, registered by name (:mod:`attnbench.models.registry`).

Families, one network per registered variant (a newly registered variant gets its networks with no
change here): ``<variant>_resnet{26,38,50,101}`` (``resnet50`` is the conv one, ``conv_resnet50`` an
alias) and ``<variant>_probe``, two blocks of a variant at full resolution
(:mod:`attnbench.models.probe`). Single networks: Axial-DeepLab's own ImageNet networks
``axial_deeplab_26s`` and ``axial_deeplab_50s``, and BoTNet's ``botnet50``. Networks from elsewhere:
``timm:NAME`` and ``package.module:callable``.
"""

from __future__ import annotations

from attnbench.models import probe, resnet  # noqa: F401  (each registers its networks on import)
from attnbench.models.registry import (
    ModelSpec,
    UnknownModelError,
    build_model,
    get_model_spec,
    list_archs,
    list_models,
    model_spec_for,
    register_family,
    register_model,
)

__all__ = ["ModelSpec", "UnknownModelError", "build_model", "get_model_spec", "list_archs", "list_models",
           "model_spec_for", "register_family", "register_model"]
