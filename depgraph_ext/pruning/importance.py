"""Grouped importance: one score per unit, computed from every member slice of its group.

A criterion turns each scoring parameter into non-negative per-element magnitudes (``|w|``,
``w^2``, ``|w * dL/dw|``, ``w^2 * E[g^2]``, ``|gamma|``); a member slice's contribution to a unit
is the sum of those magnitudes over the slice; the contributions of a unit's members are reduced
(``sum``, ``mean``, ``max``, ``prod`` or ``first``: the member used first in the forward pass,
the group's root layer); scores are then normalised within each group (``mean``, ``max``,
``sum``, ``standardization``, ``lamp`` or none), which matters only when groups compete
(global pruning).

Scores are float64 ``[num_units]``; NaN marks a unit the criterion does not score (a group with
no BatchNorm under ``bn_scale``, a frozen weight under ``taylor``): such units are never removed.

Plug in a criterion by subclassing :class:`GroupImportance` (override ``magnitudes``) or
:class:`Importance` (override ``scores``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .. import ops
from ..errors import (
    InvalidArgumentError,
    MissingGradientsError,
    NonFiniteWeightsError,
    PruningError,
)
from ..graph.dependency import DependencyGraph
from . import prefetch

REDUCTIONS = ("sum", "mean", "max", "prod", "first")
NORMALIZATIONS = (None, "mean", "max", "sum", "standardization", "lamp")
_EPS = 1e-12


@dataclass(frozen=True)
class ScoredSlice:
    """Parameter ``name`` along ``dim``: index j scores for unit ``units[j]`` (-1: none).

    A dim made of several unit atoms (kv heads x query heads per group, say) has one entry per
    atom that has prunable units.
    """

    name: str
    dim: int
    units: np.ndarray


def scored_slices(dg: DependencyGraph) -> list[ScoredSlice]:
    """Every parameter slice that contributes to some prunable unit's score, parameters in the
    order the forward pass first reads them (so a group's first slice is its root layer).
    Buffers never score."""
    res = dg.resolution
    leaf_wanted = _leaves_with_units_in(res, scored_units(dg))
    out = []
    for name in params_in_use_order(dg):
        for td in dg.tensor_dims[name]:
            single = len(td.leaves) == 1  # the common case: the dim is one atom
            for pos, leaf in enumerate(td.leaves.tolist()):
                if leaf_wanted[leaf]:
                    units = res.units_of_leaf(leaf)
                    out.append(
                        ScoredSlice(name, td.dim, units if single else units[td.digits(pos)])
                    )
    return out


def scored_units(dg: DependencyGraph) -> np.ndarray:
    """bool per unit: the units criteria score (prunable ones the selection can remove)."""
    return dg.unit_prunable if dg.units_to_score is None else (dg.unit_prunable & dg.units_to_score)


def params_in_use_order(dg: DependencyGraph) -> list[str]:
    g = dg.graph
    first: dict[int, int] = {}
    for node in g.nodes:
        for v in node.inputs:
            first.setdefault(v, node.index)
    return sorted(g.params, key=lambda n: first.get(g.params[n], len(g.nodes)))


def _leaves_with_units_in(res, wanted: np.ndarray) -> list[bool]:
    """For every leaf: whether it has units and one of them is in ``wanted`` (at once)."""
    starts = res.leaf_unit_offsets
    has_units = starts >= 0
    counts = np.concatenate(([0], np.cumsum(wanted[res.elem_units], dtype=np.int64)))
    begin = np.where(has_units, starts, 0)
    end = np.where(has_units, starts + res.leaf_sizes, 0)
    return (has_units & (counts[end] > counts[begin])).tolist()


# -- criteria --------------------------------------------------------------------------------------
class Importance:
    """A criterion: ``scores(dg)`` gives float64 ``[num_units]`` (NaN: not scored)."""

    name = "custom"

    def scores(self, dg: DependencyGraph) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, dg: DependencyGraph) -> torch.Tensor:
        return self.scores(dg)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GroupImportance(Importance):
    """Per-element magnitudes of every member slice, summed per unit within each slice,
    reduced over members, normalised within each group.

    Subclasses override :meth:`magnitudes` (and :meth:`scores_parameter` to skip some members).
    ``p``: magnitudes are raised to this power (1 or 2) before summing; the native kernel does
    that without a temporary when ``magnitudes`` returns the weight itself.
    """

    p = 1

    def __init__(self, reduction: str = "sum", normalization: str | None = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise InvalidArgumentError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
        if normalization not in NORMALIZATIONS:
            raise InvalidArgumentError(
                f"normalization must be one of {NORMALIZATIONS}, not {normalization!r}"
            )
        self.reduction = reduction
        self.normalization = normalization

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reduction={self.reduction!r}, "
            f"normalization={self.normalization!r})"
        )

    def scores_parameter(self, dg: DependencyGraph, name: str, param: torch.Tensor) -> bool:
        """Whether this parameter's slices take part (all of them by default)."""
        return True

    def magnitudes(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """Per-element magnitudes of ``param`` (same shape; raised to ``p`` and summed)."""
        raise NotImplementedError

    def raw_scores(self, dg: DependencyGraph) -> torch.Tensor:
        """Scores before normalisation: per-unit reduction over members."""
        params = dg.walk.params
        slices = [s for s in scored_slices(dg) if self.scores_parameter(dg, s.name, params[s.name])]
        for s in slices:
            _check_real(params[s.name], s.name, self)
        return _reduce_members(dg, slices, params, self)

    def scores(self, dg: DependencyGraph) -> torch.Tensor:
        raw = self.raw_scores(dg)
        return normalize(dg, raw, self.normalization)


class MagnitudeImportance(GroupImportance):
    """Sum over the group's slices of ``|w|^p`` (p = 1: L1, p = 2: L2 squared)."""

    def __init__(
        self, p: int = 2, reduction: str = "sum", normalization: str | None = "mean"
    ) -> None:
        if p not in (1, 2):
            raise InvalidArgumentError(f"p must be 1 or 2, not {p!r}")
        super().__init__(reduction, normalization)
        self.p = p
        self.name = f"l{p}"

    def magnitudes(self, name, param):
        return param.detach()  # the kernel raises |w| to p itself

    def __repr__(self) -> str:
        return (
            f"MagnitudeImportance(p={self.p}, reduction={self.reduction!r}, "
            f"normalization={self.normalization!r})"
        )


class LAMPImportance(MagnitudeImportance):
    """Layer-adaptive magnitude: L2 scores normalised by LAMP within each group."""

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__(2, reduction, "lamp")
        self.name = "lamp"


class BNScaleImportance(GroupImportance):
    """``|gamma|`` of every BatchNorm in the group (network slimming); groups with no
    BatchNorm are not scored."""

    name = "bn_scale"

    def scores_parameter(self, dg, name, param):
        module_name, _, tensor = name.rpartition(".")
        module = dg.model.get_submodule(module_name)
        return tensor == "weight" and isinstance(module, nn.modules.batchnorm._BatchNorm)

    def magnitudes(self, name, param):
        return param.detach()


class TaylorImportance(GroupImportance):
    """First-order Taylor: ``|w * dL/dw|`` summed over the group's slices, from the gradients
    in ``.grad`` (accumulate them with ``loss.backward()`` before pruning). Parameters without a
    gradient (frozen ones) do not score."""

    name = "taylor"

    def scores_parameter(self, dg, name, param):
        return param.grad is not None

    def magnitudes(self, name, param):
        return (param.detach() * _dense(param.grad.detach())).abs()  # (abs_ refuses complex)

    def raw_scores(self, dg):
        params = dg.walk.params
        if not any(params[s.name].grad is not None for s in scored_slices(dg)):
            raise MissingGradientsError(
                "importance 'taylor' needs gradients: run loss.backward() on some batches "
                "before pruning (no scoring parameter has a .grad)"
            )
        return super().raw_scores(dg)


def _dense(grad: torch.Tensor) -> torch.Tensor:
    """A gradient as a strided tensor (an nn.Embedding(sparse=True)'s is sparse: the rows no
    index looked up are zeros)."""
    return grad if grad.layout == torch.strided else grad.to_dense()


# Squared gradients per parameter, collected by collect_fisher: param -> [sum of g^2, batches].
_FISHER_STATS: WeakIdKeyDictionary = WeakIdKeyDictionary()


@contextlib.contextmanager
def collect_fisher(model: nn.Module):
    """Within this block, every backward pass adds each parameter's gradient squared to its
    Fisher statistics (one backward = one batch), whatever happens to ``.grad`` in between.
    ``importance="fisher"`` then scores ``w^2 * E[g^2]`` (OBD). Statistics are sliced along
    with the weights when the model is pruned."""
    handles = []
    for p in {id(p): p for p in model.parameters()}.values():
        if not p.requires_grad:
            continue

        def hook(grad, p=p):
            g2 = _dense(grad.detach()).to(torch.float32).square()
            if p in _FISHER_STATS and _FISHER_STATS[p][0].shape == g2.shape:
                _FISHER_STATS[p][0].add_(g2)
                _FISHER_STATS[p][1] += 1
            else:
                _FISHER_STATS[p] = [g2, 1]

        handles.append(p.register_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def fisher_entry(param: torch.Tensor) -> list | None:
    """The Fisher statistics held for ``param`` as ``[sum of g^2, batches]`` (the list itself,
    so that pruning can slice the sum with the weight and undo that), or None."""
    return _FISHER_STATS.get(param)


def fisher_statistics(param: torch.Tensor) -> torch.Tensor | None:
    """E[g^2] of one parameter, or None when none was collected."""
    entry = _FISHER_STATS.get(param)
    return None if entry is None else entry[0] / entry[1]


def clear_fisher(model: nn.Module) -> None:
    for p in model.parameters():
        _FISHER_STATS.pop(p, None)


class FisherImportance(GroupImportance):
    """Second-order (OBD with the empirical Fisher): ``w^2 * E[g^2]`` summed over the group's
    slices, from the statistics gathered by :func:`collect_fisher`."""

    name = "fisher"

    def scores_parameter(self, dg, name, param):
        return param in _FISHER_STATS

    def magnitudes(self, name, param):
        fisher = fisher_statistics(param)
        if fisher.shape != param.shape:
            raise PruningError(
                f"Fisher statistics of {name} have shape {tuple(fisher.shape)}, "
                f"the parameter {tuple(param.shape)}"
            )
        return param.detach().float().square() * fisher.to(param.device)

    def raw_scores(self, dg):
        params = dg.walk.params
        if not any(params[s.name] in _FISHER_STATS for s in scored_slices(dg)):
            raise MissingGradientsError(
                "importance 'fisher' needs gradient statistics: run the backward passes inside "
                "`with depgraph_ext.collect_fisher(model):` before pruning"
            )
        return super().raw_scores(dg)


class RandomImportance(Importance):
    """Uniform random scores per unit, reproducible from ``seed``."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, dg):
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(dg.resolution.num_units, generator=gen, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"RandomImportance(seed={self.seed})"


# -- reduction over members ----------------------------------------------------------------------
def _reduce_members(
    dg: DependencyGraph, slices: list[ScoredSlice], params, imp: GroupImportance
) -> torch.Tensor:
    n = dg.resolution.num_units
    if not slices:
        return torch.full((n,), float("nan"), dtype=torch.float64)
    plain = type(imp).magnitudes is MagnitudeImportance.magnitudes or isinstance(
        imp, BNScaleImportance
    )
    one_device = len({params[s.name].device for s in slices}) == 1
    if dg.backend == "native" and plain and imp.reduction in ops.REDUCTIONS and one_device:
        return _fused(dg, slices, params, imp)
    out = np.zeros(n)
    touched = np.zeros(n, dtype=np.int64)
    cache: tuple[str, torch.Tensor] | None = None
    for s in slices:
        if cache is None or cache[0] != s.name:  # one magnitude tensor alive at a time
            cache = (s.name, _real(imp.magnitudes(s.name, params[s.name])))
        units, contribution = _slice_contribution(cache[1], s, imp.p, dg.backend)
        seen = touched[units] > 0
        if imp.reduction in ("sum", "mean"):
            out[units] += contribution
        elif imp.reduction == "max":
            out[units] = np.where(seen, np.maximum(out[units], contribution), contribution)
        elif imp.reduction == "prod":
            out[units] = np.where(seen, out[units] * contribution, contribution)
        else:  # first: the earliest member touching the unit
            out[units] = np.where(seen, out[units], contribution)
        touched[units] += 1
    if imp.reduction == "mean":
        out = out / np.maximum(touched, 1)
    _check_finite(dg, out[touched > 0], imp)
    out[touched == 0] = np.nan
    return torch.from_numpy(out)


def _real(magnitudes: torch.Tensor) -> torch.Tensor:
    """A complex weight's magnitudes are its elements' moduli (``|z|``, raised to ``p`` as
    any weight's): the kernels take real tensors, and casting would drop the imaginary part."""
    return magnitudes.abs() if magnitudes.is_complex() else magnitudes


def _slice_contribution(magnitude: torch.Tensor, s: ScoredSlice, p: int, backend: str):
    """(unique units, float64 sums of magnitude^p over the slice's indices of each unit)."""
    valid = s.units >= 0
    units, local = np.unique(s.units[valid], return_inverse=True)
    local_map = np.full(s.units.shape[0], -1, dtype=np.int64)
    local_map[valid] = local
    if backend == "native":
        m = torch.from_numpy(local_map).to(magnitude.device)
        sums = ops.grouped_norm([magnitude], [s.dim], [m], units.shape[0], p, "sum")
        return units, sums.to("cpu", torch.float64).numpy()
    per_index = ops.per_index_sums(magnitude.detach(), s.dim, p).cpu().numpy()
    return units, np.bincount(local_map[valid], weights=per_index[valid], minlength=units.shape[0])


def _fused(dg, slices, params, imp) -> torch.Tensor:
    """sum/mean/max over every member in one ``grouped_norm`` call."""
    n = dg.resolution.num_units
    tensors, dims, maps = [], [], []
    for s in slices:
        w = params[s.name]
        tensors.append(_real(imp.magnitudes(s.name, w)))
        dims.append(s.dim)
        maps.append(torch.from_numpy(s.units).to(w.device))
    touched = np.zeros(n, dtype=bool)
    every = np.concatenate([s.units for s in slices])
    touched[every[every >= 0]] = True
    ahead = prefetch.active()
    if ahead is not None and tensors[0].device.type == "cpu":
        weights = [params[s.name] for s in slices]
        out = _from_prefetched(ahead, weights, tensors, dims, maps, n, imp)
    else:
        out = ops.grouped_norm(tensors, dims, maps, n, imp.p, imp.reduction)
    out = out.to("cpu", torch.float64)
    _check_finite(dg, out.numpy()[touched], imp)
    out[torch.from_numpy(~touched)] = float("nan")
    return out


def _from_prefetched(ahead, weights, tensors, dims, maps, n, imp) -> torch.Tensor:
    """``grouped_norm`` of the members, bit for bit, with the per-index sums the prefetch
    finished taken from it (the others computed here in one pass)."""
    ahead.stop()
    sums = [ahead.sums(w, d, imp.p) for w, d in zip(weights, dims)]
    missing = [i for i, s in enumerate(sums) if s is None]
    if len(missing) == len(sums):
        return ops.grouped_norm(tensors, dims, maps, n, imp.p, imp.reduction)
    if missing:
        computed = ops.index_sums([tensors[i] for i in missing], [dims[i] for i in missing], imp.p)
        sizes = [tensors[i].shape[dims[i]] for i in missing]
        for i, part in zip(missing, computed.split(sizes)):
            sums[i] = part
    units = ops.units_from_sums(sums, maps, n, imp.reduction)
    return units.to(
        torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    )


def magnitude_power(imp) -> int | None:
    """``p`` of a criterion scoring plain ``|w|^p`` sums fused (what a prefetch can take ahead),
    else None."""
    if (
        isinstance(imp, GroupImportance)
        and type(imp).magnitudes is MagnitudeImportance.magnitudes
        and type(imp).scores_parameter is GroupImportance.scores_parameter
        and imp.reduction in ops.REDUCTIONS
    ):
        return imp.p
    return None


# -- normalisation across groups -----------------------------------------------------------------
def normalize(dg: DependencyGraph, scores: torch.Tensor, normalization: str | None) -> torch.Tensor:
    """Scores divided (or standardised) group by group over the group's scored prunable units,
    so that groups of different sizes compete fairly in global pruning. Unscored units stay
    NaN; the order within a group never changes."""
    if normalization is None:
        return scores
    s = scores.numpy().copy()
    for group in dg.groups:
        ids = group.unit_ids
        v = s[ids]
        ok = ~np.isnan(v) & group.prunable
        if not ok.any():
            continue
        x = v[ok]
        if normalization == "mean":
            v = v / (x.mean() + _EPS)
        elif normalization == "max":
            v = v / (x.max() + _EPS)
        elif normalization == "sum":
            v = v / (x.sum() + _EPS)
        elif normalization == "standardization":
            v = (v - x.mean()) / (x.std() + _EPS)
        else:  # lamp: each score over the sum of the scores not below it
            order = np.argsort(x, kind="stable")
            tail = np.cumsum(x[order][::-1])[::-1]
            lamp = np.empty_like(x)
            lamp[order] = x[order] / (tail + _EPS)
            v = v.copy()
            v[ok] = lamp
            v[~ok & ~np.isnan(v)] = np.inf  # blocked units of the group are never removed
        s[ids] = v
    return torch.from_numpy(s)


# -- checks --------------------------------------------------------------------------------------
def _check_finite(dg: DependencyGraph, scored: np.ndarray, imp) -> None:
    """Refuse scores that are NaN or infinite where some member did score: the weights (or
    gradients) behind them are not finite."""
    if np.isfinite(scored).all():
        return
    params = dg.walk.params
    bad = [
        n for n in dg.graph.params if n in params and not torch.isfinite(params[n].detach()).all()
    ]
    raise NonFiniteWeightsError(
        f"importance {getattr(imp, 'name', imp)!r} met weights that are NaN or infinite in "
        f"{', '.join(bad[:5]) or 'the model (or its gradients)'}; no ranking of units is "
        "meaningful"
    )


def _check_real(w: torch.Tensor, name: str, imp) -> None:
    if w.device.type == "meta":
        raise PruningError(
            f"importance {getattr(imp, 'name', imp)!r} needs real weights, but parameter {name} "
            "is on the meta device"
        )
