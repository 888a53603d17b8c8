"""Contractions (matrix products), convolutions and embeddings."""

from __future__ import annotations

from ..trace import Node, Ref
from .context import RuleContext, RuleError, arg, wrap_dim
from .registry import register_many

# -- contractions ----------------------------------------------------------------------------------
# self + mat1 @ mat2 (``_sparse_addmm``: a sparse mat1, as ``torch.sparse.mm`` makes it)
_WITH_BIAS = ("aten.addmm", "aten.baddbmm", "aten.addmv", "aten.addbmm", "aten._sparse_addmm")


def mm(ctx: RuleContext, node: Node) -> None:
    """[..., n, k] @ [..., k, m]: contraction k, batch dims broadcast, bias (addmm) broadcast."""
    if node.packet in _WITH_BIAS:
        bias, a, b = node.inputs[0], node.inputs[1], node.inputs[2]
    else:
        bias, (a, b) = None, node.inputs[:2]
    out = node.outputs[0]
    sa, sb, so = ctx.slots(a), ctx.slots(b), ctx.slots(out)
    _contraction(ctx, node, a, b, sa[-1])
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


register_many(
    [
        "aten.mm",
        "aten.bmm",
        "aten.matmul",
        "aten.addmm",
        "aten.baddbmm",
        "aten.mv",
        "aten.addmv",
        "aten._sparse_addmm",
    ],
    mm,
)


def _contraction(ctx: RuleContext, node: Node, a, b, summed: int) -> None:
    """A product summed over ``summed`` is exact where either factor is zero at the removed
    units (a weight's zeroed slices, an activation past one); two factors that are both
    non-zero there (``(elu(q) + 1) @ (elu(k) + 1).T``) make the sum change with them."""
    # (the second factor first: a linear layer's weight, whose answer is at hand)
    cb = ctx.nonzero_at_removed(b)
    ca = ctx.nonzero_at_removed(a) if cb is not None else None
    if ca is not None:
        ctx.reduces(summed, node, "a matrix product", ca)


def dot(ctx: RuleContext, node: Node) -> None:
    """The dot product of two vectors (spectral norm's u . W v): one summed dim."""
    a, b = node.inputs[:2]
    _contraction(ctx, node, a, b, ctx.slots(a)[0])
    ctx.equal(ctx.slots(a)[0], ctx.slots(b)[0])


register_many(["aten.dot", "aten.vdot"], dot)


def trilinear(ctx: RuleContext, node: Node) -> None:
    """_trilinear (nn.Bilinear: x1 W x2): three factors, each unsqueezed at its expand dims to
    one rank, multiplied and summed over ``sumdim``; the other dims are the output's, in
    order. A dim is equal across the factors that have it and the output; a summed dim is
    exact where one of its factors is zero at the removed units."""
    factors = [arg(node, name) for name in ("i1", "i2", "i3")]
    expands = [set(arg(node, name)) for name in ("expand1", "expand2", "expand3")]
    summed = set(arg(node, "sumdim"))
    total = len(ctx.shape(factors[0])) + len(expands[0])
    out = ctx.slots(node.outputs[0])
    kept = [d for d in range(total) if d not in summed]
    if len(out) != len(kept):
        raise RuleError("an output of another rank than its dims not summed")
    at: dict[int, list[int]] = {}
    for factor, expand in zip(factors, expands):
        own, slots = [d for d in range(total) if d not in expand], ctx.slots(factor)
        if len(own) != len(slots):
            raise RuleError("a factor of another rank than its dims not expanded")
        for d, s in zip(own, slots):
            at.setdefault(d, []).append(s)
    for d, s in zip(kept, out):
        at.setdefault(d, []).append(s)
    for d in range(total):
        slots = [s for s in at.get(d, []) if ctx.size(s) != 1]
        for s in slots[1:]:
            ctx.equal(slots[0], s)
        if d in summed and slots:
            having = [f for f, expand in zip(factors, expands) if d not in expand]
            culprits = [ctx.nonzero_at_removed(f) for f in having]
            if all(c is not None for c in culprits):
                ctx.reduces(slots[0], node, "a bilinear product", culprits[0])


