"""Layers that repeat: a sibling's ops taken from its template's, its Python not run.

A deep model calls the same layer class many times (128 decoder layers, the blocks of a
stage), each with the same shapes in and the same attributes read. In a graph trace (real,
meta or fake), the first member of such a family to be called (its *template*) is traced as
any module is, and what its
call recorded is noted: its ops, the values they made, its inner module calls, the sizes and
attributes its code read (size_watch.py), and every attribute of a module it read with its
value. A later member (a *sibling*) is then *replayed*: its ops are the template's, each tensor
renamed (the sibling's inputs for the template's, its parameters for the template's, new values
for those the ops made), its module names the sibling's, and it returns new tensors of the
template's results' layouts (on real tensors zeros, unless a value read later depends
on them or its ops draw random numbers or write outside the call: then its ops are run for
real values); its code does not run.

A sibling is replayed only where that is the trace its code would record:

- the family: children of one ``ModuleList`` / ``Sequential`` of one class, the same modules by
  relative name and class, the same parameters and buffers by relative name, shape, dtype and
  ``requires_grad``, no hooks on any of their modules, no global module hooks but the trace's;
  or one module of no such family, called again and again (a decoder's cell in its loop, a
  block shared by several stages): its first call runs as any (it may set up a state it
  keeps), its second is the template (a global pre-hook sees the first call and puts the
  wrapper in place), and its later calls are its siblings;
- the template's call made ops only (no decision of the data, no read of its values:
  ``.tolist()`` of one layer's data says nothing of another's; no higher-order op), changed no
  attribute of its modules, no attribute it read and no plain object its modules hold (a
  config, a counter), returned tensors and plain numbers, and no tensor it made but those it
  returned is used after it (checked when the trace ends: otherwise the model is traced again
  without replays);
- the sibling's inputs have the template's structure, their tensors the template's layouts and
  their other leaves equal plain values (a cache object passed in is no plain value: what a
  layer writes into it is not replayed);
- every attribute the template's code read, of any module, has the same value where the
  sibling's code would read it: its own modules' for the template's, anything else's as it was
  (a ``layer_idx`` a layer reads, to index a cache say, differs from layer to layer: such
  layers are traced each); and the plain objects its modules hold are as the template found
  its own (a state its code reads past the module's attributes);
- a real trace has the size watch (which counts the code's reads of values): a model with a
  fused path is traced without it (trace.py), and none of its layers is replayed.

``DEPGRAPH_CHECK_SKIPPED_TRACES=1`` traces every replayed graph again without replays and
raises where the two differ in anything (:func:`differences`).
"""

from __future__ import annotations

import collections
import contextlib
import operator
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _pop_mode_temporarily

from . import source
from .records import Node, Ref, Replay, Value, result_leaves
from .size_watch import AttributeLeaf, ConfigLeaf, ShapedCall, SizeInt, SizeLeaf

CHECK = os.environ.get("DEPGRAPH_CHECK_SKIPPED_TRACES") == "1"

_CONTAINERS = (torch.nn.ModuleList, torch.nn.Sequential)
_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
# Module internals whose reads say nothing the family's structure does not (its tensors and
# children; its hooks, which no member has).
# (``forward`` is the class's, or the trace's wrapper of it.)
_STRUCTURE = frozenset(
    {"__dict__", "__class__", "_parameters", "_buffers", "_modules", "forward", *_HOOKS}
)
_TENSORS = (torch.Tensor, FakeTensor)  # (no subclass of the model's: it may do anything)
_PLAIN = (int, float, bool, str, complex, type(None), torch.dtype, torch.device, torch.Size)


class RepeatsInvalid(Exception):
    """A template's tensors were used past its call (the trace is done again without
    replays), or a value read depends on a sibling's zeros (``speculation``: again with the
    siblings' ops run)."""

    def __init__(self, speculation: bool = False) -> None:
        super().__init__()
        self.speculation = speculation


class ReadLog(set):
    """The attribute reads of a trace (``(id(object), name)``), each add also appended to
    ``events`` while that is a list (a template's call)."""

    events: list | None = None

    def add(self, item) -> None:
        if self.events is not None:
            self.events.append(item)
        set.add(self, item)


@dataclass
class Family:
    """Children of one container with the same structure (see the module's docstring)."""

    members: list[torch.nn.Module]
    # A module called again and again (a decoder's cell in its loop): its own family, its
    # second call the template (the first may set up state it keeps), later calls replayed
    lone: bool = False
    # per member id: relative name -> module, and relative name -> canonical tensor name
    modules_by_rel: dict[int, dict[str, torch.nn.Module]] = field(default_factory=dict)
    tensors_by_rel: dict[int, dict[str, str]] = field(default_factory=dict)
    template: Template | None = None
    dead: bool = False


def _subtree(module: torch.nn.Module):
    """(relative name -> module, relative name -> tensor, signature) of ``module``: the
    signature None where one of its modules has hooks or a forward of its own."""
    modules = dict(module.named_modules(remove_duplicate=False))
    tensors: dict[str, torch.Tensor] = {}
    shapes = []
    for rel, m in modules.items():
        state = vars(m)
        own = state.get("forward")
        if (own is not None and not hasattr(own, "lone_calls")) or any(
            state.get(h) for h in _HOOKS
        ):
            return modules, tensors, None
        prefix = rel + "." if rel else ""
        for kind in ("_parameters", "_buffers"):
            for key, t in state[kind].items():
                if t is not None:
                    tensors[prefix + key] = t
                    shapes.append(
                        (kind, prefix + key, type(t), t.shape, t.dtype, t.requires_grad, t.device)
                    )
    return modules, tensors, (tuple((rel, type(m)) for rel, m in modules.items()), tuple(shapes))


