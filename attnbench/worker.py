"""Imported once by the harness's fork server, so that every case's process starts warm.

Importing this module loads torch, fvcore and the fake-tensor machinery and runs each once on a
tiny layer; the case processes are forks of that process and skip those seconds.
"""

import torch

from attnbench import harness  # noqa: F401
from attnbench.measure.macs import analyse_macs
from attnbench.measure.memory import predict_peak_memory

_layer = torch.nn.Conv2d(2, 2, 1)
_x = torch.zeros(1, 2, 2, 2)
predict_peak_memory(_layer, tuple(_x.shape), "infer")
analyse_macs(_layer, _x)
del _layer, _x
