"""Reductions, softmax (with attention built from matmul + softmax) and sorting."""

from __future__ import annotations

from ..trace import Node
from .context import AttentionCall, RuleContext, arg, wrap_dim
from .elementwise import elementwise
from .registry import register_many


# -- reductions and normalisation over a dim ------------------------------------------------------
def reduction(ctx: RuleContext, node: Node) -> None:
    """Reduced dims are free (their indices vanish); kept dims are equal, in order."""
    src = node.inputs[0]
    shape = ctx.shape(src)
    rank = len(shape)
    dims = arg(node, "dim", None)
    if dims is None or isinstance(dims, bool) or (isinstance(dims, (list, tuple)) and not dims):
        return  # full reduction
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {wrap_dim(d, rank) for d in dims}
    keepdim = bool(arg(node, "keepdim", False))
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


register_many([f"aten.{n}.other" for n in ("max", "min")], elementwise)
register_many(
    [
        f"aten.{n}"
        for n in "sum mean amax amin max min argmax argmin logsumexp prod var std "
        "var_mean std_mean norm linalg_vector_norm any all nansum count_nonzero".split()
    ],
    reduction,
)


def softmax(ctx: RuleContext, node: Node) -> None:
    ctx.broadcast([node.inputs[0]], node.outputs)
    x = node.inputs[0]
    shape = ctx.shape(x)
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
    ["aten.sort", "aten.topk", "aten.argsort", "aten.kthvalue", "aten.median", "aten.mode"],
    sort_along,
)
