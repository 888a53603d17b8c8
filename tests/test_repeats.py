"""Layers that repeat are traced once: a sibling's ops are its template's, renamed, and its
code does not run (graph/repeats.py). The graph is the one a trace running every layer
records, record for record (``repeats.differences``); where a sibling's code could record
something else (an attribute it reads differs, a tensor of the template's is used after its
call, a value read after the siblings depends on theirs), the layers are traced each."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.graph import trace
from depgraph_ext.graph.dependency import DependencyGraph, attribute_reads
from depgraph_ext.graph.repeats import Repeats, differences
from depgraph_ext.graph.trace import TraceMode, _with_repeats, trace_as
from depgraph_ext.graph.walk import ModelWalk
from depgraph_ext.testing import assert_scatter_back_equal
from helpers import tiny_llama


def traced_both_ways(model, inputs, mode="real", speculate=True):
    """(the graph with replays, the graph without, the attribute reads of each)."""
    walk = ModelWalk.of(model)
    repeats = Repeats(walk)
    known = {id(m) for _, m in walk.modules}
    with attribute_reads(walk.modules) as spy:
        repeats.spy = spy
        if speculate:  # (as a trace does: again without replays where they were wrong)
            replayed = _with_repeats(model, inputs, TraceMode(mode), repeats, {"walk": walk})
        else:
            replayed = trace_as(
                model, inputs, TraceMode(mode), walk=walk, repeats=repeats, speculate=False
            )
        reads_replayed = {r for r in spy.names if r[0] in known}
        spy.names.clear()
        whole = trace_as(model, inputs, TraceMode(mode), walk=walk)
        reads_whole = {r for r in spy.names if r[0] in known}
    return replayed, whole, reads_replayed, reads_whole


def llama(layers=6, **config):
    config = (
        dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_hidden_layers=layers,
            use_cache=False,
        )
        | config
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_llama(**config)


IDS = {"input_ids": torch.tensor([[1, 5, 9, 13, 2, 7]])}


@pytest.mark.parametrize("mode", ["real", "fake"])
@pytest.mark.parametrize("speculate", [True, False])
def test_a_llamas_layers_are_replayed_and_the_graph_is_the_whole_traces(mode, speculate):
    model = llama()
    replayed, whole, reads, reads_whole = traced_both_ways(model, IDS, mode, speculate)
    assert replayed.replayed == 5  # every layer but the first
    assert whole.replayed == 0
    assert differences(replayed, whole) == []
    assert reads == reads_whole
    # the same record as a list: a check that the comparison sees what it compares
    broken = copy.copy(replayed)
    broken.nodes = replayed.nodes[:-1] + [copy.copy(replayed.nodes[-1])]
    broken.nodes[-1].module = "elsewhere"
    assert differences(broken, whole)


def test_a_prune_of_replayed_layers_is_exact():
    original = llama(layers=4).double()
    assert DependencyGraph(original, IDS).graph.replayed == 3
    model = copy.deepcopy(original)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, IDS, ratio=0.5, exact_only=True)
    assert result.plan
    assert_scatter_back_equal(original, model, result.plan, IDS)


class Block(nn.Module):
    def __init__(self, width: int, index: int = 0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.index = index

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class EveryOtherDoubles(Block):
    """Its code branches on its place: the odd ones double their input."""

    def forward(self, x):
        if self.index % 2:
            x = x * 2
        return super().forward(x)


class Stack(nn.Module):
    def __init__(self, block=Block, depth: int = 4, width: int = 8) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(block(width, i) for i in range(depth))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


@pytest.mark.parametrize("mode", ["real", "meta", "fake"])
def test_blocks_in_every_mode_are_replayed(mode):
    model = Stack()
    replayed, whole, reads, reads_whole = traced_both_ways(model, torch.randn(2, 8), mode)
    assert replayed.replayed == 3
    assert differences(replayed, whole) == []
    assert reads == reads_whole


def test_blocks_whose_code_reads_their_place_are_traced_each():
    model = Stack(EveryOtherDoubles)
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert replayed.replayed == 0  # (``index`` read, and it differs)
    assert differences(replayed, whole) == []
    assert sum(n.packet == "aten.mul" for n in replayed.nodes) == 2


def test_blocks_with_the_same_attributes_read_are_replayed():
    model = Stack(EveryOtherDoubles)
    for b in model.blocks:
        b.index = 1
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert replayed.replayed == 3
    assert differences(replayed, whole) == []
    assert sum(n.packet == "aten.mul" for n in replayed.nodes) == 4


KEPT: list = []


class KeepsAnInnerTensor(Block):
    """Puts its hidden activation where the model's code takes it from later."""

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        KEPT.append(h)
        return x + self.fc2(h)


