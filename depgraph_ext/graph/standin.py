"""Meta tensors standing in for tensors of a real device, for tracing.

A trace on plain meta tensors costs about half of one on fake tensors (``FakeTensorMode``
checks, hashes and wraps every op in Python), and a quarter once the results of repeated ops
are remembered (``MetaResults``); but two things see the meta device where the
model would see its own: the model's Python code (``x.device``, ``x.to(device)``), and a few
composite ops that pick their decomposition in C++ by device (attention picks a fused kernel
on the CPU and plain math on meta; recurrent layers a fused layer on the CPU). So, during a
meta trace, :class:`StandIn`

- answers ``device``, ``is_cpu``, ``is_meta``, ``get_device`` and ``type()`` of a meta tensor
  as for a tensor of the stand-in device, and moves to the stand-in device mean staying on meta;
- runs the device-sensitive composites (``DEVICE_SENSITIVE``) on fake tensors of the stand-in
  device under the recorder, so the recorded ops are exactly those of a fake trace, and hands
  their results back as meta tensors.

The recorder itself puts every tensor that is not on meta (a constant the model's code made)
on meta before an op runs, and makes factories (``zeros``, ``arange`` ...) build on meta.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch._prims_common import suggest_memory_format
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _pop_mode_temporarily

META = torch.device("meta")

# Functions whose ops (what a dispatch-level recorder sees) depend on the device: composites
# that pick a kernel by device (attention, recurrent layers), and batch and instance norm,
# whose CPU kernel returns empty saved statistics in eval mode where the meta kernel returns
# full ones. (A torch function mode sees the outermost call only: ``F.batch_norm``, not the
# ``torch.batch_norm`` inside it.)
DEVICE_SENSITIVE = frozenset(
    {
        torch._C._nn.scaled_dot_product_attention,
        torch._VF.lstm,
        torch._VF.gru,
        torch._VF.rnn_tanh,
        torch._VF.rnn_relu,
        torch.nn.functional.batch_norm,
        torch.nn.functional.instance_norm,
        torch.batch_norm,
        torch.instance_norm,
    }
)

# Modules whose Python code takes a fused path only when no torch function mode is active
# (``has_torch_function``): a model with one is traced on fake tensors instead.
FUSED_PATH_MODULES = (
    torch.nn.MultiheadAttention,
    torch.nn.TransformerEncoderLayer,
    torch.nn.TransformerEncoder,
)

_DEVICE = torch.Tensor.device.__get__
_IS_CPU = torch.Tensor.is_cpu.__get__
_IS_META = torch.Tensor.is_meta.__get__
_REQUIRES_GRAD = torch.Tensor.requires_grad.__get__
_IS_CONTIGUOUS = torch.Tensor.is_contiguous
_DTYPE = torch.Tensor.dtype.__get__
_SHAPE = torch.Tensor.shape.__get__
_GET_DEVICE = torch.Tensor.get_device
_TYPE = torch.Tensor.type
_MOVES = frozenset({torch.Tensor.to, torch.Tensor.cpu})


def on_meta(t: torch.Tensor, shape=None) -> torch.Tensor:
    """An uninitialised meta tensor of ``t``'s layout (or of ``shape``, contiguous) that
    requires grad as ``t`` does (ops decide on it: a matmul folds its batch dims or not)."""
    if shape is not None:
        m = torch.empty(shape, dtype=t.dtype, device=META)
    else:
        m = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=META)
    return m.requires_grad_() if t.requires_grad else m


class StandIn(TorchFunctionMode):
    """Meta tensors look like tensors of ``device`` (see the module's docstring).

    ``recorder``: the dispatch-level recorder of the trace; it must see the ops the
    device-sensitive composites run, and know their fake inputs and outputs as the meta
    tensors they stand for (``alias(fake, meta)``)."""

    def __init__(self, device: torch.device, recorder) -> None:
        super().__init__()
        self.device = device
        self.recorder = recorder
        self._fake_mode = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DEVICE_SENSITIVE:
            return self._on_fake_device(func, args, kwargs)
        if func in _MOVES:  # staying on meta is what moving to the stand-in means here
            args = tuple(META if _is_stand_in(a, self.device) else a for a in args)
            if _is_stand_in(kwargs.get("device"), self.device):
                kwargs = dict(kwargs, device=META)
            if func is torch.Tensor.cpu:
                return torch.Tensor.to(args[0], META)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if func == _DEVICE:
            return self.device if out.type == "meta" else out
        if func == _IS_CPU:
            return out or (self.device.type == "cpu" and _IS_META(args[0]))
        if func == _IS_META:
            return False if out else out
        if func == _GET_DEVICE and _IS_META(args[0]):
            return -1 if self.device.type == "cpu" else (self.device.index or 0)
        if func is _TYPE and isinstance(out, str) and out.startswith("torch.meta."):
            return "torch." + out.removeprefix("torch.meta.")  # x.type() names the CPU's type
        return out

    def _on_fake_device(self, func, args, kwargs):
        """``func`` on fake tensors of the stand-in device, under the recorder."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        if self._fake_mode is None:
            self._fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake_mode, recorder = self._fake_mode, self.recorder

        def to_fake(x):
            if not isinstance(x, torch.Tensor) or x.device.type != "meta":
                return x
            with fake_mode:
                f = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=self.device)
            if x.requires_grad:
                f.requires_grad_()
            recorder.alias(f, x)
            return f

        def to_meta(x):
            if not isinstance(x, torch.Tensor):
                return x
            m = on_meta(x)
            recorder.alias(m, x)
            return m

        # The recorder is the top dispatch mode: the fake tensors, made without it, go below.
        with _pop_mode_temporarily() as top:
            if top is not recorder:
                raise RuntimeError("internal error: the recorder is not the top dispatch mode")
            fake_args, fake_kwargs = pytree.tree_map(to_fake, (args, kwargs))
            recorder.meta = False
            try:
                with fake_mode, recorder:
                    out = func(*fake_args, **fake_kwargs)
            finally:
                recorder.meta = True
            return pytree.tree_map(to_meta, out)


