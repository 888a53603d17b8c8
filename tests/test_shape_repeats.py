"""A plan's meta trace replays the calls the graph's trace replayed (graph/shape_repeats.py):
its records are those of a trace running every call, where the plan shapes a sibling as its
template; a sibling the plan shapes otherwise runs its code. And a prune leaves nothing for
the garbage collector: no cycle holds its graphs."""

from __future__ import annotations

import gc

import pytest
import torch
from test_repeats import IDS, Decoder, Stack, llama
from test_validation_rounds import Branches

import depgraph_ext as dx
from depgraph_ext.graph import trace as tr
from depgraph_ext.graph.dependency import DependencyGraph
from depgraph_ext.graph.records import Node
from depgraph_ext.graph.shape_repeats import differences
from depgraph_ext.graph.trace import OpGraph, TraceMode


def shapes_of(model, **changed) -> dict[str, tuple]:
    shapes = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    return shapes | {n.replace("__", "."): s for n, s in changed.items()}


def whole_shape_trace(dg: DependencyGraph, shapes: dict, mode: TraceMode):
    return tr.trace_as(
        dg.model,
        dg.example_inputs,
        mode,
        shapes=shapes,
        shapes_only=True,
        walk=dg.walk,
        replay=dg.graph.decisions or None,
    )


@pytest.mark.parametrize("pruned", [False, True])
def test_a_loops_calls_are_replayed_in_a_plans_meta_trace(pruned, monkeypatch):
    """The loop reads a value at every step (a decision of the data): the plan's trace runs
    on meta tensors, replaying the decisions and the cell's and head's calls."""
    monkeypatch.setattr(tr, "CHECK_REPEATS", False)  # (compared here)
    model = Decoder(reads=True).eval()
    x = torch.randn(2, 8)
    dg = DependencyGraph(model, x)
    assert dg.graph.replayed_modules == {"cell", "head"}
    changed = {"cell__fc__weight": (12, 16), "cell__fc__bias": (12,), "cell__out__weight": (8, 12)}
    shapes = shapes_of(model, **changed) if pruned else shapes_of(model)
    replayed = dg.trace_pruned(shapes)
    assert replayed.mode == TraceMode.META
    assert replayed.replayed == 2 * (model.steps - 2)
    whole = whole_shape_trace(dg, shapes, TraceMode.META)
    assert whole.replayed == 0
    assert differences(replayed, whole) == []
    fc = [s for op, m, s in replayed.ops if m == "cell.fc" and "addmm" in str(op)]
    assert fc == [[(2, 12 if pruned else 16)]] * model.steps
    # the comparison sees what it compares
    broken = tr.ShapeTrace(ops=replayed.ops[:-1], module_calls=replayed.module_calls)
    assert differences(broken, whole)


def test_a_sibling_the_plan_shapes_otherwise_runs_its_code(monkeypatch):
    """Four blocks traced on meta (a large model's way); the plan prunes the second block's
    inner width alone: the third and fourth are replayed from the first, the second runs."""
    monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    monkeypatch.setattr(tr, "CHECK_REPEATS", False)
    model = Stack().eval()
    x = torch.randn(2, 8)
    dg = DependencyGraph(model, x)
    assert dg.graph.mode == "meta" and dg.graph.replayed == 3
    shapes = shapes_of(
        model,
        blocks__1__fc1__weight=(10, 8),
        blocks__1__fc1__bias=(10,),
        blocks__1__fc2__weight=(8, 10),
    )
    replayed = dg.trace_pruned(shapes)
    assert replayed.replayed == 2
    assert differences(replayed, whole_shape_trace(dg, shapes, TraceMode.META)) == []
    inner = [s for op, m, s in replayed.ops if m.endswith("fc1") and "addmm" in str(op)]
    assert inner == [[(2, 16)], [(2, 10)], [(2, 16)], [(2, 16)]]


@pytest.mark.parametrize(
    "build",
    [
        lambda: (Branches().double(), torch.randn(4, 4, dtype=torch.float64)),
        lambda: (Decoder(reads=True).eval(), torch.randn(2, 8)),
    ],
    ids=["failing-rounds", "speculation-stopped"],
)
def test_a_prune_leaves_no_cycle_holding_its_graphs(build):
    """Rounds whose plan failed (an exception holds the frames it went through, and their
    graphs), a trace stopped part way (its watch held its recorder), replays (closures that
    call themselves): none may leave a graph for the collector, which walks every object of
    it (a quarter of a second for SLANeXt's 27,000 ops)."""
    model, x = build()
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        result = dx.prune(model, x, ratio=0.5)
        gc.collect()
        held = sorted(
            {
                type(o).__name__
                for o in gc.garbage
                if isinstance(o, (DependencyGraph, OpGraph, Node))
            }
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert result.params_after < result.params_before
    assert held == []


@pytest.mark.parametrize("uneven", [False, True])
def test_a_llamas_plan_trace_replays_its_layers(uneven, monkeypatch):
    """A transformers Llama (rotary embeddings, grouped-query SDPA): its masks read values
    (decisions of the data), so its plans are traced on meta tensors with those decisions
    replayed, and with the decoder layers the plan shapes alike."""
    monkeypatch.setattr(tr, "CHECK_REPEATS", False)
    model = llama(layers=4)
    dg = DependencyGraph(model, IDS)
    assert dg.graph.decisions and dg.graph.replayed == 3
    changed = {}
    for i in range(4):
        width = 40 if uneven and i == 1 else 24
        changed |= {
            f"model__layers__{i}__mlp__gate_proj__weight": (width, 32),
            f"model__layers__{i}__mlp__up_proj__weight": (width, 32),
            f"model__layers__{i}__mlp__down_proj__weight": (32, width),
        }
    shapes = shapes_of(model, **changed)
    replayed = dg.trace_pruned(shapes)
    assert replayed.mode == TraceMode.META
    assert replayed.replayed == (2 if uneven else 3)
    assert differences(replayed, whole_shape_trace(dg, shapes, TraceMode.META)) == []
