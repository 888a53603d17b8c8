"""A transformers model's config follows the pruning, so that ``save_pretrained`` then
``from_pretrained`` rebuilds the pruned model.

The new values come from the resolved graph: attention calls give heads, key/value heads and head
dims; the hidden-kind group gives the hidden size; the channel groups that had the config's
intermediate size give the MLP width. A config holds one value per field, so a field is set only
when every layer agrees. Then the config is checked the only way that is sure: a model built from
it on the meta device must have every pruned tensor's shape. If it does not, the user is told
which tensor disagrees (and ``require_loadable=True`` refuses before anything changes).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ConfigMismatchWarning, PruningError, user_stacklevel
from ..graph.dependency import config_reads, config_scopes, module_prefixes
from .attributes import AttributeUpdate

if TYPE_CHECKING:
    from ..graph.dependency import DependencyGraph


# Tests set this: a trial of the config field search skipped because the build read no such
# field is built all the same, and an internal error is raised where its shapes differ.
CHECK_SKIPPED_BUILDS = os.environ.get("DEPGRAPH_CHECK_SKIPPED_TRACES") == "1"


@dataclass(frozen=True)
class ConfigUpdate:
    field: str
    old: object
    new: object


class Rebuilds:
    """Models of ``type(model)`` built on the meta device from configs after a round trip
    through a dict (what loading runs), one per distinct config: a plan's checks ask for the
    same config more than once, and a build of a deep model costs a tenth of a second."""

    def __init__(self, model):
        self.model = model
        self._built: dict[str, tuple] = {}
        # key -> the fields its build read (dotted paths; None: unknown, say a deep copy), for
        # builds made while ``watching`` (the config search's)
        self._reads: dict[str, frozenset | None] = {}
        self.watching = False
        # id(rebuilt model) -> (it, its numbers that differ from the model's): _numbers_differing
        self.differing: dict[int, tuple] = {}
        # id(rebuilt model) -> (it, (its state-dict shapes, their names)): state
        self._state: dict[int, tuple] = {}
        self._model_names: frozenset[str] | None = None

    @property
    def model_names(self) -> frozenset[str]:
        """The state-dict names of the model itself (pruning keeps every one)."""
        if self._model_names is None:
            self._model_names = frozenset(n for n, _ in state_shapes(self.model))
        return self._model_names

    @staticmethod
    def _key(config) -> str:
        return json.dumps(config.to_dict(), sort_keys=True, default=repr)

    def of(self, config):
        """(the model, None), or (None, what the class or the config raised)."""
        key = self._key(config)
        if key not in self._built:
            self._built[key], reads = self._build(config, self.watching)
            if self.watching:
                self._reads[key] = reads
        return self._built[key]

    def state(self, config) -> tuple[list[tuple[str, tuple]], frozenset[str]] | None:
        """The (name, shape) of every state-dict entry of the model built from ``config``, and
        their names (None: it does not build): one walk of each rebuilt model."""
        built = self.of(config)[0]
        if built is None:
            return None
        known = self._state.get(id(built))
        if known is None or known[0] is not built:
            shapes = list(state_shapes(built))
            known = self._state[id(built)] = (built, (shapes, frozenset(n for n, _ in shapes)))
        return known[1]

    def names(self, config) -> frozenset[str] | None:
        """The state-dict names of the model built from ``config`` (None: it does not
        build)."""
        state = self.state(config)
        return None if state is None else state[1]

    @contextlib.contextmanager
    def watched(self):
        """Builds made for the duration note the fields they read (:meth:`fields_read`)."""
        self.watching = True
        try:
            yield
        finally:
            self.watching = False

    def fields_read(self, config) -> frozenset | None:
        """The fields the build of ``config`` read (None: not known). A build reads the same
        fields with the same values from a config that differs only in fields it did not
        read: it builds the same model."""
        key = self._key(config)
        if key not in self._reads:  # (built before anyone watched: once more, watched)
            self._reads[key] = self._build(config, True)[1]
        return self._reads[key]

    def _build(self, config, watch: bool) -> tuple[tuple, frozenset | None]:
        reads = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reloaded = reloaded_config(config)
                holder = types.SimpleNamespace(config=reloaded)
                watched = config_reads(holder) if watch else contextlib.nullcontext()
                with torch.device("meta"), no_torch_init(), watched as read:
                    built = (type(self.model)(reloaded), None)
                if watch:
                    reads = read.result()
        except Exception as exc:  # noqa: BLE001  (a config the class or the model refuses)
            built = (None, exc)
        return built, frozenset(reads) if reads is not None and reads.known else None


def reloaded_config(config):
    """``type(config).from_dict(config.to_dict())``: the config after a round trip through a
    dict, as loading makes it. Where the class keeps transformers' own ``from_dict``, which
    with no keyword arguments is the class called on the dict and a log line, the class is
    called directly: the log line formats the whole config eagerly (its differences from a
    default config built for the purpose), a third of a rebuild's time for a MaskFormer."""
    cls = type(config)
    base = sys.modules["transformers"].PretrainedConfig
    if getattr(cls.from_dict, "__func__", None) is base.from_dict.__func__:
        return cls(**config.to_dict())
    return cls.from_dict(config.to_dict())


