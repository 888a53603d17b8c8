"""The plan a keep mask implies: for every tensor the indices it keeps, the module attributes
and config fields that follow. Nothing is checked here (``validate`` does that) and nothing
changes (``apply`` does that)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..graph.dependency import DependencyGraph
from ..graph.walk import ModelWalk, non_persistent
from .attributes import AttributeUpdate, attribute_updates
from .configs import ConfigUpdate, config_updates

# state_dict name -> {dim: kept indices (sorted int64, original coordinates)}
TensorPlan = dict[str, dict[int, torch.Tensor]]


@dataclass(frozen=True)
class Plan:
    """Everything a keep mask changes, in the graph's original coordinates.

    ``tensors``: per tensor name, the kept indices of each pruned dim; ``masks``: the kept
    elements of every leaf atom that loses any; ``keep``: the keep mask over units it came
    from; ``attributes``/``config``: module attributes and config fields that follow;
    ``config_problems``: what the config cannot express."""

    tensors: TensorPlan
    masks: dict[int, np.ndarray]
    keep: np.ndarray
    attributes: tuple[AttributeUpdate, ...]
    config: tuple[ConfigUpdate, ...]
    config_problems: tuple[str, ...] = ()
    # position among the model's tensor outputs -> {dim: kept indices}: the outputs that
    # shrink (``prune_outputs``)
    outputs: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)


def propose_plan(dg: DependencyGraph, keep: np.ndarray) -> Plan:
    """The plan of a keep mask over units (not validated)."""
    tensors, masks = tensor_plan(dg, keep)
    attributes = attribute_updates(dg, tensors, masks)
    config, problems = config_updates(dg, masks, keep)
    outputs = {}
    for i in dg.free_outputs:
        slots = dg.coupling_model.value_slots[dg.graph.outputs[i]]
        dims = {}
        for d, slot in enumerate(slots):
            kept = kept_indices(dg, dg.resolution.leaves_of(slot), masks)
            if kept is not None:
                dims[d] = kept
        if dims:
            outputs[i] = dims
    return Plan(tensors, masks, keep, tuple(attributes), tuple(config), tuple(problems), outputs)


def kept_indices(dg: DependencyGraph, leaves, masks: dict[int, np.ndarray]):
    """The kept indices of a dim made of ``leaves`` (None: it keeps every one)."""
    if len(leaves) == 1:  # (most dims: one leaf, its mask's kept positions)
        m = masks.get(int(leaves[0]))
        return None if m is None else torch.from_numpy(np.flatnonzero(m).astype(np.int64))
    leaf_masks = [masks.get(int(leaf)) for leaf in leaves]
    if all(m is None for m in leaf_masks):
        return None
    combined = np.ones((), dtype=bool)
    for leaf, m in zip(leaves, leaf_masks):
        m = np.ones(int(dg.resolution.leaf_sizes[leaf]), dtype=bool) if m is None else m
        combined = np.logical_and.outer(combined, m)
    return torch.from_numpy(np.nonzero(combined.reshape(-1))[0].astype(np.int64))


def tensor_plan(
    dg: DependencyGraph, unit_keep: np.ndarray
) -> tuple[TensorPlan, dict[int, np.ndarray]]:
    """Kept indices of every tensor dim that loses any, and the leaf masks behind them."""
    masks = dg.leaf_keep_masks(unit_keep)
    plan: TensorPlan = {}
    made: dict[bytes, torch.Tensor | None] = {}  # by leaves: the residual stream's in every layer
    for name, dims in dg.tensor_dims.items():
        for td in dims:
            key = td.leaves.tobytes()
            if key not in made:
                made[key] = kept_indices(dg, td.leaves, masks)
            kept = made[key]
            if kept is not None:
                plan.setdefault(name, {})[td.dim] = kept
    return plan, masks


@dataclass(frozen=True)
class NamedPlan:
    """A tensor plan as users find the tensors: ``tensors``, every ``state_dict()`` key whose
    tensor changes (each name of a tied tensor, ``tied`` mapping each further name to the one
    the plan was made under); ``outside``: the changed buffers ``state_dict()`` leaves out
    (non-persistent ones), which the model needs all the same."""

    tensors: TensorPlan
    tied: dict[str, str]
    outside: TensorPlan


def named_plan(tensors: TensorPlan, walk: ModelWalk) -> NamedPlan:
    """``tensors`` (canonical names) as the model's ``state_dict`` names them."""
    left_out = non_persistent(walk)

    def in_state_dict(name: str) -> bool:
        return name not in left_out

    out: TensorPlan = {}
    outside: TensorPlan = {}
    tied: dict[str, str] = {}
    for name, dims in tensors.items():
        (out if in_state_dict(name) else outside)[name] = dims
    for alias, canonical in walk.aliases.items():
        if canonical in tensors:
            (out if in_state_dict(alias) else outside)[alias] = tensors[canonical]
            tied[alias] = canonical
    return NamedPlan(out, tied, outside)
