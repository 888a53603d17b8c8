"""A replayed layer's couplings are its template's, renamed (graph/rule_replay.py), where what
the template's rules read beyond its ops' own values reads the same for it; otherwise its ops
are mapped one by one. Either way the couplings are those of every op's own rule: each test
builds them both ways and compares every array and record."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.errors import InternalError
from depgraph_ext.graph.coupling_model import _check_replayed_rules, build_couplings
from depgraph_ext.graph.dependency import (
    DependencyGraph,
    _attention_head_layouts,
    _norm_weights_of_stream,
    _square_recurrent_weights,
)
from depgraph_ext.graph.rules.registry import registered_rule
from depgraph_ext.graph.walk import non_persistent
from helpers import tiny_llama

IDS = {"input_ids": torch.tensor([[1, 5, 9, 13, 2, 7]]), "use_cache": False}


def rebuilt_op_by_op(dg: DependencyGraph):
    """The graph's couplings made again by every op's own rule, no call taken from another."""
    return build_couplings(
        dg.graph,
        dg.ignored,
        False,
        _norm_weights_of_stream(dg.model, dg.graph, dg.walk),
        {},
        non_persistent(dg.walk) & dg.graph.buffers.keys(),
        dg.free_outputs,
        _square_recurrent_weights(dg.graph, dg.walk),
        _attention_head_layouts(dg.graph, dg.walk),
        replay_rules=False,
    )


def graph_of(model, inputs) -> DependencyGraph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DependencyGraph(model, inputs)


def test_a_llamas_replayed_layers_take_their_couplings_from_the_first():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_llama(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=4,
        )
    dg = graph_of(model, IDS)
    assert dg.graph.replayed == 3
    assert dg.coupling_model.rules_replayed == 3
    whole = rebuilt_op_by_op(dg)
    assert whole.rules_replayed == 0
    _check_replayed_rules(dg.coupling_model, whole)  # (raises where anything differs)
    # each layer's attention call and kinds under its own module's name
    modules = [call.module for call in dg.coupling_model.attention]
    assert modules == [f"model.layers.{i}.self_attn" for i in range(4)]
    # and the comparison sees a difference: one coupling's operand moved
    whole.couplings.data[len(whole.couplings.data) // 2] += 1
    with pytest.raises(InternalError, match="couplings.data"):
        _check_replayed_rules(dg.coupling_model, whole)


class Scaled(nn.Module):
    """A linear layer times the sum of its input over the features: exact where the input's
    removed features are zero, function-changing where an op before made them non-zero."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        # (the sum's rule asks of the relu's result, made in the layer, what makes it
        # non-zero: the op before the layer that makes its input so)
        return self.lin(x) * torch.relu(x).sum(-1, keepdim=True)


class ScaledStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.blocks = nn.ModuleList(Scaled() for _ in range(3))

    def forward(self, x):
        h = self.blocks[0](self.inp(x))
        h = self.blocks[1](h)
        return self.blocks[2](torch.sigmoid(h))  # (non-zero where the units were removed)


def test_a_layer_whose_input_differs_in_what_makes_it_nonzero_maps_its_own_ops():
    dg = graph_of(ScaledStack().eval(), torch.randn(2, 8))
    cm = dg.coupling_model
    assert dg.graph.replayed == 2
    assert cm.rules_replayed == 1  # blocks.1; blocks.2's input comes from a sigmoid
    _check_replayed_rules(cm, rebuilt_op_by_op(dg))
    reductions = [(r.module, r.culprit_op) for r in cm.reductions]
    assert reductions == [("blocks.2", "aten.sigmoid.default")]


class Relu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.lin(x))


def test_a_users_rule_is_applied_to_every_layer():
    """A user's rule may read anything of the graph: the layers it maps are not replayed."""
    calls = []
    library = registered_rule("aten.relu")

    def counting(ctx, node):
        calls.append(node.module)
        return library(ctx, node)

    dx.register_rule("aten.relu.default", counting)
    try:
        model = nn.Sequential(*(Relu() for _ in range(3))).eval()
        dg = graph_of(model, torch.randn(2, 8))
    finally:
        dx.unregister_rule("aten.relu.default")
    assert dg.graph.replayed == 2
    assert dg.coupling_model.rules_replayed == 0
    assert calls == ["0", "1", "2"]
    _check_replayed_rules(dg.coupling_model, rebuilt_op_by_op(dg))


@torch.library.custom_op("dxtest::unmapped_in_layer", mutates_args=())
def unmapped(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


@unmapped.register_fake
def _(x):
    return torch.empty_like(x)


class Unmapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return unmapped(self.lin(x))  # (an op no rule maps)


def test_an_op_without_a_rule_is_named_in_every_layer():
    model = nn.Sequential(*(Unmapped() for _ in range(3))).eval()
    with pytest.warns(dx.OpaqueOpWarning) as warned:
        dg = DependencyGraph(model, torch.randn(2, 8))
    assert dg.graph.replayed == 2
    assert dg.coupling_model.rules_replayed == 0
    assert [op.module for op in dg.opaque_ops] == ["0", "1", "2"]
    named = [str(w.message) for w in warned if w.category is dx.OpaqueOpWarning]
    assert [f"unmapped_in_layer.default in module {i} at" in m for i, m in enumerate(named)] == [
        True
    ] * 3
    _check_replayed_rules(dg.coupling_model, rebuilt_op_by_op(dg))


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_moe_layers_take_their_routers_and_expert_positions_from_the_first(device):
    T = pytest.importorskip("transformers")
    config = T.Qwen3MoeConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = T.Qwen3MoeForCausalLM(config).eval()
    inputs = {"input_ids": torch.randint(0, 64, (1, 8), device=device), "use_cache": False}
    dg = graph_of(model, inputs)
    cm = dg.coupling_model
    assert cm.rules_replayed == 3
    assert [module for _, module in cm.routers] == [f"model.layers.{i}.mlp.gate" for i in range(4)]
    _check_replayed_rules(cm, rebuilt_op_by_op(dg))
    experts = [g for g in dg.groups if g.kind == "experts"]
    assert len(experts) == 4
