"""The rules applied to every traced op: the couplings of a graph, and what the rules learnt
on the way (opaque ops, module attributes that follow slots, group kinds, attention calls)."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import itertools
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InternalError, UnsupportedOpError
from . import trace
from .blockers import BlockSource
from .couplings import CouplingBuilder, CouplingKind, Couplings
from .rule_replay import RuleChunks
from .rules import AttentionCall, Reduction, RuleContext, RuleError, rule_for
from .rules.zeros import ZeroTracker
from .trace import OpGraph


@dataclass
class OpaqueOp:
    op: str
    module: str
    node: int
    reason: str
    blocked: list[str] = field(default_factory=list)  # parameter names it kept from pruning
    site: str = ""  # ``op <name> in module <module> at <file>:<line> (<code>)``

    def describe(self) -> str:
        what = ", ".join(self.blocked[:6]) + (" ..." if len(self.blocked) > 6 else "")
        site = self.site or f"op {self.op} in module {self.module or '<root>'}"
        return f"{site} ({self.reason}) blocks pruning of the channels it touches" + (
            f": {what}" if what else ""
        )


@dataclass
class CouplingModel:
    couplings: Couplings
    value_slots: list[list[int]]
    attr_slots: list[tuple[str, str, int]]
    opaque: list[OpaqueOp]
    kind_slots: list[tuple[int, str]]
    attention: list[AttentionCall]
    # (node index, first coupling, end) of the couplings of every op that has any, in order:
    # its rule's, and the blocks of the dims it fixes (all of an op without a rule's dims)
    rule_spans: list[tuple[int, int, int]] = field(default_factory=list)
    reductions: list[Reduction] = field(default_factory=list)
    min_sizes: list[tuple[int, int]] = field(default_factory=list)  # (slot, indices it keeps)
    routers: list[tuple[int, str]] = field(default_factory=list)  # (experts slot, router module)
    # Dims (slots of size > 1) of the values other than parameters whose values come only from
    # constants and buffers (a coordinate table, a frequency table: see ``carried_slots``), and
    # those whose values come from a parameter or an input.
    constant_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    varying_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # (first coupling, end, source) of the blocks of the model's inputs and outputs, ignored
    # tensors and the like, in order (graph/blockers.py); an op's are in ``rule_spans``, and
    # blocks added later (``with_blocks``) lie past both.
    block_spans: list[tuple[int, int, BlockSource]] = field(default_factory=list)
    # Replayed module calls whose couplings were taken from their templates' (rule_replay.py)
    rules_replayed: int = 0

    @property
    def attention_modules(self) -> set[str]:
        """The modules that run attention calls."""
        return {call.module for call in self.attention}

    def node_that_emitted(self, coupling: int) -> int | None:
        """The node whose rule emitted coupling number ``coupling`` (None: no rule did)."""
        i = bisect.bisect_right([start for _, start, _ in self.rule_spans], coupling) - 1
        if i >= 0 and coupling < self.rule_spans[i][2]:
            return self.rule_spans[i][0]
        return None

    def node_of_malformed(self, error: ValueError) -> int | None:
        """The node whose rule emitted the coupling a resolution refused (its message names
        the coupling: ``coupling K (KIND): ...``), or None."""
        match = re.match(r"coupling (\d+)\b", str(error))
        return self.node_that_emitted(int(match.group(1))) if match else None


def build_couplings(
    graph: OpGraph,
    ignored: set[str],
    strict: bool,
    hidden_tensors: list[str] = (),
    malformed: dict[int, str] | None = None,
    computed_buffers=(),
    free_outputs=(),
    tied_dims=(),
    head_layouts=(),
    replay_rules: bool = True,
) -> CouplingModel:
    """Apply the op rules to every traced node; block inputs, outputs, ignored and opaque.

    ``hidden_tensors``: 1-D parameters whose dim is the residual stream (norm weights).
    ``computed_buffers``: the buffers the model computes from its config (``state_dict``
    leaves them out): constants, as ``carried_slots`` says. ``free_outputs``: positions in
    ``graph.outputs`` of outputs whose width may shrink (the others keep every dim).
    ``malformed``: nodes whose rules emitted couplings resolution refused (node index ->
    why): they are opaque this time. ``tied_dims``: (parameter, dim, dim) that a module's
    own code requires to be equal, where no traced op says so (an RNN cell's check, in C++,
    that its recurrent weight is square). ``head_layouts``: (heads, [(parameter, dim, parts)])
    of attention modules whose code derives the head dim from the embedding width (each dim
    is ``parts`` x heads x head dim, the head dim kept; see :func:`_head_layout`)."""
    malformed = malformed or {}
    builder = CouplingBuilder()
    ctx = RuleContext(graph, builder)
    zeros = ZeroTracker(graph)
    ctx.zeros = zeros.culprit
    block_spans: list[tuple[int, int, BlockSource]] = []
    emitted = builder._kinds  # (one per coupling: its length is the count, read per node)

    @contextlib.contextmanager
    def blocks_from(origin: BlockSource):
        """The couplings emitted inside the block came from ``origin``."""
        start = len(emitted)
        yield
        if len(emitted) > start:
            block_spans.append((start, len(emitted), origin))

    for name in hidden_tensors:
        ctx.tag(ctx.slots(graph.params[name])[0], "hidden")
    for name, a, b in tied_dims:
        slots = ctx.slots(graph.params[name])
        ctx.equal(slots[a], slots[b])
    for heads, dims in head_layouts:
        with blocks_from(BlockSource("head layout", name=dims[0][0])):
            _head_layout(ctx, graph, heads, dims)
    free = {graph.outputs[i] for i in free_outputs}
    for v in graph.inputs:
        with blocks_from(BlockSource("input", v)):
            ctx.block_value(v)
    for v in graph.outputs:
        if v not in free:
            with blocks_from(BlockSource("output", v)):
                ctx.block_value(v)
    named = graph.params | graph.buffers
    for name in sorted(ignored):
        with blocks_from(BlockSource("ignored", name=name)):
            ctx.block_value(named[name])
    opaque: list[OpaqueOp] = []
    spans: list[tuple[int, int, int]] = []
    touched_anywhere: set[int] = set()
    chunks = RuleChunks(graph, ctx, zeros, malformed) if replay_rules and graph.replays else None

    def map_node(node, recorded: set | None) -> None:
        """Apply ``node``'s rule (``recorded``: where a recorded call's touched slots go)."""
        rule = rule_for(node)
        reason = "no rule for this op"
        if node.index in malformed:
            rule, reason = None, malformed[node.index]
        ctx.mapped_positions = set()
        start = len(emitted)
        if rule is not None:
            checkpoint = builder.checkpoint()
            ctx.touched = set()
            try:
                rule(ctx, node)
            except (RuleError, IndexError, TypeError, ValueError) as exc:
                builder.rollback(checkpoint)
                reason = f"its rule cannot map this call: {exc}"
                rule = None
        if rule is None:
            if strict:
                raise UnsupportedOpError(
                    f"op {node.name} in module {node.module or '<root>'} has no exact rule "
                    f"({reason}); strict mode refuses to guess. Register one with "
                    "depgraph_ext.register_rule or pass strict=False to block its channels"
                )
            opaque.append(
                OpaqueOp(node.name, node.module, node.index, reason, site=node.describe())
            )
            for v in node.inputs + node.outputs:
                ctx.block_value(v)
            if ctx.index_domains:
                _positions_read(ctx, node)
            spans.append((node.index, start, len(emitted)))
            return
        touched_anywhere.update(ctx.touched)
        if recorded is not None:
            recorded.update(ctx.touched)
        if ctx.index_domains or recorded is not None:  # positions (a top-k's indices) seen
            # so far: where they go (a recorded call: always, to note what it reads)
            _carry_index_domain(ctx, node)
            _positions_read(ctx, node)
        # An input dim the rule neither coupled nor freed has its size fixed by this op (a
        # convolution's kernel taps, read through a view): a dim is prunable only if every
        # op that reads it allows it.
        # (a stack of a decoder's growing list reads thousands of values: their slots are
        # checked in one C-level pass first, and looked at one by one only where one is not)
        values = list(dict.fromkeys(node.inputs)) + node.outputs
        value_slots, touched = ctx.value_slots, ctx.touched
        if not touched.issuperset(
            itertools.chain.from_iterable(map(value_slots.__getitem__, values))
        ):
            sizes = builder.slot_sizes
            for v in values:
                for s in value_slots[v]:
                    if s not in touched and sizes[s] != 1:
                        ctx.block(s)
        if len(emitted) > start:
            spans.append((node.index, start, len(emitted)))

    nodes, i = graph.nodes, 0
    while i < len(nodes):
        if chunks is not None:
            taken = chunks.at(i, spans, touched_anywhere, opaque)
            if taken:
                i += taken
                continue
            map_node(nodes[i], chunks.touched_sink)
        else:
            map_node(nodes[i], None)
        i += 1
    if chunks is not None:
        chunks.at(len(nodes), spans, touched_anywhere, opaque)  # (a call ending the graph)
    for v in graph.outputs:  # positions handed out fix what they point at
        if (domain := ctx.domain(v)) is not None:
            with blocks_from(BlockSource("positions", v)):
                ctx.block(domain[0])
    for v, d in graph.output_sizes:  # a size returned as a number is an output too
        if d < len(ctx.slots(v)):
            with blocks_from(BlockSource("output size", v)):
                ctx.block(ctx.slots(v)[d])
    # A parameter dim no rule relates to anything (a conv kernel dim, say) has its size fixed by
    # the op that reads it.
    for name in named:
        for s in ctx.slots(named[name]):
            if s not in touched_anywhere and ctx.size(s) != 1:
                with blocks_from(BlockSource("unrelated", name=name)):
                    ctx.block(s)
    query = [s for name in sorted(named, key=lambda n: named[n]) for s in ctx.slots(named[name])]
    query += [slot for _, _, slot in ctx.attr_slots]
    query += [slot for slot, _ in ctx.kind_slots]
    query += [slot for slot, _ in ctx.min_sizes]
    query += [slot for slot, _ in ctx.routers]
    query += [
        s
        for call in ctx.attention
        for s in (call.heads, call.kv_heads, call.head_dim, call.v_head_dim)
        if s >= 0
    ]
    constant, varying = carried_slots(ctx, graph, spans, set(computed_buffers))
    model = CouplingModel(
        builder.build(query),
        ctx.value_slots,
        ctx.attr_slots,
        opaque,
        ctx.kind_slots,
        ctx.attention,
        spans,
        ctx.reductions,
        ctx.min_sizes,
        ctx.routers,
        constant,
        varying,
        block_spans,
    )
    model.rules_replayed = chunks.applied if chunks is not None else 0
    if model.rules_replayed and trace.CHECK_REPEATS:
        _check_replayed_rules(
            model,
            build_couplings(
                graph,
                ignored,
                strict,
                hidden_tensors,
                malformed,
                computed_buffers,
                free_outputs,
                tied_dims,
                head_layouts,
                replay_rules=False,
            ),
        )
    return model


def _check_replayed_rules(model: CouplingModel, whole: CouplingModel) -> None:
    """Raise InternalError where the couplings made with replayed calls' rules taken from
    their templates' differ from those of every op's rule (check mode)."""
    found = []
    for name in ("slot_sizes", "kinds", "offsets", "data", "query_slots"):
        a, b = getattr(model.couplings, name), getattr(whole.couplings, name)
        if a.shape != b.shape or not np.array_equal(a, b):
            found.append(f"couplings.{name}")
    for f in dataclasses.fields(CouplingModel):
        if f.name in ("couplings", "rules_replayed"):
            continue
        a, b = getattr(model, f.name), getattr(whole, f.name)
        if f.name == "opaque":  # (what each blocks is filled in later: dependency.py)
            a, b = ([(op.node, op.reason, op.site) for op in ops] for ops in (a, b))
        same = np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
        if not same:
            found.append(f.name)
    if found:
        raise InternalError(
            "internal error: the rules taken from replayed calls' templates differ from every "
            f"op's own in {', '.join(found)}"
        )


def _head_layout(ctx: RuleContext, graph: OpGraph, heads: int, dims) -> None:
    """One module's dims, each ``parts`` x heads x head dim, their heads one slot and their
    head dims kept: nn.MultiheadAttention's Python path computes ``head_dim = embed_dim //
    num_heads`` from the query's width, so the widths it takes and makes must stay heads x
    head dim; a unit is a head with a block of head-dim channels of each (as its fused op's
    rule says). No op shows this: the widths and the heads would prune apart."""
    slots = [(ctx.slots(graph.params[name])[dim], parts) for name, dim, parts in dims]
    width = ctx.size(slots[0][0]) // slots[0][1]
    h, d = ctx.new_slot(heads), ctx.new_slot(width // heads)
    ctx.block(d)
    for slot, parts in slots:
        if parts == 1:
            ctx.reshape([slot], [h, d])
        else:
            part = ctx.new_slot(parts)
            ctx.block(part)
            ctx.reshape([slot], [part, h, d])
    ctx.tag(h, "heads")


def carried_slots(
    ctx: RuleContext, graph: OpGraph, spans: list[tuple[int, int, int]], computed: set[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(dims whose values come only from constants, dims whose values come from the model's
    state or its inputs), over the dims of size > 1 of every value the model's state alone
    does not make.

    Constants: the buffers the model computes from its config (``computed``: the ones its
    ``state_dict`` leaves out), tensors from outside the model, what creation ops make. State:
    parameters and the other buffers (running statistics). Along a dim of an op's result,
    values come from the input dims the op's rule couples it with (an element-wise op's
    aligned dims, a matmul's outer dims; not a contracted dim, not a dim an operand is
    broadcast along): every dim of the state and of the inputs varies, and so does each result
    dim coupled, within its op, to a dim that varies. A table of coordinates or frequencies
    varies along no dim. What the state alone makes (a transposed weight, a weight a
    parametrization computes) reads values rather than carrying them, and is left out."""
    builder = ctx.builder
    sizes, slots_of = builder.slot_sizes, ctx.value_slots
    n = ctx.value_slot_count  # value slots come first, value by value
    varies = bytearray(b"\x01") * n  # what a dim does unless it comes from constants alone
    state = {v for name, v in graph.params.items() | graph.buffers.items() if name not in computed}
    # Values with a dim that does not vary: constants, and what ops make of them.
    tainted = {graph.buffers[name] for name in computed}
    tainted.update(v.index for v in graph.values if v.kind == "constant")
    span_nodes = [node for node, _, _ in spans]  # (in node order: looked up where needed)
    kinds, offsets, data = builder._kinds, builder._offsets, builder._data
    reshape, equal = int(CouplingKind.RESHAPE), int(CouplingKind.EQUAL)
    pieces = (int(CouplingKind.CAT_PIECE), int(CouplingKind.SLICE))
    for v in tainted:
        for s in slots_of[v]:
            varies[s] = 0
    for node in graph.nodes:
        ins = node.inputs
        if not ins:  # a creation op (arange, zeros): values from the call alone
            tainted.update(node.outputs)
            for v in node.outputs:
                for s in slots_of[v]:
                    varies[s] = 0
            continue
        if state.issuperset(ins):
            state.update(node.outputs)
        if tainted.isdisjoint(ins):  # the common case: nothing constant comes in
            continue
        # Which result dims are coupled, within the op, to a dim that varies.
        parent: dict[int, int] = {}
        at = bisect.bisect_left(span_nodes, node.index)
        start, end = spans[at][1:] if at < len(spans) and span_nodes[at] == node.index else (0, 0)
        for k in range(start, end):
            ops = data[offsets[k] : offsets[k + 1]]
            kind = kinds[k]
            if kind == equal:
                linked = ops
            elif kind == reshape:
                linked = ops[1 : 1 + ops[0]] + ops[2 + ops[0] :]
            elif kind in pieces:
                linked = ops[:2]
            else:
                continue
            first = _find(parent, linked[0])
            for x in linked[1:]:
                parent[_find(parent, x)] = first
        inputs = {s for v in ins for s in slots_of[v]}
        sources = {_find(parent, s) for s in inputs if varies[s]}
        for v in node.outputs:
            for s in slots_of[v]:
                if s not in inputs:
                    varies[s] = _find(parent, s) in sources
                elif not varies[s] and _find(parent, s) in sources:  # an in-place op's
                    varies[s] = 1
                if not varies[s] and sizes[s] != 1:
                    tainted.add(v)
    flags = np.frombuffer(bytes(varies), dtype=np.uint8).astype(bool)
    wanted = np.asarray(sizes[:n], dtype=np.int64) > 1
    wanted[[s for v in state for s in slots_of[v]]] = False
    return np.nonzero(wanted & ~flags)[0], np.nonzero(wanted & flags)[0]


