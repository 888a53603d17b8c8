"""Group resolution: native vs python identical on random coupling graphs and on real models;
termination on cycles; known answers on hand-built graphs."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

import depgraph_ext as dx
from depgraph_ext.couplings import CouplingBuilder
from depgraph_ext.resolve import resolutions_equal, resolve

native = pytest.mark.skipif(not dx.native_available(), reason="native core not built")


def random_couplings(seed: int):
    rng = random.Random(seed)
    b = CouplingBuilder()
    by_size: dict[int, list[int]] = {}

    def slot(size=None):
        size = size or rng.choice([1, 2, 3, 4, 6, 8, 12, 16, 24])
        s = b.new_slot(size)
        by_size.setdefault(size, []).append(s)
        return s

    for _ in range(rng.randint(4, 30)):
        slot()
    for _ in range(rng.randint(1, 60)):
        kind = rng.random()
        if kind < 0.35:  # EQUAL between slots of one size
            size = rng.choice(list(by_size))
            b.equal(rng.choice(by_size[size]), slot(size) if rng.random() < 0.3
                    else rng.choice(by_size[size]))
        elif kind < 0.6:  # RESHAPE: a slot against a factorisation of its size
            whole = rng.choice(range(len(b.slot_sizes)))
            n = b.slot_sizes[whole]
            factors = [d for d in range(2, n + 1) if n % d == 0]
            if not factors:
                continue
            f = rng.choice(factors)
            parts = [slot(f), slot(n // f)] if n // f > 1 else [slot(f)]
            if rng.random() < 0.5:
                parts.reverse()  # sometimes an incompatible order
                if b.slot_sizes[parts[0]] * b.slot_sizes[parts[-1]] != n:
                    continue
            b.reshape([whole], parts)
        elif kind < 0.8:  # CAT of 2-3 pieces
            pieces = [slot() for _ in range(rng.randint(2, 3))]
            whole = slot(sum(b.slot_sizes[p] for p in pieces))
            offset = 0
            for p in pieces:
                b.cat_piece(whole, p, offset)
                offset += b.slot_sizes[p]
        elif kind < 0.95:  # SLICE, aligned or not, strided sometimes
            whole = rng.choice(range(len(b.slot_sizes)))
            n = b.slot_sizes[whole]
            step = rng.choice([1, 1, 1, 2])
            length = rng.randint(1, max(1, n // step))
            start = rng.randint(0, max(0, n - (length - 1) * step - 1))
            b.slice(whole, slot(length), start, step)
        else:
            b.block(rng.choice(range(len(b.slot_sizes))))
    query = rng.sample(range(len(b.slot_sizes)), k=min(len(b.slot_sizes), rng.randint(1, 12)))
    return b.build(query)


@native
@pytest.mark.parametrize("seed", range(300))
def test_native_equals_python_on_random_graphs(seed):
    c = random_couplings(seed)
    py, nat = resolve(c, "python"), resolve(c, "native")
    assert resolutions_equal(py, nat)
    # Every queried slot is a product of its leaves.
    for s in c.query_slots:
        assert np.prod(py.leaf_sizes[py.leaves_of(int(s))]) == c.slot_sizes[s] or \
            c.slot_sizes[s] == 1


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


def test_malformed_couplings_are_rejected():
    if not dx.native_available():
        pytest.skip("native core not built")
    b = CouplingBuilder()
    b.new_slot(4)
    b.equal(0, 5)
    with pytest.raises(ValueError, match="slot out of range"):
        resolve(b.build([0]), "native")


@native
def test_native_equals_python_on_densenet121():
    from nets import DenseNet

    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.OpaqueOpWarning)
        dg = dx.DependencyGraph(DenseNet().eval(), torch.randn(1, 3, 64, 64), backend="native")
    c = dg.coupling_model.couplings
    assert resolutions_equal(dg.resolution, resolve(c, "python"))
