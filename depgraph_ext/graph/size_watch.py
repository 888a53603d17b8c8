"""What a model's Python code learns of sizes and values while it is traced.

A plan's pruned shapes are traced again before anything changes because the model's code may
fix a size the rules treat as prunable (``x.view(b, 2, -1)``, ``torch.zeros(10)``) or branch on
one. The code can only do that with a size it read (``x.shape``, ``x.size(1)``, ``len(x)``),
an integer it passed to an op (a literal, an attribute, a computed size), or a value it read
(``x.item()``, ``bool(x)``). :class:`SizeWatch`, a torch function mode over the model's forward,
notes each: the sizes read, dim by dim (``x.shape`` is a :class:`WatchedShape` there); the
integers of views, reshapes, expands and new tensors by the position of the size they give,
and the dims indexed or sliced by integers (:class:`ShapedCall`); the ops produced by other
calls with integers that may be sizes; and whether any value was read. The integers the code
computed from module attributes and sizes are :class:`SizeInt` s, which keep how they were
computed, so a plan's view sizes can be computed again with its sizes and attributes. A plan
that prunes no size read, prunes no tensor of those other ops and whose views' sizes so
computed are the planned ones is shaped exactly by the rules (every other op's result
follows from its inputs' shapes), so it needs no second trace; views whose sizes are not are
failures known without one (:func:`depgraph_ext.pruning.validate.untraced_failures`).

Integers known not to be sizes of anything a rule treats as prunable are not noted: dims
(``sum(x, 1)``, ``cat(xs, 1)``), spatial parameters (a convolution's stride and padding, a
pool's kernel, an interpolation's size) and counts the rules keep aligned (``chunk``,
``topk``'s k). A convolution's ``groups`` is one only when it is 1.
"""

from __future__ import annotations

import functools
import itertools
import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FunctionType

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

Tensor = torch.Tensor

