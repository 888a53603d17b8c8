"""What a model's Python code learns of sizes and values while it is traced.

A plan's pruned shapes are traced again before anything changes because the model's code may
fix a size the rules treat as prunable (``x.view(b, 2, -1)``, ``torch.zeros(10)``) or branch on
one. The code can only do that with a size it read (``x.shape``, ``x.size(1)``, ``len(x)``),
an integer it passed to an op (a literal, an attribute, a computed size), or a value it read
(``x.item()``, ``bool(x)``). :class:`SizeWatch`, a torch function mode over the model's forward,
notes each: the sizes read, dim by dim (``x.shape`` is a :class:`WatchedShape` there); the
integers of views, reshapes, expands and new tensors by the position of the size they give,
and the dims indexed or sliced by integers (:class:`ShapedCall`); the ops produced by other
calls with integers that may be sizes; and whether any value was read. A plan that prunes no
size read, gives no pruned size as a number (``-1`` is inferred from the pruned input), indexes
no pruned dim and prunes no tensor of those other ops is shaped exactly by the rules (every
other op's result follows from its inputs' shapes), so it needs no second trace
(:func:`depgraph_ext.pruning.validate.needs_trace`).

Integers known not to be sizes of anything a rule treats as prunable are not noted: dims
(``sum(x, 1)``, ``cat(xs, 1)``), spatial parameters (a convolution's stride and padding, a
pool's kernel, an interpolation's size) and counts the rules keep aligned (``chunk``,
``topk``'s k). A convolution's ``groups`` is one only when it is 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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
_CONVOLUTIONS = frozenset(
    {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
)
_GROUPS_POSITION = 6  # conv*d(input, weight, bias, stride, padding, dilation, groups), and the
# transposed ones (input, weight, bias, stride, padding, output_padding, groups, ...)


@dataclass
class CodeSaw:
    """What the model's code saw and passed during one trace (value and node indices)."""

    sized_ops: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) of nodes
    # Calls whose integers are a shape, or an index, by position (see ShapedCall)
    shaped_calls: list[ShapedCall] = field(default_factory=list)
    values_read: bool = False  # the code read some tensor's values
    unknown_reads: bool = False  # it read sizes of a tensor the trace did not know
    # (value, dim) of every size the code read (dim None: all of the value's sizes) -> (how
    # many ops had run, the module running) when it was first read
    read_at: dict[tuple[int, int | None], tuple[int, str]] = field(default_factory=dict)
    # (how many ops have run so far, the module running): the trace's, while it runs; then None
    clock: Callable[[], tuple[int, str]] | None = field(default=None, repr=False, compare=False)

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
    new tensor's sizes) or how each dim of its input is indexed ("index": ``x[..., :n]``,
    ``ints`` holding per input dim whether it is sliced or indexed). ``value``: the result
    (the input, for "index"), or None where the trace does not know it."""

    kind: str
    ints: tuple
    value: int | None


class WatchedShape(tuple):
    """A tensor's sizes as the model's code sees them during a graph trace (what
    ``x.shape`` and ``x.size()`` return there): each size it reads is noted by dim, so that a
    plan that prunes none of the dims the code read needs no second trace. Indexing reads one
    dim, slicing reads none (a WatchedShape of the slice), and anything that sees every size
    (unpacking, iterating, comparing, hashing, printing, adding to it, ``numel``, being
    passed to a torch function) reads each of them."""

    def __new__(cls, sizes, saw: CodeSaw, value: int, dims: tuple[int, ...]):
        shape = super().__new__(cls, sizes)
        shape._saw, shape._value, shape._dims = saw, value, dims
        return shape

    def _read(self, dims) -> None:
        saw, value = self._saw, self._value
        for d in dims:
            saw.read(value, d)

    def read_all(self) -> None:
        self._read(self._dims)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return WatchedShape(
                tuple.__getitem__(self, index), self._saw, self._value, self._dims[index]
            )
        out = tuple.__getitem__(self, index)
        self._read((self._dims[index],))
        return out

    def _all(name):  # noqa: N805  (builds the methods below)
        method = getattr(tuple, name)

        def reads_all(self, *args):
            self.read_all()
            return method(self, *args)

        reads_all.__name__ = name
        return reads_all

    __iter__ = _all("__iter__")
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
        return torch.Size(tuple.__add__(tuple(self), tuple(other)))

    def __radd__(self, other):
        self.read_all()
        return torch.Size(tuple(other) + tuple(self))

    def __repr__(self) -> str:
        self.read_all()
        return repr(torch.Size(tuple.__iter__(self)))

    __str__ = __repr__

    def numel(self) -> int:
        self.read_all()
        return torch.Size(tuple.__iter__(self)).numel()

    def __reduce__(self):
        self.read_all()
        return (torch.Size, (tuple(tuple.__iter__(self)),))


class SizeWatch(TorchFunctionMode):
    """Notes what the model's code sees (see the module's docstring) into ``saw``.

    ``recorder``: the trace's dispatch-level recorder (its nodes so far, and the value index of
    a tensor it knows)."""

    def __init__(self, recorder) -> None:
        super().__init__()
        self.recorder = recorder
        stack = recorder.module_stack
        self.saw = CodeSaw(clock=lambda: (recorder.recorded_count(), stack[-1] if stack else ""))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SHAPES:
            return self._shape(func, args, kwargs)
        if func in _SIZE_READS:
            self._read(args[0] if args else None, _read_dims(func, args, kwargs))
            return func(*args, **kwargs)
        if func in _METADATA:
            return func(*args, **kwargs)
        if func in _VALUE_READS:
            self.saw.values_read = True
        _read_passed(args, kwargs)  # (torch reads a tuple's items without calling its methods)
        sized = func not in _INTS_NOT_SIZES and (_has_int(args) or _has_int(kwargs.values()))
        if sized and func in _CONVOLUTIONS:
            groups = kwargs.get("groups", args[_GROUPS_POSITION] if len(args) > 6 else 1)
            sized = groups != 1
        shaped = _shaped(func, args, kwargs) if sized else None
        start = self.recorder.recorded_count() if sized and shaped is None else 0
        out = func(*args, **kwargs)
        if shaped is not None:
            kind, ints = shaped
            target = args[0] if kind == "index" else out
            value = self.recorder.value_index(target) if isinstance(target, torch.Tensor) else None
            self.saw.shaped_calls.append(ShapedCall(kind, ints, value))
        elif sized:
            self.saw.sized_ops.append((start, self.recorder.recorded_count()))
        if type(out) in _PYTHON_VALUES and any(isinstance(a, torch.Tensor) for a in args):
            self.saw.values_read = True  # item(), tolist(), bool(x), equal(a, b), str(x) ...
        return out

    def _shape(self, func, args, kwargs):
        """``x.shape`` or ``x.size()``: its sizes, watched (read dim by dim)."""
        out = func(*args, **kwargs)
        t = args[0] if args else None
        index = self.recorder.value_index(t) if isinstance(t, torch.Tensor) else None
        if type(out) is not torch.Size or index is None:
            self._read(t, _read_dims(func, args, kwargs))  # x.size(d), or an unknown tensor
            return out
        return WatchedShape(out, self.saw, index, tuple(range(len(out))))

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
# What returns a tensor's sizes as a torch.Size: watched (WatchedShape).
_SHAPES = frozenset({Tensor.shape.__get__, Tensor.size})


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


def _read_passed(args, kwargs) -> None:
    """Watched sizes passed to a torch function are read, all of them."""
    for x in (*args, *kwargs.values()):
        if type(x) is WatchedShape:
            x.read_all()
        elif type(x) is list or type(x) is tuple:
            for item in x:
                if type(item) is WatchedShape:
                    item.read_all()


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
        rest = tuple(rest[0])
    if rest and all(type(x) is int for x in rest):
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
    return None


def _indexed_dims(rank: int, index) -> tuple[str, tuple] | None:
    """("index", per input dim whether an integer or a slice with bounds picks from it) of
    ``x[index]`` made of integers, slices and an Ellipsis only (else None)."""
    items = index if type(index) is tuple else (index,)
    if (
        any(x is not Ellipsis and type(x) is not int and type(x) is not slice for x in items)
        or sum(x is Ellipsis for x in items) > 1
    ):
        return None
    for x in items:
        if type(x) is slice and any(
            b is not None and type(b) is not int for b in (x.start, x.stop, x.step)
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
            picks.append(type(x) is int or x != slice(None))
    picks += [False] * (rank - len(picks))
    return "index", tuple(picks)


def _has_int(items) -> bool:
    """An integer (not a bool) among ``items``, in a list/tuple of them or in a slice."""
    for x in items:
        kind = type(x)
        if kind is int or kind is torch.SymInt:
            return True
        if kind is slice:
            if _has_int((x.start, x.stop, x.step)):
                return True
        elif (kind is list or kind is tuple or kind is torch.Size) and _has_int(x):
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
