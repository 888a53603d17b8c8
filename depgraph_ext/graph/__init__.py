"""The graph stage: trace a model at the ATen level (trace, standin), apply the op rules
(rules, coupling_model), resolve which slices of which tensors are coupled (resolve, with its
Python twin resolve_reference). Its product, the :class:`DependencyGraph`, never changes once
built; the prune stage reads it."""

from .dependency import KINDS, DependencyGraph, Group, Member

__all__ = ["KINDS", "DependencyGraph", "Group", "Member"]
