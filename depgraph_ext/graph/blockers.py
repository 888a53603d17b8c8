"""Why units cannot be removed: the BLOCK couplings in their groups, and where each came from
(an op's rule, an op without one, the model's inputs and outputs, ``ignore``, a size the
model's code fixes ...), so that a refusal names its cause."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np

from . import source
from .couplings import CouplingKind


@dataclass(frozen=True)
class BlockSource:
    """A source of blocks other than an op: ``kind`` "input", "output", "positions" (indices
    the model returns), "output size" (a size it returns as a number), of traced ``value``;
    "ignored", "unrelated" (a parameter dim no op relates to anything: a kernel's taps) or
    "head layout" (an attention module's head dim), of tensor ``name``."""

    kind: str
    value: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class Blocker:
    """One cause that keeps units whole: ``what`` says it in words; ``node``: the op behind
    it, if one is (its index in the trace); ``members``: the parameter dims whose units it
    keeps (``name[dim]``, `` (in part)`` where others of them prune), in the groups asked
    about."""

    what: str
    node: int | None
    members: tuple[str, ...]

    def describe(self, shown: int = 3) -> str:
        listed = ", ".join(self.members[:shown])
        more = f" +{len(self.members) - shown}" if len(self.members) > shown else ""
        return f"{self.what}: keeps {listed}{more} from pruning" if listed else self.what


def blockers(dg, groups) -> list[Blocker]:
    """The causes that block units of the resolution groups ``groups`` (ids), ops first, then
    by how many tensor dims each keeps whole. A unit is blocked where any slot of its group
    holds a BLOCK; each block is named by its source."""
    wanted = {int(g) for g in groups}
    if not wanted:
        return []
    res, cm = dg.resolution, dg.coupling_model
    c = cm.couplings
    ks = np.nonzero(c.kinds == int(CouplingKind.BLOCK))[0]
    if ks.size == 0:
        return []
    slots = c.data[c.offsets[ks]]
    members = _members_by_group(dg, wanted)
    sources = [start for start, _, _ in cm.block_spans]
    ops = [start for _, start, _ in cm.rule_spans]
    opaque = {op.node: op for op in cm.opaque}
    described: dict[tuple, tuple] = {}  # (each source once: it reads the model's code)
    # What blocks, by site: an op's line in the model's code (its modules gathered: each
    # layer's copy of one line is one cause), or another source's words.
    found: dict[tuple, tuple[list[int], list[str], set[str]]] = {}
    for k, slot in zip(ks.tolist(), slots.tolist()):
        hit = _groups_of_slot(res, slot) & wanted
        if not hit:
            continue
        key = _source_key(cm, k, slot, sources, ops)
        if key not in described:
            described[key] = _site(dg, key, opaque)
        site = described[key]
        nodes, modules, names = found.setdefault(site, ([], [], set()))
        if key[0] == "op" and key[1] not in nodes:
            nodes.append(key[1])
            module = dg.graph.nodes[key[1]].module
            if module not in modules:
                modules.append(module)
        for gid in hit:
            names.update(members.get(gid, ()))
    out = [
        Blocker(_words(site, modules), nodes[0] if nodes else None, tuple(sorted(names)))
        for site, (nodes, modules, names) in found.items()
    ]
    out.sort(key=lambda b: (b.node is None, -len(b.members), b.what))
    return out


def _groups_of_leaf(res, leaf: int) -> set[int]:
    """The groups of a leaf's units (none where it has none)."""
    if res.leaf_unit_offsets[leaf] < 0:
        return set()
    one = int(res.leaf_groups[leaf])  # (most leaves' units are of one group)
    return {one} if one >= 0 else set(np.unique(res.unit_groups[res.units_of_leaf(leaf)]).tolist())


def _groups_of_slot(res, slot: int) -> set[int]:
    return set().union(*(_groups_of_leaf(res, leaf) for leaf in res.leaves_of(slot).tolist()))


def _members_by_group(dg, wanted: set[int]) -> dict[int, list[str]]:
    """``name[dim]`` of the parameter dims with units in each wanted group (`` (in part)``
    where some of the dim's units are not blocked: a head dim's block of a width whose heads
    prune)."""
    res = dg.resolution
    out: dict[int, list[str]] = {}
    for name in dg.graph.params:
        for td in dg.tensor_dims[name]:
            leaves = td.leaves.tolist()
            gids = set().union(*(_groups_of_leaf(res, leaf) for leaf in leaves)) & wanted
            if not gids:
                continue
            units = [res.units_of_leaf(leaf) for leaf in leaves if res.leaf_unit_offsets[leaf] >= 0]
            part = "" if res.unit_blocked[np.concatenate(units)].all() else " (in part)"
            for gid in gids:
                out.setdefault(gid, []).append(f"{name}[{td.dim}]{part}")
    return out


def _source_key(cm, k: int, slot: int, sources: list[int], ops: list[int]) -> tuple:
    """Where block coupling ``k`` (of ``slot``) came from: ("op", node index), ("source",
    BlockSource), or ("later", slot) for a block added after the rules (``with_blocks``);
    ``sources`` and ``ops``: where each of the coupling model's block and rule spans starts."""
    i = bisect.bisect_right(ops, k) - 1
    if i >= 0 and k < cm.rule_spans[i][2]:
        return ("op", cm.rule_spans[i][0])
    i = bisect.bisect_right(sources, k) - 1
    if i >= 0 and k < cm.block_spans[i][1]:
        return ("source", cm.block_spans[i][2])
    return ("later", slot)


def _site(dg, key: tuple, opaque: dict) -> tuple:
    """Where a source of blocks is: ("op", op name, line of the model's code, why) for an
    op's, ("words", what it is) for any other."""
    kind, what = key
    if kind == "op":
        node = dg.graph.nodes[what]
        why = (
            f"({opaque[what].reason})" if what in opaque else ", whose rule allows no pruning there"
        )
        return ("op", node.name, node.where, why)
    if kind == "source":
        return ("words", _describe_source(dg.graph, what))
    if what in dg.extra_blocked:
        return (
            "words",
            "a size the model's code fixes (found by tracing a plan: see the warnings)",
        )
    if what in set(dg.coupling_model.constant_slots.tolist()):
        return ("words", "values made from constants alone (a coordinate or frequency table)")
    return ("words", "what only the training forward reads (the model is in training mode)")


def _words(site: tuple, modules: list[str]) -> str:
    if site[0] == "words":
        return site[1]
    _, op, where, why = site
    names = [m or "<root>" for m in modules]
    if len(names) == 1:
        held = f"module {names[0]}"
    else:
        held = f"modules {', '.join(names[:3])}" + (f" +{len(names) - 3}" if len(names) > 3 else "")
    at = source.describe(where)
    return f"op {op} in {held}" + (f" at {at}" if at else "") + (" " if why[0] == "(" else "") + why


def _describe_source(g, source: BlockSource) -> str:
    kind = source.kind
    if kind in ("input", "output", "positions", "output size"):
        v = g.values[source.value]
        if kind == "input":
            return f"the model's {_input_words(v.name or '')} (inputs keep their width)"
        where = g.output_paths[g.outputs.index(source.value)] if source.value in g.outputs else ""
        if kind == "output":
            return (
                f"the model's output {where}".rstrip()
                + " (outputs keep their width unless prune_outputs names them)"
            )
        if kind == "positions":
            return f"positions the model returns {where}".rstrip()
        return "a size the model returns as a number"
    if kind == "ignored":
        return f"{source.name} is ignored"
    if kind == "unrelated":
        return f"a dim of {source.name} no op relates to another (its size is the op's own)"
    return f"the head dim of {source.name}'s attention module (its code derives it)"


def _input_words(path: str) -> str:
    """An input's argument path (``[0][1]``: the second positional input; ``[1]['x']``:
    keyword ``x``) in words."""
    positional = re.fullmatch(r"\[0\]\[(\d+)\](.*)", path)
    if positional:
        return f"positional input {positional.group(1)}{positional.group(2)}"
    keyword = re.fullmatch(r"\[1\]\['([^']*)'\](.*)", path)
    if keyword:
        return f"input {keyword.group(1)}{keyword.group(2)}"
    return f"input {path}".rstrip()
