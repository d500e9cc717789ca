import os
import subprocess
import sys

import pytest
import torch

import attnbench

VARIANTS = attnbench.list_variants()
assert VARIANTS, "the variant registry is empty: no variant would be tested"

DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


def randomize_norms(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters (so none is an identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return module


@pytest.fixture(params=VARIANTS)
def variant(request) -> str:
    return request.param


def kill_midway(module: str, name: str, call: str, sig: int, *, after: bool = False) -> None:
    """Run ``call`` in a new Python process in which ``module.name``, when called, waits (after doing its work,
    with ``after``), and send that process ``sig`` there."""
    code = ("import importlib, time\n"
            f"module = importlib.import_module({module!r})\n"
            f"original = getattr(module, {name!r})\n"
            "def midway(*args, **kwargs):\n"
            f"    {'original(*args, **kwargs)' if after else 'pass'}\n"
            "    print('midway', flush=True)\n"
            "    time.sleep(600)\n"
            f"setattr(module, {name!r}, midway)\n"
            f"{call}\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "midway\n"
    proc.send_signal(sig)
    proc.wait(timeout=60)
