"""Verification: a plan proves itself on the example inputs before the model changes.

The model pruned by the plan's exact groups must compute what the original computes with
those groups' removed units zeroed (the scatter-back oracle). Each forward sees the zeroed or
the pruned version of a planned tensor only while a module holding it runs (built in reused
scratch memory), where the trace shows every read of it inside such a call; otherwise, and to
confirm a failure, the model's own tensors are changed for the forward (the removed slices
saved, zeroed and put back). When the check fails, the groups at fault are found by halving
the set of groups and checking again.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import ops
from ..errors import ConfigMismatchWarning, PlanValidationError, VerificationError
from ..graph.computed import RemovedFills
from ..graph.dependency import DependencyGraph, Group
from ..graph.trace import (
    Ref,
    SavedParameters,
    eager_forwards,
    fresh_copies,
    global_module_hooks,
    normalize_inputs,
    output_tensors,
    unfused_transformer_layers,
    written_tensors,
)
from .apply import gather, gather_all
from .attributes import temporary_attributes
from .configs import config_of, set_field, temporary_config
from .plan import Plan
from .validate import checked_plan

# Largest relative difference of the outputs (to their largest magnitude) taken as rounding,
# by the outputs' dtype: a pruned matmul adds its terms in another order.
TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 5e-2}
_MAX_CHECKS = 24  # checks spent finding the groups at fault (each runs two forward passes)


def verify_plan(dg: DependencyGraph, plan: Plan) -> None:
    """Raise VerificationError unless the plan's exact groups prune exactly on the example
    inputs; function-changing groups are left out of the check. Changes nothing."""
    suspects = _pruned_exact_groups(dg, plan.keep)
    if not suspects:
        return
    if any(t.device.type == "meta" for t in dg.walk.params.values()):
        raise VerificationError(
            "verify=True runs the model: its weights must be real, and some are on the meta device"
        )
    try:
        checked = _plan_of(dg, _keep_only(dg, plan.keep, suspects), plan)
    except PlanValidationError as exc:
        raise VerificationError(
            "verify=True checks a plan's exact groups on their own (its function-changing "
            "groups left whole, since pruning them changes the outputs), and this model does "
            f"not run with only its exact groups pruned: {exc}. Nothing was changed; with "
            "exact_only=True every pruned group is exact and the plan is checked whole",
            [g.describe() for g in suspects],
        ) from exc
    tolerance = _tolerance(dg, checked)
    difference = _difference(dg, checked, tolerance)
    if difference <= tolerance:
        return
    faulty, checks = _culprits(dg, plan, suspects, [0])
    names = [g.describe() for g in faulty] or [g.describe() for g in suspects]
    raise VerificationError(
        f"the pruned model does not compute what the original computes with the removed units "
        f"zeroed (largest relative difference {difference:.3g}), though these groups claim to "
        f"be exact: "
        + "; ".join(names[:4])
        + (" ..." if len(names) > 4 else "")
        + ". Nothing was changed; please report this model (exact_only=True with "
        "ignore=[...] on the groups' layers avoids them)",
        names,
        difference,
    )


def _pruned_exact_groups(dg: DependencyGraph, keep: np.ndarray) -> list[Group]:
    return [g for g in dg.groups if g.exact and not keep[g.unit_ids].all()]


def _keep_only(dg: DependencyGraph, keep: np.ndarray, groups: list[Group]) -> np.ndarray:
    """The keep mask with only ``groups``' units removed."""
    partial = np.ones_like(keep)
    for g in groups:
        partial[g.unit_ids] = keep[g.unit_ids]
    return partial


def _plan_of(dg: DependencyGraph, keep: np.ndarray, plan: Plan) -> Plan:
    """The validated plan of ``keep``: the prune's own ``plan`` where that is its keep mask
    (with the config fields and attributes the prune sets), else one checked anew
    (PlanValidationError when its shapes do not run)."""
    if np.array_equal(keep, plan.keep):
        return plan
    with warnings.catch_warnings():
        # what the config cannot express was reported for the prune's own plan
        warnings.simplefilter("ignore", ConfigMismatchWarning)
        return checked_plan(dg, keep)


