"""One model, parameters on several devices: each is pruned where it is. Without a GPU the
second device is meta (weights that do not exist); scores that need no weights are used."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from helpers import BACKENDS


class TwoDevices(nn.Module):
    """a on the CPU, b and c on meta; the activation moves between them in forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 6).to("meta")
        self.c = nn.Linear(6, 3).to("meta")

    def forward(self, x):
        h = torch.relu(self.a(x)).to("meta")
        return self.c(torch.relu(self.b(h)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_parameter_is_pruned_on_its_own_device(backend):
    torch.manual_seed(0)
    model = TwoDevices()
    original = copy.deepcopy(model)
    params = dict(model.named_parameters())
    result = dx.prune(
        model, torch.randn(2, 4), ratio=0.5, importance=dx.RandomImportance(seed=1), backend=backend
    )
    assert (model.a.out_features, model.b.in_features, model.b.out_features) == (4, 4, 3)
    for name, p in model.named_parameters():
        assert p is params[name] and p.device == params[name].device
    kept = result.plan["a.weight"][0]
    assert torch.equal(model.a.weight, original.a.weight[kept])
    assert torch.equal(model.a.bias, original.a.bias[kept])
    assert model.b.weight.shape == (3, 4) and model.b.weight.device.type == "meta"
    assert model(torch.randn(2, 4)).shape == (2, 3)


def test_magnitude_on_meta_weights_is_refused_and_nothing_changes():
    model = TwoDevices()
    before = {n: (p.shape, p.device) for n, p in model.named_parameters()}
    with pytest.raises(dx.PruningError, match="meta device"):
        dx.prune(model, torch.randn(2, 4), importance="l2")
    assert before == {n: (p.shape, p.device) for n, p in model.named_parameters()}


@pytest.mark.parametrize("torch_here", [False, True])
def test_the_gpu_check_says_in_one_line_why_it_has_nothing_to_check(torch_here):
    """``make gpu-check`` runs the Makefile's python3: without torch there (this machine's),
    or with torch and no GPU, it says so in one line and exits 0, with no traceback."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "bench", "gpu_check.py")
    hide = "" if torch_here else "import sys; sys.modules['torch'] = None; "
    run = f"{hide}import runpy; runpy.run_path({script!r}, run_name='__main__')"
    if torch_here and torch.cuda.is_available():
        pytest.skip("a GPU is here: the check would run")
    done = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no ")
    assert ("no GPU here" if torch_here else "no torch in") in lines[0]
