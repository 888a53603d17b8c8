"""The dependency graph: traced ops, their couplings, and the resolved groups of coupled slices."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import (
    InvalidArgumentError,
    OpaqueOpWarning,
    PruningError,
    internal_errors,
    user_stacklevel,
)
from ..gcpause import paused_gc
from ..progress import as_progress
from ..torch_defaults import with_library_defaults
from .blockers import Blocker, blockers
from .computed import computed_tensors, divisor_tensors
from .coupling_model import CouplingModel, OpaqueOp, build_couplings
from .couplings import CouplingKind, Couplings, Resolution
from .frame_stack import in_fresh_chunk
from .repeats import ReadLog, Repeats
from .resolve import resolve, select_backend
from .shape_repeats import ShapeReplays
from .size_watch import AttributeLeaf, ConfigLeaf, SizeInt, watching
from .standin import MetaResults
from .trace import TRACE_LOCK, OpGraph, Ref, trace
from .traceable import is_experts_module
from .walk import ModelWalk, non_persistent

# Group kinds, by precedence: a group with attention heads is "heads" even if it touches more.
KINDS = ("channels", "hidden", "heads", "experts")


@dataclass
class Member:
    """The slice of one tensor (parameter or buffer) that belongs to a group.

    ``indices[i]`` along ``dim`` belongs to the group's unit ``units[i]``.
    """

    name: str
    dim: int
    indices: torch.Tensor
    units: torch.Tensor

    @property
    def unit_size(self) -> int:
        """Indices of this tensor per unit (1 for a channel, head_dim rows for a head, ...)."""
        n = int(torch.unique(self.units).numel())
        return int(self.indices.numel()) // max(n, 1)


class Group:
    """Coupled slices that must be pruned together, unit by unit.

    ``exact``: removing units of this group equals zeroing them in the original (the
    scatter-back oracle holds); otherwise the group is *function-changing* and ``reasons`` says
    why (an op that reduces over its units with more than a sum: a norm's statistics, a mean, a
    softmax, a max ...).

    ``members`` are listed on first use (the tensor dims scanned once for every group of the
    graph, each group's members made when asked for): selecting and pruning need only the
    units, and listing the members of every group costs a Llama-7B-sized graph a quarter of a
    second."""

    def __init__(
        self,
        index: int,
        unit_ids: np.ndarray,
        prunable: np.ndarray,
        members: list[Member] | None = None,
        kind: str = "channels",
        list_members=None,
        name_members=None,
        reasons: tuple[str, ...] = (),
        min_kept: int = 1,
    ) -> None:
        self.index = index
        self.unit_ids = unit_ids  # global unit ids, group-local unit i is unit_ids[i]
        self.prunable = prunable  # bool per local unit
        self.kind = kind  # "channels" | "hidden" | "heads" | "experts"
        self.reasons = reasons
        self.min_kept = min_kept  # units an op needs kept (a top-k's k)
        self._members = members
        self._list_members = list_members  # () -> the members, made on first use
        self._name_members = name_members  # () -> (tensor, dim) of each member

    @property
    def exact(self) -> bool:
        return not self.reasons

    @property
    def members(self) -> list[Member]:
        if self._members is None:
            self._members = self._list_members()
        return self._members

    @property
    def num_units(self) -> int:
        return int(self.unit_ids.shape[0])

    @property
    def num_prunable(self) -> int:
        return int(self.prunable.sum())

    @property
    def member_names(self) -> list[tuple[str, int]]:
        """(tensor, dim) of each member, in the order of ``members`` (made without them)."""
        if self._members is None and self._name_members is not None:
            return self._name_members()
        return [(m.name, m.dim) for m in self.members]

    def __repr__(self) -> str:
        listed = self.member_names
        names = ", ".join(f"{name}[{dim}]" for name, dim in listed[:4])
        more = f" +{len(listed) - 4}" if len(listed) > 4 else ""
        return (
            f"Group({self.index}, {self.kind}: {self.num_units} units, "
            f"{self.num_prunable} prunable{'' if self.exact else ', function-changing'}; "
            f"{names}{more})"
        )

    def describe(self) -> str:
        """The group in a line: kind, size, a few members, and why it is function-changing."""
        listed = self.member_names
        names = ", ".join(f"{name}[{dim}]" for name, dim in listed[:3])
        more = f" +{len(listed) - 3}" if len(listed) > 3 else ""
        why = "; ".join(self.reasons[:2]) + (" ..." if len(self.reasons) > 2 else "")
        return f"{self.kind} group of {self.num_units} units ({names}{more})" + (
            f": {why}" if why else ""
        )


@dataclass(frozen=True)
class FactorFamily:
    """Groups (indices into a graph's ``groups``) whose units are factors of tensor dims.

    ``products``: the groups each such dim is a product of (a dim made of one of them too).
    ``members``: the order in which they take a ratio (see ``select``): a group that is the
    only prunable factor of some dim first (a depthwise conv's channels are its groups; a
    grouped conv's input channels per group are its width), then the others but the counts of
    groups a module declares (a conv's ``groups``, a GroupNorm's ``num_groups``), those last;
    most units first within each."""

    members: tuple[int, ...]
    products: tuple[tuple[int, ...], ...]


@dataclass
class TensorDim:
    """One dim of a parameter/buffer as a row-major product of leaf atoms."""

    name: str
    dim: int
    size: int
    leaves: np.ndarray
    leaf_sizes: np.ndarray

    def digits(self, position: int) -> np.ndarray:
        """For every index of this dim, its coordinate along leaf ``position``."""
        inner = int(np.prod(self.leaf_sizes[position + 1 :], dtype=np.int64))
        return (np.arange(self.size, dtype=np.int64) // inner) % int(self.leaf_sizes[position])


def _decided_dims(g: OpGraph, node, slots) -> list[int]:
    """The dims of a decision's results whose size the data gave: a ``nonzero``'s count, the
    position a boolean mask selects along; every dim of another's (``unique``, an NMS)."""
    packet = node.packet
    if packet in ("aten.nonzero", "aten.argwhere", "aten.masked_select"):
        return [slots[v][0] for v in node.outputs if slots[v]]
    if packet in ("aten.index", "aten._unsafe_index"):
        indices = list(node.args[1]) if len(node.args) > 1 else []
        indexed = [d for d, ix in enumerate(indices) if ix is not None]
        if not any(
            isinstance(ix, Ref) and g.values[ix.value].dtype in (torch.bool, torch.uint8)
            for ix in indices
        ):
            return []  # integer indices: the index tensors' shapes decide
        adjacent = indexed == list(range(indexed[0], indexed[-1] + 1))
        out = slots[node.outputs[0]]
        pos = indexed[0] if adjacent else 0
        return [out[pos]] if pos < len(out) else []
    return [s for v in node.outputs for s in slots[v]]


class DependencyGraph:
    """Trace ``model`` on ``example_inputs``, apply the op rules and resolve coupled groups.

    ``ignore``: modules or parameter/buffer names (or the objects) whose tensors must not change.
    ``strict``: raise on an op without a rule instead of blocking its channels.
    ``backend``: ``"native"`` (C++ core, default when built) or ``"python"``.
    ``progress``: bars on long stages (None: when standard error is a terminal).
    ``trace_device``: the device the model is traced as (the CPU), wherever its weights live:
    ATen dispatches by device (cuDNN batch norm, fused attention kernels), and a model's groups
    and plan are the same on every device. ``"meta"`` traces a meta model as it is.

    A built graph never changes: later stages read it, and learning that more slots are fixed
    (:meth:`with_blocked`) or scoring fewer units (:meth:`scoring_only`) yields a new graph.
    It describes the model as it was traced: once the model's shapes change (a plan was
    applied), :meth:`check_fresh` refuses it.
    """

    @internal_errors("building the dependency graph")
    @with_library_defaults
    @in_fresh_chunk
    @paused_gc()  # (one collection when the graph is built, not one after each stage)
    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs,
        *,
        ignore=(),
        strict=False,
        backend: str | None = None,
        progress: bool | None = None,
        trace_device="cpu",
        prune_outputs=(),
        _training: bool = False,
    ) -> None:
        self.model = model
        self.progress = as_progress(progress)
        self.example_inputs = example_inputs
        self.backend = select_backend(backend)
        self.trace_device = torch.device(trace_device)
        self.meta_results = MetaResults()
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.walk = ModelWalk.of(model)
        in_training = any(m.training for _, m in self.walk.modules)
        repeats = self.repeats = Repeats(self.walk)
        with (
            TRACE_LOCK,
            config_reads(model) as reads,
            attribute_reads(self.walk.modules) as attributes_read,
        ):
            repeats.spy = attributes_read
            self.graph = trace(
                model,
                example_inputs,
                progress=self.progress,
                walk=self.walk,
                trace_device=self.trace_device,
                meta_results=self.meta_results,
                training=_training,
                repeats=repeats,
            )
        # Fields of the model's config its forward reads (LayoutLMv3 divides its position bias
        # by sqrt(hidden_size / num_attention_heads)): the plan validated the forward with
        # their values, so they keep them. The integer attributes of modules the forward read:
        # a plan that sets none of them (nor a config field read) may need no second trace.
        self.config_reads: Reads = reads.result()
        self.attribute_reads: Reads = attributes_read.result()
        t1 = time.perf_counter()
        self.ignored = resolve_ignore(model, ignore, self.walk)
        self.free_outputs = resolve_outputs(self.graph, prune_outputs)
        norm_weights = _norm_weights_of_stream(model, self.graph, self.walk)
        # A rule (a user's, say) that emits couplings the resolution refuses makes its op
        # opaque, named in the warning; anything else malformed is a bug of the library.
        malformed: dict[int, str] = {}
        computed = non_persistent(self.walk) & self.graph.buffers.keys()
        while True:
            with paused_gc():
                self.coupling_model = build_couplings(
                    self.graph,
                    self.ignored,
                    strict,
                    norm_weights,
                    malformed,
                    computed,
                    self.free_outputs,
                    _square_recurrent_weights(self.graph, self.walk),
                    _attention_head_layouts(self.graph, self.walk),
                )
            t2 = time.perf_counter()
            try:
                self.resolution: Resolution = resolve(self.coupling_model.couplings, self.backend)
                break
            except ValueError as exc:
                node = self.coupling_model.node_of_malformed(exc)
                if node is None or node in malformed:
                    raise PruningError(f"internal error: malformed couplings ({exc})") from exc
                malformed[node] = f"its rule emitted a malformed coupling: {exc}"
        self.coupling_model, self.resolution = constants_as_inputs(
            self.coupling_model, self.resolution, self.backend
        )
        # Parameters only the training mode runs (an auxiliary head), traced in that mode
        # where the model is in it: the widths they read are kept (see _keep_for_training).
        self.training_only: dict[str, str] = {}
        self.kept_for_training: list[tuple[str, int]] = []
        self.training_traced = False
        unused = unused_parameters(self.graph)
        if in_training and unused and not _training:
            self._keep_for_training(example_inputs, unused, ignore, prune_outputs)
        t3 = time.perf_counter()
        self.timings.update(trace=t1 - t0, rules=t2 - t1, resolve=t3 - t2)
        self._index()
        self.timings["groups"] = time.perf_counter() - t3
        self.extra_blocked: frozenset[int] = frozenset()  # slots validation found fixed
        # Units whose scores the selection at hand can use (None: all); see ``scoring_only``.
        self.units_to_score: np.ndarray | None = None
        self._explain_opaque()
        self._frozen = True

    def __setattr__(self, name, value) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(
                f"a DependencyGraph does not change once built (tried to set {name!r}); "
                "with_blocked() and scoring_only() give new graphs"
            )
        object.__setattr__(self, name, value)

    def _keep_for_training(self, example_inputs, unused: list[str], ignore, outputs) -> None:
        """Trace the training mode too; block every dim of the eval graph's parameters that
        shares a leaf, there, with a dim of a parameter only that mode reads (sets
        ``training_only``: name -> why, and ``kept_for_training``: the dims kept)."""
        try:
            # (its warnings are the eval graph's again, or about what is said below)
            with TRACE_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train = DependencyGraph(
                    self.model,
                    example_inputs,
                    ignore=ignore,
                    backend=self.backend,
                    progress=False,
                    trace_device=self.trace_device,
                    prune_outputs=outputs,
                    _training=True,
                )
        except PruningError as exc:  # (batch norms refusing one sample, say): said, not fatal
            for name in unused:
                self.training_only[name] = f"the training forward failed: {exc}"
            return
        self.training_traced = True
        read_there = set(unused) - set(unused_parameters(train.graph))
        if not read_there:
            return
        known = {(op.op, op.module) for op in self.opaque_ops}
        unknown = [op for op in train.opaque_ops if (op.op, op.module) not in known]
        if unknown:  # (what the training mode reads through them cannot be followed)
            for name in read_there:
                self.training_only[name] = (
                    f"the training forward runs an op without a rule: {unknown[0].describe()}"
                )
            return
        dims_of_leaf: dict[int, list[tuple[str, int]]] = {}
        for name in self.graph.params:
            if name not in unused:
                for td in train.tensor_dims[name]:
                    for leaf in td.leaves.tolist():
                        dims_of_leaf.setdefault(leaf, []).append((name, td.dim))
        kept: set[tuple[str, int]] = set()
        for name in read_there:
            self.training_only[name] = READ_IN_TRAINING
            for td in train.tensor_dims[name]:
                for leaf in td.leaves.tolist():
                    kept.update(dims_of_leaf.get(leaf, ()))
        self.kept_for_training = sorted(kept)
        slots = self.coupling_model.value_slots
        blocked = np.asarray(
            sorted({slots[self.graph.params[n]][d] for n, d in kept}), dtype=np.int64
        )
        if blocked.size:
            couplings = with_blocks(self.coupling_model.couplings, blocked)
            self.coupling_model = dataclasses.replace(self.coupling_model, couplings=couplings)
            self.resolution = resolve(couplings, self.backend)

    def _derived(self, **changes) -> DependencyGraph:
        """A new graph sharing this one's trace, with ``changes`` (and nothing cached)."""
        new = object.__new__(DependencyGraph)
        state = dict(self.__dict__)
        for cached in (
            "groups",
            "kept_multiples",
            "output_layout",
            "dynamic_slots",
            "dynamic_atoms",
            "factor_families",
        ):
            state.pop(cached, None)
        state.update(changes)
        new.__dict__.update(state)
        return new

    # -- indexing --------------------------------------------------------------------------------
    def _index(self) -> None:
        res = self.resolution
        g = self.graph
        self.tensor_dims: dict[str, list[TensorDim]] = {}
        # (slices of arrays laid out slot by slot: one fancy index for all, not one per dim)
        offsets, slot_leaves = res.slot_leaf_offsets.tolist(), res.slot_leaves
        slot_leaf_sizes = res.leaf_sizes[slot_leaves]
        value_slots = self.coupling_model.value_slots
        for name, v in (g.params | g.buffers).items():
            shape = g.values[v].shape
            self.tensor_dims[name] = [
                TensorDim(
                    name,
                    d,
                    shape[d],
                    slot_leaves[offsets[slot] : offsets[slot + 1]],
                    slot_leaf_sizes[offsets[slot] : offsets[slot + 1]],
                )
                for d, slot in enumerate(value_slots[v])
            ]
        self.unit_kind = np.zeros(res.num_units, dtype=np.int8)  # index into KINDS
        by_kind: dict[int, list[np.ndarray]] = {}
        for slot, kind in self.coupling_model.kind_slots:
            by_kind.setdefault(KINDS.index(kind), []).append(res.leaves_of(slot))
        for code in sorted(by_kind):  # (the highest kind a unit has wins)
            units = res.units_of_leaves(np.unique(np.concatenate(by_kind[code])))
            self.unit_kind[units] = np.maximum(self.unit_kind[units], code)
        has_param = np.zeros(res.num_units, dtype=bool)
        param_leaves = [td.leaves for name in g.params for td in self.tensor_dims[name]]
        if param_leaves:
            has_param[res.units_of_leaves(np.unique(np.concatenate(param_leaves)))] = True
        self.unit_prunable = has_param & ~res.unit_blocked
        ones = np.nonzero((res.leaf_sizes == 1) & (res.leaf_unit_offsets >= 0))[0]
        self.unit_prunable[res.units_of_leaves(ones)] = False  # a dim of 1 stays
        if g.decisions:  # a size the data decides (boxes NMS kept) is no channel: none goes
            self.unit_prunable &= ~self.dynamic_atoms[1]
        # Why each resolution group's units cannot be removed as if zeroed (none: exact):
        # the reductions' texts, in their order, for the groups of their prunable units.
        self.group_reasons: dict[int, list[str]] = {}
        reductions = self.coupling_model.reductions
        if reductions:
            leaves = [res.leaves_of(r.slot) for r in reductions]
            per_reduction = [
                int(res.leaf_sizes[ls][res.leaf_unit_offsets[ls] >= 0].sum()) for ls in leaves
            ]
            units = res.units_of_leaves(np.concatenate(leaves))
            which = np.repeat(np.arange(len(reductions)), per_reduction)
            prunable = self.unit_prunable[units]
            span = res.num_groups + 1
            pairs = np.unique(which[prunable] * span + res.unit_groups[units[prunable]])
            texts: dict[int, str] = {}
            for key in pairs.tolist():
                r, gid = divmod(key, span)
                why = texts.get(r)
                if why is None:
                    why = texts[r] = reductions[r].describe()
                reasons = self.group_reasons.setdefault(gid, [])
                if why not in reasons:
                    reasons.append(why)

    def _explain_opaque(self) -> None:
        opaque = self.coupling_model.opaque
        if not opaque:
            return
        slots = self.coupling_model.value_slots
        res = self.resolution
        param_leaves: dict[int, set[str]] = {}
        for name in self.graph.params:
            for td in self.tensor_dims[name]:
                for leaf in td.leaves:
                    param_leaves.setdefault(int(leaf), set()).add(name)
        for op in opaque:
            node = self.graph.nodes[op.node]
            names: set[str] = set()
            for v in node.inputs + node.outputs:
                for s in slots[v]:
                    for leaf in res.leaves_of(s):
                        names |= param_leaves.get(int(leaf), set())
            op.blocked = sorted(names)
            warnings.warn(op.describe(), OpaqueOpWarning, stacklevel=user_stacklevel())

    @functools.cached_property
    def computed_tensors(self) -> dict[str, int]:
        """Tensors the model computes as it runs (a parametrized weight, a hook's weight): name
        -> traced value (see :mod:`depgraph_ext.graph.computed`)."""
        return computed_tensors(self.graph, self.walk)

    @functools.cached_property
    def constant_values(self) -> list[int]:
        """The values the trace met without an op making them (a tensor from outside the
        model's state: a hook's, a closure's, a memoised result)."""
        return [v.index for v in self.graph.values if v.kind == "constant"]

    @functools.cached_property
    def divisors(self) -> dict[str, float]:
        """Parameters and buffers the model divides by, with the value that makes the
        divisor one: where zero does not remove a unit (see
        :class:`depgraph_ext.graph.computed.RemovedFills`)."""
        return divisor_tensors(self.graph)

    def blockers(self, name: str | None = None, dim: int | None = None) -> list[Blocker]:
        """What keeps units whole: of dim ``dim`` of the parameter or buffer ``name`` (every
        dim when None), or of every parameter (``name`` None). Each :class:`Blocker` names
        its cause (the op and line of the model's code, an input or output of the model,
        ``ignore``, a size the code fixes ...) and the parameter dims it keeps whole."""
        res = self.resolution
        if name is None:
            dims = [td for n in self.graph.params for td in self.tensor_dims[n]]
        else:
            name = self.graph.aliases.get(name, name)
            if name not in self.tensor_dims:
                raise InvalidArgumentError(f"{name!r} is no parameter or buffer of the model")
            dims = self.tensor_dims[name]
            if dim is not None:
                if not 0 <= dim < len(dims):
                    raise InvalidArgumentError(f"{name} has {len(dims)} dims, not a dim {dim}")
                dims = [dims[dim]]
        groups: set[int] = set()
        for td in dims:
            for leaf in td.leaves.tolist():
                if res.leaf_unit_offsets[leaf] >= 0:
                    units = res.units_of_leaf(leaf)
                    groups.update(res.unit_groups[units[res.unit_blocked[units]]].tolist())
        return blockers(self, groups)

    @property
    def opaque_ops(self) -> list[OpaqueOp]:
        return self.coupling_model.opaque

    @property
    def couplings(self) -> Couplings:
        """The couplings the rules emitted (and the slots validation blocked)."""
        return self.coupling_model.couplings

    @property
    def slot_sizes(self) -> np.ndarray:
        """int64[num slots]: the traced size of every slot."""
        return self.coupling_model.couplings.slot_sizes

    @functools.cached_property
    def kept_multiples(self) -> np.ndarray:
        """Per group, the number of units it keeps must be a multiple of (1: any). A mixture
        of experts runs its experts through torch's grouped matmul by default, whose kernels
        take strides of whole 16 bytes only: every dim of an expert weight but the expert dim
        keeps a multiple of 16 bytes' worth of units (4 in float32, 8 in bfloat16), so that
        the pruned model runs under every experts implementation."""
        out = np.ones(len(self.groups), dtype=np.int64)
        experts = tuple(
            f"{name}." for name, m in self.walk.modules if name and is_experts_module(m)
        )
        if not experts:
            return out
        params = self.walk.params
        for i, group in enumerate(self.groups):
            for m in group.members:
                t = params.get(m.name)
                if t is None or not m.name.startswith(experts) or t.dim() < 2 or m.dim == 0:
                    continue
                out[i] = np.lcm(out[i], max(1, 16 // t.element_size()))
        return out

    @functools.cached_property
    def groups(self) -> list[Group]:
        """Groups with at least one prunable unit, each listing its member slices."""
        return self._build_groups()

    @internal_errors("listing the groups")
    def _build_groups(self) -> list[Group]:
        res = self.resolution
        unit_groups = res.unit_groups
        order = np.argsort(unit_groups, kind="stable")
        bounds = np.searchsorted(unit_groups[order], np.arange(res.num_groups + 1))
        prunable_groups = np.zeros(res.num_groups, dtype=bool)
        prunable_groups[unit_groups[self.unit_prunable]] = True
        kind_of = np.zeros(res.num_groups, dtype=np.int8)  # the highest kind of its units
        for code in range(1, len(KINDS)):
            kind_of[unit_groups[self.unit_kind == code]] = code
        groups: list[Group] = []
        ids = np.nonzero(prunable_groups)[0].tolist()
        listing = _MemberListing(res, self.tensor_dims)
        min_kept = self._min_kept()
        for gid in ids:
            unit_ids = order[bounds[gid] : bounds[gid + 1]]
            groups.append(
                Group(
                    len(groups),
                    unit_ids,
                    self.unit_prunable[unit_ids],
                    kind=KINDS[int(kind_of[gid])],
                    list_members=functools.partial(listing.members, gid),
                    name_members=functools.partial(listing.names, gid),
                    reasons=tuple(self.group_reasons.get(gid, ())),
                    min_kept=min_kept.get(gid, 1),
                )
            )
        return groups

    @functools.cached_property
    def factor_families(self) -> list[FactorFamily]:
        """Groups whose units meet as factors of one tensor dim: a grouped conv's channels are
        [groups, channels per group], a GroupNorm's [norm groups, channels per norm group],
        each factor an atom of its own group (see :class:`FactorFamily`)."""
        res = self.resolution
        group_of = np.full(res.num_groups, -1, dtype=np.int64)
        for i, group in enumerate(self.groups):
            group_of[res.unit_groups[group.unit_ids[0]]] = i
        parent = list(range(len(self.groups)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        # per leaf, the groups of its units (several: the pieces of a concatenation); most
        # leaves' units are all in one group (``leaf_groups``), the others are looked at
        whole = res.leaf_groups
        one = np.append(group_of, -1)[whole].tolist()  # (-1, no one group: the appended -1)
        mixed = (whole < 0).tolist()
        losing = ((res.leaf_sizes > 1) & (res.leaf_unit_offsets >= 0)).tolist()

        def groups_of(leaf: int) -> list[int]:
            if not losing[leaf]:
                return []
            if mixed[leaf]:
                return groups_of_leaves(res, [leaf], group_of)
            return [one[leaf]] if one[leaf] >= 0 else []

        products: set[tuple[int, ...]] = set()
        alone: set[int] = set()
        for dims in self.tensor_dims.values():
            for td in dims:
                factors = [groups_of(leaf) for leaf in td.leaves.tolist()]
                factors = [f for f in factors if f]
                if len(factors) == 1:
                    alone.update(factors[0])
                elif factors and all(len(f) == 1 for f in factors):  # atoms of one group each
                    found = tuple(dict.fromkeys(f[0] for f in factors))
                    products.add(found)
                    for other in found[1:]:
                        parent[root(other)] = root(found[0])
        products.update((i,) for i in alone)
        linked = {i for p in products if len(p) > 1 for i in p}
        if not linked:
            return []
        counts = set()
        for _, attr, slot in self.coupling_model.attr_slots:
            if attr in ("groups", "num_groups"):
                counts.update(groups_of_leaves(res, res.leaves_of(slot), group_of))
        families: dict[int, list[int]] = {}
        for i in sorted(linked):
            families.setdefault(root(i), []).append(i)
        out = []
        for members in families.values():
            order = sorted(
                members, key=lambda i: (i not in alone, i in counts, -self.groups[i].num_units, i)
            )
            mine = sorted(p for p in products if p[0] in members)
            out.append(FactorFamily(tuple(order), tuple(mine)))
        return out

    def _min_kept(self) -> dict[int, int]:
        """Resolution group -> the units ops need kept (a top-k's k over a one-leaf slot)."""
        res = self.resolution
        out: dict[int, int] = {}
        for slot, n in self.coupling_model.min_sizes:
            leaves = res.leaves_of(slot)
            if len(leaves) != 1 or res.leaf_unit_offsets[leaves[0]] < 0:
                continue
            units = res.units_of_leaf(int(leaves[0]))
            if units.shape[0] == 0:  # a top-k of nothing (no candidate passed a threshold)
                continue
            gid = int(res.unit_groups[units[0]])
            out[gid] = max(out.get(gid, 1), int(n))
        return out

    # -- shapes --------------------------------------------------------------------------------
    def leaf_keep_masks(self, unit_keep: np.ndarray) -> dict[int, np.ndarray]:
        """Kept elements of every leaf that can lose any (the others keep all)."""
        res = self.resolution
        masks = {}
        for leaf in np.nonzero(res.leaf_unit_offsets >= 0)[0]:
            mask = unit_keep[res.units_of_leaf(int(leaf))]
            if not mask.all():
                masks[int(leaf)] = mask
        return masks

    def planned_shapes(self, tensors) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor of a tensor plan (name -> {dim: kept}) once pruned."""
        named = self.graph.params | self.graph.buffers
        shapes = {}
        for name, dims in tensors.items():
            shape = list(self.graph.values[named[name]].shape)
            for d, kept in dims.items():
                shape[d] = int(kept.numel())
            shapes[name] = tuple(shape)
        return shapes

    def slot_kept_size(self, slot: int, masks: dict[int, np.ndarray]) -> int:
        res = self.resolution
        size = 1
        for leaf in res.leaves_of(slot):
            m = masks.get(int(leaf))
            size *= int(res.leaf_sizes[leaf]) if m is None else int(m.sum())
        return size

    def slot_kept_sizes(self, masks: dict[int, np.ndarray]) -> np.ndarray:
        """int64[num slots]: ``slot_kept_size`` of every slot at once."""
        res = self.resolution
        leaf_kept = res.leaf_sizes.copy()
        for leaf, m in masks.items():
            leaf_kept[leaf] = int(m.sum())
        offsets = res.slot_leaf_offsets
        out = np.ones(offsets.shape[0] - 1, dtype=np.int64)
        nonempty = np.nonzero(offsets[1:] > offsets[:-1])[0]
        if nonempty.size:
            out[nonempty] = np.multiply.reduceat(leaf_kept[res.slot_leaves], offsets[nonempty])
        return out

    @functools.cached_property
    def output_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every op's results as flat arrays: (results per op, rank per result, the slots of
        every result's dims in order); what a shape trace of the pruned model is compared to."""
        slots = self.coupling_model.value_slots
        outputs = [vo for node in self.graph.nodes for vo in node.outputs]
        return (
            np.array([len(n.outputs) for n in self.graph.nodes], dtype=np.int64),
            np.array([len(slots[vo]) for vo in outputs], dtype=np.int64),
            np.array([s for vo in outputs for s in slots[vo]], dtype=np.int64),
        )

    @functools.cached_property
    def dynamic_slots(self) -> np.ndarray:
        """bool[num slots]: dims whose size the data decides (the count of a ``nonzero``, of a
        boolean mask's selection, of ``unique``, of an NMS: the decisions a real trace
        recorded) and every dim made of one downstream (``dynamic_atoms``): a trace of the
        pruned model that did not replay the decisions may see them at any size."""
        res = self.resolution
        leaves, units = self.dynamic_atoms
        dynamic = np.zeros(len(res.slot_leaf_offsets) - 1, dtype=bool)
        if not leaves:
            return dynamic
        for s in range(dynamic.shape[0]):
            for leaf in res.leaves_of(s):
                leaf = int(leaf)
                if leaf in leaves or (
                    res.leaf_unit_offsets[leaf] >= 0 and units[res.units_of_leaf(leaf)].any()
                ):
                    dynamic[s] = True
                    break
        return dynamic

    @functools.cached_property
    def dynamic_atoms(self) -> tuple[set[int], np.ndarray]:
        """The leaves (atoms) whose size the data decides, and a bool per unit: whether it is
        an element of one. Seeded by the recorded decisions (the count of a ``nonzero``, of a
        mask's selection, every result of ``unique`` or an NMS) and carried forward op by op:
        through what each op's rule relates (a dim equal to a dynamic one, a slice of one, a
        concatenation with one, a reshape of one), and, where an op's rule relates a dynamic
        input dim to none of its results (a top-k's k of the candidates left, a sort), to
        its results' dims that nothing relates (their sizes came from that data)."""
        g, res = self.graph, self.resolution
        slots = self.coupling_model.value_slots
        leaves: set[int] = set()
        for decision in g.decisions:
            if decision.node is None:
                continue  # a Python number (.item()): the sizes it makes are replayed
            node = g.nodes[decision.node]
            for s in _decided_dims(g, node, slots):
                leaves.update(int(x) for x in res.leaves_of(s))
        units = np.zeros(res.num_units, dtype=bool)
        if not leaves:
            return leaves, units
        self._carry_dynamic(leaves)
        for leaf in leaves:
            if res.leaf_unit_offsets[leaf] >= 0:
                units[res.units_of_leaf(leaf)] = True
        return leaves, units

    def _carry_dynamic(self, leaves: set[int]) -> None:
        """Add to ``leaves`` what the ops after each dynamic dim make of it (see
        ``dynamic_atoms``), in the order the ops ran."""
        g, res, cm = self.graph, self.resolution, self.coupling_model
        slots = cm.value_slots
        c = cm.couplings
        kinds, offsets, data = c.kinds.tolist(), c.offsets.tolist(), c.data.tolist()
        spans = {node: (start, end) for node, start, end in cm.rule_spans}
        sizes = c.slot_sizes

        def dynamic(s: int) -> bool:
            return any(int(x) in leaves for x in res.leaves_of(s))

        def mark(s: int) -> None:
            leaves.update(int(x) for x in res.leaves_of(s))

        for node in g.nodes:
            ins = {s for v in node.inputs for s in slots[v]}
            if not any(dynamic(s) for s in ins):
                continue
            outs = {s for v in node.outputs for s in slots[v]}
            related: set[int] = set()  # slots some coupling of this op relates to another
            start, end = spans.get(node.index, (0, 0))
            for _ in range(2):  # twice: through slots a rule made between inputs and outputs
                for k in range(start, end):
                    ops, kind = data[offsets[k] : offsets[k + 1]], kinds[k]
                    if kind == CouplingKind.EQUAL:
                        pair = ops
                    elif kind == CouplingKind.RESHAPE:
                        n = ops[0]
                        ins_k, outs_k = ops[1 : 1 + n], ops[2 + n :]
                        pair = ins_k + outs_k
                        if any(dynamic(s) for s in ins_k) and not any(dynamic(s) for s in outs_k):
                            for s in outs_k:  # a reshape the atoms could not follow
                                mark(s)
                    elif kind in (CouplingKind.SLICE, CouplingKind.CAT_PIECE):
                        pair = ops[:2]
                        whole, piece = ops[0], ops[1]
                        if kind == CouplingKind.SLICE and dynamic(whole) and not dynamic(piece):
                            mark(piece)  # (an unaligned slice is no atom of the whole)
                        elif kind == CouplingKind.CAT_PIECE and dynamic(piece):
                            if not dynamic(whole):
                                mark(whole)
                    else:
                        continue
                    related.update(pair)
                    # (two equal dims are one atom, unless their factorisations conflict)
                    if kind == CouplingKind.EQUAL and dynamic(ops[0]) != dynamic(ops[1]):
                        for s in ops:
                            mark(s)
            if any(dynamic(s) and s not in related for s in ins):
                # sizes that came from the data some other way; a result's dim of an input's
                # fixed size is that input's (index_add's result is its first input's shape),
                # and a dim of 1 is a place, not a count
                fixed = {int(sizes[s]) for s in ins if not dynamic(s)} | {1}
                for s in outs - related:
                    if int(sizes[s]) not in fixed:
                        mark(s)

    def trace_pruned(
        self, shapes: dict[str, tuple], stage: str = "check the plan", guide=None, stop=None
    ):
        """A :class:`~depgraph_ext.graph.trace.ShapeTrace` of the model with the given
        parameter/buffer shapes (no weight is touched), traced as this graph was, so that its
        ops line up with the graph's. ``guide``: stands for ops that fail and keeps results on
        a plan, so that the trace finds every op that fails (see
        :func:`~depgraph_ext.graph.trace.trace_as`); ``stop``: where it may stop (a
        :class:`~depgraph_ext.graph.trace.TraceStop`)."""
        replayed = self.graph.replayed_modules
        shape_replays = None
        if replayed:  # (a meta trace replays them again: its spy sees what they read)
            shape_replays = ShapeReplays(
                self.repeats, replayed, lambda: attribute_reads(self.walk.modules)
            )
        return trace(
            self.model,
            self.example_inputs,
            shapes=shapes,
            shapes_only=True,
            allow_meta=self.graph.mode != "fake",
            walk=self.walk,
            trace_device=self.trace_device,
            meta_results=self.meta_results,
            progress=self.progress,
            stage=stage,
            real_decides=self.graph.mode == "real",
            guide=guide,
            replay=self.graph.decisions,
            real_over_budget=self.graph.real_over_budget,
            shape_replays=shape_replays,
            stop=stop,
        )

    # -- derived graphs ------------------------------------------------------------------------
    def scoring_only(self, groups: np.ndarray) -> DependencyGraph:
        """This graph, with importances scoring only the units of ``groups`` (a bool per group
        of ``self.groups``); the others come out NaN (not scored). The pruner leaves out the
        groups its selection cannot shrink (a ratio of 0, such as ``ratios={"hidden": 0}``):
        on an LLM that halves the bytes read for scoring."""
        mask = np.zeros(self.resolution.num_units, dtype=bool)
        for group, wanted in zip(self.groups, groups):
            if wanted:
                mask[group.unit_ids] = True
        derived = self._derived(units_to_score=mask)
        derived.__dict__["groups"] = self.groups  # the same resolution: the same groups
        return derived

    def with_blocked(self, slots) -> DependencyGraph:
        """A new graph in which ``slots`` (sizes validation found fixed) are blocked too: the
        couplings gain a BLOCK each, and the groups are resolved again."""
        slots = np.asarray(sorted(set(int(s) for s in slots)), dtype=np.int64)
        couplings = with_blocks(self.coupling_model.couplings, slots)
        t = time.perf_counter()
        derived = self._derived(
            coupling_model=dataclasses.replace(self.coupling_model, couplings=couplings),
            resolution=resolve(couplings, self.backend),
            extra_blocked=self.extra_blocked | frozenset(slots.tolist()),
            timings=dict(self.timings),
        )
        object.__setattr__(derived, "_frozen", False)
        derived._index()
        derived.timings["resolve"] += time.perf_counter() - t
        object.__setattr__(derived, "_frozen", True)
        return derived

    # -- freshness ----------------------------------------------------------------------------
    def is_fresh(self) -> bool:
        """Whether the model still has the shapes this graph traced (no plan applied since)."""
        g = self.graph
        for names, tensors in ((g.params, self.walk.params), (g.buffers, self.walk.buffers)):
            for name, v in names.items():
                if tuple(tensors[name].shape) != g.values[v].shape:
                    return False
        return True

    def check_fresh(self) -> None:
        if not self.is_fresh():
            raise PruningError(
                "this DependencyGraph was built before the model was pruned; build a new one"
            )

    # -- rendering -----------------------------------------------------------------------------
    def to_dot(self, max_groups: int | None = None) -> str:
        """The groups as Graphviz DOT: one cluster per group (kind, units, prunable units), one
        node per member slice (tensor, dim, indices and indices per unit)."""

        def quote(text: str) -> str:
            return '"' + text.replace('"', '\\"') + '"'  # "\n" in labels is a line break

        lines = [
            "digraph dependency_graph {",
            "  rankdir=LR;",
            '  node [shape=box, fontname="monospace", fontsize=10];',
        ]
        for g in self.groups[:max_groups]:
            lines.append(f"  subgraph cluster_{g.index} {{")
            label = f"group {g.index}: {g.kind}, {g.num_units} units, {g.num_prunable} prunable"
            lines.append(f"    label={quote(label)};")
            ids = []
            for i, m in enumerate(g.members):
                node = f"g{g.index}_{i}"
                ids.append(node)
                text = f"{m.name}[{m.dim}]\\n{m.indices.numel()} indices, {m.unit_size}/unit"
                lines.append(f"    {node} [label={quote(text)}];")
            lines.extend(f"    {a} -> {b} [arrowhead=none];" for a, b in zip(ids, ids[1:]))
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def render(self, path, fmt: str | None = None, max_groups: int | None = None):
        """Write the DOT of ``to_dot`` rendered by Graphviz's ``dot`` (svg, png, pdf ...)."""
        import shutil
        import subprocess
        from pathlib import Path

        path = Path(path)
        fmt = fmt or path.suffix.lstrip(".") or "svg"
        dot = shutil.which("dot")
        if dot is None:
            raise PruningError(
                "rendering needs Graphviz's `dot` (apt-get install graphviz); "
                "to_dot() returns the graph as text without it"
            )
        subprocess.run(
            [dot, f"-T{fmt}", "-o", str(path)], input=self.to_dot(max_groups), text=True, check=True
        )
        return path


def with_blocks(c: Couplings, slots: np.ndarray) -> Couplings:
    """``c`` with a BLOCK of each of ``slots`` added."""
    return Couplings(
        slot_sizes=c.slot_sizes,
        kinds=np.concatenate([c.kinds, np.full(slots.shape[0], CouplingKind.BLOCK, np.int8)]),
        offsets=np.concatenate([c.offsets, c.offsets[-1] + np.arange(1, slots.shape[0] + 1)]),
        data=np.concatenate([c.data, slots]),
        query_slots=c.query_slots,
    )


def _slot_groups(res: Resolution, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slot, resolution group) pairs: the groups of the units of each slot's leaves (a
    leaf's first and last unit: a leaf's units are of one group but where a slice cuts it)."""
    offsets = res.slot_leaf_offsets
    counts = offsets[slots + 1] - offsets[slots]
    total = int(counts.sum())
    if not total:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.repeat(offsets[slots] - (np.cumsum(counts) - counts), counts)
    leaves = res.slot_leaves[starts + np.arange(total)]
    owners = np.repeat(slots, counts)
    has = res.leaf_unit_offsets[leaves] >= 0
    leaves, owners = leaves[has], owners[has]
    first = res.leaf_unit_offsets[leaves]
    last = first + res.leaf_sizes[leaves] - 1
    groups = res.unit_groups[res.elem_units[np.concatenate([first, last])]]
    return np.concatenate([owners, owners]), groups


def constants_as_inputs(model: CouplingModel, res: Resolution, backend: str):
    """Dims whose values come only from constants and buffers the model computes (Swinv2's
    table of relative coordinates fed to its position-bias MLP, a table of frequencies) are
    kept like the model's inputs: a group none of whose activations comes from a parameter or
    an input, but that holds such a dim, is blocked (through those dims), and the groups are
    resolved again. (Removing a coordinate is the same as zeroing the weights that read it,
    so the oracle could not object; no one wants a position bias that sees x and not y.)"""
    if model.constant_slots.size == 0:
        return model, res
    owners, groups = _slot_groups(res, model.constant_slots)
    _, varying = _slot_groups(res, model.varying_slots)
    live = np.zeros(res.num_groups, dtype=bool)  # groups with a unit not blocked yet
    live[res.unit_groups[~res.unit_blocked]] = True
    inputlike = live.copy()
    inputlike[varying] = False
    slots = np.unique(owners[inputlike[groups]])
    if slots.size == 0:
        return model, res
    couplings = with_blocks(model.couplings, slots)
    return dataclasses.replace(model, couplings=couplings), resolve(couplings, backend)


class Reads(frozenset):
    """Names a forward read; ``known``: whether every read was seen (a class that refuses a
    spy, or a read of the whole object, leaves it False)."""

    known: bool = True

    @classmethod
    def of(cls, names, known: bool) -> Reads:
        reads = cls(names)
        reads.known = known
        return reads


class _Recording:
    """What a spy records for the duration: names read, and whether that is every read."""

    def __init__(self) -> None:
        self.names: set = set()
        self.known = True

    def result(self) -> Reads:
        return Reads.of(self.names, self.known)


# Reads of a config that see every field at once.
_WHOLE_CONFIG_READS = frozenset(
    {"__dict__", "to_dict", "to_diff_dict", "to_json_string", "__getstate__", "__reduce_ex__"}
)


def config_scopes(config) -> dict[int, tuple[str, object]]:
    """id of a transformers ``config`` and of every sub-config it holds, at any depth -> (the
    prefix of its fields' paths, the config): ``""`` for the root, ``"text_config."`` for a
    vision-language model's language model's (whose modules hold, and read, that sub-config).
    Empty for anything else."""
    transformers = sys.modules.get("transformers")
    out: dict[int, tuple[str, object]] = {}
    if transformers is None or not isinstance(config, transformers.PretrainedConfig):
        return out

    def visit(c, prefix: str) -> None:
        if id(c) in out:
            return
        out[id(c)] = (prefix, c)
        for name, value in vars(c).items():
            if isinstance(value, transformers.PretrainedConfig) and not name.startswith("_"):
                visit(value, f"{prefix}{name}.")

    visit(config, "")
    return out


def module_prefixes(model, scopes) -> Callable[[str], str]:
    """A function of a module's name giving the prefix (see :func:`config_scopes`) of the
    config its code reads: the one held by itself or its nearest ancestor holding one."""
    if len(scopes) <= 1:  # (one config: every module reads the root's, no walk needed)
        return lambda module: ""
    held = {
        name: scopes[id(c)][0]
        for name, m in model.named_modules()
        if id(c := m.__dict__.get("config")) in scopes
    }

    def prefix_of(module: str) -> str:
        while module not in held and module:
            module = module.rpartition(".")[0]
        return held.get(module, "")

    return prefix_of


@contextlib.contextmanager
def config_reads(model: torch.nn.Module):
    """The names of the fields of ``model.config`` read for the duration (``.result()`` of
    what it yields; attribute-map aliases under their own and their field's name; a
    sub-config's fields under their dotted path, ``text_config.hidden_size``)."""
    recording = _Recording()
    reads = recording.names
    config = getattr(model, "config", None)
    if config is None or type(config).__module__ == "builtins":
        yield recording
        return
    if isinstance(config, dict):  # (diffusers' FrozenDict: its items are read unseen too)
        recording.known = False
    held = config_scopes(config) or {id(config): ("", config)}  # (any object's too)
    scopes = {i: prefix for i, (prefix, _) in held.items()}
    aliases_of: dict[int, dict] = {}
    for i, (_, c) in held.items():
        aliases = getattr(c, "attribute_map", None)  # (transformers': alias -> field)
        aliases_of[i] = aliases if isinstance(aliases, dict) else {}

    live = [True]  # emptied when the recording ends: later uses of its SizeInts read nothing

    def is_live() -> bool:
        return bool(live)

    def spy_of(original):
        def spy(self, key):
            prefix = scopes.get(id(self))
            if prefix is None:
                return original(self, key)
            reads.add(prefix + key)
            if key in _WHOLE_CONFIG_READS:
                recording.known = False
            mapped = aliases_of[id(self)].get(key)
            if isinstance(mapped, str):
                reads.add(prefix + mapped)
            value = original(self, key)
            if type(value) is int and watching():  # (sizes computed from it can be computed again)
                name = prefix + (mapped if isinstance(mapped, str) else key)
                return SizeInt(value, ConfigLeaf(name, value, is_live))
            return value

        return spy

    patched: list[tuple[type, object, bool]] = []  # (class, its own __getattribute__, had one)
    try:
        for cls in dict.fromkeys(type(c) for _, c in held.values()):
            had = "__getattribute__" in cls.__dict__
            original = cls.__getattribute__
            cls.__getattribute__ = spy_of(original)
            patched.append((cls, original, had))
    except TypeError:  # a class that refuses (a C type): nothing is recorded
        recording.known = False
    try:
        yield recording
    finally:
        live.clear()
        for cls, original, had in reversed(patched):
            if had:
                cls.__getattribute__ = original
            else:
                del cls.__getattribute__


@contextlib.contextmanager
def attribute_reads(modules: list[tuple[str, torch.nn.Module]]):
    """(module name, attribute) of every public attribute of ``modules`` that is no method
    read for the duration (``.result()`` of what it yields): a spy on the modules' classes
    (patched, so every instance's reads are seen; only these modules' are kept). (Code that
    reads attributes through ``vars(module)`` is not seen.)"""
    recording = _Recording()
    names: dict[int, list[str]] = {}
    classes = []
    for name, m in modules:
        names.setdefault(id(m), []).append(name)
        if type(m) not in classes:
            classes.append(type(m))
    # Each class's own lookup, taken before any is patched (a subclass would find its base's
    # spy otherwise).
    originals = [(cls, "__getattribute__" in cls.__dict__, cls.__getattribute__) for cls in classes]
    # (graph/repeats.py: a template's call logs every read with its value, and its reads; a
    # replay compares a sibling's attributes quietly)
    recording.names = reads = ReadLog()
    recording.log, recording.quiet = None, False
    patched = []

    live = [True]  # emptied when the recording ends: later uses of its SizeInts read nothing

    def is_live() -> bool:
        return bool(live)

    def spy_of(original):
        def spy(self, key):
            value = original(self, key)
            if recording.quiet:
                return value
            if recording.log is not None:
                recording.log.append((self, key, value))
            if key[0] != "_" and not callable(value):
                if watching():  # followed: read when the code uses it otherwise than in sizes
                    if type(value) is int:
                        return SizeInt(value, AttributeLeaf(reads, id(self), key, value, is_live))
                    if type(value) is tuple and value and all(type(n) is int for n in value):
                        return tuple(
                            SizeInt(n, AttributeLeaf(reads, id(self), key, n, is_live, i))
                            for i, n in enumerate(value)
                        )
                reads.add((id(self), key))
            return value

        return spy

    try:
        for cls, had, original in originals:
            try:
                cls.__getattribute__ = spy_of(original)
            except TypeError:  # a class that refuses a spy
                recording.known = False
                continue
            patched.append((cls, had, original))
        yield recording
    finally:
        live.clear()
        for cls, had, original in reversed(patched):
            if had:
                cls.__getattribute__ = original
            else:
                del cls.__getattribute__
        recording.names = {(name, k) for i, k in reads for name in names.get(i, ())}


def resolve_ignore(model: torch.nn.Module, ignore, walk: ModelWalk | None = None) -> set[str]:
    """Canonical parameter/buffer names covered by ``ignore`` (modules, names, or tensors)."""
    if ignore is None:
        return set()
    if isinstance(ignore, (str, torch.nn.Module, torch.Tensor)):
        ignore = [ignore]
    walk = walk or ModelWalk.of(model)
    tensors, aliases = walk.params | walk.buffers, walk.aliases
    by_id = {id(t): n for n, t in tensors.items()}
    modules = dict(walk.modules)
    module_names = {id(m): n for n, m in modules.items()}
    out: set[str] = set()
    for item in ignore:
        if isinstance(item, torch.nn.Module):
            if id(item) not in module_names:
                raise InvalidArgumentError(
                    f"ignore: the module {type(item).__name__} is not part of the model"
                )
            prefix = module_names[id(item)]
            out |= {by_id[id(t)] for _, t in _module_tensors(item)}
            if not prefix and not out:
                continue
        elif isinstance(item, torch.Tensor):
            if id(item) not in by_id:
                raise InvalidArgumentError(
                    "ignore: a tensor given is not a parameter or buffer of the model"
                )
            out.add(by_id[id(item)])
        elif isinstance(item, str):
            if item in tensors or item in aliases:
                out.add(aliases.get(item, item))
            elif item in modules:
                out |= {by_id[id(t)] for _, t in _module_tensors(modules[item])}
            else:
                raise InvalidArgumentError(
                    f"ignore: {item!r} names no module, parameter or buffer of the model"
                )
        else:
            raise InvalidArgumentError(
                f"ignore: expected module, name or tensor, not {type(item).__name__}"
            )
    return out


def resolve_outputs(graph: OpGraph, prune_outputs) -> tuple[int, ...]:
    """Positions in ``graph.outputs`` (the model's tensor outputs, flattened in order) named by
    ``prune_outputs``: positions, or names (a key of what the model returned, ``"logits"``, or
    a whole key path, ``"[1]['a']"``; a name covers every tensor under it)."""
    if prune_outputs is None:
        return ()
    if isinstance(prune_outputs, (str, bytes)) or not isinstance(
        prune_outputs, (list, tuple, set, frozenset)
    ):
        raise InvalidArgumentError(
            f"prune_outputs must be a list of output positions or names, not {prune_outputs!r}"
        )
    paths = graph.output_paths
    out: list[int] = []
    for item in prune_outputs:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(paths):
            out.append(item)
            continue
        found = (
            [i for i, p in enumerate(paths) if p == item or _top_key(p) == item]
            if isinstance(item, str)
            else []
        )
        if not found:
            raise InvalidArgumentError(
                f"prune_outputs: {item!r} names no output of the model; its tensor outputs are "
                f"positions 0 to {len(paths) - 1}: {', '.join(paths[:12])}"
                + (" ..." if len(paths) > 12 else "")
            )
        out += found
    return tuple(sorted(set(out)))


def _top_key(path: str) -> str | None:
    """The first key of a key path (``['logits'][0]`` -> ``logits``; ``.logits`` too)."""
    match = re.match(r"^\['([^']*)'\]|^\.(\w+)", path)
    return (match.group(1) or match.group(2)) if match else None


def _module_tensors(module: torch.nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def _square_recurrent_weights(graph: OpGraph, walk: ModelWalk) -> list[tuple[str, int, int]]:
    """An ``nn.RNNCell``'s ``weight_hh`` is square by its C++ check, which no traced op shows:
    stepped once from no state, its rows (the new state) and columns (the zero state it
    multiplies) would otherwise prune apart, and the pruned cell would not run. (LSTM and GRU
    cells tie them through their gates' element-wise ops.)"""
    out = []
    for name, m in walk.modules:
        w = f"{name}.weight_hh" if name else "weight_hh"
        if isinstance(m, torch.nn.RNNCell) and w in graph.params:
            out.append((w, 0, 1))
    return out


def _attention_head_layouts(graph: OpGraph, walk: ModelWalk) -> list[tuple[int, list]]:
    """The layouts (see ``build_couplings``' ``head_layouts``) of every nn.MultiheadAttention
    with several heads that ran its Python path (odd head counts, traces of transformer
    layers, separate key/value widths; its fused op's rule says as much itself): the query
    projection's rows and columns, the output projection's, their biases, ``bias_k`` and
    ``bias_v``; the key and value projections' rows (their columns are the key's and the
    value's own widths)."""
    attention = [
        (name, m) for name, m in walk.modules if isinstance(m, torch.nn.MultiheadAttention)
    ]
    if not attention:
        return []
    fused = {n.module for n in graph.nodes if n.packet == "aten._native_multi_head_attention"}
    called = {module for module, _ in graph.module_calls}
    out = []
    for name, m in attention:
        if m.num_heads < 2 or name in fused or name not in called:
            continue
        if m.embed_dim % m.num_heads:
            continue
        prefix = f"{name}." if name else ""

        def param(local: str, prefix: str = prefix) -> str | None:
            full = graph.aliases.get(prefix + local, prefix + local)
            return full if full in graph.params else None

        dims = []
        if m._qkv_same_embed_dim:
            if param("in_proj_weight"):
                dims += [(param("in_proj_weight"), 0, 3), (param("in_proj_weight"), 1, 1)]
        else:
            for local in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if param(local):
                    dims.append((param(local), 0, 1))
            if param("q_proj_weight"):
                dims.append((param("q_proj_weight"), 1, 1))
        if param("in_proj_bias"):
            dims.append((param("in_proj_bias"), 0, 3))
        for local in ("out_proj.weight", "out_proj.bias"):
            if param(local):
                dims.append((param(local), 0, 1))
        if param("out_proj.weight"):
            dims.append((param("out_proj.weight"), 1, 1))
        for local in ("bias_k", "bias_v"):
            if param(local):
                dims.append((param(local), 2, 1))
        if dims:
            out.append((m.num_heads, dims))
    return out


def _norm_weights_of_stream(model: torch.nn.Module, graph: OpGraph, walk: ModelWalk) -> list[str]:
    """Weights of RMSNorm-style modules (built from primitive ops, so no op rule sees a norm)
    whose size is the model's hidden size: their dim is the residual stream."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    out = []
    for name, m in walk.modules:
        if type(m).__name__.endswith("RMSNorm"):
            w = f"{name}.weight" if name else "weight"
            if (
                w in graph.params
                and len(graph.values[graph.params[w]].shape) == 1
                and (hidden is None or graph.values[graph.params[w]].shape[0] == hidden)
            ):
                out.append(w)
    return out


def groups_of_leaves(res: Resolution, leaves, group_of: np.ndarray) -> list[int]:
    """The groups (indices into a graph's ``groups``, via ``group_of``) of the prunable units
    of ``leaves`` (leaves of size 1 never lose their element), in order, each once."""
    found: list[int] = []
    for leaf in leaves:
        if res.leaf_sizes[leaf] > 1 and res.leaf_unit_offsets[leaf] >= 0:
            units = res.units_of_leaf(int(leaf))
            found += np.unique(group_of[res.unit_groups[units]]).tolist()
    return [i for i in dict.fromkeys(found) if i >= 0]


class _MemberListing:
    """The members of one resolution's groups (see :class:`Group`): the tensor dims are
    scanned once, for the first group asked for; a group's :class:`Member` objects are made
    when that group is asked for (describing the function-changing groups of a prune needs
    theirs only: making every group's cost a 128-layer Llama's prune 30 ms)."""

    def __init__(self, res: Resolution, tensor_dims: dict[str, list[TensorDim]]) -> None:
        self.res = res
        self.tensor_dims = tensor_dims
        self.found: dict[int, list[tuple]] | None = None  # group id -> (name, dim, sel, units)
        self.local: np.ndarray | None = None  # each unit's index in its group

    def members(self, gid: int) -> list[Member]:
        if self.found is None:
            self._scan()
        res, local = self.res, self.local
        out = []
        for name, dim, sel, units in self.found.get(gid, []):
            if (
                sel is None
            ):  # every index of the dim, along one leaf: ``units`` = (dim, leaf's place)
                td, pos = units
                units = res.units_of_leaf(int(td.leaves[pos]))
                if td.leaves.shape[0] > 1:
                    units = units[td.digits(pos)]
                sel = np.arange(units.shape[0])
            out.append(Member(name, dim, torch.from_numpy(sel), torch.from_numpy(local[units])))
        return out

    def names(self, gid: int) -> list[tuple[str, int]]:
        """(tensor, dim) of each member of group ``gid``, no :class:`Member` made."""
        if self.found is None:
            self._scan()
        return [(name, dim) for name, dim, _, _ in self.found.get(gid, [])]

    def _scan(self) -> None:
        res = self.res
        unit_groups, offsets = res.unit_groups, res.leaf_unit_offsets
        whole = res.leaf_groups
        found: dict[int, list[tuple]] = {}
        for name, dims in self.tensor_dims.items():
            for td in dims:
                alone = td.leaves.shape[0] == 1
                for pos, leaf in enumerate(td.leaves.tolist()):
                    if offsets[leaf] < 0:
                        continue
                    if (gid := whole[leaf]) >= 0:  # the common case: made when asked for
                        found.setdefault(int(gid), []).append((name, td.dim, None, (td, pos)))
                        continue
                    units = res.units_of_leaf(leaf)
                    if not alone:
                        units = units[td.digits(pos)]
                    if units.shape[0] == 0:  # (a dim of size 0: no unit to list)
                        continue
                    gids = unit_groups[units]
                    for gid in np.unique(gids):
                        sel = np.nonzero(gids == gid)[0]
                        found.setdefault(int(gid), []).append((name, td.dim, sel, units[sel]))
        order = np.argsort(unit_groups, kind="stable")
        bounds = np.searchsorted(unit_groups[order], np.arange(res.num_groups + 1))
        local = np.empty(res.num_units, dtype=np.int64)
        local[order] = np.arange(res.num_units) - bounds[unit_groups[order]]
        self.found, self.local = found, local


READ_IN_TRAINING = "read by the training mode only"


def unused_parameters(graph: OpGraph) -> list[str]:
    """The parameters (canonical names) no traced op read, but those without a width to
    lose (a scalar, an empty one kept to find the model's device)."""
    read: set[int] = set()
    for node in graph.nodes:
        read.update(node.inputs)
    return [
        name
        for name, v in graph.params.items()
        if v not in read and graph.values[v].shape and 0 not in graph.values[v].shape
    ]
