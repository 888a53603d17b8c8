"""Layers that repeat, in a trace of a plan's shapes: a sibling's op records taken from its
template's, its Python not run.

A plan's validation traces the model again with the planned shapes (a :class:`ShapeTrace`:
each op with its module and result shapes). The modules whose calls the graph's trace
replayed (repeats.py) are replayed here too, on meta tensors only (a real trace's values
would be the zeros of a replay), and only where this trace finds what a replay needs *now*:
the template, the first call of the family in this trace (a lone module's second), traced as
any call; a sibling whose inputs have the template's layouts and plain values, whose
parameters and buffers have the template's layouts under the same relative names (a plan may
prune one layer otherwise than the next: then it runs), and that finds every attribute the
template's code read, of any module, at the same value where it would read it (the
attribute spy of the graph's trace, again for this one), and the plain objects its modules
hold as the template found its own. A template whose call changed its modules' attributes,
met a decision of the data or an op that failed (a guided trace replays nothing), or returned
anything but tensors and plain values, is no template.

``DEPGRAPH_CHECK_SKIPPED_TRACES=1`` traces every such shape trace again without replays and
raises where the two differ (:func:`differences`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

from .repeats import (
    _PLAIN,
    _TENSORS,
    Family,
    _first_reads,
    _held_objects,
    _layout,
    _state,
    _subtree,
    _unchanged,
    alike_inputs,
    objects_hold,
    reads_hold,
)


@dataclass
class ShapeTemplate:
    member: torch.nn.Module
    in_spec: Any
    in_leaves: list  # ("t", position among the distinct input tensors, layout) | ("v", value)
    ops: tuple[int, int]
    calls: tuple[int, int]
    numbers: dict  # op offset in the call -> its numbers
    reads: list  # (object, name, value): every attribute its code read
    modules: dict  # relative name -> module of the member
    tensors: dict  # relative name -> layout of the member's parameters and buffers
    objects: list  # (relative name, attribute, state) of the plain objects its modules hold
    called: bool
    out_spec: Any = None
    out_leaves: list = field(
        default_factory=list
    )  # ("t", input position | None, layout) | ("v", v)


@dataclass(frozen=True)
class ShapeReplays:
    """What a shape trace needs to replay: the model's families (repeats.py), the qualified
    names of the modules the graph's trace replayed, what puts an attribute spy in place
    (``spying()``, a context yielding the spy: its ``log``, ``quiet`` and ``known``; entered
    only for a meta trace, the one that replays), and the spy while it is (``spy``)."""

    repeats: Any  # repeats.Repeats
    replayed: frozenset[str]
    spying: Callable[[], Any]
    spy: Any = None


class ShapeRepeater:
    """One meta shape trace's replays (see the module's docstring)."""

    def __init__(self, replays: ShapeReplays, graph, recorder, modules: list) -> None:
        self.replays, self.graph, self.recorder = replays, graph, recorder
        self.modules = modules  # (qualified name, module) of the model's modules
        self.module_names = {id(m): n for n, m in modules}
        self.recording = False
        self.replayed = 0

    @contextlib.contextmanager
    def forwards(self):
        families, wanted = self.replays.repeats.families, self.replays.replayed
        installed = []
        chosen: dict[int, Family] = {}
        for name, module in self.modules:
            if name not in wanted:
                continue
            family = families.get(id(module))
            if family is not None:
                chosen[id(family)] = family
            else:
                chosen[id(module)] = Family([module], lone=True)
        try:
            for family in chosen.values():
                family.template, family.dead = None, False
                for member in family.members:
                    if "forward" in vars(member):
                        family.dead = True
                        continue
                    wrapper = self._wrapper(member, family, type(member).forward.__get__(member))
                    object.__setattr__(member, "forward", wrapper)  # (past __setattr__)
                    installed.append(member)
            yield self
        finally:
            for member in installed:
                vars(member).pop("forward", None)
            for family in chosen.values():
                family.template, family.dead = None, False

    def _wrapper(self, member, family: Family, original: Callable):
        first = [family.lone]  # a lone module's first call runs: it may set up state

        def forward(*args, **kwargs):
            if self.recording or family.dead:
                return original(*args, **kwargs)
            if first[0]:
                first[0] = False
                return original(*args, **kwargs)
            if family.template is None:
                return self._record(member, family, original, args, kwargs)
            if family.template.called != self._called(member):
                return original(*args, **kwargs)
            replayed = self._replay(family, member, args, kwargs)
            return original(*args, **kwargs) if replayed is NotImplemented else replayed

        forward.__wrapped__ = original
        forward.lone_calls = family.lone
        return forward

    def _called(self, member) -> bool:
        stack = self.recorder.module_stack
        return bool(stack) and stack[-1] == self.module_names.get(id(member))

    def _record(self, member, family: Family, original, args, kwargs):
        graph, recorder, spy = self.graph, self.recorder, self.replays.spy
        in_leaves, in_spec = pytree.tree_flatten((args, kwargs))
        positions: dict[int, int] = {}
        leaves = []
        for x in in_leaves:
            if isinstance(x, torch.Tensor):
                leaves.append(("t", positions.setdefault(id(x), len(positions)), _layout(x)))
            elif type(x) in _PLAIN:
                leaves.append(("v", x))
            else:
                family.dead = True
                return original(*args, **kwargs)
        modules, tensors, key = _subtree(member)
        family.dead = True  # until the call is known to be one to replay
        if key is None:
            return original(*args, **kwargs)
        before = [(m, tuple(vars(m).items())) for m in modules.values()]
        objects = _held_objects(modules)
        called = self._called(member)
        ops0, calls0 = len(graph.ops), len(graph.module_calls)
        recovered0 = len(graph.recovered)
        decided0 = sum(recorder._occurrences.values())
        reads: list = []
        spy.log = reads
        self.recording = True
        try:
            out = original(*args, **kwargs)
        finally:
            self.recording = False
            spy.log = None
        if (
            len(graph.recovered) != recovered0
            or sum(recorder._occurrences.values()) != decided0
            or any(not _unchanged(tuple(vars(m).items()), items) for m, items in before)
            or any(
                not _unchanged(tuple(_state(o).items()), tuple(state.items()))
                for _, _, o, state in objects
            )
        ):
            return out
        reads = _first_reads(reads)
        if not self._reads_hold(reads, {}):
            return out
        out_leaves, out_spec = pytree.tree_flatten(out)
        outs = []
        for x in out_leaves:
            if isinstance(x, torch.Tensor):
                layout = _layout(x)
                if layout[0] not in _TENSORS or layout[5]:
                    return out
                outs.append(("t", positions.get(id(x)), layout))
            elif type(x) in _PLAIN:
                outs.append(("v", x))
            else:
                return out
        ops1 = len(graph.ops)
        numbers = {i - ops0: graph.numbers[i] for i in range(ops0, ops1) if i in graph.numbers}
        family.template = ShapeTemplate(
            member,
            in_spec,
            leaves,
            (ops0, ops1),
            (calls0, len(graph.module_calls)),
            numbers,
            reads,
            modules,
            {rel: _layout(t) for rel, t in tensors.items()},
            [(rel, k, state) for rel, k, _, state in objects],
            called,
            out_spec,
            outs,
        )
        family.dead = False
        return out

    def _reads_hold(self, reads: list, counterpart: dict) -> bool:
        return reads_hold(self.replays.spy, reads, counterpart)

    def _replay(self, family: Family, member, args, kwargs):
        template = family.template
        if self.module_names.get(id(member)) not in self.replays.replayed:
            return NotImplemented  # (a call the graph's trace did not replay: its code runs)
        tensors = alike_inputs(args, kwargs, template.in_spec, template.in_leaves)
        if tensors is None:
            return NotImplemented
        positions: dict[int, int] = {}
        given: list[torch.Tensor] = []
        for x, leaf in tensors:
            if positions.setdefault(id(x), len(positions)) != leaf[1]:
                return NotImplemented
            if leaf[1] == len(given):
                given.append(x)
        s_mods = t_mods = template.modules
        counterpart: dict[int, torch.nn.Module] = {}
        renamed: dict[str, str] = {}
        if member is not template.member:
            s_mods, s_tensors, key = _subtree(member)
            if key is None or t_mods.keys() != s_mods.keys():
                return NotImplemented
            if {rel: _layout(t) for rel, t in s_tensors.items()} != template.tensors:
                return NotImplemented  # (the plan shapes this layer otherwise)
            counterpart = {id(t_mods[rel]): s_mods[rel] for rel in t_mods}
            names = self.module_names
            renamed = {names[id(m)]: names[id(s_mods[rel])] for rel, m in t_mods.items()}
        if not self._reads_hold(template.reads, counterpart):
            return NotImplemented
        if not objects_hold(template.objects, s_mods, counterpart):
            return NotImplemented
        self._emit(template, renamed)
        self.replayed += 1
        return self._outputs(template, given)

    def _emit(self, template: ShapeTemplate, renamed: dict) -> None:
        graph = self.graph
        o0, o1 = template.ops
        start = len(graph.ops)
        if renamed:
            graph.ops.extend(
                (op, renamed.get(module, module), shapes) for op, module, shapes in graph.ops[o0:o1]
            )
        else:
            graph.ops.extend(graph.ops[o0:o1])
        for offset, numbers in template.numbers.items():
            graph.numbers[start + offset] = numbers
        c0, c1 = template.calls
        graph.module_calls.extend(
            (renamed.get(name, name), shapes) for name, shapes in graph.module_calls[c0:c1]
        )

    def _outputs(self, template: ShapeTemplate, given: list):
        """New meta tensors of the template's results' layouts (a sibling's input where the
        template returned its own input)."""
        known = self.recorder.known
        leaves = []
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            for leaf in template.out_leaves:
                if leaf[0] == "v":
                    leaves.append(leaf[1])
                    continue
                _, position, layout = leaf
                if position is not None:
                    leaves.append(given[position])
                    continue
                _, shape, stride, dtype, device, _ = layout
                out = torch.empty_strided(shape, stride, dtype=dtype, device=device)
                known[id(out)] = out
                leaves.append(out)
        return pytree.tree_unflatten(leaves, template.out_spec)


def differences(a, b) -> list[str]:
    """Where two shape traces of one model differ (empty: the same record)."""
    out = []
    for name in ("ops", "module_calls", "outputs", "numbers", "output_numbers", "recovered"):
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            if type(x) is list and len(x) == len(y):
                i = next(i for i, (p, q) in enumerate(zip(x, y)) if p != q)
                out.append(f"{name}[{i}]: {x[i]!r} != {y[i]!r}")
            else:
                out.append(f"{name}: {len(x)} != {len(y)} records")
    return out