def _global_hooks() -> int:
    m = torch.nn.modules.module
    return sum(
        len(getattr(m, name, ()))
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
            "_global_forward_hooks_always_called",
        )
    )


class Repeats:
    """The families of a model and the attribute spy of its graph trace (dependency.py's
    ``attribute_reads``), whose reads decide whether a sibling may be replayed."""

    def __init__(self, walk) -> None:
        """The families of ``walk``'s model (a ModelWalk), found before its trace's spies
        are in place (every attribute read of a module is a call of the spy then)."""
        self.spy = None  # (the trace's: its ``names`` a ReadLog, its ``log`` and ``quiet``)
        self.speculated = False  # the last trace's siblings returned zeros
        self.families: dict[int, Family] = {}
        if _global_hooks():
            return
        canonical = {id(t): n for n, t in (walk.params | walk.buffers).items()}
        for _, container in walk.modules:
            if type(container) not in _CONTAINERS:
                continue
            groups: dict[Any, list] = {}
            for child in container._modules.values():
                if child is None or id(child) in self.families:
                    continue
                modules, tensors, key = _subtree(child)
                if key is not None:
                    groups.setdefault((type(child), key), []).append((child, modules, tensors))
            for members in groups.values():
                if len(members) < 2:
                    continue
                family = Family([m for m, _, _ in members])
                for m, modules, tensors in members:
                    family.modules_by_rel[id(m)] = modules
                    family.tensors_by_rel[id(m)] = {
                        rel: canonical[id(t)] for rel, t in tensors.items()
                    }
                    self.families[id(m)] = family

    def ready(self) -> bool:
        """A spy that sees every read (any model may call a module again and again)."""
        return getattr(self.spy, "known", False) and not _global_hooks()


@dataclass
class Template:
    member: torch.nn.Module
    in_spec: Any
    in_leaves: list  # ("t", value, layout) | ("v", value)
    nodes: tuple[int, int]
    values: tuple[int, int]
    calls: tuple[int, int]
    reads: list  # (object, name, value): every attribute its code read
    attribute_events: list  # (id(object), name) added to the trace's attribute reads
    size_events: list  # (value, dim, ops run, module) of every size its code read
    shaped: tuple[int, int]
    sized: tuple[int, int]
    decomposed: tuple[int, int]
    ties: tuple[int, int]
    out_spec: Any = None
    out_leaves: list = field(default_factory=list)  # ("t", value, tensor) | ("v", value)
    # A real trace's: the tensors from outside the call its ops take, by value
    outside: dict = field(default_factory=dict)
    site: tuple | None = None  # the line of the model's code that called it
    fresh: set = field(default_factory=set)  # its own constants (see _record)
    called: bool = True  # run as a module call (see Repeater._called)
    # Its ops draw random numbers or write into tensors from outside the call: a real trace
    # runs them for each sibling (zeros in their place would leave the random stream or
    # those tensors otherwise than the sibling's code would)
    runs: bool = False
    # A real trace's: the nominal work of its ops (real_budget.py), which each sibling whose
    # ops run again costs the trace's budget too
    work: float = 0.0
    # (module, attribute, the state when it was called) of the plain objects its modules hold
    objects: list = field(default_factory=list)
    # ids of the lists and tuples in its nodes' arguments that hold no tensor (shared, never
    # copied, by its replays' nodes)
    refless: set | None = None
    # per node: the positions of its arguments' Refs where no other argument holds one (None:
    # renamed argument by argument)
    ref_positions: list = field(default_factory=list)


def _state(obj) -> dict | None:
    """A copy of a plain object's ``__dict__``, read past its class's ``__getattribute__``
    (a config's is a spy during the trace), or None for what is no plain object."""
    if isinstance(obj, (torch.nn.Module, torch.Tensor, type)) or type(obj) in _PLAIN:
        return None
    try:
        held = object.__getattribute__(obj, "__dict__")
    except (AttributeError, TypeError):
        return None
    return dict(held) if type(held) is dict else None


def _held_objects(modules: dict) -> list:
    """(relative name, attribute, object, its state) of each plain object (a config, a helper)
    that the modules hold as attributes."""
    out = []
    for rel, m in modules.items():
        for key, value in vars(m).items():
            state = _state(value) if key[0] != "_" else None
            if state is not None:
                out.append((rel, key, value, state))
    return out


