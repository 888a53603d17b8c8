"""depgraph_ext: structural pruning of any PyTorch model, with a C++ core.

    import depgraph_ext as dx
    result = dx.prune(model, example_inputs, ratio=0.5)   # model is pruned in place
"""

from .api import PruneResult, prune, prune_group
from .checkpoint import (
    CheckpointError,
    CheckpointResult,
    CheckpointWriteError,
    DiskFullError,
    OutputExistsError,
    UnknownModelTypeError,
    prune_checkpoint,
)
from .configs import ConfigMismatchWarning
from .counting import count_params, count_params_and_macs
from .dependency import DependencyGraph, FixedSizeWarning, Group, Member, OpaqueOpWarning
from .errors import (
    BackendUnavailableError,
    InvalidArgumentError,
    NonFiniteWeightsError,
    NoPrunableGroupsError,
    PlanValidationError,
    PruningError,
    TraceError,
    UnsupportedOpError,
)
from .importance import (
    BNScaleImportance,
    FisherImportance,
    GroupImportance,
    Importance,
    LAMPImportance,
    MagnitudeImportance,
    MissingGradientsError,
    RandomImportance,
    TaylorImportance,
    collect_fisher,
)
from .pruner import Pruner
from .resolve import native_available
from .rules import RuleContext, register_rule
from .saving import apply_plan
from .sparsity import GroupSparsity

__version__ = "0.1.0"

__all__ = [
    "BNScaleImportance",
    "FisherImportance",
    "GroupImportance",
    "GroupSparsity",
    "Importance",
    "LAMPImportance",
    "MagnitudeImportance",
    "MissingGradientsError",
    "Pruner",
    "RandomImportance",
    "TaylorImportance",
    "collect_fisher",
    "count_params_and_macs",
    "BackendUnavailableError",
    "CheckpointError",
    "CheckpointResult",
    "CheckpointWriteError",
    "ConfigMismatchWarning",
    "DependencyGraph",
    "DiskFullError",
    "FixedSizeWarning",
    "Group",
    "InvalidArgumentError",
    "Member",
    "NoPrunableGroupsError",
    "NonFiniteWeightsError",
    "OpaqueOpWarning",
    "OutputExistsError",
    "PlanValidationError",
    "PruneResult",
    "PruningError",
    "RuleContext",
    "TraceError",
    "UnknownModelTypeError",
    "UnsupportedOpError",
    "apply_plan",
    "count_params",
    "native_available",
    "prune",
    "prune_checkpoint",
    "prune_group",
    "register_rule",
]
