"""Parameters and multiply-accumulates (MACs), counted on the traced ATen graph.

MACs are counted for every op that multiplies and accumulates: matrix products (``mm``,
``addmm``, ``bmm``, ``baddbmm``, ``mv``, ... so attention written as matmuls or einsum counts),
convolutions (grouped and transposed), fused attention (``scaled_dot_product_attention`` and
``nn.MultiheadAttention``'s fused path: both matmuls of every head) and fused RNN layers.
Element-wise ops, norms and pooling are not MACs. Counting traces on fake tensors, so it never
copies the model or runs it for real.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from .graph.trace import Node, OpGraph, Ref, trace

Shape = tuple[int, ...]


def count_params(model: torch.nn.Module) -> int:
    """Parameters of ``model``, a tensor shared by several modules counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_params_and_macs(model: torch.nn.Module, example_inputs) -> tuple[int, int]:
    """(parameters, MACs of one forward pass on ``example_inputs``)."""
    graph = trace(model, example_inputs)
    return count_params(model), graph_macs(graph, lambda v: graph.values[v].shape)


def _prod(xs) -> int:
    return math.prod(int(x) for x in xs)


def _ref(x) -> int | None:
    return x.value if isinstance(x, Ref) else None


_MAC_PACKETS = frozenset(
    {
        "mm",
        "bmm",
        "addmm",
        "baddbmm",
        "addbmm",
        "mv",
        "addmv",
        "dot",
        "vdot",
        "convolution",
        "_convolution",
        "_native_multi_head_attention",
        "mkldnn_rnn_layer",
    }
)


@functools.cache
def _packet_of(op) -> str:
    """The op without its overload and namespace (``mm`` for ``aten.mm.default``)."""
    return str(op.overloadpacket).removeprefix("aten.")


@functools.cache
def counts_macs(op) -> bool:
    """Whether ``node_macs`` may count anything for this op."""
    packet = _packet_of(op)
    return packet in _MAC_PACKETS or "scaled_dot_product" in packet


def node_macs(node: Node, shape_of: Callable[[int], Shape]) -> int:
    """MACs of one traced op, the shapes of its tensors given by ``shape_of(value)``."""
    packet = _packet_of(node.op)
    args = node.args

    def shape(i: int) -> Shape | None:
        v = _ref(args[i]) if i < len(args) else None
        return None if v is None else shape_of(v)

    if packet in ("mm", "bmm", "addmm", "baddbmm", "addbmm"):
        first = 1 if packet in ("addmm", "baddbmm", "addbmm") else 0
        a, b = shape(first), shape(first + 1)
        if a is None or b is None:
            return 0
        return _prod(a) * int(b[-1])  # [.., M, K] @ [.., K, N]: M*K*N per batch
    if packet in ("mv", "addmv"):
        a = shape(1 if packet == "addmv" else 0)
        return 0 if a is None else _prod(a)
    if packet in ("dot", "vdot"):
        a = shape(0)
        return 0 if a is None else _prod(a)
    if packet in ("convolution", "_convolution"):
        x, w = shape(0), shape(1)
        out = shape_of(node.outputs[0]) if node.outputs else None
        if x is None or w is None or out is None:
            return 0
        transposed = bool(args[6]) if len(args) > 6 else False
        kernel = _prod(w[2:])
        # each output (or, transposed, each input) element reads w.shape[1] channels x kernel
        return (_prod(x) if transposed else _prod(out)) * int(w[1]) * kernel
    if "scaled_dot_product" in packet:
        q, k, v = shape(0), shape(1), shape(2)
        if q is None or k is None or v is None:
            return 0
        batch_heads = _prod(q[:-2])
        return batch_heads * int(q[-2]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))
    if packet == "_native_multi_head_attention":
        q, k = shape(0), shape(1)
        if q is None or k is None:
            return 0
        embed = int(q[-1])
        lq, lk = _prod(q[:-1]), _prod(k[:-1])
        batch = _prod(q[:-2]) if len(q) > 2 else 1
        projections = (lq + 2 * lk) * embed * embed + lq * embed * embed  # q, k, v, out
        attention = 2 * batch * int(q[-2]) * int(k[-2]) * embed  # scores and weighted sum
        return projections + attention
    if packet == "mkldnn_rnn_layer":
        x, w_ih, w_hh = shape(0), shape(1), shape(2)
        if x is None or w_ih is None or w_hh is None:
            return 0
        steps = _prod(x[:-1])  # time x batch
        return steps * (_prod(w_ih) + _prod(w_hh))
    return 0


def graph_macs(graph: OpGraph, shape_of: Callable[[int], Shape]) -> int:
    return sum(node_macs(n, shape_of) for n in graph.nodes if counts_macs(n.op))


class PlannedCosts:
    """Parameters and MACs the model would have under a keep mask over units, predicted from
    the graph without slicing or tracing again (used to prune to a target, where it is asked
    dozens of times, and to report what a prune did)."""

    def __init__(self, dg) -> None:
        self.dg = dg
        g = dg.graph
        slots = dg.coupling_model.value_slots
        shapes = [g.values[v].shape for v in g.params.values()]
        # The graph's parameters are the model's, each once (see ``walk._walk``).
        self.params_total = sum(math.prod(shape) for shape in shapes)
        # Every parameter's slots, padded with one past the last slot (a size of 1).
        rank = max((len(shape) for shape in shapes), default=0)
        pad = len(dg.slot_sizes)  # one past the last slot
        self._param_slots = np.full((len(shapes), rank), pad, dtype=np.int64)
        for row, v in enumerate(g.params.values()):
            self._param_slots[row, : len(slots[v])] = slots[v]
        self._costly: list[Node] = []
        self._macs_total = 0
        for n in g.nodes:
            if counts_macs(n.op):
                macs = node_macs(n, lambda v: g.values[v].shape)
                if macs:
                    self._costly.append(n)
                    self._macs_total += macs

    def bound_to(self, dg) -> PlannedCosts:
        """The same counts for another graph of the same trace (one with more slots blocked,
        whose units are numbered anew): keep masks are then that graph's."""
        if dg is self.dg:
            return self
        if dg.graph is not self.dg.graph:
            raise ValueError("PlannedCosts can only be rebound to a graph of the same trace")
        other = copy.copy(self)
        other.dg = dg
        return other

    def at(self, keep: np.ndarray | None) -> tuple[int, int]:
        """(parameters, MACs) with the units where ``keep`` is False removed."""
        if keep is None:
            return self.params_total, self._macs_total
        sizes = np.append(self.dg.slot_kept_sizes(self.dg.leaf_keep_masks(keep)), 1)
        params = int(np.prod(sizes[self._param_slots], axis=1).sum())
        size_of = sizes.tolist().__getitem__
        slots = self.dg.coupling_model.value_slots

        def shape_of(v):
            return tuple(map(size_of, slots[v]))

        return params, sum(node_macs(n, shape_of) for n in self._costly)
