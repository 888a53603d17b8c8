"""The prune stage: score units over their groups (importance), choose which go (select),
plan what changes (plan), check it runs (validate), change the model (apply); Pruner runs
them step by step."""

from .options import PruneOptions
from .pruner import Pruner

__all__ = ["PruneOptions", "Pruner"]
