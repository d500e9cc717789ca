"""The variant registry: one name per attention mechanism, each behind the same interface.

Contract every registered variant meets:

* it is an ``nn.Module`` built from a frozen config dataclass that subclasses
  :class:`VariantConfig` (``dim`` channels in and out, plus its own typed options);
* ``forward`` maps ``(B, dim, H, W) -> (B, dim, H / stride, W / stride)``, in any float dtype;
* its spec says whether it ends with a normalisation of its own and how a network uses it
  (``replace`` the spatial 3x3 convolution of a bottleneck, or ``insert`` a residual block
  between bottlenecks), so networks and the harness never special-case names.

Variants register themselves with :func:`register_variant`; ``attnbench.variants`` imports
each variant module explicitly.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn


@dataclass(frozen=True)
class VariantConfig:
    """Options shared by every variant. Subclasses add their own fields.

    ``size`` is the side of the largest square feature map the layer will see. Variants whose
    relative position tables cover the whole axis size them from it; others ignore it.
    ``stride`` 2 makes a layer downsample as its paper does (a strided convolution, or a 2x2
    average pool after attention); networks use it where a bottleneck downsamples.
    """

    dim: int  # channels in and out
    size: int = 56  # largest feature-map side the layer will see (pixels)
    stride: int = 1  # output downsampling factor: 1 or 2

    # Rules shared by all configs: (field, predicate, rule text).
    _positive: ClassVar[tuple[str, ...]] = ("dim", "size")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option, its value and the rule it breaks."""
        for name in self._positive:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"Invalid {name}={value!r}: {name} must be a positive integer.")
        if self.stride not in (1, 2):
            raise ValueError(f"Invalid stride={self.stride!r}: stride must be 1 or 2.")

    def check_divisible(self, name: str, value: int, by_name: str, by: int) -> None:
        """Raise unless ``value`` is divisible by ``by``."""
        if value % by:
            raise ValueError(
                f"Invalid {name}={value}: {name} must be divisible by {by_name}={by} "
                f"(nearest valid: {max(by, value - value % by)})."
            )


@dataclass(frozen=True)
class VariantSpec:
    """What the registry knows of one variant."""

    name: str
    cls: type[nn.Module]
    config_cls: type[VariantConfig]
    description: str  # one line
    paper: str  # title
    arxiv: str  # arXiv id
    ends_with_norm: bool = False  # the layer's output is already normalised (a network adds no BN)
    placement: str = "replace"  # "replace" the bottleneck 3x3, or "insert" between bottlenecks
    global_receptive_field: bool = False  # one layer lets every output see every input pixel
    scaling: tuple[float, float] = (1.0, 1.0)  # asymptotic exponent k of cost ~ pixels^k (range over spans)

    def options(self) -> list[str]:
        """Names of the options ``build_variant`` accepts besides ``dim``."""
        return [f.name for f in dataclasses.fields(self.config_cls) if f.name != "dim"]

    def make_config(self, dim: int, **options: Any) -> VariantConfig:
        """Fill and validate the config; ``None`` values mean "use the default"."""
        valid = self.options()
        for key in options:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise TypeError(
                    f"Unknown option '{key}' for variant '{self.name}'. Valid options: "
                    f"{', '.join(valid)}.{hint}"
                )
        config = self.config_cls(dim=dim, **{k: v for k, v in options.items() if v is not None})
        config.validate()
        return config


class UnknownVariantError(KeyError):
    """A name that no variant is registered under."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


_VARIANTS: dict[str, VariantSpec] = {}


def register_variant(
    name: str,
    config_cls: type[VariantConfig],
    *,
    description: str,
    paper: str,
    arxiv: str,
    ends_with_norm: bool = False,
    placement: str = "replace",
    global_receptive_field: bool = False,
    scaling: tuple[float, float] = (1.0, 1.0),
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a variant under ``name``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _VARIANTS:
            raise ValueError(f"Variant '{name}' is already registered by {_VARIANTS[name].cls.__name__}.")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"Variant '{name}' must be an nn.Module subclass, got {cls!r}.")
        if not issubclass(config_cls, VariantConfig):
            raise ValueError(f"Variant '{name}' config {config_cls!r} must subclass VariantConfig.")
        if placement not in ("replace", "insert"):
            raise ValueError(f"Variant '{name}': placement must be 'replace' or 'insert', got {placement!r}.")
        _VARIANTS[name] = VariantSpec(
            name, cls, config_cls, description, paper, arxiv, ends_with_norm, placement,
            global_receptive_field, scaling,
        )
        return cls

    return wrap


def list_variants(pattern: str = "*") -> list[str]:
    """Registered variant names matching an fnmatch ``pattern``, sorted."""
    return sorted(n for n in _VARIANTS if fnmatch.fnmatch(n, pattern))


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """'Unknown variant 'gssa'. Available: a, b. Did you mean 'gsa'?'"""
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'. Available: {', '.join(available)}.{hint}"


def get_variant_spec(name: str) -> VariantSpec:
    """The spec of ``name``; :class:`UnknownVariantError` lists the names and the closest match."""
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(unknown_name_message("variant", name, list_variants())) from None


def build_variant(name: str, dim: int, **options: Any) -> nn.Module:
    """Build variant ``name`` with ``dim`` channels; unknown or invalid options raise."""
    spec = get_variant_spec(name)
    return spec.cls(spec.make_config(dim, **options))


def iter_specs() -> Iterator[VariantSpec]:
    """Every spec, sorted by name."""
    return (_VARIANTS[n] for n in list_variants())
