// index_sums and grouped_norm on CPU: per member, per-index sums of |w|^p (reduced with SIMD
// lanes in fp32, or fp64 for fp64, and accumulated in double); grouped_norm then maps them to
// units and reduces over members (arguments.h, as on every device). row_column_sums takes
// index_sums' sums along dims 0 and 1 in one pass on the calling thread, bit for bit;
// units_from_sums is grouped_norm's second pass on given sums.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

#include "../arguments.h"

// The summing loops are compiled for AVX-512 and AVX2 too, picked when the library loads
// (GCC's function multiversioning): the baseline x86-64 build has 4 fp32 lanes, and with 4
// a bf16 weight's column sums fall short of memory bandwidth.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DEPGRAPH_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DEPGRAPH_SIMD_CLONES
#endif

namespace depgraph_ext {
namespace {

// Widening load: bf16 is the top half of an fp32, so a shift converts it (c10::BFloat16's own
// conversion goes through memcpy and keeps the loops below from vectorising).
template <typename scalar_t>
inline at::opmath_type<scalar_t> widen(const scalar_t& x) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  } else {
    return static_cast<at::opmath_type<scalar_t>>(x);
  }
}

// A row's sum: in chunks of kRowChunk elements, each chunk summed in kLanes lanes of the
// accumulation type (element i of a chunk to lane i % kLanes), the lanes folded pairwise, the
// chunk sums added in double. Spelled out (not left to a SIMD reduction) so that
// rows_and_columns8 takes the same sums bit for bit (the library is built without
// floating-point contraction for that reason).
constexpr int64_t kRowChunk = 4096;
constexpr int kLanes = 16;

template <int P, typename acc_t>
inline acc_t power(acc_t v) {
  return P == 2 ? v * v : std::abs(v);
}

template <typename acc_t>
inline double folded(acc_t* lanes) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  return static_cast<double>(lanes[0]);
}

template <typename scalar_t, int P>
DEPGRAPH_SIMD_CLONES double row_sum(const scalar_t* x, int64_t len) {
  using acc_t = at::opmath_type<scalar_t>;
  double total = 0.0;
  for (int64_t start = 0; start < len; start += kRowChunk) {
    const scalar_t* chunk = x + start;
    const int64_t n = std::min(len - start, kRowChunk);
    acc_t lanes[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) lanes[l] += power<P>(widen(chunk[i + l]));
    }
    for (int l = 0; i + l < n; ++l) lanes[l] += power<P>(widen(chunk[i + l]));
    total += folded(lanes);
  }
  return total;
}

// Element e of eight rows (row k at data + k * width): |x|^p of each added to lane l of its
// row's sum, and the eight added to acc[e] as add_rows adds them.
template <typename scalar_t, int P>
inline void take8(at::opmath_type<scalar_t> (&lanes)[8][kLanes],
                  at::opmath_type<scalar_t>* __restrict acc, const scalar_t* __restrict data,
                  int64_t width, int64_t e, int l) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t s[8];
  for (int k = 0; k < 8; ++k) {
    s[k] = power<P>(widen(data[k * width + e]));
    lanes[k][l] += s[k];
  }
  acc[e] += ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Eight rows of `width` elements, each element read once: the rows' sums added to
// totals[0..7] as row_sum takes them, and acc[e] += the eight |x|^p of column e as add_rows
// adds them.
template <typename scalar_t, int P>
DEPGRAPH_SIMD_CLONES void rows_and_columns8(at::opmath_type<scalar_t>* __restrict acc,
                                            const scalar_t* __restrict data, int64_t width,
                                            double* totals) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t start = 0; start < width; start += kRowChunk) {
    const int64_t stop = start + std::min(width - start, kRowChunk);
    acc_t lanes[8][kLanes] = {};
    int64_t e = start;
    for (; e + kLanes <= stop; e += kLanes) {
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) take8<scalar_t, P>(lanes, acc, data, width, e + l, l);
    }
    for (int l = 0; e + l < stop; ++l) take8<scalar_t, P>(lanes, acc, data, width, e + l, l);
    for (int k = 0; k < 8; ++k) totals[k] += folded(lanes[k]);
  }
}

