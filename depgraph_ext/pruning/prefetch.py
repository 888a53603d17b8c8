"""Scoring begun while the model is traced.

The magnitude criteria (l1, l2, lamp) score a unit from per-index sums of ``|w|^p`` over the
slices of its group, and those sums depend on the weight alone, not on the groups. While the
main thread traces the model (Python on one core), a background thread sums the model's large
weights along dim 0 and dim 1 (``ops.row_column_sums``: one read each, on that thread alone,
the GIL released). Scoring stops it, takes the sums it finished and computes the others. The
sums are bitwise the ones scoring computes itself, so how far the thread got never changes a
score; a weight changed after its sums were taken (its version, data or shape moved) is
summed again. ``DEPGRAPH_SCORE_AHEAD=0`` in the environment turns it off (to compare).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from contextvars import ContextVar

import torch

from .. import ops
from ..graph.trace import REAL_TRACE_MAX_BYTES

# Weights below this size are summed with the others in scoring's one parallel pass.
MIN_TENSOR_ELEMENTS = 1 << 20
# Models up to this size are traced on their own tensors first (graph/trace.py): their
# forward then reads (and a model's odd code could write through ``.data``, unseen by the
# version counter) the weights the thread reads, and their scoring takes milliseconds. Larger
# ones are traced on stand-ins, which never touch the weights (unless a decision of the data
# sends the trace on to real tensors: the version and data checks still hold there).
MIN_TOTAL_BYTES = REAL_TRACE_MAX_BYTES

_SUMMABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ACTIVE: ContextVar[IndexSumsPrefetch | None] = ContextVar("depgraph_ext_prefetch", default=None)


class IndexSumsPrefetch:
    """Dim 0's and dim 1's per-index sums of ``|w|^p`` of ``tensors``, computed in order by a
    background thread until :meth:`stop`."""

    def __init__(self, tensors: list[torch.Tensor], p: int) -> None:
        self.p = p
        self._tensors = tensors
        self._done: dict[int, tuple] = {}
        self.seconds = 0.0  # the thread's time summing
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="depgraph_ext score prefetch", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        op = torch.ops.depgraph_ext.row_column_sums.default
        with torch.no_grad():
            for t in self._tensors:
                if self._stopping.is_set():
                    return
                start = time.perf_counter()
                try:
                    state = _state(t)
                    sums = op(t.detach(), self.p)
                except Exception:  # scoring sums this weight itself and reports what is wrong
                    continue
                finally:
                    self.seconds += time.perf_counter() - start
                self._done[id(t)] = (t, state, sums)

    def stop(self) -> None:
        """No weight started after this; the one being summed is finished. Idempotent."""
        self._stopping.set()
        self._thread.join()

    @property
    def finished(self) -> int:
        """How many weights were summed (after :meth:`stop`: for good)."""
        return len(self._done)

    def sums(self, tensor: torch.Tensor, dim: int, p: int) -> torch.Tensor | None:
        """fp64 sums of ``|tensor|^p`` along ``dim`` per index, as ``ops.index_sums`` gives
        them, or None where they were not taken (or not on the tensor as it is now). Call
        after :meth:`stop`."""
        entry = self._done.get(id(tensor))
        if entry is None or entry[0] is not tensor or p != self.p or entry[1] != _state(tensor):
            return None
        dim = dim % tensor.dim()
        n0 = tensor.shape[0]
        if dim == 0:
            return entry[2][:n0]
        return entry[2][n0:] if dim == 1 else None


def _state(t: torch.Tensor) -> tuple:
    """What must not move between a weight's sums and their use."""
    return (t._version, t.data_ptr(), t.shape, t.stride(), t.dtype)


def candidates(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weights worth summing ahead: large (2+ dims), contiguous, floating, on the CPU;
    each once, in the order of ``model.parameters()``, embedding tables last (their rows are
    tokens, never pruned; their columns only where the hidden size is, so the least likely
    to be scored)."""
    out, tables, seen = [], [], set()
    for module in model.modules():
        for t in module.parameters(recurse=False):
            if id(t) in seen:
                continue
            seen.add(id(t))
            if (
                type(t) in (torch.Tensor, torch.nn.Parameter)  # (no subclass: DTensor, ...)
                and t.layout == torch.strided
                and t.device.type == "cpu"
                and t.dtype in _SUMMABLE
                and t.dim() >= 2
                and t.numel() >= MIN_TENSOR_ELEMENTS
                and t.is_contiguous()
            ):
                (tables if isinstance(module, torch.nn.Embedding) else out).append(t)
    return out + tables


def _parameter_bytes(model: torch.nn.Module) -> int:
    """The bytes of the model's parameters (a tied one counted as often as it is held): the
    cheap check that passes over every small model before any candidate is looked at (a
    model of 1,500 modules: 1 ms, against 5 ms for the candidates)."""
    total = 0
    for module in model.modules():
        for t in module._parameters.values():
            if t is not None:
                total += t.nbytes
    return total


def _worth_it(tensors: list[torch.Tensor]) -> bool:
    total = sum(t.numel() * t.element_size() for t in tensors)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return total > MIN_TOTAL_BYTES and (cores or 1) >= 2


@contextlib.contextmanager
def prefetching(model: torch.nn.Module, p: int | None, backend: str):
    """Within the block, the model's large weights are summed in the background for a
    magnitude criterion of power ``p`` (None: the criterion is of another kind, nothing
    starts); :func:`active` gives the prefetch to scoring. The thread is stopped on leaving."""
    prefetch = None
    wanted = os.environ.get("DEPGRAPH_SCORE_AHEAD", "1") != "0"
    if (
        wanted
        and p is not None
        and backend == "native"
        and ops.available()
        and isinstance(model, torch.nn.Module)  # (anything else is refused by the trace)
        and _parameter_bytes(model) > MIN_TOTAL_BYTES
    ):
        tensors = candidates(model)
        if _worth_it(tensors):
            prefetch = IndexSumsPrefetch(tensors, p)
    token = _ACTIVE.set(prefetch)
    try:
        yield prefetch
    finally:
        _ACTIVE.reset(token)
        if prefetch is not None:
            prefetch.stop()


def active() -> IndexSumsPrefetch | None:
    return _ACTIVE.get()