def _culprits(dg, plan: Plan, groups: list[Group], spent: list[int]) -> tuple[list[Group], int]:
    """The groups whose removal alone changes the outputs, by halving (at most _MAX_CHECKS);
    a part that does not run pruned on its own stays suspect whole."""
    if len(groups) == 1:
        return groups, spent[0]
    half = len(groups) // 2
    found: list[Group] = []
    for part in (groups[:half], groups[half:]):
        if spent[0] >= _MAX_CHECKS:
            break
        spent[0] += 1
        try:
            checked = _plan_of(dg, _keep_only(dg, plan.keep, part), plan)
        except PlanValidationError:
            found += part
            continue
        tolerance = _tolerance(dg, checked)
        if _difference(dg, checked, tolerance) > tolerance:
            found += _culprits(dg, plan, part, spent)[0]
    return found, spent[0]


def _tolerance(dg: DependencyGraph, plan: Plan) -> float:
    """The rounding of the least precise floating dtype among the weights and the values the
    trace computed from a planned tensor (a float64 model whose code computes in float32 on
    the way, as an RMSNorm that upcasts to float32 does, rounds as float32 does there)."""
    dtypes = {t.dtype for t in dg.walk.params.values() if t.is_floating_point()}
    graph = getattr(dg, "graph", None)
    if graph is not None:
        named = graph.params | graph.buffers
        reached = {named[n] for n in plan.tensors if n in named}
        for node in graph.nodes:
            if any(v in reached for v in node.inputs):
                reached.update(node.outputs)
        dtypes |= {graph.values[v].dtype for v in reached}
    return max((TOLERANCE.get(d, 1e-3) for d in dtypes if d.is_floating_point), default=1e-3)


def _difference(dg: DependencyGraph, plan: Plan, tolerance: float) -> float:
    """Largest relative difference between the model pruned by ``plan`` (validated) and the
    original with its removed units zeroed, over every output on the example inputs; a
    difference within ``tolerance`` may come from the per-call check alone."""
    holders = _holders_of_every_read(dg, plan)
    if holders is not None:
        # The cheap way first; only a pass is taken from it (a failure, or a forward that
        # raises, is decided by the check below, which changes the model's own tensors).
        try:
            difference = _difference_per_call(dg, plan, holders)
        except Exception:  # noqa: BLE001 - the check below decides, and says why
            difference = float("inf")
        if difference <= tolerance:
            return difference
    return _difference_in_memory(dg, plan)


def _difference_in_memory(dg: DependencyGraph, plan: Plan) -> float:
    """:func:`_difference` with the model's own tensors changed for each forward (the removed
    slices saved, zeroed and written back; the pruned ones swapped in)."""
    if _compacts_in_place(dg, plan):
        # No copy of the kept weights: after the zeroed forward, the kept slices are moved to
        # the front of each tensor's own memory for the pruned one, and back after it.
        with _zeroed(dg, plan):
            zeroed = kept_outputs(
                _outputs(dg.model, dg.example_inputs, _writes_parameters(dg)), plan.outputs
            )
            with _pruned(dg, plan, in_place=True):
                pruned = _outputs(dg.model, dg.example_inputs, _writes_parameters(dg))
        return relative_difference(pruned, zeroed)
    with _pruned(dg, plan):
        pruned = _outputs(dg.model, dg.example_inputs, _writes_parameters(dg))
    with _zeroed(dg, plan):
        zeroed = kept_outputs(
            _outputs(dg.model, dg.example_inputs, _writes_parameters(dg)), plan.outputs
        )
    return relative_difference(pruned, zeroed)


