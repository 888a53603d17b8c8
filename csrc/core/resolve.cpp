#include "resolve.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace depgraph {
namespace {

using Atom = int64_t;
using AtomList = std::vector<Atom>;

constexpr int64_t kNone = -1;
// Index elements resolution may materialise (a few GiB of working memory): real graphs need a
// few million; the bound turns absurd sizes into an error instead of exhausting memory.
constexpr int64_t kMaxElements = int64_t{1} << 28;

// Union-find root of x with path compression.
int64_t find_root(std::vector<int64_t>& parent, int64_t x) {
  int64_t root = x;
  while (parent[root] != root) root = parent[root];
  while (parent[x] != root) {
    int64_t next = parent[x];
    parent[x] = root;
    x = next;
  }
  return root;
}

// Atoms under union-find; a root may be split into child atoms (row-major factors).
class Atoms {
 public:
  explicit Atoms(const int64_t* sizes, int64_t n) : size_(sizes, sizes + n), parent_(n), kids_(n) {
    for (int64_t i = 0; i < n; ++i) parent_[i] = i;
  }

  int64_t changes() const { return changes_; }
  int64_t size(Atom a) const { return size_[a]; }
  int64_t count() const { return static_cast<int64_t>(parent_.size()); }
  bool is_split(Atom root) const { return !kids_[root].empty(); }

  Atom make(int64_t size) {
    parent_.push_back(count());
    size_.push_back(size);
    kids_.emplace_back();
    return count() - 1;
  }

  Atom find(Atom a) { return find_root(parent_, a); }

  void leaves(Atom a, AtomList& out) {
    Atom root = find(a);
    if (kids_[root].empty()) {
      out.push_back(root);
      return;
    }
    const AtomList kids = kids_[root];  // copy: recursion may grow kids_
    for (Atom k : kids) leaves(k, out);
  }

  AtomList leaves(Atom a) {
    AtomList out;
    leaves(a, out);
    return out;
  }

  AtomList leaves_of_all(const AtomList& atoms) {
    AtomList out;
    for (Atom a : atoms) leaves(a, out);
    return out;
  }

  AtomList non_unit(const AtomList& atoms) const {
    AtomList out;
    for (Atom a : atoms)
      if (size_[a] != 1) out.push_back(a);
    return out;
  }

  bool unify(Atom a, Atom b) {
    Atom ra = find(a), rb = find(b);
    if (ra == rb) return true;
    if (size_[ra] != size_[rb]) return false;
    if (!is_split(ra)) {
      parent_[ra] = rb;
      ++changes_;
      return true;
    }
    if (!is_split(rb)) {
      parent_[rb] = ra;
      ++changes_;
      return true;
    }
    bool ok = refine_unify(leaves(ra), leaves(rb));
    if (ok && find(rb) != find(ra)) {
      parent_[find(rb)] = find(ra);
      ++changes_;
    }
    return ok;
  }

  // Make two row-major factor lists of one index space agree, then unify factor by factor.
  bool refine_unify(AtomList left, AtomList right) {
    for (int attempt = 0; attempt < 4; ++attempt) {
      left = non_unit(left);
      right = non_unit(right);
      std::vector<int64_t> ls = sizes(left), rs = sizes(right);
      if (has_zero(ls) || has_zero(rs) || product(ls) != product(rs)) return false;
      if (ls == rs) {
        bool ok = true;
        for (size_t i = 0; i < left.size(); ++i) ok = unify(left[i], right[i]) && ok;
        return ok;
      }
      std::vector<int64_t> bounds;
      if (!common_boundaries(ls, rs, bounds)) return false;
      split_to(left, bounds);
      split_to(right, bounds);
      left = leaves_of_all(left);
      right = leaves_of_all(right);
    }
    return false;
  }

 private:
  std::vector<int64_t> sizes(const AtomList& atoms) const {
    std::vector<int64_t> out;
    out.reserve(atoms.size());
    for (Atom a : atoms) out.push_back(size_[a]);
    return out;
  }

  static bool has_zero(const std::vector<int64_t>& v) {
    return std::find(v.begin(), v.end(), 0) != v.end();
  }

  static int64_t product(const std::vector<int64_t>& v) {
    int64_t p = 1;
    for (int64_t x : v) p *= x;
    return p;
  }

