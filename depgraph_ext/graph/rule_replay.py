"""The rules of a replayed module call, taken from its template's (graph/repeats.py).

A replayed call's nodes are its template's, renamed: the same ops on values of the same shapes.
The rules map them the same way, unless what they read beyond an op's own values differs: the
op that makes a value non-zero at removed units (zeros.py), the consumers of a value, the
positions an index tensor holds, the producer of a value from outside the call. So the first
time the template's nodes are mapped, every such read is noted with what it found, with every
coupling, slot and record the mapping made (a *chunk*); a replay whose reads find the same,
renamed, gets the chunk renamed: its values' slots for the template's, new slots for the ones
the template's rules made, its modules and nodes for the template's. A call whose template's
rules read anything else (the graph itself, an op without a rule, a user's rule) is mapped op
by op. ``trace.CHECK_REPEATS`` builds every replayed graph's couplings both ways and compares
them (coupling_model.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .couplings import CouplingKind
from .records import Replay, Value
from .rules import AttentionCall, Reduction, RuleContext, rule_for

_EQUAL, _RESHAPE, _BLOCK = (
    int(CouplingKind.EQUAL),
    int(CouplingKind.RESHAPE),
    int(CouplingKind.BLOCK),
)


class _WatchedList:
    """A list of the graph (its values or nodes) whose reads by index are noted."""

    def __init__(self, items: list, kind: str, reads: list) -> None:
        self._items, self._kind, self._reads = items, kind, reads

    def __getitem__(self, i):
        if not isinstance(i, int):
            self._reads.append(("graph", self._kind))
            return self._items[i]
        if self._kind == "value":
            return _watched(self._items[i], self._reads)
        self._reads.append(("node", i, None))
        return self._items[i]

    def __len__(self) -> int:
        self._reads.append(("graph", self._kind))
        return len(self._items)

    def __iter__(self):
        self._reads.append(("graph", self._kind))
        return iter(self._items)


class _WatchedValue(Value):
    """A value of the graph (a copy, a Value still) whose fields read are noted: its shape,
    dtype and kind are the same in a replay by construction or checked; where it comes from
    is checked; anything else makes the call's rules unfit for replays."""

    __slots__ = ("_reads",)

    def __getattribute__(self, name):
        if name in ("shape", "dtype", "kind"):
            reads = object.__getattribute__(self, "_reads")
            reads.append(("value", object.__getattribute__(self, "index"), None))
        elif name == "producer":
            reads = object.__getattribute__(self, "_reads")
            reads.append(("producer", object.__getattribute__(self, "index"), None))
        elif not name.startswith("__"):
            object.__getattribute__(self, "_reads").append(("graph", f"value.{name}"))
        return object.__getattribute__(self, name)


def _watched(value: Value, reads: list) -> _WatchedValue:
    copy = _WatchedValue(
        value.index, value.shape, value.dtype, value.kind, value.name, value.producer
    )
    object.__setattr__(copy, "_reads", reads)
    return copy


class _WatchedGraph:
    """The graph as a recorded call's rules see it: reads of its values and nodes noted, any
    other read of it too (it makes the call's rules unfit for replays)."""

    def __init__(self, graph, reads: list) -> None:
        self.values = _WatchedList(graph.values, "value", reads)
        self.nodes = _WatchedList(graph.nodes, "node", reads)
        self._graph, self._reads = graph, reads

    def __getattr__(self, name):
        self._reads.append(("graph", name))
        return getattr(self._graph, name)


@dataclass
class _Recording:
    n0: int
    n1: int
    slots: int
    couplings: int
    data: int
    spans: int
    opaque: int
    lists: tuple[int, ...]
    touched: set
    original_graph: object


