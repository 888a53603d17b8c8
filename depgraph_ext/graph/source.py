"""Where in the model's Python code an op ran: the innermost frame outside torch and this
package (a model's own forward, or the library it is written with: transformers, torchvision),
which errors and warnings name."""

from __future__ import annotations

import linecache
import os
import sys

import torch

_LIBRARIES = (
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # depgraph_ext/
)
_IS_LIBRARY: dict = {}  # code object -> whether it is torch's or this package's


def _library(code) -> bool:
    known = _IS_LIBRARY.get(code)
    if known is None:
        name = code.co_filename
        known = _IS_LIBRARY[code] = name.startswith(_LIBRARIES) or name.startswith("<frozen")
    return known


def here() -> tuple[str, int] | None:
    """(file, line) of the model's code running now (about 2 µs a call)."""
    frame = sys._getframe(1)
    while frame is not None:
        if not _library(frame.f_code):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back
    return None


def raised_at(exc: BaseException) -> tuple[str, int] | None:
    """(file, line) of the model's code innermost in ``exc``'s traceback."""
    found, tb = None, exc.__traceback__
    while tb is not None:
        if not _library(tb.tb_frame.f_code):
            found = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    return found


def describe(where: tuple[str, int] | None) -> str:
    """``file:line (the code)``, or "" when unknown."""
    if where is None:
        return ""
    code = linecache.getline(*where).strip()
    return f"{where[0]}:{where[1]}" + (f" ({code})" if code else "")
