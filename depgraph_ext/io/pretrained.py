"""Saving a pruned transformers model so that it loads again, with no pickle.

    info = dx.save_pretrained(model, "out/dir")      # info.plain: plain from_pretrained works
    model = dx.from_pretrained("out/dir", torch_dtype=torch.bfloat16, device="cuda")

The directory is what transformers' own ``save_pretrained`` writes (config.json, safetensors
shards, generation config), plus ``depgraph_ext.json``: the model's class, and what its config
cannot express, found by building the same class from the saved config (parameters on the
meta device, buffers real) and comparing: every tensor whose shape differs, every module
attribute whose value differs (a head dim derived from hidden / heads, a scaling factor, a
per-stage width), and the attention implementation a sub-model was built with where loading
would choose another (eager and sdpa differ in the last bits). Non-persistent buffers (rotary
frequencies ...) are saved as they are, in ``depgraph_ext_buffers.safetensors``. When nothing
differs, computed buffers included (Gemma's embedding scale follows the hidden size), the
directory is *plain*: ``AutoModel*.from_pretrained`` rebuilds it.

Loading builds the class from the config on the meta device, sets the recorded attributes and
shapes, allocates the tensors on the device and loads the weights into them; anything that does
not fit (a tensor of another shape, a missing or unexpected one, a missing shard, a config of
another model) is refused with a ``CheckpointError`` naming it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import CheckpointError, InvalidArgumentError
from ..pruning.configs import config_of, no_torch_init
from .layout import conversions_of, renamed, stacked_parameters

FORMAT = "depgraph_ext.pretrained/1"
META = "depgraph_ext.json"
BUFFERS = "depgraph_ext_buffers.safetensors"
_SIMPLE = (bool, int, float, str, type(None))
ALIGNMENT = 64  # bytes: the alignment of torch's CPU allocator


@dataclass(frozen=True)
class SavedModel:
    """What ``save_pretrained`` wrote. ``plain``: the config says everything, so plain
    transformers ``from_pretrained`` rebuilds the model; otherwise ``tensors`` (shapes) and
    ``attributes`` (module attribute values) are what only ``dx.from_pretrained`` restores."""

    directory: Path
    plain: bool
    tensors: dict[str, list[int]] = field(default_factory=dict)
    attributes: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        if self.plain:
            return (
                f"{self.directory}: plain transformers from_pretrained rebuilds this model "
                "(so does depgraph_ext.from_pretrained)"
            )
        what = list(self.tensors)[:3] + [f"{a['module']}.{a['attr']}" for a in self.attributes][:3]
        return (
            f"{self.directory}: load it with depgraph_ext.from_pretrained; its config "
            f"cannot express {len(self.tensors)} tensor shape(s) and {len(self.attributes)} "
            f"module attribute(s) ({', '.join(what)} ...)"
        )


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError("saving and loading pruned models needs transformers") from exc
    return transformers


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers = _transformers()
        logger = transformers.utils.logging
        level, bars = logger.get_verbosity(), logger.is_progress_bar_enabled()
        logger.set_verbosity_error()
        logger.disable_progress_bar()
        try:
            yield
        finally:
            logger.set_verbosity(level)
            if bars:
                logger.enable_progress_bar()


def _build_on_meta(cls, config) -> nn.Module:
    """``cls`` built from ``config`` on the meta device (no memory, no initialisation)."""
    with _quiet(), torch.device("meta"), no_torch_init():
        return cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)


@contextlib.contextmanager
def _parameters_on_meta():
    """Parameters go to the meta device as modules register them; buffers stay real, so the
    values a constructor computes from the config (an embedding scale, a position table) can
    be compared. Each parameter exists for a moment, uninitialised, before it moves."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _build_to_compare(cls, config) -> tuple[nn.Module, bool]:
    """``cls`` built from ``config`` with its parameters on the meta device and its buffers
    real, so that values a constructor computes can be compared (True); where that build
    fails, wholly on meta (False)."""
    try:
        with _quiet(), _parameters_on_meta(), no_torch_init():
            return (cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)), True
    except Exception:  # noqa: BLE001  (the meta build says why, if it fails too)
        return _build_on_meta(cls, config), False


