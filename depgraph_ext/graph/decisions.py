"""Ops whose results the data decides, and how a trace records and replays them.

Most ops' result sizes follow from their inputs' sizes. A few read the values instead: the
count of a ``nonzero``, of a boolean mask's selection, of ``unique``, of a custom op such as
``torchvision.ops.nms`` (how many boxes survive, on this input, with these weights), and the
Python numbers ``.item()`` hands the model's code (a ``min(k, n)`` of the candidates left, a
branch on a tensor). Such a call is a *decision* of the data; every size computed from it, in
ATen ops or in the model's Python code, is the data's too.

A trace on real tensors records every decision with the inputs that decided (:class:`Decision`;
a selection's boolean mask, not the tensor it selects from) and its result. A trace of the
pruned shapes replays them, so the data decides every size exactly as it did for the original
(the same candidates pass the threshold, NMS keeps the same boxes) and the sizes the plan
changes are compared with nothing else moving:

- on meta tensors (no data, no arithmetic): a decision whose inputs have the original's shapes
  returns placeholders of the original's result (its Python number, for ``.item()``); a
  selection by boolean masks is given the positions of the original's True values instead;
- on real tensors: every deciding input of the original's shape is given the original's
  values, and the op runs.

Which dims are the data's (the graph stage's ``DependencyGraph.dynamic_slots``) is seeded from
the recorded decisions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
)

DATA_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException)

# ATen packets whose only deciding inputs are boolean masks (an integer index's shape, not its
# values, gives the result's size).
_MASKED = frozenset({"aten.index", "aten._unsafe_index"})
_BOOL = (torch.bool, torch.uint8)


@dataclass(frozen=True)
class Decision:
    """One call whose result the data decided: the op, the module that ran it, the line of the
    model's code that ran it, how many deciding calls of that op the module made from that
    line before it, the tensors that decided (their positions among the call's flattened
    arguments, and copies of their values), and the node it made (None: it returned no
    tensor, as ``.item()`` does). (The line tells a model's own decisions from those a kernel
    makes on real tensors only: ``F.one_hot`` reads its indices' range there, not on meta.)"""

    op: Any  # torch._ops.OpOverload
    module: str
    occurrence: int
    leaves: int  # how many flattened arguments the call had
    inputs: tuple[tuple[int, torch.Tensor], ...]
    shapes: tuple[tuple[int, tuple[int, ...]], ...]  # every tensor argument's: (position, shape)
    result: Any  # what it returned, tensors copied (None for a selection by masks)
    node: int | None
    line: tuple[str, int] | None = None  # (file, line) of the model's code
    # the trace's value index of every tensor argument, as ``shapes`` orders them (None: a
    # tensor the trace did not know, made outside its ops: no plan changes its shape)
    values: tuple[int | None, ...] = ()

    @property
    def key(self) -> tuple[Any, str, tuple[str, int] | None, int]:
        return (self.op, self.module, self.line, self.occurrence)

    @property
    def replay_values(self) -> tuple[int | None, ...]:
        """The value indices of the tensors a replay on meta needs at the original's shapes
        (:func:`without_data`): a selection's boolean masks, every tensor argument of any
        other decision."""
        if str(self.op.overloadpacket) not in _MASKED:
            return self.values
        masks = {i for i, _ in self.inputs}
        return tuple(v for (i, _), v in zip(self.shapes, self.values) if i in masks)


# op -> what the data decides of its results (any call): "sizes", "value" (a Python number),
# or "" (nothing)
_KNOWN: dict[Any, str] = {}


def decides(func, args, kwargs, what: tuple[str, ...] = ("sizes", "value")) -> bool:
    """Whether the data decides this call's result sizes or its Python value (``what``: which
    of the two count): ATen ops tagged ``dynamic_output_shape`` (a selection by integer
    indices only is not: the index's shape decides) or ``data_dependent_output``, and ops of
    other libraries whose fake kernel cannot say their result's size without the data (asked
    once per op, on this call's inputs)."""
    known = _KNOWN.get(func)
    if known is None:
        tags = getattr(func, "tags", ())
        if torch.Tag.dynamic_output_shape in tags:
            known = "sizes"
        elif torch.Tag.data_dependent_output in tags:
            known = "value"
        elif getattr(func, "namespace", "aten") in ("aten", "prims"):
            known = ""
        else:
            known = "sizes" if _fake_kernel_needs_data(func, args, kwargs) else ""
        _KNOWN[func] = known
    if known not in what:
        return False
    if str(func.overloadpacket) in _MASKED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype in _BOOL for i in indices)
    return True


