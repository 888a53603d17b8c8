"""Selection: how many units each group loses, and which (local or global, to a ratio or to a
parameter/MACs target). Reads a dependency graph and scores; returns a keep mask over units."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..counting import PlannedCosts
from ..errors import InvalidArgumentError
from ..graph.dependency import KINDS, DependencyGraph
from .importance import scored_slices

OPT_IN_KINDS = ("experts",)  # kinds the default ratio leaves alone
BISECTION_STEPS = 30  # halvings of the ratio searched for a target


# -- arguments ------------------------------------------------------------------------------------
def plain_number(value):
    """A NumPy scalar as the Python int or float it holds (``np.linspace``'s ratios, an
    ``np.int64`` count); anything else as it is, for the checks to judge."""
    if type(value) in (int, float, bool) or not isinstance(value, numbers.Real):
        return value  # (np.bool_ is no numbers.Real: refused as a bool is)
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_ratio(ratio, what: str = "ratio") -> float:
    ratio = plain_number(ratio)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise InvalidArgumentError(f"{what} must be a number in [0, 1), not {ratio!r}")
    if not 0.0 <= ratio < 1.0:
        raise InvalidArgumentError(
            f"{what} must be in [0, 1) (1 would remove whole layers), not {ratio}"
        )
    return float(ratio)


def check_round_to(round_to) -> int | None:
    round_to = plain_number(round_to)
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
        raise InvalidArgumentError(
            f"ratios must be a dict {{kind or module: ratio}}, not {type(ratios).__name__}"
        )
    unknown = [k for k in ratios if k not in KINDS]
    if unknown and model is not None:  # (module names: the model walked only for them)
        modules = {name for name, _ in model.named_modules()}
        unknown = [k for k in unknown if k not in modules]
    if unknown:
        raise InvalidArgumentError(
            f"ratios: {unknown} are neither group kinds {list(KINDS)} nor modules of the model"
        )
    return {k: check_ratio(v, f"ratios[{k!r}]") for k, v in ratios.items()}


def check_max_ratio(max_ratio) -> float:
    max_ratio = plain_number(max_ratio)
    if (
        isinstance(max_ratio, bool)
        or not isinstance(max_ratio, (int, float))
        or not (0.0 <= max_ratio <= 1.0)
    ):
        raise InvalidArgumentError(f"max_ratio must be a number in [0, 1], not {max_ratio!r}")
    return float(max_ratio)


def check_flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be True or False, not {value!r}")
    return value


def check_min_units(min_units) -> int:
    min_units = plain_number(min_units)
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
        raise InvalidArgumentError(f"min_units must be an integer >= 1, not {min_units!r}")
    return min_units


def check_target(target, what: str):
    target = plain_number(target)
    if target is None:
        return None
    if (
        isinstance(target, bool)
        or not isinstance(target, (int, float))
        or not math.isfinite(target)
        or target <= 0
    ):
        raise InvalidArgumentError(
            f"{what} must be a positive count (int) or a fraction of the "
            f"original in (0, 1] (float), not {target!r}"
        )
    if isinstance(target, float) and target > 1.0:
        raise InvalidArgumentError(
            f"{what} as a float is the fraction of the original to keep, "
            f"in (0, 1]; give a count as an int, not {target!r}"
        )
    return target


def step_target(target, initial: int, i: int, n: int) -> int | None:
    if target is None:
        return None
    final = target * initial if isinstance(target, float) else target
    return int(math.floor(initial - (initial - final) * i / n))


@dataclass(frozen=True)
class Targets:
    """What one step must not exceed: parameters and MACs (None: no target), predicted by
    ``costs`` for any keep mask."""

    params: int | None
    macs: int | None
    costs: PlannedCosts


# -- selection ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """How many units each group loses.

    ``ratio``: the fraction of prunable units removed; ``ratios``: per group kind or per module
    (the module of the group's root layer, or any module containing it; the longest name
    wins) overriding ``ratio``; ``global_pruning``: groups of one kind compete on their
    normalised scores and the kind as a whole loses its ratio of units; ``max_ratio``: no group
    loses more than this fraction; ``min_units``: every group keeps at least this many units;
    ``round_to``: the units a group keeps are rounded up to a multiple of this;
    ``exact_only``: function-changing groups keep every unit.
    """

    ratio: float = 0.5
    ratios: dict = field(default_factory=dict)
    global_pruning: bool = False
    max_ratio: float = 1.0
    min_units: int = 1
    round_to: int | None = None
    exact_only: bool = False
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
    # Whole experts go only when their kind is given a ratio: removing one reroutes tokens.
    default = {kind: 0.0 if kind in OPT_IN_KINDS else sel.ratio for kind in KINDS}
    by_module = np.zeros(len(dg.groups), dtype=bool)
    for i, (group, root) in enumerate(zip(dg.groups, roots)):
        module = root.rpartition(".")[0]
        key = next(
            (k for k in module_keys if k == "" or module == k or module.startswith(k + ".")), None
        )
        if group.kind in OPT_IN_KINDS:  # by kind only: a module's ratio means its widths
            key = None
        by_module[i] = key is not None
        kind_ratio = sel.ratios.get(group.kind, default[group.kind])
        out[i] = sel.ratios[key] if key is not None else kind_ratio
    return out, by_module


def family_ratios(
    dg: DependencyGraph, ratios: np.ndarray, counts, caps
) -> tuple[np.ndarray, np.ndarray]:
    """The ratios of groups that are factors of one dim (``dg.factor_families``: a grouped
    conv's [groups, channels per group]) shared so that each dim keeps what the ratio says:
    the members, in their order, each lose what keeps ``1 - ratio`` of every dim they are a
    factor of, given what the members before them keep (a dim never keeps less). The ratio is
    that of the family's first member with candidates. ``counts``: candidate units per group;
    ``caps``: the most each may lose. Returns the ratios and, per group, whether it yielded
    (lost less than its ratio) to other factors (global pruning leaves those whole)."""
    shared = ratios.copy()
    yielded = np.zeros(len(dg.groups), dtype=bool)
    for family in dg.factor_families:
        lead = next((i for i in family.members if counts[i] > 0), None)
        if lead is None:
            continue
        target = 1.0 - ratios[lead]  # of every dim of the family
        kept: dict[int, float] = {}
        for i in family.members:
            if counts[i] == 0:
                kept[i] = 1.0
                continue
            need = 0.0  # the fraction of its units this group keeps
            for product in family.products:
                if i in product:
                    decided = math.prod(kept.get(j, 1.0) for j in product)
                    need = max(need, target / decided)
            ratio = 0.0 if need >= 1.0 - 1e-9 else 1.0 - need
            removed = min(int(math.floor(counts[i] * ratio + 1e-9)), caps[i])
            kept[i] = (counts[i] - removed) / counts[i]
            yielded[i] = ratio < ratios[i] - 1e-12
            shared[i] = ratio
    return shared, yielded


def _counts_and_caps(dg: DependencyGraph, sel: Selection, counts) -> tuple[list, list]:
    """Candidate counts (``counts``, or the prunable units, none of a function-changing group
    under ``exact_only``) and the most units each group may lose."""
    if counts is None:
        counts = [0 if sel.exact_only and not g.exact else g.num_prunable for g in dg.groups]
    caps = [
        max(
            0,
            min(
                int(math.floor(n * sel.max_ratio + 1e-9)),
                g.num_units - max(sel.min_units, g.min_kept),
            ),
        )
        for g, n in zip(dg.groups, counts)
    ]
    return list(counts), caps


def shrinkable_groups(
    dg: DependencyGraph, selection: Selection, targets: Targets | None = None
) -> np.ndarray:
    """Whether each group can lose units under ``selection``: not when its ratio is 0 (a kind
    or module given 0; with targets, the ratio searched for stands for the default one; a
    factor of a dim that another factor's ratio covers). Local or global, a group of ratio 0
    keeps every unit whatever the scores; with ``exact_only``, so does a function-changing
    group."""
    sel = selection.with_ratio(1.0) if targets is not None else selection
    ratios, _ = group_ratios(dg, sel)
    counts, caps = _counts_and_caps(dg, sel, None)
    ratios, yielded = family_ratios(dg, ratios, counts, caps)
    if selection.global_pruning:
        ratios = ratios * ~yielded
    return (ratios > 0) & (np.asarray(counts) > 0)


def select(dg: DependencyGraph, scores: torch.Tensor, sel: Selection) -> np.ndarray:
    """Keep mask over units for the given scores (NaN: not scored, never removed)."""
    s = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    s = np.where(np.isnan(s), np.inf, s)
    keep = np.ones(dg.resolution.num_units, dtype=bool)
    ratios, by_module = group_ratios(dg, sel)
    roots = group_roots(dg) if sel.initial_groups else [None] * len(dg.groups)
    candidates_of = []
    for group in dg.groups:
        candidates = group.unit_ids[group.prunable & np.isfinite(s[group.unit_ids])]
        if sel.exact_only and not group.exact:
            candidates = candidates[:0]
        candidates_of.append(candidates)
    counts, limits = _counts_and_caps(dg, sel, [c.shape[0] for c in candidates_of])
    caps = list(zip(candidates_of, limits))
    # Factors of one dim share its ratio, by what they will have lost once the schedule is done
    # (iterative pruning: counted from the units before the first step).
    initial = [sel.initial_groups.get(r, n) if r else n for r, n in zip(roots, counts)]
    shared, yielded = family_ratios(dg, ratios, initial, _counts_and_caps(dg, sel, initial)[1])
    if sel.global_pruning:
        pools: dict[str, list[int]] = {}
        for i, group in enumerate(dg.groups):
            if not by_module[i] and not yielded[i]:
                pools.setdefault(group.kind, []).append(i)
        local = [i for i in range(len(dg.groups)) if by_module[i]]
        removed = select_global(dg, s, sel, ratios, caps, pools)
    else:
        local, removed = range(len(dg.groups)), {}
    for i in local:
        candidates, cap = caps[i]
        n_remove = min(
            sel.removal(shared[i], candidates.shape[0], sel.initial_groups.get(roots[i])), cap
        )
        order = np.lexsort((candidates, s[candidates]))  # lowest score first, ties by unit id
        removed[i] = candidates[order[:n_remove]]
    multiples = dg.kept_multiples
    for i, units in removed.items():
        step = int(np.lcm(sel.round_to or 1, multiples[i]))
        if step > 1 and units.shape[0]:
            group = dg.groups[i]
            kept = group.num_units - units.shape[0]
            kept = min(group.num_units, max(step, -(-kept // step) * step))
            units = units[: max(0, group.num_units - kept)]  # lowest scores come first
        keep[units] = False
    keep_nonempty(dg, s, keep)
    return keep


def select_global(dg, s, sel, ratios, caps, pools) -> dict[int, np.ndarray]:
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


def select_local(
    dg: DependencyGraph,
    scores: torch.Tensor,
    ratio: float,
    round_to: int | None = None,
    ratios: dict[str, float] | None = None,
) -> np.ndarray:
    """Local pruning: every group loses ``floor(r * prunable units)`` of its lowest scoring
    prunable units, r being ``ratios[group.kind]`` or else ``ratio``; with ``round_to`` the
    units left in a group are rounded up to a multiple of it. Every tensor dim keeps at least
    one index."""
    return select(dg, scores, Selection(ratio, dict(ratios or {}), round_to=round_to))


def keep_nonempty(dg: DependencyGraph, scores: np.ndarray, keep: np.ndarray) -> None:
    """Give back the best unit of any leaf that would lose every element (in place)."""
    res = dg.resolution
    # (a leaf of no elements, an empty tensor's dim, has nothing to keep)
    leaves = np.nonzero((res.leaf_unit_offsets >= 0) & (res.leaf_sizes > 0))[0]
    if leaves.shape[0] == 0:
        return
    sizes = res.leaf_sizes[leaves].astype(np.int64)
    starts = res.leaf_unit_offsets[leaves].astype(np.int64)
    # every element of every leaf, leaf by leaf
    elem = np.repeat(starts - np.concatenate(([0], np.cumsum(sizes)[:-1])), sizes) + np.arange(
        int(sizes.sum())
    )
    kept_any = (
        np.maximum.reduceat(
            keep[res.elem_units[elem]], np.concatenate(([0], np.cumsum(sizes)[:-1]))
        )
        if elem.shape[0]
        else np.ones(0, dtype=bool)
    )
    for leaf in leaves[~kept_any.astype(bool)]:  # few: re-check, an earlier fix may cover it
        units = res.units_of_leaf(int(leaf))
        if not keep[units].any():
            keep[units[np.argmax(scores[units])]] = True


def choose_units(
    dg: DependencyGraph, scores: torch.Tensor, selection: Selection, targets: Targets | None = None
) -> np.ndarray:
    """The keep mask: ``selection`` as it is, or, with ``targets``, with the smallest
    ``ratio`` whose predicted parameters and MACs are within both targets."""
    if targets is None:
        return select(dg, scores, selection)
    max_params, max_macs = targets.params, targets.macs
    costs = targets.costs.bound_to(dg)  # validation may have blocked slots since

    def within(keep) -> bool:
        params, macs = costs.at(keep)
        return (max_params is None or params <= max_params) and (
            max_macs is None or macs <= max_macs
        )

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
            "limits or the per-kind ratios, or ask for less"
        )
    lo = 0.0
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        keep_mid = select(dg, scores, selection.with_ratio(mid))
        if within(keep_mid):
            hi, keep_hi = mid, keep_mid
        else:
            lo = mid
    return keep_hi


def units_by_kind(groups, keep: np.ndarray | None = None) -> dict[str, tuple[int, int]]:
    """Per group kind: (units, units kept under ``keep``; all of them without one)."""
    out: dict[str, tuple[int, int]] = {}
    for group in groups:
        before, after = out.get(group.kind, (0, 0))
        kept = group.num_units if keep is None else int(keep[group.unit_ids].sum())
        out[group.kind] = (before + group.num_units, after + kept)
    return out
