"""Applying a validated plan: slicing tensors in place and updating module attributes.

Tensors keep their identity: ``param.data`` is replaced by the gathered slice, so Parameter
objects, ``requires_grad``, dtype and device are unchanged. Every new tensor is computed before
the first one is assigned, so a failure while gathering leaves the model as it was.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    import numpy as np

    from .dependency import DependencyGraph


@dataclass(frozen=True)
class AttributeUpdate:
    module: str
    attr: str
    old: object
    new: object


def attribute_updates(dg: DependencyGraph, plan, masks: dict[int, np.ndarray]):
    """Module attributes (``out_channels``, ``in_features``, ``groups``, ...) after the plan."""
    g = dg.graph
    named = g.params | g.buffers
    planned = dg.planned_shapes(plan)
    modules = dict(dg.walk.modules)

    def shape_of(module_name: str, tensor: str):
        full = f"{module_name}.{tensor}" if module_name else tensor
        full = g.aliases.get(full, full)
        if full in planned:
            return planned[full]
        if full in named:
            return g.values[named[full]].shape
        return None

    declared: dict[tuple[str, str], int] = {}
    for module, attr, slot in dg.coupling_model.attr_slots:
        m = modules.get(module)
        if m is not None and getattr(m, attr, None) == dg.coupling_model.couplings.slot_sizes[slot]:
            declared[(module, attr)] = dg.slot_kept_size(slot, masks)

    updates: list[AttributeUpdate] = []

    def update(name: str, m: nn.Module, attr: str, new) -> None:
        old = getattr(m, attr)
        if new is not None and old != new:
            updates.append(AttributeUpdate(name, attr, old, new))

    for name, m in modules.items():
        w = shape_of(name, "weight")
        if isinstance(m, nn.modules.conv._ConvNd) and w is not None:
            groups = declared.get((name, "groups"), m.groups)
            update(name, m, "groups", groups)
            if m.transposed:
                update(name, m, "in_channels", w[0])
                update(name, m, "out_channels", w[1] * groups)
            else:
                update(name, m, "in_channels", w[1] * groups)
                update(name, m, "out_channels", w[0])
        elif isinstance(m, nn.Linear) and w is not None:
            update(name, m, "in_features", w[1])
            update(name, m, "out_features", w[0])
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = w or shape_of(name, "running_mean")
            update(name, m, "num_features", ref[0] if ref else None)
        elif isinstance(m, nn.GroupNorm):
            update(name, m, "num_groups", declared.get((name, "num_groups"), m.num_groups))
            update(name, m, "num_channels", w[0] if w else None)
        elif isinstance(m, nn.LayerNorm) and w is not None:
            update(name, m, "normalized_shape", tuple(w))
        elif isinstance(m, nn.Embedding) and w is not None:
            update(name, m, "embedding_dim", w[1])
        elif isinstance(m, nn.PReLU) and w is not None:
            update(name, m, "num_parameters", w[0])
        elif isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
            qkv = shape_of(name, "in_proj_weight")
            if qkv:
                update(name, m, "embed_dim", qkv[1])
                update(name, m, "kdim", qkv[1])
                update(name, m, "vdim", qkv[1])
                update(name, m, "num_heads", qkv[1] // m.head_dim)
        elif isinstance(m, nn.RNNBase):
            ih, hr = shape_of(name, "weight_ih_l0"), shape_of(name, "weight_hr_l0")
            gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
            update(name, m, "hidden_size", ih[0] // gates if ih else None)
            update(name, m, "input_size", ih[1] if ih else None)
            if m.proj_size and hr:
                update(name, m, "proj_size", hr[0])
        elif _is_pyg(m) and type(m).__name__ == "Linear" and w is not None and len(w) == 2:
            update(name, m, "in_channels", w[1])  # torch_geometric's Linear
            update(name, m, "out_channels", w[0])
        elif _is_pyg(m) and (att := shape_of(name, "att_src") or shape_of(name, "att")):
            if len(att) == 3:  # graph attention: att [1, heads, channels]
                update(name, m, "heads", att[1])
                update(name, m, "out_channels", att[2])
        elif type(m).__name__ == "Conv1D" and w is not None and len(w) == 2:
            update(name, m, "nx", w[0])  # transformers' GPT-2 linear: weight [in, out]
            update(name, m, "nf", w[1])
    updates += _attention_updates(dg, modules, masks)
    return updates


_HEADS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_HEADS_TIMES_DIM = ("all_head_size", "inner_dim", "split_size")
_HIDDEN = ("hidden_size", "embed_dim", "d_model", "n_embd")


def _attention_updates(dg: DependencyGraph, modules, masks) -> list[AttributeUpdate]:
    """Attention modules' head counts (and sizes derived from them), and the hidden size modules
    keep as an attribute, where the current value matches the traced one."""
    sizes = dg.coupling_model.couplings.slot_sizes
    kept = dg.slot_kept_size
    found: dict[tuple[str, str], object] = {}
    for call in dg.coupling_model.attention:
        h, hk = int(sizes[call.heads]), int(sizes[call.kv_heads])
        h2, hk2 = kept(call.heads, masks), kept(call.kv_heads, masks)
        known_dim = call.head_dim >= 0
        d = int(sizes[call.head_dim]) if known_dim else 0
        d2 = kept(call.head_dim, masks) if known_dim else 0
        m = modules.get(call.module)
        if m is None:
            continue
        for names, old, new in ((_HEADS, h, h2), (_KV_HEADS, hk, hk2),
                                (_HEADS_TIMES_DIM if known_dim else (), h * d, h2 * d2),
                                (("num_key_value_groups",), h // hk, h2 // max(hk2, 1))):
            for attr in names:
                if getattr(m, attr, None) == old and old != new:
                    found[(call.module, attr)] = (old, new)
    hidden = {(int(sizes[s]), kept(s, masks)) for s, kind in dg.coupling_model.kind_slots
              if kind == "hidden"}
    changed = {old: new for old, new in hidden if old != new}
    if len(changed) == 1 and len(hidden) == 1:
        [(old, new)] = changed.items()
        for name, m in modules.items():
            for attr in _HIDDEN:
                if (name, attr) not in found and getattr(m, attr, None) == old:
                    found[(name, attr)] = (old, new)
    return [AttributeUpdate(name, attr, old, new) for (name, attr), (old, new) in found.items()]


def _is_pyg(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch_geometric.")


def _set(model: nn.Module, update: AttributeUpdate, value, modules: dict) -> None:
    """``update.attr`` of module ``update.module`` set to ``value``; ``modules`` caches the
    lookups of a batch of updates (a module has a dozen of them)."""
    m = modules.get(update.module)
    if m is None and not modules:  # a batch's first lookup: one walk serves the rest
        modules.update(model.named_modules())
        m = modules.get(update.module)
    if m is None:  # (a module registered twice is walked under its first name only)
        m = modules[update.module] = model.get_submodule(update.module)
    setattr(m, update.attr, value)


def set_attributes(model: nn.Module, updates: list[AttributeUpdate], new: bool = True) -> None:
    """Every update's new (or old) value, in order (old values: in reverse order)."""
    modules: dict[str, nn.Module] = {}
    for u in (updates if new else reversed(updates)):
        _set(model, u, u.new if new else u.old, modules)


