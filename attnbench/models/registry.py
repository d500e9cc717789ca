"""The network registry: every network attnbench measures or trains, by name, and what it is built from.

A name is one of:

* a **registered network**: a builder decorated with :func:`register_model` (one network, e.g.
  ``botnet50``), or with :func:`register_family` (one network per registered variant, named
  ``<variant>_<arch>``: ``gsa_resnet50``, ``gate_probe`` for a plugin's variant ``gate``); other
  packages add theirs through the ``attnbench.models`` entry-point group, as variants arrive through
  ``attnbench.variants``;
* ``timm:NAME``: any model of timm (an optional dependency), built with
  ``timm.create_model(NAME, pretrained=False)``;
* ``package.module:callable``: a user's builder returning an ``nn.Module`` that maps
  ``(B, 3, H, W)`` images to ``(B, classes)`` logits (imported from the current folder too, as
  ``gunicorn`` and ``uvicorn`` import an application).

Every name resolves to a :class:`ModelSpec`, which says which variant fills the network's attention
slot (none for a network from elsewhere) and which architecture it is, so nothing parses a name to
learn them, and which code defines it (its module), so that a change to that code measures again.

A builder is called as ``builder(num_classes=..., **options)``; the options a registered builder takes
are its own (``width``, ``stem``, ``image_size``, ...) and its variant's (``heads``, ``impl``, ...).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from attnbench.registry import Variant, get_variant_spec, list_variants, load_plugins

PLUGIN_GROUP = "attnbench.models"  # the entry-point group through which other packages add networks
TIMM_PREFIX = "timm:"
FOREIGN_OPTIONS = ("num_classes", "image_size")  # what a network from elsewhere may be given, when it takes it


class NotAModuleError(TypeError):
    """A network's builder returned something other than an ``nn.Module``."""


class WidthError(ValueError):
    """A width at which a network cannot have the channels it multiplies; the message names the network, the width
    and the nearest widths it can have."""


def check_multiplier(width: Any) -> None:
    """``ValueError`` unless ``width``, a network's channel multiplier, is a positive finite number."""
    if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width < math.inf:
        raise ValueError(f"Invalid width={width!r}: width must be a positive multiplier.")


