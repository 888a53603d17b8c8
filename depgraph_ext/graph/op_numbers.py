"""The numbers an op computes with, as opposed to the sizes it is given.

A plan's validation trace shows that the pruned shapes run; it cannot show by shapes alone
that the values stay those of the original with the removed units zeroed. The model's code
may compute a number from a size it read and compute with it: torchvision's RAFT divides its
correlation volume by ``torch.sqrt(torch.tensor(num_channels))``, ``num_channels`` read from a
feature map whose channels a plan prunes. Such a number reaches ATen as an argument (a Python
number given for a Scalar, float or Tensor argument: ``aten.div.Tensor(x, 128)``) or as a small
tensor made from Python values (``aten.lift_fresh`` of ``tensor(128)``). Traced with the same
inputs, such numbers are the same in the original and the pruned trace unless they come from
a size the plan changes (or from the data, which a model that reads values may bring: those
are not compared). :func:`op_numbers` lists them for one call, so that the two traces can be
compared op by op.

Sizes are not numbers here: integer (list) arguments are dims and sizes, and the factories
whose numbers are their result's size (``arange``, ``linspace`` ...) show a change in shapes.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _disable_current_modes

# Constants up to this many elements are remembered by value (a scale, a few positions).
SMALL_CONSTANT = 64
# Factories whose number arguments decide their result's size, not (only) its values.
_SIZED_FACTORIES = frozenset(
    {"arange", "linspace", "logspace", "range", "randperm", "eye", "randint", "randint_like"}
)
_POSITIONS: dict = {}  # op -> ((position, name), ...) of its arguments that take numbers


def _number_positions(func) -> tuple[tuple[int, str], ...]:
    """(position, name) of the schema arguments that take numbers as values: Scalar, float
    (also optional), and Tensor (a Python number given there is a wrapped scalar)."""
    known = _POSITIONS.get(func)
    if known is not None:
        return known
    positions: list[tuple[int, str]] = []
    schema = getattr(func, "_schema", None)
    packet = getattr(getattr(func, "overloadpacket", None), "__name__", "")
    if schema is not None and packet not in _SIZED_FACTORIES:
        for i, arg in enumerate(schema.arguments):
            kind = arg.type
            if isinstance(kind, torch.OptionalType):
                kind = kind.getElementType()
            if isinstance(kind, (torch.NumberType, torch.FloatType, torch.TensorType)):
                positions.append((i, arg.name))
    _POSITIONS[func] = known = tuple(positions)
    return known


def constant_value(t: torch.Tensor):
    """The values of a small tensor made outside the traced ops, as a tuple (None when it
    is large, or its values are not at hand: meta, fake or sparse)."""
    if (
        type(t) is not torch.Tensor
        or t.layout != torch.strided
        or t.is_meta
        or t.numel() > SMALL_CONSTANT
    ):
        return None
    try:
        # (read past the trace's modes: under a fake mode a real tensor's copy would be fake)
        with _disable_current_modes(), torch._C.DisableTorchFunction():
            values = tuple(t.detach().cpu().reshape(-1).tolist())
    except RuntimeError:  # (a tensor whose data cannot be read)
        return None
    return (t.dtype, tuple(t.shape), values)


def op_numbers(func, args, kwargs, constant_of) -> tuple:
    """The numbers one call computes with: ``(position, value)`` for each Python number
    (not a bool) given for a Scalar, float or Tensor argument, and for each other argument
    there that ``constant_of`` gives values for (a small constant tensor; None for anything
    else). Empty for most ops."""
    positions = _number_positions(func)
    if not positions:
        return ()
    found = []
    count = len(args)
    for i, name in positions:
        if i < count:
            x = args[i]
        elif kwargs and name in kwargs:
            x = kwargs[name]
        else:
            continue
        kind = type(x)
        if kind is float or kind is int or kind is complex:
            found.append((i, x))
        elif x is not None and kind is not bool:
            value = constant_of(x)
            if value is not None:
                found.append((i, value))
    return tuple(found)


def differences(old: tuple, new: tuple) -> list[tuple[int, object, object]]:
    """(position, original, pruned) of the numbers two calls of one op differ in; positions
    one side has no value for (a tensor computed in one trace, a constant in the other) are
    not compared."""
    before = dict(old)
    return [
        (i, before[i], value) for i, value in new if i in before and not _same(before[i], value)
    ]


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN (inside constants' values too)."""
    if type(a) is tuple and type(b) is tuple:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)