def _random_states() -> list[torch.Tensor]:
    """The states of the CPU's random generator and of the GPUs' (where CUDA started)."""
    states = [torch.default_generator.get_state()]
    if torch.cuda.is_initialized():
        states += [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return states


def _same_states(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Whether no random number was drawn between two ``_random_states()``."""
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def alike_inputs(args, kwargs, spec, leaves: list) -> list[tuple] | None:
    """(the sibling's tensor, the template's leaf) of each tensor input, where the sibling's
    inputs have the template's structure (``spec``), its plain values and its tensors'
    layouts (``leaves``: ("t", key, layout) | ("v", value)); else None."""
    in_leaves, in_spec = pytree.tree_flatten((args, kwargs))
    if in_spec != spec:
        return None
    tensors = []
    for x, leaf in zip(in_leaves, leaves):
        if leaf[0] == "v":
            if type(x) is not type(leaf[1]) or x != leaf[1]:
                return None
        elif not isinstance(x, torch.Tensor) or _layout(x) != leaf[2]:
            return None
        else:
            tensors.append((x, leaf))
    return tensors


def reads_hold(spy, reads: list, counterpart: dict) -> bool:
    """Whether every attribute in ``reads`` ((object, name, value) of a template's) has that
    value where the sibling would read it (``counterpart``: the sibling's module for each of
    the template's), read unseen by ``spy`` (the trace's attribute spy)."""
    spy.quiet = True
    try:
        for obj, name, value in reads:
            try:
                now = getattr(counterpart.get(id(obj), obj), name)
            except Exception:
                return False
            if not _same(value, now, counterpart):
                return False
    finally:
        spy.quiet = False
    return True


def objects_hold(objects: list, modules: dict, counterpart: dict) -> bool:
    """Whether the plain objects the sibling's ``modules`` (relative name -> module) hold are
    as the template found its own (``objects``: (relative name, attribute, state))."""
    for rel, key, state in objects:
        module = modules.get(rel)
        held = vars(module).get(key) if module is not None else None
        now = _state(held) if held is not None else None
        if now is None:
            return False
        try:  # (C's comparison, which takes the same object as equal: a shared config)
            if now == state:
                continue
        except Exception:  # noqa: BLE001  (a tensor's ambiguous truth, say)
            pass
        if not _same(state, now, counterpart, 1):
            return False
    return True


def _first_reads(reads: list) -> list:
    """The first read of each attribute of each object (its later reads saw the same value:
    a call that changed its modules' attributes is not replayed), structure left out."""
    seen: set = set()
    out = []
    for r in reads:
        key = (id(r[0]), r[1])
        if key not in seen and r[1] not in _STRUCTURE:
            seen.add(key)
            out.append(r)
    return out


def _ref_positions(args: tuple, refless: set[int]) -> list[int] | None:
    """The positions of the Refs among ``args`` where every other argument holds none (a
    replay then renames those alone), else None."""
    positions = []
    for i, a in enumerate(args):
        kind = type(a)
        if kind is Ref:
            positions.append(i)
        elif kind is dict or ((kind is tuple or kind is list) and id(a) not in refless):
            return None
    return positions


def _refless(nodes) -> set[int]:
    """The ids of the lists and tuples inside ``nodes``' arguments that hold no Ref."""
    out: set[int] = set()

    def walk(x) -> bool:  # whether x holds a Ref
        kind = type(x)
        if kind is Ref:
            return True
        if kind is tuple or kind is list:
            held = False
            for item in x:
                held |= walk(item)
            if not held:
                out.add(id(x))
            return held
        if kind is dict:
            return any([walk(v) for v in x.values()])
        return False

    for node in nodes:
        walk(node.args)
        walk(node.kwargs)
    return out


def _layout(t: torch.Tensor) -> tuple:
    """What the code sees of a tensor but its values (read unwatched: not the code's reads)."""
    with torch._C.DisableTorchFunction():
        return (type(t), tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad)


def _unchanged(now: tuple, before: tuple) -> bool:
    return len(now) == len(before) and all(
        a[0] == b[0] and a[1] is b[1] for a, b in zip(now, before)
    )


def _same(a, b, counterpart: dict, depth: int = 0) -> bool:
    """Whether the template's ``a`` and the sibling's ``b`` are the same for its code: equal
    plain values, its modules' counterparts, and containers and plain objects (of one class)
    holding such (``depth``: how deep in such objects it is)."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b) or depth > 3:
        return False
    if kind in _PLAIN:
        return a == b
    if kind is tuple or kind is list:
        return len(a) == len(b) and all(_same(x, y, counterpart, depth) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], counterpart, depth) for k in a)
    if kind is set or kind is frozenset:
        return all(type(x) in _PLAIN for x in a) and a == b
    if isinstance(a, torch.nn.Module) and id(a) in counterpart:
        return counterpart[id(a)] is b
    if isinstance(a, torch.Tensor):
        return False
    if hasattr(a, "__func__") and hasattr(a, "__self__"):  # a bound method
        return a.__func__ is b.__func__ and (
            a.__self__ is b.__self__ or counterpart.get(id(a.__self__)) is b.__self__
        )
    held_a, held_b = getattr(a, "__dict__", None), getattr(b, "__dict__", None)
    if type(held_a) is dict and type(held_b) is dict:
        return _same(held_a, held_b, counterpart, depth + 1)
    return False


class Repeater:
    """One meta trace's replays (see the module's docstring). ``forwards()`` puts a wrapper in
    place of every member's ``forward`` for the duration; ``finish()`` checks the templates
    when the forward has returned."""

    def __init__(
        self, repeats: Repeats, graph, recorder, watch, module_names: dict, speculate: bool = True
    ) -> None:
        self.repeats, self.graph, self.recorder = repeats, graph, recorder
        # parameter/buffer value -> its placeholder, id(placeholder) -> its canonical name (set
        # when the trace has made them)
        self.tensors_of_values: dict[int, torch.Tensor] = {}
        self.names_of_tensors: dict[int, str] = {}
        self.saw = watch.saw if watch is not None else None
        self.module_names = module_names  # id(module) -> qualified name
        self.recording = False
        self.templates: list[Template] = []
        self.replayed = 0
        self.replayed_modules: set[str] = set()  # (qualified names)
        # A real trace's siblings return zeros, their ops not run, where no value read after
        # them depends on them (checked by ``finish``; else the trace is done again with
        # their ops run): a code that reads sizes only never needs their values. Needs the
        # size watch (it counts the reads of values).
        self.speculative = graph.real and self.saw is not None and speculate
        # (ops of the first template replayed, nodes, decisions, value reads and unreplayed
        # reads when the first sibling was replayed so)
        self.first_speculation: tuple | None = None
        self.zeros: set[int] = set()  # the values siblings returned as zeros
        self.zeros_through = 0  # the nodes before this one are in ``zeros`` where they read it
        self.decisions_seen = 0  # the decisions before this one were checked by value_read

    @contextlib.contextmanager
    def forwards(self):
        installed = []
        self.repeats.speculated = False
        # (a real trace without the size watch, a model with a fused path: a layer's code
        # could read its data unseen, so no layer is replayed)
        replays = self.saw is not None or not self.graph.real
        families = self.repeats.families.values() if replays else ()
        try:
            for family in {id(f): f for f in families}.values():
                for member in family.members:
                    if "forward" in vars(member):
                        family.dead = True
                        continue
                    # (past Module.__setattr__, which reads attributes the spy would see)
                    object.__setattr__(
                        member,
                        "forward",
                        self._wrapper(member, family, type(member).forward.__get__(member)),
                    )
                    installed.append(member)
            with self._lone_calls(installed) if replays else contextlib.nullcontext():
                yield self
        finally:
            for member in installed:
                vars(member).pop("forward", None)
            for family in self.repeats.families.values():
                family.template, family.dead = None, False

    @contextlib.contextmanager
    def _lone_calls(self, installed: list):
        """A module of no family called for the first time, outside a template's call, gets
        the wrapper of a family of its own (:class:`Family`'s ``lone``): its next call is its
        template, and later calls are replayed. (A global pre-hook sees the first call: its
        own ``forward`` was looked up already, so the wrapper takes the calls after it.)"""
        families, names = self.repeats.families, self.module_names
        seen: set[int] = set()

        def first_call(module, args):  # must return None: a value would replace the inputs
            key = id(module)
            if key in seen or self.recording:
                return
            seen.add(key)
            if (
                key in families
                or not names.get(key)  # (the model itself, or a module the forward made)
                or "forward" in vars(module)
                # (a forward of the class's own Python: not a callable object, not Module's)
                or type(type(module).forward) is not types.FunctionType
                or type(module).forward is torch.nn.Module.forward
            ):
                return
            family = Family([module], lone=True)
            wrapper = self._wrapper(module, family, type(module).forward.__get__(module))
            object.__setattr__(module, "forward", wrapper)
            installed.append(module)

        handle = torch.nn.modules.module.register_module_forward_pre_hook(first_call)
        try:
            yield
        finally:
            handle.remove()

    def _wrapper(self, member, family: Family, original: Callable):
        def forward(*args, **kwargs):
            if self.recording or family.dead:
                return original(*args, **kwargs)
            if family.template is None:
                if family.lone and not self._lone_family(member, family):
                    return original(*args, **kwargs)
                return self._record(member, family, original, args, kwargs)
            if family.template.called != self._called(member):
                return original(*args, **kwargs)  # (its ops belong to another module)
            replayed = self._replay(family, member, original, args, kwargs)
            return original(*args, **kwargs) if replayed is NotImplemented else replayed

        forward.__wrapped__ = original  # (inspect.signature sees the module's own)
        forward.lone_calls = family.lone  # (``_subtree``: no forward of the module's own)
        return forward

    def _lone_family(self, member, family: Family) -> bool:
        """Whether ``member`` may be its own template (its structure noted in ``family``)."""
        modules, tensors, key = _subtree(member)
        canonical = self.names_of_tensors  # (its tensors are the trace's placeholders now)
        if key is None or any(id(t) not in canonical for t in tensors.values()):
            family.dead = True
            return False
        family.modules_by_rel[id(member)] = modules
        family.tensors_by_rel[id(member)] = {rel: canonical[id(t)] for rel, t in tensors.items()}
        return True

    def _called(self, member) -> bool:
        """Whether ``member`` runs as a module call (its ops are its own), not its forward
        called directly (``lin.forward(x)``: its ops are the caller's)."""
        stack = self.recorder.module_stack
        return bool(stack) and stack[-1] == self.module_names.get(id(member))

    # -- the template ------------------------------------------------------------------------
    def _record(self, member, family: Family, original, args, kwargs):
        graph, recorder, saw, spy = self.graph, self.recorder, self.saw, self.repeats.spy
        in_leaves, in_spec = pytree.tree_flatten((args, kwargs))
        leaves = []
        for x in in_leaves:
            if isinstance(x, torch.Tensor):
                value = recorder.value_index(x)
                if value is None:
                    family.dead = True
                    return original(*args, **kwargs)
                leaves.append(("t", value, _layout(x)))
            elif type(x) in _PLAIN:
                leaves.append(("v", x))
            else:
                family.dead = True
                return original(*args, **kwargs)
        modules = family.modules_by_rel[id(member)].values()
        before = [(m, tuple(vars(m).items())) for m in modules]
        objects = _held_objects(family.modules_by_rel[id(member)])
        size_events: list = []
        site = source.here()  # (the line calling it: what ops of library modules are at)
        called = self._called(member)
        kept0 = len(recorder.keep_alive)
        random0 = _random_states() if graph.real else None
        n0, v0, c0 = len(graph.nodes), len(graph.values), len(graph.module_calls)
        work0 = recorder.work_done
        decisions0, spans0 = len(graph.decisions), len(graph.higher_order_spans)
        value_reads0 = saw.value_reads if saw is not None else 0
        if saw is not None:
            marks0 = (len(saw.shaped_calls), len(saw.sized_ops), len(saw.decomposed_by_ones))
            ties0 = len(saw.ties)
            clock = saw.clock

            plain_read = type(saw).read

            def read(value, dim):
                size_events.append((value, dim, *clock()))
                plain_read(saw, value, dim)

            saw.read = read
        reads: list = []
        attribute_events: list = []
        spy.log, spy.names.events = reads, attribute_events
        self.recording = True
        try:
            out = original(*args, **kwargs)
        finally:
            self.recording = False
            spy.log = spy.names.events = None
            if saw is not None:
                del saw.read
        family.dead = True  # until the call is known to be one to replay
        if (
            len(graph.decisions) != decisions0
            # (its code read its data, ``.tolist()`` say: another's data may read otherwise)
            or (saw is not None and saw.value_reads != value_reads0)
            or len(graph.higher_order_spans) != spans0
            or any(  # (a write into a parameter or buffer: put back by a real trace)
                graph.values[o].kind in ("param", "buffer")
                for node in graph.nodes[n0:]
                for o in node.outputs
            )
            or any(not _unchanged(tuple(vars(m).items()), items) for m, items in before)
        ):
            return out
        reads = _first_reads(reads)
        if not self._reads_hold(reads, {}):  # (it changed what it read: a counter, say)
            return out
        if any(
            not _unchanged(tuple(_state(o).items()), tuple(state.items()))
            for _, _, o, state in objects
        ):
            return out  # (it changed an object its modules hold: a counter, say)
        out_leaves, out_spec = pytree.tree_flatten(out)
        outs = []
        for x in out_leaves:
            if isinstance(x, torch.Tensor):
                value = recorder.value_index(x)
                if value is None or _layout(x)[0] not in _TENSORS or _layout(x)[5]:
                    return out
                outs.append(("t", value, x))
            elif type(x) in _PLAIN:
                outs.append(("v", x))
            else:
                return out
        n1, v1, c1 = len(graph.nodes), len(graph.values), len(graph.module_calls)
        if saw is not None:
            marks1 = (len(saw.shaped_calls), len(saw.sized_ops), len(saw.decomposed_by_ones))
            ties1 = len(saw.ties)
        else:
            marks0 = marks1 = (0, 0, 0)
            ties0 = ties1 = 0
        # Tensors first seen in the call that no traced op made (``torch.tensor(x)`` in its
        # code; a global; an lru-cached result): made by the call where nothing but the
        # trace holds them, so each sibling's call would make its own.
        made_here = {v for v in range(v0, v1) if graph.values[v].kind != "op"}
        fresh = set()
        if made_here:
            held: dict[int, list] = {}
            for t in recorder.keep_alive[kept0:]:
                v = recorder.value_of.get(id(t))
                if v in made_here:
                    held.setdefault(v, []).append(t)
            kept = collections.Counter(map(id, recorder.keep_alive))
            for v, ts in held.items():
                t = ts[0]
                # (references: the trace's list, ``ts``, ``t`` and getrefcount's argument)
                if sys.getrefcount(t) == kept[id(t)] + len(ts) + 2:
                    fresh.add(v)
        family.template = Template(
            member,
            in_spec,
            leaves,
            (n0, n1),
            (v0, v1),
            (c0, c1),
            reads,
            attribute_events,
            size_events,
            (marks0[0], marks1[0]),
            (marks0[1], marks1[1]),
            (marks0[2], marks1[2]),
            (ties0, ties1),
            out_spec,
            outs,
            site=site,
            fresh=fresh,
            called=called,
            objects=[(rel, key, state) for rel, key, _, state in objects],
            runs=(graph.real and not _same_states(random0, _random_states()))
            or any(o < v0 for node in graph.nodes[n0:n1] for o in node.outputs),
            work=recorder.work_done - work0,
        )
        if graph.real:
            template = family.template
            made = {
                o
                for node in graph.nodes[n0:n1]
                for o in node.outputs
                if graph.values[o].kind == "op"
            }
            needed = {i for node in graph.nodes[n0:n1] for i in node.inputs if i not in made}
            needed -= {leaf[1] for leaf in leaves if leaf[0] == "t"}
            for t in recorder.keep_alive:
                v = recorder.value_of.get(id(t))
                if v in needed:
                    template.outside[v] = t
        family.dead = False
        self.templates.append(family.template)
        return out

    def _reads_hold(self, reads: list, counterpart: dict) -> bool:
        return reads_hold(self.repeats.spy, reads, counterpart)

    # -- a sibling ---------------------------------------------------------------------------
    def _replay(self, family: Family, member, original, args, kwargs):
        template = family.template
        graph, recorder = self.graph, self.recorder
        tensors = alike_inputs(args, kwargs, template.in_spec, template.in_leaves)
        if tensors is None:
            return NotImplemented
        mapped: dict[int, int] = {}
        given: dict[int, torch.Tensor] = {}  # sibling value -> its tensor
        for x, leaf in tensors:
            value = recorder.value_index(x)
            if value is None or mapped.setdefault(leaf[1], value) != value:
                return NotImplemented
            given[value] = x
        lone = member is template.member  # (its own modules and tensors: nothing renamed)
        t_mods = family.modules_by_rel[id(template.member)]
        s_mods = family.modules_by_rel[id(member)]
        counterpart = {} if lone else {id(t_mods[rel]): s_mods[rel] for rel in t_mods}
        if not self._reads_hold(template.reads, counterpart):
            return NotImplemented
        if not objects_hold(template.objects, s_mods, counterpart):
            return NotImplemented
        # Its parameters and buffers for the template's (a real trace's template holds its
        # own among the tensors from outside its call).
        t_tensors = family.tensors_by_rel[id(template.member)]
        s_tensors = family.tensors_by_rel[id(member)]
        for rel, name in () if lone else t_tensors.items():
            t_value = graph.params.get(name, graph.buffers.get(name))
            s_value = graph.params.get(s_tensors[rel], graph.buffers.get(s_tensors[rel]))
            if t_value is None or s_value is None:
                return NotImplemented
            if mapped.setdefault(t_value, s_value) != s_value:
                return NotImplemented
        names = self.module_names
        renamed = (
            {} if lone else {names[id(m)]: names[id(s_mods[rel])] for rel, m in t_mods.items()}
        )
        taken = dict(mapped)  # (the sibling's inputs and tensors, before the ops' results)
        self._emit(template, mapped, renamed, counterpart)
        self.replayed += 1
        self.replayed_modules.add(names[id(member)])
        if recorder.work_left is not None:  # (a real trace's budget: the ops it stands for)
            recorder.work_left += recorder.budget_per_op * (template.nodes[1] - template.nodes[0])
        if self.graph.real and (not self.speculative or template.runs):
            recorder.work_done += template.work
            if recorder.work_left is not None:
                recorder.work_left -= template.work
            return self._run_template_ops(template, given, taken, mapped)
        if self.graph.real and self.first_speculation is None:
            self.repeats.speculated = True
            saw = self.saw
            self.first_speculation = (
                template.nodes[1] - template.nodes[0],
                len(self.graph.nodes),
                len(self.graph.decisions),
                saw.value_reads,
                saw.unreplayed_count,
            )
        return self._outputs(template, mapped, given)

    def _run_template_ops(self, template: Template, given: dict, taken: dict, mapped: dict):
        """A real trace's sibling: the template's ops run again, unrecorded, on the sibling's
        tensors (what its code would compute: the same ops on the same kinds of tensors), and
        its results, known as the values the emitted ops made."""
        recorder = self.recorder
        live: dict[int, torch.Tensor] = dict(template.outside)
        by_value = self.tensors_of_values
        for t_value, s_value in taken.items():
            tensor = given.get(s_value)
            live[t_value] = tensor if tensor is not None else by_value[s_value]

        n0, n1 = template.nodes
        # (_emit found where each node's Refs are: an argument list is walked only where one
        # of its lists holds some)
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            for node, positions in zip(self.graph.nodes[n0:n1], template.ref_positions):
                if positions is None:
                    args = _live(node.args, live)
                else:
                    args = list(node.args)
                    for i in positions:
                        args[i] = live[args[i].value]
                kwargs = _live(node.kwargs, live) if node.kwargs else {}
                out = node.op(*args, **kwargs)
                if isinstance(out, torch.Tensor):
                    live[node.outputs[0]] = out
                else:
                    results = [t for t in result_leaves(out) if isinstance(t, torch.Tensor)]
                    for value, t in zip(node.outputs, results):
                        live[value] = t
        leaves = []
        for leaf in template.out_leaves:
            if leaf[0] == "v":
                leaves.append(leaf[1])
                continue
            value = leaf[1]
            t = live.get(value, leaf[2])
            new = mapped.get(value)
            if new is not None and new not in given:
                recorder.value_of[id(t)] = new
                recorder.keep(t)
            leaves.append(t)
        return pytree.tree_unflatten(leaves, template.out_spec)

    def _emit(self, template: Template, mapped: dict, renamed: dict, counterpart: dict) -> None:
        """The template's records, renamed for the sibling, appended to the trace's."""
        graph = self.graph
        values, nodes = graph.values, graph.nodes
        n0, n1 = template.nodes
        shift = len(nodes) - n0

        fresh, constants = template.fresh, graph.constants
        site = source.here()
        refs = self.recorder.refs

        def ref_one(x: Ref) -> Ref:
            new = mapped.get(x.value)
            if new is None:
                if x.value not in fresh:
                    return x
                # a tensor the call made outside the traced ops: a constant of its own
                v = values[x.value]
                new = mapped[x.value] = len(values)
                values.append(Value(new, v.shape, v.dtype, v.kind, v.name, v.producer))
                if x.value in constants:
                    constants[new] = constants[x.value]
            return refs[new]

        refless = template.refless
        if refless is None:
            refless = template.refless = _refless(nodes[n0:n1])
            template.ref_positions = [_ref_positions(node.args, refless) for node in nodes[n0:n1]]
        graph.replays.append(Replay((n0, n1), len(nodes), mapped, renamed))
        for node, positions in zip(nodes[n0:n1], template.ref_positions):
            index = len(nodes)
            # (first: the constants it makes come before its results)
            if positions is None:
                args = _renamed_refs(node.args, ref_one, refless)
            elif positions:
                args = list(node.args)
                for i in positions:
                    args[i] = ref_one(args[i])
                args = tuple(args)
            else:
                args = node.args
            kwargs = _renamed_refs(node.kwargs, ref_one, refless) if node.kwargs else {}
            outputs = []
            for o in node.outputs:
                new = mapped.get(o)
                if new is None:
                    v = values[o]
                    new = mapped[o] = len(values)
                    values.append(Value(new, v.shape, v.dtype, v.kind, v.name, index))
                outputs.append(new)
            nodes.append(
                Node(
                    index,
                    node.op,
                    args,
                    kwargs,
                    [mapped.get(i, i) for i in node.inputs],
                    outputs,
                    renamed.get(node.module, node.module),
                    # (an op of a library module, torch's say, is the line that called it)
                    site if node.where == template.site else node.where,
                )
            )
        c0, c1 = template.calls
        graph.module_calls.extend(
            (renamed.get(name, name), [mapped.get(v, v) for v in outs])
            for name, outs in graph.module_calls[c0:c1]
        )
        reads = self.repeats.spy.names
        for key, name in template.attribute_events:
            other = counterpart.get(key)
            set.add(reads, (id(other) if other is not None else key, name))
        saw = self.saw
        if saw is None:
            return

        def leaf(x):
            kind = type(x)
            if kind is SizeLeaf:
                new = SizeLeaf(x.saw, mapped.get(x.value, x.value), x.dim)
                new.uses = x.uses
                return new
            if kind is AttributeLeaf:
                other = counterpart.get(x.module)
                new = AttributeLeaf(
                    x.reads,
                    id(other) if other is not None else x.module,
                    x.name,
                    x.value,
                    x.live,
                    x.index,
                )
                new.uses = x.uses
                return new
            if kind is ConfigLeaf:
                new = ConfigLeaf(x.name, x.value, x.live)
                new.uses = x.uses
                return new
            return x

        start, stop = template.shaped
        for call in saw.shaped_calls[start:stop]:
            saw.shaped_calls.append(
                ShapedCall(
                    call.kind,
                    _renamed_sizes(call.ints, leaf),
                    mapped.get(call.value, call.value) if call.value is not None else None,
                    mapped.get(call.source, call.source) if call.source is not None else None,
                )
            )
        start, stop = template.sized
        saw.sized_ops.extend((a + shift, b + shift) for a, b in saw.sized_ops[start:stop])
        start, stop = template.decomposed
        saw.decomposed_by_ones.extend(
            (a + shift, b + shift) for a, b in saw.decomposed_by_ones[start:stop]
        )
        start, stop = template.ties
        for module, name, value, dim in saw.ties[start:stop]:
            other = counterpart.get(module)
            saw.ties.append(
                (id(other) if other is not None else module, name, mapped.get(value, value), dim)
            )
        read_at = saw.read_at
        for value, dim, ops, module in template.size_events:
            key = (mapped.get(value, value), dim)
            if key not in read_at:
                read_at[key] = (ops + shift, renamed.get(module, module))

    def _outputs(self, template: Template, mapped: dict, given: dict):
        """New tensors of the template's results' layouts (meta on a meta trace, fake on a
        fake one, zeros on a real one), known as the values the emitted ops made."""
        recorder = self.recorder
        fake = self.graph.mode == "fake"
        leaves = []
        with torch._C.DisableTorchFunction():
            # (a fake trace's are made by its fake mode, the recorder's next below)
            below = _pop_mode_temporarily() if fake else torch._C._DisableTorchDispatch()
            with below:
                for leaf in template.out_leaves:
                    if leaf[0] == "v":
                        leaves.append(leaf[1])
                        continue
                    _, value, t = leaf
                    new = mapped.get(value)
                    if new is None:  # a tensor from outside the call: the same one
                        leaves.append(t)
                    elif new in given:  # one of its inputs
                        leaves.append(given[new])
                    else:
                        out = torch.empty_strided(
                            t.shape, t.stride(), dtype=t.dtype, device=t.device
                        )
                        if self.graph.real:
                            out.zero_()  # (kernels after it see no garbage)
                            self.zeros.add(new)
                        recorder.value_of[id(out)] = new
                        recorder.keep(out)
                        leaves.append(out)
        return pytree.tree_unflatten(leaves, template.out_spec)

    def _decided_by_zeros(self, decisions) -> bool:
        """Whether one of ``decisions`` read a value that depends on a sibling's zeros (the
        nodes since the last call followed: what reads a zero is one)."""
        zeros, graph = self.zeros, self.graph
        start = max(self.zeros_through, self.first_speculation[1])
        for node in graph.nodes[start:]:
            if any(i in zeros for i in node.inputs):
                zeros.update(node.outputs)
        self.zeros_through = len(graph.nodes)
        return any(v in zeros for d in decisions for v in d.values if v is not None)

    def value_read(self) -> None:
        """After each read of values by the model's code (the size watch calls it): a read
        that makes this trace's zeros wrong (``finish`` would find it) stops the trace at once,
        to be done again with the siblings' ops run, rather than at its end (SLANeXt's
        decoder reads a value at each of its 500 steps, after its encoder's replayed layers)."""
        if self.first_speculation is None:
            return
        _, _, decisions0, _, unreplayed0 = self.first_speculation
        if self.saw.unreplayed_count != unreplayed0:
            raise RepeatsInvalid(speculation=True)
        new = self.graph.decisions[max(self.decisions_seen, decisions0) :]
        self.decisions_seen = len(self.graph.decisions)
        if new and self._decided_by_zeros(new):
            raise RepeatsInvalid(speculation=True)

    # -- after the forward -------------------------------------------------------------------
    def finish(self) -> None:
        """Raise RepeatsInvalid where a template's inner tensors were used after its call, or
        where a value read after a sibling that returned zeros may depend on them."""
        if not self.replayed:
            return
        graph = self.graph
        if self.first_speculation is not None:
            _, node0, decisions0, reads0, unreplayed0 = self.first_speculation
            saw = self.saw
            if saw.unreplayed_count != unreplayed0:
                raise RepeatsInvalid(speculation=True)
            later = graph.decisions[decisions0:]
            if saw.value_reads - reads0 > len(later):
                raise RepeatsInvalid(speculation=True)
            if later and self._decided_by_zeros(later):
                raise RepeatsInvalid(speculation=True)
        inner_of = []  # (template, the values its ops made that it did not return)
        for template in self.templates:
            v0, v1 = template.values
            returned = {leaf[1] for leaf in template.out_leaves if leaf[0] == "t"}
            inner = {v for v in range(v0, v1) if graph.values[v].kind == "op" and v not in returned}
            if inner:
                inner_of.append((template, inner))
        # The last op reading each such value, and the last module call returning it, found in
        # one pass for every template (a decoder's stack of every step so far reads thousands
        # of values per op: a pass per template cost 50 ms in a 500-step loop).
        last_read = _last_uses(map(_INPUTS, graph.nodes), set().union(*(i for _, i in inner_of)))
        last_returned = _last_uses(
            (outs for _, outs in graph.module_calls), set().union(*(i for _, i in inner_of))
        )
        for template, inner in inner_of:
            n1 = template.nodes[1]
            if any(last_read.get(v, -1) >= n1 for v in inner) or any(
                last_returned.get(v, -1) >= template.calls[1] for v in inner
            ):
                raise RepeatsInvalid
            if any(v in inner for v in graph.outputs) or any(
                v in inner for v in graph.attribute_tensors.values()
            ):
                raise RepeatsInvalid
            saw = self.saw
            if (
                saw is not None
                and (  # (a size of one read, or given to a view, after it)
                    any(v in inner and at[0] >= n1 for (v, _), at in saw.read_at.items())
                    or any(
                        c.value in inner or c.source in inner
                        for c in saw.shaped_calls[template.shaped[1] :]
                    )
                )
            ):
                raise RepeatsInvalid


_INPUTS = operator.attrgetter("inputs")


def _last_uses(lists, values: set) -> dict[int, int]:
    """For each of ``values`` found in the sequence ``lists`` (of value lists), the index of
    the last list holding it (one C-level test per list)."""
    last: dict[int, int] = {}
    if values:
        for index, items in enumerate(lists):
            if not values.isdisjoint(items):
                last.update(dict.fromkeys(values.intersection(items), index))
    return last


# (Module-level, not closures: a closure that calls itself is a reference cycle, left for the
# collector with everything it holds, once per replay.)
def _live(x, live: dict):
    """``x`` (an op's arguments) with each Ref the tensor ``live`` holds for its value."""
    kind = type(x)
    if kind is Ref:
        return live[x.value]
    if kind is tuple or kind is list:
        return kind([_live(item, live) for item in x])
    if kind is dict:
        return {k: _live(v, live) for k, v in x.items()}
    return x


def _renamed_refs(x, ref_one: Callable, refless: set):
    """``x`` (an op's arguments) with each Ref renamed by ``ref_one`` (the lists in
    ``refless`` hold none: the template's own will do)."""
    kind = type(x)
    if kind is Ref:
        return ref_one(x)
    if kind is tuple or kind is list:
        if id(x) in refless:
            return x
        return kind([_renamed_refs(item, ref_one, refless) for item in x])
    if kind is dict:
        return {k: _renamed_refs(v, ref_one, refless) for k, v in x.items()}
    return x


def _renamed_sizes(x, leaf: Callable):
    """``x`` (a call's sizes) with the leaves of its SizeInts renamed by ``leaf``."""
    kind = type(x)
    if kind is SizeInt:
        e = x.expr
        if type(e) is tuple:
            return SizeInt(int.__int__(x), (e[0], *[_renamed_sizes(a, leaf) for a in e[1:]]))
        return SizeInt(int.__int__(x), leaf(e))
    if kind is tuple or kind is list:
        return kind([_renamed_sizes(item, leaf) for item in x])
    if kind is slice:
        return slice(
            _renamed_sizes(x.start, leaf),
            _renamed_sizes(x.stop, leaf),
            _renamed_sizes(x.step, leaf),
        )
    return x


def differences(a, b) -> list[str]:
    """Where two graphs of one model differ (empty: they are the same record)."""
    out = []

    def note(what, x, y):
        if x != y:
            out.append(f"{what}: {_short(x)} != {_short(y)}")

    note("values", len(a.values), len(b.values))
    for x, y in zip(a.values, b.values):
        if (x.shape, x.dtype, x.kind, x.name, x.producer) != (
            y.shape,
            y.dtype,
            y.kind,
            y.name,
            y.producer,
        ):
            out.append(f"value {x.index}: {x} != {y}")
            break
    note("nodes", len(a.nodes), len(b.nodes))
    for x, y in zip(a.nodes, b.nodes):
        if (x.op, x.args, x.kwargs, x.inputs, x.outputs, x.module, x.where) != (
            y.op,
            y.args,
            y.kwargs,
            y.inputs,
            y.outputs,
            y.module,
            y.where,
        ):
            out.append(f"node {x.index}: {x} != {y}")
            break
    for name in (
        "inputs",
        "outputs",
        "params",
        "buffers",
        "module_calls",
        "constants",
        "output_paths",
        "output_numbers",
        "output_sizes",
        "attribute_tensors",
        "higher_order_spans",
        "mode",
    ):
        note(name, getattr(a, name), getattr(b, name))
    sa, sb = a.code_saw, b.code_saw
    if (sa is None) != (sb is None):
        out.append("code_saw: one graph has none")
    elif sa is not None:
        for name in (
            "sized_ops",
            "decomposed_by_ones",
            "values_read",
            "unreplayed_reads",
            "unknown_reads",
            "read_at",
            "ties",
        ):
            note(f"code_saw.{name}", getattr(sa, name), getattr(sb, name))
        note(
            "code_saw.shaped_calls",
            [_shaped_key(c) for c in sa.shaped_calls],
            [_shaped_key(c) for c in sb.shaped_calls],
        )
    return out


def _shaped_key(call: ShapedCall):
    return (call.kind, _int_key(call.ints), call.value, call.source)


def _int_key(x):
    kind = type(x)
    if kind is SizeInt:
        e = x.expr
        if type(e) is tuple:
            return ("expr", e[0], *[_int_key(a) for a in e[1:]])
        return ("leaf", int.__int__(x), _leaf_key(e))
    if kind is tuple or kind is list:
        return tuple(_int_key(item) for item in x)
    if kind is slice:
        return ("slice", _int_key(x.start), _int_key(x.stop), _int_key(x.step))
    return x


def _leaf_key(e):
    kind = type(e)
    if kind is SizeLeaf:
        return ("size", e.value, e.dim, e.used_otherwise)
    if kind is AttributeLeaf:
        return ("attribute", e.module, e.name, e.value, e.index, e.used_otherwise)
    if kind is ConfigLeaf:
        return ("config", e.name, e.value, e.used_otherwise)
    return e


def _short(x) -> str:
    text = repr(x)
    return text if len(text) < 300 else text[:300] + "..."
