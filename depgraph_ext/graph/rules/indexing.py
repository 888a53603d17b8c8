"""Concatenation, stacking, slicing, selection, gathers and padding."""

from __future__ import annotations

import itertools
import math
import operator

import torch

from ..trace import Node, Ref
from .context import RuleContext, RuleError, arg, refs_in, wrap_dim
from .registry import register_many


# -- concatenation, slicing, selection ------------------------------------------------------------
def cat(ctx: RuleContext, node: Node) -> None:
    tensors = [r for r in refs_in(arg(node, "tensors")) if ctx.shape(r) != (0,)]
    out = node.outputs[0]
    rank = len(ctx.shape(out))
    dim = wrap_dim(arg(node, "dim", 0), rank)
    so = ctx.slots(out)
    offset = 0
    others = [i for i in range(rank) if i != dim and ctx.size(so[i]) != 1]
    ins, outs = [], []
    for t in tensors:
        st = ctx.slots(t)
        ctx.cat_piece(so[dim], st[dim], offset)
        ins += [st[i] for i in others]
        outs += [so[i] for i in others]
        offset += ctx.shape(t)[dim]
    ctx.equal_pairs(ins, outs)


register_many(["aten.cat", "aten.concat", "aten.concatenate"], cat)


def stack(ctx: RuleContext, node: Node) -> None:
    tensors = refs_in(arg(node, "tensors"))
    out = node.outputs[0]
    rank = len(ctx.shape(out))
    dim = wrap_dim(arg(node, "dim", 0), rank)
    so = ctx.slots(out)
    kept = so[:dim] + so[dim + 1 :]  # (the output's slot of each input dim)
    values = map(_VALUE_OF, tensors)
    ins = list(itertools.chain.from_iterable(map(ctx.value_slots.__getitem__, values)))
    if len(ins) != len(kept) * len(tensors):
        raise RuleError("stack of tensors of different ranks")
    ctx.equal_pairs(ins, kept * len(tensors))


register_many(["aten.stack"], stack)
_VALUE_OF = operator.attrgetter("value")


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
    dim = wrap_dim(arg(node, "dim", 0), len(shape))
    start = arg(node, "start", None)
    step = arg(node, "step", 1)
    n = shape[dim]
    start = 0 if start is None else (start + n if start < 0 else start)
    start = max(0, min(start, n))
    _slice_pieces(ctx, src, dim, [(out, start, step)])


def split(ctx: RuleContext, node: Node) -> None:
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    dim = wrap_dim(arg(node, "dim", 0), rank)
    pieces, offset = [], 0
    for out in node.outputs:
        pieces.append((out, offset, 1))
        offset += ctx.shape(out)[dim]
    _slice_pieces(ctx, src, dim, pieces)


def narrow(ctx: RuleContext, node: Node) -> None:
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    dim, start = wrap_dim(arg(node, "dim"), rank), arg(node, "start")
    if isinstance(start, Ref):
        raise RuleError("narrow with a tensor start")
    start = start + ctx.shape(src)[dim] if start < 0 else start
    _slice_pieces(ctx, src, dim, [(node.outputs[0], start, 1)])


def select(ctx: RuleContext, node: Node) -> None:
    """x.select(dim, i): the index is a constant, so ``dim`` is blocked; other dims are equal."""
    src, out = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(src))
    dims = [wrap_dim(arg(node, "dim"), rank)]
    _drop_dims(ctx, src, out, dims)


def unbind(ctx: RuleContext, node: Node) -> None:
    src = node.inputs[0]
    dim = wrap_dim(arg(node, "dim", 0), len(ctx.shape(src)))
    for out in node.outputs:
        _drop_dims(ctx, src, out, [dim])


def _drop_dims(ctx: RuleContext, src, out, dropped: list[int]) -> None:
    ss, so = ctx.slots(src), ctx.slots(out)
    kept = [i for i in range(len(ss)) if i not in dropped]
    for d in dropped:
        ctx.block(ss[d])
    for j, i in enumerate(kept):
        ctx.equal(ss[i], so[j])


