"""Ops of object detectors that libraries register (torchvision's, by name: importing it is
not needed). NMS reads the data (indexing.py's ``read_as_data``); RoI pooling keeps channels.
"""

from __future__ import annotations

from ..trace import Node
from .context import RuleContext, RuleError
from .registry import register_many


def roi_pool(ctx: RuleContext, node: Node) -> None:
    """roi_align/roi_pool(input [N, C, H, W], rois [K, 5], ...) -> [K, C, ph, pw]: each output
    channel is pooled from its own input channel alone (bilinear samples or a maximum, over
    positions the boxes give), so channels are one dim and a zeroed channel pools to zeros;
    the result's boxes are the rois' rows; positions and the box coordinates stay."""
    src, rois = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    if len(ctx.shape(src)) != 4 or len(ctx.shape(rois)) != 2 or len(ctx.shape(out)) != 4:
        raise RuleError("RoI pooling of other than [N, C, H, W] features and [K, 5] boxes")
    ss, sr, so = ctx.slots(src), ctx.slots(rois), ctx.slots(out)
    ctx.equal(ss[1], so[1])
    if ctx.size(sr[0]) != 1:
        ctx.equal(sr[0], so[0])
    for s in (ss[0], ss[2], ss[3], sr[1]):
        ctx.block(s)


register_many(["torchvision.roi_align", "torchvision.roi_pool"], roi_pool)
