"""Random coupling graphs for the resolution tests: well-formed ones (``random_couplings``)
and malformed ones (``malformed_couplings``: a well-formed graph with a few operands broken)."""

from __future__ import annotations

import random

import numpy as np

from depgraph_ext.graph.couplings import CouplingBuilder, CouplingKind, Couplings


def random_couplings(seed: int) -> Couplings:
    """A well-formed graph: EQUAL between slots of one size, RESHAPE against factorisations
    (sometimes of an incompatible order), CAT of 2-3 pieces, SLICE (aligned or not, strided
    sometimes) and BLOCK, with a random set of query slots."""
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
            b.equal(
                rng.choice(by_size[size]),
                slot(size) if rng.random() < 0.3 else rng.choice(by_size[size]),
            )
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


def _arrays(c: Couplings) -> dict[str, np.ndarray]:
    return {
        name: getattr(c, name).copy()
        for name in ("slot_sizes", "kinds", "offsets", "data", "query_slots")
    }


def _fault(a: dict, rng: random.Random) -> str | None:
    """One random fault, in place (see ``malformed_couplings``); returns the name of an array
    to give the wrong rank once every fault is made."""
    num_slots = a["slot_sizes"].shape[0]

    def operands(k: int) -> slice:
        return slice(int(a["offsets"][k]), int(a["offsets"][k + 1]))

    def any_int() -> int:
        return rng.choice(
            [
                -1,
                -(2**40),
                num_slots,
                num_slots + 5,
                2**62,
                2**63 - 1,
                rng.randint(-3, num_slots + 3),
            ]
        )

    k_count = a["kinds"].shape[0]
    fault = rng.randrange(12)
    if fault == 0 and a["data"].size:  # an operand anywhere
        a["data"][rng.randrange(a["data"].size)] = any_int()
    elif fault == 1:  # a size
        a["slot_sizes"][rng.randrange(num_slots)] = rng.choice([-1, 0, 2**40, 2**62])
    elif fault == 2 and k_count:  # offsets out of order
        i = rng.randrange(1, k_count + 1)
        a["offsets"][i] = rng.choice(
            [-1, 0, int(a["offsets"][i]) + rng.randint(1, 9), int(a["offsets"][i]) - 1]
        )
    elif fault == 3 and k_count:  # an unknown kind
        a["kinds"][rng.randrange(k_count)] = rng.choice([-1, 5, 7, 127])
    elif fault == 4 and k_count:  # an operand added to or dropped from a coupling
        k = rng.randrange(k_count)
        end = int(a["offsets"][k + 1])
        if rng.random() < 0.5:
            a["data"] = np.insert(a["data"], end, rng.randint(0, num_slots - 1))
            a["offsets"][k + 1 :] += 1
        elif end > int(a["offsets"][k]):
            a["data"] = np.delete(a["data"], end - 1)
            a["offsets"][k + 1 :] -= 1
    elif fault == 5:  # CAT_PIECE offsets / SLICE start and step
        ks = np.nonzero(np.isin(a["kinds"], [CouplingKind.CAT_PIECE, CouplingKind.SLICE]))[0]
        if ks.size:
            k = int(rng.choice(ks.tolist()))
            ops = operands(k)
            pos = ops.start + rng.choice([2, 3] if a["kinds"][k] == CouplingKind.SLICE else [2])
            a["data"][pos] = rng.choice([-1, 0, 1, 3, 7, 25, 2**62, 2**63 - 1])
    elif fault == 6:  # RESHAPE operand counts
        ks = np.nonzero(a["kinds"] == CouplingKind.RESHAPE)[0]
        if ks.size:
            ops = operands(int(rng.choice(ks.tolist())))
            a["data"][ops.start + rng.choice([0, int(a["data"][ops.start]) + 1])] = rng.choice(
                [-1, 0, 2, 9]
            )
    elif fault == 7 and a["query_slots"].size:  # a query slot
        a["query_slots"][rng.randrange(a["query_slots"].size)] = rng.choice([-1, num_slots, 2**40])
    elif fault == 8:  # the last offset off the end of data
        a["offsets"][-1] += rng.choice([-1, 1, 100])
    elif fault == 9:  # an array dropped or a kinds entry without offsets
        which = rng.choice(["kinds", "offsets", "data", "query_slots"])
        a[which] = a[which][: max(0, a[which].shape[0] - rng.randint(1, 3))]
    elif fault == 10:  # an array of the wrong rank (made last: the others index 1-d ones)
        return rng.choice(["slot_sizes", "kinds", "offsets", "data", "query_slots"])
    else:  # RESHAPE whose sides multiply differently (an input slot of another size)
        ks = np.nonzero(a["kinds"] == CouplingKind.RESHAPE)[0]
        if ks.size:
            ops = operands(int(rng.choice(ks.tolist())))
            a["data"][ops.start + 1] = rng.randrange(num_slots)
    return None


def malformed_couplings(seed: int) -> dict[str, np.ndarray]:
    """The arrays of a well-formed graph with one to three random faults: slot ids out of
    range, negative or huge sizes, offsets that decrease or overrun data, unknown kinds,
    operands added or dropped, CAT_PIECE offsets and SLICE start/step that leave the whole,
    RESHAPE counts and products that disagree, query slots out of range, arrays of the
    wrong rank. (A fault may happen to leave the graph well formed.)"""
    rng = random.Random(seed)
    a = _arrays(random_couplings(seed))
    wrong_rank = None
    for _ in range(rng.randint(1, 3)):
        try:  # an earlier fault may leave arrays a later one cannot index: skip it
            wrong_rank = _fault(a, rng) or wrong_rank
        except (IndexError, ValueError):
            pass
    if wrong_rank is not None:
        a[wrong_rank] = a[wrong_rank].reshape(1, -1)
    return a
