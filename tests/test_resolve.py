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
