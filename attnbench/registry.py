"""The variant registry: one name per attention mechanism, each behind the same interface.

Contract every registered variant meets:

* it is a :class:`Variant` (an ``nn.Module``) built from a frozen config dataclass that
  subclasses :class:`VariantConfig` (``dim`` channels in and out, plus its own typed options,
  validated in the config's ``validate`` and nowhere else);
* ``forward`` maps ``(B, dim, H, W) -> (B, dim, ceil(H / stride), ceil(W / stride))`` in any float
  dtype, for any side and batch (an empty batch gives the empty result);
* it registers a ``reference`` implementation and any others (below);
* optionally, ``capture(True)`` makes the next forward passes record what ``attention_maps(query,
  image)`` needs to return, per map name, a ``(heads or 1, H, W)`` tensor of the weights with which
  the query pixel gathers from every pixel (the inspection tools read nothing else, and leave out
  the layers of a variant that does not define it);
* where its implementations do work the mechanism does not need (masked blocks, halos), it
  declares the mechanism's cost with ``macs(input_shape)``, so counts never depend on the
  implementation;
* its spec says whether it ends with a normalisation of its own and how a network uses it
  (``replace`` the spatial 3x3 convolution of a bottleneck, or ``insert`` a residual block
  between bottlenecks), so networks and the harness never special-case names.

A variant is one definition (config, parameters, reference semantics) with one or more
*implementations* of its forward, registered with :func:`register_impl`: functions
``forward(module, x)`` that read the same parameters, so a state dict loads into any of them and
they compute the same function. Each implementation says what it cannot run (device types, dtypes,
a backward, any other check of the input: :meth:`ImplSpec.reasons`). The module's ``impl``
attribute picks one; ``"auto"`` (the default) runs, for each input, the first implementation of the
variant's order for the input's device type (:meth:`VariantSpec.auto_order`: those registered to
go first there, the variant's preference list, measured, see the README, then its reference and the
rest) that has no reason not to, and when none can, :class:`NoImplementationError` names every
implementation with all its reasons. While a module captures attention maps (``capture(True)``,
read back with ``attention_maps(query)``, which a variant may leave undefined) its reference
implementation runs, since that is the one that records them.

Variants register themselves with :func:`register_variant`; ``attnbench.variants`` imports
each built-in variant module explicitly, and other packages add theirs through the
``attnbench.variants`` entry-point group (see the README's "Plugins").
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import functools
import importlib.metadata
import math
import multiprocessing
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from attnbench.choices import unknown_name_message  # noqa: F401  (re-exported)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# a field's declared type: how a value of it is checked (a bool is not a whole number here), and its name
TYPE_RULES = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (_whole, "a whole number"),
    float: (_finite, "a finite number"),
    str: (lambda v: isinstance(v, str), "text"),
}


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

    # Rules shared by all configs: the fields that must be positive, and those that are a spatial extent in
    # pixels (a span, a window, a kernel), which a sweep bounds by its largest side (check_extents).
    _positive: ClassVar[tuple[str, ...]] = ("dim", "size")
    _extents: ClassVar[tuple[str, ...]] = ("span", "window", "kernel_size")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option, its value and the rule it breaks."""
        self.check_types()
        for name in self._positive:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"Invalid {name}={value!r}: {name} must be a positive integer.")
        if self.stride not in (1, 2):
            raise ValueError(f"Invalid stride={self.stride!r}: stride must be 1 or 2.")

    def check_types(self) -> None:
        """Every field holds a value of its declared type: a whole number for ``int`` (not 2.0), a finite
        number for ``float`` (not nan), true or false for ``bool``, text for ``str``, or None where allowed.
        Fields of other types, and configs whose annotations cannot be resolved, are left to ``validate``."""
        try:
            hints = typing.get_type_hints(type(self))
        except Exception:  # noqa: BLE001 - a plugin's annotations may name what cannot be imported here
            return
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), hints.get(f.name)
            kinds = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
            rules = [TYPE_RULES[k] for k in kinds if k in TYPE_RULES]
            if (value is None and type(None) in kinds) or not rules or any(valid(value) for valid, _ in rules):
                continue
            wanted = " or ".join(name for _, name in rules) + (" (or none)" if type(None) in kinds else "")
            raise ValueError(f"Invalid {f.name}={value!r}: {f.name} must be {wanted}.")

    @classmethod
    def check_extents(cls, options: dict[str, Any], side: int) -> None:
        """The spatial extents (``_extents``) that ``options`` set reach at most every pixel of a ``side`` x ``side``
        map, ``2 side - 1`` pixels, or are no wider than the variant's default. A wider one reaches no further and
        only grows its tables (a span of 10^8 is 800 M parameters), so it is refused before any layer is built,
        whatever its channels."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name in cls._extents:
            value, default = options.get(name), defaults.get(name)
            most = max(2 * side - 1, default if isinstance(default, int) else 0)
            if isinstance(value, int) and value > most:
                raise ValueError(f"Invalid {name}={value}: wider than {most} pixels, all that a map of side {side} "
                                 "(the sweep's largest) has to reach.")

    def check_heads(self, halves: str | None = None) -> None:
        """``heads`` is positive and divides ``dim``; with ``halves`` (what the two halves of a head hold),
        the head width ``dim / heads`` is even too."""
        if self.heads < 1:
            raise ValueError(f"Invalid heads={self.heads}: heads must be a positive integer.")
        self.check_divisible("dim", self.dim, "heads", self.heads)
        if halves and (self.dim // self.heads) % 2:
            raise ValueError(f"Invalid dim={self.dim} with heads={self.heads}: the head width dim/heads must be "
                             f"even ({halves}).")

    def check_odd(self, name: str, *, optional: bool = False) -> None:
        """The option ``name`` is a positive odd integer (or None, when ``optional``)."""
        value = getattr(self, name)
        if (value is None and not optional) or (value is not None and (value < 1 or value % 2 == 0)):
            raise ValueError(f"Invalid {name}={value}: {name} must be a positive odd integer"
                             + (" (or None)." if optional else "."))

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
    # the layer's output is already normalised (a network adds no BN); for an inserted block, its residual branch
    ends_with_norm: bool = False
    placement: str = "replace"  # "replace" the bottleneck 3x3, or "insert" between bottlenecks
    global_receptive_field: bool = False  # one layer lets every output see every input pixel
    scaling: tuple[float, float] = (1.0, 1.0)  # asymptotic exponent k of cost ~ pixels^k (range over spans)
    # options a network sets block by block, cycling within each stage (Swin: unshifted, shifted, ...)
    alternate: tuple[dict[str, Any], ...] = ()
    source: str = "attnbench"  # the package that defines the variant: "attnbench" for the shipped ones
    reference: str = ""  # the implementation that defines it: it records attention maps, MACs are traced on it
    # per device type, the implementations auto tries first, in order (measured: see the README)
    preference: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        """Whether attnbench ships this variant (a plugin's is not)."""
        return self.source == "attnbench"

    def block_options(self, index: int, options: dict[str, Any]) -> dict[str, Any]:
        """The options of a stage's ``index``-th block of this variant: ``options`` with the alternating ones
        (an option set explicitly wins)."""
        return {**self.alternate[index % len(self.alternate)], **options} if self.alternate else dict(options)

    def modules(self) -> tuple[str, ...]:
        """The modules that define this variant: its class, its config and every implementation (for the code
        hash: a plugin's source is part of what measured)."""
        impls = _IMPLS.get(self.name, {}).values()
        return tuple(dict.fromkeys([self.cls.__module__, self.config_cls.__module__,
                                    *(getattr(i.forward, "__module__", "") or "" for i in impls)]))

    def auto_order(self, device_type: str) -> tuple[str, ...]:
        """Every implementation, in the order ``impl="auto"`` tries them on a device of this type: those
        registered to go first there (``preferred_on``, the last registered first), the variant's
        ``preference`` for it, its reference, then the others as they were registered."""
        impls = _IMPLS.get(self.name, {})
        first = [name for name, impl in reversed(impls.items()) if device_type in impl.preferred_on]
        listed = self.preference.get(device_type, ())
        missing = [name for name in (*listed, self.reference) if name not in impls]
        if missing:
            raise ValueError(f"Variant '{self.name}' names implementations that are not registered: "
                             f"{', '.join(missing)} (registered: {', '.join(impls) or 'none'}).")
        return tuple(dict.fromkeys([*first, *listed, self.reference, *impls]))

    @property
    def draws_maps(self) -> bool:
        """Whether the variant defines ``attention_maps`` (optional: what inspection draws)."""
        return self.cls.draws_maps()

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
        try:
            config = self.config_cls(dim=dim, **{k: v for k, v in options.items() if v is not None})
            config.validate()
        except (ValueError, TypeError):
            raise
        except Exception as err:  # noqa: BLE001 - a plugin's check may fail in any way: the options are refused
            raise ValueError(f"Variant '{self.name}' could not check its options: {type(err).__name__}: {err}"
                             ) from None
        return config


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Inputs:
    """What decides whether an implementation can run a forward pass: the input's device type and dtype,
    whether gradients will be needed, and its shape ``(B, C, H, W)`` (None where a network's case is planned,
    before its layers see their inputs)."""

    device_type: str
    dtype: torch.dtype = torch.float32
    grad: bool = False
    shape: tuple[int, ...] | None = None

    @classmethod
    def of(cls, module: nn.Module, x: torch.Tensor) -> Inputs:
        """The inputs of ``module``'s forward pass on ``x`` (gradients: enabled, and wanted by ``x`` or a weight)."""
        grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))
        return cls(x.device.type, x.dtype, grad, tuple(x.shape))

    def __str__(self) -> str:
        shape = f" {self.shape}" if self.shape is not None else ""
        return f"{self.device_type} {_dtype_name(self.dtype)} input{shape} {'with' if self.grad else 'without'} " \
               "gradients"


