"""Op rules: how the indices of each ATen op's input dims map to its output dims.

A rule reads one traced :class:`~depgraph_ext.trace.Node` and emits couplings between slots
(one slot per dim of each tensor) through a :class:`RuleContext`. The contract:

- a rule relates only dims whose index correspondence follows from the op's meaning and the
  recorded shapes; it never guesses;
- an output dim that no coupling touches is blocked (its size is fixed by the op, e.g. a conv's
  spatial output); an input dim that no coupling touches is free (e.g. a reduced dim);
- an op with no rule is *opaque*: every dim of its inputs and outputs is blocked, and the user is
  told which op in which module blocked what.

``register_rule`` adds a rule for a user's own op (any ``torch.library`` custom op included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .couplings import CouplingBuilder
from .trace import Node, OpGraph, Ref

Rule = Callable[["RuleContext", Node], None]
class _RuleTable(dict):
    """Rules by op name; any change forgets the rules looked up by op object."""

    def _changed(self) -> None:
        _RULE_OF_OP.clear()

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self._changed()

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def popitem(self):
        self._changed()
        return super().popitem()

    def setdefault(self, key, default=None):
        self._changed()
        return super().setdefault(key, default)

    def update(self, *args, **kwargs) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()


# Rules by op object, filled on first lookup (an op's names are built on every call).
_RULE_OF_OP: dict = {}
_RULES: dict[str, Rule] = _RuleTable()


class RuleContext:
    """What a rule sees: the traced graph, the slots of each value, and coupling emitters."""

    def __init__(self, graph: OpGraph, builder: CouplingBuilder) -> None:
        self.graph = graph
        self.builder = builder
        # One slot per dim of every value, numbered value by value (slots made in bulk: a
        # call per slot was a sixth of applying the rules).
        sizes = builder.slot_sizes
        self.value_slots: list[list[int]] = []
        for value in graph.values:
            start = len(sizes)
            sizes.extend(value.shape)
            self.value_slots.append(list(range(start, len(sizes))))
        self.touched: set[int] = set()
        # (module name, attribute, slot): the attribute's new value is the slot's kept size.
        self.attr_slots: list[tuple[str, str, int]] = []
        # (slot, kind): the group of the slot's units is of that kind ("heads", "hidden").
        self.kind_slots: list[tuple[int, str]] = []
        self.attention: list[AttentionCall] = []

    # -- reading ---------------------------------------------------------------------------
    def slots(self, v: int | Ref) -> list[int]:
        return self.value_slots[v.value if isinstance(v, Ref) else v]

    def shape(self, v: int | Ref) -> tuple[int, ...]:
        return self.graph.values[v.value if isinstance(v, Ref) else v].shape

    def size(self, slot: int) -> int:
        return self.builder.slot_sizes[slot]

    def consumers(self, v: int) -> list[Node]:
        """Nodes reading value ``v``, in order."""
        if not hasattr(self, "_consumers"):
            self._consumers: dict[int, list[Node]] = {}
            for node in self.graph.nodes:
                for i in dict.fromkeys(node.inputs):
                    self._consumers.setdefault(i, []).append(node)
        return self._consumers.get(v, [])

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


class RuleError(Exception):
    """A rule met a call it cannot map exactly; the op is then treated as opaque."""


def register_rule(op, rule: Rule | None = None):
    """Register ``rule(ctx, node)`` for an op (an OpOverload, OpOverloadPacket or its name).

    Usable as a decorator. Names are matched without the overload (``"aten.add"``), or with it
    (``"aten.add.Tensor"``), the latter taking precedence.
    """

    def register(fn: Rule) -> Rule:
        _RULES[str(op)] = fn
        return fn

    return register if rule is None else register(rule)


def rule_for(node: Node) -> Rule | None:
    """The rule for a node; an in-place variant (``aten.add_``) shares its op's rule."""
    try:
        return _RULE_OF_OP[node.op]
    except (KeyError, TypeError):  # TypeError: an op object that cannot be a key
        pass
    found = _RULES.get(node.name) or _RULES.get(node.packet)
    if found is None and node.packet.endswith("_"):
        found = _RULES.get(node.packet[:-1])
    try:
        _RULE_OF_OP[node.op] = found
    except TypeError:
        pass
    return found


def _register_many(names, rule: Rule) -> None:
    for name in names:
        _RULES[name] = rule


# -- helpers -------------------------------------------------------------------------------------
def _arg(node: Node, name: str, default=None):
    """An argument by its schema name, positional or keyword."""
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


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _refs(x) -> list[Ref]:
    if isinstance(x, Ref):
        return [x]
    if isinstance(x, (list, tuple)):
        return [r for item in x for r in _refs(item)]
    return []


# -- identity and element-wise ------------------------------------------------------------------
def elementwise(ctx: RuleContext, node: Node) -> None:
    ctx.broadcast(node.inputs, node.outputs)