def computed_buffers_differ(model: nn.Module, fresh: nn.Module) -> list[str]:
    """The non-persistent buffers (which loading computes from the config, not reads) whose
    values ``fresh``, built from the config with real buffers, does not share."""
    theirs = dict(fresh.named_buffers(remove_duplicate=False))
    differ = []
    for name, mine in model.named_buffers(remove_duplicate=False):
        if name.rpartition(".")[2] not in _non_persistent(model, name):
            continue
        other = theirs.get(name)
        if other is None or other.is_meta or other.shape != mine.shape:
            differ.append(name)
        elif not torch.equal(other.to(mine.dtype), mine.detach().cpu()):
            differ.append(name)
    return differ


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name (tied ones under each)."""
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(model.named_buffers(remove_duplicate=False))
    return out


def _plain_value(value):
    """A JSON value for a simple attribute (None when it is not simple)."""
    if isinstance(value, _SIMPLE):
        return {"value": value, "type": "scalar"}
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE) for v in value):
        return {"value": list(value), "type": type(value).__name__}
    if isinstance(value, torch.Size):
        return {"value": list(value), "type": "tuple"}
    return None


def _from_plain(entry):
    return tuple(entry["value"]) if entry["type"] == "tuple" else entry["value"]


def attention_of(module: nn.Module) -> str | None:
    config = getattr(module, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def _own_class(module: nn.Module) -> type:
    """A module's class, seen past torch's parametrizations (``weight_norm``'s
    ``ParametrizedConv1d``: a class made anew for every module it wraps, so two models built
    alike hold two such classes)."""
    if parametrize.is_parametrized(module):
        return type(module).__bases__[0]
    return type(module)


def differences(model: nn.Module):
    """(tensor shapes, module attributes, attention implementations, computed buffers) of
    ``model`` that a model built from its own config would not have: what the config cannot
    express. (The attention implementation of a sub-model is chosen when it is built and not
    saved with the config; eager and sdpa attention differ in the last bits. Computed buffers:
    the non-persistent ones whose values differ, None where they could not be built.)"""
    with _quiet():  # the config as loading reads it back (no sub-model's attention choice)
        config = type(model.config).from_dict(model.config.to_dict())
    try:
        fresh, buffers_real = _build_to_compare(type(model), config)
    except Exception as exc:  # noqa: BLE001  (whatever the class's constructor raises)
        cause = exc.__cause__ or exc
        raise CheckpointError(
            f"{type(model).__name__} cannot be built from its own config "
            f"({type(exc).__name__}: {' '.join(str(cause).split())[:300]}): saving and loading "
            "build the model from it, so the config must hold values its class accepts (was "
            "the config changed by hand?)"
        ) from exc
    mine, theirs = _tensors(model), _tensors(fresh)
    if mine.keys() != theirs.keys():
        missing = sorted(mine.keys() ^ theirs.keys())
        raise CheckpointError(
            f"{type(model).__name__} built from its config has other tensors than the model "
            f"({', '.join(missing[:4])} ...): the model was changed beyond pruning"
        )
    tensors = {n: list(t.shape) for n, t in mine.items() if t.shape != theirs[n].shape}
    fresh_modules = dict(fresh.named_modules(remove_duplicate=False))
    attributes, attention = [], {}
    for name, module in model.named_modules(remove_duplicate=False):
        other = fresh_modules.get(name)
        if other is None:
            continue
        if attention_of(module) != attention_of(other) and attention_of(module) is not None:
            attention[name] = attention_of(module)
        if _own_class(other) is not _own_class(module):
            raise CheckpointError(
                f"{name or 'the model'} is a {type(module).__name__}, but a "
                f"{type(other).__name__} in a model built from its config: the model replaced "
                "its own modules after it was built (BigBird does so on short inputs, in "
                "set_attention_type); set them back before saving"
            )
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr == "training":
                continue
            plain = _plain_value(value)
            if plain is None or not hasattr(other, attr):
                continue
            built = _plain_value(getattr(other, attr))
            # (a tuple the config held comes back a list from config.json: transformers'
            # own round trip, pruned or not, and the same sizes)
            if built is None or built["value"] != plain["value"]:
                attributes.append({"module": name, "attr": attr, **plain})
    computed = computed_buffers_differ(model, fresh) if buffers_real else None
    return tensors, attributes, attention, computed


def plain_meta(model: nn.Module) -> dict:
    """The depgraph_ext.json of a model whose config says everything."""
    return {
        "format": FORMAT,
        "class": type(model).__name__,
        "module": type(model).__module__,
        "model_type": getattr(model.config, "model_type", None),
        "transformers_version": _transformers().__version__,
        "plain": True,
        "tensors": {},
        "attributes": [],
        "non_persistent_buffers": [],
    }


def save_pretrained(model: nn.Module, directory, **kwargs) -> SavedModel:
    """Save a (pruned) transformers model into ``directory`` so that
    :func:`from_pretrained` rebuilds it bit for bit; ``kwargs`` go to the model's own
    ``save_pretrained`` (``max_shard_size``, ...). Returns what was written, and whether plain
    transformers ``from_pretrained`` loads it too (``SavedModel.plain``)."""
    transformers = _transformers()
    if not isinstance(model, transformers.PreTrainedModel) or config_of(model) is None:
        raise InvalidArgumentError(
            f"save_pretrained takes a transformers model, not {type(model).__name__}; keep "
            "other models with torch.save or a plan (result.save_plan)"
        )
    cls_name = type(model).__name__
    if _model_class(transformers, cls_name, type(model).__module__) is not type(model):
        raise InvalidArgumentError(
            f"{cls_name} is not a class of transformers; from_pretrained could not find it again"
        )
    try:
        model.config.validate()
    except Exception as exc:
        raise CheckpointError(
            f"the model's config does not pass its own validation ({exc.__cause__ or exc}); "
            "transformers would refuse to save or load it"
        ) from exc
    tensors, attributes, attention, computed = differences(model)
    # Tensors transformers leaves out of its files (sinusoidal position tables it recomputes
    # from the config on loading) hold what pruning kept: they are saved with the buffers,
    # and only this package's loader puts them back.
    unsaved = _unsaved_tensors(model)
    # plain: and the buffers loading computes come out as the model has them
    plain = not tensors and not attributes and not unsaved and not attention and computed == []
    directory = Path(directory)
    buffers = {
        n: b
        for n, b in model.named_buffers(remove_duplicate=False)
        if n.rpartition(".")[2] in _non_persistent(model, n)
    }
    with _quiet():
        if plain:
            model.save_pretrained(directory, **kwargs)
        else:  # in-memory tensor names: no conversion that assumes the config's sizes
            model.save_pretrained(directory, save_original_format=False, **kwargs)
    buffers.update(unsaved)
    if buffers:
        from safetensors.torch import save_file

        save_file(
            {n: b.detach().contiguous().cpu() for n, b in buffers.items()}, str(directory / BUFFERS)
        )
    meta = plain_meta(model) | {
        "plain": plain,
        "tensors": tensors,
        "attributes": attributes,
        "non_persistent_buffers": sorted(buffers),  # and the tensors the files leave out
        "attention": attention,
    }
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    return SavedModel(directory, plain, tensors, attributes)


def _unsaved_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and persistent buffers transformers' save leaves out
    (``_keys_to_ignore_on_save``), by name."""
    ignored = getattr(model, "_keys_to_ignore_on_save", None) or ()
    if not ignored:
        return {}
    state = model.state_dict()
    return {n: t for n, t in state.items() if any(n == k or re.search(k, n) for k in ignored)}


