"""The pruning loop: score, select (local or global, to a ratio or to a parameter/MACs target),
plan and validate, apply; once or in N steps with scores recomputed between them
(:class:`Pruner`). Each step hands the next stage a typed object: a dependency graph, scores,
a keep mask, a :class:`~depgraph_ext.pruning.plan.Plan`, a
:class:`~depgraph_ext.result.PruneResult`.
"""

from __future__ import annotations

import inspect
import time
import warnings
import weakref
from dataclasses import replace

import numpy as np
import torch

from ..counting import PlannedCosts
from ..errors import (
    FunctionChangingWarning,
    InvalidArgumentError,
    NoPrunableGroupsError,
    PruningError,
    UnusedParametersWarning,
    internal_errors,
    user_stacklevel,
)
from ..gcpause import paused_gc
from ..graph.dependency import READ_IN_TRAINING, DependencyGraph, Group, unused_parameters
from ..graph.frame_stack import in_fresh_chunk
from ..graph.resolve import select_backend
from ..result import PruneResult, compose_results, layer_of, layer_width
from ..torch_defaults import with_library_defaults
from . import prefetch
from .apply import apply_changes, set_data, state_companions
from .attributes import set_attributes
from .configs import held_configs, round_to_config, updated_config
from .criteria import RoundScores, get_importance
from .importance import fisher_entry, magnitude_power
from .options import PruneOptions, with_options_signature
from .plan import Plan, named_plan
from .select import (
    Selection,
    Targets,
    check_flag,
    check_max_ratio,
    check_min_units,
    check_ratio,
    check_ratios,
    check_round_to,
    check_target,
    choose_units,
    group_roots,
    keep_nonempty,
    plain_number,
    shrinkable_groups,
    step_target,
    units_by_kind,
)
from .validate import checked_plan, plan_until_valid
from .verify import verify_plan