// acc[e] += |x[o, e]|^p for the rows o in [begin, end) of x viewed as [rows, width]: eight rows
// per pass over the accumulators.
template <typename scalar_t, int P>
DEPGRAPH_SIMD_CLONES void add_rows(at::opmath_type<scalar_t>* __restrict acc,
                                   const scalar_t* data, int64_t begin, int64_t end,
                                   int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t o = begin;
  for (; o + 8 <= end; o += 8) {
    const scalar_t* __restrict r0 = data + o * width;
    const scalar_t* __restrict r1 = r0 + width;
    const scalar_t* __restrict r2 = r1 + width;
    const scalar_t* __restrict r3 = r2 + width;
    const scalar_t* __restrict r4 = r3 + width;
    const scalar_t* __restrict r5 = r4 + width;
    const scalar_t* __restrict r6 = r5 + width;
    const scalar_t* __restrict r7 = r6 + width;
#pragma omp simd
    for (int64_t e = 0; e < width; ++e) {
      const acc_t v0 = widen(r0[e]), v1 = widen(r1[e]), v2 = widen(r2[e]), v3 = widen(r3[e]);
      const acc_t v4 = widen(r4[e]), v5 = widen(r5[e]), v6 = widen(r6[e]), v7 = widen(r7[e]);
      acc[e] += ((power<P>(v0) + power<P>(v1)) + (power<P>(v2) + power<P>(v3))) +
                ((power<P>(v4) + power<P>(v5)) + (power<P>(v6) + power<P>(v7)));
    }
  }
  for (; o < end; ++o) {
    const scalar_t* __restrict row = data + o * width;
#pragma omp simd
    for (int64_t e = 0; e < width; ++e) {
      acc[e] += power<P>(widen(row[e]));
    }
  }
}

// f over [0, n) in ranges: across the intra-op threads, or all of it on the calling thread
// (the sums below never depend on how the range is split).
template <typename F>
void over_range(bool parallel, int64_t n, int64_t grain, const F& f) {
  if (parallel) at::parallel_for(0, n, grain, f);
  else if (n > 0) f(0, n);
}

// Rows of the short-row path: blocks of kBlock rows summed in the accumulation type, the
// blocks in kChunks fixed chunks.
constexpr int64_t kBlock = 128;
constexpr int64_t kChunks = 16;

// Per-index sums of |x|^p along the middle dim of x viewed as [outer, n, inner].
template <typename scalar_t, int P>
std::vector<double> index_sums(const at::Tensor& x, const Around& a, bool parallel = true) {
  const scalar_t* data = x.const_data_ptr<scalar_t>();
  std::vector<double> sums(a.n, 0.0);
  if (a.inner >= 16) {  // long rows: each index owned by one thread
    // about 64K elements per task: a 4096 x 4096 weight is split between the threads too
    over_range(parallel, a.n, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, a.outer * a.inner)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t j = begin; j < end; ++j) {
                         double s = 0.0;
                         for (int64_t o = 0; o < a.outer; ++o)
                           s += row_sum<scalar_t, P>(data + (o * a.n + j) * a.inner, a.inner);
                         sums[j] = s;
                       }
                     });
    return sums;
  }
  // short rows: the outer dim in a fixed number of chunks (not one per thread: the sums must
  // not depend on how many threads run, or on whether this runs inside another parallel
  // region), one partial vector per chunk, added in chunk order; blocks of outer rows are
  // summed in the accumulation type (a vectorisable loop along the contiguous dim), then added
  // in double
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t width = a.n * a.inner;
  const int64_t blocks = (a.outer + kBlock - 1) / kBlock;
  const int64_t chunks = std::min(blocks, kChunks);
  std::vector<std::vector<double>> partial(chunks, std::vector<double>(a.n, 0.0));
  over_range(parallel, chunks, 1, [&](int64_t first_chunk, int64_t last_chunk) {
    for (int64_t c = first_chunk; c < last_chunk; ++c) {
      std::vector<double>& mine = partial[c];
      std::vector<acc_t> block(width);
      const int64_t begin = c * blocks / chunks, end = (c + 1) * blocks / chunks;
      for (int64_t b = begin; b < end; ++b) {
        std::fill(block.begin(), block.end(), acc_t(0));
        add_rows<scalar_t, P>(block.data(), data, b * kBlock, std::min(a.outer, (b + 1) * kBlock),
                              width);
        for (int64_t j = 0; j < a.n; ++j)
          for (int64_t i = 0; i < a.inner; ++i)
            mine[j] += static_cast<double>(block[j * a.inner + i]);
      }
    }
  });
  for (const auto& p : partial)
    for (int64_t j = 0; j < a.n; ++j) sums[j] += p[j];
  return sums;
}

// Members with fewer elements are summed one per thread, each on a single thread.
constexpr int64_t kSmallMember = 1 << 20;

