"""Op rules: how the indices of each ATen op's input dims map to its output dims.

A rule reads one traced :class:`~depgraph_ext.graph.trace.Node` and emits couplings between
slots (one slot per dim of each tensor) through a :class:`RuleContext`. The contract:

- a rule relates only dims whose index correspondence follows from the op's meaning and the
  recorded shapes; it never guesses;
- an output dim that no coupling touches is blocked (its size is fixed by the op, e.g. a conv's
  spatial output); an input dim that no coupling touches is free (e.g. a reduced dim);
- an op with no rule is *opaque*: every dim of its inputs and outputs is blocked, and the user is
  told which op in which module blocked what.

One module per op family; importing this package registers them all. ``register_rule`` adds a
rule for a user's own op (any ``torch.library`` custom op included).
"""

from __future__ import annotations

from . import (  # noqa: F401  (importing a family registers its rules)
    attention,
    detection,
    elementwise,
    indexing,
    layout,
    linear,
    losses,
    norms,
    pooling,
    recurrent,
    reductions,
)
from .context import AttentionCall, Reduction, RuleContext, RuleError
from .registry import Rule, register_rule, registered_rule, rule_for, unregister_rule

__all__ = [
    "AttentionCall",
    "Reduction",
    "Rule",
    "RuleContext",
    "RuleError",
    "register_rule",
    "registered_rule",
    "rule_for",
    "unregister_rule",
]
