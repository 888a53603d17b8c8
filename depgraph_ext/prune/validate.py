"""Validation: a plan's pruned shapes are traced before anything changes; a size the model's
code fixes is learnt (those dims blocked, a new graph) and the plan is redone. The one
feedback loop of every pipeline (``prune``, ``prune_checkpoint``) is :func:`plan_until_valid`."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np

from ..errors import FixedSizeWarning, PlanValidationError, TraceError, user_stacklevel
from ..gcpause import paused_gc
from ..graph.dependency import DependencyGraph
from .attributes import temporary_attributes
from .configs import check_loadable
from .plan import Plan, propose_plan

MAX_ROUNDS = 32  # validation rounds of one plan; each blocks at least one more slot


def checked_plan(dg: DependencyGraph, keep: np.ndarray, require_loadable: bool = False) -> Plan:
    """The plan of a keep mask, validated (PlanValidationError when its shapes do not run) and
    its config checked (``require_loadable``: refused when the config cannot express it)."""
    with paused_gc():
        plan = propose_plan(dg, keep)
        validate_plan(dg, plan)
    check_loadable(
        dg, plan.config, dg.planned_shapes(plan.tensors), plan.config_problems, require_loadable
    )
    return plan


def plan_until_valid(
    dg: DependencyGraph,
    choose: Callable[[DependencyGraph], np.ndarray],
    require_loadable: bool = False,
    timings: dict[str, float] | None = None,
) -> tuple[DependencyGraph, Plan]:
    """``choose(dg)`` gives a keep mask; its plan is checked; when its shapes do not run, the
    sizes the model's code fixes are blocked and ``choose`` runs again on the new graph.
    Returns the graph the plan belongs to and the plan. ``timings["plan"]`` accumulates the
    time spent planning and validating."""
    for _ in range(MAX_ROUNDS):
        keep = choose(dg)
        t = time.perf_counter()
        try:
            plan = checked_plan(dg, keep, require_loadable)
        except PlanValidationError as exc:
            if timings is not None:
                timings["plan"] = timings.get("plan", 0.0) + time.perf_counter() - t
            dg = learn_fixed_sizes(dg, exc)
            continue
        if timings is not None:
            timings["plan"] = timings.get("plan", 0.0) + time.perf_counter() - t
        return dg, plan
    raise PlanValidationError(f"no valid plan after {MAX_ROUNDS} rounds of validation")


def validate_plan(dg: DependencyGraph, plan: Plan) -> None:
    """Trace the pruned shapes (attributes set for the duration only) and check that every op
    runs and every tensor has exactly the predicted shape; raise PlanValidationError naming
    the op and the slots it showed to be fixed otherwise."""
    masks = plan.masks
    g = dg.graph
    slots = dg.coupling_model.value_slots
    try:
        with temporary_attributes(dg.model, plan.attributes):
            pruned = dg.trace_pruned(dg.planned_shapes(plan.tensors))
    except TraceError as exc:
        failed = getattr(exc, "failed_at", None)
        bad = _original_of(g, failed) if failed is not None else None
        fixed, where = [], ""
        if bad is not None:
            fixed = (
                _sizes_fixed_by_call(dg, bad, failed.args, masks)
                or _inputs_at_original_size(dg, bad, failed.input_shapes, masks)
                or [s for v in bad.inputs + bad.outputs for s in slots[v]]
            )
            where = f" at op {bad.name} in module {bad.module or '<root>'}"
        raise PlanValidationError(
            f"the pruned shapes do not run{where}: {exc}",
            bad.index if bad is not None else None,
            fixed,
        ) from exc

    kept = dg.slot_kept_sizes(masks)
    kept_sizes = kept.tolist()

    def check(where: str, vo: int, actual: tuple) -> None:
        expected = tuple([kept_sizes[s] for s in slots[vo]])
        if expected == actual:
            return
        original = g.values[vo].shape
        wrong = [d for d in range(len(expected)) if expected[d] != actual[d]]
        # A dim the code kept at its original size is the one the code fixes.
        fixed = [slots[vo][d] for d in wrong if actual[d] == original[d]]
        fixed = fixed or [slots[vo][d] for d in wrong]
        raise PlanValidationError(
            f"{where} would produce shape {actual} where the plan needs {expected} (original "
            f"{original}): the model's code fixes a size the rules treat as prunable",
            None,
            fixed,
        )

    aligned = len(pruned.ops) == len(g.nodes) and all(
        a.op is op or a.name == str(op) for a, (op, _, _) in zip(g.nodes, pruned.ops)
    )
    if aligned and _all_ops_as_planned(dg, pruned, kept):
        pass
    elif aligned:  # op by op: the first deviating op is the one whose call fixes a size
        for old, (_, _, new_shapes) in zip(g.nodes, pruned.ops):
            for vo, shape in zip(old.outputs, new_shapes):
                check(f"op {old.name} in module {old.module or '<root>'}", vo, shape)
    else:  # decompositions branch on shapes: compare what every module call returns
        calls = list(zip(g.module_calls, pruned.module_calls))
        if len(g.module_calls) != len(pruned.module_calls) or any(
            a[0] != b[0] or len(a[1]) != len(b[1]) for a, b in calls
        ):
            raise PlanValidationError(
                "the pruned model calls its modules differently from the "
                "original; its control flow depends on the pruned sizes"
            )
        for (name, outs_old), (_, shapes_new) in calls:
            for vo, shape in zip(outs_old, shapes_new):
                check(f"module {name or '<root>'}", vo, shape)
    for vo, shape in zip(g.outputs, pruned.outputs):
        check("the model's output", vo, shape)


def _all_ops_as_planned(dg: DependencyGraph, pruned, kept_sizes: np.ndarray) -> bool:
    """Every op of an aligned pruned trace gave as many results as the original, of the same
    ranks and exactly the planned sizes (in one comparison of flat arrays; the op-by-op check
    runs only when not, to say where)."""
    counts, ranks, flat_slots = dg.output_layout
    shapes = [shape for _, _, op_shapes in pruned.ops for shape in op_shapes]
    if not np.array_equal(
        np.fromiter((len(s) for _, _, s in pruned.ops), np.int64, len(pruned.ops)), counts
    ):
        return False
    if not np.array_equal(np.fromiter((len(s) for s in shapes), np.int64, len(shapes)), ranks):
        return False
    actual = np.fromiter((d for shape in shapes for d in shape), np.int64, flat_slots.shape[0])
    return bool(np.array_equal(actual, kept_sizes[flat_slots]))


def _original_of(g, failed):
    """The original node a failing op of the pruned trace corresponds to: the same index when
    the two traces ran the same ops, else the same op's same occurrence in the same module
    (decompositions may branch on shapes, shifting indices)."""
    if (
        failed.index < len(g.nodes)
        and g.nodes[failed.index].name == failed.op
        and (g.nodes[failed.index].module == failed.module)
    ):
        return g.nodes[failed.index]
    same = [n for n in g.nodes if n.module == failed.module and n.name == failed.op]
    return same[failed.occurrence] if failed.occurrence < len(same) else None


def _sizes_fixed_by_call(dg: DependencyGraph, node, new_args, masks) -> list[int]:
    """Output dims that a failing call (view, reshape, expand ...) was asked for at their
    original size by an explicit integer, where the plan changes them: the code fixes those."""
    out = node.outputs[0] if node.outputs else None
    if out is None or new_args is None:
        return []
    slots = dg.coupling_model.value_slots[out]
    for old_arg, new_arg in zip(node.args, new_args):
        if (
            isinstance(old_arg, (list, tuple))
            and isinstance(new_arg, (list, tuple))
            and len(old_arg) == len(new_arg) == len(slots)
            and all(isinstance(x, int) for x in (*old_arg, *new_arg))
        ):
            return [
                s
                for d, s in enumerate(slots)
                if new_arg[d] == old_arg[d] != -1 and dg.slot_kept_size(s, masks) != old_arg[d]
            ]
    return []


def _inputs_at_original_size(dg: DependencyGraph, node, shapes, masks) -> list[int]:
    """Input dims of a failing op that arrived at their original size where the plan shrinks
    them: whatever made that input fixes the size (zeros(2, 10) in the model's code, say)."""
    g, slots = dg.graph, dg.coupling_model.value_slots
    if shapes is None or len(shapes) != len(node.inputs):
        return []
    fixed = []
    for v, shape in zip(node.inputs, shapes):
        original = g.values[v].shape
        if len(shape) != len(original):
            return []
        for d, s in enumerate(slots[v]):
            if shape[d] == original[d] != dg.slot_kept_size(s, masks):
                fixed.append(s)
    return fixed


def learn_fixed_sizes(dg: DependencyGraph, exc: PlanValidationError) -> DependencyGraph:
    """After a failed validation: the graph with the dims the model's code was found to fix
    blocked (a ``FixedSizeWarning`` names them), so the plan can be redone; re-raise ``exc``
    when there is nothing new to block."""
    fresh = set(exc.fixed_slots) - dg.extra_blocked
    if not fresh and exc.node is not None:  # no progress: keep the whole op
        node = dg.graph.nodes[exc.node]
        slots = dg.coupling_model.value_slots
        fresh = {s for v in node.inputs + node.outputs for s in slots[v]}
        fresh -= dg.extra_blocked
    if not fresh:
        raise exc
    warnings.warn(
        f"{exc}; keeping the channels of those dims", FixedSizeWarning, stacklevel=user_stacklevel()
    )
    return dg.with_blocked(fresh)
