"""What a rule sees and emits: :class:`RuleContext`, the argument helpers, and the records
rules leave for later stages (attention calls)."""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass

from ..couplings import CouplingBuilder
from ..trace import Node, OpGraph, Ref


class RuleContext:
    """What a rule sees: the traced graph, the slots of each value, and coupling emitters."""

    def __init__(self, graph: OpGraph, builder: CouplingBuilder) -> None:
        self.graph = graph
        # (``graph`` is watched while rule_replay records a call's rules: these are not)
        self._values, self._nodes = graph.values, graph.nodes
        self.builder = builder
        # One slot per dim of every value, numbered value by value (slots made in bulk: a
        # call per slot was a sixth of applying the rules).
        sizes = builder.slot_sizes
        self.value_slots: list[list[int]] = []
        for value in graph.values:
            start = len(sizes)
            sizes.extend(value.shape)
            self.value_slots.append(list(range(start, len(sizes))))
        self.value_slot_count = len(sizes)
        self.touched: set[int] = set()
        # (module name, attribute, slot): the attribute's new value is the slot's kept size.
        self.attr_slots: list[tuple[str, str, int]] = []
        # (slot, kind): the group of the slot's units is of that kind ("heads", "hidden").
        self.kind_slots: list[tuple[int, str]] = []
        self.attention: list[AttentionCall] = []
        # Ops that reduce over a slot with more than a sum (a mean, a norm's statistics, a
        # softmax, a max ...): removing any of its indices changes every result, so a group
        # with units there is function-changing.
        self.reductions: list[Reduction] = []
        # Integer tensors whose values are positions along a slot (top-k indices of a router's
        # logits): value -> (slot, module of the op that chose them). A dim indexed by such
        # values is that slot, so the two are coupled (experts and their router rows).
        self.index_domains: dict[int, tuple[int, str]] = {}
        # (slot, n): the slot must keep at least n indices (a top-k's k).
        self.min_sizes: list[tuple[int, int]] = []
        # (slot, module): a bank of experts along the slot, chosen by the module (its router).
        self.routers: list[tuple[int, str]] = []
        self.mapped_positions: set[int] = set()  # index values the current op coupled
        # value -> the op that makes it non-zero at removed units, or None (zeros.ZeroTracker's
        # culprit; the caller sets it: zeros.py reads arguments with this module's ``arg``)
        self.zeros = None
        # While rule_replay records a module call's rules: every read of the graph beyond the
        # op's own values, with what it found, and the index positions set.
        self.reads: list | None = None
        self.domain_writes: list | None = None

    def nonzero_at_removed(self, v: int | Ref) -> Node | None:
        """The op that makes value ``v`` non-zero at a group's removed (zeroed) units (an exp,
        a sigmoid, a constant added), or None where ``v`` is zero there (see zeros.py)."""
        v = v.value if isinstance(v, Ref) else v
        culprit = self.zeros(v)
        if self.reads is not None:
            self.reads.append(("culprit", v, culprit))
        return culprit

    # -- reading ---------------------------------------------------------------------------
    def slots(self, v: int | Ref) -> list[int]:
        return self.value_slots[v.value if isinstance(v, Ref) else v]

    def shape(self, v: int | Ref) -> tuple[int, ...]:
        return self._values[v.value if isinstance(v, Ref) else v].shape

    def size(self, slot: int) -> int:
        return self.builder.slot_sizes[slot]

    def consumers(self, v: int) -> list[Node]:
        """Nodes reading value ``v``, in order."""
        if not hasattr(self, "_consumers"):
            self._consumers: dict[int, list[Node]] = {}
            for node in self._nodes:
                for i in dict.fromkeys(node.inputs):
                    self._consumers.setdefault(i, []).append(node)
        found = self._consumers.get(v, [])
        if self.reads is not None:
            self.reads.append(("consumers", v, [n.index for n in found]))
        return found

    # -- emitting ----------------------------------------------------------------------------
    def new_slot(self, size: int) -> int:
        return self.builder.new_slot(size)

    def equal(self, a: int, b: int) -> None:
        sizes = self.builder.slot_sizes
        if sizes[a] != sizes[b]:
            raise RuleError(f"EQUAL between slots of sizes {sizes[a]} and {sizes[b]}")
        self.touched.add(a)
        self.touched.add(b)
        self.builder.equal(a, b)

    def equal_pairs(self, a: list[int], b: list[int]) -> None:
        """``equal(a[i], b[i])`` for every i (slot lists of the same length)."""
        sizes = self.builder.slot_sizes
        size_of = sizes.__getitem__
        if any(map(operator.ne, map(size_of, a), map(size_of, b))):  # (one C-level pass)
            x, y = next((x, y) for x, y in zip(a, b) if sizes[x] != sizes[y])
            raise RuleError(f"EQUAL between slots of sizes {sizes[x]} and {sizes[y]}")
        self.touched.update(a)
        self.touched.update(b)
        self.builder.equal_pairs(a, b)

    def reshape(self, ins: list[int], outs: list[int]) -> None:
        self.touched.update(ins)
        self.touched.update(outs)
        self.builder.reshape(ins, outs)

    def cat_piece(self, whole: int, piece: int, offset: int) -> None:
        self.touched.update((whole, piece))
        self.builder.cat_piece(whole, piece, offset)

    def slice(self, whole: int, piece: int, start: int, step: int) -> None:
        self.touched.update((whole, piece))
        self.builder.slice(whole, piece, start, step)

    def block(self, slot: int) -> None:
        self.touched.add(slot)
        self.builder.block(slot)

    def block_value(self, v: int | Ref) -> None:
        for s in self.slots(v):
            self.block(s)

    def free(self, slot: int) -> None:
        """An input dim the op drops where removed (zeroed) indices contribute nothing (a
        summed dim): any index may go. An input dim a rule neither couples nor frees is
        fixed by the op and blocked."""
        self.touched.add(slot)

    def reduces(self, slot: int, node: Node, what: str, culprit: Node | None = None) -> None:
        """``node`` reduces over input dim ``slot`` with ``what`` (a mean, a statistic ...):
        any index may go, but removing one changes the result for every other. ``culprit``: the
        op that makes the removed values non-zero, where that is why (a sum of them)."""
        self.touched.add(slot)
        if culprit is None:
            self.reductions.append(Reduction(slot, node.name, node.module, what))
        else:
            self.reductions.append(
                Reduction(
                    slot,
                    node.name,
                    node.module,
                    f"{what} over units whose removed values are not zero",
                    culprit.index,
                    culprit.name,
                    culprit.module,
                )
            )

    def indexes(self, v: int | Ref, slot: int, module: str) -> None:
        """The values of integer tensor ``v`` are positions along ``slot`` (chosen in
        ``module``)."""
        v = v.value if isinstance(v, Ref) else v
        self.index_domains[v] = (slot, module)
        if self.domain_writes is not None:
            self.domain_writes.append((v, slot, module))

    def domain(self, v) -> tuple[int, str] | None:
        """(slot, module) whose positions the values of ``v`` are, if known."""
        if not isinstance(v, (int, Ref)):
            return None
        v = v.value if isinstance(v, Ref) else v
        found = self.index_domains.get(v)
        if self.reads is not None:
            self.reads.append(("domain", v, found))
        return found

    def add_router(self, slot: int, module: str) -> None:
        """A bank of experts along ``slot``, chosen by ``module`` (its router), noted once."""
        known = (slot, module) in self.routers
        if self.reads is not None:
            self.reads.append(("router", (slot, module), known))
        if not known:
            self.routers.append((slot, module))

    def keeps_at_least(self, slot: int, n: int) -> None:
        self.touched.add(slot)
        self.min_sizes.append((slot, n))

    def set_attr_from_slot(self, module: str, attr: str, slot: int) -> None:
        self.attr_slots.append((module, attr, slot))

    def tag(self, slot: int, kind: str) -> None:
        self.kind_slots.append((slot, kind))

    # -- shared patterns -------------------------------------------------------------------
    def equal_dims(self, a: int | Ref, b: int | Ref, pairs) -> None:
        sa, sb = self.slots(a), self.slots(b)
        for i, j in pairs:
            self.equal(sa[i], sb[j])

    def broadcast(self, ins, outs) -> None:
        """Element-wise with broadcasting: equal-sized dims aligned from the right are one."""
        for o in outs:
            so, shape_o = self.slots(o), self.shape(o)
            for v in ins:
                sv, shape_v = self.slots(v), self.shape(v)
                lead = len(shape_o) - len(shape_v)
                for i, size in enumerate(shape_v):
                    j = lead + i
                    if j >= 0 and size == shape_o[j] and size != 1:
                        self.equal(sv[i], so[j])

    def reshape_dims(self, src: int | Ref, dst: int | Ref) -> None:
        """Couple a tensor with its reshaped view: minimal runs of dims with equal products."""
        shape_s, shape_d = self.shape(src), self.shape(dst)
        ss, sd = self.slots(src), self.slots(dst)
        if 0 in shape_s or 0 in shape_d:
            return
        ins = [(i, n) for i, n in enumerate(shape_s) if n != 1]
        outs = [(j, n) for j, n in enumerate(shape_d) if n != 1]
        i = j = 0
        while i < len(ins) and j < len(outs):
            run_in, run_out = [ins[i]], [outs[j]]
            p_in, p_out = ins[i][1], outs[j][1]
            i += 1
            j += 1
            while p_in != p_out:
                if p_in < p_out:
                    run_in.append(ins[i])
                    p_in *= ins[i][1]
                    i += 1
                else:
                    run_out.append(outs[j])
                    p_out *= outs[j][1]
                    j += 1
            if len(run_in) == 1 and len(run_out) == 1:
                self.equal(ss[run_in[0][0]], sd[run_out[0][0]])
            else:
                self.reshape([ss[k] for k, _ in run_in], [sd[k] for k, _ in run_out])


