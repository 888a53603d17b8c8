"""Grouped importance: one score per unit, summed over every member slice of its group."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import ops
from .dependency import DependencyGraph
from .errors import InvalidArgumentError, NonFiniteWeightsError, PruningError

IMPORTANCES = ("l2", "l1")


def unit_scores(dg: DependencyGraph, importance: str = "l2") -> torch.Tensor:
    """float64[num_units]: see ``_unit_scores``; refuses weights that are not finite."""
    scores = _unit_scores(dg, importance)
    if not torch.isfinite(scores).all():
        params = dict(dg.model.named_parameters())
        bad = [n for n in dg.graph.params if n in params
               and not torch.isfinite(params[n].detach()).all()]
        raise NonFiniteWeightsError(
            f"importance {importance!r} met weights that are NaN or infinite in "
            f"{', '.join(bad[:5]) or 'the model'}; no ranking of units is meaningful"
        )
    return scores


def _unit_scores(dg: DependencyGraph, importance: str = "l2") -> torch.Tensor:
    """float64[num_units]: sum over member slices of |w|^p (p = 2 for "l2", 1 for "l1").

    Only parameters contribute (buffers such as BatchNorm statistics are not importance).
    """
    if importance not in IMPORTANCES:
        raise InvalidArgumentError(f"importance must be one of {IMPORTANCES}, not {importance!r}")
    res = dg.resolution
    params = dict(dg.model.named_parameters())
    if dg.backend == "native":
        return _native_unit_scores(dg, params, importance)
    scores = torch.zeros(res.num_units, dtype=torch.float64)
    for name in dg.graph.params:
        dims = dg.tensor_dims[name]
        wanted = [(td, pos) for td in dims if (pos := _scored_leaves(dg, td))]
        if not wanted:
            continue
        w = params[name]
        _check_real(w, name, importance)
        magnitude = w.detach().to(torch.float64)
        magnitude = magnitude.abs() if importance == "l1" else magnitude.square()
        for td, positions in wanted:
            others = [d for d in range(magnitude.dim()) if d != td.dim]
            per_index = magnitude.sum(dim=others) if others else magnitude
            per_index = per_index.cpu().reshape([int(s) for s in td.leaf_sizes])
            for pos in positions:
                leaf = int(td.leaves[pos])
                axes = [a for a in range(per_index.dim()) if a != pos]
                per_elem = per_index.sum(dim=axes) if axes else per_index
                units = torch.from_numpy(res.units_of_leaf(leaf))
                scores.index_add_(0, units, per_elem)
    return scores


def _scored_leaves(dg: DependencyGraph, td) -> list[int]:
    res = dg.resolution
    out = []
    for pos, leaf in enumerate(td.leaves):
        if res.leaf_unit_offsets[leaf] < 0:
            continue
        if dg.unit_prunable[res.units_of_leaf(int(leaf))].any():
            out.append(pos)
    return out



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
    """Every parameter slice that contributes to some prunable unit's score, in graph order
    (the order of ``dg.graph.params``: first use in the forward pass). Buffers never score."""
    res = dg.resolution
    out = []
    for name in dg.graph.params:
        for td in dg.tensor_dims[name]:
            for pos in _scored_leaves(dg, td):
                units = res.units_of_leaf(int(td.leaves[pos]))[td.digits(pos)]
                out.append(ScoredSlice(name, td.dim, units))
    return out


def _native_unit_scores(dg: DependencyGraph, params, importance: str) -> torch.Tensor:
    """The same scores from one fused ``grouped_norm`` over every member of every group."""
    res = dg.resolution
    tensors, dims, maps = [], [], []
    for sl in scored_slices(dg):
        w = params[sl.name]
        _check_real(w, sl.name, importance)
        tensors.append(w.detach())
        dims.append(sl.dim)
        maps.append(torch.from_numpy(sl.units).to(w.device))
    if not tensors:
        return torch.zeros(res.num_units, dtype=torch.float64)
    p = 1 if importance == "l1" else 2
    return ops.grouped_norm(tensors, dims, maps, res.num_units, p, "sum").to(
        "cpu", torch.float64)


def _check_real(w: torch.Tensor, name: str, importance: str) -> None:
    if w.device.type == "meta":
        raise PruningError(
            f"importance {importance!r} needs real weights, but parameter {name} is on the "
            "meta device"
        )
