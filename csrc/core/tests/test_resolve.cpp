// C++ tests of the core alone (no torch, no Python): the coupling kinds on small hand-built
// graphs, with the expected leaves, units, groups and blocked flags.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "resolve.hpp"

using depgraph::CouplingKind;
using depgraph::CouplingsView;
using depgraph::Resolution;

namespace {

int failures = 0;

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                               \
    }                                                                           \
  } while (0)

struct Graph {
  std::vector<int64_t> sizes;
  std::vector<int8_t> kinds;
  std::vector<int64_t> offsets{0};
  std::vector<int64_t> data;
  std::vector<int64_t> query;

  int64_t slot(int64_t size) {
    sizes.push_back(size);
    return static_cast<int64_t>(sizes.size()) - 1;
  }
  void emit(CouplingKind k, std::vector<int64_t> ops) {
    kinds.push_back(static_cast<int8_t>(k));
    data.insert(data.end(), ops.begin(), ops.end());
    offsets.push_back(static_cast<int64_t>(data.size()));
  }
  Resolution resolve() const {
    CouplingsView v{sizes.data(),   static_cast<int64_t>(sizes.size()),
                    kinds.data(),   static_cast<int64_t>(kinds.size()),
                    offsets.data(), static_cast<int64_t>(offsets.size()),
                    data.data(),    static_cast<int64_t>(data.size()),
                    query.data(),   static_cast<int64_t>(query.size())};
    return depgraph::resolve_groups(v);
  }
};

std::vector<int64_t> leaves(const Resolution& r, int64_t slot) {
  return {r.slot_leaves.begin() + r.slot_leaf_offsets[slot],
          r.slot_leaves.begin() + r.slot_leaf_offsets[slot + 1]};
}

std::vector<int64_t> units(const Resolution& r, int64_t leaf) {
  auto begin = r.elem_units.begin() + r.leaf_unit_offsets[leaf];
  return {begin, begin + r.leaf_sizes[leaf]};
}