_ELEMENTWISE = """
abs acos acosh add addcdiv addcmul alias asin asinh atan atan2 atanh bitwise_and bitwise_not
bitwise_or bitwise_xor ceil clamp clamp_max clamp_min clone contiguous copy cos cosh detach div
elu eq erf erfc erfinv exp exp2 expm1 fill floor floor_divide fmod frac ge gelu gt hardsigmoid
hardswish hardtanh isinf isnan le leaky_relu lerp lift_fresh lift_fresh_copy log log10 log1p log2
log_sigmoid_forward logical_and logical_not logical_or logical_xor lt masked_fill maximum minimum
mish mul ne neg nan_to_num pow reciprocal relu relu6 remainder round rsqrt rsub selu sgn sigmoid
sign silu sin sinh softplus sqrt square sub tan tanh threshold trunc where xlogy zero
_to_copy to _to_dim_order_copy bernoulli uniform normal ones_like zeros_like empty_like full_like
rand_like randn_like positive celu glu_backward hardshrink softshrink gelu_ native_dropout dropout
feature_dropout alpha_dropout
""".split()
_register_many([f"aten.{n}" for n in _ELEMENTWISE], elementwise)


# -- creation ops: their output sizes are fixed by the call --------------------------------------
def creation(ctx: RuleContext, node: Node) -> None:
    pass  # every output dim is untouched, hence blocked


_CREATION = """
arange rand randn randint randperm scalar_tensor linspace logspace eye tensor _local_scalar_dense
""".split()
_register_many([f"aten.{n}" for n in _CREATION], creation)


def uniform_fill(ctx: RuleContext, node: Node) -> None:
    """zeros/ones/full/empty: every index holds the same value, so any dim may shrink with what
    it meets (the size comes from the caller, e.g. a module attribute; if the code fixes it,
    plan validation finds that and the dim is kept)."""
    for out in node.outputs:
        ctx.touched.update(ctx.slots(out))


_register_many([f"aten.{n}" for n in "empty empty_strided zeros ones full new_empty new_zeros "
                "new_ones new_full new_empty_strided".split()], uniform_fill)


# -- layout: views, reshapes, permutations --------------------------------------------------------
def reshape_like(ctx: RuleContext, node: Node) -> None:
    ctx.reshape_dims(node.inputs[0], node.outputs[0])


_register_many(
    [f"aten.{n}" for n in "view _unsafe_view reshape view_copy _reshape_alias squeeze unsqueeze "
     "squeeze_copy unsqueeze_copy flatten unflatten view_as reshape_as".split()],
    reshape_like,
)


def permute(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(src))
    dims = [_dim(d, rank) for d in _arg(node, "dims")]
    ctx.equal_dims(src, out, [(d, i) for i, d in enumerate(dims)])


def transpose(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(src))
    if node.packet in ("aten.t", "aten.numpy_T"):
        d0, d1 = 0, rank - 1
    else:
        d0, d1 = _dim(_arg(node, "dim0"), rank), _dim(_arg(node, "dim1"), rank)
    order = list(range(rank))
    order[d0], order[d1] = order[d1], order[d0]
    ctx.equal_dims(src, out, [(d, i) for i, d in enumerate(order)])


_register_many(["aten.permute", "aten.permute_copy"], permute)
_register_many(["aten.t", "aten.transpose", "aten.transpose_copy", "aten.swapaxes",
                "aten.swapdims", "aten.numpy_T"], transpose)


def expand(ctx: RuleContext, node: Node) -> None:
    """Dims of equal size are one; a new or broadcast dim repeats the same values along itself,
    so (like zeros) it may shrink with what it meets. Its size comes from the call: if the code
    fixes it, plan validation finds that and the dim is kept."""
    ctx.broadcast([node.inputs[0]], node.outputs)
    for out in node.outputs:
        ctx.touched.update(ctx.slots(out))


_register_many(["aten.expand", "aten.expand_copy", "aten.expand_as", "aten.broadcast_to"], expand)