_SIZE_READS = frozenset(
    {
        Tensor.size,
        Tensor.shape.__get__,
        Tensor.numel,
        Tensor.nelement,
        Tensor.__len__,
        Tensor.__iter__,
        Tensor.stride,
        Tensor.is_contiguous,
        Tensor.unbind,
        torch.numel,
        torch.unbind,
    }
)
_VALUE_READS = frozenset({Tensor.numpy, Tensor.__array__, Tensor.tolist, Tensor.item})
# Functions returning Python values that depend neither on sizes nor on data.
_METADATA = frozenset(
    {
        Tensor.dim,
        Tensor.ndim.__get__,
        Tensor.ndimension,
        Tensor.dtype.__get__,
        Tensor.device.__get__,
        Tensor.layout.__get__,
        Tensor.requires_grad.__get__,
        Tensor.is_leaf.__get__,
        Tensor.is_floating_point,
        Tensor.is_complex,
        Tensor.is_cuda.__get__,
        Tensor.is_cpu.__get__,
        Tensor.is_meta.__get__,
        Tensor.is_sparse.__get__,
        Tensor.is_quantized.__get__,
        Tensor.element_size,
        Tensor.get_device,
        Tensor.data_ptr,
        Tensor.__hash__,
        Tensor.grad_fn.__get__,
        Tensor.type,
        torch.is_tensor,
        torch.is_floating_point,
        torch.is_complex,
        torch.is_grad_enabled,
        torch.is_autocast_enabled,
    }
)
# Functions whose ATen decomposition depends on which sizes are 1 (einsum squeezes and
# permutes them otherwise): another decomposition where a plan takes a size down to 1.
_DECOMPOSED_BY_ONES = frozenset({torch.einsum})
# Every integer argument is a dim, a spatial parameter, or a count the rules keep aligned.
_INTS_NOT_SIZES = frozenset(
    {
        torch.flatten,
        Tensor.flatten,
        torch.transpose,
        Tensor.transpose,
        torch.swapaxes,
        Tensor.swapaxes,
        torch.swapdims,
        Tensor.swapdims,
        torch.movedim,
        Tensor.movedim,
        torch.permute,
        Tensor.permute,
        torch.squeeze,
        Tensor.squeeze,
        torch.unsqueeze,
        Tensor.unsqueeze,
        torch.cat,
        torch.concat,
        torch.concatenate,
        torch.stack,
        torch.sum,
        Tensor.sum,
        torch.mean,
        Tensor.mean,
        torch.amax,
        Tensor.amax,
        torch.amin,
        Tensor.amin,
        torch.max,
        Tensor.max,
        torch.min,
        Tensor.min,
        torch.argmax,
        Tensor.argmax,
        torch.argmin,
        Tensor.argmin,
        torch.softmax,
        Tensor.softmax,
        torch.log_softmax,
        Tensor.log_softmax,
        F.softmax,
        F.log_softmax,
        torch.cumsum,
        Tensor.cumsum,
        torch.norm,
        Tensor.norm,
        torch.linalg.vector_norm,
        F.normalize,
        torch.chunk,
        Tensor.chunk,
        torch.topk,
        Tensor.topk,
        Tensor.contiguous,
        F.max_pool1d,
        F.max_pool2d,
        F.max_pool3d,
        F.avg_pool1d,
        F.avg_pool2d,
        F.avg_pool3d,
        F.lp_pool1d,
        F.lp_pool2d,
        F.adaptive_avg_pool1d,
        F.adaptive_avg_pool2d,
        F.adaptive_avg_pool3d,
        F.adaptive_max_pool1d,
        F.adaptive_max_pool2d,
        F.adaptive_max_pool3d,
        F.interpolate,
        F.upsample,
        F.pad,
        F.dropout,
        F.dropout1d,
        F.dropout2d,
        F.dropout3d,
    }
)
# Elementwise arithmetic: an integer is a scalar operand, never a size.
_INTS_NOT_SIZES |= frozenset(
    {
        getattr(Tensor, f"__{prefix}{name}__")
        for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or")
        for prefix in ("", "r", "i")
        if hasattr(Tensor, f"__{prefix}{name}__")
    }
    | {
        getattr(Tensor, f"__{name}__")
        for name in ("eq", "ne", "lt", "le", "gt", "ge", "neg", "abs", "invert")
    }
    | {
        f
        for name in ("add", "sub", "mul", "div", "pow", "clamp", "clamp_min", "clamp_max",
                     "fmod", "remainder", "where", "eq", "ne", "lt", "le", "gt", "ge")
        for f in (getattr(torch, name, None), getattr(Tensor, name, None))
        if f is not None
    }
)  # fmt: skip
# Python functions torch hands a function mode whole (torch.nn.functional's, torch.functional's,
# Tensor's written in Python) run their bodies with the mode off, so a size read there is not
# seen where it is read (``F.multilabel_soft_margin_loss`` divides by its class count). Such
# a call reads every size of every tensor it is given, but for these, whose bodies read no
# size (or only the ones listed, to check and raise, of dims their ops' rules never prune:
# spatial sizes, an embedding's rows) - function -> the reads its source may hold
# (tests/test_numbers_from_sizes.py checks the source of the torch installed).
BODIES_READING_NO_PRUNED_SIZE: dict = {
    F.dropout: (),
    F.dropout1d: ("len(",),  # (the rank of a 1-D input, checked)
    F.dropout2d: ("len(",),
    F.dropout3d: ("len(",),
    F.alpha_dropout: (),
    F.feature_alpha_dropout: (),
    F.layer_norm: (),
    F.rms_norm: (),
    F.group_norm: (".size(", "_verify_batch_size"),  # (checks there is more than one value)
    F.batch_norm: (".size(", "_verify_batch_size"),
    F.instance_norm: ("_verify_spatial_size", ".size("),
    F.normalize: (),
    F.embedding: (".size(",),  # (the padding index against the rows, which are data's)
    F.embedding_bag: (".size(", ".shape", ".numel("),  # (of the indices and their weights)
    F.softmax: (),
    F.log_softmax: (),
    F.softmin: (),
    F.relu: (),
    F.relu6: (),
    F.elu: (),
    F.selu: (),
    F.celu: (),
    F.leaky_relu: (),
    F.hardtanh: (),
    F.hardswish: (),
    F.hardsigmoid: (),
    F.silu: (),
    F.mish: (),
    F.glu: (),
    F.threshold: (),
    F.tanhshrink: (),
    F.softsign: (),
    F.sigmoid: (),
    F.tanh: (),
    F.pad: (),
    F.interpolate: (".size(", ".shape", "len("),  # (spatial sizes, for the output size)
    F.adaptive_avg_pool2d: (".size(", "_list_with_default"),  # (spatial sizes)
    F.adaptive_avg_pool3d: (".size(", "_list_with_default"),
    F.unfold: (),
    F.fold: (),
    F.grid_sample: (),
    torch.functional.einsum: ("len(",),  # (of its operands)
    torch.functional.split: (),
    torch.functional.meshgrid: (),
    Tensor.split: (),
    Tensor.norm: (),
    Tensor.unique: (),
    Tensor.__rsub__: (),
    Tensor.__rdiv__: (),
    Tensor.__rpow__: (),
    Tensor.__floordiv__: (),
    Tensor.__rfloordiv__: (),
    Tensor.__contains__: (),
    Tensor.__format__: (),
    Tensor.__reversed__: (),
    Tensor.unflatten: (),
    Tensor.unique_consecutive: (),
    Tensor.register_hook: (),
}
for _name in ("__pow__", "__ipow__", "__rmod__", "__rtruediv__", "__rmatmul__", "__rlshift__",
              "__rrshift__"):  # fmt: skip
    # (torch's wrappers of the C operators that turn a TypeError into NotImplemented)
    _wrapper = getattr(Tensor, _name, None)
    if isinstance(_wrapper, FunctionType):
        BODIES_READING_NO_PRUNED_SIZE[_wrapper] = ()
