"""Module attributes that follow a plan (``out_channels``, ``in_features``, ``num_heads``, ...).

Which attributes a module keeps, and how they follow from its tensors' shapes, is said by an
*attribute rule* per module type, registered like op rules: ``register_attributes(Type, rule)``
(a class and its subclasses) or ``register_attributes(predicate, rule)`` (any module the
predicate accepts, for types that cannot be imported here). A rule reads a
:class:`PlannedModule` and returns ``{attribute: new value}`` (None: unknown, left alone).
Attention modules' head counts and the hidden size kept as attributes follow from the traced
attention calls (:func:`attention_updates`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..graph.dependency import config_scopes, module_prefixes
from ..graph.size_watch import AttributeLeaf

if TYPE_CHECKING:
    import numpy as np

    from ..graph.dependency import DependencyGraph


@dataclass(frozen=True)
class AttributeUpdate:
    module: str
    attr: str
    old: object
    new: object


@dataclass(frozen=True)
class PlannedModule:
    """What an attribute rule sees of one module under a plan: ``shape(tensor)`` is the shape
    its parameter/buffer ``tensor`` (a local name such as ``"weight"``) will have (None: it
    has none); ``declared(attr)`` is a size an op rule tied to this module's attribute (a
    convolution's ``groups``), or None; ``output(i)`` the planned shape of the ``i``-th
    tensor its first call returned (None: it was not called, or returned fewer)."""

    name: str
    module: nn.Module
    shape: Callable[[str], tuple[int, ...] | None]
    declared: Callable[[str], int | None]
    output: Callable[[int], tuple[int, ...] | None] = lambda i: None


AttributeRule = Callable[[PlannedModule], dict[str, object]]
_BY_TYPE: dict[type, AttributeRule] = {}
_BY_TEST: list[tuple[Callable[[nn.Module], bool], AttributeRule]] = []


def register_attributes(kind, rule: AttributeRule | None = None):
    """Register an attribute rule for a module class (its subclasses too; the most derived
    registered class wins) or for a predicate ``module -> bool`` (tried after the classes, in
    the order registered). Usable as a decorator."""

    def register(fn: AttributeRule) -> AttributeRule:
        if isinstance(kind, type):
            _BY_TYPE[kind] = fn
        elif callable(kind):
            _BY_TEST.append((kind, fn))
        else:
            raise TypeError(
                f"register_attributes takes a module class or a predicate, not "
                f"{type(kind).__name__}"
            )
        return fn

    return register if rule is None else register(rule)


def attribute_rule(module: nn.Module) -> AttributeRule | None:
    for cls in type(module).__mro__:
        rule = _BY_TYPE.get(cls)
        if rule is not None:
            return rule
    for test, rule in _BY_TEST:
        if test(module):
            return rule
    return None


def attribute_updates(
    dg: DependencyGraph, tensors, masks: dict[int, np.ndarray]
) -> list[AttributeUpdate]:
    """Every module attribute that changes under the tensor plan ``tensors`` (with leaf masks
    ``masks``): from each module's attribute rule, then from attention calls."""
    g = dg.graph
    named = g.params | g.buffers
    planned = dg.planned_shapes(tensors)
    modules = dict(dg.walk.modules)
    computed, slots = dg.computed_tensors, dg.coupling_model.value_slots

    def shape_of(module_name: str, tensor: str):
        full = f"{module_name}.{tensor}" if module_name else tensor
        full = g.aliases.get(full, full)
        if full in planned:
            return planned[full]
        if full in named:
            return g.values[named[full]].shape
        if full in computed:  # a parametrized or hook-computed weight: as it will be computed
            return tuple(dg.slot_kept_size(s, masks) for s in slots[computed[full]])
        return None

    first_outputs: dict[str, list[int]] = {}
    for module_name, outputs in g.module_calls:
        first_outputs.setdefault(module_name, outputs)

    def output_of(module_name: str, i: int):
        outputs = first_outputs.get(module_name, ())
        if i >= len(outputs):
            return None
        return tuple(dg.slot_kept_size(s, masks) for s in slots[outputs[i]])

    declared: dict[tuple[str, str], int] = {}
    for module, attr, slot in dg.coupling_model.attr_slots:
        m = modules.get(module)
        if m is not None and getattr(m, attr, None) == dg.slot_sizes[slot]:
            declared[(module, attr)] = dg.slot_kept_size(slot, masks)

    updates: list[AttributeUpdate] = []
    for name, m in modules.items():
        rule = attribute_rule(m)
        if rule is None:
            continue
        view = PlannedModule(
            name,
            m,
            lambda t, name=name: shape_of(name, t),
            lambda a, name=name: declared.get((name, a)),
            lambda i, name=name: output_of(name, i),
        )
        for attr, new in rule(view).items():
            old = getattr(m, attr)
            if new is not None and old != new:
                updates.append(AttributeUpdate(name, attr, old, new))
    # An attribute an op rule tied to a slot that no module rule speaks for (an expert
    # module's num_experts) follows the slot by itself.
    spoken = {(u.module, u.attr) for u in updates}
    for (name, attr), new in declared.items():
        if attribute_rule(modules[name]) is None and (name, attr) not in spoken:
            old = getattr(modules[name], attr)
            if old != new:
                updates.append(AttributeUpdate(name, attr, old, new))
    updates += tied_attributes(dg, modules, masks, spoken)
    updates += attention_updates(dg, modules, masks)
    spoken = {(u.module, u.attr) for u in updates}
    updates += [
        u for u in sizing_attributes(dg, modules, masks) if (u.module, u.attr) not in spoken
    ]
    spoken = {(u.module, u.attr) for u in updates}
    return updates + [
        u for u in reshaped_head_counts(dg, modules, masks) if (u.module, u.attr) not in spoken
    ]