@dataclass(frozen=True)
class ImplSpec:
    """One implementation of a variant's forward, and what it cannot run."""

    name: str
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    description: str  # one line: how it computes
    devices: tuple[str, ...] = ()  # the device types it runs on (none named: any)
    dtypes: tuple[torch.dtype, ...] = ()  # the dtypes it computes in (none named: any)
    backward: bool = True  # it has a backward pass (runs in training)
    # any other reason it cannot run an input (a reason, several, or None)
    check: Callable[[Inputs], str | Iterable[str] | None] | None = None
    preferred_on: tuple[str, ...] = ()  # device types whose auto tries it first (a plugin's faster kernel)
    fakeable: bool = True  # runs on fake tensors and under operator interception (memory prediction)

    def reasons(self, inputs: Inputs) -> list[str]:
        """Every reason this implementation cannot run ``inputs``; none when it can."""
        why = []
        if self.devices and inputs.device_type not in self.devices:
            why.append(f"runs on {', '.join(self.devices)} only")
        if self.dtypes and inputs.dtype not in self.dtypes:
            why.append(f"computes in {', '.join(map(_dtype_name, self.dtypes))} only")
        if inputs.grad and not self.backward:
            why.append("has no backward")
        if self.check is not None:
            try:
                more = self.check(inputs)
            except Exception as err:  # noqa: BLE001 - a plugin's check may fail in any way: the input is refused
                more = f"its check failed: {type(err).__name__}: {err}"
            why += [more] if isinstance(more, str) else list(more or ())
        return why


