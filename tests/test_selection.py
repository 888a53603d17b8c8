"""Selection: local vs global, caps, per-module ratios, iterative steps, targets, MACs counting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import depgraph_ext as dx
from depgraph_ext.pruning.criteria import unit_scores
from depgraph_ext.pruning.select import Selection, select
from helpers import BACKENDS, assert_same_state, prune_and_check, state_of


class Chain(nn.Module):
    """Three independent groups of different widths (l1 out: 16, l2 out: 8, l3 out: 12)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(6, 16), nn.Linear(16, 8), nn.Linear(8, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(F.relu(self.l3(F.relu(self.l2(F.relu(self.l1(x)))))))


def make_chain(scale_l2: float = 1.0) -> Chain:
    torch.manual_seed(0)
    m = Chain().double()
    with torch.no_grad():
        m.l2.weight.mul_(scale_l2)
        m.l2.bias.mul_(scale_l2)
    return m


X = torch.randn(5, 6, dtype=torch.float64)


def widths(m: Chain) -> tuple[int, int, int]:
    return m.l1.out_features, m.l2.out_features, m.l3.out_features


def test_local_removes_the_same_fraction_from_every_group():
    m = make_chain(scale_l2=0.01)
    prune_and_check(m, X, ratio=0.5)
    dx.prune(m, X, ratio=0.5)
    assert widths(m) == (8, 4, 6)


def test_global_lets_groups_compete_on_normalised_scores():
    # Shrink a few units of l2 far below everything else: in global pruning with plain sums,
    # they go first, and the total removed is the ratio of all units.
    m = make_chain()
    with torch.no_grad():
        m.l2.weight[:6].mul_(1e-3)
        m.l2.bias[:6].mul_(1e-3)
        m.l3.weight[:, :6].mul_(1e-3)
    imp = dx.MagnitudeImportance(2, normalization="max")
    result = dx.prune(m, X, ratio=0.25, global_pruning=True, importance=imp)
    assert sum(widths(m)) == 36 - 9  # floor(0.25 * 36) across the kind
    assert m.l2.out_features == 2  # the six weak units of l2 and one more
    assert result.units["channels"] == (36, 27)


def test_global_selection_matches_a_direct_ranking(backend):
    m = make_chain()
    dg = dx.DependencyGraph(m, X, backend=backend)
    scores = unit_scores(dg, dx.MagnitudeImportance(2, normalization="sum"))
    keep = select(dg, scores, Selection(ratio=0.4, global_pruning=True))
    s = scores.numpy()
    candidates = np.concatenate([g.unit_ids[g.prunable] for g in dg.groups])
    ranked = candidates[np.lexsort((candidates, s[candidates]))]
    expected = np.ones_like(keep)
    expected[ranked[: int(0.4 * candidates.shape[0])]] = False
    assert np.array_equal(keep, expected)


def test_max_ratio_caps_every_group_in_global_pruning():
    m = make_chain()
    with torch.no_grad():
        m.l2.weight.mul_(1e-4)
        m.l2.bias.mul_(1e-4)
        m.l3.weight.mul_(1e-4)
    dx.prune(
        m,
        X,
        ratio=0.3,
        global_pruning=True,
        max_ratio=0.5,
        importance=dx.MagnitudeImportance(2, normalization=None),
    )
    assert m.l2.out_features == 4  # without the cap l2 would lose 7 of 8
    assert sum(widths(m)) == 36 - int(0.3 * 36)


def test_min_units_is_kept_by_every_group():
    m = make_chain()
    dx.prune(m, X, ratio=0.9, min_units=5)
    assert min(widths(m)) == 5 and widths(m) == (5, 5, 5)


def test_round_to_in_global_pruning():
    m = make_chain()
    dx.prune(m, X, ratio=0.5, global_pruning=True, round_to=4)
    assert all(w % 4 == 0 for w in widths(m))


def test_per_module_ratios_override_the_kind_and_the_default():
    m = make_chain()
    dx.prune(m, X, ratio=0.5, ratios={"l2": 0.0, "l3": 0.25})
    assert widths(m) == (8, 8, 9)


def test_per_module_ratio_by_enclosing_module_name():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Chain()
            self.tail = nn.Linear(3, 2)

        def forward(self, x):
            return self.tail(self.block(x))

    m = Outer().double()
    dx.prune(m, X, ratio=0.5, ratios={"block": 0.25})
    assert widths(m.block) == (12, 6, 9)


def test_unknown_module_in_ratios_is_refused_and_model_untouched():
    m = make_chain()
    before = state_of(m)
    with pytest.raises(dx.InvalidArgumentError, match="neither group kinds"):
        dx.prune(m, X, ratios={"l9": 0.5})
    assert_same_state(before, state_of(m))


def test_iterative_steps_recompute_scores_and_reach_the_ratio():
    m = make_chain()
    calls = []

    class Counting(dx.MagnitudeImportance):
        def scores(self, dg):
            calls.append(dg.resolution.num_units)
            return super().scores(dg)

    result = dx.prune(m, X, ratio=0.5, iterative_steps=3, importance=Counting(2))
    assert len(calls) == 3 and calls[0] > calls[1] > calls[2]  # traced and scored each step
    assert widths(m) == (8, 4, 6)
    assert result.steps == 3
    # the composed plan maps to the original's coordinates: replay it on a fresh original
    fresh = make_chain()
    original = copy.deepcopy(fresh)
    from depgraph_ext.io.plans import plan_to_dict

    dx.apply_plan(fresh, plan_to_dict(result))
    for (n, a), (_, b) in zip(fresh.state_dict().items(), m.state_dict().items()):
        assert torch.equal(a, b), n
    from depgraph_ext.testing import assert_scatter_back_equal

    assert_scatter_back_equal(original, m, result.plan, X)


def test_pruner_object_steps_with_training_in_between():
    m = make_chain()
    pruner = dx.Pruner(m, X, ratio=0.5, iterative_steps=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    first = pruner.step()
    assert widths(m) == (12, 6, 9) and not pruner.done
    opt.zero_grad()
    m(X).square().mean().backward()
    opt.step()  # training changes scores between steps
    pruner.step()
    assert widths(m) == (8, 4, 6) and pruner.done
    assert pruner.result().params_before == first.params_before
    with pytest.raises(dx.PruningError, match="steps of this pruner are done"):
        pruner.step()


def test_a_failing_later_step_rolls_back_every_step(monkeypatch):
    from depgraph_ext.pruning import validate

    m = make_chain()
    before = state_of(m)
    real = validate.checked_plan
    count = {"n": 0}

    def fail_second(*a, **k):
        count["n"] += 1
        if count["n"] == 2:
            raise RuntimeError("injected")
        return real(*a, **k)

    monkeypatch.setattr(validate, "checked_plan", fail_second)
    with pytest.raises(RuntimeError, match="injected"):
        dx.prune(m, X, ratio=0.5, iterative_steps=2)
    assert_same_state(before, state_of(m))


@pytest.mark.parametrize("target", [0.5, 0.31])
def test_target_params_fraction_is_met_as_closely_as_units_allow(target):
    m = make_chain()
    total = dx.count_params(m)
    result = dx.prune(m, X, target_params=target)
    after = dx.count_params(m)
    assert after <= target * total and result.params_after == after
    # one unit fewer removed would exceed the target: the smallest ratio that reaches it
    assert after > target * total - 2 * (16 + 12 + 1)


def test_target_macs_count_and_iterative():
    m = make_chain()
    _, macs = dx.count_params_and_macs(m, X)
    result = dx.prune(m, X, target_macs=macs // 3, iterative_steps=2)
    _, after = dx.count_params_and_macs(m, X)
    assert after <= macs // 3 and result.macs_after == after


def test_unreachable_target_is_refused_and_model_untouched():
    m = make_chain()
    before = state_of(m)
    with pytest.raises(dx.InvalidArgumentError, match="cannot be reached"):
        dx.prune(m, X, target_params=10)
    assert_same_state(before, state_of(m))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=0.5, target_params=0.5), "either ratio or"),
        (dict(target_params=1.5), "fraction of the original"),
        (dict(target_macs=-3), "positive count"),
        (dict(iterative_steps=0), "iterative_steps"),
        (dict(max_ratio=1.5), "max_ratio"),
        (dict(min_units=0), "min_units"),
        (dict(global_pruning="yes"), "global_pruning"),
        (dict(optimizer="adam"), "optimizer must be"),
    ],
)
def test_bad_selection_arguments_are_refused(kwargs, match):
    m = make_chain()
    before = state_of(m)
    with pytest.raises(dx.InvalidArgumentError, match=match):
        dx.prune(m, X, **kwargs)
    assert_same_state(before, state_of(m))


