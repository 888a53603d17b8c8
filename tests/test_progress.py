"""Progress bars: drawn on long stages when asked (or on a terminal), never with progress=False."""

from __future__ import annotations

import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext import progress


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_bars_when_asked(monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    dx.prune(net(), torch.randn(2, 4), ratio=0.5, progress=True)
    err = capsys.readouterr().err
    assert "depgraph_ext: trace" in err and "depgraph_ext: check the plan" in err


def test_no_bars_when_off_or_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY", 0.0)
    dx.prune(net(), torch.randn(2, 4), ratio=0.5, progress=False)
    dx.prune(net(), torch.randn(2, 4), ratio=0.5)  # stderr is captured: not a terminal
    assert capsys.readouterr().err == ""
    assert not progress.Progress(None).enabled