register_many(["aten.slice", "aten.slice_copy"], slice_tensor)
register_many(
    [
        "aten.split",
        "aten.split_with_sizes",
        "aten.unsafe_split",
        "aten.unsafe_split_with_sizes",
        "aten.split_copy",
        "aten.split_with_sizes_copy",
        "aten.chunk",
        "aten.unsafe_chunk",
    ],
    split,
)
register_many(["aten.narrow", "aten.narrow_copy"], narrow)
register_many(["aten.select", "aten.select_copy"], select)
register_many(["aten.unbind", "aten.unbind_copy"], unbind)


def index_along_dim(ctx: RuleContext, node: Node) -> None:
    """index_select/gather/scatter along a dim pick data-dependent indices on that dim only."""
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    dim = wrap_dim(arg(node, "dim"), rank)
    ss = ctx.slots(src)
    if not _couple_with_domain(ctx, node, src, dim, arg(node, "index")):
        ctx.block(ss[dim])
    elif node.packet not in ("aten.index_select", "aten.gather"):  # scatters keep self's dim
        for out in node.outputs:
            ctx.equal(ss[dim], ctx.slots(out)[dim])
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


register_many(
    [
        "aten.index_select",
        "aten.gather",
        "aten.scatter",
        "aten.scatter_add",
        "aten.scatter_reduce",
        "aten.index_add",
        "aten.index_copy",
        "aten.index_fill",
    ],
    index_along_dim,
)


def _couple_with_domain(ctx: RuleContext, node: Node, src: int, dim: int, index) -> bool:
    """Indices whose values are positions along a known slot (a router's top-k experts) pick
    along ``dim`` of ``src``: that dim is the slot. A parameter indexed so is a bank of
    experts, one per index; module attributes holding their count follow it."""
    domain = ctx.domain(index)
    if domain is None:
        return False
    slot, chooser = domain
    dim_slot = ctx.slots(src)[dim]
    if ctx.size(dim_slot) != ctx.size(slot) or ctx.size(slot) == 1:
        return False
    ctx.equal(dim_slot, slot)
    ctx.mapped_positions.add(index.value if isinstance(index, Ref) else index)
    if ctx.graph.values[src].kind == "param":
        ctx.tag(slot, "experts")
        ctx.add_router(slot, chooser)
        for module in dict.fromkeys((node.module, chooser)):
            ctx.set_attr_from_slot(module, "num_experts", slot)
    return True


def index_tensor(ctx: RuleContext, node: Node) -> None:
    """x[i0, i1, ...] with index tensors on some dims: indexed dims are blocked (their indices are
    data); the other dims of x are equal to the output's; the index tensors' dims are the
    output's broadcast dims. A boolean mask of k dims indexes the next k dims of x at once,
    and gives one result dim (as many as it has true values: the data's count)."""
    src, out = node.inputs[0], node.outputs[0]
    indices = list(arg(node, "indices"))
    ss, so = ctx.slots(src), ctx.slots(out)
    # (first dim of x it indexes, how many, the index, whether a mask) per index argument
    entries: list[tuple[int, int, object, bool]] = []
    d = 0
    for ix in indices:
        mask = isinstance(ix, Ref) and ctx.graph.values[ix.value].dtype in _MASK_DTYPES
        width = len(ctx.shape(ix)) if mask else 1
        if mask and width == 0:
            raise RuleError("index with a 0-dim mask")
        entries.append((d, width, ix, mask))
        d += width
    indexed = [
        d for start, width, ix, _ in entries if ix is not None for d in range(start, start + width)
    ]
    if not indexed:
        raise RuleError("index without index tensors")
    if indexed[-1] >= len(ss):
        raise RuleError("index with more indexed dims than its input has")
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1))
    bdims = max(1 if mask else len(ctx.shape(ix)) for _, _, ix, mask in entries if ix is not None)
    first = indexed[0] if adjacent else 0
    for start, width, ix, mask in entries:
        if ix is None:
            continue
        if mask or not _couple_with_domain(ctx, node, src, start, ix):
            for d in range(start, start + width):
                ctx.block(ss[d])
    j = 0
    for d in range(len(ss)):
        if d in indexed:
            continue
        pos = (d if d < first else d - len(indexed) + bdims) if adjacent else bdims + j
        j += 1
        if ctx.size(ss[d]) != 1:
            ctx.equal(ss[d], so[pos])
    for _, _, ix, mask in entries:
        if isinstance(ix, Ref) and not mask:
            si, shape = ctx.slots(ix), ctx.shape(ix)
            for k, size in enumerate(shape):
                pos = first + bdims - len(shape) + k
                if size != 1 and size == ctx.shape(out)[pos]:
                    ctx.equal(si[k], so[pos])