# -- the built-in rules --------------------------------------------------------------------------
@register_attributes(nn.modules.conv._ConvNd)
def _convolution(p: PlannedModule) -> dict[str, object]:
    w = p.shape("weight")
    if w is None:
        return {}
    m = p.module
    groups = p.declared("groups") or m.groups
    if m.transposed:
        return {"groups": groups, "in_channels": w[0], "out_channels": w[1] * groups}
    return {"groups": groups, "in_channels": w[1] * groups, "out_channels": w[0]}


@register_attributes(nn.Linear)
def _linear(p: PlannedModule) -> dict[str, object]:
    w = p.shape("weight")
    return {} if w is None else {"in_features": w[1], "out_features": w[0]}


@register_attributes(nn.Bilinear)
def _bilinear(p: PlannedModule) -> dict[str, object]:
    w = p.shape("weight")
    return {} if w is None else {"out_features": w[0], "in1_features": w[1], "in2_features": w[2]}


@register_attributes(nn.modules.batchnorm._NormBase)
def _batch_norm(p: PlannedModule) -> dict[str, object]:
    ref = p.shape("weight") or p.shape("running_mean")
    if ref:
        return {"num_features": ref[0]}
    # No tensor to say it (an InstanceNorm without affine or running statistics): the
    # channels of what it returned, at the dim its own check reads.
    out = p.output(0)
    if not out:
        return {"num_features": None}
    m = p.module
    dim = len(out) - m._get_no_batch_dim() if hasattr(m, "_get_no_batch_dim") else 1
    return {"num_features": out[dim] if 0 <= dim < len(out) else None}


@register_attributes(nn.GroupNorm)
def _group_norm(p: PlannedModule) -> dict[str, object]:
    w = p.shape("weight")
    # (without affine: the channels of what it returned, where its own forward returned it)
    out = p.output(0) if type(p.module).forward is nn.GroupNorm.forward else None
    return {
        "num_groups": p.declared("num_groups") or p.module.num_groups,
        "num_channels": w[0] if w else (out[1] if out and len(out) > 1 else None),
    }


def _normalized_shape(p: PlannedModule) -> dict[str, object]:
    """A layer or RMS norm's ``normalized_shape``: its weight's shape, or without one
    (``elementwise_affine=False``) the last sizes of what its own forward returned, as many as
    it normalizes (its functional form checks them against its input)."""
    w = p.shape("weight")
    if w is not None:
        return {"normalized_shape": tuple(w)}
    if type(p.module).forward not in (nn.LayerNorm.forward, nn.RMSNorm.forward):
        return {}  # (a subclass's forward may normalise another layout than it returns)
    k = len(p.module.normalized_shape)
    out = p.output(0)
    return {"normalized_shape": tuple(out[len(out) - k :]) if out and len(out) >= k else None}


