// Group resolution: which indices of which tensor dims must be pruned together.
//
// Torch-free C++. Input: slots (one per tensor dim, with its size) and couplings between them
// (see depgraph_ext/couplings.py for the five kinds). Output: every slot as a row-major product
// of leaf atoms, and for the leaves that can lose elements, each element's unit, each unit's
// group and whether it is blocked. The algorithm is the one in depgraph_ext/resolve_reference.py,
// step for step, so both produce identical arrays; it terminates on every input because atom
// refinement only splits or merges atoms, never undoes either.
#pragma once

#include <cstdint>
#include <vector>

#include "couplings.hpp"

namespace depgraph {

struct Resolution {
  std::vector<int64_t> leaf_sizes;
  std::vector<int64_t> slot_leaf_offsets;
  std::vector<int64_t> slot_leaves;
  std::vector<int64_t> leaf_unit_offsets;  // -1: the leaf can never lose an element
  std::vector<int64_t> elem_units;
  std::vector<uint8_t> unit_blocked;
  std::vector<int64_t> unit_groups;
};

// Validates its input first (validate_couplings): malformed input throws
// std::invalid_argument, never reads out of bounds.
Resolution resolve_groups(const CouplingsView& couplings);

}  // namespace depgraph