// Per-index sums of |w|^p of every member (checked first): small members one per thread in a
// single parallel region (many small tensors would otherwise open one region each, and each
// region's barrier costs more than the work when other processes share the cores), large
// ones each split across the threads.
std::vector<std::vector<double>> member_index_sums(at::TensorList tensors, at::IntArrayRef dims,
                                                   int64_t p) {
  TORCH_CHECK(p == 1 || p == 2, "p must be 1 or 2, not ", p);
  const size_t n = tensors.size();
  std::vector<Around> arounds(n);
  std::vector<std::vector<double>> sums(n);
  std::vector<int64_t> small, large;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device().is_cpu(), "member ", i, " is on ", t.device(), ", not the CPU");
    check_member_dtype(t, i);
    arounds[i] = around(t, checked_dim(t, dims[i], i));
    (t.numel() < kSmallMember ? small : large).push_back(static_cast<int64_t>(i));
  }
  auto member_sums = [&](int64_t i) {
    const at::Tensor& t = tensors[i];
    if (t.numel() == 0) {
      sums[i].assign(arounds[i].n, 0.0);
      return;
    }
    const at::Tensor x = t.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "index_sums",
                                    [&] {
                                      sums[i] = p == 2 ? index_sums<scalar_t, 2>(x, arounds[i])
                                                       : index_sums<scalar_t, 1>(x, arounds[i]);
                                    });
  };
  // Inside the region, index_sums' own parallel_for runs inline on the calling thread.
  at::parallel_for(0, static_cast<int64_t>(small.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) member_sums(small[k]);
  });
  for (int64_t i : large) member_sums(i);
  return sums;
}

at::Tensor index_sums_cpu(at::TensorList tensors, at::IntArrayRef dims, int64_t p) {
  TORCH_CHECK(tensors.size() == dims.size(), "tensors and dims must have one entry per member "
              "(got ", tensors.size(), ", ", dims.size(), ")");
  const std::vector<std::vector<double>> sums = member_index_sums(tensors, dims, p);
  int64_t total = 0;
  for (const auto& s : sums) total += static_cast<int64_t>(s.size());
  at::Tensor out = at::empty({total}, at::TensorOptions().dtype(at::kDouble));
  double* dst = out.mutable_data_ptr<double>();
  for (const auto& s : sums) dst = std::copy(s.begin(), s.end(), dst);
  return out;
}

// index_sums along dims 0 and 1 of x (contiguous, 2+ dims) in one read, where x's rows (dim 0)
// have at least 16 elements and dim 1's runs fewer (a Linear's weight, a small kernel's
// conv): each group of eight rows is summed along its rows as index_sums sums dim 0, then
// added to the column accumulators (still in cache) with index_sums' blocks and chunks for
// dim 1, so both are bitwise index_sums'. On the calling thread only.
template <typename scalar_t, int P>
void row_column_pass(const at::Tensor& x, double* row_sums, double* column_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* data = x.const_data_ptr<scalar_t>();
  const Around a = around(x, 1);
  const int64_t rows = a.outer, width = a.n * a.inner;
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  const int64_t chunks = std::min(blocks, kChunks);
  std::vector<double> mine(a.n);
  std::vector<acc_t> block(width);
  std::fill(column_sums, column_sums + a.n, 0.0);
  for (int64_t c = 0; c < chunks; ++c) {
    std::fill(mine.begin(), mine.end(), 0.0);
    for (int64_t b = c * blocks / chunks; b < (c + 1) * blocks / chunks; ++b) {
      std::fill(block.begin(), block.end(), acc_t(0));
      const int64_t end = std::min(rows, (b + 1) * kBlock);
      int64_t o = b * kBlock;
      for (; o + 8 <= end; o += 8) {
        double totals[8] = {};
        rows_and_columns8<scalar_t, P>(block.data(), data + o * width, width, totals);
        for (int k = 0; k < 8; ++k) row_sums[o + k] = 0.0 + totals[k];
      }
      for (; o < end; ++o) {  // the block's last rows one at a time, as add_rows takes them
        row_sums[o] = 0.0 + row_sum<scalar_t, P>(data + o * width, width);
        add_rows<scalar_t, P>(block.data(), data, o, o + 1, width);
      }
      for (int64_t j = 0; j < a.n; ++j)
        for (int64_t i = 0; i < a.inner; ++i) mine[j] += static_cast<double>(block[j * a.inner + i]);
    }
    for (int64_t j = 0; j < a.n; ++j) column_sums[j] += mine[j];
  }
}

template <typename scalar_t, int P>
void row_column_sums_into(const at::Tensor& x, double* dst) {
  const int64_t n0 = x.size(0);
  if (around(x, 0).inner >= 16 && around(x, 1).inner < 16) {
    row_column_pass<scalar_t, P>(x, dst, dst + n0);
    return;
  }
  const std::vector<double> rows = index_sums<scalar_t, P>(x, around(x, 0), /*parallel=*/false);
  const std::vector<double> columns = index_sums<scalar_t, P>(x, around(x, 1), /*parallel=*/false);
  std::copy(columns.begin(), columns.end(), std::copy(rows.begin(), rows.end(), dst));
}

