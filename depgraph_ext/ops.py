"""The native op library ``torch.ops.depgraph_ext`` (csrc/ops): wrappers, fake kernels,
autograd, and a plain PyTorch reference for every op.

``grouped_norm`` scores many tensors' slices per unit in one fused pass (``index_sums`` is its
first pass alone: per-index sums in fp64); ``gather_slices`` copies kept slices of many tensors
in one call; ``compact_`` does it in place, in each tensor's own memory. The references are
what the python backend runs and what the tests compare against; :func:`per_index_sums` is the
one place the sum of |w|^p is written in Python.
"""

from __future__ import annotations

import importlib.util
import mmap
import re
from collections.abc import Sequence

import torch

from . import torch_range

_REBUILD = (
    "Rebuild it against this torch with `pip install --no-build-isolation -e .` (or "
    "install the torch it was built for), or use backend='python'."
)
# The string ops.cpp puts in the library's file: the torch version it was built for.
_BUILT_FOR = re.compile(rb"depgraph_ext op library built for torch ([^\x00]*)\x00")


def built_for(path: str) -> str | None:
    """The torch version the op library file at ``path`` was built for, read from the file
    without loading it; None when the file names none."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        match = _BUILT_FOR.search(data)
        return match.group(1).decode(errors="replace") if match else None


def _load() -> str | None:
    """Load the op library; None, or why it cannot be used. The library is tied to the torch it
    was compiled against (torch's C++ ABI changes between releases), so it is loaded only under
    a supported torch and only when the file says it was built for this very version: a
    library for another torch is refused before any of its code runs."""
    unsupported = torch_range.unsupported(torch.__version__)
    if unsupported:
        return f"depgraph_ext's op library is not loaded: {unsupported}. Or use backend='python'."
    spec = importlib.util.find_spec(f"{__package__}._ops")
    if spec is None or not spec.origin:
        return (
            f"depgraph_ext's op library is not built; this is torch {torch.__version__}. {_REBUILD}"
        )
    library_torch = built_for(spec.origin)
    if library_torch != torch.__version__:
        return (
            f"depgraph_ext's op library was built for torch {library_torch or 'unknown'}, and "
            f"this is torch {torch.__version__}. {_REBUILD}"
        )
    try:
        from . import _ops  # noqa: F401  (loading the library registers the ops)
    except ImportError as exc:
        return (
            f"depgraph_ext's op library did not load ({exc}); this is torch "
            f"{torch.__version__}. {_REBUILD}"
        )
    return missing_ops(torch.ops.depgraph_ext)


# Every op of the library (ops.cpp): a library built from an older checkout lacks some.
OPS = (
    "build_info",
    "grouped_norm",
    "index_sums",
    "gather_slices",
    "compact_",
    "expand_",
    "scatter_slices_",
    "fill_slices_",
    "gather_slices_into",
    "copy_with_fills_",
    "release_tails_",
    "row_column_sums",
    "units_from_sums",
)


def missing_ops(namespace) -> str | None:
    """None, or which ops a loaded library lacks (it was built from an older checkout)."""
    missing = [name for name in OPS if not hasattr(namespace, name)]
    if not missing:
        return None
    return (
        f"depgraph_ext's op library is out of date: it has no {', '.join(missing)} (built from "
        f"an older checkout). {_REBUILD}"
    )


_LOAD_ERROR: str | None = _load()

REDUCTIONS = ("sum", "mean", "max")


def available() -> bool:
    return _LOAD_ERROR is None


def load_error() -> str | None:
    return _LOAD_ERROR


def build_info() -> str:
    """What the op library was compiled with (devices, torch and CUDA versions)."""
    _require()
    return torch.ops.depgraph_ext.build_info()


def _require() -> None:
    if _LOAD_ERROR is not None:
        raise ImportError(_LOAD_ERROR)


def grouped_norm(
    tensors: Sequence[torch.Tensor],
    dims: Sequence[int],
    unit_maps: Sequence[torch.Tensor],
    num_units: int,
    p: int = 2,
    reduce: str = "sum",
) -> torch.Tensor:
    """One score per unit over every member slice: sum of |w|^p, combined over members.

    Member i is ``tensors[i]`` along ``dims[i]``; ``unit_maps[i][j]`` is the unit of index j
    (-1: none). Result: fp32 ``[num_units]`` (fp64 if any member is fp64). Differentiable.
    """
    _require()
    return torch.ops.depgraph_ext.grouped_norm(
        list(tensors), list(dims), list(unit_maps), num_units, p, reduce
    )


def index_sums(tensors: Sequence[torch.Tensor], dims: Sequence[int], p: int = 2) -> torch.Tensor:
    """fp64 per-index sums of |w|^p: for member i, one entry per index of ``dims[i]`` (every
    other dim summed); the members' sums back to back, on the members' device."""
    _require()
    return torch.ops.depgraph_ext.index_sums(list(tensors), list(dims), p)


def row_column_sums(tensor: torch.Tensor, p: int = 2) -> torch.Tensor:
    """``index_sums([tensor, tensor], [0, 1], p)`` (bitwise), computed on the calling thread
    alone, in one read of a Linear's or a small-kernel conv's weight (CPU)."""
    _require()
    return torch.ops.depgraph_ext.row_column_sums(tensor, p)


def units_from_sums(
    sums: Sequence[torch.Tensor], unit_maps: Sequence[torch.Tensor], num_units: int, reduce: str
) -> torch.Tensor:
    """``grouped_norm``'s mapping of per-index sums (``sums[i]``: fp64, as ``index_sums``
    gives member i's) to units, reduced over members: fp64 ``[num_units]`` (CPU). Cast to
    ``grouped_norm``'s result type, it is ``grouped_norm`` of the members bit for bit."""
    _require()
    return torch.ops.depgraph_ext.units_from_sums(list(sums), list(unit_maps), num_units, reduce)


def gather_slices(
    tensors: Sequence[torch.Tensor], dims: Sequence[int], kept: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """New tensors holding the ``kept`` indices of each tensor along its dim (bit-exact)."""
    _require()
    return torch.ops.depgraph_ext.gather_slices(list(tensors), list(dims), list(kept))


def gather_slices_into(
    tensors: Sequence[torch.Tensor],
    dims: Sequence[int],
    kept: Sequence[torch.Tensor],
    outs: Sequence[torch.Tensor],
) -> None:
    """:func:`gather_slices` into given tensors: ``outs[i]`` (contiguous, on the CPU, of the
    gathered shape, apart from ``tensors[i]``'s memory) receives the kept slices."""
    _require()
    torch.ops.depgraph_ext.gather_slices_into(list(tensors), list(dims), list(kept), list(outs))


def copy_with_fills_(
    outs: Sequence[torch.Tensor],
    tensors: Sequence[torch.Tensor],
    dims: Sequence[int],
    indices: Sequence[torch.Tensor],
    values: Sequence[float],
) -> None:
    """``outs[i]`` (contiguous, on the CPU, of ``tensors[i]``'s shape and dtype) becomes a copy
    of ``tensors[i]`` whose slices at ``indices[i]`` (strictly increasing) along its dim hold
    ``values[i]``: ``copy_`` then ``index_fill_``, in one pass that never reads those slices."""
    _require()
    torch.ops.depgraph_ext.copy_with_fills_(
        list(outs), list(tensors), list(dims), list(indices), [float(v) for v in values]
    )


def compact_(
    tensors: Sequence[torch.Tensor], dims: Sequence[int], kept: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Move the kept slices (sorted indices) to the start of each contiguous tensor's memory
    and return views of that prefix with the new shapes. No second copy is allocated."""
    _require()
    torch.ops.depgraph_ext.compact_(list(tensors), list(dims), list(kept))
    out = []
    for t, d, k in zip(tensors, dims, kept):
        shape = list(t.shape)
        shape[d] = int(k.numel())
        out.append(t.view(-1)[: _numel(shape)].view(shape))
    return out


def release_tails_(tensors: Sequence[torch.Tensor]) -> None:
    """After :func:`compact_`: each tensor (on the CPU, contiguous, at the start of a storage
    of its own) is the prefix of its storage, which shrinks to it: its whole pages past the
    tensor go back to the operating system (Linux) and its size becomes the tensor's bytes,
    without a copy (``torch.save`` then writes the tensor's bytes only)."""
    _require()
    torch.ops.depgraph_ext.release_tails_(list(tensors))


def scatter_slices_(
    tensors: Sequence[torch.Tensor],
    dims: Sequence[int],
    indices: Sequence[torch.Tensor],
    sources: Sequence[torch.Tensor],
) -> None:
    """Write ``sources[i]``'s slices at ``indices[i]`` (strictly increasing) of each contiguous
    CPU tensor along its dim, in place: ``index_copy_``, bit for bit, in one call."""
    _require()
    torch.ops.depgraph_ext.scatter_slices_(list(tensors), list(dims), list(indices), list(sources))


def expand_(
    tensors: Sequence[torch.Tensor], dims: Sequence[int], kept: Sequence[torch.Tensor]
) -> None:
    """Undo :func:`compact_` on the same (contiguous CPU) tensors and kept indices: the kept
    slices go back to their places; the slices between them hold what they held after
    compact_ (put the removed ones back with :func:`scatter_slices_`)."""
    _require()
    torch.ops.depgraph_ext.expand_(list(tensors), list(dims), list(kept))


def fill_slices_(
    tensors: Sequence[torch.Tensor],
    dims: Sequence[int],
    indices: Sequence[torch.Tensor],
    values: Sequence[float],
) -> None:
    """Set the slices at ``indices[i]`` (strictly increasing) of each contiguous CPU tensor
    along its dim to ``values[i]``, in place: ``index_fill_`` in one call."""
    _require()
    torch.ops.depgraph_ext.fill_slices_(
        list(tensors), list(dims), list(indices), [float(v) for v in values]
    )


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# -- references (plain PyTorch) -------------------------------------------------------------------
_BLOCK = 1 << 24  # elements converted to fp64 at a time


def per_index_sums(t: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """fp64 ``[t.shape[dim]]``: the sum of |t|^p over every other dim, for each index of ``dim``
    (differentiable; a large tensor is converted to fp64 a block of rows at a time)."""
    if t.dim() == 0:
        raise ValueError("per_index_sums needs a tensor with at least one dim")
    dim = dim % t.dim()
    if t.numel() == 0:
        return torch.zeros(t.shape[dim], dtype=torch.float64, device=t.device)
    rows = max(1, _BLOCK // max(1, t[0].numel()))
    parts, total = [], None
    for start in range(0, t.shape[0], rows):
        w = t[start : start + rows].to(torch.float64)
        w = w.abs() if p == 1 else w.square()
        others = [d for d in range(w.dim()) if d != dim]
        s = w.sum(dim=others) if others else w
        if dim == 0:
            parts.append(s)
        else:
            total = s if total is None else total + s
    return torch.cat(parts) if dim == 0 else total


def index_sums_reference(tensors, dims, p: int = 2) -> torch.Tensor:
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(
        [per_index_sums(t.detach(), d, p).to(tensors[0].device) for t, d in zip(tensors, dims)]
    )


def row_column_sums_reference(tensor: torch.Tensor, p: int = 2) -> torch.Tensor:
    return index_sums_reference([tensor, tensor], [0, 1], p)


def units_from_sums_reference(sums, unit_maps, num_units: int, reduce: str) -> torch.Tensor:
    out = torch.zeros(num_units, dtype=torch.float64)
    count = torch.zeros(num_units, dtype=torch.int64)
    for s, m in zip(sums, unit_maps):
        m = m.to("cpu", torch.long)
        valid = m >= 0
        contribution = torch.zeros(num_units, dtype=torch.float64)
        contribution.index_add_(0, m[valid], s.to("cpu", torch.float64)[valid])
        hit = torch.zeros(num_units, dtype=torch.bool)
        hit[m[valid]] = True
        if reduce == "max":
            out = torch.where(
                hit, torch.where(count > 0, out.maximum(contribution), contribution), out
            )
        else:
            out = torch.where(hit, out + contribution, out)
        count += hit
    return out / count.clamp_min(1) if reduce == "mean" else out


def member_contributions(tensors, dims, unit_maps, num_units: int, p: int):
    """[members, num_units] float64 contributions and a bool mask of the units each touches."""
    contributions = torch.zeros(len(tensors), num_units, dtype=torch.float64)
    touched = torch.zeros(len(tensors), num_units, dtype=torch.bool)
    for i, (t, d, m) in enumerate(zip(tensors, dims, unit_maps)):
        per_index = per_index_sums(t.detach(), d, p).cpu()
        m = m.to("cpu", torch.long)
        valid = m >= 0
        contributions[i].index_add_(0, m[valid], per_index[valid])
        touched[i, m[valid]] = True
    return contributions, touched


def grouped_norm_reference(
    tensors, dims, unit_maps, num_units: int, p: int = 2, reduce: str = "sum"
) -> torch.Tensor:
    contributions, touched = member_contributions(tensors, dims, unit_maps, num_units, p)
    if reduce == "max":
        out = contributions.masked_fill(~touched, float("-inf")).amax(0)
        out = torch.where(touched.any(0), out, torch.zeros_like(out))
    else:
        out = contributions.sum(0)
        if reduce == "mean":
            out = out / touched.sum(0).clamp_min(1)
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    device = tensors[0].device if tensors else torch.device("cpu")
    return out.to(device=device, dtype=dtype)


def gather_slices_reference(tensors, dims, kept) -> list[torch.Tensor]:
    return [
        t.index_select(d, k.to(t.device, torch.long)).contiguous()
        for t, d, k in zip(tensors, dims, kept)
    ]


def scatter_slices_reference(tensors, dims, indices, sources) -> None:
    for t, d, k, s in zip(tensors, dims, indices, sources):
        t.index_copy_(d, k.to(t.device, torch.long), s)


def gather_slices_into_reference(tensors, dims, kept, outs) -> None:
    for t, d, k, out in zip(tensors, dims, kept, outs):
        torch.index_select(t, d, k.to(t.device, torch.long), out=out)


def copy_with_fills_reference(outs, tensors, dims, indices, values) -> None:
    for out, t, d, k, v in zip(outs, tensors, dims, indices, values):
        out.copy_(t).index_fill_(d, k.to(t.device, torch.long), v)


def release_tails_reference(tensors) -> None:
    """Each storage cut to its tensor by reallocating (a copy of the kept part). (The op has
    no fake kernel: a storage's size means nothing under fake tensors.)"""
    for t in tensors:
        t.untyped_storage().resize_(t.numel() * t.element_size())


def fill_slices_reference(tensors, dims, indices, values) -> None:
    for t, d, k, v in zip(tensors, dims, indices, values):
        t.index_fill_(d, k.to(t.device, torch.long), v)


# -- fake kernels and autograd --------------------------------------------------------------------
if _LOAD_ERROR is None:

    @torch.library.register_fake("depgraph_ext::grouped_norm")
    def _grouped_norm_fake(tensors, dims, unit_maps, num_units, p, reduce):
        dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
        return tensors[0].new_empty((num_units,), dtype=dtype)

    @torch.library.register_fake("depgraph_ext::index_sums")
    def _index_sums_fake(tensors, dims, p):
        total = sum(t.shape[d] for t, d in zip(tensors, dims))
        if not tensors:
            return torch.empty(0, dtype=torch.float64)
        return tensors[0].new_empty((total,), dtype=torch.float64)

    @torch.library.register_fake("depgraph_ext::row_column_sums")
    def _row_column_sums_fake(tensor, p):
        return tensor.new_empty((tensor.shape[0] + tensor.shape[1],), dtype=torch.float64)

    @torch.library.register_fake("depgraph_ext::units_from_sums")
    def _units_from_sums_fake(sums, unit_maps, num_units, reduce):
        return torch.empty((num_units,), dtype=torch.float64)

    @torch.library.register_fake("depgraph_ext::gather_slices")
    def _gather_slices_fake(tensors, dims, kept):
        out = []
        for t, d, k in zip(tensors, dims, kept):
            shape = list(t.shape)
            shape[d] = k.shape[0]
            out.append(t.new_empty(shape))
        return out

    @torch.library.register_fake("depgraph_ext::compact_")
    def _compact_fake(tensors, dims, kept):
        return None

    @torch.library.register_fake("depgraph_ext::scatter_slices_")
    def _scatter_slices_fake(tensors, dims, indices, sources):
        return None

    @torch.library.register_fake("depgraph_ext::expand_")
    def _expand_fake(tensors, dims, kept):
        return None

    @torch.library.register_fake("depgraph_ext::fill_slices_")
    def _fill_slices_fake(tensors, dims, indices, values):
        return None

    @torch.library.register_fake("depgraph_ext::gather_slices_into")
    def _gather_slices_into_fake(tensors, dims, kept, outs):
        return None

    @torch.library.register_fake("depgraph_ext::copy_with_fills_")
    def _copy_with_fills_fake(outs, tensors, dims, indices, values):
        return None

    def _setup_context(ctx, inputs, output):
        tensors, dims, unit_maps, num_units, p, reduce = inputs
        ctx.save_for_backward(*tensors, *unit_maps)
        ctx.count, ctx.dims, ctx.num_units, ctx.p, ctx.reduce = (
            len(tensors),
            list(dims),
            num_units,
            p,
            reduce,
        )

    def _backward(ctx, grad):
        saved = ctx.saved_tensors
        tensors, maps = saved[: ctx.count], saved[ctx.count :]
        grad = grad.detach().to(torch.float64).cpu()
        contributions, touched = member_contributions(tensors, ctx.dims, maps, ctx.num_units, ctx.p)
        if ctx.reduce == "mean":
            grad = grad / touched.sum(0).clamp_min(1)
        grads = []
        for i, (t, d, m) in enumerate(zip(tensors, ctx.dims, maps)):
            if not t.requires_grad:
                grads.append(None)
                continue
            g_unit = grad
            if ctx.reduce == "max":  # only the members that attain the max
                best = contributions.masked_fill(~touched, float("-inf")).amax(0)
                g_unit = torch.where(touched[i] & (contributions[i] == best), grad, 0.0)
            m = m.to("cpu", torch.long)
            per_index = torch.where(m >= 0, g_unit[m.clamp_min(0)], 0.0).to(t.device, t.dtype)
            shape = [1] * t.dim()
            shape[d % t.dim()] = -1
            local = 2 * t.detach() if ctx.p == 2 else t.detach().sign()
            grads.append(local * per_index.view(shape))
        return grads, None, [None] * len(maps), None, None, None

    torch.library.register_autograd(
        "depgraph_ext::grouped_norm", _backward, setup_context=_setup_context
    )