def _is_stand_in(x: Any, device: torch.device) -> bool:
    if isinstance(x, str):
        try:
            x = torch.device(x)
        except RuntimeError:
            return False
    return (
        isinstance(x, torch.device)
        and x.type == device.type
        and (x.index is None or device.index is None or x.index == device.index)
    )


# -- results of meta kernels, remembered ---------------------------------------------------------
class MetaResults:
    """The results of meta kernels, remembered where that is exact.

    Many meta kernels are Python functions (torch._refs: an elementwise mul on meta takes about
    150 us, ten times a CPU mul of a few thousand values), and a model repeats the same ops on
    the same shapes layer after layer. An op that makes new tensors (no aliasing, no writing)
    from tensors gives results whose layout follows from its inputs' layouts and its other
    arguments alone, so it is run once per such key and its results are rebuilt from then on.
    An op that writes its first argument alone (``sigmoid_``, ``add_``: what a GRU cell runs
    at every step) returns that argument; where its kernel accepted a key and left the
    argument's layout as it was, the argument is returned from then on. One memo serves the
    traces of one dependency graph (the trace and every validation)."""

    MAX_ENTRIES = 1 << 16

    def __init__(self) -> None:
        self._layouts: dict[tuple, Any] = {}
        self._writes_accepted: set[tuple] = set()

    def run(self, func, args, kwargs):
        """``func(*args, **kwargs)`` on meta tensors."""
        if func in _JOINS:
            out = _joined(func, args, kwargs)
            if out is not None:
                return out
        elif func in _RESAMPLES:
            out = _resampled(func, args, kwargs)
            if out is not None:
                return out
        elif func in _TESTS:
            out = _tested(func, args, kwargs)
            if out is not None:
                return out
        key = result_key(func, args, kwargs)
        if key is None:
            key = in_place_key(func, args, kwargs)
            if key is None:
                return func(*args, **kwargs)
            written = args[0]
            if key in self._writes_accepted:
                return written
            before = (written.shape, written.stride(), written.storage_offset())
            out = func(*args, **kwargs)
            if out is written and before == (
                written.shape,
                written.stride(),
                written.storage_offset(),
            ):
                if len(self._writes_accepted) >= self.MAX_ENTRIES:
                    self._writes_accepted.clear()
                self._writes_accepted.add(key)
            return out
        layout = self._layouts.get(key)
        if layout is None:
            out = func(*args, **kwargs)
            layout = _layout_of(out)
            if layout is not None:
                if len(self._layouts) >= self.MAX_ENTRIES:
                    self._layouts.clear()
                self._layouts[key] = layout
            return out
        return _rebuild(layout)


_JOINS = frozenset({torch.ops.aten.cat.default, torch.ops.aten.stack.default})


