"""The tensors a model returns, wherever in its output they are.

``torch.utils._pytree`` opens tuples, lists, dicts, named tuples and the output classes
libraries register (transformers' ``ModelOutput``); anything else is a leaf to it. A model's
own dataclass, or any object holding its results as attributes, would hide them: their
widths would be free to prune, and the pruned model would return other shapes. So leaves that
are neither tensors nor plain values are opened too: a dataclass by its fields, an object by
its attributes, a set or a dict view by its items, each tensor found with its path
(``.logits``, ``[0].hidden``). Not opened: modules (their tensors are parameters), and
transformers' caches, the model's state for its next call, which follows the plan (a pruned
attention layer caches its pruned keys). An iterator cannot be opened without consuming it:
it is refused by name.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from enum import Enum
from typing import Any

import torch
import torch.utils._pytree as pytree

from ..errors import InvalidArgumentError

_PLAIN = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    Enum,
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
    type,
)
_MAX_DEPTH = 16  # objects inside objects, opened at most this deep


def output_leaves(out, leaves_with_paths) -> list[tuple[str, Any]]:
    """``leaves_with_paths(out)`` (the pytree's leaves with their key paths), with every leaf
    that is an object holding tensors replaced by those tensors (and integers), each with its
    path."""
    found: list[tuple[str, Any]] = []
    opened: set[int] = set()
    for path, leaf in leaves_with_paths(out):
        if isinstance(leaf, torch.Tensor) or isinstance(leaf, _PLAIN):
            found.append((path, leaf))
        else:
            _open(leaf, path, found, opened, leaves_with_paths, 0)
    return found


def _open(obj, path: str, found: list, opened: set[int], leaves_with_paths, depth: int) -> None:
    if isinstance(obj, torch.Tensor) or (isinstance(obj, int) and not isinstance(obj, bool)):
        found.append((path, obj))  # (a number inside: a size the code returns, say)
        return
    if isinstance(obj, _PLAIN) or id(obj) in opened or depth > _MAX_DEPTH:
        return
    opened.add(id(obj))
    if isinstance(obj, torch.nn.Module) or callable(obj) or _is_cache(obj):
        return
    where = path or "the model's output"
    if not pytree.tree_is_leaf(obj):  # (a registered container inside an object)
        for sub, leaf in leaves_with_paths(obj):
            _open(leaf, path + sub, found, opened, leaves_with_paths, depth + 1)
        return
    if isinstance(obj, (list, tuple)):  # (a subclass pytree does not know)
        items = enumerate(obj)
    elif isinstance(obj, (set, frozenset, KeysView, ValuesView, ItemsView)):
        items = enumerate(list(obj))
    elif dataclasses.is_dataclass(obj):
        items = ((f".{f.name}", getattr(obj, f.name, None)) for f in dataclasses.fields(obj))
    elif isinstance(obj, Iterator):
        raise InvalidArgumentError(
            f"the model returns an iterator ({type(obj).__name__}) at {where}: its tensors "
            "cannot be seen without consuming it, so their shapes could not be kept; return a "
            "tuple or a list"
        )
    else:
        attributes = dict(getattr(obj, "__dict__", None) or {})
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if name in ("__dict__", "__weakref__") or name in attributes:
                    continue
                if isinstance(name, str) and hasattr(obj, name):
                    attributes[name] = getattr(obj, name)
        items = ((f".{name}", value) for name, value in attributes.items())
    for key, value in items:
        sub = key if isinstance(key, str) else f"[{key}]"
        _open(value, path + sub, found, opened, leaves_with_paths, depth + 1)


def _is_cache(obj) -> bool:
    """A transformers cache (``past_key_values``): state the model reads back on its next
    call, not a result whose shape a caller relies on."""
    cache_utils = sys.modules.get("transformers.cache_utils")
    cache = getattr(cache_utils, "Cache", None)
    return isinstance(cache, type) and isinstance(obj, cache)
