"""attnbench: faithful attention variants for vision, and one harness to measure what each costs."""

from attnbench import variants as _variants  # noqa: F401  (registers the variants)
from attnbench.api import load_results, run
from attnbench.inspection import attention_maps, effective_receptive_field
from attnbench.measure.macs import count_macs
from attnbench.models import build_model, list_models
from attnbench.registry import (
    build_variant,
    get_impl,
    get_variant_spec,
    list_impls,
    list_variants,
    resolve_impl,
    set_impl,
)
from attnbench.report import report

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "attention_maps",
    "effective_receptive_field",
    "build_model",
    "build_variant",
    "count_macs",
    "get_impl",
    "get_variant_spec",
    "list_impls",
    "list_models",
    "list_variants",
    "load_results",
    "report",
    "resolve_impl",
    "run",
    "set_impl",
]
