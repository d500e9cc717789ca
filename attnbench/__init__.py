"""attnbench: faithful attention variants for vision, and one harness to measure what each costs.

The public names below load on first use (PEP 562), so that ``attnbench --help`` and other light
uses do not pay for torch; the variants register themselves when the registry is first asked.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "attention_maps": "attnbench.inspection",
    "effective_receptive_field": "attnbench.inspection",
    "build_model": "attnbench.models",
    "list_models": "attnbench.models",
    "register_model": "attnbench.models",
    "build_variant": "attnbench.registry",
    "get_impl": "attnbench.registry",
    "get_variant_spec": "attnbench.registry",
    "list_impls": "attnbench.registry",
    "list_variants": "attnbench.registry",
    "resolve_impl": "attnbench.registry",
    "set_impl": "attnbench.registry",
    "count_macs": "attnbench.measure.macs",
    "load_results": "attnbench.api",
    "run": "attnbench.api",
    "report": "attnbench.report",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    try:  # a submodule, e.g. attnbench.registry
        return importlib.import_module(f"attnbench.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'attnbench' has no attribute '{name}'") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
