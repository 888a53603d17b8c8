"""Importance criteria by name (``importance="l2"``, ...): the one place that knows every
criterion, the routing one included (it builds on the magnitude criteria, so it cannot live
beside them without an import cycle)."""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError
from ..graph.dependency import DependencyGraph
from .importance import (
    BNScaleImportance,
    FisherImportance,
    Importance,
    LAMPImportance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
)
from .routing import RoutingImportance

_NAMED = {
    "l1": lambda: MagnitudeImportance(1),
    "l2": lambda: MagnitudeImportance(2),
    "lamp": LAMPImportance,
    "bn_scale": BNScaleImportance,
    "taylor": TaylorImportance,
    "fisher": FisherImportance,
    "random": RandomImportance,
    "routing": RoutingImportance,
}

IMPORTANCES = tuple(_NAMED)


def get_importance(importance) -> Importance:
    """An :class:`Importance` from a name in ``IMPORTANCES`` or an Importance object."""
    if isinstance(importance, Importance):
        return importance
    if isinstance(importance, str) and importance in _NAMED:
        return _NAMED[importance]()
    if isinstance(importance, str):
        raise InvalidArgumentError(
            f"importance must be one of {IMPORTANCES} or an Importance object, not {importance!r}"
        )
    raise InvalidArgumentError(
        f"importance must be a name or an Importance object, not {type(importance).__name__}"
    )


def unit_scores(dg: DependencyGraph, importance="l2") -> torch.Tensor:
    """float64[num_units] scores of ``importance`` (a name or an Importance object)."""
    imp = get_importance(importance)
    scores = imp.scores(dg)
    if not isinstance(scores, torch.Tensor) or scores.shape != (dg.resolution.num_units,):
        raise InvalidArgumentError(
            f"{imp!r}.scores must return a tensor of shape ({dg.resolution.num_units},), not "
            f"{getattr(scores, 'shape', type(scores).__name__)}"
        )
    return scores.detach().to("cpu", torch.float64)
