"""What the LLM-scale paths must keep: a model on the meta device is traced as its real twin
(same graph, same groups), tracing on real tensors records what fake tensors record, and the
in-place slicing gives freed memory back."""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch

import depgraph_ext as dx
from depgraph_ext.graph import trace as tr
from depgraph_ext.testing import assert_scatter_back_equal

T = pytest.importorskip("transformers")


def llama(device: str):
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.LlamaForCausalLM(config).eval()


IDS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}


def summary(dg):
    return [
        (
            g.kind,
            g.num_units,
            g.num_prunable,
            sorted((m.name, m.dim, m.indices.numel()) for m in g.members),
        )
        for g in dg.groups
    ]


def outputs(graph):
    return [(n.name, [graph.values[o].shape for o in n.outputs]) for n in graph.nodes]


def test_meta_model_has_the_groups_of_its_real_twin():
    """On meta, attention would dispatch to other ops (an explicit repeat of the key/value
    heads), which made the query heads of a kv group prunable; weights on meta are traced as
    CPU tensors, so the graph and groups are those of the real model."""
    real = dx.DependencyGraph(llama("cpu"), IDS)
    meta = dx.DependencyGraph(llama("meta"), IDS)
    assert meta.graph.mode == "meta"  # meta tensors standing in for CPU ones, CPU inputs
    assert [n.name for n in meta.graph.nodes] == [n.name for n in real.graph.nodes]
    assert summary(meta) == summary(real)
    heads = [g for g in meta.groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.num_units == 2 for g in heads)  # one unit per kv head


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "inputs",
    [
        IDS,
        {**IDS, "use_cache": False},
        {**IDS, "attention_mask": torch.ones(1, 8, dtype=torch.long)},
    ],
    ids=["ids", "no-cache", "mask"],
)
def test_repeated_key_value_heads_prune_as_grouped_query_attention(monkeypatch, attention, inputs):
    """Given a mask (or none to read on fake tensors), transformers repeats the key/value heads
    to the query heads (``repeat_kv``) where SDPA would otherwise group them itself; eager
    attention always does. Either way a unit is a key/value head with its query heads, and
    the config says the kv heads kept: a trace on stand-ins (a model over the real trace's
    size) prunes as the real trace does, bit for bit."""
    results = {}
    for mode in ("real", "stand-ins"):
        if mode == "stand-ins":
            monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
        model = llama("cpu")
        model.config._attn_implementation = attention
        dg = dx.DependencyGraph(model, inputs)
        assert dg.graph.real == (mode == "real")
        heads = [g for g in dg.groups if g.kind == "heads"]
        assert len(heads) == 2 and all(g.num_units == 2 for g in heads)  # one per kv head
        with warnings.catch_warnings():
            warnings.simplefilter("error", dx.ConfigMismatchWarning)
            result = dx.prune(model, inputs, ratio=0.5, ratios={"hidden": 0}, progress=False)
        updates = {u.field: (u.old, u.new) for u in result.config_updates}
        assert updates["num_attention_heads"] == (8, 4)
        assert updates["num_key_value_heads"] == (2, 1)
        results[mode] = model.state_dict()
    real, stand_ins = results["real"], results["stand-ins"]
    assert real.keys() == stand_ins.keys()
    assert all(torch.equal(real[k], stand_ins[k]) for k in real)


def test_real_fake_and_meta_traces_record_the_same_ops():
    model = llama("cpu")
    real, fake, meta = (tr.trace_as(model, IDS, mode) for mode in ("real", "fake", "meta"))
    assert outputs(real) == outputs(fake) == outputs(meta)
    assert (real.mode, fake.mode, meta.mode) == ("real", "fake", "meta")
    assert tr.trace(model, IDS).real  # a small model with real weights: the cheap way


def test_real_trace_over_budget_falls_back_to_fake(monkeypatch):
    monkeypatch.setattr(tr, "REAL_BUDGET", (0.0, 0.0))
    graph = tr.trace(llama("cpu"), IDS)
    assert not graph.real and graph.nodes


