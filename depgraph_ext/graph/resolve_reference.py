"""Group resolution in plain Python: the oracle and the baseline for ``csrc/core/resolve.cpp``.

The algorithm (mirrored step for step by the C++ core):

Phase A, atom structure. Every slot starts as one atom. ``EQUAL`` unifies atoms; ``RESHAPE``
refines both sides to a common row-major factorisation (splitting atoms where needed) and unifies
the factors; aligned ``CAT_PIECE``/``SLICE`` couplings whose sides are products refine the whole
into ``[outer, inner]``. Couplings are swept until a sweep changes nothing: refinement only ever
splits atoms or merges them, so the sweep terminates.

Phase B, elements. Leaf atoms' elements are joined by element-level couplings (unequal ``cat``
pieces) and blocked by ``BLOCK``, by conflicts (factorisations that cannot agree) and by the outer
factors of constant slices. Joined elements form units; atoms joined by an element coupling form a
group.
"""

from __future__ import annotations

import numpy as np

from .couplings import CouplingKind, Couplings, Resolution

_EQUAL, _RESHAPE, _CAT, _SLICE, _BLOCK = (int(k) for k in CouplingKind)

# Index elements resolution may materialise (as csrc/core: an absurd size is an error, not an
# exhausted memory).
MAX_ELEMENTS = 1 << 28

# Piece modes: how a CAT_PIECE/SLICE coupling is realised on the current atom structure.
_MODE_CONFLICT, _MODE_EQUAL, _MODE_ELEMENT, _MODE_REFINE, _MODE_STRIDED = range(5)


