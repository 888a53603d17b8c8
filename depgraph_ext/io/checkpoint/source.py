"""The source of a checkpoint pruning: config.json, the shard index and every shard's header,
checked against each other, and the model they describe built on the meta device."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import CheckpointError, UnknownModelTypeError
from ..safetensors_io import Header, SafetensorsFormatError, read_header

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
CONFIG = "config.json"
EXAMPLE_TOKENS = 16  # tokens of the example input the model is traced on


@dataclass
class Source:
    path: Path
    config: dict
    shards: list[Header]
    index: dict | None
    location: dict[str, tuple[int, str]]  # tensor key -> (shard number, key)

    def entry(self, key: str):
        shard, _ = self.location[key]
        return self.shards[shard].entries[key]


def open_source(src) -> Source:
    """Read config.json, the index and every shard's header; refuse anything inconsistent."""
    path = Path(src)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    config_path = path / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG}: not a transformers checkpoint")
    config = _read_json(config_path, "the model config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object")
    index = None
    if (path / INDEX).is_file():
        index = _read_json(path / INDEX, "the shard index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CheckpointError(f"{path / INDEX} has no weight_map of tensor name -> file")
        files = sorted(set(weight_map.values()))
    elif (path / SINGLE).is_file():
        weight_map, files = None, [SINGLE]
    else:
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        hint = (
            f" (found {', '.join(others)}: only safetensors checkpoints are pruned; save "
            "with save_pretrained(..., safe_serialization=True))"
            if others
            else ""
        )
        raise CheckpointError(f"{path} has neither {INDEX} nor {SINGLE}{hint}")
    shards = []
    for name in files:
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise CheckpointError(f"shard {name} listed in {INDEX} is missing from {path}")
        try:
            shards.append(read_header(file))
        except SafetensorsFormatError as exc:
            raise CheckpointError(f"malformed shard: {exc}") from exc
    location: dict[str, tuple[int, str]] = {}
    for i, header in enumerate(shards):
        for key in header.entries:
            if key in location:
                raise CheckpointError(
                    f"tensor {key} is stored in both {files[location[key][0]]} and {files[i]}"
                )
            location[key] = (i, key)
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in location or files[location[key][0]] != name:
                raise CheckpointError(f"{INDEX} puts {key} in {name}, which does not hold it")
    return Source(path, config, shards, index, location)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} ({what}) is not valid JSON: {exc}") from exc


def meta_model(source: Source):
    """The checkpoint's model built from its config on the meta device (no weight memory)."""
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError("pruning a checkpoint needs transformers installed") from exc
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, AutoModelForCausalLM

    model_type = source.config.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{source.path / CONFIG} has no model_type")
    if model_type not in CONFIG_MAPPING:
        raise UnknownModelTypeError(
            f"{source.path / CONFIG} has model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know (custom code is not run)"
        )
    try:
        config = AutoConfig.from_pretrained(source.path)
    except Exception as exc:  # transformers' own validation of the fields
        raise CheckpointError(
            f"{source.path / CONFIG} is not a valid {model_type} config: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    classes = [getattr(transformers, a, None) for a in (config.architectures or [])]
    candidates = [c for c in classes if c is not None]
    candidates += [AutoModelForCausalLM.from_config, AutoModel.from_config]
    errors = []
    for build in candidates:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build(config)
            return model.eval()
        except Exception as exc:  # the next candidate
            errors.append(f"{getattr(build, '__qualname__', build)}: {exc}")
    raise CheckpointError(
        f"no model class builds from {source.path / CONFIG}: " + "; ".join(errors)
    )


def example_inputs(model):
    """Inputs the model is traced on (fake tensors: no value matters, only shapes)."""
    name = getattr(model, "main_input_name", "input_ids")
    config = model.config
    if name == "input_ids":
        return {"input_ids": torch.zeros(1, EXAMPLE_TOKENS, dtype=torch.long)}
    if name == "pixel_values" and hasattr(config, "image_size"):
        size = config.image_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        return {"pixel_values": torch.zeros(1, getattr(config, "num_channels", 3), *size)}
    raise CheckpointError(
        f"{type(model).__name__} takes {name!r} inputs, which checkpoint "
        "pruning cannot make up; load it and use depgraph_ext.prune"
    )
