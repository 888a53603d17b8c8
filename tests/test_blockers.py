"""What keeps units whole is named: the op and line of the model's code whose rule keeps
them, an op without a rule, the model's inputs and outputs, ``ignore``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_more_ops import FixedRows
from test_rules import Mystery
from torch.nn.utils import parametrize

import depgraph_ext as dx


class Symmetric(nn.Module):
    """A parametrization that makes a square weight symmetric by position (``triu``): its rows
    and columns cannot be cut apart, and the rule of ``triu`` keeps them."""

    def forward(self, w):
        return w.triu() + w.triu(1).transpose(-1, -2)


def _symmetric_mlp() -> nn.Module:
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    parametrize.register_parametrization(m[2], "weight", Symmetric())
    return m


def test_a_model_nothing_of_which_prunes_is_refused_naming_the_op_that_keeps_it(backend):
    model = _symmetric_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(dx.NoPrunableGroupsError) as refusal:
        dx.prune(model, torch.randn(3, 8), ratio=0.5, backend=backend)
    message = str(refusal.value)
    lines = message.splitlines()
    # the op, its module and the model's line that ran it, first; then the output and input
    assert "op aten.triu.default in module 2.parametrizations.weight.0 at" in lines[1]
    assert "test_blockers.py" in lines[1] and "w.triu()" in lines[1]
    assert "0.weight[0]" in lines[1]
    assert any("the model's output" in line and "4.weight[0]" in line for line in lines[2:])
    assert any("positional input 0" in line and "0.weight[1]" in line for line in lines[2:])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class Kernel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3)
        self.head = nn.Linear(6, 3)
        self.side = nn.Linear(6, 6)

    def forward(self, x):
        h = F.relu(self.conv(x)).mean((2, 3))
        return self.head(h + self.side(h).flip(1))


def test_each_cause_is_named_for_the_dims_it_keeps(backend):
    dg = dx.DependencyGraph(Kernel(), torch.randn(1, 2, 5, 5), backend=backend)
    whats = lambda *args: [b.what for b in dg.blockers(*args)]  # noqa: E731
    [conv_in] = whats("conv.weight", 1)
    assert conv_in.startswith("the model's positional input 0")
    [taps] = whats("conv.weight", 2)  # a kernel's taps: the convolution's own size
    assert taps.startswith("op aten.convolution.default in module conv at")
    assert taps.endswith("whose rule allows no pruning there")
    [out] = whats("head.weight", 0)
    assert out.startswith("the model's output")
    # flip reverses the channels the conv, the side layer and the head's input share
    flips = whats("conv.weight", 0)
    assert any(w.startswith("op aten.flip.default in module <root> at") for w in flips)
    assert any("self.side(h).flip(1)" in w for w in flips)
    everything = dg.blockers()
    assert {b.node is not None for b in everything} == {True, False}
    assert everything[0].node is not None  # ops first
    [by_flip] = [b for b in everything if b.what.startswith("op aten.flip")]
    assert {"conv.weight[0]", "side.weight[0]", "side.weight[1]", "head.weight[1]"} <= set(
        by_flip.members
    )


def test_a_prunable_dim_has_no_blocker_and_ignore_is_one(backend):
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    dg = dx.DependencyGraph(mlp, torch.randn(2, 4), backend=backend)
    assert dg.blockers("0.weight", 0) == []  # the hidden width prunes
    ignored = dx.DependencyGraph(mlp, torch.randn(2, 4), ignore=["2.weight"], backend=backend)
    [why] = ignored.blockers("0.weight", 0)
    assert why.what == "2.weight is ignored" and why.node is None
    assert set(why.members) == {"0.weight[0]", "0.bias[0]", "2.weight[1]"}
    with pytest.raises(dx.InvalidArgumentError, match="'nope' is no parameter"):
        dg.blockers("nope")
    with pytest.raises(dx.InvalidArgumentError, match="0.weight has 2 dims, not a dim 2"):
        dg.blockers("0.weight", 2)


def test_an_op_without_a_rule_is_named_with_its_reason(backend):
    with pytest.warns(dx.OpaqueOpWarning):
        dg = dx.DependencyGraph(Mystery(), torch.randn(1, 2, 3, 3), backend=backend)
    [why] = dg.blockers("a.weight", 0)
    assert why.what.startswith("op dxtest.mystery.default in module <root> at")
    assert why.what.endswith("(no rule for this op)")
    assert dg.blockers("b.weight", 0) == []


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 4, 4).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v)
        return self.out(h.transpose(1, 2).reshape(b, n, 16))


def test_a_width_whose_heads_prune_is_kept_in_part(backend):
    dg = dx.DependencyGraph(Heads(), torch.randn(2, 5, 16), backend=backend)
    causes = dg.blockers("qkv.weight", 0)
    [attention] = [b for b in causes if "scaled_dot_product" in b.what]  # a head's channels
    [split] = [b for b in causes if b.what.startswith("op aten.unbind.int")]  # q, k and v
    assert split.members == ("qkv.bias[0] (in part)", "qkv.weight[0] (in part)")
    assert "qkv.weight[0] (in part)" in attention.members
    assert "out.weight[1] (in part)" in attention.members
    assert any(g.kind == "heads" for g in dg.groups)  # while the heads prune


def test_a_size_the_code_fixes_is_named_among_the_causes_once_validation_found_it():
    with pytest.warns(dx.FixedSizeWarning), pytest.raises(dx.NoPrunableGroupsError) as refusal:
        dx.prune(FixedRows(), torch.randn(3, 4), ratio=0.5)
    message = str(refusal.value)
    assert "the last the plan's validation found: the pruned shapes do not run at op" in message
    causes = message.split("What keeps every width:")[1].splitlines()[1:]
    assert causes[0].startswith("  - a size the model's code fixes (found by tracing a plan")
    assert "fc.weight[0]" in causes[0] and "out.weight[1]" in causes[0]
    assert any("the model's output" in line for line in causes)


class _Flipping(nn.Module):
    """A layer whose one line of code every copy of it runs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x).flip(-1)


def test_one_line_every_layer_runs_is_one_cause_naming_its_modules(backend):
    model = nn.Sequential(*[_Flipping() for _ in range(5)])
    dg = dx.DependencyGraph(model, torch.randn(2, 8), backend=backend)
    [flip] = [b for b in dg.blockers() if "aten.flip" in b.what]
    assert flip.what.startswith("op aten.flip.default in modules 0, 1, 2 +2 at ")
    assert flip.what.endswith("(return self.fc(x).flip(-1)), whose rule allows no pruning there")
    assert {f"{i}.fc.weight[0]" for i in range(5)} <= set(flip.members)
    assert flip.node == next(n.index for n in dg.graph.nodes if n.name == "aten.flip.default")