  static void suffix_products(const std::vector<int64_t>& sizes, std::vector<int64_t>& out) {
    int64_t p = 1;
    out.push_back(p);
    for (auto it = sizes.rbegin(); it != sizes.rend(); ++it) {
      p *= *it;
      out.push_back(p);
    }
  }

  // Sorted inner-size boundaries of the coarsest common refinement; false if there is none.
  static bool common_boundaries(const std::vector<int64_t>& ls, const std::vector<int64_t>& rs,
                                std::vector<int64_t>& bounds) {
    suffix_products(ls, bounds);
    suffix_products(rs, bounds);
    std::sort(bounds.begin(), bounds.end());
    bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
    for (size_t i = 0; i + 1 < bounds.size(); ++i)
      if (bounds[i + 1] % bounds[i] != 0) return false;
    return true;
  }

  void split_to(const AtomList& side, const std::vector<int64_t>& bounds) {
    std::vector<int64_t> lo(side.size()), hi(side.size());
    int64_t inner = 1;
    for (size_t k = side.size(); k-- > 0;) {
      lo[k] = inner;
      inner *= size_[side[k]];
      hi[k] = inner;
    }
    for (size_t k = 0; k < side.size(); ++k) {
      Atom root = find(side[k]);
      if (is_split(root)) continue;
      std::vector<int64_t> cuts;
      for (int64_t b : bounds)
        if (lo[k] <= b && b <= hi[k]) cuts.push_back(b);
      if (cuts.size() <= 2) continue;
      AtomList kids;
      for (size_t i = cuts.size() - 1; i-- > 0;) kids.push_back(make(cuts[i + 1] / cuts[i]));
      kids_[root] = kids;
      ++changes_;
    }
  }

  std::vector<int64_t> size_;
  std::vector<Atom> parent_;
  std::vector<AtomList> kids_;
  int64_t changes_ = 0;
};

enum Mode { kConflict, kModeEqual, kElement, kRefine, kStrided };

struct PieceMode {
  Mode mode = kConflict;
  int64_t inner = 0;
  int64_t keep = 0;  // piece factors inside the inner part: 0 = all, 1 = all but the first
};

class Resolver {
 public:
  explicit Resolver(const CouplingsView& c)
      : c_(c), atoms_(c.slot_sizes, c.num_slots), aux_(c.num_couplings, kNone),
        conflict_(c.num_couplings, 0) {}

  Resolution run() {
    while (true) {
      int64_t before = atoms_.changes();
      structure_pass();
      if (atoms_.changes() == before) break;
    }
    return elements();
  }

 private:
  const int64_t* ops(int64_t k) const { return c_.data + c_.offsets[k]; }
  int64_t num_ops(int64_t k) const { return c_.offsets[k + 1] - c_.offsets[k]; }
  CouplingKind kind(int64_t k) const { return static_cast<CouplingKind>(c_.kinds[k]); }

  Atom aux_atom(int64_t k, int64_t size) {
    if (aux_[k] == kNone) aux_[k] = atoms_.make(size);
    return aux_[k];
  }

  PieceMode piece_mode(int64_t k) {
    const int64_t* o = ops(k);
    const bool is_slice = kind(k) == CouplingKind::kSlice;
    int64_t whole = o[0], piece = o[1], start = o[2], step = is_slice ? o[3] : 1;
    int64_t n = atoms_.size(whole), length = atoms_.size(piece);
    PieceMode m;
    if (n == 0 || length == 0) return m;
    if (step == 1 && length == n && start == 0) return {kModeEqual, 0, 0};
    if (step != 1) {
      if (step > 0 && n % step == 0 && length == n / step && 0 <= start && start < step)
        return {kStrided, 0, 0};
      return m;
    }
    AtomList wl = atoms_.non_unit(atoms_.leaves(whole));
    AtomList pl = atoms_.non_unit(atoms_.leaves(piece));
    if (!is_slice && wl.size() == 1 && pl.size() == 1) return {kElement, 0, 0};
    if (n % length == 0 && start % length == 0) return {kRefine, length, 0};
    if (pl.size() >= 2) {
      int64_t inner = length / atoms_.size(pl[0]);
      if (n % inner == 0 && start % inner == 0) return {kRefine, inner, 1};
    }
    return m;
  }

