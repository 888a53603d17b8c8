"""Validation: a plan's pruned shapes are traced before anything changes; a size the model's
code fixes is learnt (those dims blocked, a new graph) and the plan is redone. The one
feedback loop of every pipeline (``prune``, ``prune_checkpoint``) is :func:`plan_until_valid`."""

from __future__ import annotations

import dataclasses
import difflib
import time
import warnings
from collections.abc import Callable

import numpy as np

from ..errors import (
    FixedSizeWarning,
    NoPrunableGroupsError,
    PlanValidationError,
    TraceError,
    user_stacklevel,
)
from ..gcpause import paused_gc
from ..graph.dependency import DependencyGraph
from .attributes import attributes_named_like, temporary_attributes
from .configs import (
    Rebuilds,
    attributes_of_rebuild,
    loadable_config,
    report_mismatch,
    temporary_config,
)
from .plan import Plan, propose_plan

MAX_ROUNDS = 64  # validation rounds of one plan; each blocks at least one more slot


def checked_plan(dg: DependencyGraph, keep: np.ndarray, require_loadable: bool = False) -> Plan:
    """The plan of a keep mask with the config updates the config accepts, validated with
    them set (PlanValidationError when its shapes do not run) and the rest of the config
    reported (``require_loadable``: refused when the config cannot express it)."""
    with paused_gc():
        plan = propose_plan(dg, keep)
        rebuilds = Rebuilds(dg.model)
        accepted, mismatch = loadable_config(
            dg, plan.config, dg.planned_shapes(plan.tensors), plan.config_problems, rebuilds
        )
        # module attributes named like a config field that changes follow it (an MLP's
        # intermediate_size), as a model built from the updated config has them
        named_like = attributes_named_like(dg, accepted, plan.attributes)
        named_like += attributes_of_rebuild(
            dg, accepted, plan.attributes + tuple(named_like), rebuilds
        )
        full = dataclasses.replace(
            plan, config=tuple(accepted), attributes=plan.attributes + tuple(named_like)
        )
        try:
            validate_plan(dg, full)  # the model's code may read its config as it runs
        except PlanValidationError as exc:
            if not accepted:
                raise
            validate_plan(dg, dataclasses.replace(plan, config=()))  # the shapes alone
            # The shapes run; the config updates are what breaks the run: none is set.
            fields = ", ".join(f"config.{u.field}" for u in accepted)
            mismatch = (mismatch + "; " if mismatch else "") + (
                f"{type(dg.model).__name__}'s code reads {fields} as it runs and would "
                f"not run with the pruned values ({exc}), so the config is left as it is"
            )
            full = dataclasses.replace(plan, config=())
    report_mismatch(mismatch, require_loadable)
    return full


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
    last: PlanValidationError | None = None
    for _ in range(MAX_ROUNDS):
        try:
            keep = choose(dg)
        except NoPrunableGroupsError as exc:
            if last is None:
                raise
            # What validation learnt blocked every group: the failure that did it is the news.
            raise NoPrunableGroupsError(
                "no group is left to prune once the sizes the model's code fixes are kept; "
                f"the last the plan's validation found: {last}"
            ) from exc
        t = time.perf_counter()
        try:
            plan = checked_plan(dg, keep, require_loadable)
        except PlanValidationError as exc:
            if timings is not None:
                timings["plan"] = timings.get("plan", 0.0) + time.perf_counter() - t
            dg = learn_fixed_sizes(dg, exc)
            last = exc
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
    kept = dg.slot_kept_sizes(masks)
    kept_sizes = kept.tolist()
    dynamic = dg.dynamic_slots  # sizes the data decides: any size will do

    def check(where: str, vo: int, actual: tuple, module: str | None) -> None:
        expected = tuple([kept_sizes[s] for s in slots[vo]])
        if expected == actual:
            return
        original = g.values[vo].shape
        wrong = [
            d
            for d in range(len(expected))
            if d >= len(actual) or (expected[d] != actual[d] and not dynamic[slots[vo][d]])
        ]
        if not wrong and len(expected) == len(actual):
            return
        # A dim the code kept at its original size is the one the code fixes.
        fixed = [slots[vo][d] for d in wrong if d < len(actual) and actual[d] == original[d]]
        fixed = fixed or [slots[vo][d] for d in wrong]
        raise PlanValidationError(
            f"{where} would produce shape {actual} where the plan needs {expected} (original "
            f"{original}): the model's code fixes a size the rules treat as prunable",
            None,
            fixed,
            module,
        )

    def check_op(old, new_shapes, same_ranks_only: bool = False) -> None:
        for vo, shape in zip(old.outputs, new_shapes):
            if not same_ranks_only or len(shape) == len(slots[vo]):
                check(old.describe(), vo, shape, old.module)

    try:
        with (
            temporary_attributes(dg.model, plan.attributes),
            temporary_config(dg.model, plan.config),
        ):
            pruned = dg.trace_pruned(dg.planned_shapes(plan.tensors))
    except TraceError as exc:
        partial = getattr(exc, "partial", None)
        if partial is not None:
            # The ops that ran before the failure, op by op: the first whose result deviates
            # from the plan is where the size was fixed (repeat_kv's expand to the module's
            # num_key_value_groups, say, which a broadcasting matmul hides until a cat fails).
            for old, (op, _, new_shapes) in zip(g.nodes, partial.ops):
                if not (old.op is op or old.name == str(op)) or len(old.outputs) != len(new_shapes):
                    break
                check_op(old, new_shapes, same_ranks_only=True)
        failed = getattr(exc, "failed_at", None)
        bad = _original_of(g, failed) if failed is not None else None
        done, module = getattr(exc, "ops_done", None), getattr(exc, "module", None)
        if (
            bad is None
            and done is not None
            and done < len(g.nodes)
            and (g.nodes[done].module == module)
        ):
            # It failed before an op ran (a composite such as reshape checks its sizes first):
            # the op the original ran next, in the same module, is the one.
            bad = g.nodes[done]
        fixed, where = [], ""
        if bad is not None:
            fixed = (
                failed is not None
                and (
                    _sizes_fixed_by_call(dg, bad, failed.args, masks)
                    or _inputs_at_original_size(dg, bad, failed.input_shapes, masks)
                )
            ) or [s for v in bad.inputs + bad.outputs for s in slots[v]]
            where = f" at {bad.describe()}"
        raise PlanValidationError(
            f"the pruned shapes do not run{where}: {exc}",
            bad.index if bad is not None else None,
            fixed,
            bad.module if bad is not None else module,
        ) from exc

    aligned = len(pruned.ops) == len(g.nodes) and all(
        a.op is op or a.name == str(op) for a, (op, _, _) in zip(g.nodes, pruned.ops)
    )
    if aligned and _all_ops_as_planned(dg, pruned, kept):
        pass
    elif aligned:  # op by op: the first deviating op is the one whose call fixes a size
        for old, (_, _, new_shapes) in zip(g.nodes, pruned.ops):
            check_op(old, new_shapes)
    else:
        # Decompositions branch on shapes (a reshape copies or not), so the traces part: the
        # ops that still correspond are checked one by one (a functional channel shuffle, a
        # head split by a tensor's own width); then what every module call returns.
        for old, new_shapes in _matched_ops(g.nodes, pruned.ops):
            check_op(old, new_shapes, same_ranks_only=True)
        calls = list(zip(g.module_calls, pruned.module_calls))
        for (name, outs_old), (new_name, shapes_new) in calls:
            if name != new_name or len(outs_old) != len(shapes_new):
                raise PlanValidationError(
                    f"the pruned model calls its modules differently from the original (module "
                    f"{name or '<root>'}): its control flow depends on the pruned sizes",
                    None,
                    (),
                    name,
                )
            for vo, shape in zip(outs_old, shapes_new):
                check(f"module {name or '<root>'}", vo, shape, name)
        if len(g.module_calls) != len(pruned.module_calls):
            shorter = min(len(g.module_calls), len(pruned.module_calls))
            name = (
                g.module_calls[shorter]
                if shorter < len(g.module_calls)
                else pruned.module_calls[shorter]
            )[0]
            raise PlanValidationError(
                f"the pruned model calls its modules differently from the original (module "
                f"{name or '<root>'}): its control flow depends on the pruned sizes",
                None,
                (),
                name,
            )
    for vo, shape in zip(g.outputs, pruned.outputs):
        check("the model's output", vo, shape, None)