register_attributes(nn.LayerNorm, _normalized_shape)
register_attributes(nn.RMSNorm, _normalized_shape)


@register_attributes(nn.Embedding)
@register_attributes(nn.EmbeddingBag)
def _embedding(p: PlannedModule) -> dict[str, object]:
    w = p.shape("weight")
    return {} if w is None else {"embedding_dim": w[1]}


@register_attributes(nn.PReLU)
def _prelu(p: PlannedModule) -> dict[str, object]:
    w = p.shape("weight")
    return {} if w is None else {"num_parameters": w[0]}


@register_attributes(nn.MultiheadAttention)
def _multi_head_attention(p: PlannedModule) -> dict[str, object]:
    """The head dim is kept (the rules say so): the widths give the head count. Separate
    key and value widths (``kdim``, ``vdim``) are those projections' columns."""
    m = p.module
    if m._qkv_same_embed_dim:
        qkv = p.shape("in_proj_weight")
        if not qkv:
            return {}
        width, key, value = qkv[1], qkv[1], qkv[1]
    else:
        q, k, v = (p.shape(f"{x}_proj_weight") for x in "qkv")
        if not (q and k and v):
            return {}
        width, key, value = q[0], k[1], v[1]
    return {"embed_dim": width, "kdim": key, "vdim": value, "num_heads": width // m.head_dim}


@register_attributes(nn.TransformerEncoder)
def _transformer_encoder(p: PlannedModule) -> dict[str, object]:
    """An encoder made with ``enable_nested_tensor`` turns a padded batch into nested tensors
    only where every layer's fast path takes them, which an odd number of heads does not (its
    constructor checks that once): pruned to an odd number, it stops converting."""
    m = p.module
    if not getattr(m, "use_nested_tensor", False):
        return {}
    for i, layer in enumerate(m.layers):
        attention = getattr(layer, "self_attn", None)
        qkv = p.shape(f"layers.{i}.self_attn.in_proj_weight")
        if isinstance(attention, nn.MultiheadAttention) and qkv and attention.head_dim:
            if (qkv[1] // attention.head_dim) % 2:
                return {"use_nested_tensor": False}
    return {}


@register_attributes(nn.Unflatten)
def _unflatten(p: PlannedModule) -> dict[str, object]:
    """``unflattened_size``: the sizes its own forward returned at ``dim`` (a -1 stays -1)."""
    m = p.module
    sizes, out = m.unflattened_size, p.output(0)
    if type(m).forward is not nn.Unflatten.forward or out is None:
        return {}
    if not isinstance(sizes, (tuple, list)) or not all(type(n) is int for n in sizes):
        return {}  # (named sizes)
    rank = len(out) - len(sizes) + 1  # the input's
    dim = m.dim + rank if m.dim < 0 else m.dim
    new = [-1 if n == -1 else out[dim + i] for i, n in enumerate(sizes)]
    return {"unflattened_size": type(sizes)(new)}


@register_attributes(nn.RNNBase)
def _recurrent(p: PlannedModule) -> dict[str, object]:
    m = p.module
    ih, hr = p.shape("weight_ih_l0"), p.shape("weight_hr_l0")
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    out = {"hidden_size": ih[0] // gates if ih else None, "input_size": ih[1] if ih else None}
    if m.proj_size and hr:
        out["proj_size"] = hr[0]
    return out


@register_attributes(nn.RNNCellBase)
def _recurrent_cell(p: PlannedModule) -> dict[str, object]:
    ih, hh = p.shape("weight_ih"), p.shape("weight_hh")
    return {"input_size": ih[1] if ih else None, "hidden_size": hh[1] if hh else None}


@register_attributes(nn.AdaptiveLogSoftmaxWithLoss)
def _adaptive_log_softmax(p: PlannedModule) -> dict[str, object]:
    head = p.shape("head.weight")
    return {} if head is None else {"in_features": head[1]}


def _is_pyg(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch_geometric.")


@register_attributes(lambda m: _is_pyg(m) and type(m).__name__ == "Linear")
def _pyg_linear(p: PlannedModule) -> dict[str, object]:
    w = p.shape("weight")
    if w is None or len(w) != 2:
        return {}
    return {"in_channels": w[1], "out_channels": w[0]}


@register_attributes(lambda m: _is_pyg(m) and (hasattr(m, "att_src") or hasattr(m, "att")))
def _pyg_graph_attention(p: PlannedModule) -> dict[str, object]:
    name = "att_src" if hasattr(p.module, "att_src") else "att"
    att, before = p.shape(name), getattr(p.module, name, None)
    if not att or len(att) != 3 or not isinstance(before, torch.Tensor) or before.dim() != 3:
        return {}
    # graph attention: att [1, heads, k x out_channels] (k = 1 for GAT; HypergraphConv's
    # concatenates two: k = 2); each count follows where the module's value is the tensor's
    out: dict[str, object] = {}
    heads, width = getattr(p.module, "heads", None), getattr(p.module, "out_channels", None)
    if heads == before.shape[1]:
        out["heads"] = att[1]
    if isinstance(width, int) and width > 0 and before.shape[2] % width == 0:
        per = before.shape[2] // width
        out["out_channels"] = att[2] // per if att[2] % per == 0 else None
    return out


@register_attributes(lambda m: _is_pyg(m) and type(m).__name__ in ("RGCNConv", "FastRGCNConv"))
def _pyg_relational(p: PlannedModule) -> dict[str, object]:
    """weight [relations or bases, in_l, out] (block-diagonal: [relations, blocks, in_l /
    blocks, out / blocks]), root [in_r, out]: the forward views by ``in_channels_l``,
    ``out_channels`` and ``num_bases``."""
    m, w, root = p.module, p.shape("weight"), p.shape("root")
    if w is None:
        return {}
    out: dict[str, object] = {}
    if m.num_blocks is not None:
        if len(w) != 4 or w[1] != m.num_blocks:
            return {}
        in_l, width = w[1] * w[2], w[1] * w[3]
    elif len(w) == 3:
        in_l, width = w[1], w[2]
        if m.num_bases is not None:
            out["num_bases"] = w[0]
    else:
        return {}
    in_r = root[0] if root is not None else in_l
    out["in_channels_l"], out["out_channels"] = in_l, width
    out["in_channels"] = _pyg_in_channels(m, in_l, in_r)
    return out


def _pyg_in_channels(m: nn.Module, in_l: int, in_r: int | None):
    """A layer's ``in_channels`` (an int, or (source, target) widths of a bipartite one)."""
    in_r = in_l if in_r is None else in_r
    return in_l if isinstance(m.in_channels, int) and in_l == in_r else (in_l, in_r)


def _rows_cols(p: PlannedModule, tensor: str) -> tuple[int | None, int | None]:
    shape = p.shape(tensor)
    return (shape[0], shape[1]) if shape is not None and len(shape) == 2 else (None, None)


def _pyg_named(*names: str):
    return lambda m: _is_pyg(m) and type(m).__name__ in names


@register_attributes(_pyg_named("NNConv"))
def _pyg_edge_network(p: PlannedModule) -> dict[str, object]:
    """The edge network's last linear layer makes [in_l x out] per edge, viewed by
    ``in_channels_l`` and ``out_channels``; root ``lin`` [out, in_r], ``bias`` [out]."""
    m = p.module
    last = [n for n, t in m.nn.named_parameters() if n.endswith("weight") and t.dim() == 2]
    if not last or m.nn.get_parameter(last[-1]).shape[0] != m.in_channels_l * m.out_channels:
        return {}
    made = p.shape(f"nn.{last[-1]}")[0]
    width, in_r = _rows_cols(p, "lin.weight") if m.root_weight else (None, None)
    if width is None:
        bias = p.shape("bias")
        width = bias[0] if bias is not None else None
    if width is None or width == 0 or made % width:
        return {}
    return {
        "out_channels": width,
        "in_channels_l": made // width,
        "in_channels": _pyg_in_channels(m, made // width, in_r),
    }


@register_attributes(_pyg_named("GMMConv"))
def _pyg_gaussian_mixture(p: PlannedModule) -> dict[str, object]:
    """g [rel_in, out x kernels] viewed by ``rel_in_channels``, ``out_channels`` and
    ``kernel_size``; mu [kernels, dim] (separate gaussians: [rel_in, out, kernels, dim])."""
    m = p.module
    g, mu = p.shape("g"), p.shape("mu")
    if g is None or mu is None or len(g) != 2:
        return {}
    kernels = mu[2] if m.separate_gaussians else mu[0]
    if kernels == 0 or g[1] % kernels:
        return {}
    in_r = _rows_cols(p, "root.weight")[1] if m.root_weight else None
    return {
        "kernel_size": kernels,
        "out_channels": g[1] // kernels,
        "rel_in_channels": g[0],
        "in_channels": _pyg_in_channels(m, g[0], in_r),
    }


@register_attributes(_pyg_named("FiLMConv"))
def _pyg_film(p: PlannedModule) -> dict[str, object]:
    """``lin_skip`` [out, in_r]; each relation's ``lins`` [out, in_l]; the FiLM layers' output
    split by ``out_channels``."""
    width, in_r = _rows_cols(p, "lin_skip.weight")
    in_l = _rows_cols(p, "lins.0.weight")[1]
    if width is None or in_l is None:
        return {}
    return {"out_channels": width, "in_channels": _pyg_in_channels(p.module, in_l, in_r)}


@register_attributes(_pyg_named("MFConv"))
def _pyg_molecular_fingerprint(p: PlannedModule) -> dict[str, object]:
    """Per degree ``lins_l`` [out, in_l] and ``lins_r`` [out, in_r]; the output made by
    ``new_empty(..., out_channels)``."""
    width, in_l = _rows_cols(p, "lins_l.0.weight")
    in_r = _rows_cols(p, "lins_r.0.weight")[1]
    if width is None:
        return {}
    return {"out_channels": width, "in_channels": _pyg_in_channels(p.module, in_l, in_r)}


@register_attributes(_pyg_named("GeneralConv"))
def _pyg_general(p: PlannedModule) -> dict[str, object]:
    """``lin_msg`` [heads x out, in_l] viewed by ``heads`` and ``out_channels`` (additive
    attention: ``att_msg`` [1, heads, out]); the output [n, out] (the heads' mean)."""
    m = p.module
    made, in_l = _rows_cols(p, "lin_msg.weight")
    att = p.shape("att_msg") if getattr(m, "att_msg", None) is not None else None
    output = p.output(0)
    if made is None or (att is None and not output):
        return {}
    heads, width = (att[1], att[2]) if att is not None else (None, output[-1])
    if heads is None:
        if width == 0 or made % width:
            return {}
        heads = made // width
    in_r = _rows_cols(p, "lin_self.weight")[1] if isinstance(m.lin_self, nn.Module) else None
    return {"heads": heads, "out_channels": width, "in_channels": _pyg_in_channels(m, in_l, in_r)}


@register_attributes(_pyg_named("HypergraphConv"))
def _pyg_hypergraph(p: PlannedModule) -> dict[str, object]:
    """Without attention (with it, the attention rule above speaks): one head, ``lin``
    [out, in], viewed by ``heads`` and ``out_channels``."""
    if p.module.use_attention:
        return {}
    width, in_l = _rows_cols(p, "lin.weight")
    if width is None:
        return {}
    return {"out_channels": width, "in_channels": _pyg_in_channels(p.module, in_l, None)}


@register_attributes(_pyg_named("EGConv"))
def _pyg_efficient_graph(p: PlannedModule) -> dict[str, object]:
    """``bases_lin`` [bases x out / heads, in], ``comb_lin`` [heads x bases x aggregators,
    in], viewed by ``num_heads``, ``num_bases`` and ``out_channels // num_heads``; the output
    [n, out]. A plan keeps the head count or the basis count (one of them settles the rest)."""
    m = p.module
    made, in_l = _rows_cols(p, "bases_lin.weight")
    weights = _rows_cols(p, "comb_lin.weight")[0]
    output = p.output(0)
    if made is None or weights is None or not output:
        return {}
    width, aggregators = output[-1], len(m.aggregators)
    candidates = []  # (heads, width per head)
    if width and width % m.num_heads == 0:  # the head count kept
        candidates.append((m.num_heads, width // m.num_heads))
    per_head = made // m.num_bases if made % m.num_bases == 0 else 0
    if per_head and width % per_head == 0:  # the basis count kept
        candidates.append((width // per_head, per_head))
    for heads, per_head in candidates:
        if per_head and made % per_head == 0:
            bases = made // per_head
            if heads * bases * aggregators == weights:
                return {
                    "num_heads": heads,
                    "num_bases": bases,
                    "out_channels": width,
                    "in_channels": in_l,
                }
    return {}


@register_attributes(_pyg_named("MeshCNNConv"))
def _pyg_mesh(p: PlannedModule) -> dict[str, object]:
    """Five ``kernels`` [out, in]; the output made by ``empty(n, out_channels)``."""
    width, in_l = _rows_cols(p, "kernels.0.weight")
    if width is None:
        return {}
    return {"out_channels": width, "in_channels": in_l}


@register_attributes(lambda m: type(m).__name__ == "Conv1D" and hasattr(m, "nf"))
def _gpt2_conv1d(p: PlannedModule) -> dict[str, object]:
    w = p.shape("weight")  # transformers' GPT-2 linear: weight [in, out]
    if w is None or len(w) != 2:
        return {}
    return {"nx": w[0], "nf": w[1]}


def own_attribute(m: nn.Module, name: str, default=None):
    """``m.name`` where the module or its class holds it (an attribute, a property), without
    the ``__getattr__`` fallbacks: nn.Module's (its parameters and submodules) and diffusers'
    (a model's config fields, with a deprecation warning): a plan's attribute updates are of
    what the module itself keeps."""
    state = vars(m)
    if name in state:
        return state[name]
    if not hasattr(type(m), name):  # (the class's lookup: no instance __getattr__)
        return default
    return getattr(m, name, default)


# -- attention calls -----------------------------------------------------------------------------
HEADS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads")  # (heads: diffusers)
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
HEADS_TIMES_DIM = ("all_head_size", "inner_dim", "split_size")
HIDDEN = ("hidden_size", "embed_dim", "d_model", "n_embd")


def attention_updates(dg: DependencyGraph, modules, masks) -> list[AttributeUpdate]:
    """Attention modules' head counts (and sizes derived from them), and the hidden size
    modules keep as an attribute, where the current value matches the traced one."""
    sizes = dg.slot_sizes
    kept = dg.slot_kept_size
    found: dict[tuple[str, str], object] = {}
    for call in dg.coupling_model.attention:
        h, hk = int(sizes[call.heads]), int(sizes[call.kv_heads])
        h2, hk2 = kept(call.heads, masks), kept(call.kv_heads, masks)
        known_dim = call.head_dim >= 0
        d = int(sizes[call.head_dim]) if known_dim else 0
        d2 = kept(call.head_dim, masks) if known_dim else 0
        m = modules.get(call.module)
        if m is None:
            continue
        for names, old, new in (
            (HEADS, h, h2),
            (KV_HEADS, hk, hk2),
            (HEADS_TIMES_DIM if known_dim else (), h * d, h2 * d2),
            (("num_key_value_groups",), h // hk, h2 // max(hk2, 1)),
        ):
            for attr in names:
                if own_attribute(m, attr) == old and old != new:
                    found[(call.module, attr)] = (old, new)
    hidden = {
        (int(sizes[s]), kept(s, masks))
        for s, kind in dg.coupling_model.kind_slots
        if kind == "hidden"
    }
    changed = {old: new for old, new in hidden if old != new}
    if len(changed) == 1 and len(hidden) == 1:
        [(old, new)] = changed.items()
        for name, m in modules.items():
            for attr in HIDDEN:
                if (name, attr) not in found and own_attribute(m, attr) == old:
                    found[(name, attr)] = (old, new)
    return [AttributeUpdate(name, attr, old, new) for (name, attr), (old, new) in found.items()]


_VIEWS = frozenset({"aten.view", "aten._unsafe_view", "aten.reshape", "aten.view_copy"})


def tied_attributes(dg: DependencyGraph, modules, masks, spoken) -> list[AttributeUpdate]:
    """Integer attributes of modules no attribute rule speaks for that the code compared with
    a size it read (``assert x.shape[1] == self.channels``: diffusers' up- and downsamplers):
    each follows that dim's kept size, where every such comparison agrees. (The comparison
    reads both: the plan is traced with the new value, which checks it.)"""
    saw = dg.graph.code_saw
    if saw is None or not saw.ties:
        return []
    slots = dg.coupling_model.value_slots
    names = _names_by_id(modules)
    seen: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for module, attr, value, dim in saw.ties:
        name = names.get(module)
        if name is not None and dim < len(slots[value]):
            s = slots[value][dim]
            seen.setdefault((name, attr), set()).add(
                (int(dg.slot_sizes[s]), dg.slot_kept_size(s, masks))
            )
    return _agreed(seen, modules, spoken)


def _names_by_id(modules) -> dict[int, str]:
    """id(module) -> its first name."""
    names: dict[int, str] = {}
    for name, m in modules.items():
        names.setdefault(id(m), name)
    return names


def _agreed(seen, modules, spoken=frozenset()) -> list[AttributeUpdate]:
    """The updates of ``seen`` ((module, attribute) -> the (old, new) sizes it gave) where
    every size agrees, the module holds the old value, and no rule speaks for it."""
    updates = []
    for (name, attr), sizes in seen.items():
        m = modules[name]
        if len(sizes) != 1 or (name, attr) in spoken or attribute_rule(m) is not None:
            continue
        [(old, new)] = sizes
        if old != new and own_attribute(m, attr) == old:
            updates.append(AttributeUpdate(name, attr, old, new))
    return updates


_CONFIG_LIBRARIES = frozenset({"transformers", "diffusers"})


def sizing_attributes(dg: DependencyGraph, modules, masks) -> list[AttributeUpdate]:
    """Integer attributes of modules no attribute rule speaks for that the code gave as they
    are as a size of a view, reshape, expand or new tensor (``xq.view(b, n, self.n_local_heads,
    self.head_dim)``, ``expand(b, n, kv, self.n_rep, d)``): each follows the kept size of
    the dim it gave, where every such size agrees. (A use of the attribute otherwise, as a
    number or in a branch, makes the plan be traced with the new value, which checks it.)
    Not in a model built by transformers or diffusers from a config: its attributes are the
    config's, which the named updates and the config's own search speak for (one the config
    does not set, MVP's ``head_dim``, following would make a model its config cannot
    rebuild); nor where the code reads tensor values: the plan's trace does not compare the
    numbers and branches of such code (they may come from the data), and cannot tell a size
    the code fixes from one the data decides where it cannot replay them (``.tolist()`` of a
    routing's counts)."""
    saw = dg.graph.code_saw
    if saw is None or not saw.shaped_calls or saw.values_read:
        return []
    config = getattr(dg.model, "config", None)
    if type(config).__module__.partition(".")[0] in _CONFIG_LIBRARIES:
        return []
    slots = dg.coupling_model.value_slots
    names = _names_by_id(modules)
    seen: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for call in saw.shaped_calls:
        if call.kind not in ("view", "expand", "new") or call.value is None:
            continue
        dims = slots[call.value]
        for d, size in enumerate(call.ints):
            leaf = getattr(size, "expr", None)
            if type(leaf) is not AttributeLeaf or leaf.index is not None or d >= len(dims):
                continue
            name = names.get(leaf.module)
            if name is not None and int(dg.slot_sizes[dims[d]]) == leaf.value:
                seen.setdefault((name, leaf.name), set()).add(
                    (leaf.value, dg.slot_kept_size(dims[d], masks))
                )
    return _agreed(seen, modules)


def reshaped_head_counts(dg: DependencyGraph, modules, masks) -> list[AttributeUpdate]:
    """Head counts of modules whose attention the rules do not see as such (attention over a
    graph's edges: torch_geometric's ``TransformerConv``), from the code's own reshapes: a
    module that views a tensor as ``(-1, self.heads, C)`` names the heads' dim by its count;
    the count follows the heads kept there. Only where every such dim of the module agrees;
    a module whose attention calls or attribute rule say its heads is left to them."""
    g, slots = dg.graph, dg.coupling_model.value_slots
    attending = dg.coupling_model.attention_modules
    found: dict[tuple[str, str], set[tuple[int, int]]] = {}
    counts_of: dict[str, dict] = {}  # module -> its head counts (asked per view it runs)
    views: dict = {}  # op -> whether it is a view (its name made once)
    for node in g.nodes:
        is_view = views.get(node.op)
        if is_view is None:
            is_view = views[node.op] = node.packet in _VIEWS
        if not is_view or node.module in attending:
            continue
        counts = counts_of.get(node.module)
        if counts is None:
            m = modules.get(node.module)
            counts = {} if m is None else {a: own_attribute(m, a) for a in HEADS}
            counts = counts_of[node.module] = {a: n for a, n in counts.items() if type(n) is int}
        sizes = node.args[1] if len(node.args) > 1 else None
        if not counts or not isinstance(sizes, (list, tuple)) or not node.outputs:
            continue
        out = slots[node.outputs[0]]
        for d, size in enumerate(sizes):
            for attr, count in counts.items():
                if size == count and d < len(out) and dg.slot_sizes[out[d]] == count:
                    found.setdefault((node.module, attr), set()).add(
                        (count, dg.slot_kept_size(out[d], masks))
                    )
    updates = []
    for (module, attr), seen in found.items():
        if len(seen) == 1 and attribute_rule(modules[module]) is None:
            [(old, new)] = seen
            if old != new:
                updates.append(AttributeUpdate(module, attr, old, new))
    return updates


def attributes_named_like(dg: DependencyGraph, config_updates, known) -> list[AttributeUpdate]:
    """Module attributes named like a config field that changes (an MLP's
    ``intermediate_size``, say) and holding its old value: they follow it, as a model built
    from the updated config would have them."""
    done = {(u.module, u.attr) for u in known}
    out = []
    prefix_of = module_prefixes(dg.model, config_scopes(getattr(dg.model, "config", None)))
    for c in config_updates:
        if not isinstance(c.old, int) or isinstance(c.old, bool):
            continue
        prefix, _, attr = c.field.rpartition(".")
        prefix += "." if prefix else ""  # (a sub-config's field: its part's modules only)
        for name, m in dg.walk.modules:
            if (
                name
                and (name, attr) not in done
                and own_attribute(m, attr) == c.old
                and prefix_of(name) == prefix
            ):
                out.append(AttributeUpdate(name, attr, c.old, c.new))
                done.add((name, attr))
    return out


# -- setting them --------------------------------------------------------------------------------
def _set(model: nn.Module, update: AttributeUpdate, value, modules: dict) -> None:
    """``update.attr`` of module ``update.module`` set to ``value``; ``modules`` caches the
    lookups of a batch of updates (a module has a dozen of them)."""
    m = modules.get(update.module)
    if m is None and not modules:  # a batch's first lookup: one walk serves the rest
        modules.update(model.named_modules())
        m = modules.get(update.module)
    if m is None:  # (a module registered twice is walked under its first name only)
        m = modules[update.module] = model.get_submodule(update.module)
    setattr(m, update.attr, value)


def set_attributes(model: nn.Module, updates, new: bool = True) -> None:
    """Every update's new (or old) value, in order (old values: in reverse order)."""
    modules: dict[str, nn.Module] = {}
    for u in updates if new else reversed(updates):
        _set(model, u, u.new if new else u.old, modules)


@contextlib.contextmanager
def temporary_attributes(model: nn.Module, updates):
    """The updates' new values for the duration; the old ones back on exit, whatever
    happens."""
    done = []
    modules: dict[str, nn.Module] = {}
    try:
        for u in updates:
            _set(model, u, u.new, modules)
            done.append(u)
        yield
    finally:
        for u in reversed(done):
            _set(model, u, u.old, modules)