def config_of(model):
    """The transformers config of ``model`` (None: it has none, or transformers is absent).
    A model with a transformers config was built by transformers, so it is imported already:
    a model without one never pays for importing it (a second, the first time)."""
    config = getattr(model, "config", None)
    transformers = sys.modules.get("transformers")
    if config is None or transformers is None:
        return None
    return config if isinstance(config, transformers.PretrainedConfig) else None


def _uniform(pairs: set[tuple[int, int]], what: str, problems: list[str]):
    """The new value of a field, from (old, new) per layer: None when nothing changed; when the
    layers disagree (or had different values to begin with) a problem is noted."""
    if all(old == new for old, new in pairs):
        return None
    news = {new for _, new in pairs}
    if len(news) > 1 or len({old for old, _ in pairs}) > 1:
        problems.append(f"{what} would differ between layers: {sorted(pairs)} (old, new)")
        return None
    return news.pop()


def _field(config, name: str, default=None):
    """``config.name``, or ``default`` where it has none or sets it per layer: a heterogeneous
    transformers config (``per_layer_config``) raises when such a field is read from it."""
    if name in (getattr(config, "per_layer_attributes", None) or ()):
        return default
    return getattr(config, name, default)


def get_field(config, path: str, default=None):
    """The value at a dotted field path (``"text_config.intermediate_size"``)."""
    *parents, name = path.split(".")
    for parent in parents:
        config = getattr(config, parent, None)
        if config is None:
            return default
    return getattr(config, name, default)


def set_field(config, path: str, value) -> Callable[[], None]:
    """Set the field at a dotted path (as :func:`get_field` reads it); returns what undoes
    it: the old value back, or a field the config did not hold removed again (a config
    holding ``head_dim = None`` is not one without it: ``getattr(config, "head_dim",
    hidden // heads)`` reads the None)."""
    *parents, name = path.split(".")
    for parent in parents:
        config = getattr(config, parent)
    missing = object()
    old = getattr(config, name, missing)
    setattr(config, name, value)

    def undo() -> None:
        if old is not missing:
            setattr(config, name, old)
        elif hasattr(config, name):
            delattr(config, name)

    return undo


# Config fields holding the number of experts of every MoE layer, by model family.
EXPERT_COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _slot_prefixes(dg: DependencyGraph, prefix_of) -> Callable[[int], tuple[str, ...]]:
    """A function of a slot giving the prefixes of the configs read by the modules whose
    parameters have a dim there (a VLM's text hidden width: its language model's, and the
    projector's feeding it)."""
    res = dg.resolution
    leaf_prefixes: dict[int, set[str]] = {}
    for name in dg.graph.params:
        prefix = prefix_of(name.rpartition(".")[0])
        for td in dg.tensor_dims[name]:
            for leaf in td.leaves:
                leaf_prefixes.setdefault(int(leaf), set()).add(prefix)

    def prefixes(slot: int) -> tuple[str, ...]:
        found: set[str] = set()
        for leaf in res.leaves_of(slot):
            found |= leaf_prefixes.get(int(leaf), set())
        return tuple(sorted(found)) or ("",)

    return prefixes


