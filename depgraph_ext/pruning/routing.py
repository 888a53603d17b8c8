"""Routing statistics of mixture-of-experts models: how often and how strongly each router
chooses each expert, gathered on real data, to score whole experts by."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import MissingGradientsError, PruningError
from ..graph.dependency import DependencyGraph
from .importance import Importance, MagnitudeImportance

# router module -> its statistics, gathered by collect_routing
_ROUTING: WeakIdKeyDictionary = WeakIdKeyDictionary()


@dataclass
class RoutingStatistics:
    """Per expert: how many times it was chosen, and the routing weight it got in all."""

    chosen: torch.Tensor  # float64 [experts]
    weight: torch.Tensor  # float64 [experts]
    negative_weights: bool = False  # the top-k values were not probabilities (raw logits)

    def scores(self) -> np.ndarray:
        """The routing weight received where the weights are probabilities, else the count."""
        return (self.chosen if self.negative_weights else self.weight).numpy().copy()


class _TopKRecorder(torch.overrides.TorchFunctionMode):
    def __init__(self, running: list[nn.Module]):
        super().__init__()
        self.running = running

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.topk, torch.Tensor.topk) and self.running:
            _record(self.running[-1], args, kwargs or {}, out)
        return out


def _record(module: nn.Module, args, kwargs, out) -> None:
    scores = args[0]
    dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
    experts = scores.shape[dim]
    values, indices = out
    chosen = indices.detach().reshape(-1).to("cpu", torch.int64)
    weights = values.detach().reshape(-1).to("cpu", torch.float64)
    stats = _ROUTING.get(module)
    if stats is None or stats.chosen.shape[0] != experts:
        stats = RoutingStatistics(
            torch.zeros(experts, dtype=torch.float64), torch.zeros(experts, dtype=torch.float64)
        )
        _ROUTING[module] = stats
    stats.chosen.add_(torch.bincount(chosen, minlength=experts).to(torch.float64))
    stats.weight.index_add_(0, chosen, weights)
    stats.negative_weights |= bool((weights < 0).any())


@contextlib.contextmanager
def collect_routing(model: nn.Module):
    """Within this block, every forward pass adds to each router's statistics: for every
    expert, how many times the router chose it and the routing weight it gave it (a router is
    the module that runs a top-k over experts). ``importance="routing"`` then scores whole
    experts by the weight they received (neurons and other groups by L2 magnitude)."""
    running: list[nn.Module] = []

    def enter(module, args) -> None:
        running.append(module)

    def leave(module, args, output) -> None:  # (returning anything would replace the output)
        running.pop()

    handles = []
    for _, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        with _TopKRecorder(running):
            yield
    finally:
        for h in handles:
            h.remove()


def routing_statistics(module: nn.Module) -> RoutingStatistics | None:
    """What collect_routing gathered for a router module, or None."""
    return _ROUTING.get(module)


def clear_routing(model: nn.Module) -> None:
    for module in model.modules():
        _ROUTING.pop(module, None)


class RoutingImportance(Importance):
    """Whole experts scored by the routing weight they received under
    :func:`collect_routing` (mean-normalised within each layer's experts); every other group
    by ``fallback`` (L2 magnitude by default)."""

    name = "routing"

    def __init__(self, fallback: Importance | None = None) -> None:
        self.fallback = fallback or MagnitudeImportance(2)

    def scores(self, dg: DependencyGraph) -> torch.Tensor:
        scores = self.fallback.scores(dg).clone()
        res = dg.resolution
        modules = dict(dg.walk.modules)
        found = False
        for slot, router in dg.coupling_model.routers:
            stats = _ROUTING.get(modules.get(router))
            leaves = res.leaves_of(slot)
            if stats is None or len(leaves) != 1 or res.leaf_unit_offsets[leaves[0]] < 0:
                continue
            units = res.units_of_leaf(int(leaves[0]))
            if stats.chosen.shape[0] != units.shape[0]:
                raise PruningError(
                    f"the routing statistics of {router} count {stats.chosen.shape[0]} experts; "
                    f"it has {units.shape[0]} now: gather them again with collect_routing"
                )
            s = stats.scores()
            mean = s.mean()
            scores[units] = torch.from_numpy(s / mean if mean > 0 else s)
            found = True
        if dg.coupling_model.routers and not found:
            raise MissingGradientsError(
                "importance 'routing' needs routing statistics: run the model on some batches "
                "inside `with depgraph_ext.collect_routing(model):` before pruning"
            )
        return scores

    def __repr__(self) -> str:
        return f"RoutingImportance(fallback={self.fallback!r})"
