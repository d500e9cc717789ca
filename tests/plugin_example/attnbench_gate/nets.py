"""The plugin's own network, registered through the ``attnbench.models`` entry-point group::

    [project.entry-points."attnbench.models"]
    gate_nets = "attnbench_gate.nets"
"""

from torch import nn

from attnbench.models import register_model
from attnbench.registry import build_variant


@register_model(variant="gate")
def gated_tiny(num_classes: int = 1000, width: float = 1.0, image_size: int = 32, impl: str = "auto") -> nn.Module:
    """A 3x3 stem and one gate layer (a plugin example)."""
    c = max(8, int(8 * width))
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), build_variant("gate", c, size=image_size, impl=impl),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
