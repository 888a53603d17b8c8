"""Validation: a plan's pruned shapes are traced before anything changes; a size the model's
code fixes is learnt (those dims blocked, a new graph) and the plan is redone. The one
feedback loop of every pipeline (``prune``, ``prune_checkpoint``) is :func:`plan_until_valid`."""

from __future__ import annotations

import dataclasses
import difflib
import os
import time
import traceback
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..errors import (
    FixedSizeWarning,
    NoPrunableGroupsError,
    PlanValidationError,
    TraceError,
    user_stacklevel,
)
from ..gcpause import paused_gc
from ..graph.dependency import DependencyGraph
from ..graph.op_numbers import differences, op_numbers
from ..graph.records import op_name
from ..graph.size_watch import (
    ConfigLeaf,
    SizeInt,
    SizeLeaf,
    computed_only,
    evaluate,
    leaves,
    read_by_own_forward,
)
from ..graph.trace import Ref, TraceStop
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
# Tests set this: a plan judged without a second trace (untraced_failures) is traced all the
# same, and an internal error is raised where the trace disagrees.
CHECK_SKIPPED_TRACES = os.environ.get("DEPGRAPH_CHECK_SKIPPED_TRACES") == "1"


def _clear_frames(exc: BaseException) -> None:
    """The local variables of the finished frames ``exc`` (and the exceptions it was raised
    from or during) went through dropped: the lines stay in its traceback."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def checked_plan(
    dg: DependencyGraph,
    keep: np.ndarray,
    require_loadable: bool = False,
    guided: bool = False,
    rebuilds: Rebuilds | None = None,
) -> Plan:
    """The plan of a keep mask with the config updates the config accepts, validated with
    them set (PlanValidationError when its shapes do not run) and the rest of the config
    reported (``require_loadable``: refused when the config cannot express it); ``guided``:
    see :func:`validate_plan`; ``rebuilds``: the models built from configs so far (the
    rounds of one prune try many of the same configs)."""
    with paused_gc():
        plan = propose_plan(dg, keep)
        rebuilds = rebuilds or Rebuilds(dg.model)
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
            _validate(dg, full, guided)  # the model's code may read its config as it runs
        except PlanValidationError as exc:
            if not accepted:
                raise
            _clear_frames(exc)
            _validate(dg, dataclasses.replace(plan, config=()), guided)  # the shapes alone
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
    last: str | None = None  # the last failure (its text: the exception would hold this frame)
    traced_failure = False  # a failure a trace found
    rebuilds = Rebuilds(dg.model)
    for _ in range(MAX_ROUNDS):
        try:
            keep = choose(dg)
        except NoPrunableGroupsError as exc:
            if last is None:
                raise
            # What validation learnt blocked every group: the failure that did it is the news
            # (it names the op and the line of the model's code that ran it).
            causes = getattr(exc, "causes", "")  # (what keeps every width, listed)
            raise NoPrunableGroupsError(
                "no group is left to prune once the sizes the model's code fixes are kept; "
                f"the last the plan's validation found: {last}"
                + (f". What keeps every width:{causes}" if causes else "")
            ) from exc
        t = time.perf_counter()
        try:
            # Most plans pass their first validation, which is not guided (a guided trace
            # costs a Python call per op and per torch function); a model that failed one has
            # sizes its code fixes, and its next validations learn all they can (up to where
            # its code reads data past a stand-in: see _GuidedCalls). A failure known without
            # a trace is not such a one: those are learnt together, and the next trace is the
            # first.
            guided = traced_failure and dg.graph.code_saw is not None
            plan = checked_plan(dg, keep, require_loadable, guided=guided, rebuilds=rebuilds)
        except PlanValidationError as exc:
            if timings is not None:
                timings["plan"] = timings.get("plan", 0.0) + time.perf_counter() - t
            # (the frames it was raised through hold it, and the graphs of this round: kept
            # in a cycle, they would wait for the collector)
            _clear_frames(exc)
            dg = learn_fixed_sizes(dg, exc)
            last = str(exc)
            traced_failure = traced_failure or not exc.untraced
            continue
        if timings is not None:
            timings["plan"] = timings.get("plan", 0.0) + time.perf_counter() - t
        return dg, plan
    raise PlanValidationError(f"no valid plan after {MAX_ROUNDS} rounds of validation")


def untraced_failures(dg: DependencyGraph, plan: Plan) -> list[PlanValidationError] | None:
    """What the plan's shapes do, known without tracing the model again, or None where they
    must be traced: the failures (empty: every op runs with exactly the planned shapes).

    Known where the model's code read no value and no size the plan prunes but in size
    arithmetic it passed to views, reshapes, expands and new tensors (``graph/size_watch.py``:
    the code's integers are SizeInts there, computed again with the planned sizes and the
    attributes the plan sets), passed no other integer to an op whose tensors the plan prunes
    (but a convolution's, norm's or embedding's own attributes), and where the plan sets no
    config field and no attribute the forward read otherwise. Every other op's result follows
    from its inputs' shapes by the rules. A view whose sizes, so computed, are not the planned
    ones is a failure, as a trace would find it (a number where a size of the plan should
    flow: ``x.view(-1, 24)``, ``q.reshape(B, N, self.n_heads, 32)``).

    Where the plan must be traced for another reason, the failures of views whose sizes are
    all computed by the code from sizes and attributes (no plain number, which could be a
    size the code read and converted), none of which the code used otherwise (a branch on
    it could skip the view: ``if n_rep == 1``), are known all the same, and returned: a trace
    saved.

    The data's decisions (graph/decisions.py) are known too where the plan leaves the sizes
    of their tensors as they are: a trace of the pruned shapes replays them, so the data
    decides the same sizes there (an NMS keeps as many boxes: sizes the data decides are
    never pruned) and the code takes the same branches, where what it read of the data is
    the Python number of a recorded decision (``.item()``, ``bool(x)``:
    ``CodeSaw.unreplayed_reads``)."""
    saw = dg.graph.code_saw
    if saw is None or saw.unknown_reads:
        return None
    if saw.values_read and (saw.unreplayed_reads or not dg.graph.real):
        return None
    if any(not dg.config_reads.known or u.field in dg.config_reads for u in plan.config):
        return None  # the forward reads a field the plan sets
    traced = False  # the plan must be traced: only failures of computed sizes are known
    # ... how far: the ops it must record at least (what makes it trace lies before), and
    # the module calls whose code read pruned sizes (it must keep them: TraceStop)
    must_reach, reading_calls = 0, set()
    attributes: dict[tuple[int, str], object] = {}
    modules = dg.walk.modules_by_name
    for update in plan.attributes:
        module = modules.get(update.module) or dg.model.get_submodule(update.module)
        attributes[(id(module), update.attr)] = update.new
        if read_by_own_forward(module, update.attr):
            continue
        if (update.module, update.attr) in dg.attribute_reads or not dg.attribute_reads.known:
            traced = True  # the forward reads an attribute the plan sets (not in sizes only)
    kept = dg.slot_kept_sizes(plan.masks)
    pruned = kept != dg.slot_sizes
    kept_sizes = kept.tolist()
    slots = dg.coupling_model.value_slots

    def prunes(v: int) -> bool:
        return any(pruned[s] for s in slots[v])

    def prunes_dim(v: int, d: int | None) -> bool:
        if d is None or d >= len(slots[v]):
            return prunes(v)
        return bool(pruned[slots[v][d]])

    if any(prunes(v) for v in dg.constant_values):
        # A tensor made outside the traced ops (a hook's or a closure's, a cached result) has
        # the sizes its maker gives it, which no rule follows: only a trace knows them.
        return None
    if any(v is not None and prunes(v) for d in dg.graph.decisions for v in d.replay_values):
        # A decision on pruned shapes: a trace replays it on real tensors if at all, with
        # values no model computes (an NMS of boxes from zeroed weights): what the data
        # decides there, sizes and branches, is not the original's. (A guard: the rules block
        # the dims of what decides, and ``.item()``'s one element has no dim to prune.)
        return None

    nodes = dg.graph.nodes
    spans = dg.graph.call_spans
    for key in saw.size_reads:
        if not traced and prunes_dim(*key):  # (traced whole anyway: where it read, no matter)
            call = _call_reading(dg, *saw.read_at[key])
            if call is None:
                traced = True  # (read by the root's own code, which runs to the end)
            else:
                reading_calls.add(call)
                must_reach = max(must_reach, spans[call][3])
    for start, stop in saw.sized_ops:
        if any(prunes(v) for n in nodes[start:stop] for v in n.inputs + n.outputs):
            must_reach = max(must_reach, stop)

    def leaf_value(leaf) -> int | None:
        if isinstance(leaf, SizeLeaf):
            dims = slots[leaf.value]
            return kept_sizes[dims[leaf.dim]] if leaf.dim < len(dims) else None
        if isinstance(leaf, ConfigLeaf):  # (a field the forward reads: the plan keeps it)
            return leaf.value
        if (leaf.module, leaf.name) not in attributes:
            return leaf.value
        new = attributes[(leaf.module, leaf.name)]
        if leaf.index is not None:  # (an integer of a tuple: normalized_shape)
            fits = type(new) is tuple and leaf.index < len(new)
            new = new[leaf.index] if fits else None
        return new if type(new) is int else None

    failures, computed = [], []  # (computed: of sizes all computed by the code)
    failing_reach = 0
    for call in saw.shaped_calls:
        if call.kind == "trailing":  # a layer norm's normalized_shape: the input's last sizes
            sizes = [evaluate(x, leaf_value) for x in call.ints]
            dims = slots[call.value] if call.value is not None else ()
            planned = [kept_sizes[s] for s in dims[len(dims) - len(sizes) :]]
            traced = traced or len(sizes) > len(dims) or sizes != planned
            continue
        if call.value is None or len(call.ints) != len(slots[call.value]):
            traced = True  # (a result the trace does not know, or of another rank)
            continue
        dims = [bool(pruned[s]) for s in slots[call.value]]
        if call.kind == "index":  # a pruned dim indexed or sliced by the code's integers
            traced = traced or any(p and picked for p, picked in zip(dims, call.ints))
            continue
        if not any(dims) and not any(type(x) is SizeInt for x in call.ints):
            continue  # (the common case: nothing of it changes)
        sizes = [evaluate(x, leaf_value) for x in call.ints]
        failure = None if None in sizes else _shaped_call_failure(dg, call, sizes, kept_sizes)
        if None in sizes or failure is _UNKNOWN:
            made_by = dg.graph.values[call.value].producer  # (the view or new tensor's op)
            if made_by is None:
                traced = True
            else:
                must_reach = max(must_reach, made_by + 1)
        elif failure is not None:
            failures.append(failure)
            made_by = dg.graph.values[call.value].producer  # (traced, where anything is)
            failing_reach = max(failing_reach, len(nodes) if made_by is None else made_by + 1)
            if all(computed_only(x) or (type(x) is int and x == -1) for x in call.ints) and not any(
                leaf.used_otherwise for x in call.ints for leaf in leaves(x)
            ):
                computed.append(failure)
    if traced or must_reach:
        if computed:
            computed[0].more = tuple(computed[1:])
            return computed
        if traced or ((pruned & (kept <= 1)).any() and _squeezes_ones(dg, pruned & (kept <= 1))):
            return None
        return _stop_after(dg, max(must_reach, failing_reach), reading_calls)
    if failures:
        failures[0].more = tuple(failures[1:])
        return failures
    if (pruned & (kept <= 1)).any() and _squeezes_ones(dg, pruned & (kept <= 1)):
        return None
    return failures


def _call_reading(dg: DependencyGraph, ops: int, module: str) -> int | None:
    """The call of ``module`` (its place in ``call_spans``) whose code read a size when
    ``ops`` ops had been recorded, else the innermost call running then of a module holding
    it (a replayed layer's, whose inner calls did not run), or None (the root's own code)."""
    spans = dg.graph.call_spans
    by_name = dg.__dict__.get("_calls_by_name")
    if by_name is None:  # (once per graph: module name -> its calls, in the order they returned)
        by_name = {}
        for i, span in enumerate(spans):
            by_name.setdefault(span[0], []).append(i)
        dg.__dict__["_calls_by_name"] = by_name
    while module:
        for i in by_name.get(module, ()):
            if spans[i][2] <= ops <= spans[i][3]:
                return i  # (the innermost, where one module's calls nest: it returned first)
        module = module.rpartition(".")[0]
    return None


def _stop_after(dg: DependencyGraph, must_reach: int, reading_calls: set[int]):
    """Where a trace of the plan may stop (a TraceStop), or None (it runs whole): past
    ``must_reach`` ops, after the module call that returns there or next, where every call
    in ``reading_calls`` (the ones whose code read pruned sizes) keeps what it computed from
    them inside (checked as the trace runs). Past there, nothing the code does depends on a
    pruned size otherwise than the rules say (untraced_failures, for what runs after). Only
    where that leaves at least half the ops untraced: a trace that stopped is traced whole
    again where its ops are not the graph's (decompositions that branch on sizes)."""
    spans, total = dg.graph.call_spans, len(dg.graph.nodes)
    last = max(reading_calls, default=-1)
    for i, (name, occurrence, _, stop) in enumerate(spans):
        if stop >= must_reach and i >= last:
            if stop > total // 2:
                return None
            closed = frozenset(spans[j][:2] for j in reading_calls)
            return TraceStop((name, occurrence), closed)
    return None


def _squeezes_ones(dg: DependencyGraph, to_one: np.ndarray) -> bool:
    """A squeeze, whose result loses every size that is 1, has a tensor with a slot of
    ``to_one`` (sizes the plan takes down to 1 or 0). Elsewhere a size of 1 changes nothing
    the rules do not follow: the model's code reading it is a size read, and an einsum
    decomposed otherwise gives the same result (a trace compares its result, not its steps:
    ``_inside_decompositions``)."""
    slots = dg.coupling_model.value_slots
    return any(
        to_one[s]
        for n in dg.graph.nodes
        if n.name.startswith("aten.squeeze")  # (squeeze, squeeze_, squeeze_copy: every overload)
        for v in n.inputs + n.outputs
        for s in slots[v]
    )


def _inside_decompositions(dg: DependencyGraph) -> frozenset[int]:
    """The original nodes that are an einsum's own steps but its last (its result): where a
    size becomes 1, einsum orders and permutes its dims otherwise, so a trace of the pruned
    shapes runs other steps to the same result. Those steps are not compared one by one."""
    saw = dg.graph.code_saw
    if saw is None:
        return frozenset()
    return frozenset(i for start, stop in saw.decomposed_by_ones for i in range(start, stop - 1))


_UNKNOWN = object()


def _unused(dg: DependencyGraph, v: int) -> bool:
    """Whether value ``v``, made inside a higher-order op's eager implementation, reaches no
    output of the model through the ops that read it (the positions flex_attention's makes
    for score functions that take none of them): its shape changes nothing. (Elsewhere a
    value no op reads may be read by the model's Python all the same.)"""
    g = dg.graph
    producer = g.values[v].producer
    if producer is None or not any(a <= producer < b for a, b in g.higher_order_spans):
        return False
    live = dg.__dict__.get("_live_values")
    if live is None:
        live = set(g.outputs)
        for node in reversed(g.nodes):
            if any(o in live for o in node.outputs):
                live.update(node.inputs)
        dg.__dict__["_live_values"] = live
    return v not in live


def _shaped_call_failure(dg: DependencyGraph, call, sizes: list[int], kept_sizes: list[int]):
    """The failure of a view, expand or new tensor given ``sizes`` under a plan (None: it
    gives the planned shape; _UNKNOWN: not known without a trace)."""
    g, slots = dg.graph, dg.coupling_model.value_slots
    expected = tuple(kept_sizes[s] for s in slots[call.value])
    original = g.values[call.value].shape
    if _unused(dg, call.value):
        return None
    producer = g.values[call.value].producer
    if producer is None:
        return _UNKNOWN
    node = g.nodes[producer]
    while call.kind == "new" and node.name == "aten.detach.default" and node.inputs:
        made = g.values[node.inputs[0]].producer  # (a factory's result, detached: its maker)
        if made is None:
            break
        node = g.nodes[made]
    if call.kind == "view":
        if call.source is None or sizes.count(-1) > 1:
            return _UNKNOWN
        numel = int(np.prod([kept_sizes[s] for s in slots[call.source]], dtype=np.int64))
        known = int(np.prod([n for n in sizes if n != -1], dtype=np.int64))
        actual = list(sizes)
        if -1 in sizes and known > 0 and numel % known == 0:
            actual[sizes.index(-1)] = numel // known
        if -1 in actual or int(np.prod(actual, dtype=np.int64)) != numel:
            fixed = [
                s for d, s in enumerate(slots[call.value]) if sizes[d] == original[d] != expected[d]
            ] or [s for v in (call.value, call.source) for s in slots[v]]
            error = PlanValidationError(
                f"the pruned shapes do not run at {node.describe()}: the model's code asks for "
                f"shape {tuple(sizes)} of a tensor of {numel} elements (original shape "
                f"{original}): it fixes a size the rules treat as prunable",
                node.index,
                fixed,
                node.module,
            )
            error.read_slots = _pruned_sizes_read(dg, call, kept_sizes)
            return error
    elif call.kind == "expand":
        actual = [e if n == -1 else n for n, e in zip(sizes, expected)]
    else:
        actual = sizes
    actual = tuple(actual)
    if actual == expected:
        return None
    wrong = [d for d in range(len(expected)) if expected[d] != actual[d]]
    fixed = [slots[call.value][d] for d in wrong if actual[d] == original[d]]
    error = PlanValidationError(
        f"{node.describe()} would produce shape {actual} where the plan needs {expected} "
        f"(original {original}): the model's code fixes a size the rules treat as prunable",
        node.index,
        fixed or [slots[call.value][d] for d in wrong],
        node.module,
    )
    error.read_slots = _pruned_sizes_read(dg, call, kept_sizes)
    return error


def _pruned_sizes_read(dg: DependencyGraph, call, kept_sizes: list[int]) -> list[int]:
    """The dims whose sizes the code read and computed the call's sizes from, where the plan
    prunes them: a view of one tensor given another's size (``x.reshape(b, h, w, c)`` with
    ``c`` read from a tensor of other channels) fails because they differ, and keeping the
    dim read is what makes it run again when the tensor's own dims are kept already."""
    slots, sizes = dg.coupling_model.value_slots, dg.slot_sizes
    read = []
    for x in call.ints:
        for leaf in leaves(x):
            if isinstance(leaf, SizeLeaf) and leaf.dim < len(slots[leaf.value]):
                s = slots[leaf.value][leaf.dim]
                if kept_sizes[s] != sizes[s] and s not in read:
                    read.append(s)
    return read


def _check_needs_no_trace(dg: DependencyGraph, plan: Plan) -> None:
    try:
        validate_plan(dg, plan, guided=False)
    except PlanValidationError as exc:
        raise AssertionError(
            f"internal error: a plan judged to need no trace does not run: {exc}"
        ) from exc


def _validate(dg: DependencyGraph, plan: Plan, guided: bool) -> None:
    """PlanValidationError where the plan's shapes do not run as planned: known without a
    trace where :func:`untraced_failures` can tell, traced otherwise."""
    failures = untraced_failures(dg, plan)
    if isinstance(failures, TraceStop):
        validate_plan(dg, plan, guided, stop=failures)
        if CHECK_SKIPPED_TRACES and not guided:
            _check_needs_no_trace(dg, plan)  # (what the trace did not run runs too)
        return
    if failures:
        if CHECK_SKIPPED_TRACES:
            _check_traced_too(dg, plan, failures[0])
        failures[0].untraced = True
        raise failures[0]
    if failures is None:
        validate_plan(dg, plan, guided)
    elif CHECK_SKIPPED_TRACES:
        _check_needs_no_trace(dg, plan)


def _check_traced_too(dg: DependencyGraph, plan: Plan, failure: PlanValidationError) -> None:
    try:
        validate_plan(dg, plan, guided=False)
    except PlanValidationError as exc:
        _clear_frames(exc)
        return
    raise AssertionError(
        f"internal error: a plan judged to fail without a trace runs when traced: {failure}"
    )


def validate_plan(
    dg: DependencyGraph, plan: Plan, guided: bool = True, stop: TraceStop | None = None
) -> None:
    """Trace the pruned shapes (attributes set for the duration only) and check that every op
    runs and every tensor has exactly the predicted shape; raise PlanValidationError naming
    the op and the slots it showed to be fixed otherwise. ``stop``: where the trace may stop
    (untraced_failures knows what runs after it: a decoder's loop after the encoder whose
    code read the pruned sizes), unless guided; where the ops before it are not the graph's
    own, it is traced whole.

    ``guided``: the trace is guided (:class:`_Guide`): an op that fails (or a reshape that
    fails before its ops ran) is stood in for by results of the planned shapes, an op whose
    results deviate from the plan gets the planned ones, and the trace goes on, so that it
    finds what fails after them too: the error's ``more``."""
    masks = plan.masks
    g = dg.graph
    slots = dg.coupling_model.value_slots
    kept = dg.slot_kept_sizes(masks)
    kept_sizes = kept.tolist()
    dynamic = dg.dynamic_slots  # sizes the data decides: any size will do

    def check(where, vo: int, actual: tuple, module: str | None, node=None) -> None:
        """``where``: what the error names (a Node: its description, made only then)."""
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
        if _unused(dg, vo):
            return  # (no op reads it, and it is no output: its shape changes nothing)
        # A dim the code kept at its original size is the one the code fixes.
        fixed = [slots[vo][d] for d in wrong if d < len(actual) and actual[d] == original[d]]
        fixed = fixed or [slots[vo][d] for d in wrong]
        if not isinstance(where, str):
            where = where.describe()
        raise PlanValidationError(
            f"{where} would produce shape {actual} where the plan needs {expected} (original "
            f"{original}): the model's code fixes a size the rules treat as prunable",
            node,
            fixed,
            module,
        )

    inside = _inside_decompositions(dg)

    def check_op(old, new_shapes, same_ranks_only: bool = False) -> None:
        if old.index in inside:
            return  # (an einsum's own steps: its result, the range's last op, is checked)
        if len(new_shapes) != len(old.outputs):
            raise _another_count(dg, old, new_shapes)
        for vo, shape in zip(old.outputs, new_shapes):
            if not same_ranks_only or len(shape) == len(slots[vo]):
                check(old, vo, shape, old.module, old.index)

    guide = _Guide(dg, kept_sizes, check, inside) if guided else None
    try:
        with (
            temporary_attributes(dg.model, plan.attributes),
            temporary_config(dg.model, plan.config),
        ):
            pruned = dg.trace_pruned(
                dg.planned_shapes(plan.tensors), guide=guide, stop=None if guided else stop
            )
    except TraceError as exc:
        partial = getattr(exc, "partial", None)
        if guide is not None and guide.events and partial is not None and partial is guide.trace:
            raise guide.errors(masks) from exc
        done = getattr(exc, "ops_done", None)
        ran = [] if partial is None else partial.ops if done is None else partial.ops[:done]
        # The ops that ran before the failure, op by op: the first whose result deviates
        # from the plan is where the size was fixed (repeat_kv's expand to the module's
        # num_key_value_groups, say, which a broadcasting matmul hides until a cat fails).
        for old, (op, _, new_shapes) in zip(g.nodes, ran):
            if not (old.op is op or old.name == op_name(op)):
                break
            check_op(old, new_shapes, same_ranks_only=True)
        raise _failure_error(
            dg, masks, getattr(exc, "failed_at", None), done, getattr(exc, "module", None), exc
        ) from exc
    if guide is not None and guide.events and pruned is guide.trace:
        raise guide.errors(masks)
    if pruned.stopped_after is not None:
        done = next(s[3] for s in g.call_spans if s[:2] == pruned.stopped_after)
        if len(pruned.ops) != done or not all(
            a.op is op or a.name == op_name(op) for a, (op, _, _) in zip(g.nodes, pruned.ops)
        ):
            validate_plan(dg, plan, guided)  # (other ops ran before the stop: whole, then)
            return
        if not _all_ops_as_planned(dg, pruned, kept):
            for old, (_, _, new_shapes) in zip(g.nodes, pruned.ops):
                check_op(old, new_shapes)
        _check_numbers(dg, pruned, None, kept, plan)
        return

    aligned = len(pruned.ops) == len(g.nodes) and all(
        a.op is op or a.name == op_name(op) for a, (op, _, _) in zip(g.nodes, pruned.ops)
    )
    matched = None  # (original node, index in the pruned trace) of the ops that correspond
    if aligned and _all_ops_as_planned(dg, pruned, kept):
        pass
    elif aligned:  # op by op: the first deviating op is the one whose call fixes a size
        for old, (_, _, new_shapes) in zip(g.nodes, pruned.ops):
            check_op(old, new_shapes)
    else:
        # Decompositions branch on shapes (a reshape copies or not), so the traces part: the
        # ops that still correspond are checked one by one (a functional channel shuffle, a
        # head split by a tensor's own width); then what every module call returns.
        matched = []
        unmatched: list[tuple[str, str, str]] = []
        for old, new_shapes, index in _matched_ops(g.nodes, pruned.ops, unmatched, inside):
            check_op(old, new_shapes, same_ranks_only=True)
            matched.append((old, index))
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
        _check_same_computation(dg, unmatched, kept, plan)
    for vo, shape in zip(g.outputs, pruned.outputs):
        check("the model's output", vo, shape, None)
    _check_numbers(dg, pruned, matched, kept, plan)
    _check_returned_numbers(dg, pruned, kept)


def _check_numbers(dg: DependencyGraph, pruned, matched, kept: np.ndarray, plan: Plan) -> None:
    """The shapes run as planned; the numbers the ops compute with must be the original's
    too (graph/op_numbers.py): one that differs was computed from a size the plan prunes
    (RAFT's ``corr / sqrt(tensor(num_channels))``), and pruning would change what the kept
    units compute. The slots to keep: the pruned sizes the code read in that op's module
    before it, where they are all of exact groups (where one is of a function-changing
    group, the change is put down to it: declared, as under ``exact_only`` it cannot be).
    Before those, the attributes the plan sets that the forward read as numbers (``x /
    self.fc.out_features``, ``self.n_heads ** -0.5``): where the plan sets any, of exact
    groups, the change is put down to them, and the dims behind them are kept (a config field
    the forward reads is never set). Where the code read tensor values (numbers may come
    from the data, which the pruned trace does not have), only that: a differing number
    outside attention calls' modules keeps the dims behind the attributes the plan sets
    (which may be innocent: keeping them is the safe side). Not compared where nothing
    watched the code's reads."""
    g = dg.graph
    saw = g.code_saw
    if saw is None or not pruned.numbers:
        return
    attending = dg.coupling_model.attention_modules if saw.values_read else ()
    if matched is None:
        pairs = [(g.nodes[j], j) for j in sorted(pruned.numbers) if j < len(g.nodes)]
    else:
        pairs = [(node, j) for node, j in matched if j in pruned.numbers]

    def constant_of(x):
        return g.constants.get(x.value) if type(x) is Ref else None

    read_as_numbers = None  # (attribute updates, the dims behind them), once needed
    for node, j in pairs:
        before = op_numbers(node.op, node.args, node.kwargs, constant_of)
        differ = differences(before, pruned.numbers[j])
        if not differ:
            continue
        position, old, new = differ[0]
        if saw.values_read and node.module in attending:
            continue
        if read_as_numbers is None:
            read_as_numbers = _attributes_read_otherwise(dg, plan, kept)
        updates, behind = read_as_numbers
        if behind and _all_exact(dg, behind):
            raise PlanValidationError(
                f"{node.describe()} would compute with {_number(new)} where the original "
                f"computes with {_number(old)} (argument {position}): the model's code "
                "computes numbers from module attributes the plan sets "
                f"({_named(updates)}), so the pruned model would compute something else",
                node.index,
                behind,
                node.module,
            )
        if saw.values_read:
            continue
        fixed = _pruned_reads_in(dg, node.module, kept, before=node.index)
        if not _all_exact(dg, fixed):
            continue
        raise PlanValidationError(
            f"{node.describe()} would compute with {_number(new)} where the original computes "
            f"with {_number(old)} (argument {position}): the model's code computes a number "
            "from a size the plan prunes, so the pruned model would compute something else",
            node.index,
            fixed,
            node.module,
        )


def _attributes_read_otherwise(dg: DependencyGraph, plan: Plan, kept: np.ndarray):
    """(the plan's attribute updates the forward read otherwise than in sizes, the pruned dims
    behind them): the slots op rules tied to the attribute, else the module's own tensors'
    dims, else the dims of the views it made, that go from the attribute's old value to its
    new one."""
    reads, modules = dg.attribute_reads, dg.walk.modules_by_name
    updates = [
        u
        for u in plan.attributes
        if (u.module, u.attr) in reads
        and not read_by_own_forward(
            modules.get(u.module) or dg.model.get_submodule(u.module), u.attr
        )
    ]
    if not updates:
        return [], []
    g, slots = dg.graph, dg.coupling_model.value_slots
    sizes = dg.slot_sizes
    pruned = kept != sizes
    behind: set[int] = set()
    for u in updates:
        olds = u.old if isinstance(u.old, tuple) else (u.old,)
        news = u.new if isinstance(u.new, tuple) else (u.new,)
        pairs = set(zip(olds, news))

        def matching(candidates, pairs=pairs) -> set[int]:
            return {s for s in candidates if pruned[s] and (int(sizes[s]), int(kept[s])) in pairs}

        found = matching(
            s for m, a, s in dg.coupling_model.attr_slots if (m, a) == (u.module, u.attr)
        )
        if not found:
            prefix = f"{u.module}." if u.module else ""
            own = [
                v
                for name, v in (g.params | g.buffers).items()
                if name.startswith(prefix) and "." not in name[len(prefix) :]
            ]
            found = matching(s for v in own for s in slots[v])
        if not found:
            views = [n for n in g.nodes if n.module == u.module and n.name in _VIEWS]
            found = matching(s for n in views for v in n.outputs for s in slots[v])
        behind |= found
    return updates, sorted(behind)


def _named(updates) -> str:
    """Attribute updates as errors name them: ``module.attr old -> new``."""
    return ", ".join(f"{u.module or '<root>'}.{u.attr} {u.old} -> {u.new}" for u in updates)


def _number(value) -> str:
    """A number of op_numbers as errors show it: a constant by its values."""
    if type(value) is tuple:  # (dtype, shape, values)
        values = value[2]
        return f"tensor({values[0] if not value[1] else list(values)!r})"
    return repr(value)


_RUNS_AHEAD = 16  # runs of ops of one module a guided trace may find the original skipping
# What the original ran for a reshape: a view, or a copy and a view of the copy.
_VIEWS = frozenset(
    {"aten.view.default", "aten._unsafe_view.default", "aten._reshape_alias.default"}
)


class _Guide:
    """The guide of a validation trace (see :func:`~depgraph_ext.graph.trace.trace_as`): it
    keeps the trace on the plan, so that what runs after an op that fails or deviates still
    runs on the planned shapes and fails, or not, on its own account.

    An op whose results deviate from the plan gets zeros of the planned shapes instead. A
    failing op is stood in for by the original op it is, with zeros of the sizes the plan
    gives its results; a reshape (a torch function that failed before its ops ran, or a
    failing view) by what the original ran there, a view, or a copy and a view of the copy.
    The original op of a failing one is the one at the same place, or else the nearest in
    the same module with the same name whose inputs have the planned shapes of the tensors
    the failing one was given; where there is none, the guide stops (the trace fails there).

    Until the first error the two traces must line up op for op (else the guide stops: the
    trace is checked as an unguided one is). After it, ops are matched within the runs of
    consecutive ops of one module, each pruned run with the next original run of the same
    module: a reshape may run as a view where the original copied first (a size of 1 keeps
    a tensor contiguous) or the other way round, and a trace on other tensors records some
    ops otherwise (a constant lifted, or made); the rest of a run that does not line up is
    left unchecked. ``events``: what it did, in order: ``("deviates", error)``, ``("failed",
    failed op, original op)``."""

    def __init__(self, dg: DependencyGraph, kept_sizes: list[int], check, inside) -> None:
        self.dg, self.g, self.slots = dg, dg.graph, dg.coupling_model.value_slots
        self.kept_sizes, self.check = kept_sizes, check
        self.inside = inside  # (_inside_decompositions: accepted as they ran)
        self._in_module: dict[str, list] | None = None
        self._runs: list[tuple[str, int, int]] | None = None
        self._run_of: list[int] = []
        self.start(None)

    def start(self, trace) -> None:
        self.trace, self.events, self.lost = trace, [], False
        self.offset, self.module, self.run, self.synced = 0, None, -1, True

    def planned(self, v: int) -> tuple[int, ...]:
        return tuple([self.kept_sizes[s] for s in self.slots[v]])

    def ran(self, index, func, module, shapes, results):
        if self.lost:
            return None
        node = self._counterpart(index, func, module)
        if node is None or node.index in self.inside:
            return None
        planned = [self.planned(v) for v in node.outputs]
        if shapes == planned:
            return None
        if len(shapes) != len(planned) and type(results) in (list, tuple) and results:
            # (a split into another number of chunks: the planned ones, and the trace goes on)
            self._event(node, ("deviates", _another_count(self.dg, node, shapes)))
            like = results[0]
            return type(results)(
                torch.zeros(p, dtype=like.dtype, device=like.device) for p in planned
            )
        if len(shapes) != len(planned) or any(len(a) != len(b) for a, b in zip(shapes, planned)):
            self._part()
            return None
        try:
            for v, shape in zip(node.outputs, shapes):
                self.check(node, v, shape, module, node.index)
        except PlanValidationError as exc:
            self._event(node, ("deviates", exc))
            it = iter(planned)
            return pytree.tree_map(
                lambda t: (
                    torch.zeros(next(it), dtype=t.dtype, device=t.device)
                    if isinstance(t, torch.Tensor)
                    else t
                ),
                results,
            )
        return None  # only sizes the data decides differ

    def _part(self) -> None:
        """The traces part here: before the first error the guide stops; after it, the rest
        of this run of ops is left unchecked."""
        if self.events:
            self.synced = False
        else:
            self.lost = True

    def _event(self, node, event) -> None:
        self.events.append(event)
        self._runs_of()
        self.run, self.module = self._run_of[node.index], node.module
        self.synced = True

    def _runs_of(self) -> list[tuple[str, int, int]]:
        if self._runs is None:
            runs: list[list] = []
            for node in self.g.nodes:
                if not runs or runs[-1][0] != node.module:
                    runs.append([node.module, node.index, node.index])
                runs[-1][2] = node.index + 1
                self._run_of.append(len(runs) - 1)
            self._runs = [tuple(r) for r in runs]
        return self._runs

    def _counterpart(self, index: int, op, module: str):
        """The original op of ``op`` at ``index``, or None (none, or not lined up)."""
        g = self.g
        if not self.events:  # until the first error: op for op, as an unguided check
            node = g.nodes[index] if index < len(g.nodes) else None
            if (
                node is None
                or node.module != module
                or not (node.op is op or node.name == op_name(op))
            ):
                self.lost = True
                return None
            return node
        name = op_name(op)
        if module != self.module:  # a new run: the next original run of this module
            self.module = module
            runs = self._runs_of()
            later = range(self.run + 1, min(self.run + 1 + _RUNS_AHEAD, len(runs)))
            run = next((k for k in later if runs[k][0] == module), None)
            if run is None:
                self.lost = True
                return None
            self.run, self.offset, self.synced = run, runs[run][1] - index, True
        i, end = index + self.offset, self._runs_of()[self.run][2]
        if not self.synced or i >= end:
            self.synced = False
            return None
        node = g.nodes[i]
        if node.name == name or (name in _VIEWS and node.name in _VIEWS):
            return node
        if name in _VIEWS and node.name == "aten.clone.default" and i + 1 < end:
            view = g.nodes[i + 1]
            if view.name in _VIEWS and view.inputs[:1] == node.outputs:
                self.offset += 1
                return view
        if name == "aten.clone.default" and node.name in _VIEWS:
            self.offset -= 1  # a copy the original did not make
            return None
        self.synced = False
        return None

    def failed(self, failed, func, args, kwargs):
        if self.lost:
            return None
        if self.events and failed.module != self.module:
            self._counterpart(failed.index, func, failed.module)  # the run it is in
            if self.lost:
                return None
        stand_ins = self._stand_ins(failed, func, args, kwargs)
        if stand_ins is None:
            self.lost = True
        return stand_ins

    def _original(self, failed, matches):
        g, at = self.g, failed.index + self.offset
        if at < len(g.nodes) and matches(g.nodes[at]):
            return g.nodes[at]
        if self._in_module is None:
            self._in_module = {}
            for node in g.nodes:
                self._in_module.setdefault(node.module, []).append(node)
        candidates = [n for n in self._in_module.get(failed.module, ()) if matches(n)]
        return min(candidates, key=lambda n: abs(n.index - at), default=None)

    def _stand_ins(self, failed, func, args, kwargs):
        g = self.g
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if not tensors:
            return None
        device = tensors[0].device

        def zeros(v: int) -> torch.Tensor:
            return torch.zeros(self.planned(v), dtype=g.values[v].dtype, device=device)

        if not failed.op or failed.op in _VIEWS:  # a reshape, however the original ran it

            def reshape_at(node) -> bool:
                chain = g.nodes[node.index : node.index + 2]
                if node.name != "aten.clone.default":
                    chain = chain[:1]
                return (
                    node.module == failed.module
                    and chain[-1].name in _VIEWS
                    and chain[-1].module == failed.module
                    and (len(chain) == 1 or chain[1].inputs[:1] == node.outputs)
                    and bool(node.inputs)
                    and self.planned(node.inputs[0]) == tuple(tensors[0].shape)
                )

            node = self._original(failed, reshape_at)
            if node is None:
                return None
            copies = node.name == "aten.clone.default"
            chain = g.nodes[node.index : node.index + (2 if copies else 1)]
            self._event(node, ("failed", failed, node))
            if failed.op:  # the view stands for what the original ran, with its results
                self.offset = chain[-1].index - failed.index
                return [(func, zeros(chain[-1].outputs[0]))]
            self.offset = node.index - failed.index
            return [(n.op, zeros(n.outputs[0])) for n in chain]
        shapes = [tuple(t.shape) for t in tensors]
        node = self._original(
            failed,
            lambda n: (
                n.module == failed.module
                and n.name == failed.op
                and len(n.inputs) == len(shapes)
                and all(self.planned(v) == shape for v, shape in zip(n.inputs, shapes))
            ),
        )
        returns = getattr(getattr(func, "_schema", None), "returns", None)
        if node is None or not node.outputs or not returns:
            return None
        kinds = [r.type for r in returns]
        if len(kinds) == 1 and isinstance(kinds[0], torch.ListType):
            if not isinstance(kinds[0].getElementType(), torch.TensorType):
                return None
            results = [zeros(v) for v in node.outputs]
        elif len(kinds) == len(node.outputs) and all(
            isinstance(k, torch.TensorType) for k in kinds
        ):
            results = tuple(zeros(v) for v in node.outputs)
            results = results[0] if len(results) == 1 else results
        else:
            return None
        self._event(node, ("failed", failed, node))
        self.offset = node.index - failed.index
        return [(func, results)]

    def errors(self, masks) -> PlanValidationError:
        """The first error of the guided trace, the others its ``more``."""
        messages = {failed.index: message for failed, message in self.trace.recovered}
        errors = []
        for kind, *payload in self.events:
            if kind == "deviates":
                errors.append(payload[0])
                continue
            failed, node = payload
            message = (
                f"the model could not run on the example inputs (in module "
                f"{failed.module or '<root>'}): {messages[failed.index]}"
            )
            first = not errors  # as an unguided trace would say it
            errors.append(
                _failure_error(
                    self.dg,
                    masks,
                    failed,
                    failed.index,
                    failed.module,
                    message,
                    None if first else node,
                )
            )
        errors[0].more = tuple(errors[1:])
        return errors[0]


def _another_count(dg: DependencyGraph, node, shapes) -> PlanValidationError:
    """The error of an op that made another number of tensors than the original: a split by
    a size the code fixes (``x.split(self.width // 2, 1)`` of a pruned ``x``), where every
    dim of the op is fixed."""
    slots = dg.coupling_model.value_slots
    return PlanValidationError(
        f"{node.describe()} would produce {len(shapes)} tensor(s) of shapes {list(shapes)[:4]}"
        f" where the plan needs {len(node.outputs)}: the model's code fixes a size the rules "
        "treat as prunable",
        node.index,
        [s for v in node.inputs + node.outputs for s in slots[v]],
        node.module,
    )


def _failure_error(
    dg: DependencyGraph, masks, failed, done, module, error, bad=None
) -> PlanValidationError:
    """The error of an op that failed in a validation trace (``failed``: what the trace knows
    of it; ``done``: the ops that ran before it; ``module``: where it failed; ``bad``: the
    original op, when known)."""
    g, slots = dg.graph, dg.coupling_model.value_slots
    if bad is None and failed is not None:
        bad = _original_of(g, failed)
    if bad is None and done is not None and done < len(g.nodes) and g.nodes[done].module == module:
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
    exc = PlanValidationError(
        f"the pruned shapes do not run{where}: {error}",
        bad.index if bad is not None else None,
        fixed,
        bad.module if bad is not None else module,
    )
    exc.ops_done = done
    return exc


# Ops two traces of one model may run differently where sizes steer a decomposition (a
# reshape copies or views, a matmul runs as mm or bmm, a constant is lifted or made): what
# one trace runs and the other does not must be among them.
_LAYOUT_OPS = frozenset(
    {
        "aten.view", "aten._unsafe_view", "aten._reshape_alias", "aten.reshape", "aten.clone",
        "aten.contiguous", "aten.copy_", "aten._to_copy", "aten.expand", "aten.alias", "aten.t",
        "aten.transpose", "aten.permute", "aten.unsqueeze", "aten.squeeze", "aten.slice",
        "aten.select", "aten.detach", "aten.lift_fresh", "aten.lift_fresh_copy",
        "aten.scalar_tensor", "aten.as_strided", "aten.unbind", "aten.split",
        "aten.split_with_sizes", "aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm",
        "aten.matmul", "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty",
        "aten.new_empty_strided", "aten.zeros", "aten.zeros_like", "aten.new_zeros",
        "aten.fill_", "aten.flatten", "aten.unflatten", "aten.expand_as", "aten.view_as",
        "aten._unsafe_index", "aten.index", "aten.sym_size", "aten.sym_numel",
        "aten.sym_stride", "aten.sym_storage_offset",
    }
)  # fmt: skip


def _check_same_computation(dg: DependencyGraph, unmatched, kept: np.ndarray, plan: Plan) -> None:
    """The ops one trace ran and the other did not (``(trace, op, module)``, where trace is
    "original" or "pruned"), layout ops left out, must be the same ops in each module, in
    the same order (a constant lifted in one and made in the other shifts the pairing of
    two runs, not what they compute). An op that computes (an add, a sigmoid) in one trace
    only is where the code branched on a size the plan prunes (torch_geometric's HGTConv
    adds its skip connection when its output is as wide as its input): the pruned model
    would compute something else. The slots to keep: the pruned sizes the code read in that
    module, where they are all of exact groups (as for numbers); before those, as for numbers,
    the attributes the plan sets that the forward read otherwise than in sizes (``if
    self.n_heads > 3``), where the dims behind them are of exact groups, outside attention
    calls' modules. Where the code read tensor values (the data may steer it otherwise in a
    trace without the model's data), only that."""
    saw = dg.graph.code_saw
    if saw is None:
        return
    ran: dict[str, dict[str, list[str]]] = {"original": {}, "pruned": {}}
    # (in an attention call's module, torch decomposes attention by the shapes it is given:
    # a group of one query head skips repeating its keys, the math path scales otherwise, so
    # ops that differ there do not show a branch on an attribute to change the function)
    attending = dg.coupling_model.attention_modules
    read_otherwise = None  # (attribute updates, the dims behind them), once needed
    for trace, op, module in unmatched:
        if op.rpartition(".")[0] not in _LAYOUT_OPS:
            ran[trace].setdefault(module, []).append(op)
    for module in dict.fromkeys([*ran["original"], *ran["pruned"]]):
        before, after = ran["original"].get(module, []), ran["pruned"].get(module, [])
        if before == after:
            continue
        k = 0
        while k < min(len(before), len(after)) and before[k] == after[k]:
            k += 1
        trace, op = ("pruned", after[k]) if k < len(after) else ("original", before[k])
        other = "original" if trace == "pruned" else "pruned"
        if read_otherwise is None:
            read_otherwise = _attributes_read_otherwise(dg, plan, kept)
        updates, behind = read_otherwise
        if behind and _all_exact(dg, behind) and module not in attending:
            raise PlanValidationError(
                f"the {trace} model runs op {op} in module {module or '<root>'} where the "
                f"{other} does not: its code branches on module attributes the plan sets "
                f"({_named(updates)}), so the pruned model would compute something else",
                None,
                behind,
                module,
            )
        if saw.values_read:
            continue
        fixed = _pruned_reads_in(dg, module, kept)
        if not _all_exact(dg, fixed):
            continue
        raise PlanValidationError(
            f"the {trace} model runs op {op} in module {module or '<root>'} where the {other} "
            "does not: its code branches on a size the plan prunes, so the pruned model would "
            "compute something else",
            None,
            fixed,
            module,
        )


def _check_returned_numbers(dg: DependencyGraph, pruned, kept: np.ndarray) -> None:
    """The integers the model returns must be the original's: one the pruned model returns
    otherwise came from a size the plan prunes (``return y, int(h.shape[1])``). The slots to
    keep: the pruned sizes the code read. Not compared where the code read tensor values (the
    data may decide such a number otherwise in a trace without the model's data), nor where
    it read no pruned size (a number that changes by itself, a count of calls)."""
    saw = dg.graph.code_saw
    before, after = dg.graph.output_numbers, pruned.output_numbers
    if saw is None or saw.values_read or before == after:
        return
    fixed = _pruned_reads_in(dg, "", kept)
    if not fixed:
        return
    changed = [(p, a, b) for (p, a), (_, b) in zip(before, after) if a != b]
    where, old, new = changed[0] if changed else ("", len(before), len(after))
    raise PlanValidationError(
        f"the pruned model returns {new} where the original returns {old} (the model's "
        f"output{where}): a number its code computed from a size the plan prunes",
        None,
        fixed,
        "",
    )


def _all_exact(dg: DependencyGraph, slots) -> bool:
    """Whether ``slots`` are some, and the groups the plan prunes behind them all exact: a
    number or a branch that may follow the size of a function-changing group is put down to
    the change the prune declares for it."""
    groups = _groups_of(dg, slots)
    return bool(groups) and not any(dg.group_reasons.get(g) for g in groups)


def _pruned_reads_in(dg: DependencyGraph, module: str, kept: np.ndarray, before=None) -> list:
    """The slots the plan prunes whose sizes the model's code read while ``module`` (or a
    module inside it) ran, before op ``before`` where given."""
    saw = dg.graph.code_saw
    slots = dg.coupling_model.value_slots
    pruned = kept != dg.slot_sizes
    found = set()
    for (v, d), (at, where) in saw.read_at.items():
        if before is not None and at > before:
            continue
        if module and where != module and not where.startswith(module + "."):
            continue
        found.update(slots[v] if d is None or d >= len(slots[v]) else [slots[v][d]])
    return sorted(s for s in found if pruned[s])


def _matched_ops(nodes, pruned_ops, unmatched: list | None = None, inside=frozenset()):
    """(original node, pruned results' shapes, pruned index) for the ops of two traces that
    correspond:
    both traces are cut into runs of consecutive ops of one module (a call of a child module
    ends its parent's run), the runs are aligned by module (difflib), and within two aligned
    runs the ops of their common prefix and common suffix (same op names) are paired. Ops
    between them (where a decomposition that depends on the sizes adds or drops some) are
    left out rather than guessed. ``unmatched`` receives ``(trace, op name, module)`` of the
    ops of either trace that are not paired: "original" or "pruned"."""

    def runs(items):
        out: list[tuple[str, list]] = []
        for module, item in items:
            if not out or out[-1][0] != module:
                out.append((module, []))
            out[-1][1].append(item)
        return out

    old = runs((node.module, node) for node in nodes)
    new = runs(
        (module, (op_name(op), shapes, j)) for j, (op, module, shapes) in enumerate(pruned_ops)
    )
    aligned_old, aligned_new = set(), set()
    for a, b, size in _aligned_blocks([m for m, _ in old], [m for m, _ in new]):
        for k in range(size):
            aligned_old.add(a + k)
            aligned_new.add(b + k)
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
            if unmatched is not None:
                module = old[a + k][0]
                for node in old_run[prefix : len(old_run) - suffix]:
                    if node.index not in inside:
                        unmatched.append(("original", node.name, module))
                for name, _, _ in new_run[prefix : len(new_run) - suffix]:
                    unmatched.append(("pruned", name, module))
            for node, (_, shapes, j) in pairs:
                if len(shapes) == len(node.outputs):
                    yield node, shapes, j
    if unmatched is not None:
        for i, (module, run) in enumerate(old):
            if i not in aligned_old:
                unmatched.extend(
                    ("original", node.name, module) for node in run if node.index not in inside
                )
        for i, (module, run) in enumerate(new):
            if i not in aligned_new:
                unmatched.extend(("pruned", name, module) for name, _, _ in run)


def _aligned_blocks(a: list, b: list):
    """difflib's matching blocks of ``a`` and ``b``, with their common prefix and suffix taken
    as they are first: difflib's search is quadratic in what it is given, and two traces of
    one model call the same modules in the same order but where sizes steer the code (a loop
    of a thousand steps in the same modules would take it seconds)."""
    n = min(len(a), len(b))
    head = 0
    while head < n and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < n - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    if head:
        yield 0, 0, head
    middle = difflib.SequenceMatcher(
        None, a[head : len(a) - tail], b[head : len(b) - tail], autojunk=False
    )
    for i, j, size in middle.get_matching_blocks():
        if size:
            yield head + i, head + j, size
    if tail:
        yield len(a) - tail, len(b) - tail, tail


def _all_ops_as_planned(dg: DependencyGraph, pruned, kept_sizes: np.ndarray) -> bool:
    """Every op of an aligned pruned trace gave as many results as the original, of the same
    ranks and exactly the planned sizes (in one comparison of flat arrays; the op-by-op check
    runs only when not, to say where)."""
    counts, ranks, flat_slots = dg.output_layout
    if len(pruned.ops) < len(counts):  # (a trace that stopped: the ops it ran)
        counts = counts[: len(pruned.ops)]
        ranks = ranks[: int(counts.sum())]
        flat_slots = flat_slots[: int(ranks.sum())]
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

    What is blocked, in order, the first that blocks a unit the plan could remove: the slots
    the failure showed fixed; every dim of the failing op; the dims whose sizes the code
    read to compute the failing ones (``read_slots``); the dims the code read just before
    the failing op (Python that failed on them); then, when the size came from
    Python (``C // num_heads`` of an input's shape, a module attribute, a control-flow
    decision), what crosses the failing module's calls (the activations it reads from outside
    and returns), then its own parameters and buffers, then the same one module up. (Dims
    whose units are all kept already change nothing; they are blocked with the next.)

    The later failures of the same trace (``exc.more``) are learnt at once, each as the first
    is, while none of the units of its op's dims nor of what it blocks is in a group an
    earlier one touched: blocking those cannot be what made it fail, so the next plan would
    fail there again."""
    blocked = dg.extra_blocked
    fresh = _fixed_by(dg, exc, blocked)
    if not fresh:
        raise exc
    learnt, taken = [exc], set(fresh)
    near = _groups_of(dg, fresh | _op_slots(dg, exc.node))
    for later in exc.more:
        if later.node is None:
            break
        slots = _fixed_by(dg, later, blocked) - taken
        groups = _groups_of(dg, slots | _op_slots(dg, later.node))
        if slots and not groups & near:
            learnt.append(later)
            taken |= slots
        near |= groups
    for e in learnt:
        warnings.warn(
            f"{e}; keeping the channels of those dims",
            FixedSizeWarning,
            stacklevel=user_stacklevel(),
        )
    return dg.with_blocked(taken)


def _fixed_by(dg: DependencyGraph, exc: PlanValidationError, blocked) -> set[int]:
    """The slots to block for one failure (see :func:`learn_fixed_sizes`); empty when no
    choice blocks a unit the plan could remove."""
    slots = dg.coupling_model.value_slots
    tiers = [set(exc.fixed_slots)]
    if exc.node is not None:  # no progress: keep the whole op
        node = dg.graph.nodes[exc.node]
        tiers.append({s for v in node.inputs + node.outputs for s in slots[v]})
    # then the dims whose sizes the code read to compute the failing ones (a view of one
    # tensor by another's width: its own dims may be whole already), and those it read
    # between the op before the failing one and it (Python that failed on a size it read:
    # ``assert x.shape == (b, 1, 4 * d)``)
    tiers.append(set(getattr(exc, "read_slots", ())))
    saw, done = dg.graph.code_saw, getattr(exc, "ops_done", None)
    if done is None:
        done = exc.node
    if done is not None and saw is not None:
        tiers.append(
            {
                s
                for (v, d), (count, _) in saw.read_at.items()
                if count == done
                for s in (slots[v] if d is None or d >= len(slots[v]) else [slots[v][d]])
            }
        )
    module = exc.module
    if module is None and exc.node is not None:
        module = dg.graph.nodes[exc.node].module
    fresh: set[int] = set()
    for tier in _module_tiers(dg, tiers, module):
        new = tier - blocked - fresh
        fresh |= new
        if _groups_of(dg, new):
            return fresh
    return set()


def _module_tiers(dg: DependencyGraph, tiers: list[set[int]], module: str | None):
    yield from tiers
    # Not the root: what crosses its calls is the model's inputs and outputs (blocked already)
    # and its tensors are every parameter, which leaves nothing to prune.
    while module:
        activations, tensors = _module_boundary(dg, module)
        yield activations
        yield tensors
        module = module.rpartition(".")[0]


def _op_slots(dg: DependencyGraph, node: int | None) -> set[int]:
    if node is None:
        return set()
    n, slots = dg.graph.nodes[node], dg.coupling_model.value_slots
    return {s for v in n.inputs + n.outputs for s in slots[v]}


def _groups_of(dg: DependencyGraph, slots) -> set[int]:
    """The resolution groups of the units of ``slots`` the plan could remove."""
    res = dg.resolution
    out: set[int] = set()
    for s in slots:
        for leaf in res.leaves_of(int(s)):
            if res.leaf_unit_offsets[leaf] >= 0:
                units = res.units_of_leaf(int(leaf))
                out.update(np.unique(res.unit_groups[units[dg.unit_prunable[units]]]).tolist())
    return out


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