class Pruner:
    """Prune ``model`` in ``iterative_steps`` steps; call :meth:`step` once per step (train or
    fine-tune in between: every step traces the current model and recomputes the scores).

    After step i of N the model has lost ``i/N`` of what the whole schedule removes: of each
    ratio's units, or of the way to ``target_params`` / ``target_macs``. The options are
    those of :func:`depgraph_ext.prune` (:class:`PruneOptions`), which runs every step at once.
    """

    def __init__(
        self, model: torch.nn.Module, example_inputs, ratio: float | None = None, **options
    ) -> None:
        o = PruneOptions.of(options)
        if ratio is not None and (o.target_params is not None or o.target_macs is not None):
            raise InvalidArgumentError("give either ratio or target_params/target_macs, not both")
        o = replace(o, iterative_steps=plain_number(o.iterative_steps))
        if (
            not isinstance(o.iterative_steps, int)
            or isinstance(o.iterative_steps, bool)
            or (o.iterative_steps < 1)
        ):
            raise InvalidArgumentError(
                f"iterative_steps must be an integer >= 1, not {o.iterative_steps!r}"
            )
        check_flag(o.global_pruning, "global_pruning")
        if o.optimizer is not None and not isinstance(o.optimizer, torch.optim.Optimizer):
            raise InvalidArgumentError(
                f"optimizer must be a torch.optim.Optimizer, not {type(o.optimizer).__name__}"
            )
        self.model = model
        self.example_inputs = example_inputs
        self.options = o
        self.importance = get_importance(o.importance)
        self.selection = Selection(
            ratio=check_ratio(0.5 if ratio is None else ratio),
            ratios=check_ratios(o.ratios, model),
            global_pruning=o.global_pruning,
            max_ratio=check_max_ratio(o.max_ratio),
            min_units=check_min_units(o.min_units),
            round_to=check_round_to(o.round_to),
            exact_only=check_flag(o.exact_only, "exact_only"),
        )
        check_flag(o.verify, "verify")
        self.target_params = check_target(o.target_params, "target_params")
        self.target_macs = check_target(o.target_macs, "target_macs")
        self.iterative_steps = o.iterative_steps
        self.results: list[PruneResult] = []
        self._initial: tuple[int, int] | None = None  # (params, MACs) before step 1
        self._initial_units: tuple[dict, dict] | None = None  # prunable units before step 1

    @property
    def done(self) -> bool:
        return len(self.results) >= self.iterative_steps

    @with_library_defaults
    @in_fresh_chunk
    def step(self) -> PruneResult:
        """Run the next step; returns what it did (its plan in the current model's coordinates)."""
        if self.done:
            raise PruningError(f"all {self.iterative_steps} steps of this pruner are done")
        i, n = len(self.results) + 1, self.iterative_steps
        o = self.options
        t0 = time.perf_counter()
        power = magnitude_power(self.importance)
        with paused_gc(), prefetch.prefetching(self.model, power, select_backend(o.backend)):
            dg = DependencyGraph(
                self.model,
                self.example_inputs,
                ignore=o.ignore,
                backend=o.backend,
                strict=o.strict,
                progress=o.progress,
                prune_outputs=o.prune_outputs,
            )
            targets = None
            if self.target_params is not None or self.target_macs is not None:
                costs = PlannedCosts(dg)
                if self._initial is None:
                    self._initial = costs.at(None)
                p0, m0 = self._initial
                targets = Targets(
                    step_target(self.target_params, p0, i, n),
                    step_target(self.target_macs, m0, i, n),
                    costs,
                )
            selection = self.selection
            if n > 1 and targets is None:
                if self._initial_units is None:
                    self._initial_units = _initial_counts(dg)
                selection = replace(
                    selection,
                    progress=i / n,
                    initial_groups=self._initial_units[0],
                    initial_kinds=self._initial_units[1],
                )
            result = prune_step(dg, self.importance, selection, targets, o, t0)
            # Dropped before the collector is back: on leaving the pause it walks every young
            # object still alive (the graph's, 50 ms at 128 Llama layers), and only its cycles
            # once the graph is gone.
            del dg, targets, selection
        self.results.append(result)
        return result

    @with_library_defaults
    @in_fresh_chunk
    def run(self) -> PruneResult:
        """Every remaining step at once, as one result; if any step fails, the steps this call
        ran are undone (unless ``in_place``) and the error is raised."""
        if self.iterative_steps == 1 and not self.results:
            return self.step()
        snapshot = None if self.options.in_place else Snapshot(self.model, self.options.optimizer)
        done_before = len(self.results)
        try:
            while not self.done:
                self.step()
        except BaseException:
            if snapshot is not None:
                snapshot.restore(self.results[done_before:])
                del self.results[done_before:]
            raise
        return self.result()

    def result(self) -> PruneResult:
        """Every step so far as one result (plan in the original model's coordinates)."""
        if not self.results:
            raise PruningError("no step has run yet")
        return compose_results(self.results)


