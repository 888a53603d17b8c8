"""The public entry point: ``prune(model, example_inputs, ratio=...)``."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .apply import AttributeUpdate, apply_changes
from .configs import ConfigUpdate, apply_config_updates
from .dependency import DependencyGraph, FixedSizeWarning, Group
from .errors import InvalidArgumentError, NoPrunableGroupsError, PlanValidationError
from .importance import unit_scores
from .plan import (
    Plan,
    check_ratio,
    check_ratios,
    check_round_to,
    keep_nonempty,
    make_plan,
    select_local,
)
from .trace import without_gc

_MAX_FEEDBACK = 32  # validation rounds; each blocks at least one more slot


def count_params(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@dataclass
class PruneResult:
    """What ``prune`` did. ``plan``: state_dict name -> {dim: kept indices (original coords)}."""

    plan: Plan
    params_before: int
    params_after: int
    timings: dict[str, float]
    shapes_before: dict[str, tuple[int, ...]]
    shapes_after: dict[str, tuple[int, ...]]
    attribute_updates: list[AttributeUpdate] = field(default_factory=list)
    config_updates: list[ConfigUpdate] = field(default_factory=list)
    num_groups: int = 0
    backend: str = "native"

    def save_plan(self, path):
        """Write the plan (kept indices, attribute and config changes) as JSON; replay it on a
        freshly built original with ``depgraph_ext.apply_plan(model, path)``."""
        from .saving import save_plan

        return save_plan(self, path)

    def summary(self, max_rows: int | None = 40) -> str:
        """A table of the layers that changed (their main tensor's shape before and after),
        then parameter counts and the time per stage."""
        layers: dict[str, str] = {}
        for name in self.plan:  # one row per module: its weight if it has one
            module, _, tensor = name.rpartition(".")
            if module not in layers or tensor == "weight":
                layers[module] = name
        rows = [(m or "<root>", self.shapes_before[n], self.shapes_after[n], n.rpartition(".")[2])
                for m, n in layers.items()]
        shown = rows if max_rows is None else rows[:max_rows]
        width = max([len("layer")] + [len(r[0]) for r in shown])
        lines = [f"{'layer':<{width}}  {'tensor':<12} {'before':>20}  {'after':>20}"]
        for layer, before, after, tensor in shown:
            lines.append(f"{layer:<{width}}  {tensor:<12} {str(tuple(before)):>20}  "
                         f"{str(tuple(after)):>20}")
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more layers changed")
        ratio = self.params_after / self.params_before if self.params_before else 1.0
        lines.append(
            f"parameters: {self.params_before:,} -> {self.params_after:,} ({ratio:.1%} kept); "
            f"{len(rows)} layers changed in {self.num_groups} groups; backend {self.backend}"
        )
        stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in self.timings.items())
        lines.append(f"time: {stages}")
        return "\n".join(lines)


@without_gc
def prune(
    model: torch.nn.Module,
    example_inputs,
    ratio: float = 0.5,
    *,
    importance: str = "l2",
    ignore=(),
    round_to: int | None = None,
    backend: str | None = None,
    strict: bool = False,
    ratios: dict[str, float] | None = None,
    require_loadable: bool = False,
    in_place: bool = False,
    progress: bool | None = None,
) -> PruneResult:
    """Structurally prune ``model`` in place; returns a :class:`PruneResult`.

    ``ratio``: the fraction of each group's prunable units to remove (local pruning).
    ``importance``: ``"l2"`` or ``"l1"`` grouped magnitude over every member slice.
    ``ignore``: modules, parameter/buffer names or tensors that must not change.
    ``round_to``: round the units left in each group up to a multiple of this.
    ``backend``: ``"native"`` (default when the extension is built) or ``"python"``.
    ``strict``: raise on ops without a rule instead of blocking their channels.
    ``ratios``: per group kind (``"heads"``, ``"hidden"``, ``"channels"``) ratios overriding
    ``ratio``; 0 leaves that kind alone.
    ``require_loadable``: refuse (before any change) when a transformers config cannot express
    the pruned shapes; otherwise that is a ``ConfigMismatchWarning``.
    ``in_place``: compact weights inside their own memory (native backend), so a model close to
    the machine's memory is never held twice. By default every pruned tensor is built before
    the first is assigned, so any failure leaves the model as it was.
    ``progress``: bars on stages that take seconds; None shows them when standard error is a
    terminal, False never.

    Nothing about the model changes when an error is raised.
    """
    ratio = check_ratio(ratio)
    ratios = check_ratios(ratios)
    round_to = check_round_to(round_to)
    if not isinstance(importance, str):
        raise InvalidArgumentError(f"importance must be a name, not {type(importance).__name__}")
    t0 = time.perf_counter()
    dg = DependencyGraph(model, example_inputs, ignore=ignore, strict=strict, backend=backend,
                         progress=progress)
    timings = dict(dg.timings)
    timings.update(score=0.0, select=0.0, plan=0.0)
    for _ in range(_MAX_FEEDBACK):
        t1 = time.perf_counter()
        scores = unit_scores(dg, importance)
        t2 = time.perf_counter()
        if not dg.groups:
            raise NoPrunableGroupsError(
                "no group of the model has a prunable unit: every channel touches an input, an "
                "output, an ignored tensor or an op without a rule"
                + "".join(f"\n  - {op.describe()}" for op in dg.opaque_ops)
            )
        keep = select_local(dg, scores, ratio, round_to, ratios)
        t3 = time.perf_counter()
        timings["score"] += t2 - t1
        timings["select"] += t3 - t2
        try:
            planned = make_plan(dg, keep, require_loadable)
        except PlanValidationError as exc:
            timings["plan"] += time.perf_counter() - t3
            fresh = set(exc.fixed_slots) - dg.extra_blocked
            if not fresh and exc.node is not None:  # no progress: keep the whole op
                node = dg.graph.nodes[exc.node]
                slots = dg.coupling_model.value_slots
                fresh = {s for v in node.inputs + node.outputs for s in slots[v]}
                fresh -= dg.extra_blocked
            if not fresh:
                raise
            warnings.warn(f"{exc}; keeping the channels of those dims", FixedSizeWarning,
                          stacklevel=2)
            dg.block_slots(fresh)
            continue
        timings["plan"] += time.perf_counter() - t3
        return _apply(dg, *planned, timings, t0, in_place)
    raise PlanValidationError(f"no valid plan after {_MAX_FEEDBACK} rounds of validation")


def prune_group(dg: DependencyGraph, group: Group, units) -> PruneResult:
    """Remove the given group-local ``units`` of one group by hand (validated, in place)."""
    dg.check_fresh()
    units = np.asarray(units, dtype=np.int64).reshape(-1)
    if units.size and (units.min() < 0 or units.max() >= group.num_units):
        raise InvalidArgumentError(f"units must be in [0, {group.num_units}) for {group!r}")
    if units.size and not group.prunable[units].all():
        raise InvalidArgumentError(f"{group!r}: units {units[~group.prunable[units]].tolist()} are "
                                   "blocked and cannot be removed")
    keep = np.ones(dg.resolution.num_units, dtype=bool)
    keep[group.unit_ids[units]] = False
    empty = keep.copy()
    keep_nonempty(dg, np.zeros(keep.shape[0]), empty)
    if not np.array_equal(empty, keep):
        raise InvalidArgumentError(f"{group!r}: removing these units would empty a layer")
    t0 = time.perf_counter()
    planned = make_plan(dg, keep)
    return _apply(dg, *planned, dict(dg.timings) | {"plan": time.perf_counter() - t0}, t0)


def _apply(dg: DependencyGraph, plan: Plan, updates, new_config, timings: dict,
           t0: float, in_place: bool = False) -> PruneResult:
    model = dg.model
    params_before = count_params(model)
    t = time.perf_counter()
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    shapes_before = {n: tuple(tensors[n].shape) for n in plan}
    native = dg.backend == "native"
    apply_changes(model, plan, updates, in_place=in_place and native, native=native)
    apply_config_updates(model, new_config)
    dg.stale = True
    t_apply = time.perf_counter()
    timings = timings | {"apply": t_apply - t, "total": t_apply - t0}
    return PruneResult(
        plan=plan,
        params_before=params_before,
        params_after=count_params(model),
        timings=timings,
        shapes_before=shapes_before,
        shapes_after={n: tuple(tensors[n].shape) for n in plan},
        attribute_updates=updates,
        config_updates=new_config,
        num_groups=len(dg.groups),
        backend=dg.backend,
    )
