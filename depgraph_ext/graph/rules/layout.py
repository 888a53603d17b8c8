"""Views, reshapes, permutations, expansion, repetition, flips and shuffles: layouts
whose index mappings are row-major factorisations or dim reorderings."""

from __future__ import annotations

from ..trace import Node, Ref
from .context import RuleContext, RuleError, arg, wrap_dim
from .registry import register_many


# -- layout: views, reshapes, permutations --------------------------------------------------------
def reshape_like(ctx: RuleContext, node: Node) -> None:
    ctx.reshape_dims(node.inputs[0], node.outputs[0])


register_many(
    [
        f"aten.{n}"
        for n in "view _unsafe_view reshape view_copy _reshape_alias squeeze unsqueeze "
        "squeeze_copy unsqueeze_copy flatten unflatten view_as reshape_as".split()
    ],
    reshape_like,
)


def permute(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(src))
    dims = [wrap_dim(d, rank) for d in arg(node, "dims")]
    ctx.equal_dims(src, out, [(d, i) for i, d in enumerate(dims)])


def transpose(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(src))
    if node.packet in ("aten.t", "aten.numpy_T"):
        d0, d1 = 0, rank - 1
    else:
        d0, d1 = wrap_dim(arg(node, "dim0"), rank), wrap_dim(arg(node, "dim1"), rank)
    order = list(range(rank))
    order[d0], order[d1] = order[d1], order[d0]
    ctx.equal_dims(src, out, [(d, i) for i, d in enumerate(order)])


register_many(["aten.permute", "aten.permute_copy"], permute)
register_many(
    [
        "aten.t",
        "aten.transpose",
        "aten.transpose_copy",
        "aten.swapaxes",
        "aten.swapdims",
        "aten.numpy_T",
    ],
    transpose,
)


def expand(ctx: RuleContext, node: Node) -> None:
    """Dims of equal size are one; a new or broadcast dim repeats the same values along itself,
    so (like zeros) it may shrink with what it meets. Its size comes from the call: if the code
    fixes it, plan validation finds that and the dim is kept."""
    ctx.broadcast([node.inputs[0]], node.outputs)
    for out in node.outputs:
        ctx.touched.update(ctx.slots(out))


register_many(["aten.expand", "aten.expand_copy", "aten.expand_as", "aten.broadcast_to"], expand)


def repeat(ctx: RuleContext, node: Node) -> None:
    src, out = node.inputs[0], node.outputs[0]
    repeats = list(arg(node, "repeats"))
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


register_many(["aten.repeat"], repeat)


def repeat_interleave(ctx: RuleContext, node: Node) -> None:
    """Each index of ``dim`` repeated ``repeats`` times in a row (grouped-query attention's
    keys and values broadcast to the query heads): out[dim] = [index, copy], the copy factor
    fixed by the call. With a tensor of per-index repeats the data decides how often each
    index of ``dim`` comes: that dim is kept (the other dims are the output's); without a
    dim (flattened), and for the indices it makes from repeats alone (a vision tower's
    sequence bounds from its image grids), every dim is the data's."""
    src, out = node.inputs[0], node.outputs[0]
    repeats, dim = arg(node, "repeats"), arg(node, "dim")
    if not isinstance(arg(node, "self", None), Ref) or dim is None:
        for v in node.inputs + node.outputs:  # (repeat_interleave(repeats): indices)
            ctx.block_value(v)
        return
    ss, so = ctx.slots(src), ctx.slots(out)
    dim = wrap_dim(dim, len(ss))
    if not isinstance(repeats, int):
        _data_dim(ctx, ss, so, dim)
        if isinstance(repeats, Ref):
            ctx.block_value(repeats)
        return
    for i, s in enumerate(ss):
        if i != dim:
            ctx.equal(s, so[i])
        elif repeats == 1:
            ctx.equal(s, so[i])
        else:
            copy = ctx.new_slot(repeats)
            ctx.block(copy)
            ctx.reshape([s, copy], [so[i]])


register_many(["aten.repeat_interleave"], repeat_interleave)


def unfold(ctx: RuleContext, node: Node) -> None:
    """``x.unfold(dim, size, step)``: windows of ``size`` positions along ``dim`` every
    ``step`` (patches of an image, of a mask): the windows and their positions are the
    data's layout (kept), the other dims are the output's."""
    src, out = node.inputs[0], node.outputs[0]
    ss, so = ctx.slots(src), ctx.slots(out)
    if len(so) != len(ss) + 1:
        raise RuleError("unfold of a scalar")
    _data_dim(ctx, ss, so, wrap_dim(arg(node, "dimension"), len(ss)) if ss else 0)
    ctx.block(so[-1])