for _name in ("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
              "adaptive_max_pool2d", "adaptive_max_pool3d"):  # fmt: skip
    # (boolean_dispatch: a wrapper choosing between two functions by return_indices)
    _dispatch = getattr(F, _name)
    BODIES_READING_NO_PRUNED_SIZE[_dispatch] = ("len(",)
    for _chosen in (getattr(F, f"_{_name}", None), getattr(F, f"{_name}_with_indices", None)):
        if isinstance(_chosen, FunctionType):
            BODIES_READING_NO_PRUNED_SIZE[_chosen] = (".size(", "_list_with_default", "len(")
del _name, _dispatch, _chosen, _wrapper


# Modules whose forward only passes the attributes a plan sets on to ops (where the trace saw
# what it passed): convolutions, linear layers, batch/layer/group norms, embeddings, PReLU.
PASS_THROUGH_FORWARDS = frozenset(
    cls.forward
    for cls in (
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose1d,
        nn.ConvTranspose2d,
        nn.ConvTranspose3d,
        nn.Linear,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.InstanceNorm1d,  # (its forward compares num_features with its input, nothing more)
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.Embedding,
        nn.PReLU,
    )
)


@functools.cache
def _names_in(cls: type) -> frozenset[str]:
    """The names a pass-through module's forward uses, and the methods it calls on its own
    (two levels: ``Conv2d.forward`` -> ``_conv_forward``): its own attributes among them."""
    names: set[str] = set()
    todo = [(cls.forward, 0)]
    while todo:
        function, depth = todo.pop()
        code = getattr(function, "__code__", None)
        if code is None:
            continue
        names.update(code.co_names)
        if depth < 2:
            todo += [
                (getattr(cls, n), depth + 1)
                for n in code.co_names
                if callable(getattr(cls, n, None))
            ]
    return frozenset(names)


def read_by_own_forward(module: nn.Module, attr: str) -> bool:
    """Whether ``attr`` of a pass-through module (a conv's ``groups``, a norm's
    ``normalized_shape``) is one its own forward passes to its op, which a plan sets as it
    prunes; any other read of such a module's attribute is the model's code's own
    (``x / self.fc.out_features``)."""
    return type(module).forward in PASS_THROUGH_FORWARDS and attr in _names_in(type(module))


_CONVOLUTIONS = frozenset(
    {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
)
_GROUPS_POSITION = 6  # conv*d(input, weight, bias, stride, padding, dilation, groups), and the
# transposed ones (input, weight, bias, stride, padding, output_padding, groups, ...)


@dataclass
class CodeSaw:
    """What the model's code saw and passed during one trace (value and node indices)."""

    sized_ops: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) of nodes
    # [start, stop) of the nodes of calls of _DECOMPOSED_BY_ONES
    decomposed_by_ones: list[tuple[int, int]] = field(default_factory=list)
    # Calls whose integers are a shape, or an index, by position (see ShapedCall)
    shaped_calls: list[ShapedCall] = field(default_factory=list)
    values_read: bool = False  # the code read some tensor's values
    # ... some of them otherwise than as one Python number of one decision the trace recorded
    # (``.item()``, ``bool(x)``: a trace of the pruned shapes replays it, decisions.py)
    unreplayed_reads: bool = False
    unknown_reads: bool = False  # it read sizes of a tensor the trace did not know
    # how many calls read values, and how many of them unreplayed (repeats.py counts on them)
    value_reads: int = field(default=0, compare=False)
    unreplayed_count: int = field(default=0, compare=False)
    # (value, dim) of every size the code read (dim None: all of the value's sizes) -> (how
    # many ops had run, the module running) when it was first read
    read_at: dict[tuple[int, int | None], tuple[int, str]] = field(default_factory=dict)
    # (how many ops have run so far, the module running): the trace's, while it runs; then None
    clock: Callable[[], tuple[int, str]] | None = field(default=None, repr=False, compare=False)
    live: bool = True  # SizeInts used after the trace read nothing
    # (module id, attribute, value, dim): an integer attribute of a module the code compared
    # with a size it read (``assert x.shape[1] == self.channels``): the attribute follows the
    # dim where a plan prunes it (its new value is checked by the plan's trace: both read)
    ties: list[tuple[int, str, int, int]] = field(default_factory=list)

    @property
    def size_reads(self):
        """(value, dim) of every size the code read."""
        return self.read_at.keys()

    def read(self, value: int, dim: int | None) -> None:
        """Note a size read (its first time too)."""
        key = (value, dim)
        if key not in self.read_at:
            self.read_at[key] = self.clock() if self.clock is not None else (0, "")


