"""Plans name what users find: every ``state_dict()`` key whose tensor changed (each name of a
tied tensor, marked as tied), the changed buffers ``state_dict()`` leaves out apart; and every
consumer of a plan (the oracle, JSON replay, slicing a state_dict or a checkpoint) keeps
working with them."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.pruning.apply import gather
from depgraph_ext.testing import assert_scatter_back_equal
from helpers import prune_and_check

F64 = torch.float64
T = pytest.importorskip("transformers")


def tied_llama(tie: bool = True):
    config = T.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    return T.LlamaForCausalLM(config).double().eval()


IDS = {"input_ids": torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))}


def sliced_state_dict(original: nn.Module, plan) -> dict:
    """What a tool that prunes a state_dict (or a checkpoint) from a plan does: every key the
    plan names is sliced, the others are copied."""
    return {k: gather(v, plan[k]) if k in plan else v for k, v in original.state_dict().items()}


def test_tied_embeddings_are_in_the_plan_under_both_names(backend):
    original = tied_llama()
    model = copy.deepcopy(original)
    with pytest.warns(dx.FunctionChangingWarning):  # the hidden width, under RMSNorms
        result = dx.prune(model, IDS, ratio=0.5, backend=backend)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert result.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert result.plan["lm_head.weight"] is result.plan["model.embed_tokens.weight"]
    assert result.shapes_after["lm_head.weight"] == tuple(model.lm_head.weight.shape)
    # a state_dict sliced from the plan is the pruned model's, key for key, bit for bit
    expected = model.state_dict()
    got = sliced_state_dict(original, result.plan)
    assert got.keys() == expected.keys()
    for k in got:
        assert torch.equal(got[k], expected[k]), k
    # parameters counted once in the summary
    assert "lm_head " not in result.summary(max_rows=None)


def test_a_tied_plan_replays_and_refuses_an_untied_model(tmp_path):
    original = tied_llama()
    model = copy.deepcopy(original)
    with pytest.warns(dx.FunctionChangingWarning):
        result = dx.prune(model, IDS, ratio=0.5)
    path = result.save_plan(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["tensors"]["lm_head.weight"]["tied_to"] == "model.embed_tokens.weight"
    fresh = copy.deepcopy(original)
    dx.apply_plan(fresh, path)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    untied = tied_llama(tie=False)
    with pytest.raises(dx.PruningError, match="lm_head.weight is tied to"):
        dx.apply_plan(untied, path)
    assert untied.lm_head.weight.shape == original.lm_head.weight.shape


class Shifted(nn.Module):
    """A per-channel offset the model computes from its config, kept out of the state_dict."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("shift", torch.linspace(0.5, 2.0, 8).view(1, 8, 1, 1), False)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x) + self.shift))


def test_buffers_outside_the_state_dict_are_listed_apart(tmp_path):
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    original = Shifted().double().eval()
    pruned, result = prune_and_check(original, x, ratio=0.5)
    assert "shift" not in result.plan and "shift" not in original.state_dict()
    assert result.non_persistent["shift"][1].numel() == 4 == pruned.shift.shape[1]
    assert set(result.plan) == {"conv1.weight", "conv1.bias", "conv2.weight"}
    assert_scatter_back_equal(original, pruned, result, x)  # (the result: the buffer too)
    path = result.save_plan(tmp_path / "plan.json")
    assert set(json.loads(path.read_text())["non_persistent"]) == {"shift"}
    fresh = copy.deepcopy(original)
    dx.apply_plan(fresh, path)
    assert torch.equal(fresh.shift, pruned.shift)
    assert torch.equal(fresh(x), pruned(x))


def test_plans_of_the_first_format_are_still_read(tmp_path):
    original = Shifted().double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    model = copy.deepcopy(original)
    result = dx.prune(model, x, ratio=0.5)
    data = json.loads(result.save_plan(tmp_path / "plan.json").read_text())
    data["format"] = "depgraph_ext.plan/1"  # one list of tensors, as that format had them
    data["tensors"] |= data.pop("non_persistent")
    fresh = copy.deepcopy(original)
    dx.apply_plan(fresh, data)
    assert torch.equal(fresh(x), model(x))
