"""Element-wise ops (with broadcasting), creation ops and uniform fills."""

from __future__ import annotations

from ..trace import Node
from .context import RuleContext, arg, wrap_dim
from .registry import register_many


# -- identity and element-wise ------------------------------------------------------------------
def elementwise(ctx: RuleContext, node: Node) -> None:
    ctx.broadcast(node.inputs, node.outputs)


_ELEMENTWISE = """
abs acos acosh add addcdiv addcmul alias asin asinh atan atan2 atanh bitwise_and bitwise_not
bitwise_or bitwise_xor ceil clamp clamp_max clamp_min clone contiguous copy cos cosh detach div
elu eq erf erfc erfinv exp exp2 expm1 fill floor floor_divide fmod frac ge gelu gt hardsigmoid
hardswish hardtanh isinf isnan le leaky_relu lerp lift_fresh lift_fresh_copy log log10 log1p log2
log_sigmoid_forward logical_and logical_not logical_or logical_xor lt masked_fill maximum minimum
mish mul ne neg nan_to_num pow reciprocal relu relu6 remainder round rsqrt rsub selu sgn sigmoid
sign silu sin sinh softplus sqrt square sub tan tanh threshold trunc where xlogy zero
_to_copy to _to_dim_order_copy bernoulli uniform normal ones_like zeros_like empty_like full_like
rand_like randn_like positive celu glu_backward hardshrink softshrink gelu_ native_dropout dropout
feature_dropout alpha_dropout rrelu_with_noise rrelu_with_noise_ polar complex real imag conj
_conj conj_physical angle
""".split()
register_many([f"aten.{n}" for n in _ELEMENTWISE], elementwise)

# The gradients of element-wise activations, which a forward that differentiates itself runs
# (forces as an energy's gradient, a physics-informed loss): grad_output times the
# activation's derivative at its input (or result), index by index.
ACTIVATION_BACKWARDS = """
tanh_backward sigmoid_backward threshold_backward silu_backward gelu_backward softplus_backward
elu_backward leaky_relu_backward hardtanh_backward hardswish_backward hardsigmoid_backward
mish_backward log_sigmoid_backward softshrink_backward hardshrink_backward logit_backward
rrelu_with_noise_backward
""".split()
register_many([f"aten.{n}" for n in ACTIVATION_BACKWARDS], elementwise)


# -- creation ops: their output sizes are fixed by the call --------------------------------------
def creation(ctx: RuleContext, node: Node) -> None:
    pass  # every output dim is untouched, hence blocked


_CREATION = """
arange rand randn randint randperm scalar_tensor linspace logspace eye tensor _local_scalar_dense
""".split()
register_many([f"aten.{n}" for n in _CREATION], creation)


def uniform_fill(ctx: RuleContext, node: Node) -> None:
    """zeros/ones/full/empty: every index holds the same value, so any dim may shrink with what
    it meets (the size comes from the caller, e.g. a module attribute; if the code fixes it,
    plan validation finds that and the dim is kept)."""
    for out in node.outputs:
        ctx.touched.update(ctx.slots(out))
    for v in node.inputs:  # new_zeros(x, ...): x lends its dtype and device, not its indices
        ctx.touched.update(ctx.slots(v))


register_many(
    [
        f"aten.{n}"
        for n in "empty empty_strided zeros ones full new_empty new_zeros "
        "new_ones new_full new_empty_strided".split()
    ],
    uniform_fill,
)


def glu(ctx: RuleContext, node: Node) -> None:
    """glu(x, dim): the first half of ``dim`` times the sigmoid of the second: ``dim`` is
    [2, n] (the halves fixed by the call), its n the output's; the other dims are equal."""
    x, out = node.inputs[0], node.outputs[0]
    sx, so = ctx.slots(x), ctx.slots(out)
    dim = wrap_dim(arg(node, "dim", -1), len(sx))
    halves, units = ctx.new_slot(2), ctx.new_slot(ctx.size(so[dim]))
    ctx.reshape([sx[dim]], [halves, units])
    ctx.block(halves)
    ctx.equal(units, so[dim])
    for i in range(len(sx)):
        if i != dim:
            ctx.equal(sx[i], so[i])


register_many(["aten.glu"], glu)