@pytest.mark.parametrize("kv_heads", [1, 2, 8])
def test_attention_paths_give_the_same_head_groups(kv_heads):
    """Multi-query, grouped-query and multi-head attention: SDPA grouping the heads itself,
    SDPA after repeat_kv (given a mask) and eager attention after repeat_kv have the same
    head groups and count the same key/value heads (none prunable with one)."""
    mask = {**IDS, "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    seen = []
    for attention, inputs in (("sdpa", IDS), ("sdpa", mask), ("eager", IDS), ("eager", mask)):
        torch.manual_seed(0)
        config = T.LlamaConfig(
            vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=kv_heads, attn_implementation=attention,
        )  # fmt: skip
        dg = dx.DependencyGraph(T.LlamaForCausalLM(config).eval(), inputs)
        heads = [(g.num_units, g.num_prunable) for g in dg.groups if g.kind == "heads"]
        kv = [int(dg.slot_sizes[c.kv_heads]) for c in dg.coupling_model.attention]
        seen.append((heads, kv))
    expected = [] if kv_heads == 1 else [(kv_heads, kv_heads)] * 2
    assert seen == [(expected, [kv_heads] * 2)] * 4


def test_the_real_trace_budget_counts_work_not_time():
    """Which trace runs must not depend on how busy the machine is (the real and the fake
    trace can see different code paths): a forward that takes long without computing much
    (here it sleeps three times the fixed allowance) is still traced on its real tensors."""
    import time

    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, x):
            time.sleep(3 * tr.REAL_BUDGET[0])
            return self.lin(x).relu()

    assert tr.trace(Slow(), torch.randn(2, 8)).real


def test_real_op_work_is_estimated_from_shapes():
    from depgraph_ext.graph.real_budget import SECONDS_PER_ELEMENT, SECONDS_PER_MAC, op_work

    aten = torch.ops.aten
    a, b, bias = torch.randn(6, 5), torch.randn(5, 3), torch.randn(3)

    def work(op, *args):
        out = op(*args)
        return op_work(op, args, [out] if isinstance(out, torch.Tensor) else list(out))

    assert work(aten.mm.default, a, b) == 6 * 5 * 3 * SECONDS_PER_MAC
    assert work(aten.addmm.default, bias, a, b) == 6 * 5 * 3 * SECONDS_PER_MAC
    x, w = torch.randn(2, 4, 9, 9), torch.randn(8, 2, 3, 3)  # groups=2, stride 2: 2x8x4x4 out
    conv = (x, w, None, [2, 2], [0, 0], [1, 1], False, [0, 0], 2)
    assert work(aten.convolution.default, *conv) == 2 * 8 * 4 * 4 * (2 * 3 * 3) * SECONDS_PER_MAC
    q, k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    sdpa = aten._scaled_dot_product_flash_attention_for_cpu.default
    assert work(sdpa, q, k, v) == 2 * 3 * 4 * 5 * (8 + 8) * SECONDS_PER_MAC
    assert work(aten.t.default, a) == 0.0  # a view moves nothing
    assert work(aten.add.Tensor, a, a) == 3 * 30 * SECONDS_PER_ELEMENT  # two read, one written
    table, ids = torch.randn(1000, 4), torch.tensor([1, 2])
    assert work(aten.embedding.default, table, ids) == 2 * 8 * SECONDS_PER_ELEMENT  # its rows


class CachedPositions(torch.nn.Module):
    """A position table whose forward is cached by length and device, as transformers'
    DETR-style position embeddings are (by the input's shape, not by the weights or their
    width)."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(16, 8)

    @functools.lru_cache(maxsize=1)  # noqa: B019  (the pattern under test)
    def forward(self, length: int, device: torch.device):
        return self.table(torch.arange(length, device=device))


class WithCachedPositions(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(8, 8)
        self.pos = CachedPositions()
        self.mid = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x) + self.pos(x.shape[1], x.device)
        return self.out(self.mid(h).relu())


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("trace", ["real", "stand-ins"])
def test_results_a_models_methods_cached_are_not_kept_across_a_prune(monkeypatch, trace, in_place):
    """A result cached before the prune (of the unpruned width) or during a trace (of the
    trace's tensors: meta ones, standing in for the CPU, are cached under the CPU's key) is
    not what the pruned model computes with: the trace sees the table's ops, and the pruned
    model's forward computes the table again (the oracle holds)."""
    if trace == "stand-ins":
        monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    torch.manual_seed(0)
    model = WithCachedPositions().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    model(x)  # (a forward before the prune fills the cache)
    original = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, exact_only=True, in_place=in_place, progress=False)
    assert result.plan["pos.table.weight"] == {1: result.plan["inp.weight"][0]}  # (the width)
    assert model.pos.table.weight.shape == (16, 4)
    assert_scatter_back_equal(original, model, result, x)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("trace", ["real", "stand-ins"])
