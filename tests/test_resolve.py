"""Group resolution: native vs python identical on random coupling graphs and on real models;
termination on cycles; known answers on hand-built graphs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import depgraph_ext as dx
from coupling_graphs import random_couplings
from depgraph_ext.graph.couplings import CouplingBuilder
from depgraph_ext.graph.resolve import resolutions_equal, resolve

native = pytest.mark.skipif(not dx.native_available(), reason="native core not built")


@native
@pytest.mark.parametrize("seed", range(300))
def test_native_equals_python_on_random_graphs(seed):
    c = random_couplings(seed)
    py, nat = resolve(c, "python"), resolve(c, "native")
    assert resolutions_equal(py, nat)
    # Every queried slot is a product of its leaves.
    for s in c.query_slots:
        assert (
            np.prod(py.leaf_sizes[py.leaves_of(int(s))]) == c.slot_sizes[s] or c.slot_sizes[s] == 1
        )


def test_equal_pairs_emits_what_equal_emits_pair_by_pair():
    # (a decoder loop's stack of its growing list of steps emits these in one pass)
    rng = np.random.default_rng(0)
    one, many = CouplingBuilder(), CouplingBuilder()
    sizes = rng.integers(1, 5, size=40)
    for b in (one, many):
        for size in sizes:
            b.new_slot(int(size))
    a = [int(x) for x in rng.integers(0, 40, size=30)]
    c = [int(x) for x in rng.integers(0, 40, size=30)]
    c[::4] = a[::4]  # (a slot equal to itself emits nothing)
    for x, y in zip(a, c):
        one.equal(x, y)
    many.equal_pairs(a, c)
    many.block(3)
    one.block(3)
    built_one, built_many = one.build([0]), many.build([0])
    for name in ("slot_sizes", "kinds", "offsets", "data"):
        assert np.array_equal(getattr(built_one, name), getattr(built_many, name)), name
    assert built_many.num_couplings == 1 + sum(x != y for x, y in zip(a, c))


def test_a_rule_coupling_slots_of_different_sizes_is_refused_naming_them():
    from depgraph_ext.graph.rules.context import RuleContext, RuleError

    ctx = RuleContext.__new__(RuleContext)
    ctx.builder = CouplingBuilder()
    ctx.touched = set()
    slots = [ctx.builder.new_slot(n) for n in (4, 4, 4, 6)]
    ctx.equal_pairs(slots[:2], slots[2:3] * 2)
    assert ctx.touched == set(slots[:3])
    with pytest.raises(RuleError, match="EQUAL between slots of sizes 4 and 6"):
        ctx.equal_pairs(slots[:2], [slots[2], slots[3]])


def test_rotate_half_cycle_terminates_and_pairs_indices(backend):
    b = CouplingBuilder()
    q, lo, hi, rot = b.new_slot(8), b.new_slot(4), b.new_slot(4), b.new_slot(8)
    b.slice(q, lo, 0, 1)
    b.slice(q, hi, 4, 1)
    b.cat_piece(rot, hi, 0)
    b.cat_piece(rot, lo, 4)
    b.equal(rot, q)
    r = resolve(b.build([q]), backend)
    half, pair = r.leaves_of(q)
    assert r.leaf_sizes[half] == 2 and r.leaf_sizes[pair] == 4
    assert r.unit_blocked[r.units_of_leaf(int(half))].all()
    assert not r.unit_blocked[r.units_of_leaf(int(pair))].any()


@native
def test_native_equals_python_on_densenet121():
    from nets import DenseNet

    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.OpaqueOpWarning)
        dg = dx.DependencyGraph(DenseNet().eval(), torch.randn(1, 3, 64, 64), backend="native")
    c = dg.couplings
    assert resolutions_equal(dg.resolution, resolve(c, "python"))


def _partition_net(name: str):
    """One of the nets the member listing is checked on, with its inputs (built on demand)."""
    from nets import DenseNet, MaxViT, ResNeXt

    if name == "llama":
        T = pytest.importorskip("transformers")
        config = T.LlamaConfig(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=96,
            num_attention_heads=8,
            num_key_value_heads=2,
            num_hidden_layers=2,
        )
        return T.LlamaForCausalLM(config), {"input_ids": torch.randint(0, 64, (1, 6))}
    make, size = {"resnext": (ResNeXt, 16), "densenet": (DenseNet, 64), "maxvit": (MaxViT, 32)}[
        name
    ]
    return make(), torch.randn(1, 3, size, size)


@pytest.mark.parametrize("name", ["resnext", "densenet", "maxvit", "llama"])
def test_group_members_partition_every_dim_they_cover(name):
    """Members (listed per group on first use, their names without them): within a group,
    every index of a tensor dim is listed once, in range; each member's units are its group's,
    every unit has a slice; and the names a description lists are the members'. (Across
    groups an index recurs where a dim is a product of factors: a grouped conv's channels.)"""
    model, inputs = _partition_net(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg = dx.DependencyGraph(model.eval(), inputs)
    shapes = dict(model.named_parameters()) | dict(model.named_buffers())
    for group in reversed(dg.groups):  # (not in the order they were made)
        names = group.member_names
        assert names == [(m.name, m.dim) for m in group.members]
        units = torch.zeros(group.num_units, dtype=torch.bool)
        seen: dict[tuple[str, int], list[torch.Tensor]] = {}
        for m in group.members:
            assert m.indices.shape == m.units.shape
            assert int(m.units.max()) < group.num_units
            units[m.units] = True
            seen.setdefault((m.name, m.dim), []).append(m.indices)
        assert units.all()  # every unit of the group has a slice somewhere
        for (name, dim), parts in seen.items():
            indices = torch.cat(parts)
            assert indices.unique().shape == indices.shape, (name, dim)
            assert int(indices.max()) < shapes[name].shape[dim]


@pytest.mark.parametrize("seed", range(20))
def test_units_of_many_leaves_are_each_leafs_units_in_turn(seed):
    res = resolve(random_couplings(seed), "python")
    rng = np.random.default_rng(seed)
    leaves = rng.integers(0, len(res.leaf_sizes), size=3 * len(res.leaf_sizes))
    with_units = [int(leaf) for leaf in leaves if res.leaf_unit_offsets[leaf] >= 0]
    want = [res.units_of_leaf(leaf) for leaf in with_units]
    got = res.units_of_leaves(leaves)
    assert got.tolist() == (np.concatenate(want).tolist() if want else [])
    assert res.units_of_leaves(np.zeros(0, dtype=np.int64)).shape == (0,)
