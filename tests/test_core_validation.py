"""Malformed couplings never crash the native core: thousands of random malformed arrays go to
``_core.resolve_groups`` in a subprocess (a crash would kill only that process), and each gets
the verdict of the Python twin: the same ValueError, word for word, or the same resolution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import depgraph_ext as dx
from depgraph_ext.graph.couplings import CouplingBuilder, Couplings
from depgraph_ext.graph.resolve import resolve

native = pytest.mark.skipif(not dx.native_available(), reason="native core not built")

_DIFFERENTIAL = r"""
import json, sys
import numpy as np
from coupling_graphs import malformed_couplings
from depgraph_ext import _core
from depgraph_ext.graph.couplings import Couplings
from depgraph_ext.graph.resolve_reference import resolve_reference

FIELDS = ("leaf_sizes", "slot_leaf_offsets", "slot_leaves", "leaf_unit_offsets", "elem_units",
          "unit_blocked", "unit_groups")

def verdict(run):
    try:
        return "ok", run()
    except ValueError as exc:
        return "error", str(exc)

counts, mismatches = {"ok": 0, "error": 0}, []
for seed in range(int(sys.argv[1]), int(sys.argv[2])):
    arrays = malformed_couplings(seed)
    native = verdict(lambda: _core.resolve_groups(**arrays))
    python = verdict(lambda: resolve_reference(Couplings(**arrays)))
    if native[0] != python[0]:
        same = False
    elif native[0] == "error":
        same = native[1] == python[1]
    else:
        same = all(np.array_equal(np.asarray(native[1][f]).astype(np.int64),
                                  np.asarray(getattr(python[1], f)).astype(np.int64))
                   for f in FIELDS)
    counts[native[0]] += 1
    if not same:
        mismatches.append({"seed": seed, "native": str(native[1])[:300],
                           "python": str(python[1])[:300]})
print(json.dumps({"counts": counts, "mismatches": mismatches[:10]}))
"""


@native
@pytest.mark.parametrize("start", [0, 1500])
def test_random_malformed_arrays_never_crash_and_match_the_twin(start):
    tests = Path(__file__).resolve().parent
    proc = subprocess.run(
        [sys.executable, "-c", _DIFFERENTIAL, str(start), str(start + 1500)],
        cwd=tests,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"the subprocess died (return code {proc.returncode}): {proc.stderr[-2000:]}"
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mismatches"] == [], report["mismatches"]
    # both verdicts are exercised, refusals the most
    assert report["counts"]["error"] > 1000 and report["counts"]["ok"] > 20, report["counts"]


def _graph():
    """A cat of 4 and 2 channels into 6, a reshape of 6 into 2 x 3, a slice of 3 from 6."""
    b = CouplingBuilder()
    x, y, out, two, three, part = (b.new_slot(n) for n in (4, 2, 6, 2, 3, 3))
    b.cat_piece(out, x, 0)
    b.cat_piece(out, y, 4)
    b.reshape([out], [two, three])
    b.slice(out, part, 0, 2)
    return b.build([x, y])


def _with(c: Couplings, **changes) -> Couplings:
    arrays = {
        f: getattr(c, f).copy() for f in ("slot_sizes", "kinds", "offsets", "data", "query_slots")
    }
    for name, (index, value) in changes.items():
        arrays[name][index] = value
    return Couplings(**arrays)


# (array, index, value) -> the message both backends give
CASES = [
    (
        ("data", 2, 3),
        r"coupling 0 \(CAT_PIECE\): a piece of size 4 at offset 3 does not fit "
        r"a whole of size 6",
    ),
    (("data", 5, -1), r"coupling 1 \(CAT_PIECE\): a piece of size 2 at offset -1 does not fit"),
    (("data", 1, 99), r"coupling 0 \(CAT_PIECE\): slot 99 out of range \[0, 6\)"),
    (("data", 14, 0), r"coupling 3 \(SLICE\): step 0 must be >= 1"),
    (
        ("data", 13, 2),
        r"coupling 3 \(SLICE\): a piece of size 3 from 2 by step 2 does not fit "
        r"a whole of size 6",
    ),
    (("data", 8, 3), r"coupling 2 \(RESHAPE\): operands must be n_in, n_in slots, n_out"),
    (("data", 9, 4), r"coupling 2 \(RESHAPE\): sizes multiply to 6 and 9"),
    (("slot_sizes", 3, -2), r"slot 3: size -2 is negative"),
    (("kinds", 1, 9), r"coupling 1: unknown kind 9"),
    (("offsets", 2, 2), r"coupling 1: offsets decrease"),
    (("query_slots", 1, 6), r"query 1: slot 6 out of range \[0, 6\)"),
]


@pytest.mark.parametrize("change, message", CASES, ids=[c[1][:40] for c in CASES])
def test_each_malformed_operand_is_named(change, message, backend):
    name, index, value = change
    with pytest.raises(ValueError, match=message):
        resolve(_with(_graph(), **{name: (index, value)}), backend)


def test_the_well_formed_graph_resolves(backend):
    r = resolve(_graph(), backend)
    assert r.num_units == 6


def test_reshape_products_that_overflow_are_refused(backend):
    b = CouplingBuilder()
    big, huge, tiny = b.new_slot(2**40), b.new_slot(2**40), b.new_slot(4)
    b.reshape([big, huge], [tiny])
    with pytest.raises(ValueError, match="the product of sizes overflows int64"):
        resolve(b.build([tiny]), backend)
    b = CouplingBuilder()
    big, huge, zero, none = b.new_slot(2**40), b.new_slot(2**40), b.new_slot(0), b.new_slot(0)
    b.reshape([big, huge, zero], [none])  # a zero anywhere: the product is 0, no overflow
    assert resolve(b.build([none]), backend).num_units == 0


@native
def test_arrays_of_the_wrong_rank_are_refused():
    from depgraph_ext import _core

    c = _graph()
    arrays = {f: getattr(c, f) for f in ("slot_sizes", "kinds", "offsets", "data", "query_slots")}
    arrays["data"] = arrays["data"].reshape(1, -1)
    with pytest.raises(ValueError, match="data must be a 1-d array, not 2-d"):
        _core.resolve_groups(**arrays)
    with pytest.raises(ValueError, match="data must be a 1-d array, not 2-d"):
        resolve(Couplings(**arrays), "python")
    np.testing.assert_array_equal(arrays["slot_sizes"], c.slot_sizes)
