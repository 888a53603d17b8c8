"""Plans users can keep: ``result.save_plan(path)`` writes JSON (no pickle); ``apply_plan(model,
path)`` replays it on a freshly built original model, reproducing the pruned model bit for bit
(tensors, module attributes and a transformers config)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InvalidArgumentError, PruningError
from ..pruning.apply import apply_changes
from ..pruning.attributes import AttributeUpdate
from ..pruning.configs import ConfigUpdate, apply_config_updates

FORMAT = "depgraph_ext.plan/1"


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def plan_to_dict(result) -> dict:
    return {
        "format": FORMAT,
        "tensors": {
            name: {
                "shape": list(result.shapes_before[name]),
                "kept": {str(d): kept.tolist() for d, kept in dims.items()},
            }
            for name, dims in result.plan.items()
        },
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
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidArgumentError(f"not a depgraph_ext plan (expected format {FORMAT!r})")
    return data


def apply_plan(model: torch.nn.Module, plan) -> dict:
    """Replay a saved plan on ``model`` (an unpruned original). Everything is checked first:
    every tensor must exist with its original shape and every attribute hold its original
    value; if not, a PruningError names it and the model is untouched."""
    data = load_plan(plan)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    modules = dict(model.named_modules())
    tensor_plan = {}
    for name, entry in data["tensors"].items():
        t = tensors.get(name)
        if t is None:
            raise PruningError(f"the plan prunes {name}, which this model does not have")
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
    apply_changes(model, tensor_plan, updates)
    apply_config_updates(model, config_updates)
    return tensor_plan