# -- MACs ----------------------------------------------------------------------------------------
def test_macs_of_convs_linears_and_grouped_convs():
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, groups=2),
        nn.ConvTranspose2d(4, 6, 2, stride=2),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 10),
    )
    params, macs = dx.count_params_and_macs(m, torch.randn(2, 3, 8, 8))
    expected = 2 * (6 * 6 * 8 * 3 * 9 + 4 * 4 * 4 * 4 * 9 + 4 * 4 * 4 * 6 * 4 + 384 * 10)
    assert macs == expected
    assert params == sum(p.numel() for p in m.parameters())


def test_macs_count_attention_matmuls():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    model = LlamaForCausalLM(cfg).eval()
    tokens = 7
    _, macs = dx.count_params_and_macs(model, torch.randint(0, 100, (1, tokens)))
    per_token = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 64 * 100
    attention = 2 * 4 * tokens * tokens * (16 + 16)  # scores and weighted sum, per layer
    assert macs == per_token * tokens + attention


def test_macs_of_multihead_attention_and_lstm():
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    _, macs = dx.count_params_and_macs(mha, (x, x, x))
    assert macs == 2 * 5 * (4 * 16 * 16) + 2 * 2 * 5 * 5 * 16
    lstm = nn.LSTM(8, 16).eval()
    _, macs = dx.count_params_and_macs(lstm, torch.randn(5, 3, 8))
    assert macs == 5 * 3 * (64 * 8 + 64 * 16)