class UsesKept(Stack):
    def forward(self, x):
        KEPT.clear()
        out = super().forward(x)
        return out, sum(h.sum() for h in KEPT)


class ReadsKeptSize(Stack):
    """Reads a size of the last block's hidden activation (no op of it runs after)."""

    def forward(self, x):
        KEPT.clear()
        out = super().forward(x)
        return out.reshape(KEPT[-1].shape[0], -1)


@pytest.mark.parametrize("model", [UsesKept(KeepsAnInnerTensor), ReadsKeptSize(KeepsAnInnerTensor)])
def test_an_inner_tensor_used_after_the_call_stops_the_replays(model):
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert replayed.replayed == 0
    assert differences(replayed, whole) == []


class DecidesAfter(Stack):
    """Reads a value the blocks computed: the siblings' zeros would decide otherwise."""

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        if bool((x > 1e6).any()):
            x = x * 0.5
        extra = int((x.abs() > 0).sum().item() > 0)
        return self.head(x) + extra


def test_a_value_read_after_the_siblings_runs_their_ops():
    torch.manual_seed(0)
    model = DecidesAfter()
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert replayed.replayed == 3  # replayed, their ops run for the values read after
    assert differences(replayed, whole) == []
    for a, b in zip(replayed.decisions, whole.decisions):
        assert a.key == b.key and a.values == b.values
        for (i, x), (j, y) in zip(a.inputs, b.inputs):
            assert i == j and torch.equal(x, y)
        assert torch.equal(torch.as_tensor(a.result), torch.as_tensor(b.result))


def test_a_layer_passed_a_cache_object_is_traced_each():
    model = llama(layers=3, use_cache=True)
    replayed, whole, _, _ = traced_both_ways(model, IDS)
    assert replayed.replayed == 0  # (its ``layer_idx`` picks its part of the cache)
    assert differences(replayed, whole) == []


def test_hooked_blocks_run_their_hooks(monkeypatch):
    monkeypatch.setattr(trace, "CHECK_REPEATS", False)  # (a third trace would run them too)
    model = Stack()
    calls = []
    model.blocks[2].register_forward_hook(lambda m, a, o: calls.append(1))
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert len(calls) == 2  # once per trace
    assert replayed.replayed == 2  # blocks 1 and 3; block 2 has a hook
    assert differences(replayed, whole) == []


def test_the_model_is_left_as_it_was():
    model = Stack()
    before = {n: (type(m), dict(vars(m))) for n, m in model.named_modules()}
    replayed, _, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert replayed.replayed == 3
    after = {n: (type(m), dict(vars(m))) for n, m in model.named_modules()}
    assert before.keys() == after.keys()
    for name in before:
        assert before[name][1].keys() == after[name][1].keys(), name
        assert "forward" not in after[name][1]


class CallsForwardDirectly(Stack):
    """The first block as a module call, the others' forward called directly (their ops are
    the stack's own, as in torch_geometric's MixHopConv); ``direct``: every block's."""

    direct_from = 1

    def forward(self, x):
        for i, b in enumerate(self.blocks):
            x = b.forward(x) if i >= self.direct_from else b(x)
        return self.head(x)