def _matched_ops(nodes, pruned_ops):
    """(original node, pruned results' shapes) for the ops of two traces that correspond:
    both traces are cut into runs of consecutive ops of one module (a call of a child module
    ends its parent's run), the runs are aligned by module (difflib), and within two aligned
    runs the ops of their common prefix and common suffix (same op names) are paired. Ops
    between them (where a decomposition that depends on the sizes adds or drops some) are
    left out rather than guessed."""

    def runs(items):
        out: list[tuple[str, list]] = []
        for module, item in items:
            if not out or out[-1][0] != module:
                out.append((module, []))
            out[-1][1].append(item)
        return out

    old = runs((node.module, node) for node in nodes)
    new = runs((module, (str(op), shapes)) for op, module, shapes in pruned_ops)
    matcher = difflib.SequenceMatcher(
        None, [m for m, _ in old], [m for m, _ in new], autojunk=False
    )
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            old_run, new_run = old[a + k][1], new[b + k][1]
            n = min(len(old_run), len(new_run))
            prefix = 0
            while prefix < n and old_run[prefix].name == new_run[prefix][0]:
                prefix += 1
            suffix = 0
            while suffix < n - prefix and old_run[-1 - suffix].name == new_run[-1 - suffix][0]:
                suffix += 1
            pairs = list(zip(old_run[:prefix], new_run[:prefix]))
            if suffix:
                pairs += zip(old_run[-suffix:], new_run[-suffix:])
            for node, (_, shapes) in pairs:
                if len(shapes) == len(node.outputs):
                    yield node, shapes


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
    same = actual == kept_sizes[flat_slots]
    return bool(same.all() or (same | dg.dynamic_slots[flat_slots]).all())


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
    when there is nothing new to block.

    What is blocked, in order, the first that holds anything not yet blocked: the slots the
    failure showed fixed; every dim of the failing op; then, when the size came from Python
    (``C // num_heads`` of an input's shape, a module attribute, a control-flow decision), what
    crosses the failing module's calls (the activations it reads from outside and returns),
    then its own parameters and buffers, then the same one module up."""
    blocked = dg.extra_blocked
    fresh = set(exc.fixed_slots) - blocked
    slots = dg.coupling_model.value_slots
    if not fresh and exc.node is not None:  # no progress: keep the whole op
        node = dg.graph.nodes[exc.node]
        fresh = {s for v in node.inputs + node.outputs for s in slots[v]} - blocked
    module = exc.module
    if module is None and exc.node is not None:
        module = dg.graph.nodes[exc.node].module
    # Not the root: what crosses its calls is the model's inputs and outputs (blocked already)
    # and its tensors are every parameter, which leaves nothing to prune.
    while not fresh and module:
        activations, tensors = _module_boundary(dg, module)
        fresh = (activations - blocked) or (tensors - blocked)
        module = module.rpartition(".")[0]
    if not fresh:
        raise exc
    warnings.warn(
        f"{exc}; keeping the channels of those dims", FixedSizeWarning, stacklevel=user_stacklevel()
    )
    return dg.with_blocked(fresh)


def _module_boundary(dg: DependencyGraph, module: str) -> tuple[set[int], set[int]]:
    """The slots of what crosses the calls of ``module``: the activations its ops read from
    outside it and the outputs of its calls; and those of the parameters/buffers it reads."""
    g, slots = dg.graph, dg.coupling_model.value_slots

    def inside(name: str) -> bool:
        return module == "" or name == module or name.startswith(module + ".")

    activations: set[int] = set()
    tensors: set[int] = set()
    for node in g.nodes:
        if not inside(node.module):
            continue
        for v in node.inputs:
            value = g.values[v]
            if value.producer is None:
                (tensors if value.kind in ("param", "buffer") else activations).update(slots[v])
            elif not inside(g.nodes[value.producer].module):
                activations.update(slots[v])
    for name, outs in g.module_calls:
        if name == module:
            for v in outs:
                activations.update(slots[v])
    return activations, tensors
