// gather_slices and compact_ on CPU: byte copies of kept rows, so any dtype is bit-exact.
// gather_slices copies rows in parallel into new tensors (gather_slices_into: into given
// ones; copy_with_fills_ copies whole tensors with some rows filled); compact_ moves rows toward the start
// of the tensor's own memory in increasing order (each destination lies at or before its
// source, so the order makes the overlapping moves safe), in parallel across tensors.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DEPGRAPH_X86_COMPRESS 1
#endif
#include <vector>

#include "../arguments.h"

namespace depgraph_ext {
namespace {

// Tensors with fewer elements are copied one per thread, each on a single thread.
constexpr int64_t kSmallTensor = 1 << 20;

// Rows of at least this many bytes are written with non-temporal stores: they bypass the
// cache, so the destination is not read first (a third less memory traffic) and the source
// rows still to come are not evicted.
constexpr int64_t kStreamRow = 4096;

inline void stream_copy(char* dst, const char* src, int64_t bytes) {
#if defined(__SSE2__)
  for (int64_t b = 0; b < bytes; b += 64) {
    const __m128i x0 = _mm_load_si128(reinterpret_cast<const __m128i*>(src + b));
    const __m128i x1 = _mm_load_si128(reinterpret_cast<const __m128i*>(src + b + 16));
    const __m128i x2 = _mm_load_si128(reinterpret_cast<const __m128i*>(src + b + 32));
    const __m128i x3 = _mm_load_si128(reinterpret_cast<const __m128i*>(src + b + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + b), x0);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + b + 16), x1);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + b + 32), x2);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + b + 48), x3);
  }
#else
  std::memcpy(dst, src, bytes);
#endif
}

inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // streamed stores are visible before the op returns
#endif
}

#if DEPGRAPH_X86_COMPRESS
// Scattered single words (an MLP neuron's column, one bf16 each) kept in increasing order:
// AVX-512 compresses 64 bytes of a row by a precomputed mask per chunk, instead of one word at
// a time. Each chunk is loaded before its kept words are stored at or before it (masked
// stores, so nothing past them is written), which keeps compact_'s in-place moves safe.
bool cpu_has_compress() {
  static const bool has = __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vbmi2");
  return has;
}

// Bit i of masks[c] keeps word c * lanes + i of a row of n words.
template <typename word_t>
std::vector<uint64_t> chunk_masks(const std::vector<int64_t>& idx, int64_t n) {
  constexpr int64_t lanes = 64 / sizeof(word_t);
  std::vector<uint64_t> masks((n + lanes - 1) / lanes, 0);
  for (int64_t j : idx) masks[j / lanes] |= uint64_t{1} << (j % lanes);
  return masks;
}

__attribute__((target("avx512f,avx512bw,avx512vbmi2"))) void compress_rows16(
    uint16_t* dst, const uint16_t* src, int64_t rows, int64_t n, int64_t k,
    const std::vector<uint64_t>& masks) {
  const int64_t chunks = static_cast<int64_t>(masks.size());
  for (int64_t o = 0; o < rows; ++o) {
    const uint16_t* s = src + o * n;
    uint16_t* d = dst + o * k;
    int64_t out = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const __mmask32 keep = static_cast<__mmask32>(masks[c]);
      if (!keep) continue;
      const int64_t left = n - c * 32;
      const __mmask32 valid = left >= 32 ? ~__mmask32{0} : (__mmask32{1} << left) - 1;
      const __m512i v = _mm512_maskz_loadu_epi16(valid, s + c * 32);
      const int pop = __builtin_popcount(keep);
      const __mmask32 first = pop == 32 ? ~__mmask32{0} : (__mmask32{1} << pop) - 1;
      _mm512_mask_storeu_epi16(d + out, first, _mm512_maskz_compress_epi16(keep, v));
      out += pop;
    }
  }
}