@pytest.mark.parametrize("direct_from", [0, 1])
def test_a_forward_called_directly_is_replayed_only_as_such(direct_from):
    model = CallsForwardDirectly()
    model.direct_from = direct_from
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert replayed.replayed == (3 if direct_from == 0 else 0)
    assert differences(replayed, whole) == []
    modules = {n.module for n in replayed.nodes}
    assert ("blocks.0" in modules) == (direct_from == 1)
    assert "blocks.1" not in modules and "blocks.3.fc2" in modules


class CountsItsCalls(Block):
    """Counts the blocks run on a shared object, and scales by the count so far."""

    def __init__(self, width: int, index: int = 0, tally=None) -> None:
        super().__init__(width, index)
        self.tally = tally

    def forward(self, x):
        self.tally.calls += 1
        return super().forward(x) * self.tally.calls


class Tally:
    calls = 0


class CountedStack(Stack):
    def __init__(self) -> None:
        tally = Tally()
        super().__init__(lambda width, i: CountsItsCalls(width, i, tally))
        self.tally = tally

    def forward(self, x):
        self.tally.calls = 0
        return super().forward(x)


def test_a_block_that_changes_what_it_read_is_traced_each():
    model = CountedStack()
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert replayed.replayed == 0
    assert differences(replayed, whole) == []
    muls = [n for n in replayed.nodes if n.packet == "aten.mul"]
    assert [n.args[1] for n in muls] == [1, 2, 3, 4]  # (each block's own count)


class DropsOut(Block):
    def __init__(self, width: int, index: int = 0) -> None:
        super().__init__(width, index)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return x + self.fc2(self.drop(torch.relu(self.fc1(x))))


class DrawsAfter(Stack):
    """Draws a number after its blocks, which draw their dropout masks (in training mode):
    the number is where the blocks left the random stream."""

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        picked = torch.nonzero(torch.rand(8) > 0.5).flatten()  # (a decision of the data)
        return self.head(x) + x[:, picked].sum(1, keepdim=True)


class Accumulates(Block):
    def forward(self, x, total):
        total.add_(1)  # (one per block)
        return super().forward(x)


class ReadsTheTotal(Stack):
    def forward(self, x):
        total = torch.zeros(8)
        for b in self.blocks:
            x = b(x, total)
        picked = torch.nonzero(total > 2).flatten()  # (all of them after four blocks)
        return self.head(x) + x[:, picked].sum(1, keepdim=True)


@pytest.mark.parametrize("model", [DrawsAfter(DropsOut), ReadsTheTotal(Accumulates)], ids=str)
def test_replayed_blocks_that_draw_or_write_outside_run_their_ops(model):
    """A real trace's replayed blocks that draw random numbers or write into a tensor from
    outside their call run their ops (zeros in their place would leave the random stream and
    that tensor otherwise than the code would): the number read after them is the whole
    trace's."""
    training = isinstance(model, DrawsAfter)
    walk = ModelWalk.of(model)
    repeats = Repeats(walk)
    common = {"walk": walk, "training": training}
    x = torch.randn(2, 8)
    with attribute_reads(walk.modules) as spy:
        repeats.spy = spy
        torch.manual_seed(0)
        replayed = _with_repeats(model, x, TraceMode.REAL, repeats, common)
        torch.manual_seed(0)
        whole = trace_as(model, x, TraceMode.REAL, **common)
    assert replayed.replayed == 3
    assert differences(replayed, whole) == []