register_many(["aten._trilinear"], trilinear)


def solve_triangular(ctx: RuleContext, node: Node) -> None:
    """``linalg.solve_triangular(A, B)``: X with A X = B (``left``; X A = B otherwise), A
    [..., n, n] (a chunked delta rule's within-chunk system, Qwen3.5's linear attention).
    Each column of B (row, on the right) is solved on its own: that dim is X's. The n dim
    of A, B and X is what the solve mixes (kept); batch dims broadcast."""
    a, b, x = arg(node, "self"), arg(node, "B"), node.outputs[0]
    sa, sb, sx = ctx.slots(a), ctx.slots(b), ctx.slots(x)
    if len(sa) < 2 or len(sb) < 2 or len(sx) != max(len(sa), len(sb)):
        raise RuleError("solve_triangular of a vector")
    for sv in (sa, sb):  # batch dims, aligned from the right
        lead = len(sx) - len(sv)
        for i in range(len(sv) - 2):
            if ctx.size(sv[i]) == ctx.size(sx[lead + i]) != 1:
                ctx.equal(sv[i], sx[lead + i])
    left = bool(arg(node, "left", True))
    mixed, own = (-2, -1) if left else (-1, -2)
    for s in (sa[-2], sa[-1], sb[mixed], sx[mixed]):
        ctx.block(s)
    ctx.equal(sb[own], sx[own])


register_many(["aten.linalg_solve_triangular"], solve_triangular)


def cross(ctx: RuleContext, node: Node) -> None:
    """``linalg.cross(a, b, dim)``: the cross product of 3-vectors along ``dim`` (point
    features from coordinates, PPFConv's): the other dims broadcast as element-wise ones do;
    the vectors' dim mixes its three components (kept)."""
    a, b, out = arg(node, "self"), arg(node, "other"), node.outputs[0]
    ctx.broadcast([x for x in (a, b) if isinstance(x, Ref)], [out])
    so = ctx.slots(out)
    dim = arg(node, "dim", -1)
    ctx.block(so[dim if dim >= 0 else len(so) + dim])


register_many(["aten.linalg_cross"], cross)


def fft(ctx: RuleContext, node: Node) -> None:
    """A discrete Fourier transform over ``dim`` (``torch.fft``'s ops: FNet's token mixing, a
    Fourier neural operator's spectral layers): each position of the transformed dims mixes
    them all (kept, and a one-sided transform changes their size); every other dim is
    transformed index by index, a linear map of each: the output's, exact."""
    src, out = node.inputs[0], node.outputs[0]
    ss, so = ctx.slots(src), ctx.slots(out)
    if len(ss) != len(so):
        raise RuleError("an FFT that changes the rank")
    transformed = {wrap_dim(d, len(ss)) for d in arg(node, "dim")}
    for i, (a, b) in enumerate(zip(ss, so)):
        if i in transformed:
            ctx.block(a)
            ctx.block(b)
        else:
            ctx.equal(a, b)


register_many(["aten._fft_r2c", "aten._fft_c2c", "aten._fft_c2r"], fft)


def convolution(ctx: RuleContext, node: Node) -> None:
    """N C_in *S -> N C_out *S'; weight [C_out, C_in/g, *k] ([C_in, C_out/g, *k] transposed).

    With g groups, C_in = [g, C_in/g] and C_out = [g, C_out/g] share the group factor g, so a unit
    is either a whole group or one channel index inside every group. Spatial output dims are fixed
    by the call and therefore blocked.
    """
    x, w, bias = arg(node, "input", arg(node, "self")), arg(node, "weight"), arg(node, "bias")
    transposed = bool(arg(node, "transposed", False))
    groups = int(arg(node, "groups", 1))
    out = node.outputs[0]
    sx, sw, so = ctx.slots(x), ctx.slots(w), ctx.slots(out)
    batched = len(sx) == len(sw)
    c = 1 if batched else 0
    if batched:
        ctx.equal(sx[0], so[0])
    for s in sx[c + 1 :]:  # input positions map to output positions by stride and padding
        ctx.block(s)
    for s in sw[2:]:  # kernel taps: their positions are fixed by padding, stride, dilation
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