@dataclass(frozen=True)
class ShapedCall:
    """A call whose integers say, position by position, the sizes of its result (``kind``
    "view": a view or reshape, -1 the one size inferred; "expand": -1 a size kept; "new": a
    new tensor's sizes; "trailing": the last sizes of its input, a layer norm's
    ``normalized_shape``) or how each dim of its input is indexed ("index": ``x[..., :n]``,
    ``ints`` holding per input dim whether it is sliced or indexed). ``value``: the result
    (the input, for "index"), or None where the trace does not know it; ``source``: the
    input of a view or expand. A size is a :class:`SizeInt` where the code computed it from
    sizes it read and attributes of modules (how it did, to be computed again with a plan's
    sizes: :func:`evaluate`)."""

    kind: str
    ints: tuple
    value: int | None
    source: int | None = None


class SizeLeaf:
    """A size the code read: dim ``dim`` of traced value ``value`` (noted as read in ``saw``
    when the code uses it in a way that is not followed)."""

    __slots__ = ("saw", "value", "dim", "uses")

    def __init__(self, saw: CodeSaw, value: int, dim: int) -> None:
        self.saw, self.value, self.dim = saw, value, dim
        self.uses = 0  # uses not followed (taking it from the shape is the first)

    def escape(self) -> None:
        if self.saw.live:  # (only while its trace runs)
            self.uses += 1
            self.saw.read(self.value, self.dim)

    @property
    def used_otherwise(self) -> bool:
        """Whether the code used it otherwise than in followed arithmetic after taking it."""
        return self.uses > 1


class AttributeLeaf:
    """An integer attribute of a module the code read, or an integer of a tuple attribute
    (noted in ``reads``, the attribute reads of the trace, when the code uses it in a way that
    is not followed)."""

    __slots__ = ("reads", "module", "name", "value", "live", "index", "uses")

    def __init__(
        self, reads: set, module: int, name: str, value: int, live, index: int | None = None
    ) -> None:
        self.reads, self.module, self.name, self.value, self.live = reads, module, name, value, live
        self.index = index  # (the position in a tuple of integers: ``normalized_shape``)
        self.uses = 0  # uses not followed

    def escape(self) -> None:
        if self.live():
            self.uses += 1
            self.reads.add((self.module, self.name))

    @property
    def used_otherwise(self) -> bool:
        """Whether the code used it otherwise than in followed arithmetic."""
        return self.uses > 0


class ConfigLeaf:
    """An integer field of the model's config the code read (``name``: the field, an alias
    under its field's name). Every read of a field is noted as read all the same (the plan
    keeps such fields as they are), so this leaf only lets a size the code computes from one
    be computed again: ``torch.zeros(b, config.hidden_size)`` that a plan pruning that width
    fails is known without a trace."""

    __slots__ = ("name", "value", "live", "uses")

    def __init__(self, name: str, value: int, live) -> None:
        self.name, self.value, self.live = name, value, live
        self.uses = 0  # uses not followed

    def escape(self) -> None:
        if self.live():
            self.uses += 1

    @property
    def used_otherwise(self) -> bool:
        """Whether the code used it otherwise than in followed arithmetic."""
        return self.uses > 0


# Integer arithmetic followed through SizeInt (what size computations use); any other use
# of a SizeInt reads every size and attribute it came from.
_FOLLOWED = {
    "__add__": lambda a, b: a + b,
    "__sub__": lambda a, b: a - b,
    "__mul__": lambda a, b: a * b,
    "__floordiv__": lambda a, b: a // b,
    "__mod__": lambda a, b: a % b,
}


class SizeInt(int):
    """An integer the model's code got, during a graph trace, from an integer attribute of a
    module or a size of a traced tensor, and computed with, with how (``expr``: a leaf, or
    ``(operator name, a, b)`` of SizeInts and plain integers), so that a plan's attributes and
    sizes can be put in (:func:`evaluate`) where the code gave it to a view, reshape, expand
    or new tensor. It is the int it stands for. Additions, subtractions, products, floor
    divisions and remainders with integers are followed; any other use (a comparison,
    hashing, printing, a true division, ``int()``, a numpy ufunc, an argument of another torch
    function) reads every attribute and size it came from.

    A size is read when the code takes it from the shape all the same (``x.shape[1]``,
    unpacking, ``x.size(1)``): C code may read an int subclass's value without a Python call
    (float's own arithmetic in ``1.0 / n``, ``range(n)``, ``math.log(n)``), so only
    attributes are followed past that point, where a number the plan changes is the
    attribute's new value (what a trace with the plan's attributes set computes too)."""

    def __new__(cls, value: int, expr):
        self = int.__new__(cls, value)
        self.expr = expr
        return self

    def escape(self) -> None:
        """Note every size and attribute it came from as read."""
        stack = [self.expr]
        while stack:
            e = stack.pop()
            if type(e) is tuple:
                stack.extend(x.expr if type(x) is SizeInt else x for x in e[1:])
            elif type(e) is not int:
                e.escape()

    def __reduce__(self):
        self.escape()
        return (int, (int.__int__(self),))

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __pos__(self):
        return self

    def __neg__(self):
        return SizeInt(-int.__int__(self), ("__sub__", 0, self))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(_plain(x) for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def _followed(name, operation, reflected):  # noqa: N805  (builds the methods below)
        def method(self, other):
            kind = type(other)
            if kind is not int and kind is not SizeInt:
                self.escape()  # (a float, a tensor ...: what it gives is no size)
                a, b = int.__int__(self), _plain(other)
                return operation(b, a) if reflected else operation(a, b)
            a, b = int.__int__(self), int.__int__(other) if kind is SizeInt else other
            if reflected:
                return SizeInt(operation(b, a), (name, other, self))
            return SizeInt(operation(a, b), (name, self, other))

        return method

    for _name, _operation in _FOLLOWED.items():
        locals()[_name] = _followed(_name, _operation, False)
        locals()["__r" + _name[2:]] = _followed(_name, _operation, True)
    del _name, _operation, _followed


# Binary operators: with any other operand, a SizeInt computes as its plain value would.
_BINARY = {
    name: getattr(operator, f"__{name}__")
    for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "lshift", "rshift",
                 "and", "or", "xor", "eq", "ne", "lt", "le", "gt", "ge")
} | {"divmod": divmod}  # fmt: skip


