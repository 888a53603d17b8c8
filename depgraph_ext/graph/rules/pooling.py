"""Pooling, resampling and padding by position: leading dims equal, the trailing spatial
dims fixed by the call."""

from __future__ import annotations

from ..trace import Node
from .context import RuleContext
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
                "fractional_max_pool",
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
        ],
        _spatial(_k),
    )
