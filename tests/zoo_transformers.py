"""A zoo of small random-weight ``transformers`` models, built generically and offline.

Not a test file: a helper for sweeps and tests that want "every architecture transformers has".

``model_types()`` lists the model types of ``transformers.CONFIG_MAPPING``; ``build(t)`` returns a
:class:`ZooModel` (a tiny model in eval mode plus keyword inputs that run it) or raises
:class:`Unbuildable` with a short reason. The config is derived from the type's default config by
shrinking whichever size fields it has (layers, widths, heads, vocabulary, experts, image size),
keeping the shapes consistent, so every model builds in a blink and runs a forward well under a
second. Nothing is downloaded: the hub is switched offline and pretrained backbones are refused.

This module does not import depgraph_ext.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

MAX_PARAMS = 5_000_000
MAX_FORWARD_S = 3.0
BATCH, SEQ = 2, 8
VOCAB = 256
HIDDEN = 64
INTERMEDIATE = 128
HEADS = 4
KV_HEADS = 2
LAYERS = 2
IMAGE = 32
PATCH = 8

__all__ = [
    "ZooModel",
    "Unbuildable",
    "model_types",
    "build",
    "TASK_HEADS",
    "MAX_PARAMS",
    "MAX_FORWARD_S",
]

# Task heads ``build(t, head=...)`` puts on a model type instead of its default class: the
# auto mapping each is taken from. A sequence classifier pools the last token that is not
# padding (found from the ids, a decision of the data), a token classifier maps every
# position, a span head splits its logits into start and end.
TASK_HEADS = {
    "seq-cls": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "token-cls": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "qa": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
}


class Unbuildable(Exception):
    """The generic recipe cannot build and run this model type offline (the message says why)."""


@dataclasses.dataclass
class ZooModel:
    model_type: str
    model: torch.nn.Module
    inputs: dict[str, Any]
    task: str  # "causal-lm", "seq2seq", "base", "vision", "vision-base", "multimodal", a head
    config: Any
    composite: bool = False  # the config has sub-configs (e.g. a VLM run on text only)
    deterministic: bool = True  # two forwards under different seeds give the same outputs

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _transformers():
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return transformers


def model_types() -> list[str]:
    """The model types of ``transformers.CONFIG_MAPPING``, sorted."""
    return sorted(_transformers().CONFIG_MAPPING.keys())


# --------------------------------------------------------------------------------------------
# shrinking a config


_LAYERS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
    "encoder_layers",
    "decoder_layers",
    "num_encoder_layers",
    "num_decoder_layers",
    "decoder_num_layers",
    "num_text_layers",
    "num_vision_layers",
    "text_num_layers",
    "vision_num_layers",
    "num_self_attention_layers",
    "num_cross_attention_layers",
    "num_decoder_blocks",
    "encoder_num_layers",
    "num_local_layers",
    "num_global_layers",
    "n_text_layer",
    "num_hidden_layers_decoder",
    "encoder_depth",
    "decoder_depth",
    "depth",
)
_HIDDEN = (
    "hidden_size",
    "d_model",
    "n_embd",
    "dim",
    "embed_dim",
    "n_embed",
    "d_embed",
    "emb_dim",
    "model_dim",
    "word_embed_proj_dim",
    "encoder_hidden_size",
    "decoder_hidden_size",
    "text_hidden_size",
    "vision_hidden_size",
    "hidden_dim_model",
)
_EMBED_SIZE = (
    "embedding_size",
    "embedding_dim",
    "projection_dim",
    "proj_dim",
    "projection_size",
    "d_latents",
    "vocab_embed_dim",
)
_INTERMEDIATE = (
    "intermediate_size",
    "ffn_dim",
    "n_inner",
    "d_ff",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "ffn_hidden_size",
    "mlp_dim",
    "inner_dim",
    "ff_dim",
    "dim_feedforward",
    "encoder_intermediate_size",
    "decoder_intermediate_size",
    "feed_forward_size",
    "d_inner",
    "ffn_size",
    "encoder_ffn_size",
    "decoder_ffn_size",
    "mlp_hidden_size",
    "hidden_act_dim",
    "dense_intermediate_size",
    "intermediate_size_mlp",
)
_MOE_INTERMEDIATE = (
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "expert_intermediate_size",
    "moe_ffn_hidden_size",
    "moe_dim",
    "shared_intermediate_size",
    "expert_hidden_size",
)
_HEADS = (
    "num_attention_heads",
    "n_head",
    "num_heads",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "n_heads",
    "num_attention_heads_decoder",
    "decoder_num_attention_heads",
    "encoder_num_attention_heads",
    "num_q_heads",
)
_KV_HEADS = (
    "num_key_value_heads",
    "num_kv_heads",
    "n_kv_heads",
    "multi_query_group_num",
    "n_head_kv",
    "num_key_value_heads_decoder",
    "encoder_num_key_value_heads",
    "decoder_num_key_value_heads",
)
_HEAD_DIM = (
    "head_dim",
    "d_kv",
    "attention_head_dim",
    "kv_channels",
    "d_head",
    "attention_head_size",
    "v_head_dim",
    "qk_nope_head_dim",
    "global_head_dim",
)
_MLA = {"qk_rope_head_dim": 8, "q_lora_rank": 32, "kv_lora_rank": 32, "qk_head_dim": 24}
_MAXPOS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_seq_len",
    "max_sequence_length",
    "max_target_positions",
    "max_source_positions",
    "max_text_positions",
    "max_decoder_position_embeddings",
    "max_encoder_position_embeddings",
)
_NUM_EXPERTS = (
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "moe_num_experts",
    "num_routed_experts",
    "n_experts",
    "num_moe_experts",
    "expert_num",
)
_TOP_K = (
    "num_experts_per_tok",
    "top_k",
    "moe_topk",
    "num_experts_per_token",
    "moe_k",
    "router_topk",
    "num_selected_experts",
    "moe_top_k",
    "n_activated_experts",
    "num_activated_experts",
    "experts_per_token",
)
_ONE = (
    "n_shared_experts",
    "num_shared_experts",
    "n_group",
    "topk_group",
    "moe_n_group",
    "moe_topk_group",
    "num_expert_group",
    "n_groups",
    "ngroups",
    "mamba_n_groups",
)
# the few configs whose layer structure is nested beyond what the generic rules can cut
_SPECIAL: dict[str, dict[str, Any]] = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    # Neural audio codecs: their codebooks and decoders are what the generic fields miss
    "encodec": {"num_filters": 8, "codebook_size": 64, "codebook_dim": 32, "hidden_size": 32},
    "dac": {
        "encoder_hidden_size": 8,
        "decoder_hidden_size": 64,
        "hidden_size": 32,
        "codebook_size": 64,
        "n_codebooks": 2,
    },
}
_IMAGE = ("image_size", "img_size", "input_size_image")
_PATCH = ("patch_size",)
_PER_STAGE_DEPTHS = (
    "depths",
    "encoder_depths",
    "decoder_depths",
    "num_layers_per_stage",
    "stage_depths",
    "layer_depths",
    "blocks",
)
_PER_STAGE_HEADS = (
    "num_heads",
    "num_attention_heads",
    "attention_heads",
    "heads",
    "encoder_num_heads",
    "decoder_num_heads",
)
_PER_STAGE_WIDTHS = (
    "hidden_sizes",
    "embed_dims",
    "dims",
    "embed_dim",
    "hidden_size",
    "channels",
    "widths",
    "stage_dims",
    "encoder_hidden_sizes",
    "num_channels_per_stage",
    "out_channels_per_stage",
    "stem_channels_list",
)


def _fields(cls) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls) if f.init}
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs", "args"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) for x in v)


def _layer_count(cfg) -> int | None:
    for name in ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers"):
        v = getattr(cfg, name, None)
        if _is_int(v):
            return v
    return None


def _safe_attrs(cfg, names) -> dict[str, Any]:
    out = {}
    for n in names:
        try:
            out[n] = getattr(cfg, n)
        except Exception:  # noqa: BLE001  (e.g. per-layer attributes that refuse a global read)
            continue
    return out


_TIE_WORDS = ("size", "dim", "hidden", "channels", "width", "embd", "embed")
_COEFFICIENTS = (
    "width_coefficient",
    "depth_coefficient",
    "width_multiplier",
    "depth_multiplier",
    "width_mult",
    "depth_mult",
)
_CHANNEL_LISTS = ("channels", "filters", "_dims", "widths", "_sizes")


def _old_hidden(have) -> int | None:
    for n in _HIDDEN:
        if _is_int(have.get(n)):
            return have[n]
    return None


def _old_head_dim(have) -> int | None:
    if _is_int(have.get("head_dim")):
        return have["head_dim"]
    h = _old_hidden(have)
    for n in _HEADS:
        if _is_int(have.get(n)) and h:
            return h // have[n]
    return None


def _scaled_rope(rope, old_hd, new_hd):
    """``mrope_section``-like lists sum to a fraction of the head dim: keep that fraction."""
    if not isinstance(rope, dict) or not old_hd or not new_hd:
        return None
    out, changed = dict(rope), False
    for k, v in rope.items():
        if "section" in k and _int_list(v):
            total = sum(v) * new_hd // old_hd
            if total < len(v):
                return None
            new = [max(1, x * new_hd // old_hd) for x in v]
            new[-1] += total - sum(new)
            out[k], changed = new, True
    return out if changed else None


def _modeling_default_sections(cfg) -> dict[str, list[int]]:
    """``rope_parameters.get("mrope_section", [16, 24, 24])``-style defaults in the modeling code
    of ``cfg``'s model: a config that leaves them out relies on them matching its head dim."""
    import importlib
    import inspect
    import re

    try:
        mod = importlib.import_module(type(cfg).__module__.replace(".configuration_", ".modeling_"))
        src = inspect.getsource(mod)
    except Exception:  # noqa: BLE001
        return {}
    out = {}
    for key, nums in re.findall(r'get\(\s*"(\w*section\w*)"\s*,\s*\[([\d,\s]+)\]', src):
        out.setdefault(key, [int(x) for x in nums.split(",") if x.strip()])
    return out