class NoImplementationError(ValueError):
    """No implementation of a variant can run an input; the message names every one with all its reasons."""


AUTO = "auto"


class Variant(nn.Module):
    """Base of every registered variant: holds the config and dispatches ``forward`` to an implementation.

    Subclasses define the parameters in ``__init__(cfg)`` and, for inspection, ``attention_maps``;
    their implementations are registered separately with :func:`register_impl`.
    """

    variant_name: ClassVar[str] = ""  # set by register_variant
    # Position tables sized to something a network evaluated at another side may resize (attnbench.evaluation):
    # state entries (2r + 1, d) over the offsets -r .. r of a whole axis, sized to ``size``, resized linearly over
    # the offsets; and (heads, 2M - 1, 2M - 1) biases sized to a window M, resized bicubically.
    offset_tables: ClassVar[tuple[str, ...]] = ()
    bias_tables: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: VariantConfig):
        super().__init__()
        self.cfg = cfg
        self.impl = AUTO
        self.captured: dict | None = None  # what the reference implementation recorded, when capturing
        self.fake_inputs = False  # the next forward passes see fake tensors: see fake_safe

    def capture(self, enabled: bool = True) -> None:
        """Record what :meth:`attention_maps` needs during the next forward passes (reference implementation)."""
        self.captured = {} if enabled else None

    def attention_maps(self, query: tuple[int, int], image: int = 0) -> dict[str, torch.Tensor]:
        """Per map name, ``(heads or 1, H, W)``: the weights with which pixel ``query`` = (y, x) of ``image``
        gathered in the last captured forward. Optional: a variant that does not define it is left out of
        inspection (:meth:`draws_maps`)."""
        raise NotImplementedError(f"Variant '{self.variant_name}' does not draw attention maps.")

    @classmethod
    def draws_maps(cls) -> bool:
        """Whether this variant defines :meth:`attention_maps`."""
        return cls.attention_maps is not Variant.attention_maps

    def implementation(self, x: torch.Tensor) -> ImplSpec:
        """The implementation that runs on ``x``: the chosen one (``auto``: :func:`choose_impl` for this input),
        or the reference while capturing, or where the chosen one cannot run on the fake tensors it is given."""
        impls, reference = _IMPLS[self.variant_name], _VARIANTS[self.variant_name].reference
        if self.captured is not None:
            return impls[reference]
        chosen = impls[choose_impl(self.variant_name, Inputs.of(self, x)) if self.impl == AUTO else self.impl]
        return impls[reference] if self.fake_inputs and not chosen.fakeable else chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.cfg.dim:
            raise ValueError(f"{self.variant_name}: expected input (B, {self.cfg.dim}, H, W), got {tuple(x.shape)}.")
        if x.shape[0] == 0:  # no image: the empty result, the same for every variant and implementation
            side = [-(-n // self.cfg.stride) for n in x.shape[2:]]
            return x.new_empty(0, self.cfg.dim, *side)
        return self.implementation(x).forward(self, x)

    def extra_repr(self) -> str:
        return f"impl={self.impl}"

    @classmethod
    def options_at(cls, options: dict[str, Any], ratio: float) -> dict[str, Any]:
        """The variant's ``options`` for a network evaluated at ``ratio`` times the side it was trained at with its
        tables interpolated: unchanged, unless the variant sizes an option to the image (Swin's window)."""
        return options


class UnknownVariantError(KeyError):
    """A name that no variant is registered under."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


_VARIANTS: dict[str, VariantSpec] = {}
_IMPLS: dict[str, dict[str, ImplSpec]] = {}  # variant -> implementations, in the order they were registered


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
    reference: str,
    preference: dict[str, str | Iterable[str]] | None = None,
    alternate: tuple[dict[str, Any], ...] = (),
) -> Callable[[type[Variant]], type[Variant]]:
    """Class decorator that registers a variant under ``name``.

    ``reference`` names the implementation that defines the variant: it records attention maps, and MAC
    counting and fake-tensor tools trace it (registered with :func:`register_impl`, like the others).
    ``preference`` maps a device type ("cpu", "cuda") to the implementations ``impl="auto"`` tries first
    there, in order (one name or several); after them it tries the reference, then the rest
    (:meth:`VariantSpec.auto_order`). ``alternate``: options a network sets on its blocks in turn within
    each stage (see :meth:`VariantSpec.block_options`).
    """

    def wrap(cls: type[Variant]) -> type[Variant]:
        if name in _VARIANTS:
            raise ValueError(f"Variant '{name}' is already registered by {_VARIANTS[name].cls.__name__}.")
        if not (isinstance(cls, type) and issubclass(cls, Variant)):
            raise ValueError(f"Variant '{name}' must be a Variant subclass, got {cls!r}.")
        if not issubclass(config_cls, VariantConfig):
            raise ValueError(f"Variant '{name}' config {config_cls!r} must subclass VariantConfig.")
        if placement not in ("replace", "insert"):
            raise ValueError(f"Variant '{name}': placement must be 'replace' or 'insert', got {placement!r}.")
        _VARIANTS[name] = VariantSpec(
            name, cls, config_cls, description, paper, arxiv, ends_with_norm, placement,
            global_receptive_field, scaling, tuple(alternate), cls.__module__.partition(".")[0], reference,
            {device: (names,) if isinstance(names, str) else tuple(names)
             for device, names in (preference or {}).items()},
        )
        _IMPLS.setdefault(name, {})
        cls.variant_name = name
        choose_impl.cache_clear()
        return cls

    return wrap


def register_impl(
    variant: str,
    name: str,
    *,
    description: str,
    devices: Iterable[str] = (),
    dtypes: Iterable[torch.dtype] = (),
    backward: bool = True,
    check: Callable[[Inputs], str | Iterable[str] | None] | None = None,
    preferred_on: Iterable[str] = (),
    fakeable: bool = True,
) -> Callable[[Callable], Callable]:
    """Function decorator that registers ``forward(module, x)`` as implementation ``name`` of ``variant``.

    What it cannot run: an input on a device type not in ``devices`` or in a dtype not in ``dtypes`` (none named:
    any), one that needs gradients when it has no ``backward``, and any for which ``check(inputs)`` returns a
    reason (or several). ``preferred_on``: device types on which ``impl="auto"`` tries it first, before the
    variant's own preference (a plugin's faster kernel for a shipped variant). ``fakeable``: it runs on fake
    tensors (memory prediction; where not, the reference is traced instead)."""

    def wrap(fn: Callable) -> Callable:
        impls = _IMPLS.setdefault(variant, {})
        if name == AUTO or name in impls:
            raise ValueError(f"Implementation '{name}' of variant '{variant}' is reserved or already registered.")
        impls[name] = ImplSpec(name, fn, description, tuple(devices), tuple(dtypes), backward, check,
                               tuple(preferred_on), fakeable)
        choose_impl.cache_clear()
        return fn

    return wrap


def list_impls(name: str) -> list[str]:
    """Implementations of variant ``name``, reference first."""
    reference = get_variant_spec(name).reference
    return sorted(_IMPLS[name], key=lambda impl: impl != reference)


def get_impl(name: str, impl: str) -> ImplSpec:
    """Implementation ``impl`` of variant ``name``; ``ValueError`` lists the valid names."""
    impls = list_impls(name)
    if impl not in impls:
        raise ValueError(unknown_name_message(f"implementation of variant '{name}':", impl, [AUTO, *impls]))
    return _IMPLS[name][impl]


@functools.lru_cache(maxsize=4096)
def choose_impl(name: str, inputs: Inputs) -> str:
    """The implementation ``impl="auto"`` runs for variant ``name`` on ``inputs``: the first of its
    :meth:`~VariantSpec.auto_order` for their device type with no reason not to (:meth:`ImplSpec.reasons`).
    :class:`NoImplementationError` when none can, naming every implementation with all its reasons."""
    tried = []
    for impl in _VARIANTS[name].auto_order(inputs.device_type):
        reasons = _IMPLS[name][impl].reasons(inputs)
        if not reasons:
            return impl
        tried.append(f"{impl} ({'; '.join(reasons)})")
    raise NoImplementationError(f"No implementation of variant '{name}' runs a {inputs}: {', '.join(tried)}.")


def resolve_impl(name: str, impl: str, device: str | torch.device, *, dtype: torch.dtype = torch.float32,
                 grad: bool = False, shape: tuple[int, ...] | None = None) -> str:
    """``impl`` as it will run on ``device`` with these inputs (:class:`Inputs`): ``auto`` chosen (or
    :class:`NoImplementationError`), any other name checked."""
    get_variant_spec(name)
    if impl == AUTO:
        return choose_impl(name, Inputs(torch.device(device).type, dtype, grad, shape))
    return get_impl(name, impl).name


def why_not(name: str, impl: str, inputs: Inputs) -> str | None:
    """Why implementation ``impl`` (``auto`` included) of variant ``name`` cannot run ``inputs``, in one line; None
    when it can."""
    if impl == AUTO:
        try:
            choose_impl(name, inputs)
        except NoImplementationError as err:
            return str(err)
        return None
    reasons = get_impl(name, impl).reasons(inputs)
    return f"implementation {impl}: {'; '.join(reasons)}" if reasons else None


def set_impl(module: nn.Module, impl: str) -> nn.Module:
    """Choose implementation ``impl`` for every variant layer in ``module`` (a layer or a whole network).

    Layers of a variant without ``impl`` keep theirs; ``ValueError`` when no layer has it.
    """
    layers = [m for m in module.modules() if isinstance(m, Variant)]
    if impl != AUTO and layers and not any(impl in _IMPLS[m.variant_name] for m in layers):
        get_impl(layers[0].variant_name, impl)  # raises, listing the valid names
    for m in layers:
        if impl == AUTO or impl in _IMPLS[m.variant_name]:
            m.impl = impl
    return module


PLUGIN_GROUP = "attnbench.variants"  # the entry-point group through which other packages add variants
_PLUGINS: dict[str, str] = {}  # "group:entry point" -> "loaded", or why it could not be


def load_plugins(group: str, kind: str) -> None:
    """Import every installed plugin of the entry-point ``group`` (each names a module that registers its
    ``kind``s on import), once. A plugin that fails to load (any exception, ``SystemExit`` included; an
    interrupt still interrupts) is reported in a warning (by the process the user started, not again by its
    case processes) and left out; the others and the built-ins stay usable."""
    if f"{group}:" in _PLUGINS:
        return
    _PLUGINS[f"{group}:"] = "started"  # a plugin that lists while it loads does not load the plugins again
    for entry in importlib.metadata.entry_points(group=group):
        try:
            entry.load()
            _PLUGINS[f"{group}:{entry.name}"] = "loaded"
        except (Exception, SystemExit) as err:  # noqa: BLE001 - a broken plugin must not take attnbench down
            _PLUGINS[f"{group}:{entry.name}"] = f"{type(err).__name__}: {err}"
            if multiprocessing.parent_process() is not None:  # a case's process: its sweep has said so
                continue
            warnings.warn(f"attnbench: the {kind} plugin '{entry.name}' ({entry.value}) did not load: "
                          f"{_PLUGINS[f'{group}:{entry.name}']}", stacklevel=4)


BUILTIN = "attnbench.variants"  # the package whose modules register the shipped variants (one line each)


def _load_variants() -> None:
    """Import the built-in variants (and their implementations), then every installed plugin's (an entry
    point of ``PLUGIN_GROUP``). The registry uses nothing of either: each registers itself when its module
    is imported, the built-ins by their package's name here, the plugins by their entry points."""
    importlib.import_module(BUILTIN)
    load_plugins(PLUGIN_GROUP, "variant")