def _joined(func, args, kwargs):
    """A cat or stack of plain meta tensors, shaped here: their meta kernels are Python
    (torch._refs) at several microseconds per tensor joined, and a decoder loop stacking what
    it made so far joins thousands per step. None where the kernel must decide: tensors of
    other dtypes (promotion), ranks or layouts (a channels-last result), sizes that do not
    line up or an empty tensor (the kernel raises or skips it), requires_grad."""
    tensors = kwargs.get("tensors", args[0] if args else None)
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    if type(tensors) not in (list, tuple) or not tensors or type(dim) is not int:
        return None
    first = tensors[0]
    if not isinstance(first, torch.Tensor):
        return None
    shape, dtype, rank = first.shape, first.dtype, first.dim()
    stack = func is torch.ops.aten.stack.default
    if rank + stack > 3 or rank == 0:
        return None
    # (one C-level pass per property: a loop over thousands of tensors in Python was most
    # of a decoder's trace; a getter raises TypeError for what is no tensor)
    try:
        if (
            not all(map(_IS_META, tensors))
            or any(map(_REQUIRES_GRAD, tensors))
            or not all(map(_IS_CONTIGUOUS, tensors))
            or any(dt is not dtype for dt in set(map(_DTYPE, tensors)))
        ):
            return None
        shapes = set(map(_SHAPE, tensors))
    except TypeError:
        return None
    if any(len(other) != rank or 0 in other for other in shapes):
        return None
    out_rank = rank + stack
    if not -out_rank <= dim < out_rank:
        return None
    dim %= out_rank
    if stack:
        if len(shapes) != 1:
            return None
        size = [*shape[:dim], len(tensors), *shape[dim:]]
    else:
        if any(o[:dim] != shape[:dim] or o[dim + 1 :] != shape[dim + 1 :] for o in shapes):
            return None
        size = list(shape)
        size[dim] = sum(t.shape[dim] for t in tensors)
    return torch.empty(size, dtype=dtype, device=META)


_A = torch.ops.aten
# A comparison with a number and a boolean reduction (a decoder's stop test at every step:
# ``stack(ids).eq(end).any(-1).all()``), whose meta kernels are Python (torch._refs, about
# 0.1 ms a call), and whose key changes at every step as the stack grows: the rank of their
# result (None: the input's, an int: that dim taken away or kept as 1, "all": a 0-dim one).
_TESTS = {
    _A.eq.Scalar: None,
    _A.ne.Scalar: None,
    _A.lt.Scalar: None,
    _A.le.Scalar: None,
    _A.gt.Scalar: None,
    _A.ge.Scalar: None,
    _A.any.dim: "dim",
    _A.all.dim: "dim",
    _A.any.default: "all",
    _A.all.default: "all",
}
_NUMBERS = (int, float, bool)


def _tested(func, args, kwargs):
    """A comparison of a contiguous meta tensor with a number, or its any/all, shaped here as
    their kernels shape it (a contiguous bool tensor). None where the kernel must decide: any
    other input (strided, uint8 whose any/all keep uint8, a complex one), keyword arguments."""
    if kwargs or not args:
        return None
    x = args[0]
    if (
        type(x) is not torch.Tensor
        or not _IS_META(x)
        or x.requires_grad
        or x.dtype in (torch.uint8, torch.complex64, torch.complex128)
        or not x.is_contiguous()
    ):
        return None
    what = _TESTS[func]
    if what is None:
        if len(args) != 2 or type(args[1]) not in _NUMBERS:
            return None
        return torch.empty(x.shape, dtype=torch.bool, device=META)
    if what == "all":
        return torch.empty((), dtype=torch.bool, device=META) if len(args) == 1 else None
    if not 2 <= len(args) <= 3 or type(args[1]) is not int or x.dim() == 0:
        return None
    keepdim = args[2] if len(args) == 3 else False
    if type(keepdim) is not bool or not -x.dim() <= args[1] < x.dim():
        return None
    dim = args[1] % x.dim()
    size = [*x.shape[:dim], *([1] if keepdim else []), *x.shape[dim + 1 :]]
    return torch.empty(size, dtype=torch.bool, device=META)


# Resampling ops whose meta kernel is a Python decomposition that computes the result from
# index arithmetic (bicubic 2d about 30 ms a call on meta, bilinear 5 ms, a 2d grid sample 9
# ms): the number of spatial dims each resamples.
_RESAMPLES = {
    _A.upsample_linear1d.default: 1,
    _A.upsample_bilinear2d.default: 2,
    _A.upsample_bicubic2d.default: 2,
    _A.upsample_trilinear3d.default: 3,
    _A.grid_sampler_2d.default: 2,
    _A.grid_sampler_3d.default: 3,
}
_GRID_SAMPLERS = (_A.grid_sampler_2d.default, _A.grid_sampler_3d.default)