class UnknownModelError(KeyError):
    """A name that names no network."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows of one network."""

    name: str
    builder: Callable[..., nn.Module]  # builder(num_classes=..., **options)
    variant: str  # the variant in its attention slot ("conv" for a plain ResNet); "" for a network from elsewhere
    arch: str  # its architecture: a family (resnet50, probe) or the network itself (botnet50, timm, custom)
    description: str  # one line
    source: str  # the module that defines it (its package's source identifies the code)
    kind: str = "registered"  # registered | timm | custom

    def modules(self) -> tuple[str, ...]:
        """The modules that define this network: its builder's and its variant's (see
        :meth:`attnbench.registry.VariantSpec.modules`)."""
        return (self.source, *(get_variant_spec(self.variant).modules() if self.variant else ()))

    @property
    def foreign(self) -> bool:
        """A network from elsewhere (timm, a user's builder): no variant, none of attnbench's options."""
        return self.kind != "registered"

    def accepts(self, option: str) -> bool:
        """Whether the builder takes the keyword ``option`` (a registered builder takes its variant's too)."""
        if not self.foreign:
            return True
        if self.kind == "timm":
            return option in FOREIGN_OPTIONS
        params = inspect.signature(self.builder).parameters
        return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def build(self, num_classes: int = 1000, **options: Any) -> nn.Module:
        """The network, with the options it takes (a network from elsewhere gets those of ``FOREIGN_OPTIONS``
        that it accepts; anything else is an error naming it)."""
        if self.foreign:
            given = {"num_classes": num_classes, **options}
            extra = sorted(k for k in options if k not in FOREIGN_OPTIONS)
            if extra:
                raise ValueError(f"{self.name} is a network from elsewhere: it takes no {', '.join(extra)} "
                                 "(attnbench's options apply to its own networks).")
            try:
                net = self.builder(**{k: v for k, v in given.items() if self.accepts(k)})
            except SystemExit as err:  # a builder that ends the process failed to build: its case says so, as for
                # any exception, and the sweep or training goes on or stops in one line
                raise RuntimeError(f"{self.name} called sys.exit({err.code!r}) instead of returning a "
                                   "network.") from None
            if not isinstance(net, nn.Module):
                raise NotAModuleError(f"{self.name} returned {'None' if net is None else type(net).__name__}, not "
                                      "a torch.nn.Module.")
            return net
        return self.builder(num_classes=num_classes, **options)

    def check_reachable(self) -> None:
        """A network registered in ``__main__`` without a file (a notebook, ``python -c``) is unknown to the cases'
        processes, which import ``__main__`` only from its file: :class:`UnknownModelError` saying so, before a
        sweep whose every case would fail with 'Unknown model'."""
        path = getattr(sys.modules.get("__main__"), "__file__", None)
        if self.source == "__main__" and not (path and os.path.isfile(path)):
            raise UnknownModelError(f"{self.name} is registered in this interactive session, whose code the cases' "
                                    "processes cannot import: register it in a module of yours and import that, or "
                                    "name its builder as module:callable.")

    def build_on_meta(self, **options: Any) -> nn.Module:
        """The network built on the meta device: its shapes alone, no memory, no weights drawn."""
        import torch

        with torch.device("meta"):
            return self.build(**options)

    def check_builds(self, image_size: int) -> None:
        """A user's builder is called once on the meta device before a sweep, and :class:`NotAModuleError` raised
        where it returns something other than an ``nn.Module``; a builder that fails there (it loads weights, say)
        is left to its cases, which say why."""
        if self.kind != "custom":
            return
        try:
            self.build_on_meta(image_size=image_size)
        except NotAModuleError:
            raise
        except Exception:  # noqa: BLE001, S110 - any other failure is its cases' to report, with their reason
            pass

    def check_options(self, image_size: int, options: dict[str, Any], **settings: Any) -> None:
        """One of attnbench's networks is built on the meta device with its ``settings`` (``width``, ``stem``), then
        with its variant's ``options`` too, before a sweep or a training run: a ``ValueError`` of its builder is
        what the user gave, raised in one line naming the network and its width (and, for the options, the channels
        of its variant's layers, which the options must suit). Any other failure (an operation the meta device
        lacks) is left to the network's build, which says why."""
        width = settings.get("width", 1.0)
        try:
            plain = self.build_on_meta(image_size=image_size, **settings)
        except WidthError:  # names the network and its width already
            raise
        except ValueError as e:
            raise ValueError(f"{self.name} at width {width:g}: {e}") from None
        except Exception:  # noqa: BLE001 - not the user's input: the network's build says why
            return
        if not options:
            return
        dims = sorted({m.cfg.dim for m in plain.modules() if isinstance(m, Variant) and m.variant_name == self.variant})
        try:
            self.build_on_meta(image_size=image_size, **settings, **options)
        except ValueError as e:
            raise ValueError(f"--opt for {self.name} at width {width:g}, whose {self.variant} layers have "
                             f"{', '.join(map(str, dims))} channels: {e}") from None
        except Exception:  # noqa: BLE001, S110 - not the user's input: the network's build says why
            pass


@dataclass(frozen=True)
class _Family:
    arch: str
    builder: Callable[..., nn.Module]  # builder(variant, num_classes=..., **options)
    description: str
    source: str
    plain: str | None  # the name of the conv network, when it has one of its own (resnet50)


_MODELS: dict[str, ModelSpec] = {}
_FAMILIES: dict[str, _Family] = {}
_ALIASES: dict[str, str] = {}  # another name -> the registered one


def _module_of(fn: Callable) -> str:
    return getattr(fn, "__module__", "") or ""


def register_model(fn: Callable | None = None, *, name: str | None = None, variant: str = "conv",
                   arch: str | None = None, description: str | None = None):
    """Register the builder ``fn(num_classes=..., **options)`` as one network, named ``name`` (default: the
    function's name), whose attention slot holds ``variant``. Usable as ``@register_model`` or
    ``@register_model(name=..., variant=...)``. A name already taken, or holding ``:`` or ``,``, raises
    ``ValueError``."""

    def wrap(f: Callable) -> Callable:
        key = name or f.__name__
        _check_free(key)
        doc = (inspect.getdoc(f) or "").splitlines()
        _MODELS[key] = ModelSpec(key, f, variant, arch or key, description or (doc[0] if doc else key), _module_of(f))
        return f

    return wrap(fn) if fn is not None else wrap


