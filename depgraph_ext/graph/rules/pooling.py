"""Pooling, resampling and padding by position: leading dims equal, the trailing spatial
dims fixed by the call."""

from __future__ import annotations

from ..trace import Node, Ref
from .context import RuleContext, arg
from .registry import Rule, register_many


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
    register_many(
        [
            f"aten.{n}{_k}d"
            for n in (
                "max_pool",
                "avg_pool",
                "adaptive_avg_pool",
                "_adaptive_avg_pool",
                "adaptive_max_pool",
                "lp_pool",
                "reflection_pad",
                "replication_pad",
                "upsample_nearest",
            )
        ]
        + [
            f"aten.max_pool{_k}d_with_indices",
            f"aten.upsample_bilinear{_k}d",
            f"aten.upsample_linear{_k}d",
            f"aten.upsample_bicubic{_k}d",
            f"aten._upsample_nearest_exact{_k}d",
            f"aten.upsample_trilinear{_k}d",
            f"aten._upsample_bilinear{_k}d_aa",  # (antialias=True)
            f"aten._upsample_bicubic{_k}d_aa",
        ],
        _spatial(_k),
    )


def _fractional(k: int) -> Rule:
    """fractional_max_pool{k}d(x [N, C, *S], ..., random_samples [N, C, k]): pooled as the
    others, with a sample per channel (and batch item) that the CPU kernel counts against the
    input's: the samples' channel dim is the input's (samples held as a module's tensor keep
    the channels; a meta kernel does not check the count, a plan's meta trace would not find
    it), their coordinates fixed."""
    spatial = _spatial(k)

    def rule(ctx: RuleContext, node: Node) -> None:
        spatial(ctx, node)
        samples = arg(node, "random_samples")
        if not isinstance(samples, Ref):
            return
        sx, ss = ctx.slots(node.inputs[0]), ctx.slots(samples)
        channel = len(sx) - k - 1
        if len(ss) != 3 or channel < 0:
            ctx.block_value(samples)
            return
        for a, b in ((ss[1], sx[channel]), (ss[0], sx[0] if channel else -1)):
            if b >= 0 and ctx.size(a) == ctx.size(b):
                ctx.equal(a, b)
            else:
                ctx.block(a)
        ctx.block(ss[2])

    return rule


for _k in (2, 3):
    register_many([f"aten.fractional_max_pool{_k}d"], _fractional(_k))


def grid_sampler(ctx: RuleContext, node: Node) -> None:
    """grid_sample: input [N, C, *S_in], grid [N, *S_out, k] -> [N, C, *S_out]. Each channel is
    sampled on its own (C is equal, and exact); the input positions are read where the grid
    points (blocked); the output positions are the grid's, its last dim the coordinates."""
    x, grid = node.inputs[0], node.inputs[1]
    sx, sg, so = ctx.slots(x), ctx.slots(grid), ctx.slots(node.outputs[0])
    ctx.equal(sx[0], so[0])
    ctx.equal(sg[0], so[0])
    ctx.equal(sx[1], so[1])
    for i, s in enumerate(sg[1:-1]):
        ctx.equal(s, so[2 + i])
    for s in sx[2:]:
        ctx.block(s)
    ctx.block(sg[-1])


register_many(
    [
        "aten.grid_sampler_2d",
        "aten.grid_sampler_3d",
        "aten.grid_sampler",
        "aten.cudnn_grid_sampler",
    ],
    grid_sampler,
)


def affine_grid(ctx: RuleContext, node: Node) -> None:
    """affine_grid: theta [N, k, k + 1] -> grid [N, *S, k]: one grid per matrix; the positions
    (from the size argument) and the coordinates are fixed."""
    theta, grid = node.inputs[0], node.outputs[0]
    ctx.equal(ctx.slots(theta)[0], ctx.slots(grid)[0])
    for s in ctx.slots(theta)[1:]:
        ctx.block(s)


register_many(["aten.affine_grid_generator"], affine_grid)


def max_unpool(ctx: RuleContext, node: Node) -> None:
    """max_unpool: x and its indices [N, C, *S] -> [N, C, *S_out]: each plane's values go to the
    positions its indices say (positions along that plane alone), so the leading dims are
    equal and the positions fixed."""
    x, indices, out = node.inputs[0], node.inputs[1], node.outputs[0]
    sx, si, so = ctx.slots(x), ctx.slots(indices), ctx.slots(out)
    k = 2 if node.packet == "aten.max_unpool2d" else 3
    for s in sx[len(sx) - k :] + si[len(si) - k :]:
        ctx.block(s)
    for i in range(len(sx) - k):
        ctx.equal(sx[i], si[i])
        ctx.equal(sx[i], so[i])


register_many(["aten.max_unpool2d", "aten.max_unpool3d"], max_unpool)


def unfold_patches(ctx: RuleContext, node: Node) -> None:
    """im2col (nn.Unfold): [N, C, H, W] -> [N, C k, L], each channel's k kernel positions in a
    block; col2im (nn.Fold), the other way, summing overlaps within a channel. Channels are
    equal through the blocks; kernel positions and locations fixed by the call."""
    folding = node.packet == "aten.col2im"
    planes, columns = (
        (node.outputs[0], node.inputs[0]) if folding else (node.inputs[0], node.outputs[0])
    )
    sp, sc = ctx.slots(planes), ctx.slots(columns)
    batched = len(sp) == 4
    if batched:
        ctx.equal(sp[0], sc[0])
    channels = sp[-3]
    kernel = ctx.new_slot(ctx.size(sc[-2]) // ctx.size(channels))
    piece = ctx.new_slot(ctx.size(channels))
    ctx.reshape([sc[-2]], [piece, kernel])
    ctx.equal(piece, channels)
    for s in (kernel, sc[-1], sp[-2], sp[-1]):
        ctx.block(s)


register_many(["aten.im2col", "aten.col2im"], unfold_patches)
