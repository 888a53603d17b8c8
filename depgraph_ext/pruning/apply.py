"""Applying a validated plan: slicing tensors (and the training state that goes with them) and
setting module attributes and config fields.

Tensors keep their identity: ``param.data`` is replaced by the gathered slice, so Parameter
objects, ``requires_grad``, dtype and device are unchanged. Every new tensor is computed before
the first one is assigned, so a failure while gathering leaves the model as it was
(``in_place``: weights are compacted inside their own memory instead, never held twice).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..errors import InvalidArgumentError
from ..graph.computed import refresh_hooked
from ..graph.method_caches import clear_method_caches
from .attributes import set_attributes
from .importance import fisher_entry
from .release import release_tails


def gather(t: torch.Tensor, dims: dict[int, torch.Tensor]) -> torch.Tensor:
    """The kept slices of ``t`` (a new tensor; bit-identical values), laid out as ``t`` is."""
    out = t
    for d, kept in sorted(dims.items()):
        out = out.index_select(d, kept.to(out.device))
    return in_layout_of(t, out)


def set_data(t: torch.Tensor, data: torch.Tensor) -> None:
    """``t.data = data``, and where that changes ``t``'s shape, a gradient accumulator autograd
    keeps for ``t`` forgotten first: a graph still alive (the last training step's loss) holds
    one, with the old shape, and torch reuses it, so the next backward would fail ("invalid
    gradient ... expected shape compatible with" the old shape). Torch drops it only where
    the dtype or device changes: a moment's empty tensor of another dtype does that."""
    if t.requires_grad and t.shape != data.shape:
        other = torch.float64 if t.dtype == torch.float32 else torch.float32
        t.data = torch.empty(0, dtype=other, device=data.device)
    t.data = data


def _dim_order(t: torch.Tensor) -> list[int] | None:
    """The dims of ``t`` from the outermost in memory to the innermost, where ``t`` is dense
    in another order than its own (``channels_last``); None where it is contiguous, or not
    dense (a view with gaps)."""
    if t.is_contiguous() or t.dim() < 2:
        return None
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), -t.size(d)))
    expected = 1
    for d in reversed(order):
        if t.size(d) != 1 and t.stride(d) != expected:
            return None
        expected *= t.size(d)
    return order


def in_layout_of(original: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``new`` (contiguous, of ``original``'s rank) in ``original``'s memory layout: a model
    set to ``channels_last`` stays so where it is pruned; a sparse tensor as it is."""
    if new.layout != torch.strided:  # (a sparse gradient, an nn.Embedding(sparse=True)'s)
        return new
    order = _dim_order(original)
    if order is None:
        return new.contiguous()
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return new.permute(order).contiguous().permute(inverse)


def state_companions(
    model: nn.Module, plan, optimizer=None, tensors: dict[str, torch.Tensor] | None = None
) -> list[tuple[object, object, str]]:
    """Training state that must be sliced with the weights: ``(container, key, name)`` for every
    optimizer state tensor (momentum, Adam moments, ...) and Fisher statistic of a planned
    parameter. Refuses, before anything changes, state it cannot slice. ``tensors``: the
    model's parameters (and buffers) by name, when the caller has them."""
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
                        "optimizers); rebuild the optimizer after pruning instead"
                    )
                out.append((optimizer.state[t], key, name))
        entry = fisher_entry(t)
        if entry is not None and entry[0].shape == t.shape:
            out.append((entry, 0, name))
    return out


@torch.inference_mode(False)  # (tensors made under it could never be trained again)
def apply_changes(
    model: nn.Module,
    plan,
    updates,
    in_place: bool = False,
    native: bool = False,
    companions=(),
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Slice every tensor of the tensor plan ``plan`` (and its ``.grad`` and the
    ``companions`` state of :func:`state_companions`) and set the attribute ``updates``.

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
        apply_in_place(tensors, plan)
        with torch.no_grad():
            for container, key, name in companions:
                container[key] = gather(container[key], plan[name])
        set_attributes(model, updates)
        refresh_hooked(model, plan)
        clear_method_caches(model.modules())  # (results of the unpruned weights and widths)
        return
    with torch.no_grad():
        sliced = {}
        datas = gather_all(tensors, plan, native)
        for name, dims in plan.items():
            t = tensors[name]
            grad = t.grad if isinstance(t, nn.Parameter) and t.grad is not None else None
            data = in_layout_of(t.data, datas[name])
            sliced[name] = (data, None if grad is None else gather(grad, dims))
        state = [gather(container[key], plan[name]) for container, key, name in companions]
        for name, (data, grad) in sliced.items():
            t = tensors[name]
            set_data(t, data)
            if grad is not None:
                t.grad = grad
        for (container, key, _), new in zip(companions, state):
            container[key] = new
    set_attributes(model, updates)
    refresh_hooked(model, plan)
    clear_method_caches(model.modules())  # (results of the unpruned weights and widths)


def gather_all(tensors: dict[str, torch.Tensor], plan, native: bool) -> dict[str, torch.Tensor]:
    """New tensors for every planned one; with ``native`` each round of dims is one batched
    ``gather_slices`` call over all tensors."""
    if not native:
        return {name: gather(tensors[name].data, dims) for name, dims in plan.items()}
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


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def _shared_storages(tensors) -> set[tuple]:
    """The storages (device, address) more than one of ``tensors`` views."""
    seen: set[tuple] = set()
    shared: set[tuple] = set()
    for t in tensors:
        if t.device.type == "meta" or t.untyped_storage().nbytes() == 0:
            continue
        key = _storage_key(t)
        (shared if key in seen else seen).add(key)
    return shared


def apply_in_place(tensors: dict[str, torch.Tensor], plan) -> None:
    """Compact every planned tensor inside its own memory and give the tail back."""
    with torch.no_grad():
        # One compact_ call per device and round of dims, over every tensor at once: the
        # kernel moves different tensors on different threads (one call per tensor ran on
        # one thread: 7B shape 1.6 s).
        datas: dict[str, torch.Tensor] = {}
        shared = _shared_storages(tensors.values())
        for name, dims in plan.items():
            t = tensors[name]
            if not t.data.is_contiguous() or t.device.type == "meta" or _storage_key(t) in shared:
                # (a storage another tensor of the model views too, parameters cut from
                # one block: compacted and shortened in place, it would move and cut off
                # what the others hold; this one gets memory of its own instead)
                set_data(t, gather(t.data, dims))
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
                outs = ops.compact_(
                    [datas[n] for n in names],
                    [d for d, _ in steps],
                    [kept.to(device) for _, kept in steps],
                )
                datas.update(zip(names, outs))
        for name, data in datas.items():
            set_data(tensors[name], data)
        for name, dims in plan.items():
            t = tensors[name]
            grad = getattr(t, "grad", None)
            if grad is not None and grad.shape != t.shape:
                t.grad = gather(grad, dims)
        # Everything is pruned; now give back the unused tail of each storage.
        release_tails(
            [
                data
                for data in (tensors[name].data for name in plan)
                if data.device.type != "meta"
                and data.storage_offset() == 0
                and data.is_contiguous()
                and data.untyped_storage().nbytes() > data.numel() * data.element_size()
            ]
        )
