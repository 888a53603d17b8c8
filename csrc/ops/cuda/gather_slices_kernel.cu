// gather_slices and compact_ on CUDA: one launch per element size copies every kept word of
// every tensor (a thread per word, so reads and writes coalesce along the inner dim). compact_
// gathers into a scratch tensor and copies it back to the start of the tensor's memory, since
// overlapping moves cannot run in parallel.
//
// Arguments are checked on the host exactly as on the CPU (arguments.h): kept indices that live
// on the device are copied to the host for that in one batch (one synchronisation per call,
// none when they are host tensors); every index then travels to the device in one upload.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../arguments.h"
#include "launch.cuh"

namespace depgraph_ext {
namespace {

struct Item {
  const void* src;
  void* dst;
  int64_t kept;         // offset of this item's kept indices in the uploaded index array
  int64_t n, k, inner;  // inner in words
  int64_t word_begin;   // first word of this item in the launch
};

template <typename word_t>
__global__ void gather_words(const Item* items, int count, const int64_t* kept, int64_t words) {
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < words;
       w += int64_t(gridDim.x) * blockDim.x) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
      int mid = (lo + hi + 1) / 2;
      if (items[mid].word_begin <= w) lo = mid;
      else hi = mid - 1;
    }
    const Item& it = items[lo];
    const int64_t local = w - it.word_begin;
    const int64_t i = local % it.inner, row = local / it.inner;
    const int64_t j = row % it.k, o = row / it.k;
    static_cast<word_t*>(it.dst)[local] =
        static_cast<const word_t*>(it.src)[(o * it.n + kept[it.kept + j]) * it.inner + i];
  }
}

template <typename word_t>
void launch(const std::vector<Item>& items, const int64_t* kept, int64_t words,
            const at::Device& device) {
  if (items.empty() || words == 0) return;
  const at::Tensor meta = upload(items.data(), items.size() * sizeof(Item), device);
  const int64_t blocks = std::min<int64_t>((words + kThreads - 1) / kThreads,
                                           int64_t(multiprocessors(device)) * 64);
  gather_words<word_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const Item*>(meta.const_data_ptr()), static_cast<int>(items.size()),
      kept, words);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> gather(at::TensorList tensors, at::IntArrayRef dims, at::TensorList kept,
                               bool increasing) {
  check_lists(tensors.size(), dims.size(), kept.size(), "kept");
  std::vector<at::Tensor> out;
  if (tensors.empty()) return out;
  const at::Device device = cuda_device(tensors);
  const c10::cuda::CUDAGuard guard(device);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].device() == device, "member ", i, " is on ", tensors[i].device(),
                ", not ", device);
    check_index(kept[i], i, "kept");
  }
  const std::vector<at::Tensor> host_kept = on_host(kept);
  std::vector<int64_t> all_kept;  // every member's kept indices, checked, back to back
  std::vector<int64_t> starts;
  std::vector<int64_t> ds;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t d = checked_dim(tensors[i], dims[i], i);
    const std::vector<int64_t> idx = kept_indices(host_kept[i], tensors[i].size(d), i, increasing);
    starts.push_back(static_cast<int64_t>(all_kept.size()));
    all_kept.insert(all_kept.end(), idx.begin(), idx.end());
    ds.push_back(d);
  }
  const at::Tensor kept_on_device =
      upload(all_kept.data(), all_kept.size() * sizeof(int64_t), device);
  std::vector<at::Tensor> keep_alive;  // sources alive until the kernels are queued
  std::vector<Item> by_size[4];
  int64_t words[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    const int64_t d = ds[i], k = host_kept[i].numel();
    std::vector<int64_t> shape = t.sizes().vec();
    shape[d] = k;
    at::Tensor result = at::empty(shape, t.options().memory_format(at::MemoryFormat::Contiguous));
    out.push_back(result);
    if (result.numel() == 0) continue;
    at::Tensor src = t.contiguous();
    keep_alive.push_back(src);
    const Around a = around(src, d);
    const int64_t size = src.element_size();
    int slot = 0;
    int64_t inner = a.inner;  // in words
    switch (size) {
      case 1: slot = 0; break;
      case 2: slot = 1; break;
      case 4: slot = 2; break;
      case 8: slot = 3; break;
      default: inner = a.inner * size;  // other element sizes: copy bytes
    }
    by_size[slot].push_back(
        {src.const_data_ptr(), result.data_ptr(), starts[i], a.n, k, inner, words[slot]});
    words[slot] += a.outer * k * inner;
  }
  // upload() returns raw bytes: the indices are read through a pointer of their own type.
  const int64_t* kept_ptr =
      kept_on_device.numel() ? static_cast<const int64_t*>(kept_on_device.const_data_ptr())
                             : nullptr;
  launch<uint8_t>(by_size[0], kept_ptr, words[0], device);
  launch<uint16_t>(by_size[1], kept_ptr, words[1], device);
  launch<uint32_t>(by_size[2], kept_ptr, words[2], device);
  launch<uint64_t>(by_size[3], kept_ptr, words[3], device);
  return out;
}

std::vector<at::Tensor> gather_slices_cuda(at::TensorList tensors, at::IntArrayRef dims,
                                           at::TensorList kept) {
  return gather(tensors, dims, kept, /*increasing=*/false);
}

void compact_cuda(at::TensorList tensors, at::IntArrayRef dims, at::TensorList kept) {
  for (size_t i = 0; i < tensors.size(); ++i)
    TORCH_CHECK(tensors[i].is_contiguous(), "member ", i, ": compact_ needs a contiguous tensor");
  const std::vector<at::Tensor> gathered = gather(tensors, dims, kept, /*increasing=*/true);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (gathered[i].numel() == 0) continue;
    tensors[i].view(-1).narrow(0, 0, gathered[i].numel()).copy_(gathered[i].view(-1));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(depgraph_ext, CUDA, m) {
  m.impl("gather_slices", &gather_slices_cuda);
  m.impl("compact_", &compact_cuda);
}

}  // namespace depgraph_ext
