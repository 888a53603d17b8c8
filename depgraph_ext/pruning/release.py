"""Giving memory back: the unused tail of each storage that ``compact_`` shrank in place."""

from __future__ import annotations

import mmap
import sys

from .. import ops

_PAGE = mmap.PAGESIZE


def release_tails(tensors: list) -> None:
    """Each tensor of ``tensors`` (contiguous, at the start of a storage of its own; tensors
    sharing one are left as they are) is the prefix of its storage: the storage shrinks to
    it, so ``torch.save`` writes the pruned bytes only. Large tails of CPU storages give their
    whole pages back to the operating system where they lie (Linux, ``ops.release_tails_``:
    no copy); small tails, and every storage elsewhere (a GPU's caching allocator hands out
    whole blocks), by reallocating: a copy of the kept part into a storage of its size, the
    old one freed at once."""
    by_storage: dict[int, list] = {}
    for t in tensors:
        by_storage.setdefault(t.untyped_storage().data_ptr(), []).append(t)
    big = []
    for t in tensors:
        if len(by_storage[t.untyped_storage().data_ptr()]) > 1:
            continue  # (a storage two of them share: each needs all of what they share)
        needed = t.numel() * t.element_size()
        if _releasable(t.untyped_storage(), needed):
            big.append(t)
        else:
            t.untyped_storage().resize_(needed)
    if big:
        ops.release_tails_(big)


def _releasable(storage, needed: int) -> bool:
    """A CPU storage on Linux, and at least 64 whole pages past ``needed`` (a smaller tail
    costs nothing worth saving to reallocate)."""
    if storage.device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    start = -(-(storage.data_ptr() + needed) // _PAGE) * _PAGE
    end = (storage.data_ptr() + storage.nbytes()) // _PAGE * _PAGE
    return end - start >= 64 * _PAGE