class RuleChunks:
    """The chunks of a graph's templates, recorded while the rules map them, and applied to
    their replays. ``at(i)`` before mapping node ``i``: how many nodes a chunk mapped there
    (0: map node ``i`` as usual)."""

    def __init__(self, graph, ctx: RuleContext, zeros, malformed: dict[int, str]) -> None:
        self.graph, self.ctx, self.zeros, self.malformed = graph, ctx, zeros, malformed
        self.replay_at: dict[int, Replay] = {}
        self.template_at: dict[int, tuple[int, int]] = {}
        for replay in graph.replays:
            n0, n1 = replay.template
            if n1 <= n0:
                continue
            self.replay_at[replay.start] = replay
            known = self.template_at.get(n0)
            if known is None or known[1] < n1:  # (nested templates: the outer one)
                self.template_at[n0] = (n0, n1)
        self.chunks: dict[tuple[int, int], _Chunk | None] = {}
        self.recording: _Recording | None = None
        self.applied = 0
        sizes = np.fromiter((len(v.shape) for v in graph.values), np.int64, len(graph.values))
        self.value_start = np.concatenate(([0], np.cumsum(sizes)))
        self.value_slot_count = int(self.value_start[-1])
        self._slot_owner: np.ndarray | None = None

    def slot_owner(self) -> np.ndarray:
        if self._slot_owner is None:
            ranks = np.diff(self.value_start)
            self._slot_owner = np.repeat(np.arange(len(ranks), dtype=np.int64), ranks)
        return self._slot_owner

    def at(self, i: int, spans: list, touched_anywhere: set, opaque: list) -> int:
        rec = self.recording
        if rec is not None:
            if i < rec.n1:
                return 0
            self._finish(spans, opaque)
        replay = self.replay_at.get(i)
        if replay is not None:
            chunk = self.chunks.get(replay.template)
            moved = chunk.holds_for(self, replay) if chunk is not None else None
            if moved is not None:
                chunk.apply(self, replay, spans, touched_anywhere, moved)
                self.applied += 1
                return chunk.n1 - chunk.n0
        span = self.template_at.get(i)
        if span is not None and span not in self.chunks:
            self._start(span, spans, opaque)
        return 0

    @property
    def touched_sink(self) -> set | None:
        """Where the recorded call's touched slots go (None: no call is recorded)."""
        return self.recording.touched if self.recording is not None else None

    def _lists(self) -> tuple[int, ...]:
        ctx = self.ctx
        return (
            len(ctx.attr_slots),
            len(ctx.kind_slots),
            len(ctx.attention),
            len(ctx.reductions),
            len(ctx.min_sizes),
            len(ctx.routers),
        )

    def _start(self, span: tuple[int, int], spans: list, opaque: list) -> None:
        ctx, builder = self.ctx, self.ctx.builder
        self.recording = _Recording(
            span[0],
            span[1],
            len(builder.slot_sizes),
            len(builder._kinds),
            len(builder._data),
            len(spans),
            len(opaque),
            self._lists(),
            set(),
            ctx.graph,
        )
        ctx.reads, ctx.domain_writes = [], []
        ctx.graph = _WatchedGraph(ctx.graph, ctx.reads)

    def _finish(self, spans: list, opaque: list) -> None:
        rec, ctx = self.recording, self.ctx
        self.recording = None
        reads, writes = ctx.reads, ctx.domain_writes
        ctx.graph, ctx.reads, ctx.domain_writes = rec.original_graph, None, None
        self.chunks[(rec.n0, rec.n1)] = _Chunk.of(self, rec, reads, writes, spans, opaque)


