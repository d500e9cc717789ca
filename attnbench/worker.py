"""Imported once by the harness's fork server, so that every case's process starts warm.

Importing this module loads torch, fvcore, the fake-tensor machinery and every variant and network (plugins included),
runs the memory prediction and the MAC count once on a tiny layer, and notes the facts of the environment
that do not change during a sweep (the CPU model, the git commit, the hash of the measuring code this
process has loaded). Then it freezes every object made so far (``gc.freeze``): the garbage collection
before each case's peak-memory reading walks the case's own objects only, not torch's hundreds of
thousands (a fifth of a second per case), and leaves the pages shared with the fork server unwritten.
The case processes are forks of this one and skip those seconds; each is still a process of its own.
"""

import gc
import warnings

import torch

from attnbench import harness  # noqa: F401
from attnbench.env import environment
from attnbench.measure.macs import analyse_macs
from attnbench.measure.memory import predict_peak_memory
from attnbench.models import list_models
from attnbench.registry import list_variants

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a plugin that does not load: the sweep's own process has said so
    list_variants()
    list_models()
environment("cpu")
_layer = torch.nn.Conv2d(2, 2, 1)
_x = torch.zeros(1, 2, 2, 2)
predict_peak_memory(_layer, tuple(_x.shape), "infer")
analyse_macs(_layer, _x)
del _layer, _x
gc.collect()
gc.freeze()
