"""Whether a value is zero wherever a group's units are removed (zeroed).

A sum over units is exact only where the removed units add nothing: their values must be zero
once the group's slices are zeroed. Past a linear layer or a convolution they are (its weight
rows and bias entries are zeroed), and ops that map zero to zero keep them so (ReLU, SiLU,
GELU, tanh, products, views ...); an op that does not (exp, sigmoid, cos, adding a constant,
``1 - x``) makes the removed units' values non-zero, and a sum over them, a norm, or a matrix
product of two such values over them then changes with the units it drops. Unknown ops count as
making non-zero values: a sum after them is declared function-changing, never claimed exact.
"""

from __future__ import annotations

import itertools

from ..trace import Node, OpGraph, Ref
from .context import arg
from .elementwise import ACTIVATION_BACKWARDS
from .linear import CONVOLUTIONS

# The output is zero wherever the first tensor argument is (unary element-wise ops with f(0)
# = 0, copies, views, moves and selections of positions, pools and resampling of zeros).
_FOLLOWS_FIRST = frozenset(
    f"aten.{name}"
    for name in """
    relu relu_ gelu gelu_ silu silu_ tanh tanh_ sin sin_ neg neg_ abs abs_ sqrt sqrt_ square
    hardswish hardswish_ hardtanh hardtanh_ relu6 leaky_relu leaky_relu_ elu elu_ selu selu_
    rrelu_with_noise rrelu_with_noise_
    celu celu_ mish mish_ sign sgn erf erf_ asin atan sinh tan asinh atanh trunc round floor ceil
    frac clone contiguous _to_copy to copy copy_ alias detach lift_fresh lift_fresh_copy view
    _unsafe_view reshape permute transpose t expand expand_as slice select unsqueeze squeeze
    flatten unflatten split split_with_sizes chunk unbind narrow as_strided index_select gather
    unfold unfold_copy _fft_r2c _fft_c2c _fft_c2r
    index _unsafe_index take
    repeat roll flip pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle
    constant_pad_nd im2col col2im max_unpool2d max_unpool3d dropout
    native_dropout feature_dropout sum nansum amax amin max_pool1d max_pool2d
    max_pool3d max_pool2d_with_indices max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d _adaptive_avg_pool2d
    _adaptive_avg_pool3d adaptive_max_pool2d adaptive_max_pool3d mean upsample_nearest1d
    upsample_nearest2d upsample_nearest3d upsample_bilinear2d upsample_linear1d
    upsample_bicubic2d upsample_trilinear3d _upsample_nearest_exact2d _upsample_bilinear2d_aa
    _upsample_bicubic2d_aa squeeze_copy
    unsqueeze_copy view_copy permute_copy transpose_copy t_copy expand_copy slice_copy
    select_copy split_copy unbind_copy cumsum div div_ true_divide view_as_complex view_as_real
    view_as_complex_copy view_as_real_copy
    """.split()
) | frozenset(f"aten.{name}" for name in ACTIVATION_BACKWARDS)  # (grad_output x a derivative)
# Attention: its output is the attention weights times the values, zero wherever the values
# are (a removed head's or value channel's).
_ATTENTION = frozenset(
    f"aten.{name}"
    for name in """
    scaled_dot_product_attention _scaled_dot_product_attention_math
    _scaled_dot_product_flash_attention _scaled_dot_product_flash_attention_for_cpu
    _scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention
    """.split()
)
# Zero wherever any one tensor argument is (a product).
_PRODUCTS = frozenset(
    {
        "aten.mul",
        "aten.mul_",
        "aten.mm",
        "aten.bmm",
        "aten.matmul",
        "aten.mv",
        "aten.dot",
        "aten._trilinear",
        "aten.linalg_cross",
    }
)
# Zero only wherever every tensor argument is, and every number added is zero (a sum).
_SUMS = frozenset({"aten.add", "aten.add_", "aten.sub", "aten.sub_", "aten.cat", "aten.stack"})
# A tensor made from nothing but its arguments' numbers: zero when they are.
_FILLED_WITH_ZERO = frozenset({"aten.zeros", "aten.zeros_like", "aten.new_zeros"})
_NORMS = frozenset(
    {
        "aten.native_batch_norm",
        "aten._native_batch_norm_legit",
        "aten._native_batch_norm_legit_no_training",
        "aten._native_batch_norm_legit_functional",
        "aten.native_layer_norm",
        "aten.native_group_norm",
        "aten._fused_rms_norm",
        "aten.batch_norm",
        "aten.layer_norm",
        "aten.group_norm",
    }
)