CONVOLUTIONS = (
    "aten.convolution",
    "aten._convolution",
    "aten.conv1d",
    "aten.conv2d",
    "aten.conv3d",
    "aten.mkldnn_convolution",
    "aten.convolution_overrideable",
)
register_many(list(CONVOLUTIONS), convolution)


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


register_many(["aten.embedding"], embedding)


def embedding_renorm(ctx: RuleContext, node: Node) -> None:
    """An embedding's ``max_norm``: the looked-up rows of weight [V, D] scaled down in place to
    that norm, the norm over D: removing an index of D changes the kept ones' scale
    (function-changing); the vocabulary is blocked."""
    w = node.inputs[0]
    sw = ctx.slots(w)
    ctx.block(sw[0])
    ctx.reduces(sw[1], node, "a norm of each looked-up row over the units (max_norm)")
    for out in node.outputs:
        ctx.equal_dims(w, out, [(0, 0), (1, 1)])


register_many(["aten.embedding_renorm"], embedding_renorm)


def embedding_bag(ctx: RuleContext, node: Node) -> None:
    """nn.EmbeddingBag: weight [V, D], bags of indices -> [B, D], each bag's rows summed,
    averaged or maxed column by column (scaled per index with per_sample_weights): D is the
    output's last dim (and that of max mode's argmax); the vocabulary is blocked, and the bags
    and their bookkeeping (offset2bag, bag sizes) are the data's (fixed)."""
    w, out, arg_max = node.inputs[0], node.outputs[0], node.outputs[3]
    sw, so = ctx.slots(w), ctx.slots(out)
    ctx.block(sw[0])
    ctx.equal(sw[1], so[-1])
    ctx.tag(sw[1], "hidden")
    sm = ctx.slots(arg_max)
    if len(sm) == 2 and ctx.size(sm[1]) == ctx.size(sw[1]):
        ctx.equal(sm[1], sw[1])
        ctx.equal(sm[0], so[0])


register_many(["aten._embedding_bag", "aten._embedding_bag_forward_only"], embedding_bag)


def pairwise_distance(ctx: RuleContext, node: Node) -> None:
    """``torch.cdist``'s ops: x1 [*, P, M] and x2 [*, R, M] -> the p-norm distance of every
    pair [*, P, R]. M is summed (as |x1 - x2|^p, or its max), so its units go exactly where
    both inputs are zero at them (a zeroed codebook column and a zeroed feature: the
    difference adds nothing, for any p); the batch dims broadcast."""
    a, b = node.inputs[:2]
    out = node.outputs[0]
    sa, sb, so = ctx.slots(a), ctx.slots(b), ctx.slots(out)
    if min(len(sa), len(sb)) < 2 or len(so) != max(len(sa), len(sb)):
        raise RuleError("distance inputs of rank under 2, or an output of another rank")
    ctx.equal(sa[-1], sb[-1])
    ctx.equal(sa[-2], so[-2])
    ctx.equal(sb[-2], so[-1])
    for v, sv in ((a, sa), (b, sb)):
        lead = len(so) - len(sv)
        for i in range(len(sv) - 2):
            if ctx.shape(v)[i] == ctx.shape(out)[lead + i] != 1:
                ctx.equal(sv[i], so[lead + i])
    culprit = ctx.nonzero_at_removed(a) or ctx.nonzero_at_removed(b)
    if culprit is not None:
        ctx.reduces(sa[-1], node, "a distance", culprit)


register_many(["aten._euclidean_dist", "aten._cdist_forward"], pairwise_distance)
