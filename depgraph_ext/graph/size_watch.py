"""What a model's Python code learns of sizes and values while it is traced.

A plan's pruned shapes are traced again before anything changes because the model's code may
fix a size the rules treat as prunable (``x.view(b, 2, -1)``, ``torch.zeros(10)``) or branch on
one. The code can only do that with a size it read (``x.shape``, ``x.size(1)``, ``len(x)``),
an integer it passed to an op (a literal, an attribute, a computed size), or a value it read
(``x.item()``, ``bool(x)``). :class:`SizeWatch`, a torch function mode over the model's forward,
notes each: the values whose sizes were read, the ops produced by calls with integers that may
be sizes, and whether any value was read. A plan that prunes none of those is shaped exactly by
the rules (every other op's result follows from its inputs' shapes), so it needs no second
trace (:func:`depgraph_ext.pruning.validate.needs_trace`).

Integers known not to be sizes of anything a rule treats as prunable are not noted: dims
(``sum(x, 1)``, ``cat(xs, 1)``), spatial parameters (a convolution's stride and padding, a
pool's kernel, an interpolation's size) and counts the rules keep aligned (``chunk``,
``topk``'s k). A convolution's ``groups`` is one only when it is 1.
"""

from __future__ import annotations

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

    size_reads: set[int] = field(default_factory=set)  # values whose sizes the code read
    sized_ops: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) of nodes
    values_read: bool = False  # the code read some tensor's values
    unknown_reads: bool = False  # it read sizes of a tensor the trace did not know


class SizeWatch(TorchFunctionMode):
    """Notes what the model's code sees (see the module's docstring) into ``saw``.

    ``recorder``: the trace's dispatch-level recorder (its nodes so far, and the value index of
    a tensor it knows)."""

    def __init__(self, recorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.saw = CodeSaw()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SIZE_READS:
            self._read(args[0] if args else None)
            return func(*args, **kwargs)
        if func in _METADATA:
            return func(*args, **kwargs)
        if func in _VALUE_READS:
            self.saw.values_read = True
        sized = func not in _INTS_NOT_SIZES and (_has_int(args) or _has_int(kwargs.values()))
        if sized and func in _CONVOLUTIONS:
            groups = kwargs.get("groups", args[_GROUPS_POSITION] if len(args) > 6 else 1)
            sized = groups != 1
        start = self.recorder.recorded_count() if sized else 0
        out = func(*args, **kwargs)
        if sized:
            self.saw.sized_ops.append((start, self.recorder.recorded_count()))
        if type(out) in _PYTHON_VALUES and any(isinstance(a, torch.Tensor) for a in args):
            self.saw.values_read = True  # item(), tolist(), bool(x), equal(a, b), str(x) ...
        return out

    def _read(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        index = self.recorder.value_index(t)
        if index is None:
            self.saw.unknown_reads = True
        else:
            self.saw.size_reads.add(index)


_PYTHON_VALUES = frozenset({bool, int, float, complex, list, str})


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
