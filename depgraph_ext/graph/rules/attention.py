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
    ctx.attention.append(AttentionCall(node.module, sq[-3], sk[-3], sq[-1], sv[-1]))


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