def _kv_heads_of_repeated(config, heads: set[tuple[int, int]]):
    """(old, new) key/value heads per layer where the attention ops see the keys repeated to
    the query heads (eager attention after ``repeat_kv``): the config's ratio of query heads
    to key/value heads holds (a unit is a key/value head with its query heads; a model built
    from the config checks it). None where the config says no such ratio."""
    q, kv = _field(config, "num_attention_heads"), _field(config, "num_key_value_heads")
    if not (type(q) is int and type(kv) is int and 0 < kv < q and q % kv == 0):
        return None
    ratio = q // kv
    if any(old != q or new % ratio for old, new in heads):
        return None
    return {(old // ratio, new // ratio) for old, new in heads}


def config_updates(dg: DependencyGraph, masks: dict[int, np.ndarray], unit_keep: np.ndarray):
    """(updates, problems): new config field values, and what a config cannot express. A
    composite model's fields are set in the sub-config each part reads (dotted paths)."""
    config = config_of(dg.model)
    if config is None:
        return [], []
    sizes = dg.slot_sizes
    kept = dg.slot_kept_size
    problems: list[str] = []
    updates: list[ConfigUpdate] = []
    reads = getattr(dg, "config_reads", frozenset())
    scopes = config_scopes(config)
    configs = {prefix: c for prefix, c in scopes.values()}
    prefix_of = module_prefixes(dg.model, scopes)
    slot_prefixes = _slot_prefixes(dg, prefix_of) if len(scopes) > 1 else lambda s: ("",)

    def propose(field: str, new, prefix: str = "", what: str | None = None) -> None:
        """``new``: the value, or with ``what`` the (old, new) of every layer, which must
        agree (a field the config does not have is no problem where they do not)."""
        scope = configs[prefix]
        path = prefix + field
        per_layer = field in (getattr(scope, "per_layer_attributes", None) or ())
        if not per_layer and not hasattr(scope, field):
            return
        if what is not None:
            new = _uniform(new, what, problems)
        if new is None:
            return
        if per_layer:
            problems.append(f"config.{path} is set per layer (per_layer_config): left as it is")
            return
        old = getattr(scope, field)
        if old == new:
            return
        aliases = getattr(type(scope), "attribute_map", None) or {}
        if path in reads or prefix + str(aliases.get(field, field)) in reads:
            # The forward reads it (or the field it is an alias of: Funnel's num_attention_heads
            # is n_head): the plan was validated with the old value, and a new one could
            # change what the pruned model computes (not only how it reloads).
            problems.append(
                f"config.{path} keeps {old!r} (not {new!r}): the model's forward reads it"
            )
            return
        updates.append(ConfigUpdate(path, old, new))

    def by_prefix(slots_kinds, kind: str) -> dict[str, set[tuple[int, int]]]:
        out: dict[str, set[tuple[int, int]]] = {}
        for s, k in slots_kinds:
            if k == kind:
                for prefix in slot_prefixes(s):
                    out.setdefault(prefix, set()).add((int(sizes[s]), kept(s, masks)))
        return out

    calls: dict[str, list] = {}
    for c in dg.coupling_model.attention:
        calls.setdefault(prefix_of(c.module), []).append(c)
    hidden = by_prefix(dg.coupling_model.kind_slots, "hidden")
    for prefix in configs:
        scope = configs[prefix]
        before = len(updates)
        head_dim = None
        if prefix in calls:
            layer_calls = calls[prefix]
            heads = {(int(sizes[c.heads]), kept(c.heads, masks)) for c in layer_calls}
            propose("num_attention_heads", heads, prefix, "the number of attention heads")
            kv = {(int(sizes[c.kv_heads]), kept(c.kv_heads, masks)) for c in layer_calls}
            if all(c.kv_heads == c.heads for c in layer_calls):
                kv = _kv_heads_of_repeated(scope, heads) or kv
            said = _field(scope, "num_key_value_heads")
            if type(said) is int and any(old == said for old, _ in kv):
                # the layers with the count the field says (MiMo-V2-Flash's sliding-window
                # layers have twice as many, built from it: a rebuild checks them)
                kv = {(old, new) for old, new in kv if old == said}
            propose("num_key_value_heads", kv, prefix, "the number of key/value heads")
            dims = {
                (int(sizes[c.head_dim]), kept(c.head_dim, masks))
                for c in layer_calls
                if c.head_dim >= 0
            }
            propose("head_dim", dims, prefix, "the head dim")
            kept_dims = {new for _, new in dims}
            head_dim = kept_dims.pop() if len(kept_dims) == 1 else None
        if prefix in hidden:
            widths = hidden[prefix]
            said = _field(scope, "hidden_size")
            if type(said) is int and any(old == said for old, _ in widths):
                # the widths the field says (ALBERT's embedding_size, a tower's projection
                # widths are other fields: found by trying them on a rebuild)
                widths = {(old, new) for old, new in widths if old == said}
            propose("hidden_size", widths, prefix, "the hidden size")
        per_layer = getattr(scope, "per_layer_attributes", None) or ()
        if (
            head_dim is not None
            and _field(scope, "head_dim") is None
            and "head_dim" not in per_layer
            and len(updates) > before
            and prefix + "head_dim" not in reads
        ):
            # Models that read getattr(config, "head_dim", hidden_size // heads) need it said.
            updates.append(ConfigUpdate(prefix + "head_dim", None, head_dim))

    for prefix, experts in by_prefix(dg.coupling_model.kind_slots, "experts").items():
        scope = configs[prefix]
        count = _uniform(experts, "the number of experts", problems)
        if count is None:
            continue
        old = next(iter(experts))[0]
        aliases = getattr(type(scope), "attribute_map", {}) or {}
        per_layer = getattr(scope, "per_layer_attributes", None) or ()
        for name in EXPERT_COUNT_FIELDS:
            if name in aliases and aliases[name] in EXPERT_COUNT_FIELDS:
                continue  # another name of a field set here (Qwen3-MoE's num_experts)
            if _field(scope, name) == old or name in per_layer:
                propose(name, count, prefix)

    # Widths a config field holds (intermediate_size, d_ff, ffn_dim ...) are found by trying
    # them on a rebuild (check_loadable); GPT-2's n_inner=None (4 x hidden) holds no value.
    if _field(config, "n_inner", 0) is None and isinstance(_field(config, "hidden_size"), int):
        width = 4 * config.hidden_size
        widths = {
            (width, int(unit_keep[g.unit_ids].sum()))
            for g in dg.groups
            if g.kind == "channels" and g.num_units == width
        }
        if any(old != new for old, new in widths):
            propose("n_inner", widths, "", "config.n_inner")
    ratio = _field(config, "mlp_ratio")
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio > 0:
        # Swin-like: each MLP is mlp_ratio x its stage's width; uniform pruning keeps one ratio.
        # The width is the pruned one: a model built from the config makes each MLP
        # mlp_ratio x its stage's *new* width.
        stream: dict[int, set[int]] = {}
        for s, kind in dg.coupling_model.kind_slots:
            if kind == "hidden":
                stream.setdefault(int(sizes[s]), set()).add(kept(s, masks))
        new_ratios = set()
        for g in dg.groups:
            base = g.num_units / ratio
            if g.kind == "channels" and base == int(base) and int(base) > 0:
                kept_units = int(unit_keep[g.unit_ids].sum())
                widths = stream.get(int(base), {int(base)})
                kept_base = next(iter(widths)) if len(widths) == 1 else int(base)
                if kept_units / kept_base != ratio:
                    new_ratios.add(kept_units / kept_base)
        if len(new_ratios) == 1:
            propose("mlp_ratio", new_ratios.pop())
        elif new_ratios:
            problems.append(f"the MLP width ratio differs between layers ({sorted(new_ratios)})")
    return updates, problems


def loadable_config(
    dg: DependencyGraph,
    updates,
    planned_shapes,
    problems,
    rebuilds: Rebuilds | None = None,
) -> tuple[list[ConfigUpdate], str | None]:
    """Whether the updated config rebuilds the pruned model: each update set on a copy of the
    config (its own field validation runs; an integral float becomes an int where the field
    asks for one), the config's class-level validation (``validate()``), a round trip through
    a dict (what loading from config.json runs), and a model built from it on the meta device
    whose every tensor must have the pruned shape. Returns the updates the config accepts and
    what it cannot express (None: everything), for :func:`report_mismatch`."""
    model = dg.model
    config = config_of(model)
    if config is None:
        return list(updates), None
    rebuilds = rebuilds or Rebuilds(model)
    new_config = copy.deepcopy(config)
    mismatches = list(problems)
    accepted: list[ConfigUpdate] = []
    valid = _validation_error(new_config) is None
    refused: list[tuple[ConfigUpdate, str]] = []
    for u in updates:
        held = get_field(new_config, u.field)
        if isinstance(held, (list, tuple, dict)) and not isinstance(u.new, type(held)):
            # a value per stage or layer (Swin's num_heads): one number cannot stand for it
            mismatches.append(f"config.{u.field} holds {held!r}, not one value for every layer")
            continue
        done, error = _set_checked(new_config, u, valid)
        if done is not None:
            accepted.append(done)
        else:
            refused.append((u, error))
    if refused and valid:
        # The class's checks may relate fields (hidden divisible by heads; ESMC's heads equal
        # to its key/value heads): what one refused alone is tried with the others set, then
        # all of them together.
        again = []
        for u, error in refused:
            done, error = _set_checked(new_config, u, valid)
            accepted += [done] if done is not None else []
            again += [(u, error)] if done is None else []
        refused = again
        if len(refused) > 1:
            trial = copy.deepcopy(new_config)
            if all(_set_field(trial, u.field, u.new) is None for u, _ in refused) and (
                _validation_error(trial) is None
            ):
                new_config = trial
                accepted += [u for u, _ in refused]
                refused = []
    mismatches += [f"config.{u.field} cannot be {u.new!r} ({error})" for u, error in refused]
    shapes = None
    named = _fields_modules_hold(dg, new_config, planned_shapes, {u.field for u in accepted})
    if named:
        # Tried first, with the updates above: a rebuild that matches needs no search (one
        # build of the model instead of two).
        trial = copy.deepcopy(new_config)
        if all(_set_field(trial, u.field, u.new) is None for u in named) and (
            _validation_error(trial) is None
        ):
            left = _shape_mismatches(dg, trial, planned_shapes, rebuilds)
            if not left:
                new_config, shapes = trial, left
                accepted += named
    if shapes is None:
        shapes = _shape_mismatches(dg, new_config, planned_shapes, rebuilds)
    if shapes:  # fields the updates above do not know: found by trying them on a rebuild
        # (not a field the forward reads: its new value could change what the model computes)
        settled = {u.field for u in accepted} | set(getattr(dg, "config_reads", ()))
        new_config, found, shapes = _search_fields(
            dg, new_config, planned_shapes, shapes, settled, rebuilds
        )
        accepted += found
    refused = any(isinstance(m, _BuildFailure) for m in shapes)
    other_tensors = any(isinstance(m, _NameChange) for m in shapes)
    if (
        (refused or other_tensors)
        and rebuilds.of(config)[1] is None
        and (not other_tensors or rebuilds.names(config) == rebuilds.model_names)
    ):
        # The updates each validate but together the class refuses them (SqueezeBERT asserts
        # its embedding width equals its hidden width), or build other tensors than the
        # model's (ELECTRA's hidden size set to its embeddings' width: no projection between
        # them): the config is left as it was, one the class builds the model's tensors from
        # (saving and loading build the model from it).
        accepted = []
    mismatches += shapes
    if not shapes and accepted:
        mismatches += _scale_mismatches(dg, config, new_config, rebuilds)
    if not mismatches:
        return accepted, None
    return accepted, mismatch_message(dg, mismatches)


def _scale_mismatches(dg: DependencyGraph, config, new_config, rebuilds: Rebuilds) -> list[str]:
    """The numbers other than sizes (floats) a model built from the updated config holds
    otherwise than the pruned model, where one built from the original config holds the
    model's: scales the config decides (Gemma's embedding scale, sqrt(hidden_size)). The
    pruned model keeps its own (its function is the pruned one's); a plain reload would
    compute with the new ones."""
    return [
        f"{name}.{attr} would be {new:.6g} from the config, {value:.6g} pruned (a scale the "
        "config decides: the pruned model computes with its own)"
        for name, attr, value, new in _decided_by_config(dg, config, new_config, rebuilds, float)
    ]


def _decided_by_config(dg: DependencyGraph, config, new_config, rebuilds: Rebuilds, kind, done=()):
    """(module, attribute, the model's value, the new one) of every public attribute of type
    ``kind`` that a model built from ``new_config`` holds otherwise than this model, where one
    built from the original ``config`` holds this model's (a value the config decides).
    ``done``: (module, attribute) pairs to pass over."""
    after = rebuilds.of(new_config)[0]
    if after is None:
        return []
    differ = [
        (name, attr, value, new)
        for name, attr, value, new in _numbers_differing(dg, after, rebuilds)
        if type(value) is kind and (name, attr) not in done
    ]
    if not differ:  # (the common case: no second model built)
        return []
    before = rebuilds.of(config)[0]
    if before is None:
        return []
    built_before = dict(before.named_modules())
    return [
        (name, attr, value, new)
        for name, attr, value, new in differ
        if name in built_before and getattr(built_before[name], attr, None) == value
    ]


def _numbers_differing(dg: DependencyGraph, after, rebuilds: Rebuilds) -> list[tuple]:
    """(module, attribute, the model's value, the rebuilt one's) of every public int or float
    attribute the rebuilt model ``after`` holds otherwise than this model (of the same type),
    found once per rebuilt model: both kinds are asked of one (one pass over the model)."""
    known = rebuilds.differing.get(id(after))
    if known is not None and known[0] is after:
        return known[1]
    built_after = dict(after.named_modules())
    differ = []
    for name, module in dg.walk.modules:
        a = built_after.get(name)
        if a is None:
            continue
        for attr, value in vars(module).items():
            kind = type(value)
            if (kind is not int and kind is not float) or attr.startswith("_"):
                continue
            new = getattr(a, attr, None)
            if type(new) is kind and new != value:
                differ.append((name, attr, value, new))
    rebuilds.differing[id(after)] = (after, differ)
    return differ


def _set_checked(config, u: ConfigUpdate, valid: bool) -> tuple[ConfigUpdate | None, str | None]:
    """Set ``u`` on ``config`` where the field takes its value (an integral float as an int
    where the field asks for one) and, if the config was ``valid``, the class's own checks
    (hidden divisible by heads ...) pass on what is set so far: (the update as set, None), or
    (None, why not), the config as it was."""
    candidates = [u.new]
    if isinstance(u.new, float) and u.new.is_integer():
        candidates.append(int(u.new))  # an int field: a whole ratio as an int
    error = None
    for value in candidates:
        before = get_field(config, u.field)
        error = _set_field(config, u.field, value)
        if error is None and valid:
            error = _validation_error(config)
            if error is not None:
                _set_field(config, u.field, before)
        if error is None:
            return ConfigUpdate(u.field, u.old, value), None
    return None, error


def mismatch_message(dg: DependencyGraph, mismatches: list[str]) -> str:
    return (
        f"{type(dg.model).__name__}'s config cannot express the pruned shapes ("
        + "; ".join(mismatches[:4])
        + ("; ..." if len(mismatches) > 4 else "")
        + "), so plain transformers from_pretrained will not rebuild this model: save it with "
        "depgraph_ext.save_pretrained and load it with depgraph_ext.from_pretrained, or "
        "prune with require_loadable=True (counts the config can say, or a refusal)"
        + (
            ". Configs that derive the head dim from hidden_size / num_attention_heads "
            "(GPT-2, BERT, OPT) can say MLP pruning only: ratios={'heads': 0, 'hidden': 0}"
            if dg.coupling_model.attention
            else ""
        )
    )


def report_mismatch(message: str | None, require: bool) -> None:
    """What the config cannot express: a ``ConfigMismatchWarning``, or with ``require`` a
    ``PruningError`` raised before anything changes."""
    if message is None:
        return
    if require:
        raise PruningError(message)
    warnings.warn(message, ConfigMismatchWarning, stacklevel=user_stacklevel())


def attributes_of_rebuild(
    dg: DependencyGraph, updates, known, rebuilds: Rebuilds | None = None
) -> list[AttributeUpdate]:
    """Integer attributes a model built from the updated config holds otherwise, where this
    model holds what one built from its original config does (a value the config decides, as
    an expert module's ``intermediate_dim``): they follow, so that the pruned model is what
    loading its saved config builds. ``known``: attribute updates already planned."""
    config = config_of(dg.model)
    if config is None or not updates:
        return []
    rebuilds = rebuilds or Rebuilds(dg.model)
    new_config = copy.deepcopy(config)
    for u in updates:
        set_field(new_config, u.field, u.new)
    # Counts and sizes only: a float the config decides is a scale the forward multiplies by
    # (Dory's sqrt(hidden_size)); changing it would change the function (_scale_mismatches).
    done = {(u.module, u.attr) for u in known}
    return [
        AttributeUpdate(name, attr, value, new)
        for name, attr, value, new in _decided_by_config(
            dg, config, new_config, rebuilds, int, done
        )
    ]


class _BuildFailure(str):
    """A mismatch that is the model not building from the config at all: worse than any
    number of shapes that differ."""


def _worse(a: list[str], b: list[str]) -> bool:
    """Whether mismatches ``a`` are worse than ``b``: a failing build first, then more shapes."""

    def rank(left):
        return (any(isinstance(m, _BuildFailure) for m in left), len(left))

    return rank(a) > rank(b)


def _shape_mismatches(dg: DependencyGraph, config, planned_shapes, rebuilds: Rebuilds) -> list[str]:
    """What a model built from ``config`` (after a round trip through a dict, as loading does)
    on the meta device would have of another shape than the pruned model, or would make or
    lack of its tensors (or why it cannot be built at all: a :class:`_BuildFailure`)."""
    model = dg.model
    exc = rebuilds.of(config)[1]
    if exc is not None:  # a config the class or the model refuses
        cause = exc.__cause__ or exc
        return [
            _BuildFailure(
                f"{type(model).__name__} cannot be built from the updated config "
                f"({type(exc).__name__}: {str(cause)[:300]})"
            )
        ]
    g = dg.graph
    traced = g.params | g.buffers  # the model's tensors as traced: shapes before pruning
    out = []
    shapes, names = rebuilds.state(config)
    for name, shape in shapes:
        canonical = g.aliases.get(name, name)
        expected = planned_shapes.get(canonical)
        if expected is None and canonical in traced:
            expected = g.values[traced[canonical]].shape
        if expected is not None and shape != tuple(expected):
            out.append(f"{name} would be {shape} from the config, {tuple(expected)} pruned")
    # A pruned model has every tensor it had: one a build makes or lacks against the model (a
    # layer count changed, a projection made or dropped) is a mismatch as a shape is (half
    # the blocks, half the mismatched shapes, is no better for the field search).
    return out + _name_changes(rebuilds.model_names, names)


def _width_changes(dg: DependencyGraph, planned_shapes) -> tuple[dict[int, int], set[int]]:
    """Every size that changed the same way wherever it changed (old -> new), from the pruned
    tensors' dims; and the sizes that also stay unchanged in some pruned tensor (a field
    holding one of those is less likely the one that changed: tried last)."""
    g = dg.graph
    named = g.params | g.buffers
    seen: dict[int, set[int]] = {}
    kept: set[int] = set()
    for name, shape in planned_shapes.items():
        for old, new in zip(g.values[named[name]].shape, shape):
            if old != new:
                seen.setdefault(int(old), set()).add(int(new))
            else:
                kept.add(int(old))
    return {old: news.pop() for old, news in seen.items() if len(news) == 1}, kept


def _fields_modules_hold(dg: DependencyGraph, config, planned_shapes, settled: set):
    """Updates of the config's integer fields that hold a size every pruned tensor changed the
    same way, where a module whose own or whose children's tensors change so holds the field's
    value under the field's name (a Llama MLP's ``intermediate_size``, its projections'
    width): what the field search would most likely find (one scope only: a composite
    model's fields are searched)."""
    scopes = config_scopes(config)
    if len(scopes) > 1:
        return []
    changes, kept = _width_changes(dg, planned_shapes)
    reads = set(getattr(dg, "config_reads", ()))
    # The modules whose own or whose children's own tensors change, by each (old, new).
    graph = dg.graph
    named = graph.params | graph.buffers
    changed: dict[str, set] = {}
    for name, shape in planned_shapes.items():
        old = graph.values[named[name]].shape
        moves = {(int(a), int(b)) for a, b in zip(old, shape) if a != b}
        parts = name.split(".")
        for owner in (".".join(parts[:-1]), ".".join(parts[:-2])):
            changed.setdefault(owner, set()).update(moves)
    out = []
    for field, value in config.to_dict().items():
        if (
            type(value) is not int
            or value not in changes
            or value in kept
            or field in settled
            or field in reads
            or field.startswith("_")
        ):
            continue
        holders = [
            name
            for name, m in dg.walk.modules
            if type(h := vars(m).get(field)) is int and h == value
        ]
        if any((value, changes[value]) in changed.get(name, ()) for name in holders):
            out.append(ConfigUpdate(field, value, changes[value]))
    return out


def _search_fields(
    dg: DependencyGraph, config, planned_shapes, shapes: list[str], done: set, rebuilds: Rebuilds
):
    """Config fields holding a size that changed, set to the new size one at a time where
    that makes a rebuild from the config match more of the pruned shapes (and the config
    still validates): (config, updates found, shape mismatches left). Found fields are kept
    only when together they make every shape match: a field set part-way (a per-stage list
    whose last stage was not pruned) would tell the model's code a size it does not have."""
    original, mismatches = config, shapes
    changes, kept = _width_changes(dg, planned_shapes)
    candidates = []
    for field, value in _fields(config):
        name = field.rpartition(".")[2]
        if field in done or name.startswith("_") or name.endswith("_token_id"):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value in changes:
            candidates.append((field, value, changes[value]))
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and any(v in changes for v in value)
        ):
            candidates.append((field, value, [changes.get(v, v) for v in value]))
    # Each trial builds the model: sizes that changed everywhere first (Llama's
    # intermediate_size before its hidden_size, which the heads' projections share).
    candidates.sort(key=lambda c: any(v in kept for v in np.atleast_1d(c[1]).tolist()))
    found: list[ConfigUpdate] = []
    improved = True
    with rebuilds.watched():  # (each trial's build says what it read, for the next round)
        while improved and candidates and shapes:
            improved = False
            read = rebuilds.fields_read(config)
            for cand in candidates:
                field, old, new = cand
                unread = read is not None and field not in read
                if unread and not CHECK_SKIPPED_BUILDS:
                    continue  # (its build reads no such field: the same model, the same shapes)
                trial = copy.deepcopy(config)
                if (
                    _set_field(trial, field, new) is not None
                    or _validation_error(trial) is not None
                ):
                    continue
                left = _shape_mismatches(dg, trial, planned_shapes, rebuilds)
                if unread:
                    _check_unread(field, left, shapes)
                    continue
                if _worse(shapes, left):  # (a build that fails counts as worse than any shapes)
                    config, shapes, improved = trial, left, True
                    found.append(ConfigUpdate(field, old, new))
                    candidates.remove(cand)
                    break
    if shapes:
        return original, [], mismatches
    return config, found, shapes


def _name_changes(names: frozenset, trial: frozenset | None) -> list[str]:
    """A mismatch per tensor a build (its state-dict names: ``trial``) makes or lacks against
    the model's ``names``."""
    if trial is None or trial == names:
        return []
    missing = [f"{n} would be missing from the config's model" for n in sorted(names - trial)]
    made = [f"{n} would be made by the config, not in the pruned model" for n in trial - names]
    return [_NameChange(m) for m in missing + sorted(made)]


class _NameChange(str):
    """A mismatch that is a tensor the config's model makes or lacks, not a shape."""


def _check_unread(field: str, left: list[str], shapes: list[str]) -> None:
    if left != shapes:
        raise AssertionError(
            f"internal error: config.{field}, which the model's build did not read, changes "
            f"what it builds: {left[:2]} against {shapes[:2]}"
        )


def _fields(config):
    """(dotted path, value) of every field of the config and of its sub-configs, as saved."""
    for prefix, scope in config_scopes(config).values():
        for field, value in scope.to_dict().items():
            if not isinstance(value, dict):
                yield prefix + field, value


def _validation_error(config) -> str | None:
    """None, or why the class-level validation (what save_pretrained runs) of the config or
    of one of its sub-configs fails."""
    for prefix, scope in config_scopes(config).values():
        validate = getattr(scope, "validate", None)
        if not callable(validate):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                validate()
        except Exception as exc:
            where = f"{prefix[:-1]}: " if prefix else ""
            return f"{where}{type(exc).__name__}: {str(exc.__cause__ or exc)[:200]}"
    return None


def _set_field(config, field: str, value) -> str | None:
    """Set the field at a dotted path; None, or why the config refused the value."""
    try:
        set_field(config, field, value)
    except Exception as exc:  # strict configs validate each field on assignment
        return f"{type(exc).__name__}: {str(exc.__cause__ or exc)[:200]}"
    return None


def state_shapes(model: torch.nn.Module):
    """(name, shape) of every entry of ``model.state_dict()`` that is a parameter or a buffer,
    without building the dict (persistent buffers only, shared tensors under every name)."""
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        for key, p in module._parameters.items():
            if p is not None:
                yield dot + key, tuple(p.shape)
        for key, b in module._buffers.items():
            if b is not None and key not in module._non_persistent_buffers_set:
                yield dot + key, tuple(b.shape)


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "trunc_normal_",
    "orthogonal_",
    "sparse_",
)