_MASK_DTYPES = frozenset({torch.bool, torch.uint8})


register_many(["aten.index", "aten._unsafe_index"], index_tensor)


def index_put(ctx: RuleContext, node: Node) -> None:
    """x[i0, i1, ...] = values: x's indexed dims are blocked (their indices are data), its other
    dims are the result's, and the values' dims that broadcast onto them (right-aligned onto
    the layout ``x[i0, i1, ...]`` has) are those dims."""
    src, out = node.inputs[0], node.outputs[0]
    indices = list(arg(node, "indices"))
    values = arg(node, "values")
    ss, so = ctx.slots(src), ctx.slots(out)
    indexed = [d for d, ix in enumerate(indices) if ix is not None]
    if not indexed or not isinstance(values, Ref):
        raise RuleError("index_put without index tensors or values")
    if _fills_where(ctx, src, indices, values):
        # x[mask] = v with a mask of x's own shape and one value: masked_fill, element-wise
        mask = indices[0]
        for a, b, c in zip(ss, so, ctx.slots(mask)):
            if ctx.size(a) != 1:
                ctx.equal(a, b)
                ctx.equal(a, c)
        return
    masks = [
        d
        for d, ix in enumerate(indices)
        if isinstance(ix, Ref) and ctx.graph.values[ix.value].dtype == torch.bool
    ]
    bdims = max(len(ctx.shape(ix)) for ix in indices if ix is not None)
    if masks and (len(indexed) > 1 or len(ctx.shape(indices[masks[0]])) > 1):
        # x[mask] = v with a mask over dims p .. p + r - 1 (``h[token_mask] += mlp(...)``):
        # those dims are the positions it selects, one dim of the values (their count).
        if len(indexed) > 1:
            raise RuleError("index_put with a mask and other indices")
        p = indexed[0]
        indexed = list(range(p, p + len(ctx.shape(indices[p]))))
        bdims = 1
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1))
    first = indexed[0] if adjacent else 0
    layout: list[int | None] = [None] * (len(ss) - len(indexed) + bdims)  # x dim at each place
    j = 0
    for d in range(len(ss)):
        if d in indexed:
            ctx.block(ss[d])
            ctx.block(so[d])
            continue
        layout[(d if d < first else d - len(indexed) + bdims) if adjacent else bdims + j] = d
        j += 1
        if ctx.size(ss[d]) != 1:
            ctx.equal(ss[d], so[d])
    sv, shape = ctx.slots(values), ctx.shape(values)
    for k, size in enumerate(shape):
        pos = len(layout) - len(shape) + k
        d = layout[pos] if pos >= 0 else None
        if d is not None and size == ctx.shape(src)[d] and size != 1:
            ctx.equal(sv[k], ss[d])


def _fills_where(ctx: RuleContext, src: int, indices, values: Ref) -> bool:
    """``x[mask] = v``: one boolean mask of x's shape, and a value of one element."""
    if len(indices) != 1 or not isinstance(indices[0], Ref):
        return False
    mask = indices[0]
    return (
        ctx.graph.values[mask.value].dtype == torch.bool
        and ctx.shape(mask) == ctx.shape(src)
        and math.prod(ctx.shape(values)) == 1
    )


register_many(["aten.index_put", "aten._index_put_impl", "aten._unsafe_index_put"], index_put)


