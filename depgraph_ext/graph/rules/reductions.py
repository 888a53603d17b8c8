"""Reductions, softmax (with attention built from matmul + softmax) and sorting."""

from __future__ import annotations

from ..trace import Node, Ref
from .attention import block_repeats
from .context import AttentionCall, RuleContext, RuleError, arg, wrap_dim
from .elementwise import elementwise
from .registry import register_many

# -- reductions and normalisation over a dim ------------------------------------------------------
# Reductions whose result over the kept indices is that over all of them once the removed ones
# are zero: a sum of terms (a zero adds nothing), a count of non-zeros, any(). Every other one
# (mean, var, max, prod, logsumexp, all, argmax ...) depends on the removed indices.
SUM_LIKE = frozenset(
    {"aten.sum", "aten.nansum", "aten.any", "aten._is_any_true", "aten.count_nonzero"}
)
# Norms are sums of |x|^p: exact for p > 0 (p = inf is a max of |x| >= 0, exact too).
NORMS = frozenset({"aten.norm", "aten.linalg_vector_norm"})


def _sum_like(node: Node) -> bool:
    if node.packet in SUM_LIKE:
        return True
    if node.packet in NORMS:
        p = arg(node, "ord", None) if node.packet == "aten.linalg_vector_norm" else arg(node, "p")
        return p is None or (isinstance(p, (int, float)) and p > 0)
    return False


def reduction(ctx: RuleContext, node: Node) -> None:
    """Kept dims are equal, in order; reduced dims vanish: free for sum-like reductions,
    function-changing (``ctx.reduces``) for the others."""
    src = node.inputs[0]
    shape = ctx.shape(src)
    rank = len(shape)
    ss = ctx.slots(src)
    dims = arg(node, "dim", None)
    if dims is None or isinstance(dims, bool) or (isinstance(dims, (list, tuple)) and not dims):
        dims = set(range(rank))  # full reduction
    else:
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = {wrap_dim(d, rank) for d in dims}
    exact = _sum_like(node)
    # a sum is exact only where the removed units' values are zero (not after an exp ...)
    culprit = ctx.nonzero_at_removed(src) if exact else None
    what = f"a {node.packet.removeprefix('aten.')}"
    for d in dims:
        if exact and culprit is None:
            ctx.free(ss[d])
        elif exact:
            ctx.reduces(ss[d], node, what, culprit)
        else:
            ctx.reduces(ss[d], node, f"{what} over the units")
    if len(dims) == rank:
        return
    keepdim = bool(arg(node, "keepdim", False))
    for out in node.outputs:
        so = ctx.slots(out)
        j = 0
        for i in range(rank):
            if i in dims:
                j += 1 if keepdim else 0
                continue
            ctx.equal(ss[i], so[j])
            j += 1


register_many([f"aten.{n}.other" for n in ("max", "min")], elementwise)
register_many(
    [
        f"aten.{n}"
        for n in "sum mean amax amin aminmax max min argmax argmin logsumexp prod var std "
        "var_mean std_mean norm linalg_vector_norm any all nansum count_nonzero".split()
    ]
    + ["aten._is_all_true", "aten._is_any_true"],  # (torch._check_tensor_all's: all elements)
    reduction,
)


def softmax(ctx: RuleContext, node: Node) -> None:
    """softmax, log_softmax and running reductions along a dim: every dim is equal; the dim
    itself is function-changing (a softmax normalises over it), except for cumsum (a running
    sum: zeroed indices add nothing)."""
    ctx.broadcast([node.inputs[0]], node.outputs)
    x = node.inputs[0]
    shape = ctx.shape(x)
    if shape and node.packet != "aten.cumsum":
        dim = ctx.slots(x)[wrap_dim(arg(node, "dim"), len(shape))]
        ctx.reduces(dim, node, f"a {node.packet.removeprefix('aten.').lstrip('_')} over the units")
    elif shape and (culprit := ctx.nonzero_at_removed(x)) is not None:
        dim = ctx.slots(x)[wrap_dim(arg(node, "dim"), len(shape))]
        ctx.reduces(dim, node, "a cumsum", culprit)
    if node.packet not in ("aten._softmax", "aten.softmax", "aten._safe_softmax"):
        return
    if len(shape) != 4 or wrap_dim(arg(node, "dim"), 4) != 3:
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
    # (keys and values repeated to the query heads: transformers' repeat_kv)
    kv_heads = block_repeats(
        ctx,
        [scores.inputs[1], *(weighted.inputs[1:2] if weighted is not None else ())],
        ctx.size(heads),
    )
    ctx.tag(heads, "heads")
    ctx.attention.append(
        AttentionCall(
            node.module, heads, heads if kv_heads is None else kv_heads, head_dim, v_head_dim
        )
    )


_MATMULS = ("aten.bmm", "aten.matmul", "aten.baddbmm", "aten.mm")


def _matmul_before(ctx: RuleContext, v: int, depth: int = 10) -> Node | None:
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
        if node.packet == "aten.where":  # (masked scores: where(mask, scores, -inf))
            scores = arg(node, "self")
            if not isinstance(scores, Ref):
                return None
            v = scores.value
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


register_many(
    [
        "aten._softmax",
        "aten.softmax",
        "aten._safe_softmax",
        "aten._log_softmax",
        "aten.log_softmax",
        "aten.cumsum",
        "aten.cumprod",
        "aten.logcumsumexp",
    ],
    softmax,
)


def sort_along(ctx: RuleContext, node: Node) -> None:
    """sort/topk reorder a dim by value: that dim is blocked, the others are equal."""
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    dim = arg(node, "dim", -1)
    dim = wrap_dim(dim if isinstance(dim, int) else -1, rank)
    ss = ctx.slots(src)
    ctx.block(ss[dim])
    for out in node.outputs:
        so = ctx.slots(out)
        for i in range(rank):
            if i != dim:
                ctx.equal(ss[i], so[i])


register_many(
    ["aten.sort", "aten.argsort", "aten.kthvalue", "aten.median", "aten.mode"],
    sort_along,
)


def topk(ctx: RuleContext, node: Node) -> None:
    """topk chooses k indices of a dim by value (a router choosing experts): removing units
    of that dim changes the choice (function-changing), at least k must stay, and the indices
    it returns are positions along the dim (a dim they index is coupled with it)."""
    src = node.inputs[0]
    rank = len(ctx.shape(src))
    if rank == 0:
        raise RuleError("topk of a scalar")
    dim = wrap_dim(arg(node, "dim", -1), rank)
    k = arg(node, "k")
    if not isinstance(k, int):
        raise RuleError(f"topk with k={k!r}")
    ss = ctx.slots(src)
    ctx.reduces(ss[dim], node, "a top-k choice among the units")
    ctx.keeps_at_least(ss[dim], k)
    for out in node.outputs:
        so = ctx.slots(out)
        for i in range(rank):
            if i != dim:
                ctx.equal(ss[i], so[i])
    if len(node.outputs) == 2:
        ctx.indexes(node.outputs[1], ss[dim], node.module)


register_many(["aten.topk"], topk)
