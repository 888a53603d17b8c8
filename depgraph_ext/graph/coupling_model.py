"""The rules applied to every traced op: the couplings of a graph, and what the rules learnt
on the way (opaque ops, module attributes that follow slots, group kinds, attention calls)."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

import torch

from ..errors import UnsupportedOpError
from .couplings import CouplingBuilder, Couplings
from .rules import AttentionCall, Reduction, RuleContext, RuleError, rule_for
from .trace import OpGraph


@dataclass
class OpaqueOp:
    op: str
    module: str
    node: int
    reason: str
    blocked: list[str] = field(default_factory=list)  # parameter names it kept from pruning

    def describe(self) -> str:
        what = ", ".join(self.blocked[:6]) + (" ..." if len(self.blocked) > 6 else "")
        return (
            f"op {self.op} in module {self.module or '<root>'} ({self.reason}) blocks pruning of "
            f"the channels it touches" + (f": {what}" if what else "")
        )


@dataclass
class CouplingModel:
    couplings: Couplings
    value_slots: list[list[int]]
    attr_slots: list[tuple[str, str, int]]
    opaque: list[OpaqueOp]
    kind_slots: list[tuple[int, str]]
    attention: list[AttentionCall]
    # (node index, first coupling, end) of every rule that emitted couplings, in order
    rule_spans: list[tuple[int, int, int]] = field(default_factory=list)
    reductions: list[Reduction] = field(default_factory=list)
    min_sizes: list[tuple[int, int]] = field(default_factory=list)  # (slot, indices it keeps)
    routers: list[tuple[int, str]] = field(default_factory=list)  # (experts slot, router module)

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
) -> CouplingModel:
    """Apply the op rules to every traced node; block inputs, outputs, ignored and opaque.

    ``hidden_tensors``: 1-D parameters whose dim is the residual stream (norm weights).
    ``malformed``: nodes whose rules emitted couplings resolution refused (node index ->
    why): they are opaque this time."""
    malformed = malformed or {}
    builder = CouplingBuilder()
    ctx = RuleContext(graph, builder)
    for name in hidden_tensors:
        ctx.tag(ctx.slots(graph.params[name])[0], "hidden")
    for v in graph.inputs + graph.outputs:
        ctx.block_value(v)
    named = graph.params | graph.buffers
    for name in sorted(ignored):
        ctx.block_value(named[name])
    opaque: list[OpaqueOp] = []
    spans: list[tuple[int, int, int]] = []
    touched_anywhere: set[int] = set()
    for node in graph.nodes:
        rule = rule_for(node)
        reason = "no rule for this op"
        if node.index in malformed:
            rule, reason = None, malformed[node.index]
        ctx.mapped_positions = set()
        if rule is not None:
            checkpoint = builder.checkpoint()
            ctx.touched = set()
            try:
                rule(ctx, node)
            except (RuleError, IndexError, TypeError, ValueError) as exc:
                builder.rollback(checkpoint)
                reason = f"its rule cannot map this call: {exc}"
                rule = None
            else:
                after = builder.checkpoint()[1]
                if after > checkpoint[1]:
                    spans.append((node.index, checkpoint[1], after))
        if rule is None:
            if strict:
                raise UnsupportedOpError(
                    f"op {node.name} in module {node.module or '<root>'} has no exact rule "
                    f"({reason}); strict mode refuses to guess. Register one with "
                    "depgraph_ext.register_rule or pass strict=False to block its channels"
                )
            opaque.append(OpaqueOp(node.name, node.module, node.index, reason))
            for v in node.inputs + node.outputs:
                ctx.block_value(v)
            if ctx.index_domains:
                _positions_read(ctx, node)
            continue
        touched_anywhere |= ctx.touched
        if ctx.index_domains:  # positions (a top-k's indices) seen so far: where they go
            _carry_index_domain(ctx, node)
            _positions_read(ctx, node)
        # An input dim the rule neither coupled nor freed has its size fixed by this op (a
        # convolution's kernel taps, read through a view): a dim is prunable only if every
        # op that reads it allows it.
        for v in dict.fromkeys(node.inputs):
            for s in ctx.slots(v):
                if s not in ctx.touched and ctx.size(s) != 1:
                    ctx.block(s)
        for v in node.outputs:
            for s in ctx.slots(v):
                if s not in ctx.touched and ctx.size(s) != 1:
                    ctx.block(s)
    for v in graph.outputs:  # positions handed out fix what they point at
        if (domain := ctx.domain(v)) is not None:
            ctx.block(domain[0])
    # A parameter dim no rule relates to anything (a conv kernel dim, say) has its size fixed by
    # the op that reads it.
    for name in named:
        for s in ctx.slots(named[name]):
            if s not in touched_anywhere and ctx.size(s) != 1:
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
    return CouplingModel(
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
    )


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