  void structure_pass() {
    for (int64_t k = 0; k < c_.num_couplings; ++k) {
      const int64_t* o = ops(k);
      bool ok = true;
      switch (kind(k)) {
        case CouplingKind::kEqual: ok = atoms_.unify(o[0], o[1]); break;
        case CouplingKind::kReshape: {
          int64_t n_in = o[0];
          AtomList ins(o + 1, o + 1 + n_in), outs(o + 2 + n_in, o + num_ops(k));
          ok = atoms_.refine_unify(atoms_.leaves_of_all(ins), atoms_.leaves_of_all(outs));
          break;
        }
        case CouplingKind::kCatPiece:
        case CouplingKind::kSlice: {
          PieceMode m = piece_mode(k);
          int64_t whole = o[0], piece = o[1];
          if (m.mode == kConflict) {
            ok = false;
          } else if (m.mode == kModeEqual) {
            ok = atoms_.unify(whole, piece);
          } else if (m.mode == kRefine) {
            Atom outer = aux_atom(k, atoms_.size(whole) / m.inner);
            AtomList pl = atoms_.non_unit(atoms_.leaves(piece));
            AtomList target{outer};
            target.insert(target.end(), pl.begin() + m.keep, pl.end());
            ok = atoms_.refine_unify(atoms_.leaves(whole), target);
          } else if (m.mode == kStrided) {
            Atom inner = aux_atom(k, o[3]);
            AtomList target = atoms_.leaves(piece);
            target.push_back(inner);
            ok = atoms_.refine_unify(atoms_.leaves(whole), target);
          }
          break;
        }
        case CouplingKind::kBlock: break;
      }
      conflict_[k] = ok ? 0 : 1;
    }
  }

  // -- phase B -------------------------------------------------------------------------------
  int64_t materialize(Atom a) {
    if (elem_base_[a] == kNone) {
      if (atoms_.size(a) > kMaxElements - static_cast<int64_t>(elem_parent_.size()))
        throw std::invalid_argument(
            "couplings: resolving them needs more than " + std::to_string(kMaxElements) +
            " index elements; sizes this large are not tensor dims");
      elem_base_[a] = static_cast<int64_t>(elem_parent_.size());
      for (int64_t i = 0; i < atoms_.size(a); ++i) {
        elem_parent_.push_back(elem_base_[a] + i);
        elem_blocked_.push_back(0);
      }
    }
    return elem_base_[a];
  }

  int64_t efind(int64_t e) { return find_root(elem_parent_, e); }

  Atom gfind(Atom a) {
    if (group_parent_[a] == kNone) group_parent_[a] = a;
    return find_root(group_parent_, a);
  }

  void join_elements(Atom a, int64_t a_start, Atom b, int64_t count) {
    int64_t base_a = materialize(a), base_b = materialize(b);
    for (int64_t i = 0; i < count; ++i) {
      int64_t ra = efind(base_a + a_start + i), rb = efind(base_b + i);
      if (ra != rb) elem_parent_[rb] = ra;
    }
    Atom ga = gfind(a), gb = gfind(b);
    if (ga != gb) group_parent_[gb] = ga;
  }

  void block_atoms(const AtomList& leaves) {
    for (Atom a : leaves) full_block_[a] = 1;
  }

  void block_slots(const int64_t* slots, int64_t n) {
    for (int64_t i = 0; i < n; ++i) block_atoms(atoms_.leaves(slots[i]));
  }