def test_count_does_not_copy_or_change_the_model():
    m = make_chain()
    before = state_of(m)
    dx.count_params_and_macs(m, X)
    assert_same_state(before, state_of(m))


def test_predicted_macs_equal_the_pruned_models_count():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 100, (1, 7))
    result = dx.prune(model, ids, ratio=0.5)
    params, macs = dx.count_params_and_macs(model, ids)
    assert (result.params_after, result.macs_after) == (params, macs)
    assert macs < result.macs_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_pruning_plans_agree_across_backends(backend):
    m = make_chain()
    prune_and_check(m, X, ratio=0.4, global_pruning=True)


def test_summary_lists_layer_params_units_per_kind_and_macs():
    from test_importance import X as IMG
    from test_importance import make_net

    model = make_net()
    result = dx.prune(model, IMG, ratio=0.5)
    text = result.summary()
    b1 = next(line for line in text.splitlines() if line.startswith("b1 "))
    # BatchNorm: weight + bias are parameters (the running statistics are buffers)
    assert b1.split()[-2:] == ["16", str(2 * model.b1.num_features)]
    before, after = result.units["channels"]
    assert f"channels: {before:,} -> {after:,} units" in text
    _, macs = dx.count_params_and_macs(model, IMG)
    assert f"-> {macs:,} (" in text and result.macs_after == macs


# -- groups a selection cannot shrink are not scored -------------------------------------------
def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), torch.randint(0, 100, (1, 7))


