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


# cuDNN's and MIOpen's recurrent modes, and the gates of each.
_GATES = {0: 1, 1: 1, 2: 4, 3: 3}  # RNN_RELU, RNN_TANH, LSTM, GRU


def rnn_stack(ctx: RuleContext, node: Node) -> None:
    """A whole recurrent stack in one op (``nn.LSTM``/``GRU``/``RNN`` on a GPU: cuDNN or MIOpen),
    coupled as the CPU's layers are: every layer and direction holds ``stride`` weights
    ``[w_ih, w_hh, (b_ih, b_hh), (w_hr)]`` whose rows are [gate, hidden] (the gate factor
    blocked); the hidden dim is the last dim of the initial cell state (of hx without
    projections), one for every layer and direction, as the module has one hidden_size; the
    projected dim, with projections, the last dim of hx. A layer's input after the first, and
    the output, are [direction, output size]. The flat weight buffer, when given, is derived
    from the weights (free)."""
    x = arg(node, "input")
    weights = list(arg(node, "weight"))
    stride = int(arg(node, "weight_stride0"))
    gates = _GATES.get(int(arg(node, "mode")))
    hidden, proj = int(arg(node, "hidden_size")), int(arg(node, "proj_size", 0) or 0)
    layers = int(arg(node, "num_layers"))
    directions = 2 if arg(node, "bidirectional") else 1
    hx, cx = arg(node, "hx"), arg(node, "cx")
    if (
        gates is None
        or stride not in (2, 3, 4, 5)
        or (stride in (3, 5)) != bool(proj)
        or len(weights) != layers * directions * stride
        or not all(isinstance(w, Ref) for w in weights)
    ):
        raise RuleError("an unexpected recurrent weight layout")
    if proj and not isinstance(cx, Ref):
        raise RuleError("projections without a cell state")
    h = ctx.slots(cx)[-1] if proj else ctx.slots(hx)[-1]
    out = ctx.slots(hx)[-1]  # the projected size, or the hidden one
    if ctx.size(h) != hidden or ctx.size(out) != (proj or hidden):
        raise RuleError("state sizes that are not the hidden/projected sizes")

    def per_direction(slot: int) -> None:
        """``slot`` is [direction, output size]."""
        if directions == 1:
            ctx.equal(slot, out)
        else:
            direction = ctx.new_slot(directions)
            ctx.block(direction)
            ctx.reshape([slot], [direction, out])

    sx = ctx.slots(x)
    for block in range(layers * directions):
        w_ih, w_hh, *rest = weights[block * stride : (block + 1) * stride]
        biases = rest[:2] if stride in (4, 5) else []
        gate = ctx.new_slot(gates)
        ctx.block(gate)
        for rows in [ctx.slots(w_ih)[0], ctx.slots(w_hh)[0]] + [ctx.slots(b)[0] for b in biases]:
            ctx.reshape([rows], [gate, h])
        ctx.equal(ctx.slots(w_hh)[1], out)
        if proj:
            w_hr = ctx.slots(rest[-1])
            ctx.equal(w_hr[0], out)
            ctx.equal(w_hr[1], h)
        if block < directions:
            ctx.equal(ctx.slots(w_ih)[1], sx[-1])
        else:
            per_direction(ctx.slots(w_ih)[1])
    so = ctx.slots(node.outputs[0])
    per_direction(so[-1])
    for i in range(len(sx) - 1):  # time and batch, or packed steps
        ctx.equal(sx[i], so[i])
    states = [(hx, out), (node.outputs[1], out)]
    if isinstance(cx, Ref):
        states += [(cx, h), (node.outputs[2], h)]
    batch = None
    for state, last in states:
        ss = ctx.slots(state)
        ctx.block(ss[0])  # layers x directions
        ctx.equal(ss[-1], last)
        if batch is None:
            batch = ss[1]
        else:
            ctx.equal(ss[1], batch)
    ctx.set_attr_from_slot(node.module, "hidden_size", h)
    if proj:
        ctx.set_attr_from_slot(node.module, "proj_size", out)


register_many(["aten._cudnn_rnn", "aten.miopen_rnn"], rnn_stack)


def pack_padded_sequence(ctx: RuleContext, node: Node) -> None:
    """pack_padded_sequence: [T, B, *F] (or [B, T, *F]) -> data [N, *F], the steps of every
    sequence one after the other (N from the lengths: the data's), and the batch sizes per
    step: the feature dims are equal."""
    x, data = node.inputs[0], node.outputs[0]
    sx, sd = ctx.slots(x), ctx.slots(data)
    for a, b in zip(sx[2:], sd[1:]):
        ctx.equal(a, b)


register_many(["aten._pack_padded_sequence"], pack_padded_sequence)