def _note_tie(a: SizeInt, b) -> None:
    """``a == b`` (or ``!=``) of a size the code read and a module's integer attribute, either
    way round: noted in the size's trace (``CodeSaw.ties``)."""
    if type(b) is not SizeInt:
        return
    size, attribute = a.expr, b.expr
    if type(size) is AttributeLeaf:
        size, attribute = attribute, size
    if type(size) is SizeLeaf and type(attribute) is AttributeLeaf and attribute.index is None:
        if size.saw.live:
            size.saw.ties.append((attribute.module, attribute.name, size.value, size.dim))


def _escaping(name: str):
    method = getattr(int, name)
    reflected = name.startswith("__r") and name[3:-2] in _BINARY
    operation = _BINARY.get(name[3:-2] if reflected else name[2:-2])
    compares = name in ("__eq__", "__ne__")

    def escapes(self, *args, **kwargs):
        if compares and args:
            _note_tie(self, args[0])
        self.escape()
        plain = [_plain(a) for a in args]  # (reads a SizeInt among them too)
        value = int.__int__(self)
        if operation is not None and len(plain) == 1 and not kwargs:
            # a binary operator with any other operand (float's own, say, as an int's would)
            return operation(plain[0], value) if reflected else operation(value, plain[0])
        return method(value, *plain, **kwargs)

    escapes.__name__ = name
    return escapes


def _escaping_property(name: str):
    def read(self):
        self.escape()
        return getattr(int.__int__(self), name)

    return property(read)


# Everything else an int has reads what a SizeInt came from (so a use not listed cannot pass
# unseen).
_OWN = set(vars(SizeInt)) | {
    "__new__", "__init__", "__getattribute__", "__setattr__", "__delattr__", "__class__",
    "__init_subclass__", "__subclasshook__", "__dir__", "__doc__",
}  # fmt: skip
for _name in dir(int):
    if _name in _OWN:
        continue
    _attribute = getattr(int, _name)
    if isinstance(_attribute, property) or type(_attribute).__name__ == "getset_descriptor":
        setattr(SizeInt, _name, _escaping_property(_name))
    elif callable(_attribute):
        setattr(SizeInt, _name, _escaping(_name))
del _name, _attribute


def _plain(x):
    """A SizeInt as the plain int it is (read), anything else as it is."""
    if type(x) is SizeInt:
        x.escape()
        return int.__int__(x)
    return x


def leaves(x) -> list:
    """The sizes and attributes an integer the code computed came from."""
    out, stack = [], [x]
    while stack:
        e = stack.pop()
        if type(e) is SizeInt:
            stack.append(e.expr)
        elif type(e) is tuple:
            stack.extend(e[1:])
        elif type(e) is not int:
            out.append(e)
    return out


def computed_only(x) -> bool:
    """Whether ``x`` is an integer the code computed from sizes and attributes alone: no
    plain number anywhere in how (but a negation's 0), which could be a size it read and
    converted (``int(x.shape[1]) * h``: a number of the original, wherever it stands)."""
    stack = [x]
    while stack:
        e = stack.pop()
        if type(e) is SizeInt:
            stack.append(e.expr)
        elif type(e) is tuple:
            negation = e[0] == "__sub__" and type(e[1]) is int and e[1] == 0
            stack.extend(e[2:] if negation else e[1:])
        elif type(e) is int:
            return False
    return type(x) is SizeInt


def evaluate(x, leaf_value) -> int | None:
    """An integer the code computed, with ``leaf_value(leaf)`` for each size and attribute it
    came from (None where one has no value, or the arithmetic fails)."""
    if type(x) is int:
        return x
    if type(x) is not SizeInt:
        return None
    e = x.expr
    if type(e) is not tuple:
        return leaf_value(e)
    a, b = evaluate(e[1], leaf_value), evaluate(e[2], leaf_value)
    if a is None or b is None:
        return None
    try:
        return _FOLLOWED[e[0]](a, b)
    except ZeroDivisionError:
        return None


