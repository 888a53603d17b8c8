"""Attention ops: scaled dot-product attention (incl. grouped-query) and
nn.MultiheadAttention's fused path."""

from __future__ import annotations

from ..trace import Node, Ref
from .context import AttentionCall, RuleContext, RuleError, arg
from .registry import register_many


# -- attention ----------------------------------------------------------------------------------
def attention(ctx: RuleContext, node: Node) -> None:
    """softmax(q k^T) v over [..., heads, length, head_dim]; k/v may have fewer heads (GQA).

    With GQA, query heads are [kv head, query head in its kv group]; the second factor is blocked,
    so a unit is one key/value head together with the query heads that share it. Head dims are
    blocked: pruning them would change rotary frequencies and the softmax scale a config
    recomputes on reload.
    """
    q, k, v = arg(node, "query"), arg(node, "key"), arg(node, "value")
    out = node.outputs[0]
    sq, sk, sv, so = ctx.slots(q), ctx.slots(k), ctx.slots(v), ctx.slots(out)
    for i in range(len(sq) - 3):  # batch dims
        for other in (sk, sv, so):
            if ctx.size(other[i]) == ctx.size(sq[i]) != 1:
                ctx.equal(sq[i], other[i])
    hq, hk = ctx.size(sq[-3]), ctx.size(sk[-3])
    ctx.equal(sk[-3], sv[-3])
    kv_heads = sk[-3]
    if hq == hk:
        ctx.equal(sq[-3], sk[-3])
        kv_heads = block_repeats(ctx, [k, v], hq) or kv_heads
    elif hk and hq % hk == 0:
        group = ctx.new_slot(hq // hk)
        ctx.block(group)
        ctx.reshape([sq[-3]], [sk[-3], group])
    else:
        raise RuleError(f"{hq} query heads over {hk} key/value heads")
    ctx.equal(sq[-3], so[-3])
    ctx.equal(sq[-2], so[-2])
    ctx.equal(sk[-2], sv[-2])
    # Each query's weights are a softmax over the key positions: removing one changes the
    # others' (positions the model's parameters make, learned memory tokens, can be units).
    ctx.reduces(sk[-2], node, "an attention's softmax over the units (its key positions)")
    ctx.equal(sq[-1], sk[-1])
    ctx.equal(sv[-1], so[-1])
    ctx.block(sq[-1])
    ctx.block(sv[-1])
    mask = arg(node, "attn_mask") or arg(node, "attn_bias")
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
    ctx.attention.append(AttentionCall(node.module, sq[-3], kv_heads, sq[-1], sv[-1]))


# Ops that only view, copy or broadcast a tensor, through which a repeat of key/value heads
# reaches an attention op.
_SHAPE_ONLY = frozenset(
    {"aten.view", "aten._unsafe_view", "aten.reshape", "aten._reshape_alias", "aten.clone",
     "aten.contiguous", "aten.transpose", "aten.alias", "aten.detach", "aten.expand"}
)  # fmt: skip


def repeated_heads(ctx: RuleContext, v: int | Ref, heads: int, depth: int = 8):
    """(key/value-head slot, repeat slot) where value ``v`` holds ``heads`` heads made by
    repeating fewer key/value heads, as transformers' ``repeat_kv`` does for eager attention
    and for SDPA given a mask (``x[:, :, None].expand(b, kv, n, s, d).reshape(b, kv * n, s,
    d)``), found through a few view, copy and broadcast ops; None where it is not so made."""
    graph = ctx.graph
    v = v.value if isinstance(v, Ref) else v
    for _ in range(depth):
        producer = graph.values[v].producer
        if producer is None:
            return None
        node = graph.nodes[producer]
        if node.packet not in _SHAPE_ONLY or not node.inputs:
            return None
        if node.packet == "aten.expand":
            before, after = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
            if len(before) != len(after):
                return None
            grown = [i for i in range(len(after)) if before[i] != after[i]]
            if grown:
                i = grown[0]
                if (  # [..., kv, 1, length, dim] -> [..., kv, n, length, dim], kv x n heads
                    len(grown) == 1
                    and i == len(after) - 3 >= 2
                    and before[i] == 1
                    and after[i - 1] * after[i] == heads
                ):
                    slots = ctx.slots(node.outputs[0])
                    return slots[i - 1], slots[i]
                return None  # (another broadcast: no repeat of heads)
        v = node.inputs[0]
    return None


def block_repeats(ctx: RuleContext, tensors, heads: int) -> int | None:
    """Where the keys and values an attention op reads are key/value heads repeated to its
    ``heads`` query heads: the repeat is blocked, so that a unit is a key/value head with the
    query heads that share it (as where the op repeats them itself, with enable_gqa: one
    graph whichever path the model's code takes), and the key/value-head slot is returned
    (what a config's ``num_key_value_heads`` counts). None where they are not repeated."""
    found = None
    for t in tensors:
        repeat = repeated_heads(ctx, t, heads) if isinstance(t, Ref | int) else None
        if repeat is not None:
            ctx.block(repeat[1])
            found = found if found is not None else repeat[0]
    return found


register_many(
    [
        "aten.scaled_dot_product_attention",
        "aten._scaled_dot_product_flash_attention_for_cpu",
        "aten._scaled_dot_product_flash_attention",
        "aten._scaled_dot_product_efficient_attention",
        "aten._scaled_dot_product_cudnn_attention",
        "aten._scaled_dot_product_attention_math",
        "aten._scaled_dot_product_fused_attention_overrideable",
    ],
    attention,
)


def native_multi_head_attention(ctx: RuleContext, node: Node) -> None:
    """nn.MultiheadAttention's fused path. The module derives head_dim = embed_dim / num_heads
    and uses embed_dim both for the stream and for the heads' space, so the only shapes it can
    express keep those equal: a unit is a head together with a block of head_dim stream
    channels (head dims themselves are kept)."""
    q, k, v = arg(node, "query"), arg(node, "key"), arg(node, "value")
    qkv_w, qkv_b = arg(node, "qkv_weight"), arg(node, "qkv_bias")
    proj_w, proj_b = arg(node, "proj_weight"), arg(node, "proj_bias")
    heads = int(arg(node, "num_head"))
    e = ctx.shape(q)[-1]
    if (
        ctx.shape(qkv_w) != (3 * e, e)
        or e % heads
        or not all(ctx.shape(t)[-1] == e for t in (k, v))
    ):
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


register_many(["aten._native_multi_head_attention"], native_multi_head_attention)
