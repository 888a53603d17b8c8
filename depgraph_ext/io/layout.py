"""How a checkpoint's tensor keys hold the model's parameters.

Most keys name a parameter (or a tied alias of one). transformers renames some on loading
(Mixtral's ``block_sparse_moe`` is the model's ``mlp``) and builds fused parameters from many
keys: a mixture of experts stores one tensor per expert (``experts.3.gate_proj.weight``) where
the model has one stacked over experts (``experts.gate_up_proj`` [experts, 2 x inner, hidden],
gate then up). transformers' own conversion mapping for the model says which; this module reads
it, so that a checkpoint can be scored and sliced key by key and written in its own layout
(the kept experts renumbered from 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import CheckpointError


@dataclass
class StackedParameter:
    """A parameter stored as ``keys[e][i]``: for expert ``e``, part ``i``; the parts are
    concatenated along each expert tensor's dim 0 (``part_sizes`` rows each), the experts
    stacked as the parameter's dim 0."""

    name: str
    keys: list[list[str]]
    part_sizes: list[int]


@dataclass(frozen=True)
class ExpertKey:
    """One checkpoint key of a stacked parameter: its expert, its part, where in the key the
    expert's number is."""

    name: str
    expert: int
    part: int
    number_span: tuple[int, int]

    def renumbered(self, key: str, expert: int) -> str:
        start, end = self.number_span
        return f"{key[:start]}{expert}{key[end:]}"


def conversions_of(model) -> tuple[list, list]:
    """(renamings, converters) transformers applies to ``model``'s checkpoint keys on loading:
    its own renaming objects (applied in turn by :func:`renamed`: a vision-language model's
    ``language_model.model.layers`` is ``model.language_model.layers``; a tower's own scoped
    renamings too), and the converters as (sources, target, operations); none without
    transformers' conversion mapping."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:
        return [], []
    try:
        transforms = get_model_conversion_mapping(model)
    except Exception:  # noqa: BLE001  (a model transformers does not map)
        return [], []
    renamings, converters = [], []
    for t in transforms or []:
        if isinstance(t, WeightRenaming) and callable(getattr(t, "rename_source_key", None)):
            renamings.append(t)
        elif isinstance(t, WeightConverter) and not getattr(t, "scope_prefix", None):
            sources = list(getattr(t, "_original_source_patterns", t.source_patterns))
            targets = list(getattr(t, "_original_target_patterns", t.target_patterns))
            if len(targets) == 1:  # (a sub-model's own converters: not the layouts handled here)
                converters.append((sources, targets[0], list(t.operations)))
    return renamings, converters


def renamed(key: str, renamings) -> str:
    """``key`` as transformers names it on loading: every renaming applied in turn."""
    for renaming in renamings:
        key = renaming.rename_source_key(key)[0]
    return key


def _expert_pattern(source: str) -> re.Pattern:
    """``mlp.experts.*.gate_proj.weight`` as a regex whose one group is the expert number."""
    parts = [re.escape(p) for p in source.split("*")]
    if len(parts) != 2:
        raise ValueError(source)
    return re.compile(parts[0] + r"(\d+)" + parts[1] + "$")


def stacked_parameters(
    keys, renamings, converters, wanted: dict[str, tuple]
) -> tuple[dict[str, StackedParameter], dict[str, ExpertKey]]:
    """The parameters of ``wanted`` (name -> shape) that ``keys`` store one tensor per expert,
    as transformers' converters say (experts merged along dim 0, then gate and up
    concatenated along dim 1); and for each such key, its expert and part."""
    found: dict[str, dict[int, dict[int, tuple[str, tuple[int, int]]]]] = {}
    kinds: dict[str, list] = {}
    for key in keys:
        new = renamed(key, renamings)
        for sources, target, operations in converters:
            for part, source in enumerate(sources):
                try:
                    pattern = _expert_pattern(source)
                except ValueError:
                    continue
                match = pattern.search(new)
                if match is None:
                    continue
                name = new[: match.start()] + target
                if name not in wanted:
                    continue
                in_key = pattern.search(key)  # the number in the key as stored
                if in_key is None or in_key.group(1) != match.group(1):
                    raise CheckpointError(
                        f"{key}: its expert number moves when transformers renames it; this "
                        "checkpoint layout cannot be streamed"
                    )
                expert = int(match.group(1))
                found.setdefault(name, {}).setdefault(expert, {})[part] = (key, in_key.span(1))
                kinds[name] = [(type(op).__name__, getattr(op, "dim", None)) for op in operations]
    stacked: dict[str, StackedParameter] = {}
    expert_keys: dict[str, ExpertKey] = {}
    for name, experts in found.items():
        operations = kinds[name]
        parts = max(len(p) for p in experts.values())
        if operations not in (
            [("MergeModulelist", 0)],
            [("MergeModulelist", 0), ("Concatenate", 1)],
        ) or (parts > 1 and len(operations) == 1):
            raise CheckpointError(
                f"{name} is built from the checkpoint by {operations}; streaming handles "
                "experts stacked along dim 0 (and parts concatenated along dim 1) only"
            )
        count = wanted[name][0]
        if sorted(experts) != list(range(count)) or any(len(p) != parts for p in experts.values()):
            raise CheckpointError(
                f"the checkpoint holds experts {sorted(experts)[:8]} of {name}, the config "
                f"gives {count} with {parts} part(s) each"
            )
        table = [[experts[e][i][0] for i in range(parts)] for e in range(count)]
        stacked[name] = StackedParameter(name, table, [])
        for e in range(count):
            for i in range(parts):
                key, span = experts[e][i]
                expert_keys[key] = ExpertKey(name, e, i, span)
    return stacked, expert_keys
