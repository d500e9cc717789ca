"""Multiply-accumulate counts (one fused multiply-add = 1, the torchvision convention).

Counted with fvcore's tracer plus :mod:`attnbench.measure.flop_handles`, on each variant's
reference implementation, so the count does not depend on the implementation that runs. A module
may declare its own cost with a ``macs(input_shape) -> int`` method when its implementations do
masked-out work that the mechanism does not need (local attention's halos, a fixed span's band);
its traced count is then replaced by the declared one.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from attnbench.measure.flop_handles import HANDLES
from attnbench.registry import Variant, reference_impls


@dataclass(frozen=True)
class MacCount:
    macs: int  # multiply-accumulates of one forward pass
    uncounted_ops: dict[str, int] = field(default_factory=dict)  # traced ops with no MAC handle: count
    declared_by: tuple[str, ...] = ()  # submodules whose own ``macs`` replaced the traced count


def analyse_macs(module: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> MacCount:
    """Trace one forward pass of ``module`` (in eval mode) and count its MACs. Shapes alone decide the count, so
    it is traced on a copy of ``module`` on the meta device, which allocates nothing: the reference
    implementation's whole logits (mhsa's N x N at 256 x 256 are 16 GiB at 64 channels) cost no memory even where
    the implementation that runs needs far less. Where the meta trace fails (torch's meta convolution does not
    trace: a network's stem), the network is traced on the inputs themselves with each attention layer standing in
    as zeros of its output's shape, whose count is its reference's traced alone on the meta device at the input it
    gets (a layer that cannot be, on its reference with the network): a trace keeps every value it saw, so even a
    memory-lean implementation traced on real tensors holds all of its logits at once."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    try:
        meta = _on_meta(module)
    except Exception:  # noqa: BLE001 - a module that cannot be copied: every layer on its reference, real tensors
        return _analyse(module, inputs)
    try:
        return _analyse(meta, tuple(i.to("meta") for i in inputs))
    except Exception:  # noqa: BLE001 - any op or module that cannot run on meta tensors: counted on the real ones
        return _analyse(module, inputs, _layers_on_meta(meta, inputs))


def _layers_on_meta(copy_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, tuple[MacCount, tuple]]:
    """Each attention layer of ``copy_`` (a module's meta copy) counted alone on the meta device at the input it
    gets in one forward pass (found by an untraced forward, which runs where tracing does not), with its output's
    shape, by name; a layer that does not count on meta is left out."""
    copy_.eval()
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def seen(name: str):
        def hook(_module, args, out) -> None:
            shapes.setdefault(name, (tuple(args[0].shape), tuple(out.shape)))
        return hook

    layers = dict(copy_.named_modules())
    hooks = [sub.register_forward_hook(seen(name)) for name, sub in layers.items() if isinstance(sub, Variant)]
    try:
        with torch.no_grad(), reference_impls(copy_):
            copy_(*(i.to("meta") for i in inputs))
    except Exception:  # noqa: BLE001 - a network that does not run on meta tensors: every layer on the real ones
        return {}
    finally:
        for h in hooks:
            h.remove()
    counted = {}
    for name, (shape, out) in shapes.items():
        try:
            counted[name] = (_analyse(layers[name], (torch.empty(shape, device="meta"),)), out)
        except Exception:  # noqa: BLE001 - this layer is traced with the network, on its reference
            pass
    return counted


def _on_meta(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are on the meta device (the originals are not copied)."""
    memo = {id(p): nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad) for p in module.parameters()}
    memo.update({id(b): b.to("meta") for b in module.buffers()})
    return copy.deepcopy(module, memo)


def _analyse(module: nn.Module, inputs: tuple[torch.Tensor, ...],
             counted: dict[str, tuple[MacCount, tuple]] | None = None) -> MacCount:
    """The count of one traced forward pass; the submodules named in ``counted`` stand in as zeros of the output
    shape given, and count as the count given."""
    from fvcore.nn import FlopCountAnalysis

    counted = counted or {}
    declared: dict[str, int] = {}
    hooks = []
    for name, sub in module.named_modules():
        if any(name == c or name.startswith(c + ".") for c in counted):
            continue
        if callable(getattr(sub, "macs", None)) and not any(name.startswith(d + ".") for d in declared):
            declared[name] = 0

            def hook(mod, args, _out, name=name):
                declared[name] += int(mod.macs(tuple(args[0].shape)))

            hooks.append(sub.register_forward_hook(hook))
    was_training = module.training
    module.eval()
    layers = dict(module.named_modules())
    for name, (_, out) in counted.items():
        layers[name].forward = lambda x, *_args, out=out, **_kwargs: x.new_zeros(out)
    try:
        analysis = FlopCountAnalysis(module, inputs)
        analysis.set_op_handle(**HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with warnings.catch_warnings(), torch.no_grad(), reference_impls(module):
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
            total = analysis.total()
            by_module = analysis.by_module()
            uncounted = Counter(analysis.unsupported_ops())
            for name, (count, _) in counted.items():  # the stand-in's ops, for the reference's
                uncounted.subtract(analysis.unsupported_ops(name))
                uncounted.update(count.uncounted_ops)
    finally:
        for h in hooks:
            h.remove()
        for name in counted:
            del layers[name].forward
        module.train(was_training)
    for name, macs in {**declared, **{name: count.macs for name, (count, _) in counted.items()}}.items():
        total += macs - by_module.get(name, 0)
    declared_by = [n or type(module).__name__ for n in declared] + [n for n, (c, _) in counted.items() if c.declared_by]
    return MacCount(int(total), {op: n for op, n in uncounted.items() if n > 0}, tuple(declared_by))


def count_macs(module: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """MACs of one forward pass of ``module`` on ``inputs`` (one fused multiply-add = 1)."""
    return analyse_macs(module, inputs).macs