at::Tensor row_column_sums_cpu(const at::Tensor& t, int64_t p) {
  TORCH_CHECK(p == 1 || p == 2, "p must be 1 or 2, not ", p);
  TORCH_CHECK(t.device().is_cpu(), "the tensor is on ", t.device(), ", not the CPU");
  check_member_dtype(t, 0);
  TORCH_CHECK(t.dim() >= 2, "row_column_sums needs a tensor of 2 or more dims, not ", t.dim());
  at::Tensor out = at::zeros({t.size(0) + t.size(1)}, at::TensorOptions().dtype(at::kDouble));
  if (t.numel() == 0) return out;
  const at::Tensor x = t.contiguous();
  double* dst = out.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "row_column_sums",
                                  [&] {
                                    if (p == 2) row_column_sums_into<scalar_t, 2>(x, dst);
                                    else row_column_sums_into<scalar_t, 1>(x, dst);
                                  });
  return out;
}

at::Tensor units_from_sums_cpu(at::TensorList sums, at::TensorList unit_maps, int64_t num_units,
                               c10::string_view reduce_name) {
  TORCH_CHECK(sums.size() == unit_maps.size(), "sums and unit_maps must have one entry per "
              "member (got ", sums.size(), ", ", unit_maps.size(), ")");
  TORCH_CHECK(num_units >= 0, "num_units must be >= 0");
  const Reduce reduce = parse_reduce(std::string(reduce_name));
  const size_t n = sums.size();
  std::vector<at::Tensor> host_sums(n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(sums[i].device().is_cpu(), "member ", i, ": sums are on ", sums[i].device(),
                ", not the CPU");
    TORCH_CHECK(sums[i].scalar_type() == at::kDouble && sums[i].dim() == 1, "member ", i,
                ": sums must be a 1-d float64 tensor");
    check_index(unit_maps[i], i, "unit_maps");
    TORCH_CHECK(unit_maps[i].numel() == sums[i].numel(), "member ", i, ": unit_maps has ",
                unit_maps[i].numel(), " entries for ", sums[i].numel(), " sums");
    host_sums[i] = sums[i].contiguous();
  }
  const std::vector<at::Tensor> host_maps = on_host(unit_maps);
  std::vector<UnitMapView> maps(n);
  std::vector<const double*> sum_ptrs(n);
  for (size_t i = 0; i < n; ++i) {
    maps[i] = checked_unit_map(host_maps[i], num_units, i);
    sum_ptrs[i] = host_sums[i].const_data_ptr<double>();
  }
  return reduce_to_units(maps, sum_ptrs, num_units, reduce);
}

at::Tensor grouped_norm_cpu(at::TensorList tensors, at::IntArrayRef dims,
                            at::TensorList unit_maps, int64_t num_units, int64_t p,
                            c10::string_view reduce_name) {
  check_lists(tensors.size(), dims.size(), unit_maps.size(), "unit_maps");
  TORCH_CHECK(p == 1 || p == 2, "p must be 1 or 2, not ", p);
  TORCH_CHECK(num_units >= 0, "num_units must be >= 0");
  const Reduce reduce = parse_reduce(std::string(reduce_name));
  const size_t n = tensors.size();
  for (size_t i = 0; i < n; ++i) {  // every argument is checked before any weight is read
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device().is_cpu(), "member ", i, " is on ", t.device(), ", not the CPU");
    check_member_dtype(t, i);
    const int64_t d = checked_dim(t, dims[i], i);
    check_index(unit_maps[i], i, "unit_maps");
    TORCH_CHECK(unit_maps[i].numel() == t.size(d), "member ", i, ": unit_maps has ",
                unit_maps[i].numel(), " entries for a dim of size ", t.size(d));
  }
  const std::vector<at::Tensor> host_maps = on_host(unit_maps);
  std::vector<UnitMapView> maps(n);
  for (size_t i = 0; i < n; ++i) maps[i] = checked_unit_map(host_maps[i], num_units, i);
  const std::vector<std::vector<double>> sums = member_index_sums(tensors, dims, p);
  std::vector<const double*> sum_ptrs(n);
  for (size_t i = 0; i < n; ++i) sum_ptrs[i] = sums[i].data();
  return reduce_to_units(maps, sum_ptrs, num_units, reduce).to(result_type(tensors));
}

}  // namespace

TORCH_LIBRARY_IMPL(depgraph_ext, CPU, m) {
  m.impl("grouped_norm", &grouped_norm_cpu);
  m.impl("index_sums", &index_sums_cpu);
  m.impl("row_column_sums", &row_column_sums_cpu);
  m.impl("units_from_sums", &units_from_sums_cpu);
}

}  // namespace depgraph_ext