class SplitsByItsData(nn.Module):
    """Splits its rows where its data says (``.tolist()``, as JetMoE's experts do): the sizes
    of a later block's ops are its own data's, which a replay of the first would not read."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(4))
            self.lin.bias.copy_(torch.tensor([-1.0, 0.0, 0.0, 0.0]))

    def forward(self, x):
        y = self.lin(x)
        k = (x[:, 0] > 0).sum().tolist()
        a, b = y.split([k, len(y) - k])
        return torch.cat([a, b * 2])


@pytest.mark.parametrize("fused", [False, True])
def test_blocks_whose_code_reads_their_data_are_traced_each(fused):
    model = nn.Sequential(*(SplitsByItsData() for _ in range(3))).eval()
    if fused:  # (a model with a fused path is traced without the size watch)
        model.add_module("mha", nn.MultiheadAttention(4, 2))
        model.forward = lambda x: nn.Sequential.forward(model[:3], x)
    x = torch.zeros(8, 4)
    x[:, 0] = torch.arange(8) - 3.5  # (4 rows above zero, then 3, then 2)
    replayed, whole, reads, reads_whole = traced_both_ways(model, x)
    assert replayed.replayed == 0
    assert differences(replayed, whole) == []
    splits = [n.args[1] for n in whole.nodes if n.name == "aten.split_with_sizes.default"]
    assert splits == [[4, 4], [3, 5], [2, 6]]


class DecodesAfter(Stack):
    """A loop after its blocks that reads a value of their result at every step (a decoder's
    stop test): the blocks' zeros would decide it, so their ops must run."""

    def __init__(self) -> None:
        super().__init__()
        self.step = nn.Linear(8, 8)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        for _ in range(20):
            x = self.step(x)
            if bool(x.sum() > 1e9):  # (never: every step runs)
                break
        return self.head(x)


def test_a_trace_whose_zeros_decide_a_read_stops_at_that_read(monkeypatch):
    """The siblings' zeros decide the loop's first read: the trace stops there and is done
    again with their ops run, rather than running the whole loop first."""
    monkeypatch.setattr(trace, "CHECK_REPEATS", False)
    model = DecodesAfter().eval()
    steps = []
    model.step.register_forward_pre_hook(lambda m, args: steps.append(1))
    x = torch.randn(2, 8)
    dg = DependencyGraph(model, x)
    assert len(steps) == 1 + 20  # (one step until the read, then the whole loop)
    assert dg.graph.replayed == 3
    whole = trace_as(model, x, TraceMode.REAL, walk=ModelWalk.of(model))
    assert differences(dg.graph, whole) == []


# -- a module called again and again --------------------------------------------------------
CELL_RUNS: list[int] = []  # (outside the model: its code's runs, unseen by the replays)


class Cell(nn.Module):
    """A recurrent cell: its input made by its own call before."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * width, 2 * width)
        self.out = nn.Linear(2 * width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x, h):
        CELL_RUNS.append(1)
        return self.norm(self.out(torch.tanh(self.fc(torch.cat([x, h], -1)))) + h)


class Decoder(nn.Module):
    """A cell in a loop (a decoder's steps); ``reads``: the loop reads a value at every
    step, as a stop test does."""

    def __init__(self, steps: int = 12, reads: bool = False) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 8)
        self.cell = Cell()
        self.head = nn.Linear(8, 3)
        self.steps, self.reads = steps, reads

    def forward(self, x):
        x = self.encoder(x)
        h = torch.zeros_like(x)
        outs = []
        for _ in range(self.steps):
            h = self.cell(x, h)
            outs.append(self.head(h))
            if self.reads and bool(h.abs().sum() > 1e9):  # (never: every step runs)
                break
        return torch.stack(outs, 1)


@pytest.mark.parametrize("mode", ["real", "meta", "fake"])
@pytest.mark.parametrize("reads", [False, True])
def test_a_module_called_in_a_loop_is_replayed_from_its_second_call(mode, reads, monkeypatch):
    """Its first call runs (it may set up what it keeps), its second is the template, and
    every later one a replay: its code runs twice, and the graph is the whole trace's."""
    if reads and mode != "real":
        pytest.skip("a value is read on real tensors only")
    monkeypatch.setattr(trace, "CHECK_REPEATS", False)  # (its whole trace: counted below)
    model = Decoder(reads=reads).eval()
    CELL_RUNS.clear()
    replayed, whole, reads_seen, reads_whole = traced_both_ways(model, torch.randn(2, 8), mode)
    # (the head is called in the loop too: its own replays)
    assert replayed.replayed == 2 * (model.steps - 2)
    assert replayed.replayed_modules == {"cell", "head"}
    assert differences(replayed, whole) == []
    assert reads_seen == reads_whole
    # twice in the trace with replays (twice more where a speculative one, its replays
    # returning zeros, stopped at the first read), every step in the whole trace
    assert len(CELL_RUNS) == 2 + (2 if reads else 0) + model.steps


class CellCountingItsCalls(Cell):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x, h):
        self.calls += 1  # (its state changes with each call: no call stands for another)
        return super().forward(x, h) * self.calls