def list_variants(pattern: str = "*", *, builtin: bool | None = None) -> list[str]:
    """Registered variant names matching an fnmatch ``pattern``, sorted; with ``builtin`` True only those attnbench
    ships, with False only plugins' (:attr:`VariantSpec.source`)."""
    _load_variants()
    return sorted(n for n, spec in _VARIANTS.items()
                  if fnmatch.fnmatch(n, pattern) and builtin in (None, spec.builtin))


def get_variant_spec(name: str) -> VariantSpec:
    """The spec of ``name``; :class:`UnknownVariantError` lists the names and the closest match."""
    if not isinstance(name, str):
        raise UnknownVariantError(f"A variant name is a string, not {name!r}. Available: {', '.join(list_variants())}.")
    _load_variants()
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(unknown_name_message("variant", name, list_variants())) from None


@contextlib.contextmanager
def reference_impls(module: nn.Module) -> Iterator[nn.Module]:
    """Run the variant layers of ``module`` on their reference implementations inside the block (for MAC
    counting, whose count must not depend on the implementation)."""
    layers = [m for m in module.modules() if isinstance(m, Variant)]
    kept = [m.impl for m in layers]
    for m in layers:
        m.impl = _VARIANTS[m.variant_name].reference
    try:
        yield module
    finally:
        for m, impl in zip(layers, kept):
            m.impl = impl


@contextlib.contextmanager
def fake_safe(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, the variant layers of ``module`` run their reference implementation wherever the one
    they choose cannot run on fake tensors (FlexAttention's), for memory prediction."""
    layers = [m for m in module.modules() if isinstance(m, Variant)]
    for m in layers:
        m.fake_inputs = True
    try:
        yield module
    finally:
        for m in layers:
            m.fake_inputs = False


def build_variant(name: str, dim: int, *, impl: str = AUTO, **options: Any) -> Variant:
    """Build variant ``name`` with ``dim`` channels running implementation ``impl``; unknown or invalid
    options raise."""
    spec = get_variant_spec(name)
    if impl != AUTO:
        get_impl(name, impl)
    module = spec.cls(spec.make_config(dim, **options))
    module.impl = impl
    return module


def iter_specs(*, builtin: bool | None = None) -> Iterator[VariantSpec]:
    """Every spec, sorted by name (``builtin`` as :func:`list_variants` reads it)."""
    return (_VARIANTS[n] for n in list_variants(builtin=builtin))
