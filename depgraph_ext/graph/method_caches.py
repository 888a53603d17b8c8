"""The caches of results a model's classes keep in their methods (``functools.lru_cache`` on a
forward, as transformers' DETR-style position embeddings are: keyed by the input's shape,
device and dtype, not by the weights).

A trace calls those methods with tensors of its own (meta tensors standing in for CPU ones
look like the CPU to the model's code, so their results are cached under the CPU's key), and
a prune changes the weights and widths a cached result was computed from: either way the
next real call would get a stale tensor (one on the meta device, or of the unpruned width).
And a result cached before a trace hides from it the ops that compute it. Those caches are
emptied before and after every trace and after a prune; a cache fills again by calling the
method.
"""

from __future__ import annotations

import functools
import types
import weakref

_LRU = functools._lru_cache_wrapper  # (the type of lru_cache's and cache's wrappers)

# class -> the caches its own methods keep (found once per class)
_CACHES_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _caches_in(fn, depth: int = 3) -> list:
    """The lru caches a function is or wraps: itself, what ``__wrapped__`` names, and the
    functions its closure holds (a decorator's wrapper that calls the cached function)."""
    found, stack, seen = [], [(fn, 0)], set()
    while stack:
        f, d = stack.pop()
        if id(f) in seen or d > depth:
            continue
        seen.add(id(f))
        if isinstance(f, _LRU):
            found.append(f)
        inner = getattr(f, "__wrapped__", None)
        if inner is not None:
            stack.append((inner, d + 1))
        for cell in getattr(f, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # (an empty cell)
                continue
            if isinstance(value, (_LRU, types.FunctionType)):
                stack.append((value, d + 1))
    return found


def _class_caches(cls: type) -> list:
    caches = _CACHES_OF.get(cls)
    if caches is None:
        caches = []
        for klass in cls.__mro__:
            if klass.__module__.startswith("torch."):
                continue  # (torch's own modules keep none)
            for attr in vars(klass).values():
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if isinstance(attr, (_LRU, types.FunctionType)):
                    caches += [c for c in _caches_in(attr) if c not in caches]
        _CACHES_OF[cls] = caches
    return caches


def clear_method_caches(modules) -> None:
    """Empty the lru caches of the methods of ``modules``' classes."""
    done: set[int] = set()
    for cls in {type(m) for m in modules}:
        for cache in _class_caches(cls):
            if id(cache) not in done:
                done.add(id(cache))
                cache.cache_clear()