def _resampled(func, args, kwargs):
    """An upsampling or grid sample of a meta tensor, shaped here as its decomposition shapes
    it: batch and channels of the input, the spatial sizes asked for (an upsample's
    ``output_size``, a grid's middle sizes), in the input's suggested memory format (an
    upsample; a grid sample's result is contiguous). None where the kernel must decide
    (it may refuse): keyword arguments, other dtypes than floating ones or than each
    other's, an empty dim, a grid of another batch or rank, modes it lacks."""
    spatial = _RESAMPLES[func]
    if kwargs or not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    rank = 2 + spatial
    if not _IS_META(x) or not x.dtype.is_floating_point or x.dim() != rank or 0 in x.shape:
        return None
    if func in _GRID_SAMPLERS:
        if len(args) != 5:
            return None
        grid, interpolation, padding, align_corners = args[1:]
        if (
            not isinstance(grid, torch.Tensor)
            or not _IS_META(grid)
            or grid.dtype != x.dtype
            or grid.dim() != rank
            or grid.shape[0] != x.shape[0]
            or grid.shape[-1] != spatial
            or interpolation not in ((0, 1, 2) if spatial == 2 else (0, 1))
            or padding not in (0, 1, 2)
            or type(align_corners) is not bool
        ):
            return None
        return torch.empty((*x.shape[:2], *grid.shape[1:-1]), dtype=x.dtype, device=META)
    if len(args) < 3 or len(args) > 3 + spatial:
        return None
    size, align_corners = args[1], args[2]
    if (
        type(size) not in (list, tuple)
        or len(size) != spatial
        or any(type(n) is not int or n <= 0 for n in size)
        or type(align_corners) is not bool
        or any(s is not None and type(s) is not float for s in args[3:])
    ):
        return None
    return torch.empty(
        (*x.shape[:2], *size),
        dtype=x.dtype,
        device=META,
        memory_format=suggest_memory_format(x),
    )


@functools.cache
def _makes_new_tensors(func) -> bool:
    """No result aliases an argument and no argument is written (views, in-place and out=
    ops are left alone: their results share storage with their inputs)."""
    schema = func._schema
    return not any(a.alias_info is not None for a in (*schema.arguments, *schema.returns))


@functools.cache
def _writes_first_argument_only(func) -> bool:
    """The op writes its first argument, returns it, and aliases nothing else."""
    schema = func._schema
    arguments, returns = schema.arguments, schema.returns
    if not arguments or len(returns) != 1 or arguments[0].alias_info is None:
        return False
    first, returned = arguments[0].alias_info, returns[0].alias_info
    return (
        first.is_write
        and returned is not None
        and set(returned.before_set) == set(first.before_set)
        and not any(a.alias_info is not None for a in arguments[1:])
    )


def in_place_key(func, args, kwargs):
    """The key of an op that writes its first argument alone (a meta tensor, given as the
    first positional argument), or None."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    if not _writes_first_argument_only(func):
        return None
    key = _key(func, args, kwargs)
    # (grad mode too: an in-place op on a leaf that requires grad raises only with it on)
    return None if key is None else (*key, torch.is_grad_enabled())


def result_key(func, args, kwargs):
    if not _makes_new_tensors(func):
        return None
    return _key(func, args, kwargs)


def _key(func, args, kwargs):
    parts = [func]
    tensors = [0]
    for a in args:
        if not _key_part(a, parts, tensors):
            return None
    for k, v in kwargs.items():
        parts.append(k)
        if not _key_part(v, parts, tensors):
            return None
    if not tensors[0]:
        return None  # a factory: its dtype may be the default one, which can change
    return tuple(parts)


def _key_part(x, parts: list, tensors: list) -> bool:
    if isinstance(x, torch.Tensor):
        if not _IS_META(x):
            return False
        parts.append((tuple(x.shape), x.stride(), x.dtype, x.storage_offset(), x.requires_grad))
        tensors[0] += 1
        return True
    kind = type(x)
    if kind is list or kind is tuple:
        parts.append(kind)
        parts.append(len(x))
        return all(_key_part(item, parts, tensors) for item in x)
    if x is None or kind in (
        bool,
        int,
        float,
        str,
        torch.dtype,
        torch.device,
        torch.layout,
        torch.memory_format,
    ):
        parts.append((kind, x))  # the type too: 2 and 2.0 promote differently
        return True
    return False


def _layout_of(out):
    if isinstance(out, torch.Tensor):
        if not _IS_META(out) or out.requires_grad:
            return None
        return (tuple(out.shape), out.stride(), out.dtype)
    if type(out) in (tuple, list):
        parts = [_layout_of(o) for o in out]
        return None if any(p is None for p in parts) else (type(out), parts)
    return None


def _rebuild(layout):
    if type(layout[0]) is tuple:
        shape, stride, dtype = layout
        return torch.empty_strided(shape, stride, dtype=dtype, device=META)
    kind, parts = layout
    return kind(_rebuild(p) for p in parts)