@dataclass(frozen=True)
class AttentionCall:
    """One attention op: its module and the slots of its query heads, key/value heads and head
    dims (what attention modules' attributes and a transformers config describe)."""

    module: str
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class Reduction:
    """An op reducing over a slot with more than a sum: why removing its units is not the same
    as zeroing them."""

    slot: int
    op: str
    module: str
    what: str
    # The op that makes the removed values non-zero, where that is why (its node, op, module).
    culprit: int = -1
    culprit_op: str = ""
    culprit_module: str = ""

    def describe(self) -> str:
        what = self.what
        if self.culprit >= 0:
            what += f" ({self.culprit_op} in module {self.culprit_module or '<root>'})"
        return f"{what} ({self.op} in module {self.module or '<root>'})"


class RuleError(Exception):
    """A rule met a call it cannot map exactly; the op is then treated as opaque."""


def arg(node: Node, name: str, default=None):
    """An argument of ``node`` by its schema name, positional or keyword."""
    if name in node.kwargs:
        return node.kwargs[name]
    positions = _ARG_POSITIONS.get(node.op)
    if positions is None:
        positions = {a.name: i for i, a in enumerate(node.op._schema.arguments)}
        _ARG_POSITIONS[node.op] = positions
    index = positions.get(name)
    if index is None:
        return default
    return node.args[index] if index < len(node.args) else default


_ARG_POSITIONS: dict = {}  # op -> {argument name: position in its schema}


def wrap_dim(d: int, rank: int) -> int:
    """A dim index, negative ones counted from the end."""
    return d + rank if d < 0 else d


def refs_in(x) -> list[Ref]:
    """Every traced tensor in an argument (a Ref, or lists/tuples of them)."""
    if isinstance(x, Ref):
        return [x]
    if isinstance(x, (list, tuple)):
        if all(map(isinstance, x, _REFS)):  # (a stack's thousands: one C-level pass)
            return list(x)
        return [r for item in x for r in refs_in(item)]
    return []


_REFS = itertools.repeat(Ref)