class _Chunk:
    """What the rules made of a template's nodes, and what they read to make it."""

    @classmethod
    def of(cls, chunks: RuleChunks, rec: _Recording, reads, writes, spans, opaque):
        """The chunk of a finished recording, or None where replays cannot take it."""
        graph, ctx, builder = chunks.graph, chunks.ctx, chunks.ctx.builder
        n0, n1 = rec.n0, rec.n1
        if len(opaque) > rec.opaque or any(n0 <= k < n1 for k in chunks.malformed):
            return None
        for node in graph.nodes[n0:n1]:
            rule = rule_for(node)
            if not getattr(rule, "__module__", "").startswith("depgraph_ext."):
                return None  # (a user's rule may read anything)
        values = graph.values

        def inner(v: int) -> bool:
            producer = values[v].producer
            return producer is not None and n0 <= producer < n1

        self = cls()
        self.n0, self.n1 = n0, n1
        # What must read the same in a replay: (kind, template's key, what it found).
        checks: list[tuple] = []
        reached: set[int] = set()  # nodes outside the call that checked reads lead to
        outside_nodes: set[int] = set()
        routers_before = set(ctx.routers[: rec.lists[5]])
        for kind, key, found in reads:
            if kind == "graph":
                return None
            if kind == "node":
                if not n0 <= key < n1:
                    outside_nodes.add(key)
                continue
            if kind in ("value", "producer"):
                if not inner(key):
                    producer = values[key].producer if kind == "producer" else None
                    checks.append((kind, key, producer))
                    if producer is not None:
                        reached.add(producer)
                continue
            if kind == "consumers":
                checks.append(("consumers", key, found))
                reached.update(found)
            elif kind == "culprit":
                if not inner(key):  # (an inner value's follows from the outside ones')
                    checks.append(("culprit", key, -1 if found is None else found.index))
                    if found is not None:
                        reached.add(found.index)
            elif kind == "domain":
                if not inner(key):
                    checks.append(("domain", key, found))
            elif kind == "router":
                checks.append(("router", key, key in routers_before))
        if not outside_nodes <= reached:
            return None  # (a node reached otherwise than through a checked read)
        self.checks = checks
        # Every value the call's nodes read from outside it: the ops that make them non-zero
        # decide those of its own values (compared in a replay, then its own taken renamed).
        nodes = graph.nodes[n0:n1]
        outside = dict.fromkeys(i for node in nodes for i in node.inputs if not inner(i))
        zeros = chunks.zeros
        self.outside_culprits = [
            (v, -1 if (c := zeros.culprit(v)) is None else c.index) for v in outside
        ]
        made = dict.fromkeys(o for node in nodes for o in node.outputs if inner(o))
        self.inner_culprits = [
            (v, -1 if (c := zeros.culprit(v)) is None else c.index) for v in made
        ]

        # The couplings, new slots and records the call's mapping made.
        kinds = builder._kinds[rec.couplings :]
        self.kinds = kinds
        self.data = np.asarray(builder._data[rec.data :], dtype=np.int64)
        self.offsets = np.asarray(builder._offsets[rec.couplings + 1 :], dtype=np.int64) - rec.data
        self.new_sizes = builder.slot_sizes[rec.slots :]
        self.slots0, self.slots1 = rec.slots, len(builder.slot_sizes)
        self.spans = [
            (node - n0, s - rec.couplings, e - rec.couplings) for node, s, e in spans[rec.spans :]
        ]
        slot_positions = []
        starts = np.concatenate(([0], self.offsets[:-1]))
        for k, kind in enumerate(kinds):
            start, end = int(starts[k]), int(self.offsets[k])
            if kind == _EQUAL:
                slot_positions += (start, start + 1)
            elif kind == _RESHAPE:
                n_in = int(self.data[start])
                slot_positions += range(start + 1, start + 1 + n_in)
                slot_positions += range(start + 2 + n_in, end)
            elif kind == _BLOCK:
                slot_positions.append(start)
            else:  # CAT_PIECE, SLICE: whole, piece, then numbers
                slot_positions += (start, start + 1)
        self.slot_positions = np.asarray(slot_positions, dtype=np.int64)
        lists = chunks._lists()
        a0, k0, t0, r0, m0, o0 = rec.lists
        self.attr_slots = ctx.attr_slots[a0 : lists[0]]
        self.kind_slots = ctx.kind_slots[k0 : lists[1]]
        self.attention = ctx.attention[t0 : lists[2]]
        self.reductions = ctx.reductions[r0 : lists[3]]
        self.min_sizes = ctx.min_sizes[m0 : lists[4]]
        self.routers = ctx.routers[o0 : lists[5]]
        self.domain_writes = writes
        self.touched = sorted(rec.touched)
        # Every slot the chunk names, one array, renamed at once in a replay: coupling
        # operands, touched slots, then the records' slots in order.
        record_slots = (
            [s for _, _, s in self.attr_slots]
            + [s for s, _ in self.kind_slots]
            + [s for call in self.attention for s in _call_slots(call) if s >= 0]
            + [r.slot for r in self.reductions]
            + [s for s, _ in self.min_sizes]
            + [s for s, _ in self.routers]
            + [s for _, s, _ in writes]
        )
        named = np.concatenate(
            (
                self.data[self.slot_positions],
                np.asarray(self.touched, dtype=np.int64),
                np.asarray(record_slots, dtype=np.int64),
            )
        )
        self.named = named
        self.counts = (len(self.slot_positions), len(self.touched))
        of_value = named < chunks.value_slot_count
        self.value_positions = np.nonzero(of_value)[0]
        owners = chunks.slot_owner()[named[of_value]]
        self.owners, self.owner_index = np.unique(owners, return_inverse=True)
        self.owners = self.owners.tolist()
        self.value_dims = named[of_value] - chunks.value_start[owners]
        self.new_positions = np.nonzero((named >= self.slots0) & (named < self.slots1))[0]
        return self

    # -- a replay ------------------------------------------------------------------------------
    def holds_for(self, chunks: RuleChunks, replay: Replay) -> dict[int, int] | None:
        """Whether every read of the template's rules finds the same, renamed, for ``replay``:
        None where one does not, else the nodes before the template its reads found, each
        with the node the replay's found in its place. (A call in a loop finds its input made
        non-zero by the call before it, as the template found its own: the node as far before
        the replay as it was before the template, running the same op.)"""
        n0, n1, start = self.n0, self.n1, replay.start
        if chunks.malformed and any(start <= k < start + n1 - n0 for k in chunks.malformed):
            return None
        vmap, graph, ctx, zeros = replay.values, chunks.graph, chunks.ctx, chunks.zeros
        values, nodes, shift = graph.values, graph.nodes, start - n0
        moved: dict[int, int] = {}

        def node_of(i: int) -> int:
            return i + shift if n0 <= i < n1 else i

        def same_culprit(c: int, found) -> bool:
            if c < 0 or n0 <= c < n1:
                return (-1 if found is None else found.index) == node_of(c)
            if found is None:
                return False
            mine = found.index
            if mine != c and (mine != c + shift or nodes[mine].op is not nodes[c].op):
                return False
            return moved.setdefault(c, mine) == mine

        for v, c in self.outside_culprits:
            if not same_culprit(c, zeros.culprit(vmap.get(v, v))):
                return None
        for kind, key, found in self.checks:
            other = vmap.get(key, key) if kind != "router" else None
            if kind == "value":
                a, b = values[key], values[other]
                if (a.shape, a.dtype, a.kind) != (b.shape, b.dtype, b.kind):
                    return None
            elif kind == "producer":
                mine = values[other].producer
                if (found is None) != (mine is None) or (
                    found is not None and node_of(found) != mine
                ):
                    return None
            elif kind == "consumers":
                mine = ctx._consumers.get(other, [])
                if [n.index for n in mine] != [node_of(i) for i in found]:
                    return None
            elif kind == "culprit":
                if not same_culprit(found, zeros.culprit(other)):
                    return None
            elif kind == "domain":
                mine = ctx.index_domains.get(other)
                if (mine is None) != (found is None):
                    return None
                if found is not None and mine != (
                    self._slot(chunks, replay, found[0]),
                    replay.modules.get(found[1], found[1]),
                ):
                    return None
            elif kind == "router":
                slot, module = key
                renamed = (self._slot(chunks, replay, slot), replay.modules.get(module, module))
                if (renamed in ctx.routers) != found:
                    return None
        return moved

    def _slot(self, chunks: RuleChunks, replay: Replay, s: int) -> int:
        """One template slot, renamed for ``replay`` (the chunk's new slots as they will be)."""
        if s < chunks.value_slot_count:
            v = int(chunks.slot_owner()[s])
            return int(chunks.value_start[replay.values.get(v, v)]) + s - int(chunks.value_start[v])
        if self.slots0 <= s < self.slots1:
            return s - self.slots0 + len(chunks.ctx.builder.slot_sizes)
        return s

    def apply(
        self,
        chunks: RuleChunks,
        replay: Replay,
        spans: list,
        touched_anywhere: set,
        moved: dict[int, int],
    ):
        """The chunk renamed for ``replay`` (``moved``: what :meth:`holds_for` found)."""
        ctx, builder = chunks.ctx, chunks.ctx.builder
        vmap, modules = replay.values, replay.modules
        start, n0 = replay.start, self.n0
        shift = start - n0
        nodes = chunks.graph.nodes

        def node_of(i: int) -> int:
            return i + shift if n0 <= i < self.n1 else moved.get(i, i)

        # Every named slot renamed: values' slots by the value's, new slots past the current.
        named = self.named.copy()
        if self.owners:
            starts = chunks.value_start[[vmap.get(v, v) for v in self.owners]]
            named[self.value_positions] = starts[self.owner_index] + self.value_dims
        named[self.new_positions] += len(builder.slot_sizes) - self.slots0
        builder.slot_sizes.extend(self.new_sizes)
        couplings, data_base = len(builder._kinds), len(builder._data)
        data = self.data.copy()
        k, t = self.counts
        data[self.slot_positions] = named[:k]
        builder._kinds.extend(self.kinds)
        builder._data.extend(data.tolist())
        builder._offsets.extend((self.offsets + data_base).tolist())
        spans.extend((node + start, s + couplings, e + couplings) for node, s, e in self.spans)
        touched_anywhere.update(named[k : k + t].tolist())
        rest = iter(named[k + t :].tolist())
        ctx.attr_slots.extend(
            (modules.get(m, m), attr, next(rest)) for m, attr, _ in self.attr_slots
        )
        ctx.kind_slots.extend((next(rest), kind) for _, kind in self.kind_slots)
        for call in self.attention:
            slots = [next(rest) if s >= 0 else s for s in _call_slots(call)]
            ctx.attention.append(AttentionCall(modules.get(call.module, call.module), *slots))
        for r in self.reductions:
            culprit = node_of(r.culprit) if r.culprit >= 0 else -1
            ctx.reductions.append(
                Reduction(
                    next(rest),
                    r.op,
                    modules.get(r.module, r.module),
                    r.what,
                    culprit,
                    r.culprit_op,
                    nodes[culprit].module if culprit >= 0 else r.culprit_module,
                )
            )
        ctx.min_sizes.extend((next(rest), n) for _, n in self.min_sizes)
        ctx.routers.extend((next(rest), modules.get(m, m)) for _, m in self.routers)
        for v, _, m in self.domain_writes:
            ctx.index_domains[vmap.get(v, v)] = (next(rest), modules.get(m, m))
        memo = chunks.zeros._memo
        for v, c in self.inner_culprits:
            memo[vmap.get(v, v)] = nodes[node_of(c)] if c >= 0 else None


def _call_slots(call: AttentionCall) -> tuple[int, int, int, int]:
    return (call.heads, call.kv_heads, call.head_dim, call.v_head_dim)