__attribute__((target("avx512f,avx512bw"))) void compress_rows32(
    uint32_t* dst, const uint32_t* src, int64_t rows, int64_t n, int64_t k,
    const std::vector<uint64_t>& masks) {
  const int64_t chunks = static_cast<int64_t>(masks.size());
  for (int64_t o = 0; o < rows; ++o) {
    const uint32_t* s = src + o * n;
    uint32_t* d = dst + o * k;
    int64_t out = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const __mmask16 keep = static_cast<__mmask16>(masks[c]);
      if (!keep) continue;
      const int64_t left = n - c * 16;
      const __mmask16 valid = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                         : static_cast<__mmask16>((1u << left) - 1);
      const __m512i v = _mm512_maskz_loadu_epi32(valid, s + c * 16);
      const int pop = __builtin_popcount(keep);
      const __mmask16 first = static_cast<__mmask16>(pop == 16 ? 0xFFFF : (1u << pop) - 1);
      _mm512_mask_storeu_epi32(d + out, first, _mm512_maskz_compress_epi32(keep, v));
      out += pop;
    }
  }
}

// dst rows [begin, end) of k words from src rows of n words; false: no vector path here.
template <typename word_t>
bool compress_rows(word_t* dst, const word_t* src, int64_t begin, int64_t end, int64_t n,
                   int64_t k, const std::vector<uint64_t>& masks) {
  if constexpr (sizeof(word_t) == 2) {
    compress_rows16(reinterpret_cast<uint16_t*>(dst) + begin * k,
                    reinterpret_cast<const uint16_t*>(src) + begin * n, end - begin, n, k, masks);
    return true;
  } else if constexpr (sizeof(word_t) == 4) {
    compress_rows32(reinterpret_cast<uint32_t*>(dst) + begin * k,
                    reinterpret_cast<const uint32_t*>(src) + begin * n, end - begin, n, k, masks);
    return true;
  }
  return false;
}
#endif

// Copy row by row: element (o, j, :) of dst is element (o, idx[j], :) of src.
// parallel: rows go to threads and never overlap (gather_slices); otherwise rows are moved in
// increasing order with memmove, since compact_'s destinations overlap later sources.
template <typename word_t>
void copy_rows(char* dst, const char* src, const Around& a, const std::vector<int64_t>& idx,
               bool parallel) {
  const int64_t k = static_cast<int64_t>(idx.size());
  const int64_t row = a.inner * static_cast<int64_t>(sizeof(word_t));
  if (a.inner == 1) {  // single words: a typed loop per outer row
    // Kept indices in runs of consecutive ones (a head's columns, say) move as blocks.
    std::vector<int64_t> run_start{0};
    for (int64_t j = 1; j < k; ++j)
      if (idx[j] != idx[j - 1] + 1) run_start.push_back(j);
    const int64_t runs = static_cast<int64_t>(run_start.size());
    if (k > 0 && k >= 8 * runs) {
      run_start.push_back(k);
      auto by_runs = [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) {
          word_t* d = reinterpret_cast<word_t*>(dst) + o * k;
          const word_t* s = reinterpret_cast<const word_t*>(src) + o * a.n;
          for (int64_t r = 0; r < runs; ++r) {  // increasing order: safe for compact_
            const int64_t j = run_start[r], len = run_start[r + 1] - j;
            std::memmove(d + j, s + idx[j], len * sizeof(word_t));
          }
        }
      };
      if (parallel) at::parallel_for(0, a.outer, std::max<int64_t>(1, 16384 / k), by_runs);
      else by_runs(0, a.outer);
      return;
    }
#if DEPGRAPH_X86_COMPRESS
    bool increasing = (sizeof(word_t) == 2 || sizeof(word_t) == 4) && cpu_has_compress();
    for (int64_t j = 1; increasing && j < k; ++j) increasing = idx[j] > idx[j - 1];
    if (increasing && k > 0) {
      const std::vector<uint64_t> masks = chunk_masks<word_t>(idx, a.n);
      auto by_masks = [&](int64_t begin, int64_t end) {
        compress_rows(reinterpret_cast<word_t*>(dst), reinterpret_cast<const word_t*>(src),
                      begin, end, a.n, k, masks);
      };
      if (parallel) at::parallel_for(0, a.outer, std::max<int64_t>(1, 16384 / k), by_masks);
      else by_masks(0, a.outer);
      return;
    }
#endif
    auto body = [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        word_t* d = reinterpret_cast<word_t*>(dst) + o * k;
        const word_t* s = reinterpret_cast<const word_t*>(src) + o * a.n;
        for (int64_t j = 0; j < k; ++j) d[j] = s[idx[j]];
      }
    };
    if (parallel) at::parallel_for(0, a.outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)), body);
    else body(0, a.outer);
    return;
  }
  const bool stream = row >= kStreamRow && row % 64 == 0 &&
                      reinterpret_cast<uintptr_t>(dst) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(src) % 16 == 0;
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r / k, j = r % k;
      char* d = dst + r * row;
      const char* s = src + (o * a.n + idx[j]) * row;
      if (d == s) continue;  // compact_: a row already in place
      // Whole rows never overlap (compact_ moves row idx[j] >= j to row j), so both ops copy.
      if (stream) stream_copy(d, s, row);
      else std::memcpy(d, s, row);
    }
    if (stream) store_fence();  // each thread orders its own streamed stores
  };
  if (parallel) at::parallel_for(0, a.outer * k, std::max<int64_t>(1, (1 << 20) / row), body);
  else body(0, a.outer * k);
}