class WatchedShape(tuple):
    """A tensor's sizes as the model's code sees them during a graph trace (what
    ``x.shape`` and ``x.size()`` return there): each size is a :class:`SizeInt` of that
    dim, read when the code takes it (indexing reads one dim, unpacking and iterating every
    one); slicing reads nothing, nor does giving it whole to a view, reshape, expand or new
    tensor. What sees every size at once (comparing, hashing, printing, adding to it, ``in``,
    ``numel``, passing it to another torch function) reads each."""

    def __new__(cls, sizes, saw: CodeSaw, value: int, dims: tuple[int, ...]):
        return cls._of(
            SizeInt(int(n), SizeLeaf(saw, value, d)) for n, d in zip(tuple.__iter__(sizes), dims)
        )

    @classmethod
    def _of(cls, items):
        return tuple.__new__(cls, items)

    def read_all(self) -> None:
        for x in tuple.__iter__(self):
            if type(x) is SizeInt:
                x.escape()

    def __getitem__(self, index):
        out = tuple.__getitem__(self, index)
        if isinstance(index, slice):
            return WatchedShape._of(out)
        if type(out) is SizeInt:
            out.escape()
        return out

    def __iter__(self):
        self.read_all()
        return tuple.__iter__(self)

    def _all(name):  # noqa: N805  (builds the methods below)
        method = getattr(tuple, name)

        def reads_all(self, *args):
            self.read_all()
            return method(self, *args)

        reads_all.__name__ = name
        return reads_all

    __contains__ = _all("__contains__")
    __eq__ = _all("__eq__")
    __ne__ = _all("__ne__")
    __lt__ = _all("__lt__")
    __le__ = _all("__le__")
    __gt__ = _all("__gt__")
    __ge__ = _all("__ge__")
    __hash__ = _all("__hash__")
    __mul__ = _all("__mul__")
    __rmul__ = _all("__rmul__")
    index = _all("index")
    count = _all("count")
    del _all

    def __add__(self, other):
        self.read_all()
        return torch.Size(self._plain() + tuple(other))

    def __radd__(self, other):
        self.read_all()
        return torch.Size(tuple(other) + self._plain())

    def __repr__(self) -> str:
        self.read_all()
        return repr(torch.Size(self._plain()))

    __str__ = __repr__

    def _plain(self) -> tuple:
        return tuple(int.__int__(x) for x in tuple.__iter__(self))

    def numel(self) -> int:
        self.read_all()
        return torch.Size(self._plain()).numel()

    def __reduce__(self):
        self.read_all()
        return (torch.Size, (self._plain(),))


