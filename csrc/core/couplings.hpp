// Couplings between slots: the torch-free input of group resolution (see
// depgraph_ext/graph/couplings.py for what each kind means).
//
// A slot is one tensor dim (or a helper dim a rule creates) with a size. Coupling k's operands
// are data[offsets[k] : offsets[k + 1]]:
//   EQUAL     a b                       slots of equal size, index i of a is index i of b
//   RESHAPE   n_in ins... n_out outs... the row-major flattening of ins equals that of outs
//   CAT_PIECE whole piece offset        piece[i] is whole[offset + i]
//   SLICE     whole piece start step    piece[i] is whole[start + step * i], step >= 1
//   BLOCK     slot...                   no index of these slots may be pruned
#pragma once

#include <cstdint>

namespace depgraph {

enum class CouplingKind : int8_t { kEqual = 0, kReshape = 1, kCatPiece = 2, kSlice = 3, kBlock = 4 };

struct CouplingsView {
  const int64_t* slot_sizes;
  int64_t num_slots;
  const int8_t* kinds;
  int64_t num_couplings;
  const int64_t* offsets;  // num_offsets entries (num_couplings + 1 when well formed)
  int64_t num_offsets;
  const int64_t* data;
  int64_t num_data;
  const int64_t* query_slots;
  int64_t num_query;
};

// Throws std::invalid_argument naming the first malformed coupling, slot or query slot: array
// lengths and offsets, kinds, operand counts, slot ids, slot sizes, EQUAL sizes, RESHAPE
// products, CAT_PIECE offsets, SLICE start and step. The message is word for word the one the
// Python twin (depgraph_ext.graph.resolve_reference.validate_couplings) raises.
void validate_couplings(const CouplingsView& couplings);

}  // namespace depgraph
