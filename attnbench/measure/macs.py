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
from dataclasses import dataclass, field

import torch
from torch import nn

from attnbench.measure.flop_handles import HANDLES
from attnbench.registry import reference_impls


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
    trace: a network's stem), on the inputs themselves."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    try:
        return _analyse(_on_meta(module), tuple(i.to("meta") for i in inputs))
    except Exception:  # noqa: BLE001 - any op or module that cannot run on meta tensors: counted on the real ones
        return _analyse(module, inputs)


def _on_meta(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are on the meta device (the originals are not copied)."""
    memo = {id(p): nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad) for p in module.parameters()}
    memo.update({id(b): b.to("meta") for b in module.buffers()})
    return copy.deepcopy(module, memo)


def _analyse(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> MacCount:
    from fvcore.nn import FlopCountAnalysis

    declared: dict[str, int] = {}
    hooks = []
    for name, sub in module.named_modules():
        if callable(getattr(sub, "macs", None)) and not any(name.startswith(d + ".") for d in declared):
            declared[name] = 0

            def hook(mod, args, _out, name=name):
                declared[name] += int(mod.macs(tuple(args[0].shape)))

            hooks.append(sub.register_forward_hook(hook))
    was_training = module.training
    module.eval()
    try:
        analysis = FlopCountAnalysis(module, inputs)
        analysis.set_op_handle(**HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with warnings.catch_warnings(), torch.no_grad(), reference_impls(module):
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
            total = analysis.total()
            by_module = analysis.by_module()
            uncounted = dict(analysis.unsupported_ops())
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    for name, macs in declared.items():
        total += macs - by_module.get(name, 0)
    return MacCount(int(total), uncounted, tuple(n or type(module).__name__ for n in declared))


def count_macs(module: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """MACs of one forward pass of ``module`` on ``inputs`` (one fused multiply-add = 1)."""
    return analyse_macs(module, inputs).macs