def _holders_of_every_read(dg: DependencyGraph, plan: Plan) -> dict[int, list[str]] | None:
    """id(module) -> the planned tensors that module holds itself, when every op of the
    model's trace that reads a planned tensor runs inside a call of a module holding it (so
    swapping a tensor's data for the duration of its holders' calls changes every read of it);
    None when some read runs elsewhere (a parameter used by a parent's code)."""
    graph = getattr(dg, "graph", None)
    if graph is None or not plan.tensors:
        return None
    tensors = dg.walk.params | dg.walk.buffers
    canonical = {id(t): name for name, t in tensors.items()}
    holders: dict[int, list[str]] = {}
    held_by: dict[str, list[str]] = {}  # planned tensor -> names of the modules holding it
    for module_name, module in dg.walk.modules:
        held = []
        for t in [*module._parameters.values(), *module._buffers.values()]:
            name = canonical.get(id(t)) if t is not None else None
            if name in plan.tensors and name not in held:
                held.append(name)
                held_by.setdefault(name, []).append(module_name)
        if held:
            holders[id(module)] = held
    if held_by.keys() != plan.tensors.keys():
        return None
    planned_values = {
        value: name
        for name, value in (graph.params | graph.buffers).items()
        if name in plan.tensors
    }
    for node in graph.nodes:
        for value in node.inputs:
            name = planned_values.get(value)
            if name is not None and not any(_runs_inside(node.module, m) for m in held_by[name]):
                return None
    return holders


def _runs_inside(module: str, holder: str) -> bool:
    return holder == "" or module == holder or module.startswith(holder + ".")


def _difference_per_call(dg: DependencyGraph, plan: Plan, holders: dict[int, list[str]]) -> float:
    """:func:`_difference` without changing the model's tensors for a whole forward: while a
    module holding a planned tensor runs, the tensor's data is a scratch tensor holding its
    zeroed (or pruned) version, and its own data again once the call returns. Scratch tensors
    are reused from call to call, so at most a few tensors' worth of memory is added (saving
    the removed slices of a 7B model instead takes gigabytes of new memory)."""
    tensors = dg.walk.params | dg.walk.buffers
    fills = RemovedFills(dg.model, dg.divisors)
    scratch = _Scratch()
    native = dg.backend == "native" and ops.available()
    removed = {
        name: _removed_indices(tensors[name].data, dims) for name, dims in plan.tensors.items()
    }

    def zeroed(name: str, data: torch.Tensor) -> torch.Tensor:
        out = scratch.take(data.shape, data)
        steps = sorted(removed[name].items())
        if native and _native_slices(data) and len(steps) == 1:
            ((d, index),) = steps
            ops.copy_with_fills_([out], [data], [d], [index], [fills.of(name, d)])
            return out
        out.copy_(data)
        for d, index in steps:
            out.index_fill_(d, index, fills.of(name, d))
        return out

    def pruned(name: str, data: torch.Tensor) -> torch.Tensor:
        dims = plan.tensors[name]
        if len(dims) != 1:
            return gather(data, dims)
        ((d, kept),) = dims.items()
        shape = list(data.shape)
        shape[d] = int(kept.numel())
        out = scratch.take(shape, data)
        kept = kept.to(data.device)
        if native and _native_slices(data):
            ops.gather_slices_into([data], [d], [kept], [out])
        else:
            torch.index_select(data, d, kept, out=out)
        return out

    masks = _activation_masks(dg, plan, holders, removed, fills)
    substituted = {key: names for key, names in holders.items() if key not in masks}
    with _swapped_per_call(substituted, tensors, zeroed, scratch), _masked_per_call(masks):
        zeroed_outputs = kept_outputs(
            _outputs(dg.model, dg.example_inputs, _writes_parameters(dg)), plan.outputs
        )
    with _pruned_settings(dg, plan), _swapped_per_call(holders, tensors, pruned, scratch):
        pruned_outputs = _outputs(dg.model, dg.example_inputs, _writes_parameters(dg))
    return relative_difference(pruned_outputs, zeroed_outputs)


class _ActivationMask:
    """A module whose zeroed weights are its activations zeroed: ``inputs`` (the input's
    last-dim indices whose weight columns are removed) and ``outputs`` (the output's last-dim
    indices whose weight rows, and bias entries, are removed), each None when nothing is."""

    __slots__ = ("inputs", "outputs")

    def __init__(self, inputs, outputs) -> None:
        self.inputs, self.outputs = inputs, outputs


