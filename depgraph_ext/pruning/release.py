"""Giving memory back: the unused tail of each storage that ``compact_`` shrank in place."""

from __future__ import annotations

import concurrent.futures
import ctypes
import mmap
import sys

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux
_LIBC = []


def release_tails(tails: list) -> None:
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
