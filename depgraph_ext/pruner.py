"""The pruning loop: score, select (local or global, to a ratio or to a parameter/MACs target),
validate, slice; once or in N steps with scores recomputed between them (:class:`Pruner`)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch

from .api import PruneResult, _apply, compose_results
from .counting import PlannedCosts
from .dependency import DependencyGraph
from .errors import (
    InvalidArgumentError,
    NoPrunableGroupsError,
    PlanValidationError,
    PruningError,
)
from .importance import get_importance, unit_scores
from .plan import (
    Selection,
    check_max_ratio,
    check_min_units,
    check_ratio,
    check_ratios,
    check_round_to,
    group_roots,
    learn_fixed_sizes,
    make_plan,
    select,
    shrinkable_groups,
)
from .trace import without_gc

_MAX_FEEDBACK = 32  # validation rounds; each blocks at least one more slot
_BISECTION_STEPS = 30


class Pruner:
    """Prune ``model`` in ``iterative_steps`` steps; call :meth:`step` once per step (train or
    fine-tune in between: every step traces the current model and recomputes the scores).

    After step i of N the model has lost ``i/N`` of what the whole schedule removes: of each
    ratio's units, or of the way to ``target_params`` / ``target_macs``. The arguments are
    those of :func:`depgraph_ext.prune`, which runs every step at once.
    """

    def __init__(self, model: torch.nn.Module, example_inputs, ratio: float | None = None, *,
                 importance="l2", global_pruning: bool = False, iterative_steps: int = 1,
                 target_params: float | int | None = None,
                 target_macs: float | int | None = None, ratios: dict | None = None,
                 max_ratio: float = 1.0, min_units: int = 1, round_to: int | None = None,
                 ignore=(), backend: str | None = None, strict: bool = False,
                 require_loadable: bool = False, in_place: bool = False,
                 optimizer: torch.optim.Optimizer | None = None,
                 progress: bool | None = None) -> None:
        if ratio is not None and (target_params is not None or target_macs is not None):
            raise InvalidArgumentError("give either ratio or target_params/target_macs, not both")
        if not isinstance(iterative_steps, int) or isinstance(iterative_steps, bool) or (
                iterative_steps < 1):
            raise InvalidArgumentError(f"iterative_steps must be an integer >= 1, not "
                                       f"{iterative_steps!r}")
        if not isinstance(global_pruning, bool):
            raise InvalidArgumentError(f"global_pruning must be True or False, not "
                                       f"{global_pruning!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidArgumentError(f"optimizer must be a torch.optim.Optimizer, not "
                                       f"{type(optimizer).__name__}")
        self.model = model
        self.example_inputs = example_inputs
        self.importance = get_importance(importance)
        self.selection = Selection(
            ratio=check_ratio(0.5 if ratio is None else ratio),
            ratios=check_ratios(ratios, model),
            global_pruning=global_pruning,
            max_ratio=check_max_ratio(max_ratio),
            min_units=check_min_units(min_units),
            round_to=check_round_to(round_to),
        )
        self.target_params = _check_target(target_params, "target_params")
        self.target_macs = _check_target(target_macs, "target_macs")
        self.iterative_steps = iterative_steps
        self.options = dict(ignore=ignore, backend=backend, strict=strict, progress=progress)
        self.require_loadable = require_loadable
        self.in_place = in_place
        self.optimizer = optimizer
        self.results: list[PruneResult] = []
        self._initial: tuple[int, int] | None = None  # (params, MACs) before step 1
        self._initial_units: tuple[dict, dict] | None = None  # prunable units before step 1

    @property
    def done(self) -> bool:
        return len(self.results) >= self.iterative_steps

    @without_gc
    def step(self) -> PruneResult:
        """Run the next step; returns what it did (its plan in the current model's coordinates)."""
        if self.done:
            raise PruningError(f"all {self.iterative_steps} steps of this pruner are done")
        i, n = len(self.results) + 1, self.iterative_steps
        t0 = time.perf_counter()
        dg = DependencyGraph(self.model, self.example_inputs, **self.options)
        targets = None
        if self.target_params is not None or self.target_macs is not None:
            costs = PlannedCosts(dg)
            if self._initial is None:
                self._initial = costs.at(None)
            p0, m0 = self._initial
            targets = (_step_target(self.target_params, p0, i, n),
                       _step_target(self.target_macs, m0, i, n), costs)
        selection = self.selection
        if n > 1 and targets is None:
            if self._initial_units is None:
                self._initial_units = _initial_counts(dg)
            selection = replace(selection, progress=i / n,
                                initial_groups=self._initial_units[0],
                                initial_kinds=self._initial_units[1])
        result = prune_step(dg, self.importance, selection, targets,
                            self.require_loadable, self.in_place, self.optimizer, t0)
        self.results.append(result)
        return result

    def result(self) -> PruneResult:
        """Every step so far as one result (plan in the original model's coordinates)."""
        if not self.results:
            raise PruningError("no step has run yet")
        return compose_results(self.results)


def _check_target(target, what: str):
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(
            target) or target <= 0:
        raise InvalidArgumentError(f"{what} must be a positive count (int) or a fraction of the "
                                   f"original in (0, 1] (float), not {target!r}")
    if isinstance(target, float) and target > 1.0:
        raise InvalidArgumentError(f"{what} as a float is the fraction of the original to keep, "
                                   f"in (0, 1]; give a count as an int, not {target!r}")
    return target


def _step_target(target, initial: int, i: int, n: int) -> int | None:
    if target is None:
        return None
    final = target * initial if isinstance(target, float) else target
    return int(math.floor(initial - (initial - final) * i / n))


def _initial_counts(dg: DependencyGraph) -> tuple[dict, dict]:
    """Prunable units per group (keyed by its root parameter, stable across steps) and kind."""
    groups, kinds = {}, {}
    for group, root in zip(dg.groups, group_roots(dg)):
        groups[root] = groups.get(root, 0) + group.num_prunable
        kinds[group.kind] = kinds.get(group.kind, 0) + group.num_prunable
    return groups, kinds


def prune_step(dg: DependencyGraph, importance, selection: Selection, targets,
               require_loadable: bool, in_place: bool, optimizer, t0: float) -> PruneResult:
    """Score, select, validate (learning sizes the model's code fixes) and apply, once."""
    timings = dict(dg.timings)
    timings.update(score=0.0, select=0.0, plan=0.0)
    for _ in range(_MAX_FEEDBACK):
        t1 = time.perf_counter()
        with dg.scoring_only(shrinkable_groups(dg, selection, targets)):
            scores = unit_scores(dg, importance)
        t2 = time.perf_counter()
        if not dg.groups:
            raise NoPrunableGroupsError(
                "no group of the model has a prunable unit: every channel touches an input, an "
                "output, an ignored tensor or an op without a rule"
                + "".join(f"\n  - {op.describe()}" for op in dg.opaque_ops)
            )
        keep = choose_units(dg, scores, selection, targets)
        t3 = time.perf_counter()
        timings["score"] += t2 - t1
        timings["select"] += t3 - t2
        try:
            planned = make_plan(dg, keep, require_loadable)
        except PlanValidationError as exc:
            timings["plan"] += time.perf_counter() - t3
            learn_fixed_sizes(dg, exc)
            continue
        timings["plan"] += time.perf_counter() - t3
        return _apply(dg, *planned, timings, t0, in_place, optimizer, keep)
    raise PlanValidationError(f"no valid plan after {_MAX_FEEDBACK} rounds of validation")


def choose_units(dg: DependencyGraph, scores: torch.Tensor, selection: Selection,
                 targets) -> np.ndarray:
    """The keep mask: ``selection`` as it is, or, with targets ``(params, macs, costs)``, with
    the smallest ``ratio`` whose predicted parameters and MACs are within both targets."""
    if targets is None:
        return select(dg, scores, selection)
    max_params, max_macs, costs = targets

    def within(keep) -> bool:
        params, macs = costs.at(keep)
        return (max_params is None or params <= max_params) and (
            max_macs is None or macs <= max_macs)

    keep = select(dg, scores, selection.with_ratio(0.0))
    if within(keep):
        return keep
    hi = 1.0 - 1e-9
    keep_hi = select(dg, scores, selection.with_ratio(hi))
    if not within(keep_hi):
        params, macs = costs.at(keep_hi)
        raise InvalidArgumentError(
            f"the target cannot be reached: removing every prunable unit this selection allows "
            f"leaves {params:,} parameters and {macs:,} MACs (targets: "
            f"{max_params if max_params is not None else '-'} parameters, "
            f"{max_macs if max_macs is not None else '-'} MACs); lower max_ratio/min_units "
            "limits or the per-kind ratios, or ask for less")
    lo = 0.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        keep_mid = select(dg, scores, selection.with_ratio(mid))
        if within(keep_mid):
            hi, keep_hi = mid, keep_mid
        else:
            lo = mid
    return keep_hi
