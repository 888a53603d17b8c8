"""Plans users can keep: ``result.save_plan(path)`` writes JSON (no pickle); ``apply_plan(model,
path)`` replays it on a freshly built original model, reproducing the pruned model bit for bit
(tensors, module attributes and a transformers config).

Format ``depgraph_ext.plan/2``: ``tensors`` holds every ``state_dict()`` key whose tensor
changes (its shape before and the kept indices of each pruned dim; a tied name also says
``"tied_to"``, the name it shares its tensor with), ``non_persistent`` the changed buffers
``state_dict()`` leaves out; ``attributes`` and ``config`` the changes that follow. Plans of
format 1 (one list of tensors, tied names left out) are read too."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InvalidArgumentError, PruningError
from ..pruning.apply import apply_changes
from ..pruning.attributes import AttributeUpdate
from ..pruning.configs import ConfigUpdate, updated_config

FORMAT = "depgraph_ext.plan/2"
FORMATS = ("depgraph_ext.plan/1", FORMAT)  # what apply_plan reads


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _entries(result, plan) -> dict:
    out = {}
    for name, dims in plan.items():
        out[name] = {
            "shape": list(result.shapes_before[name]),
            "kept": {str(d): kept.tolist() for d, kept in dims.items()},
        }
        if name in result.tied:
            out[name]["tied_to"] = result.tied[name]
    return out


def plan_to_dict(result) -> dict:
    return {
        "format": FORMAT,
        "tensors": _entries(result, result.plan),
        "non_persistent": _entries(result, result.non_persistent),
        "attributes": [
            {"module": u.module, "attr": u.attr, "old": _plain(u.old), "new": _plain(u.new)}
            for u in result.attribute_updates
        ],
        "config": [
            {"field": u.field, "old": _plain(u.old), "new": _plain(u.new)}
            for u in result.config_updates
        ],
        "params_before": result.params_before,
        "params_after": result.params_after,
    }


def save_plan(result, path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(plan_to_dict(result)))
    return path


def load_plan(path_or_dict) -> dict:
    if isinstance(path_or_dict, dict):
        data = path_or_dict
    else:
        try:
            data = json.loads(Path(path_or_dict).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read a plan from {path_or_dict}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") not in FORMATS:
        raise InvalidArgumentError(f"not a depgraph_ext plan (expected format {FORMAT!r})")
    return data


def apply_plan(model: torch.nn.Module, plan) -> dict:
    """Replay a saved plan on ``model`` (an unpruned original). Everything is checked first:
    every tensor must exist with its original shape and every attribute hold its original
    value; if not, a PruningError names it and the model is untouched."""
    data = load_plan(plan)
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors |= dict(model.named_buffers(remove_duplicate=False))
    modules = dict(model.named_modules())
    tensor_plan = {}
    planned: dict[int, str] = {}  # tensors the plan slices, by identity
    entries = data["tensors"] | data.get("non_persistent", {})
    for name, entry in entries.items():
        t = tensors.get(name)
        if t is None:
            raise PruningError(f"the plan prunes {name}, which this model does not have")
        tied_to = entry.get("tied_to")
        if tied_to is not None:  # the same tensor as another name of the plan: sliced once
            if tensors.get(tied_to) is not t or tied_to not in entries:
                raise PruningError(
                    f"the plan was made for a model whose {name} is tied to {tied_to}, and "
                    "in this model it is not"
                )
            continue
        if id(t) in planned:
            raise PruningError(
                f"{name} is the same tensor as {planned[id(t)]} in this model, and the plan "
                "was made for a model where they are two"
            )
        if list(t.shape) != entry["shape"]:
            raise PruningError(
                f"{name} has shape {tuple(t.shape)}, the plan was made for "
                f"{tuple(entry['shape'])}: apply it to the original model"
            )
        dims = {}
        for d, kept in entry["kept"].items():
            index = torch.tensor(kept, dtype=torch.long)
            if index.numel() and (index.min() < 0 or index.max() >= t.shape[int(d)]):
                raise PruningError(f"the plan's indices for {name} dim {d} are out of range")
            dims[int(d)] = index
        tensor_plan[name] = dims
        planned[id(t)] = name
    updates = []
    for u in data["attributes"]:
        m = modules.get(u["module"])
        if m is None or not hasattr(m, u["attr"]):
            raise PruningError(
                f"the plan sets {u['module']}.{u['attr']}, which this model does not have"
            )
        current = getattr(m, u["attr"])
        if _plain(current) != u["old"]:
            raise PruningError(
                f"{u['module'] or '<root>'}.{u['attr']} is {current!r}, the plan "
                f"was made for {u['old']!r}"
            )
        new = tuple(u["new"]) if isinstance(current, tuple) else u["new"]
        updates.append(AttributeUpdate(u["module"], u["attr"], current, new))
    config = getattr(model, "config", None)
    config_updates = [ConfigUpdate(u["field"], u["old"], u["new"]) for u in data["config"]]
    if config_updates and config is None:
        raise PruningError("the plan updates a config, and this model has none")
    give_config = updated_config(model, config_updates)
    apply_changes(model, tensor_plan, updates, tensors=tensors)
    give_config()
    return tensor_plan