void copy_kept(char* dst, const char* src, const Around& a, const std::vector<int64_t>& idx,
               int64_t element_size, bool parallel) {
  switch (element_size) {
    case 1: copy_rows<uint8_t>(dst, src, a, idx, parallel); break;
    case 2: copy_rows<uint16_t>(dst, src, a, idx, parallel); break;
    case 4: copy_rows<uint32_t>(dst, src, a, idx, parallel); break;
    case 8: copy_rows<uint64_t>(dst, src, a, idx, parallel); break;
    default: {
      Around bytes = a;
      bytes.inner *= element_size;
      copy_rows<uint8_t>(dst, src, bytes, idx, parallel);
    }
  }
}

// The kept slices of each member copied into outs[i] (contiguous, of the gathered shape), the
// members checked first. Small tensors one per thread in one parallel region (inside it
// copy_rows' parallel_for runs inline); large ones each split across the threads.
void gather_into(at::TensorList tensors, at::IntArrayRef dims,
                 const std::vector<std::vector<int64_t>>& indices,
                 const std::vector<at::Tensor>& outs) {
  const size_t n = tensors.size();
  std::vector<at::Tensor> sources(n);
  std::vector<Around> arounds(n);
  std::vector<int64_t> small, large;
  for (size_t i = 0; i < n; ++i) {
    if (outs[i].numel() == 0) continue;
    const at::Tensor& t = tensors[i];
    sources[i] = t.contiguous();
    arounds[i] = around(sources[i], checked_dim(t, dims[i], i));
    (t.numel() < kSmallTensor ? small : large).push_back(static_cast<int64_t>(i));
  }
  auto copy = [&](int64_t i) {
    copy_kept(static_cast<char*>(outs[i].data_ptr()),
              static_cast<const char*>(sources[i].const_data_ptr()), arounds[i], indices[i],
              sources[i].element_size(), true);
  };
  at::parallel_for(0, static_cast<int64_t>(small.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) copy(small[k]);
  });
  for (int64_t i : large) copy(i);
}

// Each member's kept indices, in range (strictly increasing with `increasing`), the members
// on the CPU (and contiguous where `contiguous_for` names the op that needs it).
std::vector<std::vector<int64_t>> checked_kept(at::TensorList tensors, at::IntArrayRef dims,
                                               at::TensorList kept, bool increasing,
                                               const char* contiguous_for = nullptr) {
  check_lists(tensors.size(), dims.size(), kept.size(), "kept");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device().is_cpu(), "member ", i, " is on ", t.device(), ", not the CPU");
    TORCH_CHECK(contiguous_for == nullptr || t.is_contiguous(), "member ", i, ": ",
                contiguous_for, " needs a contiguous tensor");
    check_index(kept[i], i, "kept");
  }
  const std::vector<at::Tensor> host_kept = on_host(kept);
  std::vector<std::vector<int64_t>> indices(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    indices[i] = kept_indices(host_kept[i], t.size(checked_dim(t, dims[i], i)), i, increasing);
  }
  return indices;
}

std::vector<int64_t> gathered_shape(const at::Tensor& t, int64_t dim, int64_t k) {
  std::vector<int64_t> shape = t.sizes().vec();
  shape[dim] = k;
  return shape;
}

