"""What the LLM-scale paths must keep: a model on the meta device is traced as its real twin
(same graph, same groups), tracing on real tensors records what fake tensors record, and the
in-place slicing gives freed memory back."""

from __future__ import annotations

import warnings

import pytest
import torch

import depgraph_ext as dx
from depgraph_ext import trace as tr

T = pytest.importorskip("transformers")


def llama(device: str):
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2)
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.LlamaForCausalLM(config).eval()


IDS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}


def summary(dg):
    return [(g.kind, g.num_units, g.num_prunable,
             sorted((m.name, m.dim, m.indices.numel()) for m in g.members)) for g in dg.groups]


def outputs(graph):
    return [(n.name, [graph.values[o].shape for o in n.outputs]) for n in graph.nodes]


def test_meta_model_has_the_groups_of_its_real_twin():
    """On meta, attention would dispatch to other ops (an explicit repeat of the key/value
    heads), which made the query heads of a kv group prunable; weights on meta are traced as
    CPU tensors, so the graph and groups are those of the real model."""
    real = dx.DependencyGraph(llama("cpu"), IDS)
    meta = dx.DependencyGraph(llama("meta"), IDS)
    assert [n.name for n in meta.graph.nodes] == [n.name for n in real.graph.nodes]
    assert summary(meta) == summary(real)
    heads = [g for g in meta.groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.num_units == 2 for g in heads)  # one unit per kv head


def test_real_and_fake_traces_record_the_same_ops():
    model = llama("cpu")
    real = tr._trace(model, IDS, None, real=True)
    fake = tr._trace(model, IDS, None, real=False)
    assert outputs(real) == outputs(fake)
    assert tr.trace(model, IDS).real  # a small model with real weights: the cheap way


def test_real_trace_over_budget_falls_back_to_fake(monkeypatch):
    monkeypatch.setattr(tr, "_REAL_BUDGET", (0.0, 0.0))
    graph = tr.trace(llama("cpu"), IDS)
    assert not graph.real and graph.nodes


def test_in_place_slicing_gives_the_freed_tail_back():
    from depgraph_ext.apply import _apply_in_place

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    # Several large tails (given back on two threads) and a small one (reallocated).
    big = {f"w{i}": torch.nn.Parameter(torch.full((4096, 2048), float(i))) for i in range(3)}
    small = torch.nn.Parameter(torch.arange(64.0).view(8, 8))
    ids = {n: id(t) for n, t in big.items()}
    before = rss()
    plan = {n: {0: torch.arange(0, 4096, 2)} for n in big}
    plan["small"] = {1: torch.tensor([1, 5])}
    _apply_in_place(big | {"small": small}, plan)
    for i, (name, w) in enumerate(big.items()):
        assert id(w) == ids[name] and w.shape == (2048, 2048) and bool((w == i).all())
    assert torch.equal(small, torch.arange(64.0).view(8, 8)[:, [1, 5]])
    assert small.untyped_storage().nbytes() == small.numel() * 4
    assert before - rss() > 3 * 12 * 2**20  # about 3 x 16 MiB given back, without a copy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [1, 2])
def test_grouped_norm_of_a_weight_by_rows_and_by_columns(dtype, p):
    """A weight large enough to be split across threads, listed for its rows and then its
    columns (two objects, as ``w.detach()`` gives): the scores of one member at a time, and of
    plain PyTorch in float64."""
    from depgraph_ext import ops

    if not ops.available():
        pytest.skip("native ops not built")
    torch.manual_seed(0)
    w = torch.randn(1100, 1000).to(dtype)  # over the size scored member by member
    rows, cols = torch.arange(1100) % 7, 7 + torch.arange(1000) % 5
    fused = ops.grouped_norm([w.detach(), w.detach()], [0, 1], [rows, cols], 12, p, "sum")
    apart = ops.grouped_norm([w], [0], [rows], 12, p, "sum") + ops.grouped_norm(
        [w], [1], [cols], 12, p, "sum")
    mag = w.double().abs() ** p
    ref = torch.zeros(12, dtype=torch.float64).index_add_(0, rows, mag.sum(1)).index_add_(
        0, cols, mag.sum(0))
    torch.testing.assert_close(fused.double(), apart.double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(fused.double(), ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_slicing_runs_of_kept_columns(dtype):
    """Kept indices in runs (a head's columns) are moved as blocks, in place and not: the
    kept values, bit for bit, as index_select gives them (runs of 1-16, a trailing run, one
    run, and indices that form no run)."""
    from depgraph_ext import ops

    if not ops.available():
        pytest.skip("native ops not built")
    torch.manual_seed(0)
    w = torch.randn(6, 40, 96).to(dtype)
    for kept in (torch.cat([torch.arange(s, s + n) for s, n in ((0, 16), (20, 8), (90, 6))]),
                 torch.arange(96), torch.arange(10, 60), torch.arange(0, 96, 3)):
        expected = w.index_select(2, kept)
        assert torch.equal(ops.gather_slices([w], [2], [kept])[0], expected)
        [moved] = ops.compact_([w.clone()], [2], [kept])
        assert torch.equal(moved, expected)