@contextlib.contextmanager
def temporary_attributes(model: nn.Module, updates: list[AttributeUpdate]):
    done = []
    modules: dict[str, nn.Module] = {}
    try:
        for u in updates:
            _set(model, u, u.new, modules)
            done.append(u)
        yield
    finally:
        for u in reversed(done):
            _set(model, u, u.old, modules)


def gather(t: torch.Tensor, dims: dict[int, torch.Tensor]) -> torch.Tensor:
    """The kept slices of ``t`` (a new tensor; bit-identical values)."""
    out = t
    for d, kept in sorted(dims.items()):
        out = out.index_select(d, kept.to(out.device))
    return out.contiguous()


def state_companions(model: nn.Module, plan, optimizer=None,
                     tensors: dict[str, torch.Tensor] | None = None
                     ) -> list[tuple[object, object, str]]:
    """Training state that must be sliced with the weights: ``(container, key, name)`` for every
    optimizer state tensor (momentum, Adam moments, ...) and Fisher statistic of a planned
    parameter. Refuses, before anything changes, state it cannot slice. ``tensors``: the
    model's parameters (and buffers) by name, when the caller has them."""
    from .importance import _FISHER_STATS

    tensors = dict(model.named_parameters()) if tensors is None else tensors
    out = []
    for name in plan:
        t = tensors.get(name)
        if t is None:
            continue
        if optimizer is not None and t in optimizer.state:
            for key, v in optimizer.state[t].items():
                if not isinstance(v, torch.Tensor) or v.dim() == 0:
                    continue  # step counters and other scalars do not depend on the shape
                if v.shape != t.shape:
                    raise InvalidArgumentError(
                        f"optimizer state {key!r} of {name} has shape {tuple(v.shape)}, not the "
                        f"parameter's {tuple(t.shape)}: depgraph_ext cannot slice it (factored "
                        "optimizers); rebuild the optimizer after pruning instead")
                out.append((optimizer.state[t], key, name))
        entry = _FISHER_STATS.get(t)
        if entry is not None and entry[0].shape == t.shape:
            out.append((entry, 0, name))
    return out


