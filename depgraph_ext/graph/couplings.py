"""Couplings: the compact, torch-free hand-off from op rules to group resolution.

A *slot* is one dimension of one traced tensor (or a helper dimension a rule creates, such as the
group factor of a grouped convolution). Rules relate slots with five kinds of coupling:

- ``EQUAL a b``: index i of slot a is index i of slot b (element-wise ops, contractions, ...).
- ``RESHAPE [ins] [outs]``: the row-major flattening of the ``ins`` slots equals that of the
  ``outs`` slots (view/reshape/flatten, head split/merge, channel shuffle).
- ``CAT_PIECE whole piece offset``: ``piece[i]`` is ``whole[offset + i]``, and the offset follows
  the pieces' sizes at run time (``torch.cat``), so any index may be pruned.
- ``SLICE whole piece start step``: ``piece[i]`` is ``whole[start + step * i]`` for constant
  ``start``/``step`` (slicing, split, chunk): only pruning that keeps the slice aligned is allowed.
- ``BLOCK a``: no index of slot a may be pruned (graph inputs/outputs, opaque ops, ignored params).

The arrays are what both resolution backends consume (``resolve_reference`` and ``_core``).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class CouplingKind(IntEnum):
    EQUAL = 0
    RESHAPE = 1
    CAT_PIECE = 2
    SLICE = 3
    BLOCK = 4


_EQUAL = int(CouplingKind.EQUAL)


@dataclass(frozen=True)
class Couplings:
    """Slots and couplings as flat arrays (CSR over coupling operands)."""

    slot_sizes: np.ndarray  # int64[S]
    kinds: np.ndarray  # int8[K]
    offsets: np.ndarray  # int64[K + 1]: operands of coupling k are data[offsets[k]:offsets[k+1]]
    data: np.ndarray  # int64[...]
    query_slots: np.ndarray  # int64[Q]: slots whose units the caller needs (parameter dims ...)

    @property
    def num_slots(self) -> int:
        return int(self.slot_sizes.shape[0])

    @property
    def num_couplings(self) -> int:
        return int(self.kinds.shape[0])


class CouplingBuilder:
    """Accumulates slots and couplings; ``build()`` returns the arrays."""

    def __init__(self) -> None:
        self.slot_sizes: list[int] = []
        self._kinds: list[int] = []
        self._offsets: list[int] = [0]
        self._data: list[int] = []

    def new_slot(self, size: int) -> int:
        self.slot_sizes.append(int(size))
        return len(self.slot_sizes) - 1

    def _emit(self, kind: CouplingKind, operands: list[int]) -> None:
        self._kinds.append(int(kind))
        self._data.extend(operands)
        self._offsets.append(len(self._data))

    def equal(self, a: int, b: int) -> None:
        if a != b:  # the commonest coupling, emitted inline
            self._kinds.append(_EQUAL)
            self._data.append(a)
            self._data.append(b)
            self._offsets.append(len(self._data))

    def equal_pairs(self, a: list[int], b: list[int]) -> None:
        """``equal(a[i], b[i])`` for every i, in one pass (a stack of a growing list of
        tensors, an autoregressive decoder's, emits a number of them that grows with the
        square of its steps)."""
        if any(map(operator.eq, a, b)):  # (a slot equal to itself: no coupling)
            kept = [(x, y) for x, y in zip(a, b) if x != y]
            a, b = [x for x, _ in kept], [y for _, y in kept]
        interleaved = [0] * (2 * len(a))  # (a[0], b[0], a[1], b[1], ...: C-level slices)
        interleaved[0::2], interleaved[1::2] = a, b
        base = len(self._data)
        self._kinds.extend([_EQUAL] * len(a))
        self._data.extend(interleaved)
        self._offsets.extend(range(base + 2, len(self._data) + 1, 2))

    def reshape(self, ins: list[int], outs: list[int]) -> None:
        self._emit(CouplingKind.RESHAPE, [len(ins), *ins, len(outs), *outs])

    def cat_piece(self, whole: int, piece: int, offset: int) -> None:
        self._emit(CouplingKind.CAT_PIECE, [whole, piece, offset])

    def slice(self, whole: int, piece: int, start: int, step: int) -> None:
        self._emit(CouplingKind.SLICE, [whole, piece, start, step])

    def block(self, slot: int) -> None:
        self._emit(CouplingKind.BLOCK, [slot])

    def checkpoint(self) -> tuple[int, int]:
        return len(self.slot_sizes), len(self._kinds)

    def rollback(self, checkpoint: tuple[int, int]) -> None:
        """Forget every slot and coupling added since ``checkpoint``."""
        num_slots, num_couplings = checkpoint
        del self.slot_sizes[num_slots:]
        del self._kinds[num_couplings:]
        del self._offsets[num_couplings + 1 :]
        del self._data[self._offsets[-1] :]

    def build(self, query_slots) -> Couplings:
        return Couplings(
            slot_sizes=np.asarray(self.slot_sizes, dtype=np.int64),
            kinds=np.asarray(self._kinds, dtype=np.int8),
            offsets=np.asarray(self._offsets, dtype=np.int64),
            data=np.asarray(self._data, dtype=np.int64),
            query_slots=np.asarray(query_slots, dtype=np.int64),
        )


@dataclass(frozen=True)
class Resolution:
    """What group resolution returns, identical (array for array) from both backends.

    Every slot is a row-major product of *leaf atoms*; a leaf atom's elements are the prunable
    indices. Elements coupled together form a *unit* (a channel, a head, ...); units whose atoms
    are coupled form a *group*. Leaves, units and groups are numbered canonically (first
    appearance), so the two backends can be compared bit for bit.
    """

    leaf_sizes: np.ndarray  # int64[L]
    slot_leaf_offsets: np.ndarray  # int64[S + 1]
    slot_leaves: np.ndarray  # int64[...]: leaves of slot s, outermost first
    # int64[L]: start in elem_units, or -1 for a leaf whose elements are coupled to nothing else
    # and lie in no queried slot (such a leaf can never lose an element).
    leaf_unit_offsets: np.ndarray
    elem_units: np.ndarray  # int64[...]: unit of each element of each leaf with units
    unit_blocked: np.ndarray  # bool[U]
    unit_groups: np.ndarray  # int64[U]

    def leaves_of(self, slot: int) -> np.ndarray:
        return self.slot_leaves[self.slot_leaf_offsets[slot] : self.slot_leaf_offsets[slot + 1]]

    @functools.cached_property
    def leaf_groups(self) -> np.ndarray:
        """Per leaf, the group all of its units are in (-1: it has none, or several): what
        listing members and factors asks of most leaves, without a pass over their units."""
        sizes, offsets = self.leaf_sizes, self.leaf_unit_offsets
        out = np.full(sizes.shape[0], -1, dtype=np.int64)
        leaves = np.nonzero((offsets >= 0) & (sizes > 0))[0]
        if leaves.shape[0] == 0:
            return out
        lengths = sizes[leaves]
        firsts = np.concatenate(([0], np.cumsum(lengths)[:-1]))  # each leaf's first element
        elements = np.repeat(offsets[leaves] - firsts, lengths) + np.arange(int(lengths.sum()))
        groups = self.unit_groups[self.elem_units[elements]]
        low = np.minimum.reduceat(groups, firsts)
        high = np.maximum.reduceat(groups, firsts)
        one = low == high
        out[leaves[one]] = low[one]
        return out

    def units_of_leaf(self, leaf: int) -> np.ndarray:
        start = int(self.leaf_unit_offsets[leaf])
        if start < 0:
            raise KeyError(f"leaf {leaf} has no units: it was not queried nor coupled")
        return self.elem_units[start : start + int(self.leaf_sizes[leaf])]

    def units_of_leaves(self, leaves) -> np.ndarray:
        """The units of every element of ``leaves``, leaf after leaf (leaves without units
        passed over): ``units_of_leaf`` of each, concatenated, in one pass."""
        leaves = np.asarray(leaves, dtype=np.int64)
        offsets = self.leaf_unit_offsets[leaves]
        has = offsets >= 0
        lengths = self.leaf_sizes[leaves[has]]
        if lengths.size == 0:
            return np.zeros(0, dtype=np.int64)
        firsts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        elements = np.repeat(offsets[has] - firsts, lengths) + np.arange(int(lengths.sum()))
        return self.elem_units[elements]

    @property
    def num_units(self) -> int:
        return int(self.unit_blocked.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.unit_groups.max()) + 1 if self.unit_groups.size else 0
