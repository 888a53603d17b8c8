#include "couplings.hpp"

#include <stdexcept>
#include <string>

namespace depgraph {
namespace {

const char* kind_name(int8_t kind) {
  switch (static_cast<CouplingKind>(kind)) {
    case CouplingKind::kEqual: return "EQUAL";
    case CouplingKind::kReshape: return "RESHAPE";
    case CouplingKind::kCatPiece: return "CAT_PIECE";
    case CouplingKind::kSlice: return "SLICE";
    case CouplingKind::kBlock: return "BLOCK";
  }
  return nullptr;
}

std::string str(int64_t x) { return std::to_string(x); }

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

// The product of sizes (all >= 0); false when it does not fit in int64. A zero anywhere makes
// it zero, so an overflow before a zero is no overflow.
bool product(const int64_t* sizes, const int64_t* slots, int64_t n, int64_t& out) {
  out = 1;
  for (int64_t i = 0; i < n; ++i)
    if (sizes[slots[i]] == 0) {
      out = 0;
      return true;
    }
  for (int64_t i = 0; i < n; ++i)
    if (__builtin_mul_overflow(out, sizes[slots[i]], &out)) return false;
  return true;
}

}  // namespace

void validate_couplings(const CouplingsView& c) {
  if (c.num_offsets != c.num_couplings + 1)
    fail("couplings: offsets must have one entry more than kinds (got " + str(c.num_offsets) +
         " for " + str(c.num_couplings) + " kinds)");
  if (c.offsets[0] != 0) fail("couplings: offsets must start at 0");
  if (c.offsets[c.num_couplings] != c.num_data)
    fail("couplings: the last offset (" + str(c.offsets[c.num_couplings]) +
         ") must equal the length of data (" + str(c.num_data) + ")");
  for (int64_t k = 0; k < c.num_couplings; ++k)  // all before any operand is read
    if (c.offsets[k + 1] < c.offsets[k]) fail("coupling " + str(k) + ": offsets decrease");
  for (int64_t s = 0; s < c.num_slots; ++s)
    if (c.slot_sizes[s] < 0)
      fail("slot " + str(s) + ": size " + str(c.slot_sizes[s]) + " is negative");
  for (int64_t k = 0; k < c.num_couplings; ++k) {
    const char* name = kind_name(c.kinds[k]);
    if (name == nullptr) fail("coupling " + str(k) + ": unknown kind " + str(c.kinds[k]));
    const std::string where = "coupling " + str(k) + " (" + name + "): ";
    const int64_t* ops = c.data + c.offsets[k];
    const int64_t n = c.offsets[k + 1] - c.offsets[k];
    auto count = [&](int64_t expected) {
      if (n != expected)
        fail(where + "takes " + str(expected) + " operands, not " + str(n));
    };
    auto slot = [&](int64_t i) {
      if (ops[i] < 0 || ops[i] >= c.num_slots)
        fail(where + "slot " + str(ops[i]) + " out of range [0, " + str(c.num_slots) + ")");
      return c.slot_sizes[ops[i]];
    };
    switch (static_cast<CouplingKind>(c.kinds[k])) {
      case CouplingKind::kEqual: {
        count(2);
        const int64_t a = slot(0), b = slot(1);
        if (a != b)
          fail(where + "slots " + str(ops[0]) + " and " + str(ops[1]) + " have sizes " + str(a) +
               " and " + str(b));
        break;
      }
      case CouplingKind::kReshape: {
        if (n < 2 || ops[0] < 0 || ops[0] > n - 2 || ops[ops[0] + 1] != n - 2 - ops[0])
          fail(where + "operands must be n_in, n_in slots, n_out, n_out slots");
        const int64_t n_in = ops[0], n_out = ops[n_in + 1];
        for (int64_t i = 1; i <= n_in; ++i) slot(i);
        for (int64_t i = n_in + 2; i < n; ++i) slot(i);
        int64_t p_in = 0, p_out = 0;
        if (!product(c.slot_sizes, ops + 1, n_in, p_in) ||
            !product(c.slot_sizes, ops + n_in + 2, n_out, p_out))
          fail(where + "the product of sizes overflows int64");
        if (p_in != p_out)
          fail(where + "sizes multiply to " + str(p_in) + " and " + str(p_out));
        break;
      }
      case CouplingKind::kCatPiece: {
        count(3);
        const int64_t whole = slot(0), piece = slot(1), offset = ops[2];
        int64_t end = 0;
        if (offset < 0 || __builtin_add_overflow(offset, piece, &end) || end > whole)
          fail(where + "a piece of size " + str(piece) + " at offset " + str(offset) +
               " does not fit a whole of size " + str(whole));
        break;
      }
      case CouplingKind::kSlice: {
        count(4);
        const int64_t whole = slot(0), piece = slot(1), start = ops[2], step = ops[3];
        if (step < 1) fail(where + "step " + str(step) + " must be >= 1");
        int64_t last = start;  // the last index the piece reads, or start when it is empty
        const bool fits = start >= 0 &&
                          (piece == 0 ? start <= whole
                                      : !__builtin_mul_overflow(step, piece - 1, &last) &&
                                            !__builtin_add_overflow(last, start, &last) &&
                                            last < whole);
        if (!fits)
          fail(where + "a piece of size " + str(piece) + " from " + str(start) + " by step " +
               str(step) + " does not fit a whole of size " + str(whole));
        break;
      }
      case CouplingKind::kBlock: {
        if (n < 1) fail(where + "takes at least 1 operand, not " + str(n));
        for (int64_t i = 0; i < n; ++i) slot(i);
        break;
      }
    }
  }
  for (int64_t q = 0; q < c.num_query; ++q)
    if (c.query_slots[q] < 0 || c.query_slots[q] >= c.num_slots)
      fail("query " + str(q) + ": slot " + str(c.query_slots[q]) + " out of range [0, " +
           str(c.num_slots) + ")");
}

}  // namespace depgraph