std::vector<at::Tensor> gather_slices_cpu(at::TensorList tensors, at::IntArrayRef dims,
                                          at::TensorList kept) {
  const auto indices = checked_kept(tensors, dims, kept, false);
  std::vector<at::Tensor> out(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const int64_t d = checked_dim(t, dims[i], i);
    out[i] = at::empty(gathered_shape(t, d, static_cast<int64_t>(indices[i].size())),
                       t.options().memory_format(at::MemoryFormat::Contiguous));
  }
  gather_into(tensors, dims, indices, out);
  return out;
}

// The memory of a and b overlaps.
bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  const char* a0 = static_cast<const char*>(a.const_data_ptr());
  const char* b0 = static_cast<const char*>(b.const_data_ptr());
  const char* a1 = a0 + a.numel() * a.element_size();
  const char* b1 = b0 + b.numel() * b.element_size();
  return a0 < b1 && b0 < a1;
}

// An out tensor for member i: on the CPU, contiguous, of the member's dtype and of `shape`,
// its memory apart from the member's.
void check_out(const at::Tensor& out, const at::Tensor& t, const std::vector<int64_t>& shape,
               size_t i) {
  TORCH_CHECK(out.device().is_cpu(), "member ", i, ": its out tensor is on ", out.device(),
              ", not the CPU");
  TORCH_CHECK(out.is_contiguous(), "member ", i, ": its out tensor is not contiguous");
  TORCH_CHECK(out.scalar_type() == t.scalar_type(), "member ", i, ": its out tensor is ",
              out.scalar_type(), ", the member ", t.scalar_type());
  TORCH_CHECK(out.sizes().vec() == shape, "member ", i, ": its out tensor has shape ",
              out.sizes(), ", the result ", at::IntArrayRef(shape));
  TORCH_CHECK(!overlaps(out, t), "member ", i, ": its out tensor shares memory with it");
}

// No out tensor shares memory with another out tensor or with any member (the members are
// read while the outs are written).
void check_outs_apart(at::TensorList outs, at::TensorList tensors) {
  for (size_t i = 0; i < outs.size(); ++i) {
    for (size_t j = 0; j < tensors.size(); ++j)
      TORCH_CHECK(!overlaps(outs[i], tensors[j]), "member ", i,
                  ": its out tensor shares memory with member ", j);
    for (size_t j = 0; j < i; ++j)
      TORCH_CHECK(!overlaps(outs[i], outs[j]), "member ", i,
                  ": its out tensor shares memory with the out tensor of member ", j);
  }
}

void gather_slices_into_cpu(at::TensorList tensors, at::IntArrayRef dims, at::TensorList kept,
                            at::TensorList outs) {
  const auto indices = checked_kept(tensors, dims, kept, false);
  TORCH_CHECK(outs.size() == tensors.size(), "outs must have one tensor per member (got ",
              tensors.size(), " tensors and ", outs.size(), " outs)");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const int64_t d = checked_dim(t, dims[i], i);
    check_out(outs[i], t, gathered_shape(t, d, static_cast<int64_t>(indices[i].size())), i);
  }
  check_outs_apart(outs, tensors);
  gather_into(tensors, dims, indices, outs.vec());
}

void compact_cpu(at::TensorList tensors, at::IntArrayRef dims, at::TensorList kept) {
  const auto indices = checked_kept(tensors, dims, kept, true, "compact_");
  at::parallel_for(0, static_cast<int64_t>(tensors.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const at::Tensor& t = tensors[i];
      if (t.numel() == 0) continue;
      char* base = static_cast<char*>(t.data_ptr());
      copy_kept(base, base, around(t, checked_dim(t, dims[i], i)), indices[i],
                t.element_size(), false);
    }
  });
}

// body(o) for every outer row of a member whose dim holds single words (k of them touched
// per row), the rows split across threads.
template <typename F>
void for_each_outer(const Around& a, int64_t k, const F& body) {
  at::parallel_for(0, a.outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t o = begin; o < end; ++o) body(o);
                   });
}