class CountingDecoder(Decoder):
    def __init__(self) -> None:
        super().__init__()
        self.cell = CellCountingItsCalls()

    def forward(self, x):
        self.cell.calls = 0  # (every forward counts from 0: every trace records the same)
        return super().forward(x)


def test_a_module_that_changes_its_state_is_traced_at_every_call():
    model = CountingDecoder().eval()
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert "cell" not in replayed.replayed_modules
    assert differences(replayed, whole) == []
    muls = [n.args[1] for n in replayed.nodes if n.packet == "aten.mul" and n.module == "cell"]
    assert muls == list(range(1, model.steps + 1))  # (its counts, each call traced)


class Grows(nn.Module):
    """Attends over every step so far: the cell's input grows at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(8, 1)

    def forward(self, x, past):
        return x + (torch.softmax(self.score(past), 1) * past).sum(1)


class GrowingDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attend = Grows()

    def forward(self, x):
        past = [x]
        for _ in range(6):
            x = self.attend(x, torch.stack(past, 1))
            past.append(x)
        return x


def test_a_call_with_other_shapes_than_its_template_runs():
    model = GrowingDecoder().eval()
    replayed, whole, _, _ = traced_both_ways(model, torch.randn(2, 8))
    assert replayed.replayed == 0
    assert differences(replayed, whole) == []


def test_a_loops_calls_take_their_rules_from_the_template():
    """Each call's input is made non-zero by the call before it, as the template's was by
    the first: its rules are the template's, that op moved along (checked against mapping
    every op in check mode, which the suite runs in)."""
    model = Decoder(steps=10).eval()
    dg = DependencyGraph(model, torch.randn(2, 8))
    assert dg.graph.replayed == 2 * 8
    assert dg.coupling_model.rules_replayed == dg.graph.replayed


def test_a_prune_of_a_loop_is_exact():
    model = Decoder(steps=10).double().eval()
    x = torch.randn(2, 8, dtype=torch.float64)
    reference = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, exact_only=True)
    assert result.params_after < result.params_before
    assert_scatter_back_equal(reference, model, result, x)


class TorchCells(nn.Module):
    """torch's own cells in a loop over time steps (a state passed as a tuple)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.cell = nn.Linear(6, 12), nn.LSTMCell(12, 16)
        self.gru, self.out = nn.GRUCell(16, 10), nn.Linear(10, 3)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], 16)
        g = x.new_zeros(x.shape[0], 10)
        ys = []
        for t in range(x.shape[1]):
            h, c = self.cell(self.inp(x[:, t]), (h, c))
            g = self.gru(h, g)
            ys.append(self.out(g))
        return torch.stack(ys, 1)


def test_torch_cells_in_a_loop_are_replayed_and_prune_exactly():
    model = TorchCells().double().eval()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    dg = DependencyGraph(model, x)
    assert dg.graph.replayed_modules == {"inp", "cell", "gru", "out"}
    assert dg.graph.replayed == 4 * (9 - 2)
    assert dg.coupling_model.rules_replayed == dg.graph.replayed
    reference = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, exact_only=True)
    assert result.params_after < result.params_before
    assert_scatter_back_equal(reference, model, result, x)
