"""Plan validation learns the sizes a model's code fixes from one trace where they do not
depend on each other: once a plan failed its validation (the first one is not guided: most
pass), the guided trace stands in for ops that fail, gives deviating ops their planned
results and goes on, so a model with many fixed sizes (MaxViT's attention modules, one
hard-coded view per branch) is planned in a few validation traces, not one per fixed size.
Each test compares against validation that learns one failure per trace (the guide switched
off), which must give the same plan."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.graph.dependency import DependencyGraph
from depgraph_ext.pruning import criteria, validate
from depgraph_ext.pruning import importance as imp_module
from helpers import prune_and_check, same_bits
from nets import MaxViT

F64 = torch.float64


def prune_counting(model, x, monkeypatch, **options):
    """Prune; returns the result, the validation traces it took (whether each was guided)
    and the fixed sizes warned (the suite's check of plans that need no trace is off: its
    traces are not the prune's)."""
    traces = []
    trace_pruned = DependencyGraph.trace_pruned

    def counted(self, *args, **kwargs):
        traces.append(kwargs.get("guide") is not None)
        return trace_pruned(self, *args, **kwargs)

    with monkeypatch.context() as m, warnings.catch_warnings(record=True) as caught:
        m.setattr(DependencyGraph, "trace_pruned", counted)
        m.setattr(validate, "CHECK_SKIPPED_TRACES", False)
        warnings.simplefilter("always")
        result = dx.prune(model, x, **options)
    fixed = [w for w in caught if issubclass(w.category, dx.FixedSizeWarning)]
    return result, traces, fixed


def unguided(monkeypatch):
    """Validation as it was: every plan traced, and the first failure of a trace ends it."""
    monkeypatch.setattr(validate, "untraced_failures", lambda dg, plan: None)
    monkeypatch.setattr(validate._Guide, "ran", lambda self, *args: None)
    monkeypatch.setattr(validate._Guide, "failed", lambda self, *args: None)


def same_plans(a, b) -> bool:
    return a.keys() == b.keys() and all(
        a[n].keys() == b[n].keys() and all(torch.equal(a[n][d], b[n][d]) for d in a[n]) for n in a
    )


class Branches(nn.Module):
    """``n`` branches, each splitting its 12 features into 2 groups of 6 by constants of the
    code (``view(b, 2, 6)``): every branch fixes its own size; none depends on another."""

    def __init__(self, n: int = 6, silent: bool = False) -> None:
        super().__init__()
        self.silent = silent
        self.ins = nn.ModuleList(nn.Linear(4, 12) for _ in range(n))
        self.outs = nn.ModuleList(nn.Linear(6, 8) for _ in range(n))
        self.finals = nn.ModuleList(nn.Linear(8, 3) for _ in range(n))  # 8 prunable: no view
        # the code reads a value of its input first: "number", bool(...) (a decision a trace
        # of the pruned shapes replays), or "list", .tolist() (none)
        self.reads = ""

    def forward(self, x):
        if self.reads == "number" and not bool((x != 0).any()):
            return x.new_zeros(3)
        if self.reads == "list" and not any((x != 0).any(1).tolist()):
            return x.new_zeros(3)
        y = 0
        for a, b, c in zip(self.ins, self.outs, self.finals):
            h = torch.relu(a(x))
            if self.silent:  # reshape(-1, 6) runs on any even width, with other rows
                y = y + c(torch.relu(b(h.reshape(-1, 6)))).sum(0)
            else:
                y = y + c(torch.relu(b(h.view(x.shape[0], 2, 6).sum(1)))).sum(0)
        return y


@pytest.mark.parametrize("silent", [False, True], ids=["failing", "deviating"])
def test_independent_fixed_sizes_are_learnt_from_one_trace(silent, monkeypatch):
    """Six branches that each fix a size: the first validation finds one, the next (guided)
    the other five (the ops that fail are stood in for; the ones that run to other shapes
    get the planned ones), and the plan is the one six rounds of one failure each give."""
    x = torch.randn(4, 4, dtype=F64)
    model = Branches(silent=silent).double()
    result, traces, fixed = prune_counting(copy.deepcopy(model), x, monkeypatch, ratio=0.5)
    # (no trace at all: the views' sizes, literals, computed with the plan's sizes are not
    # the planned ones, which tells the failures a trace would find: every branch at once)
    assert traces == []
    unguided(monkeypatch)
    reference, reference_traces, reference_fixed = prune_counting(model, x, monkeypatch, ratio=0.5)
    assert len(reference_traces) >= 6  # one failure per trace
    assert len(fixed) == len(reference_fixed)
    assert same_plans(result.plan, reference.plan)


@pytest.mark.parametrize("reads", ["number", "list"])
def test_a_model_that_reads_values_before_its_fixed_sizes_is_guided(reads, monkeypatch):
    """A value the code reads before any stand-in is the model's own: the guided trace
    learns every branch's fixed size at once, as for a model that reads none. A number of a
    decision the pruned trace would replay (``bool(x)``) needs no trace at all, as there."""
    x = torch.randn(4, 4, dtype=F64)
    model = Branches().double()
    model.reads = reads
    result, traces, fixed = prune_counting(copy.deepcopy(model), x, monkeypatch, ratio=0.5)
    if reads == "number":
        assert traces == []
    else:
        assert traces == [False, True, True, True]  # (its last plan traced too)
    unguided(monkeypatch)
    reference, reference_traces, reference_fixed = prune_counting(model, x, monkeypatch, ratio=0.5)
    assert len(reference_traces) >= 7
    assert len(fixed) == len(reference_fixed)
    assert same_plans(result.plan, reference.plan)


def test_a_model_on_the_meta_device_learns_its_fixed_sizes_from_one_guided_trace(monkeypatch):
    """A model too large for a real trace (here: on meta) is checked on fake tensors: the
    guided fake trace that stood in for failing ops reports them as a real trace does."""
    model, x = Branches(), torch.randn(4, 4)
    meta, meta_x = copy.deepcopy(model).to("meta"), x.to("meta")
    torch.manual_seed(0)
    result, traces, fixed = prune_counting(meta, meta_x, monkeypatch, importance="random")
    torch.manual_seed(0)
    real, real_traces, real_fixed = prune_counting(model, x, monkeypatch, importance="random")
    assert traces == real_traces == []  # (known from the views' sizes, as above)
    assert [str(w.message) for w in fixed] == [str(w.message) for w in real_fixed]
    assert same_plans(result.plan, real.plan)


def test_a_maxvit_like_net_is_planned_in_two_validation_traces(monkeypatch):
    """MaxViT-like attention that fixes its head count (a tuple of the module's own numbers,
    which no plan sets) in some modules' sizes and merges the heads back to its input's width:
    those modules fail twice, the second failure only once the heads are kept. The first
    round is known from the reshapes' sizes without a trace; the next plan's trace, its
    first, is not guided (most plans pass it) and fails; the merges are then known without a
    trace; and the last plan is traced, guided (its ``chunk`` of a pruned projection). One
    failure per trace, every plan traced, needs 11 traces for the same plan."""
    torch.manual_seed(0)
    model, x = MaxViT(fixed_heads=True).eval(), torch.randn(1, 3, 32, 32)
    before = model(x).shape
    pruned = copy.deepcopy(model)
    result, traces, fixed = prune_counting(pruned, x, monkeypatch, ratio=0.5)
    assert traces == [False, True] and result.params_after < result.params_before
    assert pruned(x).shape == before and fixed
    heads = [(m.table.shape[1], m.n_heads) for m in pruned.modules() if hasattr(m, "table")]
    assert all(kept == count for kept, count in heads)  # (the head counts it fixes, kept)
    unguided(monkeypatch)
    reference, reference_traces, _ = prune_counting(model, x, monkeypatch, ratio=0.5)
    assert len(reference_traces) == 11
    assert same_plans(result.plan, reference.plan)


def test_a_maxvit_like_nets_head_count_attributes_follow_the_plan(monkeypatch):
    """Where the code gives the head count attribute as it is to its reshapes (torchvision's
    MaxViT: ``q.reshape(B, G, P, self.n_heads, self.head_dim)``), the attribute follows the
    heads the plan keeps: no size is fixed, the merges back to the input's width are known
    without a trace, and one validation trace (unguided: the plan passes it) plans the prune
    that tracing every plan gives, with more pruned than where the head counts are fixed."""
    torch.manual_seed(0)
    model, x = MaxViT().eval(), torch.randn(1, 3, 32, 32)
    before = model(x).shape
    pruned = copy.deepcopy(model)
    result, traces, fixed = prune_counting(pruned, x, monkeypatch, ratio=0.5)
    assert traces == [False] and not fixed
    assert pruned(x).shape == before
    heads = [(m.table.shape[1], m.n_heads) for m in pruned.modules() if hasattr(m, "table")]
    assert all(kept == count for kept, count in heads) and 1 in dict(heads)
    assert any(u.attr == "n_heads" for u in result.attribute_updates)
    torch.manual_seed(0)
    with_fixed, _, _ = prune_counting(MaxViT(fixed_heads=True).eval(), x, monkeypatch, ratio=0.5)
    assert result.params_after < with_fixed.params_after
    unguided(monkeypatch)
    reference, reference_traces, _ = prune_counting(model, x, monkeypatch, ratio=0.5)
    assert len(reference_traces) == 1
    assert same_plans(result.plan, reference.plan)


@pytest.mark.parametrize("fixed_heads", [False, True], ids=["head-attributes", "fixed-heads"])
def test_the_maxvit_like_net_passes_the_oracle(backend, fixed_heads):
    torch.manual_seed(0)
    model = MaxViT(fixed_heads=fixed_heads).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune_and_check(model, x, ratio=0.5, exact_only=True)


def test_a_later_failure_touching_what_an_earlier_one_blocks_waits():
    """learn_fixed_sizes takes a later failure of the same trace only where its op's units
    and what it would block are in groups no earlier one touched: the later failure in the
    first branch (whose units the first failure blocks) waits for the next round, the one in
    the second branch is learnt now."""
    dg = DependencyGraph(Branches(n=2).double(), torch.randn(4, 4, dtype=F64))
    slots = dg.coupling_model.value_slots
    views = [n for n in dg.graph.nodes if n.name == "aten.view.default"]
    relus = [n for n in dg.graph.nodes if n.name == "aten.relu.default"]

    def error(node):
        return dx.PlanValidationError(f"op {node.index}", node.index, slots[node.outputs[0]])

    first, same_branch, other_branch = error(views[0]), error(relus[0]), error(views[1])
    first.more = (same_branch, other_branch)
    with pytest.warns(dx.FixedSizeWarning) as caught:
        learnt = validate.learn_fixed_sizes(dg, first)
    assert [str(w.message).split(";")[0] for w in caught] == [str(first), str(other_branch)]
    assert set(first.fixed_slots) | set(other_branch.fixed_slots) <= learnt.extra_blocked
    assert not set(same_branch.fixed_slots) & learnt.extra_blocked


@pytest.mark.parametrize("importance", ["l2", "l1", "lamp", "bn_scale"])
def test_later_rounds_score_what_scoring_anew_would(importance, backend, monkeypatch):
    """A validation round blocks units but changes none: the weights are scored once per
    prune (and again only where a round's selection can shrink a group none could before,
    whose units were left unscored), and every round's scores of the units it can remove are
    bit for bit those of scoring that round's graph anew."""
    runs, rounds, unscored = [], [], []
    raw_scores = imp_module.GroupImportance.raw_scores
    call = criteria.RoundScores.__call__

    def counted(self, dg):
        runs.append(1)
        return raw_scores(self, dg)

    def compared(self, dg):
        wanted_now = imp_module.scored_units(dg)
        unscored.append(self._scored is not None and bool((wanted_now & ~self._scored).any()))
        scores = call(self, dg)
        wanted = imp_module.scored_units(dg)
        anew = criteria.unit_scores(dg, self.importance)
        rounds.append(same_bits(scores[wanted], anew[wanted]))  # (NaN: not scored)
        return scores

    torch.manual_seed(0)
    model, x = MaxViT(fixed_heads=True), torch.randn(1, 3, 32, 32)
    model = nn.Sequential(nn.BatchNorm2d(3), model).eval() if importance == "bn_scale" else model
    monkeypatch.setattr(imp_module.GroupImportance, "raw_scores", counted)
    monkeypatch.setattr(criteria.RoundScores, "__call__", compared)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dx.prune(model.eval(), x, ratio=0.5, importance=importance, backend=backend)
    assert len(rounds) >= 3 and all(rounds)
    # once for the prune, once per round to compare, once per round that wants units unscored
    assert len(runs) == 1 + len(rounds) + sum(unscored)


def test_a_plan_that_passes_is_validated_unguided(monkeypatch):
    """A guided trace costs a Python call per op and per torch function: a model whose first
    plan passes (most) is validated once, without a guide."""
    x = torch.randn(4, 4, dtype=F64)
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), Flatten(), nn.Linear(12, 3)).double()
    _, traces, fixed = prune_counting(model, x, monkeypatch, ratio=0.5)
    assert traces == [False] and not fixed