// Element (o, idx[j], :) of dst is element (o, j, :) of src: gather's copy, the other way.
// Rows go to threads and never overlap (the indices are strictly increasing).
template <typename word_t>
void scatter_rows(char* dst, const char* src, const Around& a, const std::vector<int64_t>& idx) {
  const int64_t k = static_cast<int64_t>(idx.size());
  if (a.inner == 1) {
    for_each_outer(a, k, [&](int64_t o) {
      word_t* d = reinterpret_cast<word_t*>(dst) + o * a.n;
      const word_t* s = reinterpret_cast<const word_t*>(src) + o * k;
      for (int64_t j = 0; j < k; ++j) d[idx[j]] = s[j];
    });
    return;
  }
  const int64_t row = a.inner * static_cast<int64_t>(sizeof(word_t));
  at::parallel_for(0, a.outer * k, std::max<int64_t>(1, (1 << 20) / row),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r) {
                       const int64_t o = r / k, j = r % k;
                       std::memcpy(dst + (o * a.n + idx[j]) * row, src + r * row, row);
                     }
                   });
}

// Every element of rows (o, idx[j], :) of dst set to `value` (one element's bytes).
template <typename word_t>
void fill_rows(char* dst, const Around& a, const std::vector<int64_t>& idx, word_t value) {
  const int64_t k = static_cast<int64_t>(idx.size());
  if (a.inner == 1) {
    for_each_outer(a, k, [&](int64_t o) {
      word_t* d = reinterpret_cast<word_t*>(dst) + o * a.n;
      for (int64_t j = 0; j < k; ++j) d[idx[j]] = value;
    });
    return;
  }
  at::parallel_for(0, a.outer * k, std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(a.inner, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r) {
                       const int64_t o = r / k, j = r % k;
                       word_t* d = reinterpret_cast<word_t*>(dst) + (o * a.n + idx[j]) * a.inner;
                       std::fill(d, d + a.inner, value);
                     }
                   });
}

// The members' indices, checked as gather's kept indices are (strictly increasing, in range),
// after the members themselves: on the CPU, contiguous.
std::vector<std::vector<int64_t>> checked_slices(at::TensorList tensors, at::IntArrayRef dims,
                                                 at::TensorList indices, size_t values,
                                                 const char* what, const char* op) {
  check_lists(tensors.size(), dims.size(), indices.size(), "indices");
  TORCH_CHECK(values == tensors.size(), what, " must have one entry per member (got ",
              tensors.size(), " tensors and ", values, " ", what, ")");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device().is_cpu(), "member ", i, " is on ", t.device(), ", not the CPU");
    TORCH_CHECK(t.is_contiguous(), "member ", i, ": ", op, " needs a contiguous tensor");
    checked_dim(t, dims[i], i);
    check_index(indices[i], i, "indices");
  }
  const std::vector<at::Tensor> host = on_host(indices);
  std::vector<std::vector<int64_t>> out(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    out[i] = kept_indices(host[i], t.size(checked_dim(t, dims[i], i)), i, true);
  }
  return out;
}

void scatter_slices_cpu(at::TensorList tensors, at::IntArrayRef dims, at::TensorList indices,
                        at::TensorList sources) {
  const auto idx = checked_slices(tensors, dims, indices, sources.size(), "sources",
                                  "scatter_slices_");
  std::vector<at::Tensor> contiguous(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const at::Tensor& s = sources[i];
    const int64_t d = checked_dim(t, dims[i], i);
    TORCH_CHECK(s.device().is_cpu(), "member ", i, ": its source is on ", s.device(),
                ", not the CPU");
    TORCH_CHECK(s.scalar_type() == t.scalar_type(), "member ", i, ": its source is ",
                s.scalar_type(), ", the tensor ", t.scalar_type());
    std::vector<int64_t> shape = t.sizes().vec();
    shape[d] = static_cast<int64_t>(idx[i].size());
    TORCH_CHECK(s.sizes().vec() == shape, "member ", i, ": its source has shape ", s.sizes(),
                ", the slices ", at::IntArrayRef(shape));
    contiguous[i] = s.contiguous();
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (t.numel() == 0 || idx[i].empty()) continue;
    char* dst = static_cast<char*>(t.data_ptr());
    const char* src = static_cast<const char*>(contiguous[i].const_data_ptr());
    const Around a = around(t, checked_dim(t, dims[i], i));
    switch (t.element_size()) {
      case 1: scatter_rows<uint8_t>(dst, src, a, idx[i]); break;
      case 2: scatter_rows<uint16_t>(dst, src, a, idx[i]); break;
      case 4: scatter_rows<uint32_t>(dst, src, a, idx[i]); break;
      case 8: scatter_rows<uint64_t>(dst, src, a, idx[i]); break;
      default: {
        Around bytes = a;
        bytes.inner *= t.element_size();
        scatter_rows<uint8_t>(dst, src, bytes, idx[i]);
      }
    }
  }
}