@contextlib.contextmanager
def no_torch_init():
    """torch.nn.init's functions do nothing for the duration: a model built on the meta device
    to compare shapes needs no initial values, and on meta each init costs a Python
    decomposition (a 128-layer model: 0.8 s instead of 0.08 s)."""
    init = torch.nn.init
    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}

    def skip(tensor, *args, **kwargs):
        return tensor

    try:
        for name in saved:
            setattr(init, name, skip)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def updated_config(model, updates: list[ConfigUpdate]) -> Callable[[], None]:
    """A copy of the model's config with ``updates`` set, and the swap (returned, to call once
    the weights changed: it cannot fail) that gives the copy to the model: every module
    attribute holding its config, or one of its sub-configs, gets the copy's. A config object
    is often shared (``Student(teacher.config)``, two models built from one AutoConfig): set
    in place, the updates would change the other model's config too, its saved checkpoint
    no longer loading, its code reading the pruned values. With no updates, nothing changes."""
    if not updates:
        return lambda: None
    config = config_of(model)
    copied: dict[int, object] = {}
    new = copy.deepcopy(config, copied)
    for u in updates:
        set_field(new, u.field, u.new)

    def swap() -> None:
        for held, name, value in held_configs(model):
            if id(value) in copied:
                held[name] = copied[id(value)]

    return swap