def repeat(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    repeats = list(_arg(node, "repeats"))
    shape_s, shape_o = ctx.shape(src), ctx.shape(out)
    ss, so = ctx.slots(src), ctx.slots(out)
    lead = len(shape_o) - len(shape_s)
    for i, n in enumerate(shape_s):
        j, r = lead + i, repeats[lead + i]
        if n == 1:
            continue
        if r == 1:
            ctx.equal(ss[i], so[j])
        else:  # out[j] = [copy, index]: the copy factor is fixed by the call
            copy = ctx.new_slot(r)
            ctx.block(copy)
            ctx.reshape([copy, ss[i]], [so[j]])


_register_many(["aten.repeat"], repeat)


# -- concatenation, slicing, selection ------------------------------------------------------------
def cat(ctx: RuleContext, node: Node) -> None:
    tensors = [r for r in _refs(_arg(node, "tensors")) if ctx.shape(r) != (0,)]
    out = node.outputs[0]
    rank = len(ctx.shape(out))
    dim = _dim(_arg(node, "dim", 0), rank)
    so = ctx.slots(out)
    offset = 0
    for t in tensors:
        st = ctx.slots(t)
        for i in range(rank):
            if i == dim:
                ctx.cat_piece(so[i], st[i], offset)
            elif ctx.size(so[i]) != 1:
                ctx.equal(st[i], so[i])
        offset += ctx.shape(t)[dim]


_register_many(["aten.cat", "aten.concat", "aten.concatenate"], cat)


def stack(ctx: RuleContext, node: Node) -> None:
    tensors = _refs(_arg(node, "tensors"))
    out = node.outputs[0]
    rank = len(ctx.shape(out))
    dim = _dim(_arg(node, "dim", 0), rank)
    so = ctx.slots(out)
    for t in tensors:
        st = ctx.slots(t)
        for i, s in enumerate(st):
            ctx.equal(s, so[i if i < dim else i + 1])


_register_many(["aten.stack"], stack)


def _slice_pieces(ctx: RuleContext, src, dim: int, pieces) -> None:
    """pieces: (output value, start, step) along ``dim`` of ``src``; other dims are equal."""
    ss = ctx.slots(src)
    for out, start, step in pieces:
        so = ctx.slots(out)
        for i in range(len(ss)):
            if i == dim:
                ctx.slice(ss[i], so[i], start, step)
            elif ctx.size(ss[i]) != 1:
                ctx.equal(ss[i], so[i])


def slice_tensor(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    shape = ctx.shape(src)
    dim = _dim(_arg(node, "dim", 0), len(shape))
    start = _arg(node, "start", None)
    step = _arg(node, "step", 1)
    n = shape[dim]
    start = 0 if start is None else (start + n if start < 0 else start)
    start = max(0, min(start, n))
    _slice_pieces(ctx, src, dim, [(out, start, step)])


def split(ctx: RuleContext, node: Node) -> None:
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    dim = _dim(_arg(node, "dim", 0), rank)
    pieces, offset = [], 0
    for out in node.outputs:
        pieces.append((out, offset, 1))
        offset += ctx.shape(out)[dim]
    _slice_pieces(ctx, src, dim, pieces)


def narrow(ctx: RuleContext, node: Node) -> None:
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    dim, start = _dim(_arg(node, "dim"), rank), _arg(node, "start")
    if isinstance(start, Ref):
        raise RuleError("narrow with a tensor start")
    start = start + ctx.shape(src)[dim] if start < 0 else start
    _slice_pieces(ctx, src, dim, [(node.outputs[0], start, 1)])


def select(ctx: RuleContext, node: Node) -> None:
    """x.select(dim, i): the index is a constant, so ``dim`` is blocked; other dims are equal."""
    src, out = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(src))
    dims = [_dim(_arg(node, "dim"), rank)]
    _drop_dims(ctx, src, out, dims)


def unbind(ctx: RuleContext, node: Node) -> None:
    src = node.inputs[0]
    dim = _dim(_arg(node, "dim", 0), len(ctx.shape(src)))
    for out in node.outputs:
        _drop_dims(ctx, src, out, [dim])


def _drop_dims(ctx: RuleContext, src, out, dropped: list[int]) -> None:
    ss, so = ctx.slots(src), ctx.slots(out)
    kept = [i for i in range(len(ss)) if i not in dropped]
    for d in dropped:
        ctx.block(ss[d])
    for j, i in enumerate(kept):
        ctx.equal(ss[i], so[j])


_register_many(["aten.slice", "aten.slice_copy"], slice_tensor)
_register_many(["aten.split", "aten.split_with_sizes", "aten.unsafe_split",
                "aten.unsafe_split_with_sizes", "aten.split_copy", "aten.split_with_sizes_copy",
                "aten.chunk", "aten.unsafe_chunk"], split)
_register_many(["aten.narrow", "aten.narrow_copy"], narrow)
_register_many(["aten.select", "aten.select_copy"], select)
_register_many(["aten.unbind", "aten.unbind_copy"], unbind)


def index_along_dim(ctx: RuleContext, node: Node) -> None:
    """index_select/gather/scatter along a dim pick data-dependent indices on that dim only."""
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    dim = _dim(_arg(node, "dim"), rank)
    ss = ctx.slots(src)
    ctx.block(ss[dim])
    for out in node.outputs:
        so = ctx.slots(out)
        for i in range(rank):
            if i != dim and ctx.shape(out)[i] == ctx.shape(src)[i]:
                ctx.equal(ss[i], so[i])
    for other in node.inputs[1:]:  # index / src tensors share the non-indexed dims
        sv = ctx.slots(other)
        if len(sv) == rank:
            for i in range(rank):
                if i != dim and ctx.shape(other)[i] == ctx.shape(src)[i] != 1:
                    ctx.equal(sv[i], ss[i])


_register_many(["aten.index_select", "aten.gather", "aten.scatter", "aten.scatter_add",
                "aten.scatter_reduce", "aten.index_add", "aten.index_copy", "aten.index_fill"],
               index_along_dim)


def flip(ctx: RuleContext, node: Node) -> None:
    """Reversed dims map i to n-1-i, which pruning cannot keep: those dims are blocked."""
    src, out = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(src))
    dims = {_dim(d, rank) for d in _arg(node, "dims")} or set(range(rank))
    ss, so = ctx.slots(src), ctx.slots(out)
    for i in range(rank):
        if i in dims:
            ctx.block(ss[i])
        else:
            ctx.equal(ss[i], so[i])


