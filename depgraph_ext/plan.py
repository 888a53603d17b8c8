"""Selection of units to remove, the plan it implies, and the plan's validation on fake tensors."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .apply import AttributeUpdate, attribute_updates, temporary_attributes
from .configs import check_loadable, config_updates
from .dependency import KINDS, DependencyGraph, FixedSizeWarning
from .errors import InvalidArgumentError, PlanValidationError, TraceError, user_stacklevel
from .trace import paused_gc, trace

# state_dict name -> {dim: kept indices (sorted int64, original coordinates)}
Plan = dict[str, dict[int, torch.Tensor]]


def check_ratio(ratio, what: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise InvalidArgumentError(f"{what} must be a number in [0, 1), not {ratio!r}")
    if not 0.0 <= ratio < 1.0:
        raise InvalidArgumentError(f"{what} must be in [0, 1) (1 would remove whole layers), "
                                   f"not {ratio}")
    return float(ratio)


def check_round_to(round_to) -> int | None:
    if round_to is None:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise InvalidArgumentError(f"round_to must be a positive integer or None, not {round_to!r}")
    return round_to


def check_ratios(ratios, model: torch.nn.Module | None = None) -> dict[str, float]:
    """``{kind or module name: ratio}``; module names must name a module of ``model``."""
    if ratios is None:
        return {}
    if not isinstance(ratios, dict):
        raise InvalidArgumentError(f"ratios must be a dict {{kind or module: ratio}}, not "
                                   f"{type(ratios).__name__}")
    modules = set(dict(model.named_modules())) if model is not None else set()
    unknown = [k for k in ratios if k not in KINDS and k not in modules]
    if unknown:
        raise InvalidArgumentError(f"ratios: {unknown} are neither group kinds {list(KINDS)} "
                                   "nor modules of the model")
    return {k: check_ratio(v, f"ratios[{k!r}]") for k, v in ratios.items()}


def check_max_ratio(max_ratio) -> float:
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not (
            0.0 <= max_ratio <= 1.0):
        raise InvalidArgumentError(f"max_ratio must be a number in [0, 1], not {max_ratio!r}")
    return float(max_ratio)


def check_min_units(min_units) -> int:
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
        raise InvalidArgumentError(f"min_units must be an integer >= 1, not {min_units!r}")
    return min_units


@dataclass(frozen=True)
class Selection:
    """How many units each group loses.

    ``ratio``: the fraction of prunable units removed; ``ratios``: per group kind or per module
    (the module of the group's root layer, or any module containing it; the longest name
    wins) overriding ``ratio``; ``global_pruning``: groups of one kind compete on their
    normalised scores and the kind as a whole loses its ratio of units; ``max_ratio``: no group
    loses more than this fraction; ``min_units``: every group keeps at least this many units;
    ``round_to``: the units a group keeps are rounded up to a multiple of this.
    """

    ratio: float = 0.5
    ratios: dict = field(default_factory=dict)
    global_pruning: bool = False
    max_ratio: float = 1.0
    min_units: int = 1
    round_to: int | None = None
    # Iterative pruning: the fraction of the schedule done after this step, and the prunable
    # units before the first step, per group (by root parameter) and per kind.
    progress: float = 1.0
    initial_groups: dict = field(default_factory=dict)
    initial_kinds: dict = field(default_factory=dict)

    def with_ratio(self, ratio: float) -> Selection:
        return replace(self, ratio=ratio)

    def removal(self, ratio: float, current: int, initial: int | None) -> int:
        """Units to remove now from ``current`` candidates so that ``progress`` of ``ratio`` of
        the ``initial`` ones are gone (without a known initial count: ``ratio`` of current)."""
        if initial is None:
            return int(math.floor(current * ratio + 1e-9))
        kept = initial - int(math.floor(initial * ratio * self.progress + 1e-9))
        return max(0, current - kept)


def group_roots(dg: DependencyGraph) -> list[str]:
    """For every group, the parameter read first in the forward pass among its members."""
    from .importance import scored_slices

    res = dg.resolution
    root_of_gid: dict[int, str] = {}
    for s in scored_slices(dg):
        for gid in np.unique(res.unit_groups[s.units[s.units >= 0]]):
            root_of_gid.setdefault(int(gid), s.name)
    return [root_of_gid.get(int(res.unit_groups[g.unit_ids[0]]), "") for g in dg.groups]


def group_ratios(dg: DependencyGraph, sel: Selection) -> tuple[np.ndarray, np.ndarray]:
    """(ratio of every group, whether it came from a module entry of ``sel.ratios``)."""
    module_keys = sorted((k for k in sel.ratios if k not in KINDS), key=len, reverse=True)
    roots = group_roots(dg) if module_keys else [""] * len(dg.groups)
    out = np.empty(len(dg.groups))
    by_module = np.zeros(len(dg.groups), dtype=bool)
    for i, (group, root) in enumerate(zip(dg.groups, roots)):
        module = root.rpartition(".")[0]
        key = next((k for k in module_keys
                    if k == "" or module == k or module.startswith(k + ".")), None)
        by_module[i] = key is not None
        out[i] = sel.ratios[key] if key is not None else sel.ratios.get(group.kind, sel.ratio)
    return out, by_module


def shrinkable_groups(dg: DependencyGraph, selection: Selection, targets=None) -> np.ndarray:
    """Whether each group can lose units under ``selection``: not when its ratio is 0 (a kind
    or module given 0; with targets, the ratio searched for stands for the default one).
    Local or global, a group of ratio 0 keeps every unit whatever the scores."""
    ratios, _ = group_ratios(dg, selection.with_ratio(1.0) if targets is not None else selection)
    return ratios > 0


def select(dg: DependencyGraph, scores: torch.Tensor, sel: Selection) -> np.ndarray:
    """Keep mask over units for the given scores (NaN: not scored, never removed)."""
    s = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    s = np.where(np.isnan(s), np.inf, s)
    keep = np.ones(dg.resolution.num_units, dtype=bool)
    ratios, by_module = group_ratios(dg, sel)
    roots = group_roots(dg) if sel.initial_groups else [None] * len(dg.groups)
    caps = []
    for group in dg.groups:
        candidates = group.unit_ids[group.prunable & np.isfinite(s[group.unit_ids])]
        cap = min(int(math.floor(candidates.shape[0] * sel.max_ratio + 1e-9)),
                  group.num_units - sel.min_units)
        caps.append((candidates, max(0, cap)))
    if sel.global_pruning:
        pools: dict[str, list[int]] = {}
        for i, group in enumerate(dg.groups):
            if not by_module[i]:
                pools.setdefault(group.kind, []).append(i)
        local = [i for i in range(len(dg.groups)) if by_module[i]]
        removed = _select_global(dg, s, sel, ratios, caps, pools)
    else:
        local, removed = range(len(dg.groups)), {}
    for i in local:
        candidates, cap = caps[i]
        n_remove = min(sel.removal(ratios[i], candidates.shape[0],
                                   sel.initial_groups.get(roots[i])), cap)
        order = np.lexsort((candidates, s[candidates]))  # lowest score first, ties by unit id
        removed[i] = candidates[order[:n_remove]]
    for i, units in removed.items():
        if sel.round_to and units.shape[0]:
            group = dg.groups[i]
            kept = group.num_units - units.shape[0]
            kept = min(group.num_units, -(-kept // sel.round_to) * sel.round_to)
            units = units[: max(0, group.num_units - kept)]  # lowest scores come first
        keep[units] = False
    keep_nonempty(dg, s, keep)
    return keep


def _select_global(dg, s, sel, ratios, caps, pools) -> dict[int, np.ndarray]:
    """Per kind: the kind's lowest-scoring units across its groups, as many as its ratio of
    all its candidates, no group past its cap. Returns removed units per group, lowest first."""
    removed: dict[int, np.ndarray] = {}
    for kind, members in pools.items():
        cands = [caps[i][0] for i in members]
        if not any(c.shape[0] for c in cands):
            continue
        units = np.concatenate(cands)
        gidx = np.concatenate([np.full(c.shape[0], i) for i, c in zip(members, cands)])
        sc = s[units]
        target = sel.removal(ratios[members[0]], units.shape[0], sel.initial_kinds.get(kind))
        by_group = np.lexsort((units, sc, gidx))  # within each group, lowest score first
        starts = np.searchsorted(gidx[by_group], gidx[by_group], side="left")
        rank = np.empty(units.shape[0], dtype=np.int64)
        rank[by_group] = np.arange(units.shape[0]) - starts
        cap = np.array([caps[i][1] for i in range(len(caps))])[gidx]
        allowed = np.nonzero(rank < cap)[0]
        order = allowed[np.lexsort((units[allowed], sc[allowed]))][:target]
        for i in members:
            mine = order[gidx[order] == i]
            removed[i] = units[mine[np.lexsort((units[mine], sc[mine]))]]
    return removed


def select_local(dg: DependencyGraph, scores: torch.Tensor, ratio: float,
                 round_to: int | None = None, ratios: dict[str, float] | None = None
                 ) -> np.ndarray:
    """Local pruning: every group loses ``floor(r * prunable units)`` of its lowest scoring
    prunable units, r being ``ratios[group.kind]`` or else ``ratio``; with ``round_to`` the
    units left in a group are rounded up to a multiple of it. Every tensor dim keeps at least
    one index."""
    return select(dg, scores, Selection(ratio, dict(ratios or {}), round_to=round_to))


def keep_nonempty(dg: DependencyGraph, scores: np.ndarray, keep: np.ndarray) -> None:
    """Give back the best unit of any leaf that would lose every element (in place)."""
    res = dg.resolution
    leaves = np.nonzero(res.leaf_unit_offsets >= 0)[0]
    if leaves.shape[0] == 0:
        return
    sizes = res.leaf_sizes[leaves].astype(np.int64)
    starts = res.leaf_unit_offsets[leaves].astype(np.int64)
    # every element of every leaf, leaf by leaf
    elem = np.repeat(starts - np.concatenate(([0], np.cumsum(sizes)[:-1])), sizes) + np.arange(
        int(sizes.sum()))
    kept_any = np.maximum.reduceat(keep[res.elem_units[elem]], np.concatenate(
        ([0], np.cumsum(sizes)[:-1]))) if elem.shape[0] else np.ones(0, dtype=bool)
    for leaf in leaves[~kept_any.astype(bool)]:  # few: re-check, an earlier fix may cover it
        units = res.units_of_leaf(int(leaf))
        if not keep[units].any():
            keep[units[np.argmax(scores[units])]] = True


def build_plan(dg: DependencyGraph, unit_keep: np.ndarray) -> tuple[Plan, dict[int, np.ndarray]]:
    masks = dg.leaf_keep_masks(unit_keep)
    plan: Plan = {}
    for name, dims in dg.tensor_dims.items():
        for td in dims:
            leaf_masks = [masks.get(int(leaf)) for leaf in td.leaves]
            if all(m is None for m in leaf_masks):
                continue
            combined = np.ones((), dtype=bool)
            for leaf, m in zip(td.leaves, leaf_masks):
                m = np.ones(int(dg.resolution.leaf_sizes[leaf]), dtype=bool) if m is None else m
                combined = np.logical_and.outer(combined, m)
            kept = np.nonzero(combined.reshape(-1))[0]
            plan.setdefault(name, {})[td.dim] = torch.from_numpy(kept.astype(np.int64))
    return plan, masks


def validate_plan(dg: DependencyGraph, plan: Plan, masks: dict[int, np.ndarray],
                  updates: list[AttributeUpdate]) -> None:
    """Trace the pruned shapes on fake tensors (attributes set for the duration only) and check
    that every op runs and every tensor has exactly the predicted shape."""
    shapes = dg.planned_shapes(plan)
    g = dg.graph
    slots = dg.coupling_model.value_slots
    try:
        with temporary_attributes(dg.model, updates):
            pruned = trace(dg.model, dg.example_inputs, shapes=shapes, progress=dg.progress,
                           walk=dg.walk,
                           stage="check the plan", shapes_only=True,
                           meta=g.mode != "fake")  # ops aligned with the graph's
    except TraceError as exc:
        failed = getattr(exc, "failed_at", None)
        bad = _original_of(g, failed) if failed is not None else None
        fixed, where = [], ""
        if bad is not None:
            fixed = (_sizes_fixed_by_call(dg, bad, failed.args, masks)
                     or _inputs_at_original_size(dg, bad, failed.input_shapes, masks)
                     or [s for v in bad.inputs + bad.outputs for s in slots[v]])
            where = f" at op {bad.name} in module {bad.module or '<root>'}"
        raise PlanValidationError(f"the pruned shapes do not run{where}: {exc}",
                                  bad.index if bad is not None else None, fixed) from exc

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
            None, fixed,
        )

    aligned = len(pruned.ops) == len(g.nodes) and all(
        a.op is op or a.name == str(op) for a, (op, _, _) in zip(g.nodes, pruned.ops))
    if aligned and _all_ops_as_planned(dg, pruned, kept):
        pass
    elif aligned:  # op by op: the first deviating op is the one whose call fixes a size
        for old, (_, _, new_shapes) in zip(g.nodes, pruned.ops):
            for vo, shape in zip(old.outputs, new_shapes):
                check(f"op {old.name} in module {old.module or '<root>'}", vo, shape)
    else:  # decompositions branch on shapes: compare what every module call returns
        calls = list(zip(g.module_calls, pruned.module_calls))
        if len(g.module_calls) != len(pruned.module_calls) or any(
                a[0] != b[0] or len(a[1]) != len(b[1]) for a, b in calls):
            raise PlanValidationError("the pruned model calls its modules differently from the "
                                      "original; its control flow depends on the pruned sizes")
        for (name, outs_old), (_, shapes_new) in calls:
            for vo, shape in zip(outs_old, shapes_new):
                check(f"module {name or '<root>'}", vo, shape)
    for vo, shape in zip(g.outputs, pruned.outputs):
        check("the model's output", vo, shape)


def _all_ops_as_planned(dg: DependencyGraph, pruned, kept_sizes: np.ndarray) -> bool:
    """Every op of an aligned pruned trace gave as many results as the original, of the same
    ranks and exactly the planned sizes (in one comparison of flat arrays; the op-by-op check
    runs only when not, to say where)."""
    layout = getattr(dg, "_output_layout", None)
    if layout is None or layout[0] is not dg.graph:
        slots = dg.coupling_model.value_slots
        outputs = [vo for node in dg.graph.nodes for vo in node.outputs]
        layout = (dg.graph,
                  np.array([len(n.outputs) for n in dg.graph.nodes], dtype=np.int64),
                  np.array([len(slots[vo]) for vo in outputs], dtype=np.int64),
                  np.array([s for vo in outputs for s in slots[vo]], dtype=np.int64))
        dg._output_layout = layout
    _, counts, ranks, flat_slots = layout
    shapes = [shape for _, _, op_shapes in pruned.ops for shape in op_shapes]
    if not np.array_equal(np.fromiter((len(s) for _, _, s in pruned.ops), np.int64,
                                      len(pruned.ops)), counts):
        return False
    if not np.array_equal(np.fromiter((len(s) for s in shapes), np.int64, len(shapes)), ranks):
        return False
    actual = np.fromiter((d for shape in shapes for d in shape), np.int64, flat_slots.shape[0])
    return bool(np.array_equal(actual, kept_sizes[flat_slots]))


def _original_of(g, failed):
    """The original node a failing op of the pruned trace corresponds to: the same index when
    the two traces ran the same ops, else the same op's same occurrence in the same module
    (decompositions may branch on shapes, shifting indices)."""
    if failed.index < len(g.nodes) and g.nodes[failed.index].name == failed.op and (
            g.nodes[failed.index].module == failed.module):
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
        if (isinstance(old_arg, (list, tuple)) and isinstance(new_arg, (list, tuple))
                and len(old_arg) == len(new_arg) == len(slots)
                and all(isinstance(x, int) for x in (*old_arg, *new_arg))):
            return [s for d, s in enumerate(slots) if new_arg[d] == old_arg[d] != -1
                    and dg.slot_kept_size(s, masks) != old_arg[d]]
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


def learn_fixed_sizes(dg: DependencyGraph, exc: PlanValidationError) -> None:
    """After a failed validation: block the dims the model's code was found to fix (a
    ``FixedSizeWarning`` names them) so the plan can be redone; re-raise ``exc`` when there
    is nothing new to block."""
    fresh = set(exc.fixed_slots) - dg.extra_blocked
    if not fresh and exc.node is not None:  # no progress: keep the whole op
        node = dg.graph.nodes[exc.node]
        slots = dg.coupling_model.value_slots
        fresh = {s for v in node.inputs + node.outputs for s in slots[v]}
        fresh -= dg.extra_blocked
    if not fresh:
        raise exc
    warnings.warn(f"{exc}; keeping the channels of those dims", FixedSizeWarning,
                  stacklevel=user_stacklevel())
    dg.block_slots(fresh)


def make_plan(dg: DependencyGraph, unit_keep: np.ndarray, require_loadable: bool = False):
    """Plan, attribute updates and config updates for a keep mask, validated before returning."""
    with paused_gc():
        plan, masks = build_plan(dg, unit_keep)
        updates = attribute_updates(dg, plan, masks)
        validate_plan(dg, plan, masks, updates)
    new_config, problems = config_updates(dg, masks, unit_keep)
    check_loadable(dg, new_config, dg.planned_shapes(plan), problems, require_loadable)
    return plan, updates, new_config