class _Atoms:
    def __init__(self, sizes: list[int]) -> None:
        self.parent = list(range(len(sizes)))
        self.size = list(sizes)
        self.children: list[list[int] | None] = [None] * len(sizes)
        self.changes = 0

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.children.append(None)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        return _find(self.parent, a)

    def leaves(self, a: int) -> list[int]:
        root = self.find(a)
        kids = self.children[root]
        if kids is None:
            return [root]
        out: list[int] = []
        for kid in kids:
            out.extend(self.leaves(kid))
        return out

    def leaves_of_all(self, atoms) -> list[int]:
        out: list[int] = []
        for a in atoms:
            out.extend(self.leaves(a))
        return out

    def unify(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.size[ra] != self.size[rb]:
            return False
        if self.children[ra] is None:
            self.parent[ra] = rb
            self.changes += 1
            return True
        if self.children[rb] is None:
            self.parent[rb] = ra
            self.changes += 1
            return True
        ok = self.refine_unify(self.leaves(ra), self.leaves(rb))
        if ok and self.find(rb) != self.find(ra):
            self.parent[self.find(rb)] = self.find(ra)
            self.changes += 1
        return ok

    def refine_unify(self, left: list[int], right: list[int]) -> bool:
        """Make two row-major factor lists of one index space agree, then unify factor by factor."""
        for _ in range(4):
            left = [a for a in left if self.size[a] != 1]
            right = [a for a in right if self.size[a] != 1]
            ls = [self.size[a] for a in left]
            rs = [self.size[a] for a in right]
            if 0 in ls or 0 in rs or _product(ls) != _product(rs):
                return False
            if ls == rs:
                ok = True
                for a, b in zip(left, right):
                    ok = self.unify(a, b) and ok
                return ok
            bounds = _common_boundaries(ls, rs)
            if bounds is None:
                return False
            for side in (left, right):
                self._split_to(side, bounds)
            left = self.leaves_of_all(left)
            right = self.leaves_of_all(right)
        return False

    def _split_to(self, side: list[int], bounds: list[int]) -> None:
        inner = 1
        spans = []
        for a in reversed(side):
            spans.append((a, inner, inner * self.size[a]))
            inner *= self.size[a]
        for a, lo, hi in reversed(spans):
            root = self.find(a)
            if self.children[root] is not None:
                continue
            cuts = [b for b in bounds if lo <= b <= hi]  # ascending, includes lo and hi
            if len(cuts) <= 2:
                continue
            factors = [cuts[i + 1] // cuts[i] for i in range(len(cuts) - 1)]
            self.children[root] = [self.new(f) for f in reversed(factors)]
            self.changes += 1


def _find(parent, a: int) -> int:
    """Union-find root of ``a`` with path compression (``parent``: a list or a dict)."""
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:
        parent[a], a = root, parent[a]
    return root


def _product(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _suffix_products(sizes: list[int]) -> list[int]:
    out = [1]
    for s in reversed(sizes):
        out.append(out[-1] * s)
    return out


def _common_boundaries(ls: list[int], rs: list[int]) -> list[int] | None:
    """Sorted inner-size boundaries of the coarsest common refinement, or None if there is none."""
    bounds = sorted(set(_suffix_products(ls)) | set(_suffix_products(rs)))
    for i in range(len(bounds) - 1):
        if bounds[i + 1] % bounds[i] != 0:
            return None
    return bounds


class _Resolver:
    def __init__(self, c: Couplings) -> None:
        self.c = c
        self.atoms = _Atoms(c.slot_sizes.tolist())
        self.kinds = c.kinds.tolist()
        self.offsets = c.offsets.tolist()
        self.data = c.data.tolist()
        self.aux: dict[int, int] = {}
        self.conflict = [False] * len(self.kinds)

    def operands(self, k: int) -> list[int]:
        return self.data[self.offsets[k] : self.offsets[k + 1]]

    def aux_atom(self, k: int, size: int) -> int:
        if k not in self.aux:
            self.aux[k] = self.atoms.new(size)
        return self.aux[k]

    def piece_mode(self, kind: int, ops: list[int]) -> tuple[int, int, int]:
        """(mode, inner size I, piece factors inside the inner part: 0 = all, 1 = all but first)."""
        atoms = self.atoms
        whole, piece, start = ops[0], ops[1], ops[2]
        step = ops[3] if kind == _SLICE else 1
        n, length = atoms.size[whole], atoms.size[piece]
        if n == 0 or length == 0:
            return _MODE_CONFLICT, 0, 0
        if step == 1 and length == n and start == 0:
            return _MODE_EQUAL, 0, 0
        if step != 1:
            if step > 0 and n % step == 0 and length == n // step and 0 <= start < step:
                return _MODE_STRIDED, 0, 0
            return _MODE_CONFLICT, 0, 0
        wl = [a for a in atoms.leaves(whole) if atoms.size[a] != 1]
        pl = [a for a in atoms.leaves(piece) if atoms.size[a] != 1]
        if kind == _CAT and len(wl) == 1 and len(pl) == 1:
            return _MODE_ELEMENT, 0, 0
        if n % length == 0 and start % length == 0:
            return _MODE_REFINE, length, 0
        if len(pl) >= 2:
            inner = length // atoms.size[pl[0]]
            if n % inner == 0 and start % inner == 0:
                return _MODE_REFINE, inner, 1
        return _MODE_CONFLICT, 0, 0

    def structure_pass(self) -> None:
        atoms = self.atoms
        for k, kind in enumerate(self.kinds):
            ops = self.operands(k)
            ok = True
            if kind == _EQUAL:
                ok = atoms.unify(ops[0], ops[1])
            elif kind == _RESHAPE:
                n_in = ops[0]
                ins, outs = ops[1 : 1 + n_in], ops[2 + n_in :]
                ok = atoms.refine_unify(atoms.leaves_of_all(ins), atoms.leaves_of_all(outs))
            elif kind == _CAT or kind == _SLICE:
                mode, inner, keep = self.piece_mode(kind, ops)
                whole, piece = ops[0], ops[1]
                if mode == _MODE_CONFLICT:
                    ok = False
                elif mode == _MODE_EQUAL:
                    ok = atoms.unify(whole, piece)
                elif mode == _MODE_REFINE:
                    outer = self.aux_atom(k, atoms.size[whole] // inner)
                    pl = [a for a in atoms.leaves(piece) if atoms.size[a] != 1]
                    ok = atoms.refine_unify(atoms.leaves(whole), [outer, *pl[keep:]])
                elif mode == _MODE_STRIDED:
                    inner_atom = self.aux_atom(k, ops[3])
                    ok = atoms.refine_unify(atoms.leaves(whole), [*atoms.leaves(piece), inner_atom])
            self.conflict[k] = not ok

    def resolve(self) -> Resolution:
        atoms = self.atoms
        while True:
            before = atoms.changes
            self.structure_pass()
            if atoms.changes == before:
                break
        return self.elements()

    def elements(self) -> Resolution:
        atoms = self.atoms
        num_slots = self.c.num_slots
        # Canonical leaves: first appearance over slots.
        canon: dict[int, int] = {}
        slot_leaf_offsets = [0]
        slot_leaves: list[int] = []
        for s in range(num_slots):
            for a in atoms.leaves(s):
                if a not in canon:
                    canon[a] = len(canon)
                slot_leaves.append(canon[a])
            slot_leaf_offsets.append(len(slot_leaves))
        leaf_atoms = list(canon)  # canonical id -> root atom

        elem_base: dict[int, int] = {}
        elem_parent: list[int] = []
        elem_blocked: list[bool] = []
        full_block: set[int] = set()
        group_parent: dict[int, int] = {}

        def materialize(a: int) -> int:
            base = elem_base.get(a)
            if base is None:
                n = atoms.size[a]
                if n > MAX_ELEMENTS - len(elem_parent):
                    raise ValueError(
                        f"couplings: resolving them needs more than {MAX_ELEMENTS} "
                        "index elements; sizes this large are not tensor dims"
                    )
                base = len(elem_parent)
                elem_base[a] = base
                elem_parent.extend(range(base, base + n))
                elem_blocked.extend([False] * n)
            return base

        def efind(e: int) -> int:
            return _find(elem_parent, e)

        def gfind(a: int) -> int:
            group_parent.setdefault(a, a)
            return _find(group_parent, a)

        def join_elements(a: int, a_start: int, b: int, count: int) -> None:
            base_a, base_b = materialize(a), materialize(b)
            for i in range(count):
                ra, rb = efind(base_a + a_start + i), efind(base_b + i)
                if ra != rb:
                    elem_parent[rb] = ra
            ga, gb = gfind(a), gfind(b)
            if ga != gb:
                group_parent[gb] = ga

        def block_slots(slots) -> None:
            for s in slots:
                full_block.update(atoms.leaves(s))

        for k, kind in enumerate(self.kinds):
            ops = self.operands(k)
            if kind == _BLOCK:
                block_slots(ops)
                continue
            if self.conflict[k]:
                if kind == _RESHAPE:
                    block_slots(ops[1 : 1 + ops[0]] + ops[2 + ops[0] :])
                else:
                    block_slots(ops[:2])
                continue
            if kind != _CAT and kind != _SLICE:
                continue
            mode, inner, keep = self.piece_mode(kind, ops)
            whole, piece = ops[0], ops[1]
            if mode == _MODE_ELEMENT:
                wl = [a for a in atoms.leaves(whole) if atoms.size[a] != 1][0]
                pl = [a for a in atoms.leaves(piece) if atoms.size[a] != 1][0]
                join_elements(wl, ops[2], pl, atoms.size[pl])
            elif mode == _MODE_REFINE:
                outer = atoms.leaves(self.aux[k])
                if kind == _SLICE or len(outer) != 1:
                    full_block.update(outer)
                    if kind == _CAT and keep == 1:  # the piece's outer factor joins nothing
                        block_slots([piece])
                elif keep == 0:
                    base = materialize(outer[0])
                    elem_blocked[base + ops[2] // inner] = True
                else:
                    pl = [a for a in atoms.leaves(piece) if atoms.size[a] != 1][0]
                    join_elements(outer[0], ops[2] // inner, pl, atoms.size[pl])
            elif mode == _MODE_STRIDED:
                full_block.update(atoms.leaves(self.aux[k]))

        query = self.c.query_slots.tolist()
        relevant: list[int] = []
        seen: set[int] = set()
        for s in query:
            for leaf in slot_leaves[slot_leaf_offsets[s] : slot_leaf_offsets[s + 1]]:
                if leaf not in seen:
                    seen.add(leaf)
                    relevant.append(leaf)
        for leaf in relevant:
            materialize(leaf_atoms[leaf])

        root_blocked: dict[int, bool] = {}
        for a, base in elem_base.items():
            whole_blocked = a in full_block
            for i in range(atoms.size[a]):
                r = efind(base + i)
                if whole_blocked or elem_blocked[base + i]:
                    root_blocked[r] = True

        leaf_unit_offsets = [-1] * len(leaf_atoms)
        elem_units: list[int] = []
        unit_of_root: dict[int, int] = {}
        unit_blocked: list[bool] = []
        unit_groups: list[int] = []
        group_of_root: dict[int, int] = {}
        for leaf, a in enumerate(leaf_atoms):  # every materialized leaf: these can change size
            base = elem_base.get(a)
            if base is None:
                continue
            leaf_unit_offsets[leaf] = len(elem_units)
            group = group_of_root.setdefault(gfind(a), len(group_of_root))
            for i in range(atoms.size[a]):
                r = efind(base + i)
                unit = unit_of_root.get(r)
                if unit is None:
                    unit = len(unit_of_root)
                    unit_of_root[r] = unit
                    unit_blocked.append(root_blocked.get(r, False))
                    unit_groups.append(group)
                elem_units.append(unit)

        return Resolution(
            leaf_sizes=np.asarray([atoms.size[a] for a in leaf_atoms], dtype=np.int64),
            slot_leaf_offsets=np.asarray(slot_leaf_offsets, dtype=np.int64),
            slot_leaves=np.asarray(slot_leaves, dtype=np.int64),
            leaf_unit_offsets=np.asarray(leaf_unit_offsets, dtype=np.int64),
            elem_units=np.asarray(elem_units, dtype=np.int64),
            unit_blocked=np.asarray(unit_blocked, dtype=bool),
            unit_groups=np.asarray(unit_groups, dtype=np.int64),
        )


_INT64_MAX = (1 << 63) - 1
_KIND_NAMES = {int(k): k.name for k in CouplingKind}


def _count(where: str, n: int, expected: int) -> None:
    if n != expected:
        raise ValueError(f"{where}takes {expected} operands, not {n}")


def _slot(where: str, ops: list[int], i: int, sizes: list[int]) -> int:
    if not 0 <= ops[i] < len(sizes):
        raise ValueError(f"{where}slot {ops[i]} out of range [0, {len(sizes)})")
    return sizes[ops[i]]


def validate_couplings(c: Couplings) -> None:
    """Raise ValueError naming the first malformed array, coupling, slot or query slot (the
    checks, in order and word for word, of ``validate_couplings`` in csrc/core)."""
    for name in ("slot_sizes", "kinds", "offsets", "data", "query_slots"):
        ndim = np.asarray(getattr(c, name)).ndim
        if ndim != 1:
            raise ValueError(f"{name} must be a 1-d array, not {ndim}-d")
    sizes, kinds = c.slot_sizes.tolist(), c.kinds.tolist()
    offsets, data = c.offsets.tolist(), c.data.tolist()
    num_slots = len(sizes)
    if len(offsets) != len(kinds) + 1:
        raise ValueError(
            f"couplings: offsets must have one entry more than kinds (got "
            f"{len(offsets)} for {len(kinds)} kinds)"
        )
    if offsets[0] != 0:
        raise ValueError("couplings: offsets must start at 0")
    if offsets[-1] != len(data):
        raise ValueError(
            f"couplings: the last offset ({offsets[-1]}) must equal the length of "
            f"data ({len(data)})"
        )
    for k in range(len(kinds)):
        if offsets[k + 1] < offsets[k]:
            raise ValueError(f"coupling {k}: offsets decrease")
    for s, size in enumerate(sizes):
        if size < 0:
            raise ValueError(f"slot {s}: size {size} is negative")
    for k, kind in enumerate(kinds):
        name = _KIND_NAMES.get(kind)
        if name is None:
            raise ValueError(f"coupling {k}: unknown kind {kind}")
        where = f"coupling {k} ({name}): "
        ops = data[offsets[k] : offsets[k + 1]]
        n = len(ops)
        if kind == _EQUAL:
            _count(where, n, 2)
            a, b = _slot(where, ops, 0, sizes), _slot(where, ops, 1, sizes)
            if a != b:
                raise ValueError(f"{where}slots {ops[0]} and {ops[1]} have sizes {a} and {b}")
        elif kind == _RESHAPE:
            if n < 2 or ops[0] < 0 or ops[0] > n - 2 or ops[ops[0] + 1] != n - 2 - ops[0]:
                raise ValueError(f"{where}operands must be n_in, n_in slots, n_out, n_out slots")
            n_in = ops[0]
            for i in [*range(1, n_in + 1), *range(n_in + 2, n)]:
                _slot(where, ops, i, sizes)
            p_in = _product(sizes[s] for s in ops[1 : n_in + 1])
            p_out = _product(sizes[s] for s in ops[n_in + 2 :])
            if p_in > _INT64_MAX or p_out > _INT64_MAX:
                raise ValueError(f"{where}the product of sizes overflows int64")
            if p_in != p_out:
                raise ValueError(f"{where}sizes multiply to {p_in} and {p_out}")
        elif kind == _CAT:
            _count(where, n, 3)
            whole, piece, offset = _slot(where, ops, 0, sizes), _slot(where, ops, 1, sizes), ops[2]
            if offset < 0 or offset + piece > whole:
                raise ValueError(
                    f"{where}a piece of size {piece} at offset {offset} does not "
                    f"fit a whole of size {whole}"
                )
        elif kind == _SLICE:
            _count(where, n, 4)
            whole, piece = _slot(where, ops, 0, sizes), _slot(where, ops, 1, sizes)
            start, step = ops[2], ops[3]
            if step < 1:
                raise ValueError(f"{where}step {step} must be >= 1")
            last = start + step * (piece - 1)
            if start < 0 or (start > whole if piece == 0 else last >= whole):
                raise ValueError(
                    f"{where}a piece of size {piece} from {start} by step {step} "
                    f"does not fit a whole of size {whole}"
                )
        else:  # BLOCK
            if n < 1:
                raise ValueError(f"{where}takes at least 1 operand, not {n}")
            for i in range(n):
                _slot(where, ops, i, sizes)
    for q, s in enumerate(c.query_slots.tolist()):
        if not 0 <= s < num_slots:
            raise ValueError(f"query {q}: slot {s} out of range [0, {num_slots})")


def resolve_reference(c: Couplings) -> Resolution:
    """Resolve couplings into leaves, units and groups (pure Python); malformed couplings
    raise ValueError (see :func:`validate_couplings`)."""
    validate_couplings(c)
    return _Resolver(c).resolve()
