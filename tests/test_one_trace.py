"""A prune traces the model once when the model's code cannot have fixed a pruned size: it read
no size the plan prunes, passed no integer to an op whose tensors the plan prunes, and read no
value (graph/size_watch.py). Otherwise the pruned shapes are traced again, as before, and a
size the code fixes is still found. (Every other test of the suite also traces the plans that
skip the second trace, and fails if one does not run: conftest.py.)"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.pruning import validate
from helpers import prune_and_check


class SmallResNet(nn.Module):
    """conv/bn/relu, a residual block, a strided conv, pooling, flatten, a classifier: the code
    passes nothing but tensors, dims and spatial parameters."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 1)
        )
        self.down = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2), nn.BatchNorm2d(24))
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(torch.flatten(h, 1))


class ReadsItsWidth(SmallResNet):
    """The same, flattening with a size it reads: ``h.view(h.shape[0], h.shape[1])``."""

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(h.view(h.shape[0], h.shape[1]))


class FixesItsWidth(SmallResNet):
    """The same, flattening to a width it fixes: ``h.view(-1, 24)``."""

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(h.view(-1, 24))


class ReadsAValue(SmallResNet):
    """The same, with a branch on a value: ``if h.mean() > 100``."""

    def forward(self, x):
        h = self.stem(x)
        if h.mean() > 100:  # never, but the code looked at the values
            h = -h
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(torch.flatten(h, 1))


X = torch.randn(2, 3, 8, 8, dtype=torch.float64)


def forwards_during_prune(model, **options) -> tuple[int, dx.PruneResult]:
    """How many times the model's forward ran during one prune, and the result."""
    calls = []
    handle = model.register_forward_pre_hook(lambda *args: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, X, ratio=0.5, **options)
    handle.remove()
    return len(calls), result


@pytest.mark.parametrize(
    "make, traces", [(SmallResNet, 1), (ReadsItsWidth, 2), (FixesItsWidth, 2), (ReadsAValue, 2)]
)
def test_one_trace_unless_the_code_saw_a_pruned_size(make, traces, monkeypatch):
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model = make().double().eval()
    count, result = forwards_during_prune(model)
    assert count == traces
    assert result.plan and model(X).shape == (2, 5)


def test_a_size_the_code_fixes_is_still_found():
    torch.manual_seed(0)
    model = FixesItsWidth().double().eval()
    with pytest.warns(dx.FixedSizeWarning, match="aten.view"):
        pruned, result = prune_and_check(model, X)
    assert pruned.down[0].out_channels == 24  # the width the code fixes is kept
    assert pruned.stem[0].out_channels < 16