// compact_ undone in one tensor's memory: slice (o, j) of the prefix [outer, k, inner] goes to
// (o, idx[j]) of [outer, n, inner]. Each destination lies at or after its source, so the
// slices move from the last to the first (memmove: a slice may overlap its own destination).
template <typename word_t>
void expand_words(word_t* base, const Around& a, const std::vector<int64_t>& idx) {
  const int64_t k = static_cast<int64_t>(idx.size());
  for (int64_t o = a.outer - 1; o >= 0; --o) {
    word_t* d = base + o * a.n;
    const word_t* s = base + o * k;
    for (int64_t j = k - 1; j >= 0; --j) d[idx[j]] = s[j];
  }
}

void expand_rows(char* base, const Around& a, const std::vector<int64_t>& idx,
                 int64_t element_size) {
  if (a.inner == 1) {  // single words: typed copies (one element never overlaps another)
    switch (element_size) {
      case 1: return expand_words(reinterpret_cast<uint8_t*>(base), a, idx);
      case 2: return expand_words(reinterpret_cast<uint16_t*>(base), a, idx);
      case 4: return expand_words(reinterpret_cast<uint32_t*>(base), a, idx);
      case 8: return expand_words(reinterpret_cast<uint64_t*>(base), a, idx);
      default: break;
    }
  }
  const int64_t k = static_cast<int64_t>(idx.size());
  const int64_t row = a.inner * element_size;
  for (int64_t o = a.outer - 1; o >= 0; --o)
    for (int64_t j = k - 1; j >= 0; --j) {
      char* d = base + (o * a.n + idx[j]) * row;
      const char* s = base + (o * k + j) * row;
      if (d != s) std::memmove(d, s, row);
    }
}

void expand_cpu(at::TensorList tensors, at::IntArrayRef dims, at::TensorList kept) {
  const auto idx = checked_slices(tensors, dims, kept, kept.size(), "kept", "expand_");
  at::parallel_for(0, static_cast<int64_t>(tensors.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const at::Tensor& t = tensors[i];
      if (t.numel() == 0) continue;
      expand_rows(static_cast<char*>(t.data_ptr()), around(t, checked_dim(t, dims[i], i)),
                  idx[i], t.element_size());
    }
  });
}

template <typename word_t>
word_t element_bytes(const at::Tensor& one) {
  word_t w;
  std::memcpy(&w, one.const_data_ptr(), sizeof(word_t));
  return w;
}

void fill_slices_cpu(at::TensorList tensors, at::IntArrayRef dims, at::TensorList indices,
                     at::ArrayRef<double> values) {
  const auto idx = checked_slices(tensors, dims, indices, values.size(), "values",
                                  "fill_slices_");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (t.numel() == 0 || idx[i].empty()) continue;
    // The value as one element of the tensor's dtype, converted as index_fill_ converts it.
    const at::Tensor one = at::scalar_tensor(values[i], t.options());
    char* dst = static_cast<char*>(t.data_ptr());
    const Around a = around(t, checked_dim(t, dims[i], i));
    switch (t.element_size()) {
      case 1: fill_rows<uint8_t>(dst, a, idx[i], element_bytes<uint8_t>(one)); break;
      case 2: fill_rows<uint16_t>(dst, a, idx[i], element_bytes<uint16_t>(one)); break;
      case 4: fill_rows<uint32_t>(dst, a, idx[i], element_bytes<uint32_t>(one)); break;
      case 8: fill_rows<uint64_t>(dst, a, idx[i], element_bytes<uint64_t>(one)); break;
      default: TORCH_CHECK(false, "member ", i, ": fill_slices_ does not fill ",
                           t.scalar_type(), " tensors");
    }
  }
}