with_options_signature(
    Pruner.__init__,
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("example_inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("ratio", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    ],
)


def _initial_counts(dg: DependencyGraph) -> tuple[dict, dict]:
    """Prunable units per group (keyed by its root parameter, stable across steps) and kind."""
    groups, kinds = {}, {}
    for group, root in zip(dg.groups, group_roots(dg)):
        groups[root] = groups.get(root, 0) + group.num_prunable
        kinds[group.kind] = kinds.get(group.kind, 0) + group.num_prunable
    return groups, kinds


def prune_step(
    dg: DependencyGraph,
    importance,
    selection: Selection,
    targets: Targets | None,
    options: PruneOptions,
    t0: float,
) -> PruneResult:
    """Score, select, plan and validate (learning sizes the model's code fixes), apply: once."""
    timings = dict(dg.timings)
    ahead = prefetch.active()
    if ahead is not None:  # its thread's time summing, beside the stages before scoring
        timings["score_ahead"] = 0.0
    timings.update(score=0.0, select=0.0, plan=0.0)
    rounded: list[str] = []

    round_scores = RoundScores(importance)

    def choose(g: DependencyGraph) -> np.ndarray:
        t1 = time.perf_counter()
        shrinkable = shrinkable_groups(g, selection, targets)
        scores = round_scores(g.scoring_only(shrinkable))
        t2 = time.perf_counter()
        if not g.groups:
            if not g.graph.params:
                raise NoPrunableGroupsError(
                    "the model has no parameters: nothing in it can be pruned (a quantized "
                    "model holds its weights in packed form, not as parameters)"
                    + "".join(f"\n  - {op.describe()}" for op in g.opaque_ops)
                )
            causes = _listed([b.describe() for b in g.blockers()], 8)
            refusal = NoPrunableGroupsError(
                "no group of the model has a prunable unit: every channel touches an input, an "
                "output, an ignored tensor, an op without a rule or an op whose rule keeps it "
                "(outputs keep their width unless prune_outputs names them). What keeps them:"
                + causes
            )
            refusal.causes = causes
            raise refusal
        if selection.exact_only and not shrinkable.any():
            whole = [
                grp
                for grp, could in zip(
                    g.groups, shrinkable_groups(g, replace(selection, exact_only=False), targets)
                )
                if could and not grp.exact
            ]
            if whole:
                raise NoPrunableGroupsError(
                    f"nothing can be pruned exactly: {len(whole)} group"
                    + (" was" if len(whole) == 1 else "s were")
                    + " left whole because removing its units changes the function "
                    "(exact_only=True), and no other group can shrink; without exact_only they "
                    "are pruned and declared. "
                    + "; ".join(grp.describe() for grp in whole[:3])
                    + (" ..." if len(whole) > 3 else "")
                )
        keep = choose_units(g, scores, selection, targets)
        if keep.all() and shrinkable.any():
            _check_scores_some_unit(g, shrinkable, scores, round_scores.importance)
        if options.require_loadable:  # head counts the config can say
            keep, notes = round_to_config(g, keep, scores)
            rounded[:] = notes
        timings["score"] += t2 - t1
        timings["select"] += time.perf_counter() - t2
        return keep

    with internal_errors("planning"):
        dg, plan = plan_until_valid(dg, choose, options.require_loadable, timings)
        if ahead is not None:
            ahead.stop()
            timings["score_ahead"] = ahead.seconds
        if options.verify:
            t = time.perf_counter()
            verify_plan(dg, plan)
            timings["verify"] = time.perf_counter() - t
    result = apply_step(dg, plan, timings, t0, options.in_place, options.optimizer)
    result.rounded = list(rounded)
    return result


def _listed(lines: list[str], shown: int) -> str:
    more = [f"... ({len(lines) - shown} more)"] if len(lines) > shown else []
    return "".join(f"\n  - {line}" for line in lines[:shown] + more)


def prune_units(dg: DependencyGraph, group: Group, units) -> PruneResult:
    """Remove the given group-local ``units`` of one group (validated, in place)."""
    dg.check_fresh()
    units = np.asarray(units, dtype=np.int64).reshape(-1)
    if units.size and (units.min() < 0 or units.max() >= group.num_units):
        raise InvalidArgumentError(f"units must be in [0, {group.num_units}) for {group!r}")
    if units.size and not group.prunable[units].all():
        raise InvalidArgumentError(
            f"{group!r}: units {units[~group.prunable[units]].tolist()} are "
            "blocked and cannot be removed"
        )
    keep = np.ones(dg.resolution.num_units, dtype=bool)
    keep[group.unit_ids[units]] = False
    empty = keep.copy()
    keep_nonempty(dg, np.zeros(keep.shape[0]), empty)
    if not np.array_equal(empty, keep):
        raise InvalidArgumentError(f"{group!r}: removing these units would empty a layer")
    t0 = time.perf_counter()
    with internal_errors("planning"):
        plan = checked_plan(dg, keep)
    return apply_step(dg, plan, dict(dg.timings) | {"plan": time.perf_counter() - t0}, t0)


def apply_step(
    dg: DependencyGraph,
    plan: Plan,
    timings: dict,
    t0: float,
    in_place: bool = False,
    optimizer=None,
) -> PruneResult:
    """Apply a validated plan to the graph's model and say what changed."""
    model = dg.model
    t_count = time.perf_counter()
    costs = PlannedCosts(dg)
    params_before, macs_before = costs.at(None)
    _, macs_after = costs.at(plan.keep)
    # (said before anything changes: nothing that can fail runs after the first tensor does)
    changing = [g.describe() for g in dg.groups if not g.exact and not plan.keep[g.unit_ids].all()]
    t = time.perf_counter()
    params = dg.walk.params  # the model's, each once, as named_parameters
    tensors = params | dg.walk.buffers
    named = named_plan(plan.tensors, dg.walk)
    users = {n: named.tied.get(n, n) for n in [*named.tensors, *named.outside]}
    shapes_before = {n: tuple(tensors[c].shape) for n, c in users.items()}
    modules = dict(dg.walk.modules)
    layers = {layer_of(n)[0] for n in plan.tensors} & modules.keys()
    widths = {m: layer_width(modules[m]) for m in layers}
    companions = state_companions(model, plan.tensors, optimizer, tensors)
    native = dg.backend == "native"
    give_config = updated_config(model, plan.config)
    apply_changes(
        model,
        plan.tensors,
        plan.attributes,
        in_place=in_place and native,
        native=native,
        companions=companions,
        tensors=tensors,
    )
    give_config()
    t_apply = time.perf_counter()
    timings = timings | {"count": t - t_count, "apply": t_apply - t, "total": t_apply - t0}
    if changing:
        warnings.warn(
            f"{len(changing)} function-changing group(s) were pruned: removing their units "
            f"changes what the kept ones compute ({changing[0]}"
            + (f"; and {len(changing) - 1} more" if len(changing) > 1 else "")
            + "); result.summary() lists them, exact_only=True keeps them",
            FunctionChangingWarning,
            stacklevel=user_stacklevel(),
        )
    if plan.tensors:
        _warn_unused_parameters(dg)
    return PruneResult(
        plan=named.tensors,
        params_before=params_before,
        params_after=sum(p.numel() for p in params.values()),  # each once, as named_parameters
        timings=timings,
        shapes_before=shapes_before,
        shapes_after={n: tuple(tensors[c].shape) for n, c in users.items()},
        attribute_updates=list(plan.attributes),
        config_updates=list(plan.config),
        num_groups=len(dg.groups),
        backend=dg.backend,
        macs_before=macs_before,
        macs_after=macs_after,
        units=units_by_kind(dg.groups, plan.keep),
        buffers=frozenset(n for n, c in users.items() if c not in params),
        function_changing=changing,
        model_ref=weakref.ref(model),
        channels={
            m: (before, layer_width(modules[m]))
            for m, before in widths.items()
            if before is not None
        },
        tied=named.tied,
        non_persistent=named.outside,
        outputs=dict(plan.outputs),
        divisors={
            n: dg.divisors[c]
            for n in [*named.tensors, *named.outside]
            if (c := n if n in dg.divisors else named.tied.get(n, n)) in dg.divisors
        },
    )


class Snapshot:
    """References to everything pruning replaces (tensors' data and grads, optimizer state,
    Fisher statistics), so several steps can be undone together. Holds no copies: pruning
    builds new tensors rather than writing into the old ones (except ``in_place``)."""

    def __init__(self, model: torch.nn.Module, optimizer=None) -> None:
        self.model = model
        tensors = list(model.parameters()) + list(model.buffers())
        self.tensors = [(t, t.data, t.grad) for t in {id(t): t for t in tensors}.values()]
        self.optimizer = optimizer
        self.state = (
            {p: dict(st) for p, st in optimizer.state.items()} if optimizer is not None else {}
        )
        self.fisher = [
            (e, list(e)) for t in model.parameters() if (e := fisher_entry(t)) is not None
        ]
        # The configs its modules hold: a step gives the model updated copies (never changing
        # these), so undoing it gives these back.
        self.configs = held_configs(model)

    def restore(self, results: list[PruneResult]) -> None:
        """Undo ``results`` (the steps taken since the snapshot, in order)."""
        for result in reversed(results):
            set_attributes(self.model, result.attribute_updates, new=False)
        for held, name, config in self.configs:
            held[name] = config
        with torch.no_grad():
            for t, data, grad in self.tensors:
                set_data(t, data)
                t.grad = grad
        for p, st in self.state.items():
            self.optimizer.state[p] = st
        for entry, old in self.fisher:
            entry[:] = old


def _warn_unused_parameters(dg: DependencyGraph) -> None:
    """Say which parameters the traced forward did not use (their shapes stay while widths
    they may share shrink), and what the training mode's trace kept for those it reads."""
    trained = [n for n, why in dg.training_only.items() if why == READ_IN_TRAINING]
    if trained:
        kept = ", ".join(f"{n}[{d}]" for n, d in dg.kept_for_training[:4])
        more = len(dg.kept_for_training) - 4
        warnings.warn(
            f"{len(trained)} parameter(s) only the training mode uses: "
            f"{_named_by_module(dg, trained)}. The widths they read are kept whole"
            + (f" ({kept}{f' and {more} more' if more > 0 else ''})" if kept else "")
            + ", so that the pruned model trains as it did",
            UnusedParametersWarning,
            stacklevel=user_stacklevel(),
        )
    unused = [n for n in unused_parameters(dg.graph) if n not in trained]
    if not unused:
        return
    failed = {why for n, why in dg.training_only.items() if n in unused}
    hint = (
        f" (the training mode could not be traced to see whether it does: {failed.pop()})"
        if failed
        else " (where only the training mode runs them, prune the model in training mode: "
        "the widths they read are then kept)"
        if not dg.training_traced
        else ""
    )
    warnings.warn(
        f"{len(unused)} parameter(s) are not used by the forward on the example inputs (as "
        f"traced, in eval mode): {_named_by_module(dg, unused)}. They are left as they are, "
        "and the pruned widths are not followed for them: a forward that uses them (other "
        "inputs, the training mode) may fail or compute otherwise. Give example inputs that "
        "run them, or make sure nothing does" + hint,
        UnusedParametersWarning,
        stacklevel=user_stacklevel(),
    )


def _named_by_module(dg: DependencyGraph, names: list[str], most: int = 6) -> str:
    """``names`` said briefly: a module all of whose parameters are among them by its name
    (the outermost such), any other parameter by its own."""
    unused = set(names)
    whole: list[str] = []
    for module_name, module in dg.walk.modules:
        if not module_name or any(module_name.startswith(w + ".") for w in whole):
            continue
        own = [f"{module_name}.{n}" for n, _ in module.named_parameters(remove_duplicate=False)]
        if own and all(dg.walk.aliases.get(n, n) in unused for n in own):
            whole.append(module_name)
    covered = {n for n in names if any(n.startswith(w + ".") for w in whole)}
    parts = [f"module {w}" for w in whole] + [n for n in names if n not in covered]
    return ", ".join(parts[:most]) + (f" and {len(parts) - most} more" if len(parts) > most else "")


def _check_scores_some_unit(dg: DependencyGraph, shrinkable, scores, importance) -> None:
    """Nothing was chosen where groups may shrink: refused where that is because the
    criterion scores none of their units (``bn_scale`` on a model without batch norms), which
    would otherwise prune nothing without a word."""
    values = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    units = np.concatenate([g.unit_ids for g, ok in zip(dg.groups, shrinkable) if ok])
    if np.isnan(values[units]).all():
        name = getattr(importance, "name", type(importance).__name__)
        raise NoPrunableGroupsError(
            f"importance {name!r} scores no unit of the {int(np.sum(shrinkable))} group(s) that "
            "could shrink (unscored units are never removed), so nothing would be pruned"
            + (
                ": it scores groups with a BatchNorm, and these have none"
                if name == "bn_scale"
                else ""
            )
            + "; choose another criterion"
        )