_register_many(["aten.flip", "aten.roll"], flip)


def triangle(ctx: RuleContext, node: Node) -> None:
    """tril/triu zero by position on the last two dims: those are blocked, the rest are equal."""
    src, out = node.inputs[0], node.outputs[0]
    ss, so = ctx.slots(src), ctx.slots(out)
    for i in range(len(ss)):
        if i >= len(ss) - 2:
            ctx.block(ss[i])
        else:
            ctx.equal(ss[i], so[i])


_register_many(["aten.tril", "aten.triu"], triangle)


def pixel_shuffle(ctx: RuleContext, node: Node) -> None:
    """[N, C r r, H, W] <-> [N, C, H r, W r]: a channel is a block of r x r input channels; the
    r factors become positions (fixed by the call)."""
    x, out = node.inputs[0], node.outputs[0]
    r = int(_arg(node, "upscale_factor") or _arg(node, "downscale_factor"))
    shuffle = node.packet == "aten.pixel_shuffle"
    deep, wide = (x, out) if shuffle else (out, x)  # deep: [.., C r r, H, W]
    sd, sw = ctx.slots(deep), ctx.slots(wide)
    for i in range(len(sd) - 3):
        ctx.equal(sd[i], sw[i])
    c, ry, rx = ctx.new_slot(ctx.size(sw[-3])), ctx.new_slot(r), ctx.new_slot(r)
    ctx.reshape([sd[-3]], [c, ry, rx])
    ctx.equal(c, sw[-3])
    ctx.reshape([sw[-2]], [sd[-2], ry])
    ctx.reshape([sw[-1]], [sd[-1], rx])


_register_many(["aten.pixel_shuffle", "aten.pixel_unshuffle"], pixel_shuffle)


def as_strided(ctx: RuleContext, node: Node) -> None:
    """Only the squeeze/unsqueeze-like case (same non-1 sizes, in order) has a known mapping."""
    src, out = node.inputs[0], node.outputs[0]
    if [n for n in ctx.shape(src) if n != 1] != [n for n in ctx.shape(out) if n != 1]:
        raise RuleError("as_strided to a different layout")
    ctx.reshape_dims(src, out)


_register_many(["aten.as_strided", "aten.as_strided_copy"], as_strided)


def index_tensor(ctx: RuleContext, node: Node) -> None:
    """x[i0, i1, ...] with index tensors on some dims: indexed dims are blocked (their indices are
    data); the other dims of x are equal to the output's; the index tensors' dims are the
    output's broadcast dims."""
    src, out = node.inputs[0], node.outputs[0]
    indices = list(_arg(node, "indices"))
    ss, so = ctx.slots(src), ctx.slots(out)
    indexed = [d for d, ix in enumerate(indices) if ix is not None]
    if not indexed:
        raise RuleError("index without index tensors")
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1))
    bdims = max(len(ctx.shape(ix)) for ix in indices if ix is not None)
    first = indexed[0] if adjacent else 0
    for d in indexed:
        ctx.block(ss[d])
    j = 0
    for d in range(len(ss)):
        if d in indexed:
            continue
        pos = (d if d < first else d - len(indexed) + bdims) if adjacent else bdims + j
        j += 1
        if ctx.size(ss[d]) != 1:
            ctx.equal(ss[d], so[pos])
    for ix in indices:
        if isinstance(ix, Ref):
            si, shape = ctx.slots(ix), ctx.shape(ix)
            for k, size in enumerate(shape):
                pos = first + bdims - len(shape) + k
                if size != 1 and size == ctx.shape(out)[pos]:
                    ctx.equal(si[k], so[pos])


_register_many(["aten.index", "aten._unsafe_index"], index_tensor)