  Resolution elements() {
    const int64_t num_atoms = atoms_.count();
    Resolution r;
    std::vector<int64_t> canon(num_atoms, kNone);
    std::vector<Atom> leaf_atoms;
    r.slot_leaf_offsets.reserve(c_.num_slots + 1);
    r.slot_leaf_offsets.push_back(0);
    AtomList scratch;
    for (int64_t s = 0; s < c_.num_slots; ++s) {
      scratch.clear();
      atoms_.leaves(s, scratch);
      for (Atom a : scratch) {
        if (canon[a] == kNone) {
          canon[a] = static_cast<int64_t>(leaf_atoms.size());
          leaf_atoms.push_back(a);
        }
        r.slot_leaves.push_back(canon[a]);
      }
      r.slot_leaf_offsets.push_back(static_cast<int64_t>(r.slot_leaves.size()));
    }

    elem_base_.assign(num_atoms, kNone);
    full_block_.assign(num_atoms, 0);
    group_parent_.assign(num_atoms, kNone);

    for (int64_t k = 0; k < c_.num_couplings; ++k) {
      const int64_t* o = ops(k);
      const int64_t n = num_ops(k);
      const CouplingKind kd = kind(k);
      if (kd == CouplingKind::kBlock) {
        block_slots(o, n);
        continue;
      }
      if (conflict_[k]) {
        if (kd == CouplingKind::kReshape) {
          block_slots(o + 1, o[0]);
          block_slots(o + 2 + o[0], n - 2 - o[0]);
        } else {
          block_slots(o, 2);
        }
        continue;
      }
      if (kd != CouplingKind::kCatPiece && kd != CouplingKind::kSlice) continue;
      PieceMode m = piece_mode(k);
      if (m.mode == kElement) {
        Atom wl = atoms_.non_unit(atoms_.leaves(o[0]))[0];
        Atom pl = atoms_.non_unit(atoms_.leaves(o[1]))[0];
        join_elements(wl, o[2], pl, atoms_.size(pl));
      } else if (m.mode == kRefine) {
        AtomList outer = atoms_.leaves(aux_[k]);
        if (kd == CouplingKind::kSlice || outer.size() != 1) {
          block_atoms(outer);
          if (kd == CouplingKind::kCatPiece && m.keep == 1)  // the piece's outer joins nothing
            block_slots(o + 1, 1);
        } else if (m.keep == 0) {
          elem_blocked_[materialize(outer[0]) + o[2] / m.inner] = 1;
        } else {
          Atom pl = atoms_.non_unit(atoms_.leaves(o[1]))[0];
          join_elements(outer[0], o[2] / m.inner, pl, atoms_.size(pl));
        }
      } else if (m.mode == kStrided) {
        block_atoms(atoms_.leaves(aux_[k]));
      }
    }

    for (int64_t q = 0; q < c_.num_query; ++q) {
      int64_t s = c_.query_slots[q];
      for (int64_t i = r.slot_leaf_offsets[s]; i < r.slot_leaf_offsets[s + 1]; ++i)
        materialize(leaf_atoms[r.slot_leaves[i]]);
    }

    std::vector<uint8_t> root_blocked(elem_parent_.size(), 0);
    for (Atom a = 0; a < num_atoms; ++a) {
      int64_t base = elem_base_[a];
      if (base == kNone) continue;
      for (int64_t i = 0; i < atoms_.size(a); ++i)
        if (full_block_[a] || elem_blocked_[base + i]) root_blocked[efind(base + i)] = 1;
    }

    const int64_t num_leaves = static_cast<int64_t>(leaf_atoms.size());
    r.leaf_sizes.resize(num_leaves);
    r.leaf_unit_offsets.assign(num_leaves, kNone);
    std::vector<int64_t> unit_of_root(elem_parent_.size(), kNone);
    std::vector<int64_t> group_of_root(num_atoms, kNone);
    int64_t num_groups = 0;
    for (int64_t leaf = 0; leaf < num_leaves; ++leaf) {
      Atom a = leaf_atoms[leaf];
      r.leaf_sizes[leaf] = atoms_.size(a);
      int64_t base = elem_base_[a];
      if (base == kNone) continue;
      r.leaf_unit_offsets[leaf] = static_cast<int64_t>(r.elem_units.size());
      Atom g = gfind(a);
      if (group_of_root[g] == kNone) group_of_root[g] = num_groups++;
      for (int64_t i = 0; i < atoms_.size(a); ++i) {
        int64_t root = efind(base + i);
        if (unit_of_root[root] == kNone) {
          unit_of_root[root] = static_cast<int64_t>(r.unit_blocked.size());
          r.unit_blocked.push_back(root_blocked[root]);
          r.unit_groups.push_back(group_of_root[g]);
        }
        r.elem_units.push_back(unit_of_root[root]);
      }
    }
    return r;
  }

  const CouplingsView& c_;
  Atoms atoms_;
  std::vector<Atom> aux_;
  std::vector<uint8_t> conflict_;
  std::vector<int64_t> elem_base_;
  std::vector<int64_t> elem_parent_;
  std::vector<uint8_t> elem_blocked_;
  std::vector<uint8_t> full_block_;
  std::vector<Atom> group_parent_;
};

}  // namespace

Resolution resolve_groups(const CouplingsView& couplings) {
  validate_couplings(couplings);
  return Resolver(couplings).run();
}

}  // namespace depgraph
