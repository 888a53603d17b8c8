"""Run by `make wheel-check` in a fresh venv holding only torch and the built wheel: the
installed package (not this checkout) imports, its native parts load for this torch, and it
prunes a small network exactly (the scatter-back oracle) with the native backend."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext import ops
from depgraph_ext.testing import assert_scatter_back_equal

package = Path(dx.__file__).resolve().parent
assert "site-packages" in package.parts, f"imported {package}, not the installed wheel"
assert dx.native_available(), ops.load_error()
print(f"depgraph_ext from {package}: {ops.build_info()}")

torch.manual_seed(0)
model = (
    nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    .double()
    .eval()
)
x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
original = copy.deepcopy(model)
result = dx.prune(model, x, ratio=0.5, backend="native")
assert model[3].weight.shape == (16, 8, 3, 3) and model[7].weight.shape == (10, 16)
assert_scatter_back_equal(original, model, result.plan, x)
print(result.summary(max_rows=4))
sys.exit(0)