def _model_class(transformers, name: str, module: str | None):
    """A model class of transformers by name: exported, or defined in ``module`` (one of
    transformers' own modules: a vision tower, say); None otherwise."""
    cls = getattr(transformers, name, None)
    if cls is None and isinstance(module, str) and module.startswith("transformers."):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    return cls


def _non_persistent(model: nn.Module, name: str) -> set[str]:
    module_name = name.rpartition(".")[0]
    module = model.get_submodule(module_name) if module_name else model
    return set(module._non_persistent_buffers_set)


def _read_meta(directory: Path) -> dict:
    path = directory / META
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no {META}: not saved by "
            "depgraph_ext.save_pretrained (plain from_pretrained may load it)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a depgraph_ext file (expected format {FORMAT!r})")
    return meta


def _state_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{index} is not a shard index: {exc}") from exc
        files = [directory / n for n in names]
    else:
        files = [directory / "model.safetensors"]
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"the weights file {f.name} is missing from {directory}")
    return files


def from_pretrained(directory, torch_dtype: torch.dtype | None = None, device=None) -> nn.Module:
    """Load a model written by :func:`save_pretrained`: built from its config on the meta
    device, the recorded shapes and attributes set, the weights loaded (cast to
    ``torch_dtype`` when given) on ``device`` (the CPU by default). Returns it in eval mode."""
    transformers = _transformers()
    directory = Path(directory)
    meta = _read_meta(directory)
    cls = _model_class(transformers, str(meta.get("class")), meta.get("module"))
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(
            f"{directory / META} names {meta.get('class')!r}, which is not a "
            f"model class of transformers {transformers.__version__}"
        )
    device = torch.device(device) if device is not None else torch.device("cpu")
    try:
        described = json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{directory / 'config.json'} is missing or not JSON: {exc}") from exc
    # The model type saved with the model (a class may serve several: ExaONE's config builds
    # a LlamaForCausalLM); files of older saves name none: the class's own.
    saved_type = meta.get("model_type") or cls.config_class.model_type
    if described != saved_type:
        raise CheckpointError(
            f"{directory / 'config.json'} describes a {described!r} model, not the "
            f"{saved_type!r} of {cls.__name__} ({cls.config_class.__name__})"
        )
    config_class = (
        cls.config_class
        if described == cls.config_class.model_type
        else type(transformers.AutoConfig.for_model(described))
    )
    try:
        with _quiet():
            config = config_class.from_pretrained(directory)
    except Exception as exc:
        raise CheckpointError(
            f"{directory / 'config.json'} is not a valid {config_class.__name__}: {exc}"
        ) from exc
    if type(config) is not config_class:
        raise CheckpointError(
            f"{directory / 'config.json'} describes a {type(config).__name__},"
            f" not the {config_class.__name__} of {cls.__name__}"
        )
    if meta.get("plain"):  # written by prune_checkpoint, or a prune the config says all of
        model = _plain_load(cls, directory, torch_dtype, device)
        if meta.get("non_persistent_buffers"):
            _restore_buffers(model, directory, meta, device)
        _aligned(model)
        return model
    model = _build_on_meta(cls, config)
    modules = dict(model.named_modules(remove_duplicate=False))
    for a in meta.get("attributes", []):
        module = modules.get(a.get("module"))
        if module is None or not hasattr(module, a.get("attr", "")):
            raise CheckpointError(
                f"{META} sets {a.get('module')}.{a.get('attr')}, which {cls.__name__} does not have"
            )
        setattr(module, a["attr"], _from_plain(a))
    for name, implementation in meta.get("attention", {}).items():
        module = modules.get(name)
        if getattr(module, "config", None) is None or not isinstance(implementation, str):
            raise CheckpointError(
                f"{META} sets the attention of {name}, which {cls.__name__} does not have"
            )
        module.config._attn_implementation = implementation
    placeholders = _tensors(model)
    for name, shape in meta.get("tensors", {}).items():
        old = placeholders.get(name)
        if old is None:
            raise CheckpointError(
                f"{META} gives a shape for {name}, which {cls.__name__} does not have"
            )
        _replace(model, name, torch.empty(shape, dtype=old.dtype, device="meta"), old)
    with contextlib.suppress(Exception):  # the tied weights of its config, as on loading
        model.tie_weights()
    tied = _tied_names(model)  # before allocation, which unties them
    model.to_empty(device=device)
    _load_weights(model, directory, meta, device, tied)
    if tied:
        model.tie_weights()
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()


