"""Importance criteria by name (``importance="l2"``, ...): the one place that knows every
criterion, the routing one included (it builds on the magnitude criteria, so it cannot live
beside them without an import cycle)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..graph.dependency import DependencyGraph
from ..graph.resolve import resolutions_equal
from .importance import (
    BNScaleImportance,
    FisherImportance,
    GroupImportance,
    Importance,
    LAMPImportance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
    normalize,
    scored_units,
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


class RoundScores:
    """The scores of one criterion over the validation rounds of one prune step.

    A round blocks units (sizes the model's code fixes) but changes no unit: the resolution's
    leaves, units and groups stay, only which units are blocked changes. A unit that can be
    removed scores what it scored in the round before (its member slices are the same ones,
    added in the same order), so a plain :class:`GroupImportance` (scores its raw scores,
    normalised within groups) is not run again: its raw scores are taken over for the units
    the round scores (NaN for the others, as units not scored) and normalised within the
    round's groups. Any other criterion, or a round whose units differ, is scored anew."""

    def __init__(self, importance="l2") -> None:
        self.importance = get_importance(importance)
        self._resolution = None
        self._raw: torch.Tensor | None = None
        self._scored: np.ndarray | None = None

    def __call__(self, dg: DependencyGraph) -> torch.Tensor:
        imp = self.importance
        if not isinstance(imp, GroupImportance) or type(imp).scores is not GroupImportance.scores:
            return unit_scores(dg, imp)
        wanted = scored_units(dg)
        if (
            self._raw is None
            or not resolutions_equal(self._resolution, dg.resolution, blocked=False)
            or (wanted & ~self._scored).any()
        ):
            raw = imp.raw_scores(dg).detach().to("cpu", torch.float64)
            self._resolution, self._raw, self._scored = dg.resolution, raw, wanted
        else:
            raw = torch.where(torch.from_numpy(wanted), self._raw, float("nan"))
        return unit_scores(dg, _Given(normalize(dg, raw, imp.normalization)))


class _Given(Importance):
    """Scores computed already (checked by unit_scores like any criterion's)."""

    def __init__(self, scores: torch.Tensor) -> None:
        self.given = scores

    def scores(self, dg: DependencyGraph) -> torch.Tensor:
        return self.given
