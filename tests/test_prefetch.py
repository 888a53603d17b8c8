"""Scoring begun while the model is traced: the sums a background thread takes ahead are the
ones scoring computes itself, are not used once the weight moved, and the thread never outlives
the prune that started it."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext import ops
from depgraph_ext.pruning import importance, prefetch
from depgraph_ext.pruning.criteria import get_importance
from helpers import tiny_llama

pytestmark = pytest.mark.skipif(not ops.available(), reason="op library not built")


def llama(dtype=torch.bfloat16):
    return tiny_llama(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=96,
    ).to(dtype)  # fmt: skip


IDS = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def every_weight(monkeypatch):
    """The prefetch starts for any model and takes every 2-d weight."""
    monkeypatch.setattr(prefetch, "MIN_TENSOR_ELEMENTS", 1)
    monkeypatch.setattr(prefetch, "MIN_TOTAL_BYTES", 0)
    monkeypatch.delenv("DEPGRAPH_SCORE_AHEAD", raising=False)


def finished_prefetch(model, p=2) -> prefetch.IndexSumsPrefetch:
    ahead = prefetch.IndexSumsPrefetch(prefetch.candidates(model), p)
    ahead._thread.join()  # every weight summed
    ahead.stop()
    return ahead


def scores_with(ahead, dg, imp):
    token = prefetch._ACTIVE.set(ahead)
    try:
        return imp.raw_scores(dg)
    finally:
        prefetch._ACTIVE.reset(token)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("imp", ["l1", "l2", "lamp"])
def test_scores_from_the_prefetch_are_the_scores_bit_for_bit(every_weight, monkeypatch, dtype, imp):
    """Every 2-d weight's sums taken ahead: the raw scores equal grouped_norm's bit for bit,
    and no weight taken ahead is read again (index_sums gets only the 1-d norms' weights)."""
    model = llama(dtype)
    dg = dx.DependencyGraph(model, (IDS,))
    criterion = get_importance(imp)
    expected = criterion.raw_scores(dg)
    ahead = finished_prefetch(model, criterion.p)
    assert ahead.finished == len(prefetch.candidates(model)) > 10
    read, index_sums = [], ops.index_sums
    monkeypatch.setattr(
        ops, "index_sums", lambda ts, ds, p: read.extend(ts) or index_sums(ts, ds, p)
    )
    monkeypatch.setattr(ops, "grouped_norm", None)  # not called
    got = scores_with(ahead, dg, criterion)
    assert _same(got, expected)
    assert read and all(t.dim() == 1 for t in read)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def test_a_weight_changed_after_its_sums_is_summed_again(every_weight):
    model = llama(torch.float32)
    dg = dx.DependencyGraph(model, (IDS,))
    ahead = finished_prefetch(model)
    w = model.model.layers[0].mlp.gate_proj.weight
    with torch.no_grad():
        w[3].mul_(10.0)  # in place: the version moves
    criterion = get_importance("l2")
    assert ahead.sums(w, 0, 2) is None
    assert ahead.sums(model.model.layers[1].mlp.gate_proj.weight, 0, 2) is not None
    assert ahead.sums(model.model.layers[1].mlp.gate_proj.weight, 0, 1) is None  # another p
    assert _same(scores_with(ahead, dg, criterion), criterion.raw_scores(dg))
    other = model.model.layers[1].mlp.up_proj.weight
    other.data = other.data.clone()  # new data, same version
    assert ahead.sums(other, 1, 2) is None


@pytest.mark.filterwarnings("ignore::depgraph_ext.FunctionChangingWarning")
def test_a_prune_with_and_without_the_prefetch_gives_the_same_model(every_weight, monkeypatch):
    """However far the thread got, the pruned model is the same; the thread is gone after."""
    model = llama(torch.float32)
    started = []
    real = prefetch.IndexSumsPrefetch.__init__
    monkeypatch.setattr(
        prefetch.IndexSumsPrefetch, "__init__", lambda s, *a: started.append(s) or real(s, *a)
    )
    ahead = copy.deepcopy(model)
    result = dx.prune(ahead, (IDS,), ratio=0.5)
    assert len(started) == 1 and started[0].finished > 0
    assert result.timings["score_ahead"] == started[0].seconds > 0
    assert "summing weights ahead" in result.summary()
    monkeypatch.setenv("DEPGRAPH_SCORE_AHEAD", "0")
    plain = copy.deepcopy(model)
    result = dx.prune(plain, (IDS,), ratio=0.5)
    assert len(started) == 1 and "score_ahead" not in result.timings
    a, b = ahead.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not _prefetch_threads()


def test_the_thread_is_stopped_when_the_prune_fails(every_weight):
    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)

        def forward(self, x):
            raise ValueError("the model's own error")

    with pytest.raises(dx.errors.TraceError, match="the model's own error"):
        dx.prune(Fails(), (torch.randn(2, 64),), ratio=0.5)
    assert not _prefetch_threads()


def test_the_weights_are_summed_in_model_order_embedding_tables_last(every_weight):
    model = llama(torch.float32)
    names = {id(t): n for n, t in model.named_parameters()}
    order = [names[id(t)] for t in prefetch.candidates(model)]
    expected = [n for n, t in model.named_parameters() if t.dim() >= 2 and "embed" not in n]
    assert order == expected + ["model.embed_tokens.weight"]


def test_only_magnitude_criteria_are_taken_ahead():
    assert importance.magnitude_power(get_importance("l1")) == 1
    assert importance.magnitude_power(get_importance("lamp")) == 2
    for name in ("taylor", "fisher", "bn_scale", "random"):
        assert importance.magnitude_power(get_importance(name)) is None
    assert importance.magnitude_power(importance.MagnitudeImportance(reduction="prod")) is None


def test_small_models_start_no_thread(monkeypatch):
    model = llama(torch.float32)
    with prefetch.prefetching(model, 2, "native") as ahead:
        assert ahead is None
    monkeypatch.setenv("DEPGRAPH_SCORE_AHEAD", "0")
    monkeypatch.setattr(prefetch, "MIN_TOTAL_BYTES", 0)
    monkeypatch.setattr(prefetch, "MIN_TENSOR_ELEMENTS", 1)
    with prefetch.prefetching(model, 2, "native") as ahead:
        assert ahead is None


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "depgraph_ext score prefetch"]