class ZeroTracker:
    """Per value of a graph: may it hold non-zero values at removed units? (memoised).
    Parameters, buffers and the model's inputs are zero there (the units' slices are zeroed;
    an input's dims are never units). A value written in place counts every op that wrote it.
    :meth:`culprit` names the op that first makes a value non-zero there, for messages."""

    def __init__(self, graph: OpGraph) -> None:
        self.graph = graph
        self._memo: dict[int, Node | None] = {}
        self._writers: dict[int, list[Node]] | None = None

    def culprit(self, v: int) -> Node | None:
        """The op that makes ``v`` non-zero at removed units, or None where it is zero."""
        if v in self._memo:
            return self._memo[v]
        # Every value ``v`` depends on, found without recursion (a residual stream is a chain
        # as long as the model), then settled in the order the ops ran: each op's inputs are
        # known before it is, so the calls below stay shallow however deep the chain.
        ancestors, stack, memo = {}, [v], self._memo
        while stack:
            x = stack.pop()
            if x in self._memo or x in ancestors:
                continue
            writers = self._writers_of(x)
            ancestors[x] = min((n.index for n in writers), default=-1)
            for n in writers:  # (the inputs not settled yet, in one C-level pass: a stack
                # of a decoder's growing list of steps reads thousands of settled ones)
                stack.extend(itertools.filterfalse(memo.__contains__, n.inputs))
        for x in sorted(ancestors, key=ancestors.__getitem__):
            self._memo[x] = None  # (a cycle through an in-place op: the other writers decide)
            self._memo[x] = next(
                (c for n in self._writers_of(x) if (c := self._made_nonzero(n, x)) is not None),
                None,
            )
        return self._memo[v]

    def _writers_of(self, v: int) -> list[Node]:
        if self._writers is None:
            self._writers = {}
            for node in self.graph.nodes:
                for out in node.outputs:
                    self._writers.setdefault(out, []).append(node)
        return self._writers.get(v, [])

    def _made_nonzero(self, node: Node, v: int) -> Node | None:
        """Whether ``node``'s write of ``v`` leaves non-zero values at removed units: the op
        that makes them (``node`` itself, or an op before it), or None."""
        packet = node.packet
        tensors = [i for i in dict.fromkeys(node.inputs) if i != v]
        if packet in _FOLLOWS_FIRST:
            first = node.inputs[0] if node.inputs else None
            return None if first is None or first == v else self.culprit(first)
        if packet in _PRODUCTS:
            culprits = [self.culprit(i) for i in tensors]
            return culprits[0] if culprits and all(c is not None for c in culprits) else None
        if packet in _SUMS:
            if _numbers(node, exclude=("alpha", "dim")):
                return node  # a number added to every element
            return next((c for c in map(self.culprit, tensors) if c is not None), None)
        if packet in _FILLED_WITH_ZERO:
            return None
        if packet in ("aten.clamp", "aten.clamp_", "aten.clip", "aten.clip_"):
            low, high = arg(node, "min"), arg(node, "max")
            if isinstance(low, Ref) or isinstance(high, Ref):
                return node
            if (low is not None and low > 0) or (high is not None and high < 0):
                return node  # zero is clamped to a bound that is not zero
            return self._of(node.inputs[0], v)
        if packet in ("aten.pow", "aten.pow_"):
            exponent = arg(node, "exponent")
            if isinstance(exponent, (int, float)) and not isinstance(exponent, bool):
                return self._of(node.inputs[0], v) if exponent > 0 else node
            return node
        if packet in ("aten.where", "aten.where_"):
            if _numbers(node, exclude=()):
                return node
            values = [x for x in (arg(node, "self"), arg(node, "other")) if isinstance(x, Ref)]
            return next((c for c in (self._of(x.value, v) for x in values) if c), None)
        if packet in (
            "aten.addmm",
            "aten.baddbmm",
            "aten.addmv",
            "aten.addbmm",
            "aten._sparse_addmm",
            "aten.linear",
        ):
            if packet == "aten.linear":
                a, b, bias = arg(node, "input"), arg(node, "weight"), arg(node, "bias")
            else:
                bias, a, b = (
                    arg(node, "self"),
                    arg(node, node.op._schema.arguments[1].name),
                    arg(node, node.op._schema.arguments[2].name),
                )
            return self._affine(node, a, b, bias, v)
        if packet in CONVOLUTIONS:
            x, w, bias = (
                arg(node, "input", arg(node, "self")),
                arg(node, "weight"),
                arg(node, "bias"),
            )
            return self._affine(node, x, w, bias, v)
        if packet in _ATTENTION:
            value = arg(node, "value")
            return self._of(value.value, v) if isinstance(value, Ref) else node
        if packet in ("aten.embedding", "aten._embedding_bag", "aten._embedding_bag_forward_only"):
            return self.culprit(node.inputs[0])  # (rows looked up, summed, averaged or maxed)
        if packet in _NORMS:
            return self._norm(node)
        if packet == "aten.linalg_solve_triangular":  # X = A^-1 B: zero where B's columns are
            b = arg(node, "B")
            return self._of(b.value, v) if isinstance(b, Ref) else node
        if packet in ("aten.masked_scatter", "aten.masked_scatter_"):  # (x's, or source's)
            values = [x for x in (arg(node, "self"), arg(node, "source")) if isinstance(x, Ref)]
            return next((c for c in (self._of(x.value, v) for x in values) if c), None)
        if packet == "aten.masked_fill" or packet == "aten.masked_fill_":
            if _numbers(node, exclude=()):
                return node
            return self.culprit(node.inputs[0]) if node.inputs[0] != v else None
        return node  # an op this does not know: its values count as non-zero

    def _of(self, x: int, v: int) -> Node | None:
        """The culprit of input ``x`` of a write of ``v`` (``v`` itself: the other writers)."""
        return None if x == v else self.culprit(x)

    def _affine(self, node: Node, a, b, bias, v: int) -> Node | None:
        """``a @ b + bias`` (or a convolution): zero where the bias is and either factor is."""
        if isinstance(bias, Ref) and self._of(bias.value, v) is not None:
            return self._of(bias.value, v)
        if not (isinstance(a, Ref) and isinstance(b, Ref)):
            return node
        ca, cb = self._of(a.value, v), self._of(b.value, v)
        return ca if ca is not None and cb is not None else None

    def _norm(self, node: Node) -> Node | None:
        """A norm's output is ``x_hat * weight + bias``: zero where weight and bias are (or,
        without a weight, where x is: its mean there is zero too)."""
        weight, bias = arg(node, "weight"), arg(node, "bias")
        if isinstance(bias, Ref) and self.culprit(bias.value) is not None:
            return self.culprit(bias.value)
        if isinstance(weight, Ref):
            return None
        return self.culprit(node.inputs[0])


def _numbers(node: Node, exclude: tuple[str, ...]) -> bool:
    """Whether ``node`` has a non-zero number among its arguments (other than ``exclude``)."""
    names = _NAMES.get(node.op)
    if names is None:
        names = _NAMES[node.op] = [a.name for a in node.op._schema.arguments]
    values = list(zip(names, node.args)) + list(node.kwargs.items())
    for name, value in values:
        if name in exclude or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and value != 0:
            return True
    return False


_NAMES: dict = {}  # op -> its schema's argument names
