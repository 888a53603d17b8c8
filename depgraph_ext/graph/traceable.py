"""Code paths a trace follows in place of those a model runs by default, where both compute
the same and only one can be traced exactly."""

from __future__ import annotations

import contextlib

# transformers' mixture-of-experts modules dispatch on ``config._experts_implementation``;
# these implementations loop over experts or group tokens by data-dependent counts.
_UNTRACEABLE_EXPERTS = (None, "eager", "grouped_mm")
TRACEABLE_EXPERTS = "batched_mm"


def is_experts_module(module) -> bool:
    """A module of transformers' experts interface. (Looked up without nn.Module.__getattr__,
    whose AttributeError costs microseconds a module.)"""
    return "has_gate" in vars(module) or hasattr(type(module), "has_gate")


@contextlib.contextmanager
def traceable_paths(modules):
    """For the duration, transformers' expert modules run their batched-matmul implementation
    (each token's chosen experts gathered by index into one batched matmul), which the rules
    map exactly: the expert dim of the weights is coupled with the router's. The default
    grouped matmul and the per-expert loop compute the same on data-dependent token counts."""
    changed = []
    seen: set[int] = set()
    for _, module in modules:
        if not is_experts_module(module):
            continue
        config = getattr(module, "config", None)
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        current = getattr(config, "_experts_implementation_internal", TRACEABLE_EXPERTS)
        if current in _UNTRACEABLE_EXPERTS:
            config._experts_implementation_internal = TRACEABLE_EXPERTS
            changed.append((config, current))
    try:
        yield
    finally:
        for config, value in reversed(changed):
            config._experts_implementation_internal = value