@pytest.mark.parametrize("backend", BACKENDS)
def test_scoring_only_leaves_other_groups_unscored_and_the_rest_unchanged(backend):
    model, ids = small_llama()
    dg = dx.DependencyGraph(model, ids, backend=backend)
    full = unit_scores(dg, "l2").numpy()
    wanted = np.array([g.kind != "hidden" for g in dg.groups])
    assert wanted.any() and not wanted.all()
    part = unit_scores(dg.scoring_only(wanted), "l2").numpy()
    for group, w in zip(dg.groups, wanted):
        ids_ = group.unit_ids[group.prunable]
        if w:
            np.testing.assert_array_equal(part[ids_], full[ids_])
        else:
            assert np.isnan(part[group.unit_ids]).all()
    assert dg.units_to_score is None  # a new graph: the first one still scores everything


def captured_members(monkeypatch):
    """(parameter name, dim) of every slice the scorers read, recorded from scored_slices."""
    from depgraph_ext.pruning import importance

    seen: list[tuple[str, int]] = []
    original = importance.scored_slices

    def spy(dg):
        out = original(dg)
        seen.extend((s.name, s.dim) for s in out)
        return out

    monkeypatch.setattr(importance, "scored_slices", spy)
    return seen


def test_a_kind_of_ratio_zero_is_not_read_for_scoring(monkeypatch):
    model, ids = small_llama()
    seen = captured_members(monkeypatch)
    dx.prune(model, ids, ratio=0.5, ratios={"hidden": 0.0})
    # The residual stream (hidden kind) is the embedding's dim 1 and every projection's input
    # dim: none of it is read; heads and MLP neurons are.
    assert ("model.embed_tokens.weight", 1) not in seen
    assert ("model.layers.0.mlp.gate_proj.weight", 1) not in seen
    assert ("model.layers.0.mlp.gate_proj.weight", 0) in seen
    assert ("model.layers.0.self_attn.o_proj.weight", 1) in seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(ratio=0.5, ratios={"hidden": 0.0}),
        dict(ratio=0.4, ratios={"hidden": 0.0, "model.layers.1": 0.0}, global_pruning=True),
        dict(ratios={"hidden": 0.0, "heads": 0.0}, target_params=0.8),
        dict(ratio=0.5, ratios={"hidden": 0.0}, iterative_steps=2),
    ],
)
def test_skipping_unshrinkable_groups_changes_no_result(monkeypatch, backend, kwargs):
    from depgraph_ext.graph.dependency import DependencyGraph

    model, ids = small_llama()
    reference = copy.deepcopy(model)
    dx.prune(model, ids, backend=backend, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(DependencyGraph, "scoring_only", lambda self, groups: self)  # every unit
        dx.prune(reference, ids, backend=backend, **kwargs)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert any(
        ours[k].shape != v.shape for k, v in copy.deepcopy(small_llama()[0]).state_dict().items()
    )  # something was pruned
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name


def test_planned_costs_match_the_counts_of_the_pruned_model_with_tied_weights():
    """What targets bisect on: ``PlannedCosts.at(keep)`` is the pruned model's own count of
    parameters (a weight two modules share counted once) and MACs, for any keep mask."""
    import time
    import warnings

    from transformers import LlamaConfig, LlamaForCausalLM

    from depgraph_ext.counting import PlannedCosts
    from depgraph_ext.pruning.pruner import apply_step
    from depgraph_ext.pruning.validate import checked_plan

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 100, (1, 7))
    dg = dx.DependencyGraph(model, ids)
    costs = PlannedCosts(dg)
    assert costs.at(None) == dx.count_params_and_macs(model, ids)
    keep = np.ones(dg.resolution.num_units, dtype=bool)
    rng = np.random.default_rng(0)
    for group in dg.groups:  # a different share of every group, chosen at random
        prunable = group.unit_ids[group.prunable]
        drop = rng.choice(prunable, size=rng.integers(1, len(prunable)), replace=False)
        keep[drop] = False
    predicted = costs.at(keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = apply_step(dg, checked_plan(dg, keep), {}, time.perf_counter())
    assert predicted == dx.count_params_and_macs(model, ids)
    assert result.params_after == predicted[0] < result.params_before