def apply_changes(model: nn.Module, plan, updates: list[AttributeUpdate],
                  in_place: bool = False, native: bool = False, companions=(),
                  tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Slice every planned tensor (and its ``.grad`` and the ``companions`` state of
    :func:`state_companions`) and set the new attributes.

    Tied names share one tensor object, so slicing the canonical name covers every alias.
    By default every new tensor is computed before the first one is assigned (``native``: in
    one batched ``gather_slices`` call), so a failure while slicing leaves the model as it was.
    ``in_place`` (native ops): compact each tensor inside its own memory, so the weights are
    never held twice; the plan is validated by then, but a failure during compaction cannot
    be undone. ``tensors``: the model's parameters and buffers by name, when the caller has
    them."""
    if tensors is None:
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    if in_place:
        _apply_in_place(tensors, plan)
        with torch.no_grad():
            for container, key, name in companions:
                container[key] = gather(container[key], plan[name])
        set_attributes(model, updates)
        return
    with torch.no_grad():
        sliced = {}
        datas = _gather_all(tensors, plan, native)
        for name, dims in plan.items():
            t = tensors[name]
            grad = t.grad if isinstance(t, nn.Parameter) and t.grad is not None else None
            sliced[name] = (datas[name], None if grad is None else gather(grad, dims))
        state = [gather(container[key], plan[name]) for container, key, name in companions]
        for name, (data, grad) in sliced.items():
            t = tensors[name]
            t.data = data
            if grad is not None:
                t.grad = grad
        for (container, key, _), new in zip(companions, state):
            container[key] = new
    set_attributes(model, updates)


def _gather_all(tensors: dict[str, torch.Tensor], plan, native: bool) -> dict[str, torch.Tensor]:
    """New tensors for every planned one; with ``native`` each round of dims is one batched
    ``gather_slices`` call over all tensors."""
    if not native:
        return {name: gather(tensors[name].data, dims) for name, dims in plan.items()}
    from . import ops

    current = {name: tensors[name].data for name in plan}
    rounds = max((len(dims) for dims in plan.values()), default=0)
    for r in range(rounds):
        by_device: dict[torch.device, list[str]] = {}  # one call per device: ops dispatch on it
        for n, dims in plan.items():
            if len(dims) > r:
                by_device.setdefault(current[n].device, []).append(n)
        for names in by_device.values():
            dims = [sorted(plan[n].items())[r][0] for n in names]
            kept = [sorted(plan[n].items())[r][1].to(current[n].device) for n in names]
            for n, out in zip(names, ops.gather_slices([current[n] for n in names], dims, kept)):
                current[n] = out
    return current


def _apply_in_place(tensors: dict[str, torch.Tensor], plan) -> None:
    from . import ops

    with torch.no_grad():
        # One compact_ call per device and round of dims, over every tensor at once: the
        # kernel moves different tensors on different threads (one call per tensor ran on
        # one thread: 7B shape 1.6 s).
        datas: dict[str, torch.Tensor] = {}
        for name, dims in plan.items():
            t = tensors[name]
            if not t.data.is_contiguous() or t.device.type == "meta":
                t.data = gather(t.data, dims)
            else:
                datas[name] = t.data
        rounds = max((len(plan[n]) for n in datas), default=0)
        for r in range(rounds):
            by_device: dict[torch.device, list[str]] = {}
            for n in datas:
                if len(plan[n]) > r:
                    by_device.setdefault(datas[n].device, []).append(n)
            for device, names in by_device.items():
                steps = [sorted(plan[n].items())[r] for n in names]
                outs = ops.compact_([datas[n] for n in names], [d for d, _ in steps],
                                    [kept.to(device) for _, kept in steps])
                datas.update(zip(names, outs))
        for name, data in datas.items():
            tensors[name].data = data
        for name, dims in plan.items():
            t = tensors[name]
            grad = getattr(t, "grad", None)
            if grad is not None and grad.shape != t.shape:
                t.grad = gather(grad, dims)
        # Everything is pruned; now give back the unused tail of each storage.
        tails = []
        for name in plan:
            data = tensors[name].data
            storage = data.untyped_storage()
            needed = data.numel() * data.element_size()
            if data.device.type == "cpu" and data.storage_offset() == 0 and (
                    storage.nbytes() > needed):
                tails.append((storage, needed))
        _release_tails(tails)


def _release_tails(tails: list) -> None:
    """Give back the bytes past ``needed`` of every ``(storage, needed)``: whole pages by
    ``madvise`` on two threads (freeing pages is the kernel's work, 0.4 s for 6.5 GB of 4 KiB
    pages on one thread; ctypes lets go of the GIL), small tails by reallocating."""
    big = []
    for storage, needed in tails:
        if _releasable(storage, needed):
            big.append((storage, needed))
        else:
            storage.resize_(needed)  # a new allocation and a copy of the kept part
    if len(big) < 2:
        for storage, needed in big:
            _release_pages(storage, needed)
        return
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda sn: _release_pages(*sn), big))
    for (storage, needed), ok in zip(big, done):
        if not ok:
            storage.resize_(needed)


_PAGE = 4096
_MADV_DONTNEED = 4
_LIBC = []


def _releasable(storage, needed: int) -> bool:
    """Linux, and at least 64 whole pages past ``needed`` (a smaller tail costs nothing worth
    saving to reallocate)."""
    if not sys.platform.startswith("linux"):
        return False
    start = -(-(storage.data_ptr() + needed) // _PAGE) * _PAGE
    end = (storage.data_ptr() + storage.nbytes()) // _PAGE * _PAGE
    return end - start >= 64 * _PAGE


def _release_pages(storage, needed: int) -> bool:
    """Give the whole pages past the first ``needed`` bytes of a CPU storage back to the
    operating system (``madvise(MADV_DONTNEED)``: no copy, the storage keeps its address and
    its size, and reads there would see zeros). False where that is not possible (not Linux,
    or less than a page to give back): the caller then shrinks the storage by reallocating."""
    if not _releasable(storage, needed):
        return False
    start = -(-(storage.data_ptr() + needed) // _PAGE) * _PAGE
    end = (storage.data_ptr() + storage.nbytes()) // _PAGE * _PAGE
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
        _LIBC[0].madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _LIBC[0].madvise(start, end - start, _MADV_DONTNEED) == 0