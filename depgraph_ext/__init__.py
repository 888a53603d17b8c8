"""depgraph_ext: structural pruning of any PyTorch model, with a C++ core.

    import depgraph_ext as dx
    result = dx.prune(model, example_inputs, ratio=0.5)   # model is pruned in place

The pipeline, one way: graph/ (trace, rules, resolve: the DependencyGraph) -> pruning/
(importance, select, plan, validate, apply) -> io/ (plans, checkpoints); api.py and cli.py are
the facades. See docs/architecture.md.
"""

from .api import prune, prune_group
from .counting import count_params, count_params_and_macs
from .errors import (
    BackendUnavailableError,
    CheckpointError,
    CheckpointWriteError,
    ConfigMismatchWarning,
    DiskFullError,
    ExampleInputsWarning,
    FixedSizeWarning,
    FunctionChangingWarning,
    InternalError,
    InvalidArgumentError,
    MissingGradientsError,
    NonFiniteWeightsError,
    NoPrunableGroupsError,
    OpaqueOpWarning,
    OutputExistsError,
    PlanValidationError,
    PruningError,
    TraceError,
    UnknownModelTypeError,
    UnsupportedOpError,
    UnusedParametersWarning,
    VerificationError,
)
from .graph.blockers import Blocker
from .graph.dependency import DependencyGraph, Group, Member
from .graph.resolve import native_available
from .graph.rules import RuleContext, register_rule, unregister_rule
from .io.checkpoint import CheckpointResult, prune_checkpoint
from .io.plans import apply_plan
from .io.pretrained import SavedModel, from_pretrained, save_pretrained
from .pruning.attributes import PlannedModule, register_attributes
from .pruning.importance import (
    BNScaleImportance,
    FisherImportance,
    GroupImportance,
    Importance,
    LAMPImportance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
    collect_fisher,
)
from .pruning.options import PruneOptions
from .pruning.pruner import Pruner
from .pruning.routing import RoutingImportance, collect_routing
from .result import PruneResult
from .sparsity import GroupSparsity

__version__ = "0.1.0"

__all__ = [
    "BNScaleImportance",
    "BackendUnavailableError",
    "Blocker",
    "CheckpointError",
    "CheckpointResult",
    "CheckpointWriteError",
    "ConfigMismatchWarning",
    "DependencyGraph",
    "DiskFullError",
    "ExampleInputsWarning",
    "FisherImportance",
    "FixedSizeWarning",
    "FunctionChangingWarning",
    "Group",
    "GroupImportance",
    "GroupSparsity",
    "Importance",
    "InternalError",
    "InvalidArgumentError",
    "LAMPImportance",
    "MagnitudeImportance",
    "Member",
    "MissingGradientsError",
    "NoPrunableGroupsError",
    "NonFiniteWeightsError",
    "OpaqueOpWarning",
    "OutputExistsError",
    "PlanValidationError",
    "PlannedModule",
    "PruneOptions",
    "PruneResult",
    "Pruner",
    "PruningError",
    "RandomImportance",
    "RoutingImportance",
    "RuleContext",
    "SavedModel",
    "TaylorImportance",
    "TraceError",
    "UnknownModelTypeError",
    "UnsupportedOpError",
    "UnusedParametersWarning",
    "VerificationError",
    "apply_plan",
    "collect_fisher",
    "collect_routing",
    "count_params",
    "count_params_and_macs",
    "from_pretrained",
    "native_available",
    "prune",
    "prune_checkpoint",
    "prune_group",
    "register_attributes",
    "register_rule",
    "save_pretrained",
    "unregister_rule",
]