def _data_dim(ctx: RuleContext, ss, so, dim: int) -> None:
    """Dim ``dim`` of the input and the output is laid out by the data or the call (kept);
    every other dim of the input is the output's, in order."""
    for i, s in enumerate(ss):
        if i == dim:
            ctx.block(s)
            ctx.block(so[i])
        else:
            ctx.equal(s, so[i])


register_many(["aten.unfold", "aten.unfold_copy"], unfold)


def flip(ctx: RuleContext, node: Node) -> None:
    """Reversed dims map i to n-1-i, which pruning cannot keep: those dims are blocked."""
    src, out = node.inputs[0], node.outputs[0]
    rank = len(ctx.shape(src))
    dims = {wrap_dim(d, rank) for d in arg(node, "dims")} or set(range(rank))
    ss, so = ctx.slots(src), ctx.slots(out)
    for i in range(rank):
        if i in dims:
            ctx.block(ss[i])
        else:
            ctx.equal(ss[i], so[i])


register_many(["aten.flip", "aten.roll"], flip)


def triangle(ctx: RuleContext, node: Node) -> None:
    """tril/triu zero by position on the last two dims: those are blocked, the rest are equal."""
    src, out = node.inputs[0], node.outputs[0]
    ss, so = ctx.slots(src), ctx.slots(out)
    for i in range(len(ss)):
        if i >= len(ss) - 2:
            ctx.block(ss[i])
        else:
            ctx.equal(ss[i], so[i])


register_many(["aten.tril", "aten.triu"], triangle)


def pixel_shuffle(ctx: RuleContext, node: Node) -> None:
    """[N, C r r, H, W] <-> [N, C, H r, W r]: a channel is a block of r x r input channels; the
    r factors become positions (fixed by the call)."""
    x, out = node.inputs[0], node.outputs[0]
    r = int(arg(node, "upscale_factor") or arg(node, "downscale_factor"))
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


register_many(["aten.pixel_shuffle", "aten.pixel_unshuffle"], pixel_shuffle)


def channel_shuffle(ctx: RuleContext, node: Node) -> None:
    """[N, g n, ...] -> [N, n g, ...]: input channel (i, j) becomes output channel (j, i). The
    channels within a group prune together across the shuffle; the number of groups is the
    call's (``nn.ChannelShuffle.groups``), kept."""
    x, out = node.inputs[0], node.outputs[0]
    groups = int(arg(node, "groups"))
    sx, so = ctx.slots(x), ctx.slots(out)
    channels = ctx.size(sx[1])
    if groups <= 0 or channels % groups:
        raise RuleError(f"{channels} channels in {groups} groups")
    g_in, n_in = ctx.new_slot(groups), ctx.new_slot(channels // groups)
    n_out, g_out = ctx.new_slot(channels // groups), ctx.new_slot(groups)
    ctx.reshape([sx[1]], [g_in, n_in])
    ctx.reshape([so[1]], [n_out, g_out])
    ctx.equal(g_in, g_out)
    ctx.equal(n_in, n_out)
    ctx.block(g_in)
    for i in range(len(sx)):
        if i != 1:
            ctx.equal(sx[i], so[i])


register_many(["aten.channel_shuffle", "aten.native_channel_shuffle"], channel_shuffle)


def as_strided(ctx: RuleContext, node: Node) -> None:
    """Only the squeeze/unsqueeze-like case (same non-1 sizes, in order) has a known mapping."""
    src, out = node.inputs[0], node.outputs[0]
    if [n for n in ctx.shape(src) if n != 1] != [n for n in ctx.shape(out) if n != 1]:
        raise RuleError("as_strided to a different layout")
    ctx.reshape_dims(src, out)


register_many(["aten.as_strided", "aten.as_strided_copy"], as_strided)


def complex_view(ctx: RuleContext, node: Node) -> None:
    """``view_as_complex`` (real [..., 2] -> complex [...]) and ``view_as_real`` (back): the
    leading dims are the same; the (real, imaginary) pair stays whole (rotary embeddings
    written as complex products pair each channel with its neighbour)."""
    src, out = node.inputs[0], node.outputs[0]
    real, whole = (src, out) if node.packet.startswith("aten.view_as_complex") else (out, src)
    sr, sw = ctx.slots(real), ctx.slots(whole)
    if len(sr) != len(sw) + 1 or ctx.size(sr[-1]) != 2:
        raise RuleError("a complex view whose last real dim is not the (real, imaginary) pair")
    ctx.block(sr[-1])
    for a, b in zip(sr[:-1], sw):
        ctx.equal(a, b)


register_many(
    ["aten.view_as_complex", "aten.view_as_real", "aten.view_as_complex_copy",
     "aten.view_as_real_copy"],
    complex_view,
)  # fmt: skip