def constant_pad(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    pad = list(_arg(node, "pad"))
    ss, so = ctx.slots(src), ctx.slots(out)
    rank = len(ss)
    for i in range(rank):
        k = rank - 1 - i  # pad lists (left, right) pairs from the last dim backwards
        left, right = (pad[2 * k], pad[2 * k + 1]) if 2 * k + 1 < len(pad) else (0, 0)
        if left == 0 and right == 0:
            if ctx.size(ss[i]) != 1:
                ctx.equal(ss[i], so[i])
        elif left >= 0 and right >= 0:
            ctx.cat_piece(so[i], ss[i], left)
        else:
            ctx.block(ss[i])


_register_many(["aten.constant_pad_nd"], constant_pad)


# -- reductions and normalisation over a dim ------------------------------------------------------
def reduction(ctx: RuleContext, node: Node) -> None:
    """Reduced dims are free (their indices vanish); kept dims are equal, in order."""
    src = node.inputs[0]
    shape = ctx.shape(src)
    rank = len(shape)
    dims = _arg(node, "dim", None)
    if dims is None or isinstance(dims, bool) or (isinstance(dims, (list, tuple)) and not dims):
        return  # full reduction
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {_dim(d, rank) for d in dims}
    keepdim = bool(_arg(node, "keepdim", False))
    ss = ctx.slots(src)
    for out in node.outputs:
        so = ctx.slots(out)
        j = 0
        for i in range(rank):
            if i in dims:
                j += 1 if keepdim else 0
                continue
            ctx.equal(ss[i], so[j])
            j += 1


_register_many([f"aten.{n}.other" for n in ("max", "min")], elementwise)
_register_many(
    [f"aten.{n}" for n in "sum mean amax amin max min argmax argmin logsumexp prod var std "
     "var_mean std_mean norm linalg_vector_norm any all nansum count_nonzero".split()],
    reduction,
)


def softmax(ctx: RuleContext, node: Node) -> None:
    ctx.broadcast([node.inputs[0]], node.outputs)
    x = node.inputs[0]
    shape = ctx.shape(x)
    if node.packet not in ("aten._softmax", "aten.softmax", "aten._safe_softmax"):
        return
    if len(shape) != 4 or _dim(_arg(node, "dim"), 4) != 3:
        return
    scores = _matmul_before(ctx, x)
    if scores is None:
        return
    # Attention built from matmul + softmax over [batch, heads, L, S]: the same policy as the
    # attention rule (heads are units, head dims are blocked).
    heads = ctx.slots(x)[1]
    head_dim = ctx.slots(scores.inputs[0])[-1]
    ctx.block(head_dim)
    weighted = _matmul_after(ctx, node.outputs[0])
    v_head_dim = ctx.slots(weighted.outputs[0])[-1] if weighted is not None else -1
    if v_head_dim >= 0:
        ctx.block(v_head_dim)
    ctx.tag(heads, "heads")
    ctx.attention.append(AttentionCall(node.module, heads, heads, head_dim, v_head_dim))


_MATMULS = ("aten.bmm", "aten.matmul", "aten.baddbmm", "aten.mm")


def _matmul_before(ctx: RuleContext, v: int, depth: int = 6) -> Node | None:
    """The batched matmul ``v`` comes from through a few element-wise/view ops, if any."""
    graph = ctx.graph
    for _ in range(depth):
        producer = graph.values[v].producer
        if producer is None:
            return None
        node = graph.nodes[producer]
        if node.packet in _MATMULS:
            return node
        if not node.inputs:
            return None
        v = node.inputs[0]
    return None


def _matmul_after(ctx: RuleContext, v: int, depth: int = 6) -> Node | None:
    """The batched matmul that consumes ``v`` (as its left operand) through a few view ops."""
    for _ in range(depth):
        consumers = ctx.consumers(v)
        if not consumers:
            return None
        node = consumers[0]
        if node.packet in _MATMULS:
            return node if node.inputs[0] == v else None
        if not node.outputs:
            return None
        v = node.outputs[0]
    return None


_register_many(["aten._softmax", "aten.softmax", "aten._safe_softmax", "aten._log_softmax",
                "aten.log_softmax",
                "aten.cumsum", "aten.cumprod", "aten.logcumsumexp"], softmax)


def sort_along(ctx: RuleContext, node: Node) -> None:
    """sort/topk reorder a dim by value: that dim is blocked, the others are equal."""
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    dim = _arg(node, "dim", -1)
    dim = _dim(dim if isinstance(dim, int) else -1, rank)
    ss = ctx.slots(src)
    ctx.block(ss[dim])
    for out in node.outputs:
        so = ctx.slots(out)
        for i in range(rank):
            if i != dim:
                ctx.equal(ss[i], so[i])


_register_many(["aten.sort", "aten.topk", "aten.argsort", "aten.kthvalue", "aten.median",
                "aten.mode"], sort_along)


# -- contractions ----------------------------------------------------------------------------------
def mm(ctx: RuleContext, node: Node) -> None:
    """[..., n, k] @ [..., k, m]: contraction k, batch dims broadcast, bias (addmm) broadcast."""
    if node.packet in ("aten.addmm", "aten.baddbmm", "aten.addmv", "aten.addbmm"):
        bias, a, b = node.inputs[0], node.inputs[1], node.inputs[2]
    else:
        bias, (a, b) = None, node.inputs[:2]
    out = node.outputs[0]
    sa, sb, so = ctx.slots(a), ctx.slots(b), ctx.slots(out)
    if len(sb) == 1:  # matrix-vector
        ctx.equal(sa[-1], sb[0])
        for i in range(len(sa) - 1):
            ctx.equal(sa[i], so[i])
    else:
        ctx.equal(sa[-1], sb[-2])
        ctx.equal(sa[-2], so[-2])
        ctx.equal(sb[-1], so[-1])
        batch = len(so) - 2
        for v, sv in ((a, sa), (b, sb)):
            lead = batch - (len(sv) - 2)
            for i in range(len(sv) - 2):
                if ctx.shape(v)[i] == ctx.shape(out)[lead + i] != 1:
                    ctx.equal(sv[i], so[lead + i])
    if bias is not None:
        ctx.broadcast([bias], [out])


_register_many(["aten.mm", "aten.bmm", "aten.matmul", "aten.addmm", "aten.baddbmm", "aten.mv",
                "aten.addmv"], mm)


def convolution(ctx: RuleContext, node: Node) -> None:
    """N C_in *S -> N C_out *S'; weight [C_out, C_in/g, *k] ([C_in, C_out/g, *k] transposed).

    With g groups, C_in = [g, C_in/g] and C_out = [g, C_out/g] share the group factor g, so a unit
    is either a whole group or one channel index inside every group. Spatial output dims are fixed
    by the call and therefore blocked.
    """
    x, w, bias = _arg(node, "input"), _arg(node, "weight"), _arg(node, "bias")
    transposed = bool(_arg(node, "transposed", False))
    groups = int(_arg(node, "groups", 1))
    out = node.outputs[0]
    sx, sw, so = ctx.slots(x), ctx.slots(w), ctx.slots(out)
    batched = len(sx) == len(sw)
    c = 1 if batched else 0
    if batched:
        ctx.equal(sx[0], so[0])
    for s in sx[c + 1 :]:  # input positions map to output positions by stride and padding
        ctx.block(s)
    w_in, w_out = (0, 1) if transposed else (1, 0)
    if groups == 1:
        ctx.equal(sx[c], sw[w_in])
        ctx.equal(so[c], sw[w_out])
    else:
        g = ctx.new_slot(groups)
        in_inner = ctx.new_slot(ctx.size(sx[c]) // groups)
        out_inner = ctx.new_slot(ctx.size(so[c]) // groups)
        ctx.reshape([sx[c]], [g, in_inner])
        ctx.reshape([so[c]], [g, out_inner])
        ctx.equal(in_inner if not transposed else out_inner, sw[1])
        ctx.reshape([sw[0]], [g, out_inner if not transposed else in_inner])
        ctx.set_attr_from_slot(node.module, "groups", g)
    if isinstance(bias, Ref):
        ctx.equal(ctx.slots(bias)[0], so[c])


_register_many(["aten.convolution", "aten._convolution", "aten.conv1d", "aten.conv2d",
                "aten.conv3d", "aten.mkldnn_convolution", "aten.convolution_overrideable"],
               convolution)


def channel_norm(ctx: RuleContext, node: Node) -> None:
    """Batch/instance norm: dim 1 of the input is the channel; every 1-D operand and statistic
    of that size is indexed by channel."""
    x = node.inputs[0]
    sx = ctx.slots(x)
    c = 1 if len(sx) > 1 else 0
    n_channels = ctx.size(sx[c])
    ctx.broadcast([x], [node.outputs[0]])
    for v in node.inputs[1:] + node.outputs[1:]:
        sv = ctx.slots(v)
        if len(sv) == 1 and ctx.size(sv[0]) == n_channels:
            ctx.equal(sv[0], sx[c])


_register_many(["aten.native_batch_norm", "aten._native_batch_norm_legit",
                "aten._native_batch_norm_legit_no_training",
                "aten._native_batch_norm_legit_functional", "aten.batch_norm",
                "aten.instance_norm"], channel_norm)


def layer_norm(ctx: RuleContext, node: Node) -> None:
    """Normalised trailing dims couple the weight/bias; statistics keep the leading dims."""
    x = node.inputs[0]
    normalized = list(_arg(node, "normalized_shape"))
    sx = ctx.slots(x)
    lead = len(sx) - len(normalized)
    ctx.broadcast([x], [node.outputs[0]])
    for s in sx[lead:]:
        ctx.tag(s, "hidden")
    for ref in (_arg(node, "weight"), _arg(node, "bias")):
        if isinstance(ref, Ref):
            sv = ctx.slots(ref)
            for i, s in enumerate(sv):
                ctx.equal(s, sx[lead + i])
    for stat in node.outputs[1:]:
        ss = ctx.slots(stat)
        for i in range(min(lead, len(ss))):
            if ctx.size(ss[i]) == ctx.size(sx[i]) != 1:
                ctx.equal(ss[i], sx[i])


_register_many(["aten.native_layer_norm", "aten.layer_norm"], layer_norm)


def group_norm(ctx: RuleContext, node: Node) -> None:
    """C = [groups, C/groups]: a unit is a whole norm group or one index inside every group."""
    x = node.inputs[0]
    groups = int(_arg(node, "group"))
    sx = ctx.slots(x)
    ctx.broadcast([x], [node.outputs[0]])
    c = sx[1]
    g = ctx.new_slot(groups)
    inner = ctx.new_slot(ctx.size(c) // groups)
    ctx.reshape([c], [g, inner])
    for ref in (_arg(node, "weight"), _arg(node, "bias")):
        if isinstance(ref, Ref):
            ctx.equal(ctx.slots(ref)[0], c)
    for stat in node.outputs[1:]:  # mean/rstd: [N, groups]
        ss = ctx.slots(stat)
        ctx.equal(ss[0], sx[0])
        ctx.equal(ss[1], g)
    ctx.set_attr_from_slot(node.module, "num_groups", g)


_register_many(["aten.native_group_norm"], group_norm)


def prelu(ctx: RuleContext, node: Node) -> None:
    """A 1-d weight indexes dim 1 (the channel); a weight already shaped to broadcast
    ([C, 1, 1]) broadcasts like any element-wise operand."""
    x, w = node.inputs[0], node.inputs[1]
    sx, sw = ctx.slots(x), ctx.slots(w)
    if len(sw) == 1 and ctx.size(sw[0]) > 1 and len(sx) > 1:
        ctx.broadcast([x], node.outputs)
        ctx.equal(sw[0], sx[1])
    else:
        ctx.broadcast([x, w], node.outputs)


_register_many(["aten._prelu_kernel", "aten.prelu"], prelu)


def embedding(ctx: RuleContext, node: Node) -> None:
    """weight [V, D] looked up by indices: D is the output's last dim; the vocabulary is blocked."""
    w, idx = node.inputs[0], node.inputs[1]
    sw, si, so = ctx.slots(w), ctx.slots(idx), ctx.slots(node.outputs[0])
    ctx.block(sw[0])
    ctx.equal(sw[1], so[-1])
    ctx.tag(sw[1], "hidden")
    for i, s in enumerate(si):
        if ctx.size(s) != 1:
            ctx.equal(s, so[i])


_register_many(["aten.embedding"], embedding)


# -- pooling and resampling: leading dims equal, the trailing spatial dims fixed by the call -------
def _spatial(k: int) -> Rule:
    def rule(ctx: RuleContext, node: Node) -> None:
        x = node.inputs[0]
        sx = ctx.slots(x)
        for s in sx[len(sx) - k :]:  # positions are resampled: fixed by the call
            ctx.block(s)
        for out in node.outputs:
            so = ctx.slots(out)
            for i in range(len(sx) - k):
                ctx.equal(sx[i], so[i])

    return rule


for _k in (1, 2, 3):
    _register_many(
        [f"aten.{n}{_k}d" for n in ("max_pool", "avg_pool", "adaptive_avg_pool",
                                    "_adaptive_avg_pool", "adaptive_max_pool", "lp_pool",
                                    "fractional_max_pool", "reflection_pad", "replication_pad",
                                    "upsample_nearest")]
        + [f"aten.max_pool{_k}d_with_indices", f"aten.upsample_bilinear{_k}d",
           f"aten.upsample_linear{_k}d", f"aten.upsample_bicubic{_k}d",
           f"aten._upsample_nearest_exact{_k}d", f"aten.upsample_trilinear{_k}d"],
        _spatial(_k),
    )


# -- attention ----------------------------------------------------------------------------------
def attention(ctx: RuleContext, node: Node) -> None:
    """softmax(q k^T) v over [..., heads, length, head_dim]; k/v may have fewer heads (GQA).

    With GQA, query heads are [kv head, query head in its kv group]; the second factor is blocked,
    so a unit is one key/value head together with the query heads that share it. Head dims are
    blocked: pruning them would change rotary frequencies and the softmax scale a config
    recomputes on reload.
    """
    q, k, v = _arg(node, "query"), _arg(node, "key"), _arg(node, "value")
    out = node.outputs[0]
    sq, sk, sv, so = ctx.slots(q), ctx.slots(k), ctx.slots(v), ctx.slots(out)
    for i in range(len(sq) - 3):  # batch dims
        for other in (sk, sv, so):
            if ctx.size(other[i]) == ctx.size(sq[i]) != 1:
                ctx.equal(sq[i], other[i])
    hq, hk = ctx.size(sq[-3]), ctx.size(sk[-3])
    ctx.equal(sk[-3], sv[-3])
    if hq == hk:
        ctx.equal(sq[-3], sk[-3])
    elif hk and hq % hk == 0:
        group = ctx.new_slot(hq // hk)
        ctx.block(group)
        ctx.reshape([sq[-3]], [sk[-3], group])
    else:
        raise RuleError(f"{hq} query heads over {hk} key/value heads")
    ctx.equal(sq[-3], so[-3])
    ctx.equal(sq[-2], so[-2])
    ctx.equal(sk[-2], sv[-2])
    ctx.equal(sq[-1], sk[-1])
    ctx.equal(sv[-1], so[-1])
    ctx.block(sq[-1])
    ctx.block(sv[-1])
    mask = _arg(node, "attn_mask") or _arg(node, "attn_bias")
    if isinstance(mask, Ref):  # broadcast against [..., heads, L, S]
        sm, shape = ctx.slots(mask), ctx.shape(mask)
        target = [*sq[:-1], sk[-2]]
        lead = len(target) - len(shape)
        for i, size in enumerate(shape):
            if i + lead >= 0 and size != 1 and size == ctx.size(target[i + lead]):
                ctx.equal(sm[i], target[i + lead])
    for extra in node.outputs[1:]:  # logsumexp [..., heads, L] and the like
        se = ctx.slots(extra)
        if tuple(ctx.size(x) for x in se) == ctx.shape(q)[:-1]:
            for a, b in zip(se, sq[:-1]):
                ctx.equal(a, b)
    ctx.tag(sq[-3], "heads")
    ctx.tag(sk[-3], "heads")
    ctx.attention.append(AttentionCall(node.module, sq[-3], sk[-3], sq[-1], sv[-1]))


_register_many(
    ["aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention_for_cpu",
     "aten._scaled_dot_product_flash_attention", "aten._scaled_dot_product_efficient_attention",
     "aten._scaled_dot_product_cudnn_attention", "aten._scaled_dot_product_attention_math",
     "aten._scaled_dot_product_fused_attention_overrideable"],
    attention,
)


# -- recurrent layers ----------------------------------------------------------------------------
def rnn_layer(ctx: RuleContext, node: Node) -> None:
    """One fused LSTM layer (one direction): gates are [4, hidden] rows of w_ih, w_hh and both
    biases (the gate factor is blocked, so a unit is one hidden neuron in every gate); w_hh's
    columns, h/c in and out, and the output's last dim are that hidden dim; w_ih's columns are the
    input's last dim."""
    x = _arg(node, "input")
    w_ih, w_hh = _arg(node, "weight0"), _arg(node, "weight1")
    biases = [b for b in (_arg(node, "weight2"), _arg(node, "weight3")) if isinstance(b, Ref)]
    hidden = int(_arg(node, "hidden_size"))
    if ctx.shape(w_ih)[0] != 4 * hidden or ctx.shape(w_hh) != (4 * hidden, hidden):
        raise RuleError("an LSTM layer with projections or an unexpected gate layout")
    gate = ctx.new_slot(4)
    ctx.block(gate)
    h = ctx.slots(w_hh)[1]
    for rows in [ctx.slots(w_ih)[0], ctx.slots(w_hh)[0]] + [ctx.slots(b)[0] for b in biases]:
        ctx.reshape([rows], [gate, h])
    sx = ctx.slots(x)
    ctx.equal(ctx.slots(w_ih)[1], sx[-1])
    for state in (_arg(node, "hx_"), _arg(node, "cx_"), *node.outputs[:3]):
        ss = ctx.slots(state)
        if ss and ctx.size(ss[-1]) == hidden:
            ctx.equal(ss[-1], h)
    out = ctx.slots(node.outputs[0])
    for i in range(len(sx) - 1):
        ctx.equal(sx[i], out[i])
    ctx.set_attr_from_slot(node.module, "hidden_size", h)


_register_many(["aten.mkldnn_rnn_layer"], rnn_layer)


def native_multi_head_attention(ctx: RuleContext, node: Node) -> None:
    """nn.MultiheadAttention's fused path. The module derives head_dim = embed_dim / num_heads
    and uses embed_dim both for the stream and for the heads' space, so the only shapes it can
    express keep those equal: a unit is a head together with a block of head_dim stream
    channels (head dims themselves are kept)."""
    q, k, v = _arg(node, "query"), _arg(node, "key"), _arg(node, "value")
    qkv_w, qkv_b = _arg(node, "qkv_weight"), _arg(node, "qkv_bias")
    proj_w, proj_b = _arg(node, "proj_weight"), _arg(node, "proj_bias")
    heads = int(_arg(node, "num_head"))
    e = ctx.shape(q)[-1]
    if ctx.shape(qkv_w) != (3 * e, e) or e % heads or not all(
            ctx.shape(t)[-1] == e for t in (k, v)):
        raise RuleError("separate key/value sizes")
    out = node.outputs[0]
    stream = ctx.slots(q)[-1]
    h, d, part = ctx.new_slot(heads), ctx.new_slot(e // heads), ctx.new_slot(3)
    ctx.block(d)
    ctx.block(part)
    ctx.reshape([stream], [h, d])  # the only layout the module can say: embed_dim = heads x d
    for t in (k, v):
        ctx.equal(ctx.slots(t)[-1], stream)
    ctx.equal(ctx.slots(qkv_w)[1], stream)
    ctx.reshape([ctx.slots(qkv_w)[0]], [part, h, d])
    if isinstance(qkv_b, Ref):
        ctx.reshape([ctx.slots(qkv_b)[0]], [part, h, d])
    ctx.equal(ctx.slots(proj_w)[0], stream)
    ctx.equal(ctx.slots(proj_w)[1], stream)
    if isinstance(proj_b, Ref):
        ctx.equal(ctx.slots(proj_b)[0], stream)
    so, sq = ctx.slots(out), ctx.slots(q)
    for i in range(len(sq)):
        ctx.equal(sq[i], so[i])
    for extra in node.outputs[1:]:
        ctx.touched.update(ctx.slots(extra))  # attention weights, when asked for
    ctx.tag(h, "heads")
    ctx.attention.append(AttentionCall(node.module, h, h, d, d))


_register_many(["aten._native_multi_head_attention"], native_multi_head_attention)
