"""What a prune did: :class:`PruneResult` (one step, or several composed)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .pruning.attributes import AttributeUpdate
from .pruning.configs import ConfigUpdate
from .pruning.plan import TensorPlan


@dataclass
class PruneResult:
    """What ``prune`` did. ``plan``: every ``state_dict()`` key whose tensor changed -> {dim:
    kept indices (original coordinates)}, each name of a tied tensor included (``tied``: such
    a name -> the name it is tied to); ``non_persistent``: the same for changed buffers
    ``state_dict()`` leaves out."""

    plan: TensorPlan
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
    # function-changing groups that lost units, each described with why (empty: exact prune)
    function_changing: list[str] = field(default_factory=list)
    model_ref: object = field(default=None, repr=False, compare=False)  # weakref to the model
    # require_loadable: counts rounded up to what the config can say, in words
    rounded: list[str] = field(default_factory=list)
    # layer -> (its width before, after): output channels, features, normalised features ...
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)  # a planned name -> the one it is tied to
    non_persistent: TensorPlan = field(default_factory=dict)  # buffers outside the state_dict
    # position among the model's tensor outputs -> {dim: kept indices} (``prune_outputs``)
    outputs: dict[int, dict] = field(default_factory=dict)
    # Planned tensors the model divides by -> what stands for their removed slices in the
    # original-shaped model of the scatter-back oracle: what makes the divisor one, not zero
    # (RemovedFills).
    divisors: dict[str, float] = field(default_factory=dict)

    @property
    def tensors(self) -> TensorPlan:
        """Every changed tensor once (tied names left out), buffers outside the state_dict
        included: what rebuilding the pruned model from the original takes."""
        return {n: d for n, d in self.plan.items() if n not in self.tied} | self.non_persistent

    def save_plan(self, path):
        """Write the plan (kept indices, attribute and config changes) as JSON; replay it on a
        freshly built original with ``depgraph_ext.apply_plan(model, path)``."""
        from .io.plans import save_plan

        return save_plan(self, path)

    def summary(self, max_rows: int | None = 40) -> str:
        """The layers that changed (main tensor's shape, the layer's width, its parameters
        before and after), the units per group kind, parameters, MACs and the time per
        stage."""
        layers: dict[str, list[str]] = {}
        for name in self.tensors:  # one row per module, shown by its weight if it has one
            module, tensor = layer_of(name)
            names = layers.setdefault(module, [])
            main = tensor in ("weight", "weight.original", "weight.original1", "weight_v")
            names.insert(0, name) if main else names.append(name)

        def numel(shape) -> int:
            return int(np.prod(shape, dtype=np.int64))

        def params(shapes, names) -> int:
            return sum(numel(shapes[x]) for x in names if x not in self.buffers)

        def width_of(module: str, name: str) -> str:
            before, after = self.channels.get(module) or (
                self.shapes_before[name][0] if self.shapes_before[name] else 1,
                self.shapes_after[name][0] if self.shapes_after[name] else 1,
            )
            kept = f" ({after / before:.0%})" if before and before != after else ""
            return f"{before} -> {after}{kept}"

        rows = [
            (
                m or "<root>",
                layer_of(n[0])[1],
                self.shapes_before[n[0]],
                self.shapes_after[n[0]],
                width_of(m, n[0]),
                params(self.shapes_before, n),
                params(self.shapes_after, n),
            )
            for m, n in layers.items()
        ]
        shown = rows if max_rows is None else rows[:max_rows]
        width = max([len("layer")] + [len(r[0]) for r in shown])
        tensor_width = max([len("tensor")] + [len(r[1]) for r in shown])
        width_width = max([len("width")] + [len(r[4]) for r in shown])
        lines = [
            f"{'layer':<{width}}  {'tensor':<{tensor_width}} {'before':>18}  {'after':>18}  "
            f"{'width':<{width_width}}  {'params before':>13}  {'after':>11}"
        ]
        for layer, tensor, before, after, kept, p_before, p_after in shown:
            lines.append(
                f"{layer:<{width}}  {tensor:<{tensor_width}} {str(tuple(before)):>18}  "
                f"{str(tuple(after)):>18}  {kept:<{width_width}}  {p_before:>13,}  "
                f"{p_after:>11,}"
            )
        if len(rows) > len(shown):
            lines.append(f"... {len(rows) - len(shown)} more layers changed")
        if self.units:
            lines.append(
                "units per kind (a unit: a channel, a head, a whole conv group or a channel "
                "of every group):"
            )
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
        stages = ", ".join(
            f"(beside those, summing weights ahead {v * 1e3:.0f} ms)"
            if k == "score_ahead"
            else f"{k} {v * 1e3:.0f} ms"
            for k, v in self.timings.items()
        )
        lines.append(f"time: {stages}")
        lines += [f"rounded: {note}" for note in self.rounded]
        for i, dims in sorted(self.outputs.items()):
            kept = ", ".join(f"dim {d} keeps {k.numel()}" for d, k in sorted(dims.items()))
            lines.append(f"output {i} shrinks (prune_outputs): {kept}")
        if self.function_changing:
            lines.append(
                f"function-changing groups pruned ({len(self.function_changing)}): "
                "removing their units changes what the kept units compute"
            )
            lines += [f"  - {g}" for g in self.function_changing[:max_rows]]
            if max_rows is not None and len(self.function_changing) > max_rows:
                lines.append(f"  ... {len(self.function_changing) - max_rows} more")
        else:
            lines.append("every pruned group is exact (removing its units equals zeroing them)")
        return "\n".join(lines)

    def verify(self, example_inputs, *, rtol: float | None = None) -> float:
        """Check the pruned model on ``example_inputs`` against the original with the removed
        units zeroed, rebuilt from the pruned model itself (its kept weights scattered back
        into the original shapes, attributes and config set back): the scatter-back oracle.
        Returns the largest relative difference of the outputs; raises VerificationError
        beyond ``rtol`` (by default the tolerance of the weights' dtype). Only for prunes of
        exact groups (function-changing ones changed the outputs on purpose); costs a copy of
        the model at its original size and two forward passes."""
        from .errors import InvalidArgumentError, VerificationError
        from .pruning.verify import scatter_back_difference

        model = self.model_ref() if self.model_ref is not None else None
        if model is None:
            raise InvalidArgumentError("the pruned model of this result is gone")
        if self.function_changing:
            raise InvalidArgumentError(
                f"this prune removed units of {len(self.function_changing)} function-changing "
                "group(s), which change the outputs on purpose; only exact prunes can be "
                "verified after the fact (prune with exact_only=True, or verify=True, which "
                "checks the exact groups before the model changes)"
            )
        difference, tolerance = scatter_back_difference(self, model, example_inputs)
        limit = tolerance if rtol is None else rtol
        if difference > limit:
            raise VerificationError(
                f"the pruned model does not compute what the original computes with the "
                f"removed units zeroed: largest relative difference {difference:.3g} "
                f"(tolerance {limit:.3g})",
                difference=difference,
            )
        return difference


def layer_of(name: str) -> tuple[str, str]:
    """(module, tensor) of a state_dict name as a layer shows it: a parametrization's tensors
    (``conv.parametrizations.weight.original1``) under the module they parametrize."""
    owner, marker, rest = name.partition(".parametrizations.")
    if marker:
        return owner, rest
    if name.startswith("parametrizations."):
        return "", name.removeprefix("parametrizations.")
    module, _, tensor = name.rpartition(".")
    return module, tensor


WIDTH_ATTRIBUTES = (
    "out_channels",
    "out_features",
    "num_features",
    "embedding_dim",
    "num_channels",
    "normalized_shape",
    "num_parameters",
    "hidden_size",
)


def layer_width(module) -> int | None:
    """A layer's width as its attributes say: output channels or features, normalised
    features, embedding width (None: it says none)."""
    for attr in WIDTH_ATTRIBUTES:
        value = getattr(module, attr, None)
        if isinstance(value, tuple) and value and isinstance(value[-1], int):
            value = int(np.prod(value))
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def compose_results(results: list[PruneResult]) -> PruneResult:
    """Several steps as one result: plans composed into the original model's coordinates."""
    if len(results) == 1:
        return results[0]
    plan: TensorPlan = {}
    outside: TensorPlan = {}
    before: dict[str, tuple[int, ...]] = {}
    after: dict[str, tuple[int, ...]] = {}
    for r in results:
        for into, planned in ((plan, r.plan), (outside, r.non_persistent)):
            for name, dims in planned.items():
                current = into.setdefault(name, {})
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
    units = {
        k: (results[0].units[k][0], results[-1].units.get(k, results[0].units[k])[1])
        for k in results[0].units
    }
    return PruneResult(
        plan=plan,
        params_before=results[0].params_before,
        params_after=results[-1].params_after,
        timings=timings,
        shapes_before=before,
        shapes_after=after,
        attribute_updates=merged(
            [u for r in results for u in r.attribute_updates], lambda u: (u.module, u.attr)
        ),
        config_updates=merged([u for r in results for u in r.config_updates], lambda u: u.field),
        num_groups=results[-1].num_groups,
        backend=results[-1].backend,
        macs_before=results[0].macs_before,
        macs_after=results[-1].macs_after,
        units=units,
        steps=len(results),
        buffers=frozenset().union(*(r.buffers for r in results)),
        function_changing=[g for r in results for g in r.function_changing],
        rounded=[n for r in results for n in r.rounded],
        model_ref=results[-1].model_ref,
        tied={alias: name for r in results for alias, name in r.tied.items()},
        outputs=_composed_outputs(results),
        non_persistent=outside,
        channels={
            m: (next(r.channels[m][0] for r in results if m in r.channels), after)
            for m, (_, after) in {m: w for r in results for m, w in r.channels.items()}.items()
        },
    )


def _composed_outputs(results: list[PruneResult]) -> dict[int, dict]:
    """The kept indices of each shrinking output, in the original's coordinates."""
    out: dict[int, dict] = {}
    for r in results:
        for i, dims in r.outputs.items():
            current = out.setdefault(i, {})
            for d, kept in dims.items():
                current[d] = current[d][kept] if d in current else kept
    return out