def _plain_load(cls, directory: Path, torch_dtype, device) -> nn.Module:
    """A directory whose config says everything: transformers' own loading (it computes the
    non-persistent buffers), the weights in their saved dtype unless one is asked for."""
    try:
        with _quiet():
            model = cls.from_pretrained(directory, dtype=torch_dtype or "auto")
    except Exception as exc:
        raise CheckpointError(
            f"{cls.__name__} cannot be loaded from {directory}: {type(exc).__name__}: {exc}"
        ) from exc
    return model.to(device).eval()


def _restore_buffers(model: nn.Module, directory: Path, meta: dict, device) -> None:
    """The saved non-persistent buffers, over what loading computed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / BUFFERS
    if not path.is_file():
        raise CheckpointError(f"{BUFFERS} is missing from {directory}")
    try:
        saved = load_file(str(path), device=str(device))
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not valid safetensors: {exc}") from exc
    targets = _tensors(model)
    for name in meta["non_persistent_buffers"]:
        if name not in saved or name not in targets or saved[name].shape != targets[name].shape:
            raise CheckpointError(f"{BUFFERS} does not hold {name} as the model has it")
        _replace(model, name, saved[name], targets[name])


def _replace(model: nn.Module, name: str, new: torch.Tensor, old: torch.Tensor) -> None:
    module_name, _, key = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if key in module._parameters:
        module._parameters[key] = nn.Parameter(new, requires_grad=old.requires_grad)
    else:
        module._buffers[key] = new


def _as_model_names(model: nn.Module, state: dict, targets: dict) -> dict:
    """The saved tensors under the model's names: transformers' renamings and parameters
    stacked from one tensor per expert, as its own loading applies them (keys it does not
    know are left as they are, for the caller to refuse)."""
    if state.keys() <= targets.keys():
        return state
    renamings, converters = conversions_of(model)
    out, rest = {}, []
    for key, t in state.items():
        name = renamed(key, renamings)
        if name in targets:
            out[name] = t
        else:
            rest.append(key)
    wanted = {n: tuple(t.shape) for n, t in targets.items() if n not in out}
    stacked, expert_keys = stacked_parameters(rest, renamings, converters, wanted)
    for name, s in stacked.items():
        out[name] = torch.stack([torch.cat([state[k] for k in parts], 0) for parts in s.keys])
    out.update({k: state[k] for k in rest if k not in expert_keys})
    return out


def _load_weights(model: nn.Module, directory: Path, meta: dict, device, tied: set[str]) -> None:
    """Every saved tensor put in place as it was saved (same dtype, bit for bit), checked
    against the model's names and shapes first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    try:
        for f in _state_files(directory):
            state.update(load_file(str(f), device=str(device)))
        buffers = directory / BUFFERS
        if meta.get("non_persistent_buffers"):
            if not buffers.is_file():
                raise CheckpointError(f"{BUFFERS} is missing from {directory}")
            state.update(load_file(str(buffers), device=str(device)))
    except SafetensorError as exc:
        raise CheckpointError(
            f"a weights file of {directory} is not valid safetensors: {exc}"
        ) from exc
    targets = _tensors(model)
    state = _as_model_names(model, state, targets)
    unexpected = sorted(state.keys() - targets.keys())
    if unexpected:
        raise CheckpointError(
            f"the weights hold tensors the model does not have: {', '.join(unexpected[:5])}"
        )
    for name, t in state.items():
        if t.shape != targets[name].shape:
            raise CheckpointError(
                f"{name} has shape {tuple(t.shape)} in the weights and "
                f"{tuple(targets[name].shape)} in the model: the files do not belong together"
            )
    missing = sorted(n for n in targets.keys() - state.keys() if n not in tied)
    if missing:
        raise CheckpointError(
            f"the weights lack {len(missing)} tensor(s) of the model: {', '.join(missing[:5])}"
        )
    for name, t in state.items():
        _replace(model, name, t, targets[name])
    _aligned(model)


def _aligned(model: nn.Module) -> None:
    """Tensors on the CPU moved to memory aligned as torch allocates it where they are not.
    A weights file's buffer holds tensors at any offset; CPU kernels vectorise by the data's
    alignment, and the last bits of their sums follow it: a reloaded model computes bit for
    bit what the saved one did only on aligned memory (a depthwise conv on one thread did
    not)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type == "cpu" and t.data_ptr() % ALIGNMENT:
                t.data = t.data.clone()


def _tied_names(model: nn.Module) -> set[str]:
    """Names under which a tensor shared with another name is saved only once."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, t in _tensors(model).items():
        if id(t) in seen:
            tied.add(name)
            tied.add(seen[id(t)])
        else:
            seen[id(t)] = name
    return tied
