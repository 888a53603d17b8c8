// Group resolution: which indices of which tensor dims must be pruned together.
//
// Torch-free C++17. Input: slots (one per tensor dim, with its size) and couplings between them
// (see depgraph_ext/couplings.py for the five kinds). Output: every slot as a row-major product
// of leaf atoms, and for the leaves that can lose elements, each element's unit, each unit's
// group and whether it is blocked. The algorithm is the one in depgraph_ext/resolve_reference.py,
// step for step, so both produce identical arrays; it terminates on every input because atom
// refinement only splits or merges atoms, never undoes either.
#pragma once

#include <cstdint>
#include <vector>

namespace depgraph {

enum class CouplingKind : int8_t { kEqual = 0, kReshape = 1, kCatPiece = 2, kSlice = 3, kBlock = 4 };

struct CouplingsView {
  const int64_t* slot_sizes;
  int64_t num_slots;
  const int8_t* kinds;
  int64_t num_couplings;
  const int64_t* offsets;  // num_couplings + 1 entries into data
  const int64_t* data;
  const int64_t* query_slots;
  int64_t num_query;
};

struct Resolution {
  std::vector<int64_t> leaf_sizes;
  std::vector<int64_t> slot_leaf_offsets;
  std::vector<int64_t> slot_leaves;
  std::vector<int64_t> leaf_unit_offsets;  // -1: the leaf can never lose an element
  std::vector<int64_t> elem_units;
  std::vector<uint8_t> unit_blocked;
  std::vector<int64_t> unit_groups;
};

// Throws std::invalid_argument on malformed input (operand out of range, bad offsets).
Resolution resolve_groups(const CouplingsView& couplings);

}  // namespace depgraph
