// index_sums and grouped_norm on CUDA. The weight pass (the only one that reads the model) is fused: one launch
// per (dtype, row length class) covers every member, writing per-index sums of |w|^p (fp32 in a
// thread, fp64 across threads). Those sums are small (one per index of each member's dim): they
// come back to the host in one copy and are mapped to units and reduced over members by the
// same code as on the CPU (arguments.h), so both devices check and reduce alike. Unit maps are
// checked on the host (one batched copy when they live on the device). Launched on the current
// stream under a device guard.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../arguments.h"
#include "launch.cuh"

namespace depgraph_ext {
namespace {

struct Member {
  const void* data;
  int64_t outer, n, inner;
  int64_t item_begin;  // first work item of this member
  int64_t sum_offset;  // first per-index sum of this member
};

constexpr int64_t kOuterChunk = 64;

__device__ int find_member(const Member* members, int count, int64_t item) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (members[mid].item_begin <= item) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : acc_t(0);
  if (warp == 0)
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
  __syncthreads();
  return v;
}

// Long rows: a block reduces one row (o, j) of `inner` contiguous elements.
template <typename scalar_t, int P>
__global__ void long_rows(const Member* members, int count, int64_t items, double* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Member& m = members[find_member(members, count, item)];
    const int64_t r = item - m.item_begin;
    const scalar_t* x = static_cast<const scalar_t*>(m.data) + r * m.inner;
    acc_t s = 0;
    for (int64_t i = threadIdx.x; i < m.inner; i += blockDim.x) {
      acc_t v = static_cast<acc_t>(x[i]);
      s += P == 2 ? v * v : (v < 0 ? -v : v);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(&sums[m.sum_offset + r % m.n], static_cast<double>(s));
  }
}

// Short rows: a thread sums index j over a chunk of the outer dim (adjacent threads read
// adjacent indices, so reads coalesce when inner is 1).
template <typename scalar_t, int P>
__global__ void short_rows(const Member* members, int count, int64_t items, double* sums) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; item < items;
       item += int64_t(gridDim.x) * blockDim.x) {
    const Member& m = members[find_member(members, count, item)];
    const int64_t r = item - m.item_begin;
    const int64_t j = r % m.n, chunk = r / m.n;
    const int64_t o_end = min(m.outer, (chunk + 1) * kOuterChunk);
    const scalar_t* x = static_cast<const scalar_t*>(m.data);
    acc_t s = 0;
    for (int64_t o = chunk * kOuterChunk; o < o_end; ++o)
      for (int64_t i = 0; i < m.inner; ++i) {
        acc_t v = static_cast<acc_t>(x[(o * m.n + j) * m.inner + i]);
        s += P == 2 ? v * v : (v < 0 ? -v : v);
      }
    atomicAdd(&sums[m.sum_offset + j], static_cast<double>(s));
  }
}

