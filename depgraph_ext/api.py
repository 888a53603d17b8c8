"""The public entry point: ``prune(model, example_inputs, ratio=...)``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .apply import AttributeUpdate, apply_changes, state_companions
from .configs import ConfigUpdate, apply_config_updates
from .counting import PlannedCosts
from .dependency import DependencyGraph, Group
from .errors import InvalidArgumentError
from .plan import Plan, keep_nonempty, make_plan
from .trace import without_gc


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
    macs_before: int | None = None
    macs_after: int | None = None
    units: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (before, after)
    steps: int = 1
    buffers: frozenset[str] = frozenset()  # planned names that are buffers, not parameters

    def save_plan(self, path):
        """Write the plan (kept indices, attribute and config changes) as JSON; replay it on a
        freshly built original with ``depgraph_ext.apply_plan(model, path)``."""
        from .saving import save_plan

        return save_plan(self, path)

    def summary(self, max_rows: int | None = 40) -> str:
        """The layers that changed (main tensor's shape and the layer's parameters before and
        after), the units per group kind, parameters, MACs and the time per stage."""
        layers: dict[str, list[str]] = {}
        for name in self.plan:  # one row per module, shown by its weight if it has one
            module, _, tensor = name.rpartition(".")
            names = layers.setdefault(module, [])
            names.insert(0, name) if tensor == "weight" else names.append(name)

        def numel(shape) -> int:
            return int(np.prod(shape, dtype=np.int64))

        def params(shapes, names) -> int:
            return sum(numel(shapes[x]) for x in names if x not in self.buffers)

        rows = [(m or "<root>", n[0].rpartition(".")[2], self.shapes_before[n[0]],
                 self.shapes_after[n[0]], params(self.shapes_before, n),
                 params(self.shapes_after, n)) for m, n in layers.items()]
        shown = rows if max_rows is None else rows[:max_rows]
        width = max([len("layer")] + [len(r[0]) for r in shown])
        lines = [f"{'layer':<{width}}  {'tensor':<8} {'before':>18}  {'after':>18}  "
                 f"{'params before':>13}  {'after':>11}"]
        for layer, tensor, before, after, p_before, p_after in shown:
            lines.append(f"{layer:<{width}}  {tensor:<8} {str(tuple(before)):>18}  "
                         f"{str(tuple(after)):>18}  {p_before:>13,}  {p_after:>11,}")
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more layers changed")
        for kind, (before, after) in sorted(self.units.items()):
            lines.append(f"{kind}: {before:,} -> {after:,} units")
        ratio = self.params_after / self.params_before if self.params_before else 1.0
        lines.append(
            f"parameters: {self.params_before:,} -> {self.params_after:,} ({ratio:.1%} kept); "
            f"{len(rows)} layers changed in {self.num_groups} groups; backend {self.backend}"
            + (f"; {self.steps} steps" if self.steps > 1 else "")
        )
        if self.macs_before is not None and self.macs_after is not None:
            kept = self.macs_after / self.macs_before if self.macs_before else 1.0
            lines.append(f"MACs: {self.macs_before:,} -> {self.macs_after:,} ({kept:.1%} kept)")
        stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in self.timings.items())
        lines.append(f"time: {stages}")
        return "\n".join(lines)


@without_gc
def prune(
    model: torch.nn.Module,
    example_inputs,
    ratio: float | None = None,
    *,
    importance="l2",
    global_pruning: bool = False,
    iterative_steps: int = 1,
    target_params: float | int | None = None,
    target_macs: float | int | None = None,
    ratios: dict[str, float] | None = None,
    max_ratio: float = 1.0,
    min_units: int = 1,
    round_to: int | None = None,
    ignore=(),
    backend: str | None = None,
    strict: bool = False,
    require_loadable: bool = False,
    in_place: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool | None = None,
) -> PruneResult:
    """Structurally prune ``model`` in place; returns a :class:`PruneResult`.

    How much: ``ratio`` (default 0.5) is the fraction of each group's prunable units removed;
    ``ratios`` overrides it per group kind (``"heads"``, ``"hidden"``, ``"channels"``; 0 leaves
    the kind alone) or per module (the group's root layer is in it); or, instead of ``ratio``,
    ``target_params`` / ``target_macs``: a count (int) or a fraction of the original (float)
    the pruned model must not exceed (the smallest ``ratio`` that reaches it is found).
    ``global_pruning``: groups of one kind compete on normalised scores instead of each losing
    the same fraction; ``max_ratio`` caps any group's loss; ``min_units`` is the least a group
    keeps; ``round_to`` rounds the units a group keeps up to a multiple of it.
    ``importance``: ``"l2"``, ``"l1"``, ``"lamp"``, ``"bn_scale"``, ``"taylor"`` (needs
    ``.grad``), ``"fisher"`` (needs :func:`collect_fisher`), ``"random"``, or an
    :class:`~depgraph_ext.importance.Importance` object.
    ``iterative_steps``: prune in N steps, tracing and scoring again between them (use
    :class:`Pruner` to train in between).
    ``optimizer``: its state (momentum, Adam moments) is sliced with the weights, so training
    goes on with the same optimizer; gradients are always sliced.
    ``ignore``: modules, parameter/buffer names or tensors that must not change.
    ``backend``: ``"native"`` (default when the extension is built) or ``"python"``.
    ``strict``: raise on ops without a rule instead of blocking their channels.
    ``require_loadable``: refuse (before any change) when a transformers config cannot express
    the pruned shapes; otherwise that is a ``ConfigMismatchWarning``.
    ``in_place``: compact weights inside their own memory (native backend), so a model close to
    the machine's memory is never held twice. By default every pruned tensor is built before
    the first is assigned, so any failure leaves the model as it was.
    ``progress``: bars on stages that take seconds; None shows them when standard error is a
    terminal, False never.

    Nothing about the model (or the optimizer) changes when an error is raised.
    """
    from .pruner import Pruner

    pruner = Pruner(model, example_inputs, ratio, importance=importance,
                    global_pruning=global_pruning, iterative_steps=iterative_steps,
                    target_params=target_params, target_macs=target_macs, ratios=ratios,
                    max_ratio=max_ratio, min_units=min_units, round_to=round_to, ignore=ignore,
                    backend=backend, strict=strict, require_loadable=require_loadable,
                    in_place=in_place, optimizer=optimizer, progress=progress)
    if iterative_steps == 1:
        return pruner.step()
    snapshot = None if in_place else Snapshot(model, optimizer)
    try:
        while not pruner.done:
            pruner.step()
    except BaseException:
        if snapshot is not None:
            snapshot.restore(pruner.results)
        raise
    return pruner.result()


class Snapshot:
    """References to everything pruning replaces (tensors' data and grads, optimizer state,
    Fisher statistics), so several steps can be undone together. Holds no copies: pruning
    builds new tensors rather than writing into the old ones (except ``in_place``)."""

    def __init__(self, model: torch.nn.Module, optimizer=None) -> None:
        from .importance import _FISHER_STATS

        self.model = model
        tensors = list(model.parameters()) + list(model.buffers())
        self.tensors = [(t, t.data, t.grad) for t in {id(t): t for t in tensors}.values()]
        self.optimizer = optimizer
        self.state = ({p: dict(st) for p, st in optimizer.state.items()}
                      if optimizer is not None else {})
        self.fisher = [(e, list(e)) for t in model.parameters()
                       if (e := _FISHER_STATS.get(t)) is not None]

    def restore(self, results: list[PruneResult]) -> None:
        from .apply import set_attributes
        from .configs import _config_of

        for result in reversed(results):
            set_attributes(self.model, result.attribute_updates, new=False)
            config = _config_of(self.model)
            for c in reversed(result.config_updates):
                setattr(config, c.field, c.old)
        with torch.no_grad():
            for t, data, grad in self.tensors:
                t.data = data
                t.grad = grad
        for p, st in self.state.items():
            self.optimizer.state[p] = st
        for entry, old in self.fisher:
            entry[:] = old


def compose_results(results: list[PruneResult]) -> PruneResult:
    """Several steps as one result: plans composed into the original model's coordinates."""
    if len(results) == 1:
        return results[0]
    plan: Plan = {}
    before: dict[str, tuple[int, ...]] = {}
    after: dict[str, tuple[int, ...]] = {}
    for r in results:
        for name, dims in r.plan.items():
            current = plan.setdefault(name, {})
            for d, kept in dims.items():
                current[d] = current[d][kept] if d in current else kept
            before.setdefault(name, r.shapes_before[name])
            after[name] = r.shapes_after[name]

    def merged(updates, key):
        first: dict = {}
        for u in updates:
            first[key(u)] = replace(first[key(u)], new=u.new) if key(u) in first else u
        return [u for u in first.values() if u.old != u.new]

    timings: dict[str, float] = {}
    for r in results:
        for k, v in r.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    units = {k: (results[0].units[k][0], results[-1].units.get(k, results[0].units[k])[1])
             for k in results[0].units}
    return PruneResult(
        plan=plan,
        params_before=results[0].params_before,
        params_after=results[-1].params_after,
        timings=timings,
        shapes_before=before,
        shapes_after=after,
        attribute_updates=merged([u for r in results for u in r.attribute_updates],
                                 lambda u: (u.module, u.attr)),
        config_updates=merged([u for r in results for u in r.config_updates],
                              lambda u: u.field),
        num_groups=results[-1].num_groups,
        backend=results[-1].backend,
        macs_before=results[0].macs_before,
        macs_after=results[-1].macs_after,
        units=units,
        steps=len(results),
        buffers=frozenset().union(*(r.buffers for r in results)),
    )


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
    return _apply(dg, *planned, dict(dg.timings) | {"plan": time.perf_counter() - t0}, t0,
                  keep=keep)


def _apply(dg: DependencyGraph, plan: Plan, updates, new_config, timings: dict,
           t0: float, in_place: bool = False, optimizer=None, keep=None) -> PruneResult:
    model = dg.model
    t_count = time.perf_counter()
    costs = PlannedCosts(dg)
    params_before, macs_before = costs.at(None)
    params_after_planned, macs_after = costs.at(keep) if keep is not None else (None, None)
    t = time.perf_counter()
    params = dg.walk.params  # the model's, each once, as named_parameters
    param_names = params.keys()
    tensors = params | dg.walk.buffers
    shapes_before = {n: tuple(tensors[n].shape) for n in plan}
    companions = state_companions(model, plan, optimizer, tensors)
    native = dg.backend == "native"
    apply_changes(model, plan, updates, in_place=in_place and native, native=native,
                  companions=companions, tensors=tensors)
    apply_config_updates(model, new_config)
    dg.stale = True
    t_apply = time.perf_counter()
    timings = timings | {"count": t - t_count, "apply": t_apply - t, "total": t_apply - t0}
    units = {}
    if keep is not None:
        for group in dg.groups:
            b, a = units.get(group.kind, (0, 0))
            units[group.kind] = (b + group.num_units, a + int(keep[group.unit_ids].sum()))
    return PruneResult(
        plan=plan,
        params_before=params_before,
        params_after=sum(p.numel() for p in params.values()),  # each once, as named_parameters
        timings=timings,
        shapes_before=shapes_before,
        shapes_after={n: tuple(tensors[n].shape) for n in plan},
        attribute_updates=updates,
        config_updates=new_config,
        num_groups=len(dg.groups),
        backend=dg.backend,
        macs_before=macs_before,
        macs_after=macs_after,
        units=units,
        buffers=frozenset(plan.keys() - param_names),
    )