def _find(parent: dict[int, int], x: int) -> int:
    """The root of ``x`` in a union-find forest kept as a dict (absent: a root)."""
    root = x
    while parent.get(root, root) != root:
        root = parent[root]
    parent[x] = root
    return root


# Ops whose integer results hold the same positions as their first input (reshaped, copied).
_POSITION_PRESERVING = frozenset(
    "aten.view aten._unsafe_view aten.reshape aten.clone aten.contiguous aten.expand "
    "aten.flatten aten.squeeze aten.unsqueeze aten.permute aten.transpose aten.t aten.select "
    "aten.slice aten.repeat_interleave aten.repeat aten.alias aten.detach aten._to_copy "
    "aten.lift_fresh_copy aten.view_copy aten.expand_copy".split()
)


def _positions_read(ctx: RuleContext, node) -> None:
    """Positions along a slot read other than by a coupled index or a position-preserving
    op (compared with a constant expert number, counted, fed to an opaque op) fix that slot:
    its indices must keep their numbers."""
    if node.packet in _POSITION_PRESERVING:
        return
    for v in node.inputs:
        domain = ctx.domain(v)
        if domain is not None and v not in ctx.mapped_positions:
            ctx.block(domain[0])


def _carry_index_domain(ctx: RuleContext, node) -> None:
    """Integer results of a position-preserving op on indices into a slot index it too."""
    if not node.inputs or node.packet not in _POSITION_PRESERVING:
        return
    domain = ctx.domain(node.inputs[0])
    if domain is None:
        return
    for v in node.outputs:
        dtype = ctx.graph.values[v].dtype
        if not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool:
            ctx.indexes(v, *domain)
        else:  # positions turned into numbers: whatever reads them fixes the slot
            ctx.block(domain[0])