// dst = src with every element of rows (o, idx[j], :) set to `value`, in one pass: a row
// removed is written, never read. Long rows are streamed (see kStreamRow): dst is fresh
// scratch memory, and reading it before writing it would add half again to the traffic.
template <typename word_t>
void copy_filled_rows(char* dst, const char* src, const Around& a,
                      const std::vector<int64_t>& idx, word_t value) {
  const int64_t w = static_cast<int64_t>(sizeof(word_t));
  auto streams = [&](int64_t bytes) {
    return bytes >= kStreamRow && bytes % 64 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0 &&
           reinterpret_cast<uintptr_t>(src) % 16 == 0;
  };
  if (a.inner == 1) {  // single words: each row put together in a buffer, then written out
    const int64_t k = static_cast<int64_t>(idx.size());
    const bool stream = streams(a.n * w);
    at::parallel_for(0, a.outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(a.n, 1)),
                     [&](int64_t begin, int64_t end) {
                       std::vector<word_t> row(stream ? a.n : 0);
                       for (int64_t o = begin; o < end; ++o) {
                         const word_t* s = reinterpret_cast<const word_t*>(src) + o * a.n;
                         word_t* d = reinterpret_cast<word_t*>(dst) + o * a.n;
                         word_t* build = stream ? row.data() : d;
                         std::memcpy(build, s, a.n * w);
                         for (int64_t j = 0; j < k; ++j) build[idx[j]] = value;
                         if (stream) stream_copy(reinterpret_cast<char*>(d),
                                                 reinterpret_cast<const char*>(build), a.n * w);
                       }
                       if (stream) store_fence();
                     });
    return;
  }
  std::vector<char> removed(a.n, 0);
  for (int64_t j : idx) removed[j] = 1;
  const int64_t row = a.inner * w;
  const bool stream = streams(row);
  std::vector<word_t> filled(stream ? a.inner : 0, value);  // the row a removed one becomes
  at::parallel_for(0, a.outer * a.n, std::max<int64_t>(1, (1 << 20) / row),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r) {
                       char* d = dst + r * row;
                       if (stream) {
                         stream_copy(d, removed[r % a.n]
                                            ? reinterpret_cast<const char*>(filled.data())
                                            : src + r * row,
                                     row);
                       } else if (removed[r % a.n]) {
                         std::fill(reinterpret_cast<word_t*>(d),
                                   reinterpret_cast<word_t*>(d) + a.inner, value);
                       } else {
                         std::memcpy(d, src + r * row, row);
                       }
                     }
                     if (stream) store_fence();
                   });
}

void copy_with_fills_cpu(at::TensorList outs, at::TensorList tensors, at::IntArrayRef dims,
                         at::TensorList indices, at::ArrayRef<double> values) {
  const auto idx = checked_slices(tensors, dims, indices, values.size(), "values",
                                  "copy_with_fills_");
  TORCH_CHECK(outs.size() == tensors.size(), "outs must have one tensor per member (got ",
              tensors.size(), " tensors and ", outs.size(), " outs)");
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_out(outs[i], tensors[i], tensors[i].sizes().vec(), i);
    TORCH_CHECK(tensors[i].element_size() <= 8 &&
                    (tensors[i].element_size() & (tensors[i].element_size() - 1)) == 0,
                "member ", i, ": copy_with_fills_ does not fill ", tensors[i].scalar_type(),
                " tensors");
  }
  check_outs_apart(outs, tensors);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (t.numel() == 0) continue;
    const at::Tensor one = at::scalar_tensor(values[i], t.options());
    char* dst = static_cast<char*>(outs[i].data_ptr());
    const char* src = static_cast<const char*>(t.const_data_ptr());
    const Around a = around(t, checked_dim(t, dims[i], i));
    switch (t.element_size()) {
      case 1: copy_filled_rows<uint8_t>(dst, src, a, idx[i], element_bytes<uint8_t>(one)); break;
      case 2: copy_filled_rows<uint16_t>(dst, src, a, idx[i], element_bytes<uint16_t>(one)); break;
      case 4: copy_filled_rows<uint32_t>(dst, src, a, idx[i], element_bytes<uint32_t>(one)); break;
      default: copy_filled_rows<uint64_t>(dst, src, a, idx[i], element_bytes<uint64_t>(one));
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(depgraph_ext, CPU, m) {
  m.impl("gather_slices", &gather_slices_cpu);
  m.impl("compact_", &compact_cpu);
  m.impl("scatter_slices_", &scatter_slices_cpu);
  m.impl("fill_slices_", &fill_slices_cpu);
  m.impl("expand_", &expand_cpu);
  m.impl("gather_slices_into", &gather_slices_into_cpu);
  m.impl("copy_with_fills_", &copy_with_fills_cpu);
}

}  // namespace depgraph_ext
