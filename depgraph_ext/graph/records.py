"""The records of a trace: a tensor (:class:`Value`), an ATen op that ran (:class:`Node`), and
a tensor among a node's arguments (:class:`Ref`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import source


class Ref:
    """A traced tensor inside a node's arguments: the index of its :class:`Value`.

    (A plain slotted class: made for every tensor argument of every op, a frozen dataclass's
    ``__init__`` was a tenth of the recording time.)"""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other) -> bool:
        return type(other) is Ref and other.value == self.value

    def __hash__(self) -> int:
        return hash((Ref, self.value))

    def __repr__(self) -> str:
        return f"Ref(value={self.value})"


class Refs(dict):
    """The :class:`Ref` of each value index, made once and shared by every node that names
    it (a decoder's stack of its steps so far names the same tensors at every step):
    ``refs[index]``."""

    def __missing__(self, value: int) -> Ref:
        ref = self[value] = Ref(value)
        return ref


@dataclass(slots=True)
class Value:
    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # "input" | "param" | "buffer" | "op" | "constant"
    name: str | None = None  # state_dict name for params/buffers, argument path for inputs
    producer: int | None = None  # index of the node that produced it


@dataclass(slots=True)
class Node:
    index: int
    op: Any  # torch._ops.OpOverload
    args: tuple
    kwargs: dict
    inputs: list[int]  # value indices of tensor arguments, in flattened order
    outputs: list[int]  # value indices of tensor results, in flattened order
    module: str  # qualified name of the innermost module running the op ("" = the root)
    where: tuple[str, int] | None = None  # (file, line) of the model's code that ran it

    @property
    def name(self) -> str:
        return op_name(self.op)

    def describe(self) -> str:
        """``op <name> in module <module> at <file>:<line> (<code>)``: what errors name."""
        at = source.describe(self.where)
        return f"op {self.name} in module {self.module or '<root>'}" + (f" at {at}" if at else "")

    @property
    def packet(self) -> str:
        """The op without its overload, e.g. ``aten.add`` for ``aten.add.Tensor``."""
        return _named_once(_OP_PACKETS, self.op, lambda op: str(op.overloadpacket))


# The names of ops, each made once (the rules and the checks ask for them per node).
_OP_NAMES: dict = {}
_OP_PACKETS: dict = {}


def op_name(op) -> str:
    """``str(op)`` (``aten.add.Tensor``), made once per op."""
    return _named_once(_OP_NAMES, op, str)


def _named_once(names: dict, op, make) -> str:
    try:
        name = names.get(op)
        if name is None:
            name = names[op] = make(op)
    except TypeError:  # (an op object that cannot be a key)
        name = make(op)
    return name


def result_leaves(x):
    """Leaves of an op's result: a tensor, or (nested) lists/tuples of them and of others."""
    kind = type(x)
    if kind is list or kind is tuple:
        for item in x:
            yield from result_leaves(item)
    else:
        yield x


@dataclass(slots=True)
class Replay:
    """A module call whose ops were taken from an earlier call's (graph/repeats.py): nodes
    ``[start, start + n1 - n0)`` are the template's nodes ``[n0, n1)`` (``template``),
    renamed. ``values`` maps the template's values to the call's (a value absent is the same
    tensor in both: one from outside both calls); ``modules`` the template's module names to
    the call's."""

    template: tuple[int, int]
    start: int
    values: dict[int, int]
    modules: dict[str, str]