def held_configs(model) -> list[tuple[dict, str, object]]:
    """(a module's ``__dict__``, attribute name, config) of every transformers config the
    model's modules hold as attributes (none without transformers)."""
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return []
    base = transformers.PretrainedConfig
    return [
        (module.__dict__, name, value)
        for module in model.modules()
        for name, value in list(module.__dict__.items())
        if isinstance(value, base)
    ]


@contextlib.contextmanager
def temporary_config(model, updates):
    """The config updates' new values for the duration (a model's code may read its config
    while it runs); the old ones back on exit, whatever happens."""
    config = config_of(model)
    undo = []
    try:
        for u in updates:
            undo.append(set_field(config, u.field, u.new))
        yield
    finally:
        for put_back in reversed(undo):
            put_back()


def round_to_config(dg: DependencyGraph, keep: np.ndarray, scores) -> tuple[np.ndarray, list[str]]:
    """The keep mask with each attention layer's head count rounded up to the nearest count the
    config's own validation accepts (``hidden_size`` divisible by ``num_attention_heads`` ...):
    the best-scored heads the selection removed come back. A composite model's layers are
    rounded by the sub-config their part reads. Returns the mask and what was rounded, in
    words."""
    config = config_of(dg.model)
    heads = [g for g in dg.groups if g.kind == "heads"]
    if config is None or not dg.coupling_model.attention or not heads:
        return keep, []
    if _validation_error(config) is not None:
        return keep, []
    scopes = config_scopes(config)
    configs = {prefix: c for prefix, c in scopes.values()}
    prefix_of = module_prefixes(dg.model, scopes)
    slot_prefixes = _slot_prefixes(dg, prefix_of) if len(scopes) > 1 else lambda s: ("",)
    sizes = dg.slot_sizes
    masks = dg.leaf_keep_masks(keep)
    per_kv: dict[str, set[int]] = {}
    for c in dg.coupling_model.attention:
        per_kv.setdefault(prefix_of(c.module), set()).add(
            int(sizes[c.heads]) // max(1, int(sizes[c.kv_heads]))
        )
    hidden: dict[str, set[int]] = {}
    for slot, kind in dg.coupling_model.kind_slots:
        if kind == "hidden":
            for prefix in slot_prefixes(slot):
                hidden.setdefault(prefix, set()).add(dg.slot_kept_size(slot, masks))
    trials = {}  # prefix -> (a copy of its config with the kept hidden size, query heads per kv)
    for prefix, ratios in per_kv.items():
        if len(ratios) != 1:
            continue
        trial = copy.deepcopy(configs[prefix])
        widths = hidden.get(prefix, set())
        if len(widths) == 1 and hasattr(trial, "hidden_size"):
            _set_field(trial, "hidden_size", next(iter(widths)))
        trials[prefix] = (trial, next(iter(ratios)))
    s = scores.numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    keep = keep.copy()
    notes: list[tuple[int, int]] = []
    for g in heads:
        kept = int(keep[g.unit_ids].sum())
        if kept == g.num_units:
            continue
        members = g.members
        prefix = prefix_of(members[0].name.rpartition(".")[0]) if members else ""
        if prefix not in trials:
            continue
        trial, q_per_kv = trials[prefix]
        allowed = kept
        while allowed < g.num_units and not _accepts_heads(trial, allowed, q_per_kv):
            allowed += 1
        if allowed == kept:
            continue
        removed = g.unit_ids[~keep[g.unit_ids]]
        best = removed[np.argsort(-np.nan_to_num(s[removed], nan=-np.inf), kind="stable")]
        keep[best[: allowed - kept]] = True
        notes.append((kept * q_per_kv, allowed * q_per_kv))
    return keep, [
        f"attention heads: {new} kept instead of {old} in {notes.count((old, new))} layer(s), "
        "the nearest count the config accepts"
        for old, new in dict.fromkeys(notes)
    ]


def _accepts_heads(config, kv_heads: int, q_per_kv: int) -> bool:
    for field, value in (
        ("num_attention_heads", kv_heads * q_per_kv),
        ("num_key_value_heads", kv_heads),
    ):
        if hasattr(config, field) and _set_field(config, field, value) is not None:
            return False
    return _validation_error(config) is None
