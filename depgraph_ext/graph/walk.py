"""One walk of a model, shared by every stage of a pipeline."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError


def _walk(model: torch.nn.Module):
    """(``named_modules()`` as a list, the unique parameters and buffers by canonical name,
    every alias of a shared one) in one walk: the modules of every path in
    ``named_modules(remove_duplicate=False)``'s order (the order ``named_parameters`` and
    ``named_buffers`` list tensors in), each module kept at its first path (a shared module's
    later paths add only the names of its tensors)."""
    modules: list[tuple[str, torch.nn.Module]] = []
    seen_modules: set[int] = set()
    named_params: list[tuple[str, torch.Tensor]] = []
    named_buffers: list[tuple[str, torch.Tensor]] = []
    stack = [("", model)]
    while stack:
        prefix, m = stack.pop()
        if id(m) not in seen_modules:
            seen_modules.add(id(m))
            modules.append((prefix, m))
        dot = prefix + "." if prefix else ""
        named_params += [(dot + k, t) for k, t in m._parameters.items() if t is not None]
        named_buffers += [(dot + k, t) for k, t in m._buffers.items() if t is not None]
        stack += [(dot + k, c) for k, c in reversed(m._modules.items()) if c is not None]
    params: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[int, str] = {}
    for store, named in ((params, named_params), (buffers, named_buffers)):
        for name, t in named:
            if id(t) in seen:
                aliases[name] = seen[id(t)]
            else:
                seen[id(t)] = name
                store[name] = t
    return modules, params, buffers, aliases


@dataclass(frozen=True)
class ModelWalk:
    """One walk of a model for a whole pipeline: its modules (``named_modules`` order, each
    once), its parameters and buffers by canonical name and the aliases of shared ones (as
    ``_walk``). Valid until the model changes (a DependencyGraph takes one, and goes
    stale when its plan is applied); each stage would otherwise walk the model again."""

    modules: list[tuple[str, torch.nn.Module]]
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    aliases: dict[str, str]

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelWalk:
        if not isinstance(model, torch.nn.Module):
            raise InvalidArgumentError(
                f"model must be a torch.nn.Module, not {type(model).__name__}"
            )
        modules, params, buffers, aliases = _walk(model)
        checked: set[type] = set()  # (what is refused below is decided by the class)
        for name, m in modules:
            if type(m) in checked:
                continue
            checked.add(type(m))
            where = f"its module {name!r}" if name else "the model"
            if isinstance(m, torch.jit.ScriptModule):
                raise InvalidArgumentError(
                    f"{where} is TorchScript (torch.jit.script or torch.jit.trace): its "
                    "compiled code runs without the Python a trace follows, so the sizes it "
                    "reads cannot be seen; prune the Python module, then script the pruned one"
                )
            wrapper = _distributed_wrapper(m)
            if wrapper is not None:
                then = (
                    "prune the model before fully_shard, the same way on every rank"
                    if wrapper == "FSDPModule"
                    else "prune the module it wraps (.module), the same way on every rank, "
                    "then wrap the pruned module anew (a wrapper built before the prune no "
                    "longer trains it)"
                )
                raise InvalidArgumentError(
                    f"{where} is a {wrapper}, made for distributed training: it holds "
                    "gradient buckets or shards of its parameters' sizes, made when it was "
                    f"built, and synchronizes the ranks as it runs (a trace would too); {then}"
                )
        lazy = [n for n, t in (params | buffers).items() if torch.nn.parameter.is_lazy(t)]
        if lazy:
            raise InvalidArgumentError(
                f"{lazy[0]} is not initialized yet (a lazy module's, nn.LazyLinear, "
                f"nn.LazyConv2d ...{f'; {len(lazy) - 1} more' if len(lazy) > 1 else ''}): its "
                "shape is unknown until the model runs once; run model(inputs) first, then prune"
            )
        return cls(modules, params, buffers, aliases)

    @functools.cached_property
    def modules_by_name(self) -> dict[str, torch.nn.Module]:
        """``modules`` as a dict (a module reached by more than one path: under its first)."""
        return dict(self.modules)


def _distributed_wrapper(module: torch.nn.Module) -> str | None:
    """The name of the distributed-training wrapper ``module`` is (None: it is none):
    DistributedDataParallel, or FSDP's (looked up only where FSDP was imported)."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return "DistributedDataParallel"
    fsdp = sys.modules.get("torch.distributed.fsdp")
    for name in ("FullyShardedDataParallel", "FSDPModule"):
        cls = getattr(fsdp, name, None)
        if isinstance(cls, type) and isinstance(module, cls):
            return name
    return None


def non_persistent(walk: ModelWalk) -> set[str]:
    """The buffers ``state_dict`` leaves out (a module's non-persistent ones), by name."""
    return {
        f"{name}.{key}" if name else key
        for name, m in walk.modules
        for key in m._non_persistent_buffers_set
    }