def _activation_masks(dg, plan: Plan, holders, removed, fills) -> dict[int, _ActivationMask]:
    """id(module) -> its mask, for the modules of ``holders`` whose zeroed forward is their
    plain forward on a masked input or with a masked output: a plain ``nn.Linear`` (rows
    removed: output features zeroed, as zeroing the rows and the bias; columns removed: input
    features zeroed, as each removed column then multiplies a zero) and a plain
    ``nn.Embedding`` pruned along its embedding dim. Each of its planned tensors held by no
    other module and filled with zeros, the module with no hooks and no forward of its own
    (they could see or change its input or output). Such a forward writes no zeroed copy of
    its weights."""
    tensors = dg.walk.params | dg.walk.buffers
    holder_count: dict[str, int] = {}
    for names in holders.values():
        for name in names:
            holder_count[name] = holder_count.get(name, 0) + 1
    modules = {id(m): m for _, m in dg.walk.modules}
    masks: dict[int, _ActivationMask] = {}
    for key, names in holders.items():
        module = modules.get(key)
        if module is None or module._forward_pre_hooks or module._forward_hooks:
            continue
        if "forward" in vars(module):  # its own forward, set on the instance
            continue
        if any(holder_count[n] != 1 or any(fills.of(n, d) for d in removed[n]) for n in names):
            continue
        roles = {}
        for name in names:
            if tensors[name] is getattr(module, "weight", None):
                roles["weight"] = removed[name]
            elif tensors[name] is getattr(module, "bias", None):
                roles["bias"] = removed[name]
        if len(roles) != len(names) or "weight" not in roles:
            continue
        weight, bias = roles["weight"], roles.get("bias", {})
        if type(module) is torch.nn.Linear:
            rows = weight.get(0)
            if set(weight) - {0, 1} or set(bias) - {0}:
                continue
            has_bias = module.bias is not None
            if has_bias and (rows is None) != (0 not in bias):
                continue
            if has_bias and rows is not None and not torch.equal(rows, bias[0]):
                continue
            masks[key] = _ActivationMask(weight.get(1), rows)
        elif type(module) is torch.nn.Embedding and module.max_norm is None:
            if set(weight) == {1}:
                masks[key] = _ActivationMask(None, weight[1])
    return masks


class _CannotMask(RuntimeError):
    """A masked module was called in a way its mask does not cover (the check in memory
    decides instead)."""


@contextlib.contextmanager
def _masked_per_call(masks: dict[int, _ActivationMask]):
    """Each call of a module of ``masks`` computes its zeroed forward: the input's masked
    features zeroed in a copy before the call, the output's zeroed in place after it."""
    if not masks:
        yield
        return

    def before(module, args):
        mask = masks.get(id(module))
        if mask is None or mask.inputs is None:
            return None
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            raise _CannotMask(f"{type(module).__name__} called without one input tensor")
        return (args[0].index_fill(-1, mask.inputs, 0),)

    def after(module, args, output):
        mask = masks.get(id(module))
        if mask is None or mask.outputs is None:
            return None
        if not isinstance(output, torch.Tensor):
            raise _CannotMask(f"{type(module).__name__} returned no tensor")
        return output.index_fill_(-1, mask.outputs, 0)

    with global_module_hooks(before, after):
        yield


def _removed_indices(t: torch.Tensor, dims: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    out = {}
    for d, kept in dims.items():
        mask = torch.ones(t.shape[d], dtype=torch.bool)
        mask[kept.cpu()] = False
        out[d] = torch.nonzero(mask).view(-1).to(t.device)
    return out


class _Scratch:
    """Tensors to hold substitutes, reused once nothing but the pool refers to their memory."""

    def __init__(self) -> None:
        self.free: dict[tuple, list[torch.Tensor]] = {}

    def take(self, shape, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(shape), like.dtype, like.device)
        pool = self.free.get(key)
        if pool:
            return pool.pop()
        return torch.empty(key[0], dtype=like.dtype, device=like.device)

    def give(self, t: torch.Tensor) -> None:
        if t.is_contiguous() and _sole_user(t):
            self.free.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)


