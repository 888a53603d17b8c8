"""A call that starts in a fresh chunk of CPython's frame stack.

CPython keeps the frames of Python calls in chunks of 16 KiB (``DATA_STACK_CHUNK_SIZE``) and
frees a chunk as soon as the frame at its start returns, so code whose calls go up and down
across a chunk's end allocates and frees a chunk at every crossing. A trace makes several
nested Python calls per op and per module call: where the caller's stack happened to end near
a chunk's end, the same trace took up to twice as long (a 32-layer Llama's graph 135 ms, and
274 ms called from 120 frames deeper). Called through a function whose own frame is larger
than a chunk, the model runs in a new chunk of twice the size, laid out the same wherever
the prune is called from (a script, a test, a notebook).
"""

from __future__ import annotations

import functools
import types

# Words of unused locals: more than a chunk's 2,048, so the frame never fits what is left of
# one, and a new chunk (32 KiB) holds it and, after it, the frames it calls.
_FRAME_WORDS = 2100


def _call(fn, args, kwargs):
    return fn(*args, **kwargs)


def _with_large_frame(function):
    code = function.__code__
    names = code.co_varnames + tuple(f"_unused{i}" for i in range(_FRAME_WORDS))
    try:
        code = code.replace(co_varnames=names, co_nlocals=len(names))
    except (TypeError, ValueError):  # another interpreter's code objects: a plain call
        return function
    return types.FunctionType(code, function.__globals__, function.__name__)


_call_in_fresh_chunk = _with_large_frame(_call)


def call_in_fresh_chunk(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its frames from the start of a fresh frame-stack chunk."""
    return _call_in_fresh_chunk(fn, args, kwargs)


def in_fresh_chunk(function):
    """``function``, each call of it through :func:`call_in_fresh_chunk`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return _call_in_fresh_chunk(function, args, kwargs)

    return wrapper