class Flatten(nn.Module):
    """Reads its input's width (``view(x.shape[0], x.shape[1])``): a plan that prunes it is
    traced again."""

    def forward(self, x):
        return x.view(x.shape[0], x.shape[1])


class Routed(nn.Module):
    """Tokens routed to one of two experts by the sign of a router's score (the counts read
    with ``.tolist()``, then a split, as JetMoE does), after a width the code fixes (a view
    by constants): once that fails validation, a stand-in (zeros) would change what the
    router sees, and the tokens each expert gets."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mix = nn.Linear(4, 12), nn.Linear(6, 4)
        self.router = nn.Linear(4, 1)
        self.experts = nn.ModuleList(nn.Linear(4, 8) for _ in range(2))
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = self.mix(torch.relu(self.inp(x)).view(x.shape[0], 2, 6).sum(1))
        score = self.router(h).view(-1)
        order = torch.argsort(score)
        second = (score > 0).long().sum().view(1)
        sizes = torch.cat([second.new_tensor([x.shape[0]]) - second, second]).tolist()
        parts = h[order].split(sizes, 0)
        y = torch.cat([torch.relu(e(p)) for e, p in zip(self.experts, parts)], 0)
        return self.out(y)


def test_a_guide_stops_where_the_code_reads_data_past_a_stand_in(monkeypatch):
    """Past a stand-in the data is not the model's, nor are the sizes it decides (tokens per
    expert): a guided trace stops at the first value the code reads after one, and the plan
    is that of validation without a guide. (JetMoE's zoo tests fail where it does not stop.)"""
    torch.manual_seed(0)
    x = torch.randn(16, 4, dtype=F64)
    model = Routed().double()
    result, traces, _ = prune_counting(copy.deepcopy(model), x, monkeypatch, ratio=0.5)
    assert traces[0] is False and all(traces[1:])
    unguided(monkeypatch)
    reference, _, _ = prune_counting(model, x, monkeypatch, ratio=0.5)
    assert same_plans(result.plan, reference.plan)
    assert result.params_after < result.params_before


def test_traces_are_aligned_by_module_without_a_search_where_they_agree(monkeypatch):
    """Two traces of a loop of a thousand steps through the same modules: their module runs
    line up as one block, and difflib (quadratic in what it is given) searches only where
    they part; the blocks found are matches, in order."""
    import difflib
    import random

    searched = []
    matcher = difflib.SequenceMatcher

    def counted(junk, a, b, **kwargs):
        searched.append((len(a), len(b)))
        return matcher(junk, a, b, **kwargs)

    monkeypatch.setattr(difflib, "SequenceMatcher", counted)
    loop = ["cell", "cell.rnn", "generator"] * 3000
    assert list(validate._aligned_blocks(loop, list(loop))) == [(0, 0, len(loop))]
    parted = [*loop[:4500], "exit", *loop[4500:]]
    blocks = list(validate._aligned_blocks(loop, parted))
    assert blocks == [(0, 0, 4500), (4500, 4501, 4500)]
    assert max(searched) == (0, 1)
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randrange(12))]
        b = [rng.choice("abc") for _ in range(rng.randrange(12))]
        last_i = last_j = 0
        for i, j, size in validate._aligned_blocks(a, b):
            assert size > 0 and i >= last_i and j >= last_j and a[i : i + size] == b[j : j + size]
            last_i, last_j = i + size, j + size