// conv -> bn -> conv: three slots of 8 channels are one leaf, 8 units, one group.
void test_equal_chain() {
  Graph g;
  int64_t a = g.slot(8), b = g.slot(8), c = g.slot(8);
  g.emit(CouplingKind::kEqual, {a, b});
  g.emit(CouplingKind::kEqual, {b, c});
  g.query = {a, c};
  Resolution r = g.resolve();
  CHECK(leaves(r, a) == leaves(r, c));
  CHECK(r.unit_blocked.size() == 8);
  CHECK(units(r, leaves(r, a)[0]) == (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  for (auto gid : r.unit_groups) CHECK(gid == 0);
}

// A linear of 12 outputs viewed as 3 heads x 4: the 12-slot becomes [3, 4]; a head is a unit of
// the 3-leaf and its rows are a block of 4.
void test_reshape_splits_backwards() {
  Graph g;
  int64_t w = g.slot(12), heads = g.slot(3), dim = g.slot(4);
  g.emit(CouplingKind::kReshape, {1, w, 2, heads, dim});
  g.query = {w};
  Resolution r = g.resolve();
  auto lw = leaves(r, w);
  CHECK(lw.size() == 2);
  CHECK(r.leaf_sizes[lw[0]] == 3 && r.leaf_sizes[lw[1]] == 4);
  CHECK(leaves(r, heads) == std::vector<int64_t>{lw[0]});
  CHECK(r.unit_groups[units(r, lw[0])[0]] != r.unit_groups[units(r, lw[1])[0]]);
}

// Incompatible factorisations ([2,3] vs [3,2] of one space) block every element involved.
void test_incompatible_reshape_blocks() {
  Graph g;
  int64_t a = g.slot(2), b = g.slot(3), c = g.slot(3), d = g.slot(2), e = g.slot(6);
  g.emit(CouplingKind::kReshape, {2, a, b, 1, e});
  g.emit(CouplingKind::kReshape, {2, c, d, 1, e});
  g.query = {a, c};
  Resolution r = g.resolve();
  for (auto blocked : r.unit_blocked) CHECK(blocked == 1);
}

// cat of 4 and 2 channels: element-level, one group of 6 units; a blocked piece blocks only its
// own units.
void test_cat_pieces() {
  Graph g;
  int64_t x = g.slot(4), y = g.slot(2), out = g.slot(6);
  g.emit(CouplingKind::kCatPiece, {out, x, 0});
  g.emit(CouplingKind::kCatPiece, {out, y, 4});
  g.emit(CouplingKind::kBlock, {y});
  g.query = {x, y};
  Resolution r = g.resolve();
  auto ux = units(r, leaves(r, x)[0]), uy = units(r, leaves(r, y)[0]);
  CHECK(r.unit_blocked.size() == 6);
  for (auto u : ux) CHECK(r.unit_blocked[u] == 0);
  for (auto u : uy) CHECK(r.unit_blocked[u] == 1);
  CHECK(r.unit_groups[ux[0]] == r.unit_groups[uy[0]]);
}

// rotate-half: halves of 8 are slices at 0 and 4, concatenated back swapped. Index i and i + 4
// become one unit, and the resolution terminates.
void test_rotate_half_closes_the_cycle() {
  Graph g;
  int64_t q = g.slot(8), lo = g.slot(4), hi = g.slot(4), rot = g.slot(8);
  g.emit(CouplingKind::kSlice, {q, lo, 0, 1});
  g.emit(CouplingKind::kSlice, {q, hi, 4, 1});
  g.emit(CouplingKind::kCatPiece, {rot, hi, 0});
  g.emit(CouplingKind::kCatPiece, {rot, lo, 4});
  g.emit(CouplingKind::kEqual, {rot, q});
  g.query = {q};
  Resolution r = g.resolve();
  auto lq = leaves(r, q);
  CHECK(lq.size() == 2);
  CHECK(r.leaf_sizes[lq[0]] == 2 && r.leaf_sizes[lq[1]] == 4);
  for (auto u : units(r, lq[0])) CHECK(r.unit_blocked[u] == 1);  // which half: fixed
  for (auto u : units(r, lq[1])) CHECK(r.unit_blocked[u] == 0);  // the pair index: prunable
}

// A constant slice that is not aligned blocks both sides.
void test_unaligned_slice_blocks() {
  Graph g;
  int64_t x = g.slot(10), part = g.slot(3);
  g.emit(CouplingKind::kSlice, {x, part, 2, 1});
  g.query = {x};
  Resolution r = g.resolve();
  for (auto blocked : r.unit_blocked) CHECK(blocked == 1);
}

// The message of the invalid_argument resolving g throws ("" when it resolves).
std::string refusal(const Graph& g) {
  try {
    g.resolve();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

// Each operand is checked before it is used, and the message names the coupling.
void test_malformed_input_throws() {
  Graph g;
  int64_t whole = g.slot(8), piece = g.slot(4);
  g.emit(CouplingKind::kEqual, {0, 7});
  CHECK(refusal(g) == "coupling 0 (EQUAL): slot 7 out of range [0, 2)");

  Graph cat = Graph();
  whole = cat.slot(8), piece = cat.slot(4);
  cat.emit(CouplingKind::kCatPiece, {whole, piece, 5});  // would overrun the whole's elements
  CHECK(refusal(cat) ==
        "coupling 0 (CAT_PIECE): a piece of size 4 at offset 5 does not fit a whole of size 8");

  Graph slice;
  whole = slice.slot(8), piece = slice.slot(4);
  slice.emit(CouplingKind::kSlice, {whole, piece, 0, -2});
  CHECK(refusal(slice) == "coupling 0 (SLICE): step -2 must be >= 1");

  Graph reshape;
  int64_t a = reshape.slot(6), b = reshape.slot(4);
  reshape.emit(CouplingKind::kReshape, {1, a, 1, b});
  CHECK(refusal(reshape) == "coupling 0 (RESHAPE): sizes multiply to 6 and 4");

  Graph offsets;
  offsets.slot(4);
  offsets.emit(CouplingKind::kBlock, {0});
  offsets.offsets.back() = 3;  // past the end of data
  CHECK(refusal(offsets) == "couplings: the last offset (3) must equal the length of data (1)");

  Graph huge;
  int64_t big = huge.slot(int64_t{1} << 40);
  huge.query = {big};
  CHECK(refusal(huge).find("needs more than 268435456 index elements") != std::string::npos);
}

}  // namespace

int main() {
  test_equal_chain();
  test_reshape_splits_backwards();
  test_incompatible_reshape_blocks();
  test_cat_pieces();
  test_rotate_half_closes_the_cycle();
  test_unaligned_slice_blocks();
  test_malformed_input_throws();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("core tests passed\n");
  return 0;
}
