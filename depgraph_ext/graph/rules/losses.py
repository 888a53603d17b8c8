"""Losses: a prediction compared with targets position by position, where a class index picks a
position along the class dim, reduced to a scalar (or one value per sample). A loss ends the
model's computation, as an output does, and its dims are kept as an output's are: every dim of
what it reads and makes is blocked (by name, rather than as an op without a rule; a model
given ``labels`` prunes as without them)."""

from __future__ import annotations

import torch

from ..trace import Node
from .context import RuleContext
from .registry import register_many


def loss(ctx: RuleContext, node: Node) -> None:
    """Every dim of the predictions, targets, class weights and results is kept."""
    for v in dict.fromkeys(node.inputs + node.outputs):
        ctx.block_value(v)


# The loss ops a forward runs on the CPU (cross_entropy is log_softmax then nll_loss_forward,
# F.l1_loss, kl_div and the margin losses decompose into element-wise ops and reductions).
LOSSES = [
    f"aten.{name}"
    for name in """
    nll_loss_forward nll_loss2d_forward nll_loss nll_loss2d nll_loss_nd cross_entropy_loss
    mse_loss l1_loss smooth_l1_loss huber_loss binary_cross_entropy
    binary_cross_entropy_with_logits soft_margin_loss multilabel_margin_loss_forward
    multilabel_margin_loss multi_margin_loss _ctc_loss ctc_loss kl_div
    """.split()
    if hasattr(torch.ops.aten, name)
]
register_many(LOSSES, loss)
