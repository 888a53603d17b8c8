"""Tensors a model computes from others as it runs: parametrizations
(``torch.nn.utils.parametrize``: ``weight_norm``, ``spectral_norm``, ``orthogonal``, a user's
own) and the forward pre-hooks that store ``module.weight`` as a plain attribute: the older
``weight_norm`` / ``spectral_norm`` and ``torch.nn.utils.prune``'s masks.

The graph prunes what they are computed from (the parametrization's ``original`` tensors, the
hooks' ``weight_g`` / ``weight_v`` / ``weight_orig``, spectral norm's ``u`` and ``v``), through
the ops that compute them. Here: the traced value of each computed tensor by its name (module
attributes such as ``out_channels`` follow its planned shape), what zeroing a removed unit means
for them (the scatter-back oracle), and a hook's stored weight computed again after a prune.
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from .trace import OpGraph, Ref
from .walk import ModelWalk

# Removed slices get these instead of zero, by the tensor's last name (every dim): BatchNorm
# variances, so that a removed channel normalises to zero (1 / sqrt(0 + eps) is not small).
ONE_FILLED = ("running_var",)


# Ops that divide by a tensor argument: (op, its position). Followed back from there through
# what keeps a tensor's values (views, copies, casts) to a parameter or buffer.
_DIVIDING = {"aten.div": 1, "aten.div_": 1, "aten.true_divide": 1, "aten.reciprocal": 0,
             "aten.rsqrt": 0}  # fmt: skip
_SAME_VALUES = frozenset(
    f"aten.{n}"
    for n in """view _unsafe_view reshape unsqueeze squeeze expand _to_copy to alias detach
    clone contiguous permute transpose t slice select flatten unflatten lift_fresh unbind split
    split_with_sizes chunk narrow expand_as view_as repeat index_select""".split()
)


# Ops whose result is their first input plus, minus, times or over a number: (a, b) of
# ``result = a * x + b`` from the number c.
_AFFINE = {
    "aten.add": lambda c: (1.0, c),
    "aten.sub": lambda c: (1.0, -c),
    "aten.mul": lambda c: (c, 0.0),
    "aten.div": lambda c: (1.0 / c, 0.0),
}


def divisor_tensors(graph: OpGraph) -> dict[str, float]:
    """The parameters and buffers the model divides by (``x / self.stds``, ``x *
    w.rsqrt()``), directly or through views and casts of them and through adding,
    subtracting, multiplying or dividing by numbers (``1 / (self.levels - 1)``), each with
    the value that makes the divisor one (``levels``: 2)."""
    positions: dict = {}  # op -> its _DIVIDING position (the packet's name, once per op)
    dividing = []
    for node in graph.nodes:
        position = positions.get(node.op, -1)
        if position == -1:
            position = positions[node.op] = _DIVIDING.get(node.packet)
        if position is not None and len(node.inputs) > position:
            dividing.append((node, position))
    if not dividing:
        return {}
    named = {v: n for n, v in (graph.params | graph.buffers).items()}
    producer = {o: node for node in graph.nodes for o in node.outputs}
    found: dict[str, float] = {}
    for node, position in dividing:
        if position == 1 and (len(node.args) < 2 or not isinstance(node.args[1], Ref)):
            continue  # a number
        v, seen = node.inputs[position], set()
        a, b = 1.0, 0.0  # the divisor is a * v + b
        while v not in named and v not in seen and v in producer:
            seen.add(v)  # (an op that returns its input, ``x.to(x.dtype)``, is its producer)
            source = producer[v]
            if source.packet in _SAME_VALUES and source.inputs:
                v = source.inputs[0]
                continue
            step = _affine_step(source)
            if step is None:
                break
            a, b = a * step[0], a * step[1] + b
            v = source.inputs[0]
        if v in named and a != 0.0:
            found.setdefault(named[v], (1.0 - b) / a)
    return found


def _affine_step(node) -> tuple[float, float] | None:
    """(a, b) where ``node``'s result is ``a * input + b`` for a number it was given (None:
    any other op)."""
    make = _AFFINE.get(node.packet)
    args = node.args
    if make is None or len(args) < 2 or not isinstance(args[0], Ref):
        return None
    number = args[1]
    alpha = node.kwargs.get("alpha", 1)
    if type(number) not in (int, float) or type(alpha) not in (int, float):
        return None
    if node.packet == "aten.div" and number == 0:
        return None
    return make(
        float(number) * float(alpha) if node.packet in ("aten.add", "aten.sub") else float(number)
    )


def computed_tensors(graph: OpGraph, walk: ModelWalk) -> dict[str, int]:
    """Qualified name (``conv.weight``) -> traced value of every tensor computed as the model
    runs: a parametrization's result (what its ``ParametrizationList`` returned last) and a
    tensor the forward stored as a module attribute."""
    lists = {name for name, m in walk.modules if isinstance(m, parametrize.ParametrizationList)}
    out: dict[str, int] = {}
    for name, outs in graph.module_calls:
        if name in lists and len(outs) == 1:
            owner, _, tensor = name.rpartition(".")  # owner.parametrizations.tensor
            owner = owner.rpartition(".")[0]
            out[f"{owner}.{tensor}" if owner else tensor] = outs[0]
    out.update(graph.attribute_tensors)
    return out


class RemovedFills:
    """What a removed slice holds in the original-shaped model the oracle compares with: zero,
        except where zero does not remove a unit. A weight norm's direction ``v`` along its norm
        dim is divided by its own norm (0 / 0 for a zeroed row): its removed rows hold ones, and
        the zeroed scale ``g`` removes them. BatchNorm variances hold one, and so does every tensor
        in ``divisors`` (a model's latent ``stds`` it divides by: 0 / 0 at a removed channel, where
        one leaves its zero numerator zero; a tensor the model divides by after adding to it holds
    what makes the divisor one)."""

    def __init__(self, model: torch.nn.Module, divisors=()) -> None:
        # name -> the value that makes the divisor one (names alone: one)
        self.divisors = (
            dict(divisors) if isinstance(divisors, dict) else dict.fromkeys(divisors, 1.0)
        )
        self.by_name: dict[str, tuple[int, int]] = {}  # tensor -> (norm dim, rank)
        for name, m in model.named_modules():
            prefix = f"{name}." if name else ""
            if parametrize.is_parametrized(m):
                for tensor, plist in m.parametrizations.items():
                    if (
                        len(plist)
                        and isinstance(plist[0], _WeightNorm)
                        and hasattr(plist, "original1")
                    ):
                        v = plist.original1
                        self._add(f"{prefix}parametrizations.{tensor}.original1", plist[0].dim, v)
            for hook in m._forward_pre_hooks.values():
                if isinstance(hook, WeightNorm):
                    v = getattr(m, f"{hook.name}_v", None)
                    if isinstance(v, torch.Tensor):
                        self._add(f"{prefix}{hook.name}_v", hook.dim, v)

    def _add(self, name: str, dim, v: torch.Tensor) -> None:
        if dim is not None and dim != -1:  # -1: one norm over the whole tensor
            self.by_name[name] = (dim + v.dim() if dim < 0 else dim, v.dim())

    def of(self, name: str, dim: int) -> float:
        """The value removed indices along ``dim`` of tensor ``name`` hold."""
        if name in self.divisors:
            return self.divisors[name]
        if name.rpartition(".")[2] in ONE_FILLED:
            return 1.0
        norm = self.by_name.get(name)
        return 1.0 if norm is not None and norm[0] == dim else 0.0


def refresh_hooked(model: torch.nn.Module, changed) -> None:
    """Compute again the tensor each ``weight_norm``, ``spectral_norm`` or
    ``torch.nn.utils.prune`` hook stores on a module whose tensors it computes it from
    (``name_g`` / ``name_v``, ``name_orig`` / ``name_u`` / ``name_v``, ``name_orig`` /
    ``name_mask``) are among ``changed`` (qualified names), so that ``module.weight`` has the
    pruned shape before the next forward computes it anyway (no power iteration is run; no
    autograd graph is kept, as a model that can be copied)."""
    changed = set(changed)
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, (WeightNorm, SpectralNorm)):
                tensor = hook.name
            elif isinstance(hook, BasePruningMethod):
                tensor = hook._tensor_name
            else:
                continue
            if not any(n.startswith(f"{prefix}{tensor}_") for n in changed):
                continue
            with torch.no_grad():
                if isinstance(hook, WeightNorm):
                    value = hook.compute_weight(m)
                elif isinstance(hook, SpectralNorm):
                    value = hook.compute_weight(m, do_power_iteration=False)
                else:
                    value = hook.apply_mask(m)
            setattr(m, tensor, value)