def _sole_user(t: torch.Tensor) -> bool:
    """Nothing but ``t`` uses its memory (no view of it lives on in the model's results)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None or t._base is not None:
        return False
    # One use for ``t``, one for the storage object asked.
    return count(t.untyped_storage()._cdata) == 2


@contextlib.contextmanager
def _swapped_per_call(holders: dict[int, list[str]], tensors, substitute, scratch: _Scratch):
    """While a module of ``holders`` runs, each planned tensor it holds has the data
    ``substitute(name, own data)``; the tensor's own data comes back when the outermost call of
    a module holding it returns, and on exit whatever happens. The hooks are the trace's kind
    (``global_module_hooks``), so a module's own hooks run inside its scope in both."""
    active: dict[str, list] = {}  # name -> [calls running that hold it, own data, substitute]

    def enter(module, args):
        for name in holders.get(id(module), ()):
            entry = active.get(name)
            if entry is not None:
                entry[0] += 1
                continue
            t = tensors[name]
            own = t.data
            active[name] = [1, own, None]
            with torch.no_grad():
                active[name][2] = substitute(name, own)
                t.data = active[name][2]

    def leave(module, args, output):
        for name in holders.get(id(module), ()):
            entry = active.get(name)
            if entry is None:
                continue
            entry[0] -= 1
            if entry[0] == 0:
                del active[name]
                tensors[name].data = entry[1]
                scratch.give(entry[2])

    try:
        with global_module_hooks(enter, leave):
            yield
    finally:
        for name, (_, own, _) in active.items():
            tensors[name].data = own


@contextlib.contextmanager
def _pruned_settings(dg: DependencyGraph, plan: Plan):
    """The plan's config fields and module attributes, for the duration."""
    with temporary_config(dg.model, plan.config):
        with temporary_attributes(dg.model, plan.attributes):
            yield


def _compacted(tensors, plan: Plan, rounds: list) -> dict[str, torch.Tensor]:
    """Each pruned tensor's kept slices moved to the front of its own memory, dim by dim (each
    tensor's r-th pruned dim of all of them in one ``compact_`` call, noted in ``rounds`` for
    ``expand_`` to undo in reverse): the views of the pruned shapes, by name."""
    current = {name: tensors[name].data for name in plan.tensors}
    steps = {name: sorted(dims.items()) for name, dims in plan.tensors.items()}
    depth = max((len(s) for s in steps.values()), default=0)
    with torch.no_grad():
        for r in range(depth):
            names = [n for n, s in steps.items() if len(s) > r]
            call = (
                [current[n] for n in names],
                [steps[n][r][0] for n in names],
                [steps[n][r][1].to("cpu", torch.long) for n in names],
            )
            views = ops.compact_(*call)
            rounds.append(call)
            current.update(zip(names, views))
    return current


def _compacts_in_place(dg: DependencyGraph, plan: Plan) -> bool:
    """The native kernels can move the plan's kept slices within each pruned tensor's own
    memory and back: contiguous CPU tensors, none sharing its memory with another tensor of
    the model."""
    if dg.backend != "native" or not ops.available():
        return False
    everything = list(dg.walk.params.values()) + list(dg.walk.buffers.values())
    owners: dict[int, int] = {}
    for t in everything:
        if t.device.type == "cpu":
            key = t.untyped_storage().data_ptr()
            owners[key] = owners.get(key, 0) + 1
    tensors = dg.walk.params | dg.walk.buffers
    for name in plan.tensors:
        t = tensors[name].data
        if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            return False
        if owners.get(t.untyped_storage().data_ptr(), 0) != 1:
            return False
    return True


def kept_outputs(outputs: list[torch.Tensor], kept: dict) -> list[torch.Tensor]:
    """The original's outputs, those that shrink (``prune_outputs``) cut to what they keep."""
    outputs = list(outputs)
    for i, dims in kept.items():
        for d, index in sorted(dims.items()):
            outputs[i] = outputs[i].index_select(d, index.to(outputs[i].device))
    return outputs