class CrossStage(nn.Module):
    """A CSPNet stage (timm's CrossStage3): its expansion's channels split in two halves by a
    width the module holds, one half through a bottleneck, both concatenated."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.expand_chs = 2 * width
        self.down = nn.Conv2d(width, width, 3, padding=1)
        self.expand = nn.Conv2d(width, 2 * width, 1)
        self.squeeze = nn.Conv2d(width, 6, 1)
        self.unsqueeze = nn.Conv2d(6, width, 3, padding=1)
        self.transition = nn.Conv2d(2 * width, width, 1)

    def forward(self, x):
        x = self.expand(torch.relu(self.down(x)))
        x1, x2 = x.split(self.expand_chs // 2, dim=1)
        x1 = x1 + self.unsqueeze(torch.relu(self.squeeze(x1)))
        return self.transition(torch.cat([x1, x2], dim=1))


class CrossStages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stages = nn.Sequential(CrossStage(), CrossStage(), CrossStage())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.stages(torch.relu(self.stem(x))))


def test_a_split_by_a_fixed_width_blocks_the_split_alone(monkeypatch):
    """Pruning what ``x.split(self.expand_chs // 2, 1)`` splits leaves one chunk, and the code
    fails unpacking it, in Python, after the split ran: the split, which made another number
    of tensors than the original, is where the size is fixed (timm's CSPNets, Res2Nets, whose
    every stage refused to prune, or took a trace each). Only its channels are kept;
    the stem, the stages' inputs and outputs and the bottlenecks are pruned (blocking what
    crosses the failing module's calls, as for a failure no op explains, left nothing)."""
    torch.manual_seed(0)
    model = CrossStages().to(F64).eval()
    x = torch.randn(1, 3, 8, 8, dtype=F64)
    _, traces, fixed = prune_counting(copy.deepcopy(model), x, monkeypatch, ratio=0.5)
    assert len(fixed) == 3 and all("aten.split" in str(w.message) for w in fixed)
    # the first trace fails at the first stage; the guided one, given the planned chunks of
    # the split it met, goes on and finds the other two (one trace per stage without it)
    assert traces == [False, True]
    pruned, _ = prune_and_check(model, x, ratio=0.5)
    for stage in pruned.stages:
        assert stage.expand.out_channels == 16  # the split's channels, fixed
        assert stage.down.out_channels == 4 and stage.squeeze.out_channels == 3
        assert stage.transition.out_channels == 4
    assert pruned.stem.out_channels == 4