def _fake_kernel_needs_data(func, args, kwargs) -> bool:
    """Run the op's fake kernel on fake copies of the inputs: one that raises for want of the
    data (torch.library's ``new_dynamic_size``) says the data decides. Any other failure (no
    fake kernel) says nothing: the op's sizes are then compared like any other's."""
    try:
        with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
            warnings.simplefilter("ignore")  # the kernel's own (deprecations, say)
            fargs, fkwargs = pytree.tree_map_only(torch.Tensor, mode.from_tensor, (args, kwargs))
            func(*fargs, **fkwargs)
    except DATA_DEPENDENT:
        return True
    except Exception:
        return False
    return False


def _leaves(args, kwargs) -> list:
    """``pytree.tree_leaves((args, kwargs))``, in one pass where no argument holds others
    (an ``.item()``'s one tensor: a decoder's loop makes thousands of them)."""
    flat = [*args, *kwargs.values()]
    if any(isinstance(x, _HOLDERS) for x in flat):
        return pytree.tree_leaves((args, kwargs))
    return flat


_HOLDERS = (list, tuple, dict)


def snapshot(func, args, kwargs, value_index) -> tuple:
    """What a :class:`Decision` keeps of a call's arguments: their flattened count, copies of
    the deciding tensors with their positions, every tensor's shape by position, and every
    tensor's value index (``value_index(t)``: the trace's)."""
    flat = _leaves(args, kwargs)
    masked = str(func.overloadpacket) in _MASKED
    inputs = tuple(
        (i, x.detach().clone())
        for i, x in enumerate(flat)
        if isinstance(x, torch.Tensor) and (not masked or (i > 0 and x.dtype in _BOOL))
    )
    shapes = tuple((i, tuple(x.shape)) for i, x in enumerate(flat) if isinstance(x, torch.Tensor))
    values = tuple(value_index(x) for x in flat if isinstance(x, torch.Tensor))
    return len(flat), inputs, shapes, values


def result_copy(func, out):
    """The result a :class:`Decision` keeps: tensors copied (none for a selection by masks,
    whose replay needs only the masks)."""
    if str(func.overloadpacket) in _MASKED:
        return None
    if type(out) in _NUMBERS:  # (an .item()'s)
        return out
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), out)


_NUMBERS = frozenset({bool, int, float, complex})


def without_data(args, kwargs, decision: Decision, device: torch.device):
    """A decision replayed where there is no data (a meta trace): ``("result", r)``, the
    original's result as placeholders on ``device`` (Python numbers as they were), when every
    tensor argument has the original's shape; for a selection by boolean masks, ``("args",
    (args, kwargs))``, each mask given as the positions of the original's True values (one
    index tensor per dim it covers), when the masks have the original's shapes; else None."""
    flat, spec = pytree.tree_flatten((args, kwargs))
    if len(flat) != decision.leaves:
        return None
    if decision.result is not None:
        if any(
            not isinstance(flat[i], torch.Tensor) or tuple(flat[i].shape) != shape
            for i, shape in decision.shapes
        ):
            return None
        placeholder = lambda t: torch.empty_strided(  # noqa: E731
            t.shape, t.stride(), dtype=t.dtype, device=device
        )
        return "result", pytree.tree_map_only(torch.Tensor, placeholder, decision.result)
    positions = dict(decision.inputs)
    self_, indices = (args[0], args[1]) if len(args) > 1 else (args[0], kwargs["indices"])
    new_indices, k = [], 1  # k: flattened position of the first index
    for ix in indices:
        mask = positions.get(k)
        if mask is None:
            new_indices.append(ix)
        elif not isinstance(ix, torch.Tensor) or ix.shape != mask.shape:
            return None
        else:
            count = int(mask.count_nonzero())
            new_indices += [torch.empty(count, dtype=torch.int64, device=device)] * mask.dim()
        k += 1
    return "args", ((self_, new_indices), {})


def replayed(args, kwargs, decision: Decision) -> tuple[tuple, dict]:
    """The call's arguments with every deciding tensor of the original's shape and dtype
    replaced by the original's values (on the argument's device); the others as they are."""
    flat, spec = pytree.tree_flatten((args, kwargs))
    if len(flat) != decision.leaves:
        return args, kwargs
    for i, original in decision.inputs:
        x = flat[i]
        if isinstance(x, torch.Tensor) and x.shape == original.shape and x.dtype == original.dtype:
            flat[i] = original.to(x.device)
    return pytree.tree_unflatten(flat, spec)
