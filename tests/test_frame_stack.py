"""The pipeline runs from the start of a fresh chunk of CPython's frame stack
(graph/frame_stack.py): a trace's time must not depend on where the caller's stack ends
(timings are the bench's; these tests check the mechanism)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.graph import frame_stack


def test_the_call_frame_is_larger_than_a_chunk_and_passes_everything_through():
    code = frame_stack._call_in_fresh_chunk.__code__
    assert code.co_nlocals * 8 > 16 * 1024  # CPython's DATA_STACK_CHUNK_SIZE, in bytes
    assert frame_stack.call_in_fresh_chunk(lambda a, b=0: (a, b), 1, b=2) == (1, 2)
    with pytest.raises(KeyError, match="raised inside"):
        frame_stack.call_in_fresh_chunk(lambda: {}["raised inside"])

    @frame_stack.in_fresh_chunk
    def documented(x):
        """Its own docstring."""
        return x + 1

    assert documented(1) == 2 and documented.__doc__ == "Its own docstring."


class Spy(nn.Module):
    """Notes whether its forward runs below the large frame."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
        self.below_large_frame: list[bool] = []

    def forward(self, x):
        frame, large = sys._getframe(), frame_stack._call_in_fresh_chunk.__code__
        while frame is not None and frame.f_code is not large:
            frame = frame.f_back
        self.below_large_frame.append(frame is not None)
        return self.fc2(torch.relu(self.fc1(x)))


def test_prune_the_pruner_and_the_graph_run_the_model_from_a_fresh_chunk():
    model = Spy()
    x = torch.randn(3, 4)
    dx.DependencyGraph(model, x)
    dx.Pruner(model, x, ratio=0.5, iterative_steps=2).step()
    dx.prune(model, x, ratio=0.5)
    assert model.below_large_frame and all(model.below_large_frame)
    model.below_large_frame.clear()
    model(x)
    assert model.below_large_frame == [False]