template <typename scalar_t>
void launch(const std::vector<Member>& members, bool long_kind, int64_t items, int64_t p,
            double* sums, const at::Device& device) {
  if (members.empty() || items == 0) return;
  const at::Tensor meta = upload(members.data(), members.size() * sizeof(Member), device);
  const Member* d = reinterpret_cast<const Member*>(meta.const_data_ptr());
  const int count = static_cast<int>(members.size());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int sms = multiprocessors(device);
  if (long_kind) {
    const int64_t blocks = std::min<int64_t>(items, int64_t(sms) * 32);
    if (p == 2) long_rows<scalar_t, 2><<<blocks, kThreads, 0, stream>>>(d, count, items, sums);
    else long_rows<scalar_t, 1><<<blocks, kThreads, 0, stream>>>(d, count, items, sums);
  } else {
    const int64_t blocks = std::min<int64_t>((items + kThreads - 1) / kThreads, int64_t(sms) * 32);
    if (p == 2) short_rows<scalar_t, 2><<<blocks, kThreads, 0, stream>>>(d, count, items, sums);
    else short_rows<scalar_t, 1><<<blocks, kThreads, 0, stream>>>(d, count, items, sums);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Per-index sums of every member (fp64, back to back on the device) in one fused weight pass.
at::Tensor member_index_sums(at::TensorList tensors, at::IntArrayRef dims, int64_t p,
                             std::vector<int64_t>& offsets) {
  TORCH_CHECK(p == 1 || p == 2, "p must be 1 or 2, not ", p);
  TORCH_CHECK(!tensors.empty(), "a CUDA kernel needs at least one member");
  const at::Device device = tensors[0].device();
  std::vector<at::Tensor> contiguous;  // alive until the kernels are queued
  int64_t total = 0;
  offsets.clear();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device() == device, "member ", i, " is on ", t.device(), ", not ", device);
    check_member_dtype(t, i);
    const int64_t d = checked_dim(t, dims[i], i);
    contiguous.push_back(t.contiguous());
    offsets.push_back(total);
    total += t.size(d);
  }
  at::Tensor sums = at::zeros({total}, at::TensorOptions().dtype(at::kDouble).device(device));
  for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    for (bool long_kind : {true, false}) {
      std::vector<Member> members;
      int64_t items = 0;
      for (size_t i = 0; i < tensors.size(); ++i) {
        const at::Tensor& x = contiguous[i];
        if (x.scalar_type() != dtype || x.numel() == 0) continue;
        const Around a = around(x, checked_dim(x, dims[i], i));
        if ((a.inner >= 32) != long_kind) continue;
        const int64_t n_items = long_kind ? a.outer * a.n
                                          : a.n * ((a.outer + kOuterChunk - 1) / kOuterChunk);
        members.push_back({x.const_data_ptr(), a.outer, a.n, a.inner, items, offsets[i]});
        items += n_items;
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "index_sums_cuda", [&] {
        launch<scalar_t>(members, long_kind, items, p, sums.mutable_data_ptr<double>(), device);
      });
    }
  }
  return sums;
}

at::Tensor index_sums_cuda(at::TensorList tensors, at::IntArrayRef dims, int64_t p) {
  TORCH_CHECK(tensors.size() == dims.size(), "tensors and dims must have one entry per member "
              "(got ", tensors.size(), ", ", dims.size(), ")");
  const c10::cuda::CUDAGuard guard(cuda_device(tensors));
  std::vector<int64_t> offsets;
  return member_index_sums(tensors, dims, p, offsets);
}

at::Tensor grouped_norm_cuda(at::TensorList tensors, at::IntArrayRef dims,
                             at::TensorList unit_maps, int64_t num_units, int64_t p,
                             c10::string_view reduce_name) {
  check_lists(tensors.size(), dims.size(), unit_maps.size(), "unit_maps");
  TORCH_CHECK(p == 1 || p == 2, "p must be 1 or 2, not ", p);
  TORCH_CHECK(num_units >= 0, "num_units must be >= 0");
  const Reduce reduce = parse_reduce(std::string(reduce_name));
  const at::Device device = cuda_device(tensors);
  const c10::cuda::CUDAGuard guard(device);
  for (size_t i = 0; i < tensors.size(); ++i) {  // every argument before any weight is read
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device() == device, "member ", i, " is on ", t.device(), ", not ", device);
    check_member_dtype(t, i);
    const int64_t d = checked_dim(t, dims[i], i);
    check_index(unit_maps[i], i, "unit_maps");
    TORCH_CHECK(unit_maps[i].numel() == t.size(d), "member ", i, ": unit_maps has ",
                unit_maps[i].numel(), " entries for a dim of size ", t.size(d));
  }
  const std::vector<at::Tensor> host_maps = on_host(unit_maps);
  std::vector<std::vector<int64_t>> maps(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) maps[i] = unit_map(host_maps[i], num_units, i);
  std::vector<int64_t> offsets;
  const at::Tensor sums = member_index_sums(tensors, dims, p, offsets);
  // Indices -> units and the reduction over members, on the host's copy of the small sums.
  const at::Tensor host_sums = sums.cpu();
  std::vector<const double*> member_sums(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i)
    member_sums[i] = host_sums.const_data_ptr<double>() + offsets[i];
  return reduce_to_units(maps, member_sums, num_units, reduce)
      .to(device, result_type(tensors));
}

}  // namespace

TORCH_LIBRARY_IMPL(depgraph_ext, CUDA, m) {
  m.impl("grouped_norm", &grouped_norm_cuda);
  m.impl("index_sums", &index_sums_cuda);
}

}  // namespace depgraph_ext