def test_fractional_max_pool_samples_follow_the_channels(monkeypatch, trace, dims):
    """A fractional max pool given its random samples ([N, C, k], held by the module) takes one
    per channel, which the CPU kernel counts and a meta kernel does not: the samples' channels
    are the input's, so the prune keeps the matching samples on either trace (on stand-ins the
    3-d pool was pruned with all of its samples, and the pruned model did not run)."""
    if trace == "stand-ins":
        monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    conv, pool = (
        (torch.nn.Conv2d, torch.nn.FractionalMaxPool2d)
        if dims == 2
        else (torch.nn.Conv3d, torch.nn.FractionalMaxPool3d)
    )
    torch.manual_seed(0)
    samples = torch.rand(2, 8, dims, dtype=torch.float64)
    model = torch.nn.Sequential(
        conv(3, 8, 1), pool(2, output_size=3, _random_samples=samples), conv(8, 4, 1)
    ).double()
    x = torch.randn(2, 3, *[8] * dims, dtype=torch.float64)
    original, before = copy.deepcopy(model), samples.clone()
    result = dx.prune(model, x, ratio=0.5, exact_only=True, progress=False)
    kept = result.plan["0.weight"][0]
    assert kept.numel() == 4 and torch.equal(model[1]._random_samples, before[:, kept])
    assert_scatter_back_equal(original, model, result, x)


def test_in_place_slicing_gives_the_freed_tail_back():
    from depgraph_ext.pruning.apply import apply_in_place

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
    apply_in_place(big | {"small": small}, plan)
    for i, (name, w) in enumerate(big.items()):
        assert id(w) == ids[name] and w.shape == (2048, 2048) and bool((w == i).all())
    assert torch.equal(small, torch.arange(64.0).view(8, 8)[:, [1, 5]])
    assert small.untyped_storage().nbytes() == small.numel() * 4
    assert before - rss() > 3 * 12 * 2**20  # about 3 x 16 MiB given back, without a copy
    for w in big.values():  # the storages say so: whatever reads one whole reads the kept rows
        assert w.untyped_storage().nbytes() == w.numel() * 4


def test_storages_off_the_cpu_are_cut_by_reallocation():
    """Only a CPU storage can give pages back where they lie; any other (a GPU's caching
    allocator hands out whole blocks; meta here) is reallocated at the tensor's size."""
    from depgraph_ext.pruning.release import release_tails

    whole = torch.empty(1 << 22, device="meta")  # 16 MiB: a tail of many pages
    kept = whole[:1000]
    release_tails([kept])
    assert kept.untyped_storage().nbytes() == 4000


def test_an_in_place_prune_saves_as_small_as_the_default_one(tmp_path):
    """torch.save writes whole storages: after an in-place prune they hold the pruned bytes
    only (they held the original's, the removed half zeros), and the model reloads equal."""
    torch.manual_seed(0)

    def mlp():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 512)
        )

    x = torch.randn(2, 512)
    a, b = mlp(), mlp()
    dx.prune(a, x, ratio=0.5)
    dx.prune(b, x, ratio=0.5, in_place=True)
    for p in b.parameters():
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    assert (tmp_path / "b.pt").stat().st_size == (tmp_path / "a.pt").stat().st_size
    loaded = torch.load(tmp_path / "b.pt")
    for name, t in a.state_dict().items():
        assert torch.equal(loaded[name], t)
        assert loaded[name].untyped_storage().nbytes() == t.numel() * t.element_size()


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
        [w], [1], [cols], 12, p, "sum"
    )
    mag = w.double().abs() ** p
    ref = (
        torch.zeros(12, dtype=torch.float64)
        .index_add_(0, rows, mag.sum(1))
        .index_add_(0, cols, mag.sum(0))
    )
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
    for kept in (
        torch.cat([torch.arange(s, s + n) for s, n in ((0, 16), (20, 8), (90, 6))]),
        torch.arange(96),
        torch.arange(10, 60),
        torch.arange(0, 96, 3),
    ):
        expected = w.index_select(2, kept)
        assert torch.equal(ops.gather_slices([w], [2], [kept])[0], expected)
        [moved] = ops.compact_([w.clone()], [2], [kept])
        assert torch.equal(moved, expected)