def masked_scatter(ctx: RuleContext, node: Node) -> None:
    """``x.masked_scatter(mask, source)``: x's elements where the (broadcast) mask is true
    are replaced by source's, taken in order (a vision-language model's image features
    written over its image tokens' embeddings). The output's dims are x's. Along trailing
    dims the mask is constant over (of size 1 there: [B, S, 1] for embeddings [B, S, D]),
    each selected position takes a whole trailing block of source: those dims of source, of
    the same sizes, are the output's. Source's other dims are consumed in an order the data
    decides (blocked), and where no trailing dim is constant the order mixes every dim of
    the output: all are blocked."""
    src, mask, source = arg(node, "self"), arg(node, "mask"), arg(node, "source")
    if not all(isinstance(v, Ref) for v in (src, mask, source)):
        raise RuleError("masked_scatter without tensor arguments")
    out = node.outputs[0]
    ss, so, shape = ctx.slots(src), ctx.slots(out), ctx.shape(src)
    ctx.equal_dims(src, out, [(d, d) for d in range(len(shape))])
    sm, mask_shape = ctx.slots(mask), ctx.shape(mask)
    lead = len(shape) - len(mask_shape)
    for k, size in enumerate(mask_shape):
        if size != 1 and size == shape[lead + k]:
            ctx.equal(sm[k], ss[lead + k])
    trailing = 0  # dims at the end of x along which the mask is constant
    while trailing < len(mask_shape) and mask_shape[len(mask_shape) - 1 - trailing] == 1:
        trailing += 1
    sv, source_shape = ctx.slots(source), ctx.shape(source)
    if (
        trailing == 0
        or source_shape[len(source_shape) - trailing :] != shape[len(shape) - trailing :]
    ):
        trailing = 0
        for s in so:
            ctx.block(s)
    for k in range(1, trailing + 1):
        ctx.equal(sv[-k], so[-k])
    for s in sv[: len(sv) - trailing]:
        ctx.block(s)


register_many(["aten.masked_scatter", "aten.masked_scatter_"], masked_scatter)


def constant_pad(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    pad = list(arg(node, "pad"))
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
            # the padded positions are made by the op, whatever the plan: kept
            for start, n in ((0, left), (left + ctx.size(ss[i]), right)):
                if n:
                    padding = ctx.new_slot(n)
                    ctx.cat_piece(so[i], padding, start)
                    ctx.block(padding)
        else:
            ctx.block(ss[i])


register_many(["aten.constant_pad_nd"], constant_pad)


def bucketize(ctx: RuleContext, node: Node) -> None:
    """``bucketize(x, boundaries)`` / ``searchsorted(sorted, x)``: for each element of x,
    its place among the sorted values (a vision tower's position ids from fractional
    coordinates): an element-wise map of x (its dims are the output's) that searches the
    sorted values' last dim (kept, as are their other dims: one search per row of them)."""
    searched = "sorted_sequence" if node.packet == "aten.searchsorted" else "boundaries"
    values, sorted_, out = arg(node, "self"), arg(node, searched), node.outputs[0]
    if isinstance(values, Ref):
        ctx.equal_dims(values, out, [(d, d) for d in range(len(ctx.shape(values)))])
        rows = len(ctx.shape(sorted_)) - 1  # (searchsorted: a sorted row per leading index)
        if rows > 0:
            ctx.equal_dims(sorted_, values, [(d, d) for d in range(rows)])
    ctx.block_value(out if not isinstance(values, Ref) else sorted_)
    ctx.block_value(sorted_)
    sorter = arg(node, "sorter", None)
    if isinstance(sorter, Ref):
        ctx.block_value(sorter)


register_many(["aten.bucketize", "aten.searchsorted"], bucketize)


def read_as_data(ctx: RuleContext, node: Node) -> None:
    """nonzero/argwhere return the positions of a tensor's nonzero elements, unique its
    distinct values, bincount its counts, an NMS the boxes it keeps: what they read is the
    data, so every dim of the input keeps its size (and the counts are the data's)."""
    for v in node.inputs + node.outputs:
        ctx.block_value(v)


register_many(
    [
        "aten.nonzero",
        "aten.argwhere",
        "aten.nonzero_static",
        "aten._unique",
        "aten._unique2",
        "aten.unique_dim",
        "aten.unique_consecutive",
        "aten.bincount",
        "aten._convert_indices_from_coo_to_csr",  # (row indices -> row pointers)
        "aten._convert_indices_from_csr_to_coo",
        "torchvision.nms",
    ],
    read_as_data,
)