def register_family(arch: str, *, description: str, plain: str | None = None):
    """Register ``fn(variant, num_classes=..., **options)`` as the family ``arch``: the network
    ``<variant>_<arch>`` for every registered variant (a plugin's included). ``plain``: the conv network's
    own name (``resnet50``), under which it is registered, ``conv_<arch>`` staying an alias."""

    def wrap(f: Callable) -> Callable:
        if arch in _FAMILIES:
            raise ValueError(f"Network family '{arch}' is already registered by {_FAMILIES[arch].source}.")
        if plain is not None:
            _check_free(plain)
            _ALIASES[f"conv_{arch}"] = plain
        _FAMILIES[arch] = _Family(arch, f, description, _module_of(f), plain)
        return f

    return wrap


def _check_free(name: str) -> None:
    if name in _MODELS or name in _ALIASES or any(f.plain == name for f in _FAMILIES.values()):
        raise ValueError(f"Network '{name}' is already registered.")
    if ":" in name:
        raise ValueError(f"Invalid network name '{name}': ':' marks networks from elsewhere (timm:NAME, module:fn).")
    if "," in name:
        raise ValueError(f"Invalid network name '{name}': ',' separates the names of --model, which could not name it.")


def family_name(variant: str, arch: str) -> str:
    """The name of ``variant``'s network of the family ``arch`` (``gsa``, ``resnet50`` -> ``gsa_resnet50``;
    the conv network of a family with a name of its own: ``resnet50``)."""
    family = _FAMILIES.get(arch)
    if family is not None and family.plain and variant == "conv":
        return family.plain
    return f"{variant}_{arch}"


def _family_spec(family: _Family, variant: str) -> ModelSpec:
    def build(num_classes: int = 1000, **options: Any) -> nn.Module:
        return family.builder(variant, num_classes=num_classes, **options)

    return ModelSpec(family_name(variant, family.arch), build, variant, family.arch,
                     f"{family.description} with {variant}", family.source)


def _load() -> None:
    """The built-in networks, then every plugin's (once); the variants come with them."""
    import attnbench.models  # noqa: F401  (registers the built-in networks)

    load_plugins(PLUGIN_GROUP, "network")


def _registered() -> dict[str, ModelSpec]:
    """Every registered network by name: the single ones and each family's, for every variant now known."""
    _load()
    specs = dict(_MODELS)
    for family in _FAMILIES.values():
        for variant in list_variants():
            spec = _family_spec(family, variant)
            specs.setdefault(spec.name, spec)
    return specs


def _natural(name: str) -> list:
    """Sort key reading digit runs as numbers: resnet26 < resnet50 < resnet101 (as timm's list_models)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered network names matching an fnmatch ``pattern`` (``"*_resnet50"``, ``"gsa_*"``), in natural
    order. Networks from elsewhere (``timm:NAME``, ``module:fn``) are not listed: any of them can be named."""
    return sorted((n for n in _registered() if fnmatch.fnmatch(n, pattern)), key=_natural)


def list_archs() -> list[str]:
    """The families: what ``--arch`` takes (``resnet50``: each variant's ``<variant>_resnet50``)."""
    _load()
    return sorted(_FAMILIES, key=_natural)


def model_spec_for(variant: str, arch: str) -> ModelSpec:
    """The spec of ``variant``'s network of the family ``arch``."""
    if arch not in list_archs():
        raise UnknownModelError(_unknown("architecture", arch, list_archs()))
    return get_model_spec(family_name(variant, arch))


def get_model_spec(name: str) -> ModelSpec:
    """The spec of ``name`` (registered, ``timm:NAME`` or ``module:callable``); :class:`UnknownModelError`
    with the available names and the closest match, or the reason a network from elsewhere cannot be had."""
    if not isinstance(name, str):
        raise UnknownModelError(f"A model name is a string, not {name!r}; see attnbench.list_models().")
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX):])
    if ":" in name:
        return _custom_spec(name)
    specs = _registered()
    name = _ALIASES.get(name, name)
    if name not in specs:
        raise UnknownModelError(_unknown("model", name, list(specs)))
    spec = specs[name]
    if spec.variant not in list_variants():  # registered by a package whose variant is missing or misspelt
        raise UnknownModelError(f"Network '{name}' (from {spec.source}) holds the variant '{spec.variant}', which "
                                f"is not registered. Variants: {', '.join(list_variants())}.")
    return spec