def shapes_of_full(graph):
    """A full trace reduced to what a ShapeTrace keeps."""
    shape = lambda v: graph.values[v].shape  # noqa: E731
    return (
        [(n.op, n.module, [shape(v) for v in n.outputs]) for n in graph.nodes],
        [(name, [shape(v) for v in outs]) for name, outs in graph.module_calls],
        [shape(v) for v in graph.outputs],
    )


@pytest.mark.parametrize("mode", ["real", "meta", "fake"])
def test_shape_trace_keeps_what_the_full_trace_records(monkeypatch, mode):
    if mode != "real":
        monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    model = llama("cpu")
    shapes = {
        "model.layers.0.mlp.up_proj.weight": (40, 64),
        "model.layers.0.mlp.gate_proj.weight": (40, 64),
        "model.layers.0.mlp.down_proj.weight": (64, 40),
    }
    full = tr.trace(model, IDS, shapes=shapes, allow_meta=mode == "meta")
    light = tr.trace(model, IDS, shapes=shapes, shapes_only=True, allow_meta=mode == "meta")
    assert full.mode == light.mode == mode
    assert (light.ops, light.module_calls, light.outputs) == shapes_of_full(full)
    called = [name for name, _ in light.module_calls]  # every module called, once
    assert sorted(called) == sorted(
        n for n, m in model.named_modules() if not isinstance(m, torch.nn.ModuleList)
    )


def test_shape_trace_reports_the_failing_op_as_the_full_trace_does():
    model = llama("cpu")
    shapes = {"model.layers.1.mlp.up_proj.weight": (40, 64)}  # gate_proj still has 96 rows
    failures = []
    for shapes_only in (False, True):
        with pytest.raises(dx.TraceError) as info:
            tr.trace(model, IDS, shapes=shapes, shapes_only=shapes_only)
        failures.append(info.value.failed_at)
    assert failures[0] == failures[1]
    assert failures[0].module == "model.layers.1.mlp" and failures[0].op == "aten.mul.Tensor"


def test_trace_leaves_training_flags_and_global_hooks_as_they_were():
    model = llama("cpu").train()
    model.model.layers[0].eval()
    flags = [m.training for m in model.modules()]
    pre = dict(torch.nn.modules.module._global_forward_pre_hooks)
    post = dict(torch.nn.modules.module._global_forward_hooks)
    graph = tr.trace(model, IDS)
    assert [m.training for m in model.modules()] == flags
    assert torch.nn.modules.module._global_forward_pre_hooks == pre
    assert torch.nn.modules.module._global_forward_hooks == post
    assert {name for name, _ in graph.module_calls} == {
        n for n, m in model.named_modules() if not isinstance(m, torch.nn.ModuleList)
    }


def test_a_module_made_inside_the_forward_is_not_a_scope():
    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.nn.ReLU()(self.lin(x))  # not part of the model

    graph = tr.trace(Outer(), torch.randn(2, 4))
    assert [name for name, _ in graph.module_calls] == ["lin", ""]
    assert graph.nodes[-1].module == ""  # the ReLU's op belongs to the module running it


def test_a_model_whose_real_trace_ran_over_budget_checks_its_plans_without_one(monkeypatch):
    """The graph's real trace ran past its budget: a real trace of the plan's shapes would
    too, so the plan's check goes straight to the trace that decides for such a model."""
    monkeypatch.setattr(tr, "REAL_BUDGET", (0.0, 0.0))
    modes = []
    trace_as = tr.trace_as

    def counted(model, inputs, mode, **kwargs):
        modes.append((tr.TraceMode(mode).value, kwargs.get("shapes_only", False)))
        return trace_as(model, inputs, mode, **kwargs)

    monkeypatch.setattr(tr, "trace_as", counted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(llama("cpu"), IDS, ratio=0.5)
    assert result.params_after < result.params_before
    assert modes[:2] == [("real", False), ("meta", False)]
    checks = [mode for mode, shapes_only in modes if shapes_only]
    assert checks and "real" not in checks