def relative_difference(outputs: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest difference of two models' outputs, relative to each expected output's
    largest magnitude (inf: different numbers or shapes of outputs, or unequal integers)."""
    if len(outputs) != len(expected):
        return float("inf")
    worst = 0.0
    for a, b in zip(outputs, expected):
        if a.shape != b.shape:
            return float("inf")
        if not a.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(a, b) else float("inf"))
            continue
        scale = float(b.abs().max()) if b.numel() else 0.0
        diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        worst = max(worst, diff / max(scale, 1e-30) if diff else 0.0)
    return worst


class _ParametersKept(TorchDispatchMode):
    """A check's forward leaves the parameters it was given: where the model's own code writes
    one in place, it is put back when the forward ends."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.parameters = SavedParameters(p for p in model.parameters() if p.device.type != "meta")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.parameters.before(func, args, kwargs)
        return func(*args, **kwargs)

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self.parameters.restore()


def _writes_parameters(dg: DependencyGraph) -> bool:
    """Whether the traced forward writes a parameter in place (the checks' forwards are then
    watched: :class:`_ParametersKept`; watching costs a Python call per op)."""
    graph = getattr(dg, "graph", None)
    if graph is None:
        return True
    params = set(graph.params.values())

    def parameter_behind(value: int) -> bool:  # through views and detaches of it
        while value not in params:
            producer = graph.values[value].producer
            if producer is None:
                return False
            node = graph.nodes[producer]
            returns = getattr(getattr(node.op, "_schema", None), "returns", ())
            if not node.inputs or not returns or returns[0].alias_info is None:
                return False
            value = node.inputs[0]
        return True

    return any(
        parameter_behind(ref.value)
        for node in graph.nodes
        for ref in written_tensors(node.op, node.args, node.kwargs, Ref)
    )


def _outputs(
    model: torch.nn.Module, example_inputs, writes_parameters: bool = True
) -> list[torch.Tensor]:
    """The model's tensor outputs in eval mode and without grad (training flags put back).
    Every forward draws the same random numbers (a model that samples, as ViLT's patches),
    and the caller's RNG state is left as it was."""
    # Each forward gets inputs of its own: a model that writes its inputs in place
    # (``x.mul_(2)``) would otherwise run the next forward on what the last one left.
    args, kwargs = fresh_copies(normalize_inputs(example_inputs))
    modules = list(model.modules())
    training = [m for m in modules if m.training]
    # Tensors a forward keeps as plain module attributes (the older weight_norm sets
    # module.weight in a pre-hook) are put back: computed from a check's substitutes, they
    # would outlive it.
    kept = [(m, {k: v for k, v in vars(m).items() if isinstance(v, torch.Tensor)}) for m in modules]
    try:
        model.eval()
        with (
            torch.no_grad(),
            eager_forwards(),
            torch.random.fork_rng(),
            unfused_transformer_layers(list(model.named_modules())),
            _ParametersKept(model) if writes_parameters else contextlib.nullcontext(),
        ):
            torch.manual_seed(0)
            out = model(*args, **kwargs)
            return [t.detach().clone() for t in output_tensors(out)]
    finally:
        for m in training:
            m.training = True
        for m, attributes in kept:
            state = vars(m)
            for k in [k for k, v in state.items() if isinstance(v, torch.Tensor)]:
                if k not in attributes:
                    del state[k]
            state.update(attributes)


@contextlib.contextmanager
def _pruned(dg: DependencyGraph, plan: Plan, in_place: bool = False):
    """The model as the plan prunes it, for the duration: pruned tensors, attributes and
    config fields swapped in, and everything put back on exit. ``in_place``: the pruned
    tensors are views of the originals' own memory, the kept slices moved to its front
    (``ops.compact_``) and back on exit (``ops.expand_``); the slices between them are not
    restored (``_zeroed`` writes the removed ones back)."""
    tensors = dg.walk.params | dg.walk.buffers
    rounds: list[tuple[list, list, list]] = []  # compact_ calls done: (tensors, dims, kept)
    if not in_place:
        with torch.no_grad():
            sliced = gather_all(tensors, plan.tensors, native=dg.backend == "native")
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        if in_place:
            sliced = _compacted(tensors, plan, rounds)
        with torch.no_grad():
            for name, data in sliced.items():
                swapped.append((tensors[name], tensors[name].data))
                tensors[name].data = data
        with _pruned_settings(dg, plan):
            yield
    finally:
        with torch.no_grad():
            for t, data in reversed(swapped):
                t.data = data
            for call in reversed(rounds):
                ops.expand_(*call)


@contextlib.contextmanager
def _zeroed(dg: DependencyGraph, plan: Plan):
    """The original with the plan's removed slices zeroed (or what removes them where zero
    does not: ``RemovedFills``), for the duration: the removed slices are saved first and
    written back on exit."""
    tensors = dg.walk.params | dg.walk.buffers
    fills = RemovedFills(dg.model, dg.divisors)
    # Every removed slice of the original, by (tensor, dim), saved in one batched gather
    # before any is filled (each holds original values, so they go back in any order).
    removed: dict[tuple[str, int], torch.Tensor] = {}  # (name, dim) -> the removed indices
    for name, dims in plan.tensors.items():
        for d, index in _removed_indices(tensors[name].data, dims).items():
            removed[(name, d)] = index
    with torch.no_grad():
        saved = gather_all(
            {key: tensors[key[0]] for key in removed},
            {key: {key[1]: index} for key, index in removed.items()},
            native=dg.backend == "native",
        )
    # The CPU's contiguous tensors are filled and written back by the native kernels in one
    # call each (torch's index_fill_/index_copy_ move 4 GB/s along a bf16 weight's columns);
    # the others one by one. A tensor pruned along two dims is filled and restored per dim
    # in order, the native ones first (each restore writes original values only).
    native = dg.backend == "native" and ops.available()
    batched = [key for key in removed if native and _native_slices(tensors[key[0]].data)]
    in_batch = set(batched)
    one_by_one = [key for key in removed if key not in in_batch]
    filled: list[tuple[str, int]] = []
    try:
        with torch.no_grad():
            if batched:
                ops.fill_slices_(
                    [tensors[n].data for n, _ in batched],
                    [d for _, d in batched],
                    [removed[key] for key in batched],
                    [fills.of(n, d) for n, d in batched],
                )
                filled += batched
            for name, d in one_by_one:
                tensors[name].data.index_fill_(d, removed[(name, d)], fills.of(name, d))
                filled.append((name, d))
        yield
    finally:
        with torch.no_grad():
            native_filled = [key for key in filled if key in in_batch]
            if native_filled:
                ops.scatter_slices_(
                    [tensors[n].data for n, _ in native_filled],
                    [d for _, d in native_filled],
                    [removed[key] for key in native_filled],
                    [saved[key] for key in native_filled],
                )
            for name, d in filled:
                if (name, d) not in in_batch:
                    tensors[name].data.index_copy_(d, removed[(name, d)], saved[(name, d)])


def _native_slices(t: torch.Tensor) -> bool:
    """The native fill and scatter take this tensor: a contiguous CPU tensor of a dtype whose
    elements are 1, 2, 4 or 8 bytes."""
    return t.device.type == "cpu" and t.is_contiguous() and t.element_size() in (1, 2, 4, 8)


def scatter_back_difference(result, model: torch.nn.Module, example_inputs) -> tuple[float, float]:
    """(largest relative difference of the outputs, tolerance of the weights' dtype) between
    the pruned ``model`` and the original rebuilt from it with the removed units zeroed."""
    from ..testing import model_copy

    original = model_copy(model)
    tensors = dict(original.named_parameters()) | dict(original.named_buffers())
    fills = RemovedFills(original, result.divisors)
    with torch.no_grad():
        for name, dims in result.tensors.items():  # each tensor once
            t = tensors[name]
            full = t.detach()
            for d, kept in sorted(dims.items(), reverse=True):  # gather's dims, undone
                shape = list(full.shape)
                shape[d] = result.shapes_before[name][d]
                wider = torch.full(shape, fills.of(name, d), dtype=t.dtype, device=t.device)
                full = wider.index_copy_(d, kept.to(t.device), full)
            t.data = full
    for u in reversed(result.attribute_updates):
        setattr(original.get_submodule(u.module), u.attr, u.old)
    config = config_of(original)
    for u in reversed(result.config_updates):
        set_field(config, u.field, u.old)
    worst = relative_difference(
        _outputs(model, example_inputs),
        kept_outputs(_outputs(original, example_inputs), result.outputs),
    )
    dtypes = [t.dtype for t in model.parameters() if t.is_floating_point()]
    tolerance = max((TOLERANCE.get(d, 1e-3) for d in dtypes), default=1e-3)
    return worst, tolerance