def _overrides(cfg, level: int = 0) -> dict[str, Any]:
    """Small values for the size fields ``cfg`` has (its dataclass fields only).

    ``level`` 0 shrinks everything; 1 leaves channel lists alone; 2 also per-stage lists; 3 only
    shrinks depth, vocabulary, positions, experts and the image."""
    fields = _fields(type(cfg))
    have = _safe_attrs(cfg, sorted(fields))
    out: dict[str, Any] = {}
    staged = any(_int_list(have.get(n)) for n in _PER_STAGE_DEPTHS)
    layout = "max_2d_position_embeddings" in have or "coordinate_size" in have
    widths = level <= 2
    staged = staged and level <= 1

    def put(name, value):
        if name in have:
            out[name] = value

    # per-stage (hierarchical) models: one block per stage, narrow stages
    if level <= 1:
        for n in _PER_STAGE_DEPTHS + ("num_block_repeats", "stage_num_blocks"):
            if _int_list(have.get(n)):
                put(n, [1] * len(have[n]))
        for n in _PER_STAGE_HEADS:
            if _int_list(have.get(n)):
                put(n, [min(x, 2) for x in have[n]])
        for n in _PER_STAGE_WIDTHS:
            v = have.get(n)
            if _int_list(v) and len(v) > 1:
                put(n, [16 * (i + 1) for i in range(len(v))])
            elif _int_list(v) and len(v) == 1:
                put(n, [32])
        if _int_list(have.get("mlp_ratios")):
            put("mlp_ratios", [2] * len(have["mlp_ratios"]))
        # other channel lists: divide by 8, which keeps equalities and most divisibilities
        for n, v in have.items():
            if level > 0:
                break
            if n in out or not _int_list(v) or not any(w in n for w in _CHANNEL_LISTS):
                continue
            if max(v) >= 64:
                put(n, [x if x < 16 else max(2, x // 8) for x in v])
        for n in _COEFFICIENTS:
            if (
                isinstance(have.get(n), (int, float))
                and not isinstance(have[n], bool)
                and have[n] > 1
            ):
                put(n, 1.0)

    old_hidden = _old_hidden(have)
    old_hd = _old_head_dim(have)
    heads_orig = None
    if widths:
        for n in _HEADS:
            if _is_int(have.get(n)):
                heads_orig = heads_orig or have[n]
                put(n, HEADS)
        for n in _KV_HEADS:
            v = have.get(n)
            if _is_int(v):
                h = heads_orig or v
                put(n, 1 if v == 1 else (HEADS if v >= h else KV_HEADS))
    for n in _LAYERS:
        if _is_int(have.get(n)) and have[n] > LAYERS:
            put(n, LAYERS)
    # interleaving periods (hybrid attention/SSM, dense/MoE): keep every kind within two layers
    for n, v in have.items():
        if not _is_int(v) or n in out:
            continue
        if (
            n.endswith(("_period", "_interval", "_frequency", "_every", "_pattern", "_step"))
            and "layer" in n
            or n
            in (
                "full_attention_interval",
                "sliding_window_pattern",
                "attn_layer_period",
                "expert_layer_period",
                "decoder_sparse_step",
                "moe_layer_freq",
                "global_attn_every_n_layers",
                "attention_period",
            )
        ):
            if v > LAYERS:
                put(n, LAYERS)
        elif n.endswith("_offset") and "layer" in n and v >= LAYERS:
            put(n, LAYERS - 1)
    new_hidden = (96 if layout else 16 if staged else HIDDEN) if widths else old_hidden
    if widths:
        for n in _HIDDEN:
            if _is_int(have.get(n)):
                put(n, new_hidden)
        if layout:
            for n in ("coordinate_size", "shape_size"):
                put(n, 16)
        for n in _EMBED_SIZE:
            v = have.get(n)
            if _is_int(v) and v > 32:
                put(n, new_hidden if v == old_hidden else 32)
        for n in _INTERMEDIATE:
            v = have.get(n)
            if _is_int(v) and v > INTERMEDIATE:
                put(n, new_hidden if v == old_hidden else INTERMEDIATE)
        for n in _MOE_INTERMEDIATE:
            if _is_int(have.get(n)) and have[n] > 32:
                put(n, 32)
        new_hd = new_hidden // HEADS if new_hidden else HIDDEN // HEADS
        for n in _HEAD_DIM:
            if _is_int(have.get(n)):
                put(n, new_hd)
        expand = have.get("expand")
        if _is_int(expand) and _is_int(have.get("head_dim")) and "num_heads" in out:
            put("head_dim", new_hidden * expand // HEADS)  # SSM heads span hidden * expand
        for n, v in _MLA.items():
            if _is_int(have.get(n)):
                put(n, v)
        for n in ("rotary_dim", "rotary_emb_dim", "rope_dim", "rotary_ndims"):
            if _is_int(have.get(n)) and old_hd and have[n] >= 8:
                put(n, max(2, have[n] * new_hd // old_hd // 2 * 2))
        for n in ("rope_parameters", "rope_scaling"):
            rope = have.get(n)
            if isinstance(rope, dict) and old_hd:
                missing = {
                    k: v for k, v in _modeling_default_sections(cfg).items() if k not in rope and v
                }
                rope = rope | missing
            scaled = _scaled_rope(rope, old_hd, new_hd)
            if scaled is not None:
                put(n, scaled)
        # other size fields tied to the hidden size stay tied to it
        if old_hidden and old_hidden >= 128:
            for n, v in have.items():
                if (
                    n not in out
                    and v == old_hidden
                    and _is_int(v)
                    and any(w in n for w in _TIE_WORDS)
                    and "vocab" not in n
                ):
                    put(n, new_hidden)
    for n in fields:
        if "vocab_size" in n and _is_int(have.get(n)) and have[n] > VOCAB:
            put(n, VOCAB)
    for n in _MAXPOS:
        if _is_int(have.get(n)) and have[n] > 128:
            put(n, 128)
    moe = False
    for n in _NUM_EXPERTS:
        if _is_int(have.get(n)) and have[n] > 4:
            put(n, 4)
            moe = True
    for n in _TOP_K:
        v = have.get(n)
        if _is_int(v) and v > 2 or v is None and moe and n in have:
            put(n, 2)
    for n in _ONE:
        if _is_int(have.get(n)) and have[n] > 1:
            put(n, 1)
    if "first_k_dense_replace" in have and _is_int(have["first_k_dense_replace"]):
        put("first_k_dense_replace", min(have["first_k_dense_replace"], 1))
    # local attention windows longer than the example sequence
    v = have.get("attention_window")
    if _is_int(v) and v > 8:
        put("attention_window", 4)
    elif _int_list(v):
        put("attention_window", [4] * len(v))
    for n in ("num_frames",):
        if _is_int(have.get(n)) and have[n] > 2:
            put(n, 2)
    image = 64 if staged and _is_int(have.get("window_size")) else IMAGE
    for n in _IMAGE:
        v = have.get(n)
        if _is_int(v) and v > image:
            put(n, image)
        elif _int_list(v) and len(v) == 2 and max(v) > image:
            put(n, [image, image])
    if any(n in out for n in _IMAGE):
        for n in _PATCH:
            v = have.get(n)
            if _is_int(v) and v > PATCH:
                put(n, 4 if staged else PATCH)
            elif _int_list(v) and len(v) == 2 and max(v) > PATCH:
                put(n, [PATCH, PATCH])
        if _is_int(have.get("window_size")) and have["window_size"] > 2:
            put("window_size", 2 if staged else 4)
    for n in ("use_pretrained_backbone",):
        if have.get(n):
            put(n, False)
    # special token ids beyond the new vocabulary: unique ids from the top of it
    vocab = out.get("vocab_size", have.get("vocab_size"))
    if _is_int(vocab):
        remap: dict[int, int] = {}

        def fix(x):
            if _is_int(x) and x >= vocab:
                if x not in remap:
                    remap[x] = vocab - 1 - len(remap)
                return remap[x]
            return x

        for n in sorted(fields):
            if n.endswith(("_token_id", "_token_index", "_token_ids")) and n in have:
                v = have[n]
                if _is_int(v) and v >= vocab:
                    put(n, fix(v))
                elif _int_list(v) and any(x >= vocab for x in v):
                    put(n, [fix(x) for x in v])
    return out


def _per_layer(v, old_layers: int, new_layers: int):
    """A per-layer list for fewer layers that keeps every kind of layer where it can."""
    distinct = []
    for x in v:
        if x not in distinct:
            distinct.append(x)
    if len(distinct) == 1 or len(distinct) > new_layers:
        return list(v[:new_layers])
    return distinct + [distinct[-1]] * (new_layers - len(distinct))


def _per_layer_lists(cfg, old_layers: int | None, new_layers: int | None) -> dict[str, Any]:
    """Lists with one entry per layer, cut to the new depth."""
    if not old_layers or not new_layers or old_layers == new_layers:
        return {}
    out = {}
    have = _safe_attrs(cfg, sorted(_fields(type(cfg))))
    for n, v in have.items():
        if isinstance(v, (list, tuple)) and len(v) == old_layers and n not in _PER_STAGE_DEPTHS:
            out[n] = _per_layer(v, old_layers, new_layers)
    return out


def _shrink_once(cfg, level: int, with_lists: bool, depth: int):
    cls = type(cfg)
    over = _overrides(cfg, level)
    if depth == 0:
        over |= _SPECIAL.get(getattr(cfg, "model_type", ""), {})
    if depth < 3:
        for key in getattr(cls, "sub_configs", None) or {}:
            try:
                sub = getattr(cfg, key, None)
            except Exception:  # noqa: BLE001
                sub = None
            if sub is not None and hasattr(sub, "to_dict"):
                over[key] = shrink_config(sub, level, depth + 1)
    old_layers = _layer_count(cfg)
    new_layers = next(
        (
            over[n]
            for n in ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")
            if n in over
        ),
        None,
    )
    if with_lists:
        over |= {
            k: v for k, v in _per_layer_lists(cfg, old_layers, new_layers).items() if k not in over
        }
    small = cls(**over)
    # explicit per-layer lists the re-init did not re-derive
    extra = {
        k: v
        for k, v in _per_layer_lists(small, old_layers, _layer_count(small)).items()
        if k not in over
    }
    if extra:
        small = cls(**(over | extra))
    return small


def shrink_config(cfg, level: int = 0, depth: int = 0):
    """A small config of the same class, derived from ``cfg`` (sub-configs shrunk as well).

    Tries the most thorough shrinking first (``level`` 0) and falls back to gentler levels when
    the config class refuses a combination."""
    first = None
    for lvl in range(level, 4):
        for with_lists in (True, False):
            try:
                return _shrink_once(cfg, lvl, with_lists, depth)
            except Exception as e:  # noqa: BLE001
                first = first or e
    raise first


# --------------------------------------------------------------------------------------------
# choosing a model class and inputs


def _own_classes(cfg):
    """Model classes defined next to the config class whose ``config_class`` is exactly it (sub-
    config types such as ``clip_text_model`` have no Auto mapping of their own)."""
    import importlib

    T = _transformers()
    mod_name = type(cfg).__module__.replace(".configuration_", ".modeling_")
    try:
        mod = importlib.import_module(mod_name)
    except Exception:  # noqa: BLE001
        return []
    out = []
    for name, obj in vars(mod).items():
        if (
            isinstance(obj, type)
            and issubclass(obj, T.PreTrainedModel)
            and obj.__dict__.get("config_class", getattr(obj, "config_class", None)) is type(cfg)
            and not name.endswith("PreTrainedModel")
            and obj.__module__ == mod_name
        ):
            out.append(obj)
    return out


def _candidates(t, cfg, head=None):
    """(task, model class) in order of preference; ``head``: that head's class alone."""
    T = _transformers()
    from transformers.models.auto import modeling_auto as ma

    def cls_of(mapping):
        name = mapping.get(t)
        if isinstance(name, (list, tuple)):
            name = name[0]
        return getattr(T, name, None) if name else None

    if head is not None:
        cls = cls_of(getattr(ma, TASK_HEADS[head]))
        if cls is None:
            raise Unbuildable(f"no {head} head")
        return [(head, cls)]

    causal = cls_of(ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    s2s = cls_of(ma.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    if s2s is None:  # (speech recognition and translation: Whisper, Speech2Text, Moonshine)
        s2s = cls_of(getattr(ma, "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", {}))
    base = cls_of(ma.MODEL_MAPPING_NAMES)
    img = cls_of(ma.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
    out = []
    if getattr(cfg, "is_encoder_decoder", False) and s2s is not None:
        out.append(("seq2seq", s2s))  # not the decoder-only *ForCausalLM of an encoder-decoder
    if causal is not None:
        out.append(("causal-lm", causal))
    if s2s is not None and ("seq2seq", s2s) not in out:
        out.append(("seq2seq", s2s))
    if img is not None:
        out.append(("vision", img))
    if base is not None:
        out.append(("base", base))
    if not out:
        own = _own_classes(cfg)
        for suffix, task in (("ForCausalLM", "causal-lm"), ("ForImageClassification", "vision")):
            out += [(task, c) for c in own if c.__name__.endswith(suffix)]
        rest = sorted(
            (c for c in own if not c.__name__.endswith(("ForCausalLM", "ForImageClassification"))),
            key=lambda c: (not c.__name__.endswith("Model"), len(c.__name__)),
        )
        out += [("base", c) for c in rest[:3]]
    return out


def _ids(cfg, n_seq, g):
    vocab = None
    for n in ("vocab_size",):
        v = getattr(cfg, n, None)
        if _is_int(v):
            vocab = v
    if vocab is None:
        text = getattr(cfg, "text_config", None)
        vocab = getattr(text, "vocab_size", None) if text is not None else None
    if not _is_int(vocab) or vocab < 8:
        vocab = VOCAB
    lo, hi = (4, vocab - 16) if vocab > 64 else (1, vocab)
    return torch.randint(lo, hi, (BATCH, n_seq), generator=g)


def _image_hw(cfg):
    for n in _IMAGE:
        v = getattr(cfg, n, None)
        if _is_int(v):
            return v, v
        if _int_list(v) and len(v) == 2:
            return tuple(v)
    return IMAGE, IMAGE


def _forward_params(model_cls):
    import inspect

    try:
        return inspect.signature(model_cls.forward).parameters
    except (TypeError, ValueError):
        return {}


def _pixels(cfg, g, hw=None):
    h, w = hw or _image_hw(cfg)
    c = getattr(cfg, "num_channels", 3)
    c = c if _is_int(c) and 0 < c <= 16 else 3
    frames = getattr(cfg, "num_frames", None)
    if _is_int(frames) and frames > 0:  # video models: (batch, frames, channels, h, w)
        return torch.randn(BATCH, frames, c, h, w, generator=g)
    return torch.randn(BATCH, c, h, w, generator=g)


# Config fields that say an audio model's features per frame, and its length in frames
_AUDIO_FEATURES = ("num_mel_bins", "feature_size", "n_mels", "mel_bins", "num_mel_filters")
_AUDIO_FRAMES = ("max_source_positions",)


def _audio_input_sets(main: str, cfg, g) -> list[dict]:
    """Candidate audio inputs, best first: a waveform (``input_values``: batch x samples, or
    batch x channels x samples for codecs) or frames of features (``input_features``: batch x
    features x frames, as Whisper takes them, or batch x frames x features)."""
    sub = getattr(cfg, "audio_config", None) or getattr(cfg, "encoder_config", None)
    scopes = [c for c in (cfg, sub) if c is not None]
    if main == "input_values":
        channels = next(
            (
                v
                for c in scopes
                for n in ("audio_channels", "channels")
                if _is_int(v := getattr(c, n, None)) and 0 < v <= 8
            ),
            1,
        )
        sets = []
        for samples in (3200, 16000):
            wave = torch.randn(BATCH, samples, generator=g)
            sets.append({"input_values": wave})
            sets.append(
                {"input_values": wave[:, None].expand(BATCH, channels, samples).contiguous()}
            )
        return sets
    features = [
        v
        for c in scopes
        for n in _AUDIO_FEATURES
        if _is_int(v := getattr(c, n, None)) and 0 < v <= 512
    ]
    per_channel = getattr(cfg, "input_feat_per_channel", None)
    if _is_int(per_channel):  # (speech-to-text: features of every input channel side by side)
        features.insert(0, per_channel * (getattr(cfg, "input_channels", 1) or 1))
    frames = [
        2 * v
        for c in scopes
        for n in _AUDIO_FRAMES
        if _is_int(v := getattr(c, n, None)) and 0 < v <= 1500
    ]
    sets = []
    for f in dict.fromkeys(features or [80]):
        for t in dict.fromkeys(frames + [64, 200]):
            sets.append({"input_features": torch.randn(BATCH, f, t, generator=g)})
            sets.append({"input_features": torch.randn(BATCH, t, f, generator=g)})
    return sets


def _input_sets(task, model_cls, cfg, seed):
    """Candidate input dicts, best first."""
    g = torch.Generator().manual_seed(seed)
    main = getattr(model_cls, "main_input_name", "input_ids")
    params = _forward_params(model_cls)
    vision_cfg = getattr(cfg, "vision_config", None)
    sets = []
    if main in ("input_values", "input_features"):
        sets = _audio_input_sets(main, cfg, g)
        if task == "seq2seq" or getattr(cfg, "is_encoder_decoder", False):
            decoder = {"decoder_input_ids": _ids(cfg, SEQ // 2 + 2, g)}
            sets = [inputs | decoder for inputs in sets]
        return sets
    if main in ("audio_values", "input_audio"):
        raise Unbuildable(f"audio input ({main})")
    if main in ("pixel_values_videos", "video_values"):
        raise Unbuildable(f"video input ({main})")
    if "grid_thw" in params or "image_grid_thw" in params and main != "input_ids":
        raise Unbuildable("packed vision input (grid_thw)")
    if main == "pixel_values" or task == "vision":
        hw = _image_hw(cfg)
        for size in (hw, (64, 64), (224, 224)) if hw == (IMAGE, IMAGE) else (hw,):
            inputs = {"pixel_values": _pixels(cfg, g, size)}
            patch = getattr(cfg, "patch_size", None)
            if "noise" in params and _is_int(patch) and patch > 0:  # fixed random masking
                inputs["noise"] = torch.rand(
                    BATCH, (size[0] // patch) * (size[1] // patch), generator=g
                )
            sets.append(inputs)
        return sets
    if main not in ("input_ids", "inputs", "decoder_input_ids", "input_tokens"):
        raise Unbuildable(f"main input is {main}")
    ids = _ids(cfg, SEQ, g)
    base = {"input_ids": ids}
    if task in TASK_HEADS:
        # A head of an encoder-decoder derives its decoder's ids from input_ids; an
        # encoder-decoder's sequence classifier pools at the end-of-sequence token.
        eos = getattr(cfg, "eos_token_id", None)
        if task == "seq-cls" and _is_int(eos) and 0 <= eos < int(ids.max()):
            ids[:, -1] = eos
    elif task == "seq2seq" or getattr(cfg, "is_encoder_decoder", False):
        base["decoder_input_ids"] = _ids(cfg, SEQ // 2 + 2, g)
    sets.append(base)
    sets.append(base | {"attention_mask": torch.ones_like(ids)})
    if "bbox" in params:  # layout models: sorted boxes in [0, 1000]
        xy = torch.randint(0, 500, (BATCH, SEQ, 2), generator=g)
        sets.append(base | {"bbox": torch.cat([xy, xy + 10], dim=-1)})
    img_cfg = vision_cfg if vision_cfg is not None else cfg
    if "pixel_values" in params:
        extra = {"pixel_values": _pixels(img_cfg, g)}
        sets.append(base | extra)
        if "bbox" in params:
            sets.append(sets[-2] | extra)
    return sets


# --------------------------------------------------------------------------------------------
# building


class _Timeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def handler(signum, frame):
        raise _Timeout(f"exceeded {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _short(e: BaseException, n: int = 160) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:n]}"


def _reason_for(e: BaseException) -> str:
    msg = str(e)
    low = msg.lower()
    if isinstance(e, ImportError) or "requires the" in low and "library" in low:
        for pkg in (
            "timm",
            "detectron2",
            "scipy",
            "pytesseract",
            "natten",
            "mamba_ssm",
            "causal_conv1d",
            "flash_attn",
            "sentencepiece",
            "tokenizers",
            "torchvision",
            "librosa",
            "torchaudio",
            "einops",
            "xformers",
            "kernels",
        ):
            if pkg in low:
                return f"needs {pkg}"
        return "needs an optional package: " + _short(e, 100)
    if "tokenizer" in low and ("file" in low or "vocab" in low):
        return "needs a tokenizer file"
    if "offline" in low or "huggingface.co" in low or "connect" in low and "hub" in low:
        return "needs a download"
    return _short(e)


def _forward(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def _has_tensor(out) -> bool:
    import torch.utils._pytree as pytree

    try:
        leaves = pytree.tree_leaves(out)
    except Exception:  # noqa: BLE001
        leaves = [out]
    if hasattr(out, "values") and not leaves:
        leaves = list(out.values())
    return any(isinstance(x, torch.Tensor) for x in leaves) or isinstance(out, torch.Tensor)


def _finite(out) -> bool:
    import torch.utils._pytree as pytree

    return all(
        bool(torch.isfinite(x).all())
        for x in pytree.tree_leaves(out)
        if isinstance(x, torch.Tensor) and x.is_floating_point()
    )


def _same(a, b) -> bool:
    import torch.utils._pytree as pytree

    la = [x for x in pytree.tree_leaves(a) if isinstance(x, torch.Tensor)]
    lb = [x for x in pytree.tree_leaves(b) if isinstance(x, torch.Tensor)]
    return len(la) == len(lb) and all(
        x.shape == y.shape and torch.equal(x, y) for x, y in zip(la, lb)
    )


def _from_config(model_cls, cfg, attn_implementation=None):
    last = None
    order = ("sdpa", "eager", None) if attn_implementation is None else (attn_implementation,)
    for attn in order:
        try:
            kwargs = {"dtype": torch.float32}
            if attn is not None:
                kwargs["attn_implementation"] = attn
            if hasattr(model_cls, "_from_config"):
                return model_cls._from_config(cfg, **kwargs)
            return model_cls(cfg)
        except (ValueError, TypeError, NotImplementedError) as e:
            last = e
            if attn is None or "attn" not in str(e).lower() and "attention" not in str(e).lower():
                raise
    raise last  # pragma: no cover


def _prepare(model):
    """Per-model switches a plain forward needs (e.g. X-MOD's default language adapter)."""
    langs = getattr(model.config, "languages", None)
    if hasattr(model, "set_default_language") and langs:
        model.set_default_language(list(langs)[0])


def _try_build(model_type, cfg, seed, errors, tried=None, head=None, attn=None):
    composite = bool(getattr(type(cfg), "sub_configs", None))
    try:
        cands = _candidates(model_type, cfg, head)
    except Unbuildable:
        raise
    except Exception as e:  # noqa: BLE001
        raise Unbuildable("model class: " + _reason_for(e)) from None
    if not cands:
        raise Unbuildable("no model class (config-only or task-specific type)")
    for task, model_cls in cands:
        try:
            sets = _input_sets(task, model_cls, cfg, seed)
        except Unbuildable as e:
            errors.append(str(e))
            continue
        except Exception as e:  # noqa: BLE001
            errors.append(f"{model_cls.__name__}: " + _reason_for(e))
            continue
        if tried is not None:
            tried.append(model_cls)
        try:
            with _time_limit(20):
                torch.manual_seed(seed)
                model = _from_config(model_cls, cfg, attn).float().eval()
                _prepare(model)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{model_cls.__name__}(): " + _reason_for(e))
            continue
        n = sum(p.numel() for p in model.parameters())
        if n > MAX_PARAMS:
            errors.append(
                f"{model_cls.__name__}: too large after shrinking ({n / 1e6:.1f}M params)"
            )
            continue
        if n == 0:
            errors.append(f"{model_cls.__name__}: no parameters")
            continue
        retried_cache = False
        queue = list(sets)
        while queue:
            inputs = queue.pop(0)
            try:
                t0 = time.perf_counter()
                with _time_limit(MAX_FORWARD_S * 3):
                    out = _forward(model, inputs)
                dt = time.perf_counter() - t0
            except _Timeout:
                errors.append(
                    f"{model_cls.__name__}: forward too slow (> {MAX_FORWARD_S * 3:.0f} s)"
                )
                break
            except Exception as e:  # noqa: BLE001
                errors.append(f"{model_cls.__name__} forward: " + _reason_for(e))
                # caches of hybrid models that need an attention layer: run without a cache
                if (
                    not retried_cache
                    and "cache" in str(e).lower()
                    and getattr(model.config, "use_cache", None)
                ):
                    model.config.use_cache = False
                    retried_cache = True
                    queue.insert(0, inputs)
                continue
            if not _has_tensor(out):
                errors.append(f"{model_cls.__name__}: no tensor output")
                break
            if not _finite(out):
                errors.append(f"{model_cls.__name__}: non-finite outputs")
                continue
            try:  # a second run under another seed: does the output depend on RNG state?
                torch.manual_seed(seed + 1)
                t0 = time.perf_counter()
                with _time_limit(MAX_FORWARD_S * 3):
                    again = _forward(model, inputs)
                dt = min(dt, time.perf_counter() - t0)  # the first run may pay one-off costs
                deterministic = _same(out, again)
            except Exception:  # noqa: BLE001
                deterministic = False
            if dt > MAX_FORWARD_S:
                errors.append(f"{model_cls.__name__}: forward too slow ({dt:.1f} s)")
                break
            if composite and task != "vision" and "pixel_values" in inputs:
                task = "multimodal"
            elif task == "base" and "pixel_values" in inputs:
                task = "vision-base"
            return ZooModel(model_type, model, inputs, task, model.config, composite, deterministic)
    return None


def build(
    model_type: str, seed: int = 0, head: str | None = None, attn: str | None = None
) -> ZooModel:
    """A small random-weight model of ``model_type`` with inputs that run it (eval, float32);
    ``head`` (a key of :data:`TASK_HEADS`): with that task head instead of the default class;
    ``attn``: that ``attn_implementation`` ("eager": attention written out in matmuls and a
    softmax) instead of the first of SDPA, eager and the class's own that builds.

    Raises :class:`Unbuildable` with a short reason when the generic recipe cannot build and run
    it offline (composite configs needing special inputs, audio, optional packages, ...)."""
    T = _transformers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cfg0 = T.AutoConfig.for_model(model_type)
        except Exception as e:  # noqa: BLE001
            raise Unbuildable("config: " + _reason_for(e)) from None
        if getattr(cfg0, "use_timm_backbone", False):
            raise Unbuildable("needs timm (timm backbone)")
        composite = bool(getattr(type(cfg0), "sub_configs", None))
        errors: list[str] = []
        seen = []
        shrink_error = None
        for level in range(4):  # the most thorough shrinking that builds and runs
            try:
                cfg = shrink_config(cfg0, level)
            except Exception as e:  # noqa: BLE001
                shrink_error = shrink_error or e
                continue
            d = cfg.to_json_string() if hasattr(cfg, "to_json_string") else repr(cfg)
            if d in seen:
                continue
            seen.append(d)
            tried: list = []
            if head == "seq-cls" and getattr(cfg, "pad_token_id", None) is None:
                cfg.pad_token_id = 0  # batches of 2 need one; the ids never hold it
            zoo = _try_build(model_type, cfg, seed, errors, tried, head, attn)
            if zoo is not None:
                return zoo
            if not tried:  # every class refused the inputs: no smaller config changes that
                break
            if all(("needs " in e or "_Timeout" in e) for e in errors):
                break
        if not seen:
            raise Unbuildable("shrinking the config: " + _reason_for(shrink_error))
        reason = errors[0] if errors else "nothing to try"
        if any("too large" in e for e in errors) and not all("too large" in e for e in errors):
            reason = next(e for e in errors if "too large" not in e)
        if errors and errors[-1] != reason:
            reason += " (last: " + errors[-1][:100] + ")"
        if composite:
            reason = "composite config: " + reason
        raise Unbuildable(reason)


if __name__ == "__main__":  # python tests/zoo_transformers.py [types...]: a quick census
    import sys
    from collections import Counter

    names = sys.argv[1:] or model_types()
    ok, why = [], Counter()
    for t in names:
        t0 = time.perf_counter()
        try:
            z = build(t)
        except Unbuildable as e:
            why[str(e)[:90]] += 1
            print(f"-- {t}: {e} [{time.perf_counter() - t0:.1f}s]", flush=True)
            continue
        ok.append(t)
        print(
            f"ok {t}: {z.task}{'*' if z.composite else ''}{'' if z.deterministic else '~'} "
            f"{type(z.model).__name__} {z.num_params / 1e3:.0f}k params "
            f"{time.perf_counter() - t0:.2f}s",
            flush=True,
        )
    print(f"{len(ok)}/{len(names)} build")
