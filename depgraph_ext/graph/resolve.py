"""Group resolution: the native C++ core, or its pure-Python twin (``backend="python"``)."""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import BackendUnavailableError, InvalidArgumentError
from .couplings import Couplings, Resolution
from .resolve_reference import resolve_reference

try:
    from .. import _core  # type: ignore[attr-defined]
except ImportError as exc:  # the extension is not built
    _core = None
    _CORE_IMPORT_ERROR: ImportError | None = exc
else:
    _CORE_IMPORT_ERROR = None

BACKENDS = ("native", "python")


def native_available() -> bool:
    """Both native parts load: the resolution core and the op library."""
    return _core is not None and ops.available()


def select_backend(backend: str | None) -> str:
    """``None`` means native when the extension is built, else python."""
    if backend is None:
        return "native" if native_available() else "python"
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "native" and _core is None:
        raise BackendUnavailableError(
            "backend='native' needs the compiled extension depgraph_ext._core, which failed to "
            f"import ({_CORE_IMPORT_ERROR}); build it with `pip install --no-build-isolation -e .` "
            "or pass backend='python'"
        )
    if backend == "native" and not ops.available():
        raise BackendUnavailableError(ops.load_error())
    return backend


def resolve(couplings: Couplings, backend: str) -> Resolution:
    if backend == "python":
        return resolve_reference(couplings)
    out = _core.resolve_groups(
        couplings.slot_sizes,
        couplings.kinds,
        couplings.offsets,
        couplings.data,
        couplings.query_slots,
    )
    return Resolution(
        leaf_sizes=out["leaf_sizes"],
        slot_leaf_offsets=out["slot_leaf_offsets"],
        slot_leaves=out["slot_leaves"],
        leaf_unit_offsets=out["leaf_unit_offsets"],
        elem_units=out["elem_units"],
        unit_blocked=out["unit_blocked"].astype(bool),
        unit_groups=out["unit_groups"],
    )


def resolutions_equal(a: Resolution, b: Resolution, blocked: bool = True) -> bool:
    """Whether two resolutions are the same (``blocked=False``: the same leaves, units and
    groups, whichever units are blocked)."""
    return all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in (
            "leaf_sizes",
            "slot_leaf_offsets",
            "slot_leaves",
            "leaf_unit_offsets",
            "elem_units",
            "unit_groups",
        )
        + (("unit_blocked",) if blocked else ())
    )
