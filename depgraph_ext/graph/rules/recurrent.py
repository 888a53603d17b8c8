"""Fused recurrent layers."""

from __future__ import annotations

from ..trace import Node, Ref
from .context import RuleContext, RuleError, arg
from .registry import register_many


# -- recurrent layers ----------------------------------------------------------------------------
def rnn_layer(ctx: RuleContext, node: Node) -> None:
    """One fused LSTM layer (one direction): gates are [4, hidden] rows of w_ih, w_hh and both
    biases (the gate factor is blocked, so a unit is one hidden neuron in every gate); w_hh's
    columns, h/c in and out, and the output's last dim are that hidden dim; w_ih's columns are the
    input's last dim."""
    x = arg(node, "input")
    w_ih, w_hh = arg(node, "weight0"), arg(node, "weight1")
    biases = [b for b in (arg(node, "weight2"), arg(node, "weight3")) if isinstance(b, Ref)]
    hidden = int(arg(node, "hidden_size"))
    if ctx.shape(w_ih)[0] != 4 * hidden or ctx.shape(w_hh) != (4 * hidden, hidden):
        raise RuleError("an LSTM layer with projections or an unexpected gate layout")
    gate = ctx.new_slot(4)
    ctx.block(gate)
    h = ctx.slots(w_hh)[1]
    for rows in [ctx.slots(w_ih)[0], ctx.slots(w_hh)[0]] + [ctx.slots(b)[0] for b in biases]:
        ctx.reshape([rows], [gate, h])
    sx = ctx.slots(x)
    ctx.equal(ctx.slots(w_ih)[1], sx[-1])
    for state in (arg(node, "hx_"), arg(node, "cx_"), *node.outputs[:3]):
        ss = ctx.slots(state)
        if ss and ctx.size(ss[-1]) == hidden:
            ctx.equal(ss[-1], h)
    out = ctx.slots(node.outputs[0])
    for i in range(len(sx) - 1):
        ctx.equal(sx[i], out[i])
    ctx.set_attr_from_slot(node.module, "hidden_size", h)


register_many(["aten.mkldnn_rnn_layer"], rnn_layer)
