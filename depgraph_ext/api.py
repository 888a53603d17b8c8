"""The public entry points: ``prune(model, example_inputs, ratio=...)`` and ``prune_group``."""

from __future__ import annotations

import inspect

import torch

from .graph.dependency import DependencyGraph, Group
from .pruning.options import PruneOptions, with_options_signature
from .pruning.pruner import Pruner, prune_units
from .result import PruneResult


def prune(
    model: torch.nn.Module, example_inputs, ratio: float | None = None, **options
) -> PruneResult:
    """Structurally prune ``model`` in place; returns a :class:`PruneResult`.

    ``example_inputs``: a tensor, a tuple of positional inputs or a dict of keyword inputs.
    ``ratio``: the fraction of each group's prunable units removed (default 0.5). The other
    options (``ratios``, ``target_params``, ``importance``, ``ignore``, ...) are the fields of
    :class:`~depgraph_ext.pruning.options.PruneOptions`, described there.

    Nothing about the model (or the optimizer) changes when an error is raised.
    """
    return Pruner(model, example_inputs, ratio, **options).run()


def prune_group(dg: DependencyGraph, group: Group, units) -> PruneResult:
    """Remove the given group-local ``units`` of one group by hand (validated, in place)."""
    return prune_units(dg, group, units)


with_options_signature(
    prune,
    [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("example_inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("ratio", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    ],
)
prune.__doc__ += "\n    Options:\n\n    " + PruneOptions.__doc__.split("\n\n", 1)[1]
