"""Grouped importance: one score per unit, summed over every member slice of its group."""

from __future__ import annotations

import torch

from .dependency import DependencyGraph
from .errors import InvalidArgumentError, PruningError

IMPORTANCES = ("l2", "l1")


def unit_scores(dg: DependencyGraph, importance: str = "l2") -> torch.Tensor:
    """float64[num_units]: sum over member slices of |w|^p (p = 2 for "l2", 1 for "l1").

    Only parameters contribute (buffers such as BatchNorm statistics are not importance).
    """
    if importance not in IMPORTANCES:
        raise InvalidArgumentError(f"importance must be one of {IMPORTANCES}, not {importance!r}")
    res = dg.resolution
    scores = torch.zeros(res.num_units, dtype=torch.float64)
    params = dict(dg.model.named_parameters())
    for name in dg.graph.params:
        dims = dg.tensor_dims[name]
        wanted = [td for td in dims if _scored_leaves(dg, td)]
        if not wanted:
            continue
        w = params[name]
        if w.device.type == "meta":
            raise PruningError(
                f"importance {importance!r} needs real weights, but parameter {name} is on the "
                "meta device"
            )
        magnitude = w.detach().to(torch.float64)
        magnitude = magnitude.abs() if importance == "l1" else magnitude.square()
        for td in wanted:
            others = [d for d in range(magnitude.dim()) if d != td.dim]
            per_index = magnitude.sum(dim=others) if others else magnitude
            per_index = per_index.cpu().reshape([int(s) for s in td.leaf_sizes])
            for pos in _scored_leaves(dg, td):
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