class SizeWatch(TorchFunctionMode):
    """Notes what the model's code sees (see the module's docstring) into ``saw``.

    ``recorder``: the trace's dispatch-level recorder (its nodes so far, and the value index of
    a tensor it knows)."""

    def __init__(self, recorder, pass_through: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.recorder = recorder
        stack = recorder.module_stack
        self.stack = stack
        self.pass_through = pass_through
        # (the recorder by a weak reference: a trace that fails leaves its saw holding the
        # clock, which would otherwise keep the recorder and its graph in a cycle)
        held = weakref.ref(recorder)
        self.saw = CodeSaw(clock=lambda: (held().recorded_count(), stack[-1] if stack else ""))
        self.on_value_read = None  # (called after each read of values: repeats.py's check)

    def __enter__(self):
        _WATCHING.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _WATCHING.remove(self)
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SHAPES:
            return self._shape(func, args, kwargs)
        if func in _COUNTS:
            return self._count(func, args, kwargs)
        if func in _SIZE_READS:
            self._read(args[0] if args else None, _read_dims(func, args, kwargs))
            return func(*args, **kwargs)
        if func in _METADATA:
            return func(*args, **kwargs)
        if func in _VALUE_READS:
            self.saw.values_read = True  # (where the call fails too)
            self.saw.value_reads += 1
        elif type(func) is FunctionType and func not in BODIES_READING_NO_PRUNED_SIZE:
            self._read_tensors(args, kwargs)  # (its body runs unwatched: see there)
        decisions = self.recorder.decisions
        decided = len(decisions) if decisions is not None else -1
        sized = func not in _INTS_NOT_SIZES and (_has_int(args) or _has_int(kwargs.values()))
        if sized and func in _CONVOLUTIONS:
            groups = kwargs.get("groups", args[_GROUPS_POSITION] if len(args) > 6 else 1)
            sized = groups != 1
        shaped = _shaped(func, args, kwargs) if sized else None
        if shaped is None or shaped[0] == "index":
            # (torch reads a tuple's items without calling their methods): every size and
            # SizeInt passed is read, but those of a view's, expand's or new tensor's sizes
            _read_passed(args, kwargs)
        if sized and shaped is None and self.stack and self.stack[-1] in self.pass_through:
            sized = False  # a module's own attributes, which a plan sets as it prunes
        decomposed = func in _DECOMPOSED_BY_ONES
        start = self.recorder.recorded_count() if decomposed or (sized and shaped is None) else 0
        out = func(*args, **kwargs)
        if decomposed:
            self.saw.decomposed_by_ones.append((start, self.recorder.recorded_count()))
        if shaped is not None:
            kind, ints = shaped
            target = args[0] if kind in ("index", "trailing") else out
            value = self.recorder.value_index(target) if isinstance(target, torch.Tensor) else None
            source = None
            if kind in ("view", "expand") and isinstance(args[0], torch.Tensor):
                source = self.recorder.value_index(args[0])
            self.saw.shaped_calls.append(ShapedCall(kind, ints, value, source))
        elif sized:
            self.saw.sized_ops.append((start, self.recorder.recorded_count()))
        if func in _VALUE_READS or (
            type(out) in _PYTHON_VALUES and any(isinstance(a, torch.Tensor) for a in args)
        ):
            self.saw.values_read = True  # item(), tolist(), bool(x), equal(a, b), str(x) ...
            self.saw.value_reads += 1
            one_number = type(out) in _NUMBERS and decided >= 0
            if not one_number or len(decisions) != decided + 1:
                self.saw.unreplayed_reads = True
                self.saw.unreplayed_count += 1
            if self.on_value_read is not None:
                self.on_value_read()
        return out

    def _shape(self, func, args, kwargs):
        """``x.shape`` or ``x.size()``: its sizes, watched (read dim by dim)."""
        out = func(*args, **kwargs)
        t = args[0] if args else None
        index = self.recorder.value_index(t) if isinstance(t, torch.Tensor) else None
        if type(out) is int and index is not None:  # x.size(d)
            dims = _read_dims(func, args, kwargs)
            if dims is not None and len(dims) == 1:
                size = SizeInt(out, SizeLeaf(self.saw, index, dims[0]))
                size.escape()  # (read when taken: see WatchedShape)
                return size
        if type(out) is not torch.Size or index is None:
            self._read(t, _read_dims(func, args, kwargs))  # an unknown tensor
            return out
        return WatchedShape(out, self.saw, index, tuple(range(len(out))))

    def _count(self, func, args, kwargs):
        """``x.numel()``: the product of its sizes, each read as when taken from its shape,
        and followed as a product (``x.view(B, x.numel() // B)`` computes the planned width
        again; as a plain number it was a size of the original in that arithmetic)."""
        out = func(*args, **kwargs)
        t = args[0] if args else None
        index = self.recorder.value_index(t) if isinstance(t, torch.Tensor) else None
        if type(out) is not int or index is None or t.dim() == 0:
            self._read(t, None)
            return out
        total = None
        for d, n in enumerate(t.shape):
            size = SizeInt(int(n), SizeLeaf(self.saw, index, d))
            size.escape()  # (read when taken: see WatchedShape)
            total = size if total is None else total * size
        return total

    def _read_tensors(self, args, kwargs) -> None:
        """Every size of every tensor in the arguments, read."""
        stack = [*args, *kwargs.values()]
        while stack:
            x = stack.pop()
            if isinstance(x, torch.Tensor):
                self._read(x, None)
            elif type(x) is list or type(x) is tuple:
                stack.extend(x)

    def _read(self, t, dims) -> None:
        if not isinstance(t, torch.Tensor):
            return
        index = self.recorder.value_index(t)
        if index is None:
            self.saw.unknown_reads = True
        elif dims is None:
            self.saw.read(index, None)
        else:
            for d in dims:
                self.saw.read(index, d)


_PYTHON_VALUES = frozenset({bool, int, float, complex, list, str})
_NUMBERS = frozenset({bool, int, float, complex})
# What returns a tensor's sizes as a torch.Size: watched (WatchedShape).
_SHAPES = frozenset({Tensor.shape.__get__, Tensor.size})
_COUNTS = frozenset({Tensor.numel, Tensor.nelement, torch.numel})


def _read_dims(func, args, kwargs) -> tuple[int, ...] | None:
    """The dims a size read reads (None: all of them)."""
    t = args[0] if args else None
    if not isinstance(t, torch.Tensor):
        return None
    if func is Tensor.__len__ or func is Tensor.__iter__:
        return (0,) if t.dim() else None
    if func is Tensor.unbind or func is torch.unbind:
        d = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        return (d % t.dim(),) if type(d) is int and t.dim() else None
    if func is Tensor.size:  # x.size(d) (x.size() is a _SHAPES call)
        d = kwargs.get("dim", args[1] if len(args) > 1 else None)
        return (d % t.dim(),) if type(d) is int and t.dim() else None
    return None


_WATCHING: list[SizeWatch] = []  # the watches running (their traces see SizeInts)


def watching() -> bool:
    """Whether a graph trace's SizeWatch runs (module attributes read are followed)."""
    return bool(_WATCHING)


def _read_passed(args, kwargs) -> None:
    """Watched sizes and SizeInts passed to a torch function are read, all of them."""
    stack = [*args, *kwargs.values()]
    while stack:
        x = stack.pop()
        kind = type(x)
        if kind is SizeInt:
            x.escape()
        elif kind is WatchedShape:
            x.read_all()
        elif kind is list or kind is tuple:
            # (a cat's or stack's tensors, thousands in a decoder loop: one C-level pass)
            if not all(map(isinstance, x, itertools.repeat(torch.Tensor))):
                stack.extend(x)
        elif kind is slice:
            stack.extend((x.start, x.stop, x.step))


# Calls whose integers are their result's sizes, position by position: kind, and where the
# sizes are (the arguments after the tensor, or the first one after it when it is a list).
_VIEWS = frozenset({Tensor.view, Tensor.reshape, torch.reshape})
_EXPANDS = frozenset({Tensor.expand})
_NEW = frozenset(
    {Tensor.new_zeros, Tensor.new_ones, Tensor.new_empty, torch.zeros, torch.ones, torch.empty}
)


def _sizes_of(rest) -> tuple | None:
    """Integer sizes given as ``f(*sizes)`` or ``f(sizes)``, or None."""
    if len(rest) == 1 and type(rest[0]) in (list, tuple, torch.Size, WatchedShape):
        rest = tuple(tuple.__iter__(rest[0]) if type(rest[0]) is WatchedShape else rest[0])
    if rest and all(type(x) is int or type(x) is SizeInt for x in rest):
        return tuple(rest)
    return None


def _shaped(func, args, kwargs) -> tuple[str, tuple] | None:
    """(kind, integers) of a call whose integers are sizes or indices by position (see
    ShapedCall), or None."""
    if func in _VIEWS or func in _EXPANDS:
        if func is torch.reshape:
            rest = (kwargs["shape"],) if "shape" in kwargs else args[1:]
        else:
            rest = (kwargs["size"],) if "size" in kwargs else args[1:]
        sizes = _sizes_of(tuple(rest))
        return None if sizes is None else ("view" if func in _VIEWS else "expand", sizes)
    if func in _NEW:
        rest = args[1:] if func in (Tensor.new_zeros, Tensor.new_ones, Tensor.new_empty) else args
        if "size" in kwargs:
            rest = (kwargs["size"],)
        sizes = _sizes_of(tuple(rest))
        return None if sizes is None else ("new", sizes)
    if func is Tensor.__getitem__ and len(args) == 2 and isinstance(args[0], torch.Tensor):
        return _indexed_dims(args[0].dim(), args[1])
    if func is F.layer_norm:  # (input, normalized_shape, ...): the input's last sizes
        rest = (kwargs["normalized_shape"],) if "normalized_shape" in kwargs else args[1:2]
        sizes = _sizes_of(tuple(rest))
        return None if sizes is None else ("trailing", sizes)
    return None


_INDEX_ITEMS = (int, SizeInt, slice)


def _indexed_dims(rank: int, index) -> tuple[str, tuple] | None:
    """("index", per input dim whether an integer or a slice with bounds picks from it) of
    ``x[index]`` made of integers, slices and an Ellipsis only (else None)."""
    items = index if type(index) is tuple else (index,)
    if (
        any(x is not Ellipsis and type(x) not in _INDEX_ITEMS for x in items)
        or sum(x is Ellipsis for x in items) > 1
    ):
        return None
    for x in items:
        if type(x) is slice and any(
            b is not None and type(b) is not int and type(b) is not SizeInt
            for b in (x.start, x.stop, x.step)
        ):
            return None
    explicit = [x for x in items if x is not Ellipsis]
    if len(explicit) > rank:
        return None
    picks: list[bool] = []
    for x in items:
        if x is Ellipsis:
            picks += [False] * (rank - len(explicit))
        else:
            picks.append(type(x) is not slice or x != slice(None))
    picks += [False] * (rank - len(picks))
    return "index", tuple(picks)


def _has_int(items) -> bool:
    """An integer (not a bool) among ``items``, in a list/tuple of them or in a slice."""
    for x in items:
        kind = type(x)
        if kind is int or kind is SizeInt or kind is torch.SymInt:
            return True
        if kind is slice:
            if _has_int((x.start, x.stop, x.step)):
                return True
        elif kind is WatchedShape:
            return True
        elif kind is list or kind is tuple or kind is torch.Size:
            # (a cat's or stack's tensors, thousands in a decoder loop: one C-level pass)
            if x and all(map(isinstance, x, itertools.repeat(torch.Tensor))):
                continue
            if _has_int(x):
                return True
    return False


def reads_values(func, args, out) -> bool:
    """Whether a torch function's call read a tensor's values into Python (its sizes and
    metadata are no values)."""
    if func in _VALUE_READS:
        return True
    return (
        type(out) in _PYTHON_VALUES
        and func not in _SIZE_READS
        and func not in _METADATA
        and any(isinstance(a, torch.Tensor) for a in args)
    )