def _unknown(kind: str, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    shown = sorted(available, key=_natural)
    listing = ", ".join(shown[:12]) + (f", ... ({len(shown)} in all: attnbench list)" if len(shown) > 12 else "")
    return f"Unknown {kind} '{name}'. Available: {listing}.{hint}"


def build_model(name: str, num_classes: int = 1000, **options: Any) -> nn.Module:
    """Build network ``name`` (see :func:`get_model_spec`).

    Options of attnbench's networks: ``stem`` ("conv": 7x7 + max-pool, or "cifar": 3x3, no pool),
    ``width`` (channel multiplier), ``image_size`` (side of the input images; sizes whole-axis relative
    tables, default 224, or 32 with the CIFAR stem), ``nonlocal_blocks`` (for an inserted variant's
    ResNets: (stage, block) pairs after which a block is inserted), ``stages`` (the stages whose 3x3
    convolutions the variant replaces; default all), and any option of the variant (``heads``, ``impl``...).
    A network from elsewhere takes ``num_classes`` and ``image_size``, where its builder does.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Invalid num_classes={num_classes!r}: num_classes must be a positive integer.")
    return get_model_spec(name).build(num_classes, **options)


# ---- networks from elsewhere ---------------------------------------------------------------------------


def _timm():
    try:
        import timm
    except Exception as err:  # noqa: BLE001 - timm missing, or its torchvision broken: one line either way
        reason = "is not installed" if isinstance(err, ModuleNotFoundError) and err.name == "timm" else (
            f"does not import ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        raise UnknownModelError(f"timm networks need timm, which {reason}: pip install 'attnbench[timm]' (timm "
                                "needs a torchvision that matches your torch).") from None
    return timm


def _timm_spec(name: str) -> ModelSpec:
    timm = _timm()
    if not timm.is_model(name):
        raise UnknownModelError(_unknown_timm(timm, name))

    def build(num_classes: int = 1000, image_size: int | None = None) -> nn.Module:
        size = timm.get_pretrained_cfg_value(name, "input_size")
        fixed = timm.get_pretrained_cfg_value(name, "fixed_input_size")
        resized = {} if image_size is None or not fixed or (size and size[-1] == image_size) else {
            "img_size": image_size}  # a network sized to its input (ViT, Swin) is built for the side measured
        try:
            return timm.create_model(name, pretrained=False, num_classes=num_classes, **resized)
        except TypeError as err:
            raise ValueError(f"timm:{name} takes {size[-1]} x {size[-1]} images and cannot be built for "
                             f"{image_size} x {image_size} ({err}).") from None

    entry = timm.models.model_entrypoint(name)
    return ModelSpec(TIMM_PREFIX + name, build, "", "timm", f"timm's {name}", _module_of(entry), kind="timm")


def _unknown_timm(timm: Any, name: str) -> str:
    """One line for a name that is no timm model: the closest of timm's own list, and the pattern search of
    ``timm.list_models`` that finds the others (``attnbench list`` lists none of timm's)."""
    every = timm.list_models()
    close = difflib.get_close_matches(name, every, n=3, cutoff=0.6)
    stem = re.match(r"[A-Za-z]+", name)
    pattern = f"*{stem.group(0)}*" if stem and timm.list_models(f"*{stem.group(0)}*") else "resnet*"
    said = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"Unknown timm model '{name}'.{said} Search timm's {len(every)} models by pattern with "
            f"timm.list_models('{pattern}').")


def _custom_spec(name: str) -> ModelSpec:
    path, _, attr = name.partition(":")
    if not path or not attr or not all(part.isidentifier() for part in path.split(".") + attr.split(".")):
        raise UnknownModelError(f"Invalid network '{name}': give a registered name, timm:NAME or "
                                "package.module:callable.")
    if os.getcwd() not in sys.path:  # the user's package beside them, as `python -m` would find it
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(path)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure of the user's import is one line (a module
        # that parses sys.argv when imported, as a script does, exits)
        why = f"it called sys.exit({err.code!r})" if isinstance(err, SystemExit) else (
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise UnknownModelError(f"Cannot import {path} for the network '{name}': {why}") from None
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise UnknownModelError(f"Invalid network '{name}': {path} has no callable '{attr}'.")
    return ModelSpec(name, target, "", "custom", f"{attr} from {path}", path, kind="custom")
