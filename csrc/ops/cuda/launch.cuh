// Launch helpers shared by the CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <cstring>
#include <mutex>
#include <unordered_map>

namespace depgraph_ext {

constexpr int kThreads = 256;

// The device a CUDA kernel runs on: member 0's. The dispatcher picks the CUDA kernel when any
// tensor argument is on a CUDA device, index tensors included, so member 0 may be elsewhere;
// it is refused here by name rather than by the device guard's internal check.
inline at::Device cuda_device(at::TensorList tensors) {
  TORCH_CHECK(!tensors.empty(), "a CUDA kernel needs at least one member");
  const at::Device device = tensors[0].device();
  TORCH_CHECK(device.is_cuda(), "member 0 is on ", device,
              ", and an index tensor is on a CUDA device: put the members and their index "
              "tensors on one device");
  return device;
}

// Streaming multiprocessors of a device (grids are sized as a multiple of it), asked of the
// driver once per device and remembered.
inline int multiprocessors(const at::Device& device) {
  static std::mutex mutex;
  static std::unordered_map<int, int> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = known.find(device.index());
  if (it != known.end()) return it->second;
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device.index()));
  known.emplace(device.index(), count);
  return count;
}

// `bytes` bytes of host data as a device byte tensor (read it through `const_data_ptr()` cast
// to the data's own type, never `const_data_ptr<T>()`, which checks the dtype), copied from pinned memory without blocking
// the host (the caching host allocator keeps the pinned buffer until the copy has run).
inline at::Tensor upload(const void* data, size_t bytes, const at::Device& device) {
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  if (bytes) std::memcpy(host.data_ptr(), data, bytes);
  return host.to(device, /*non_blocking=*/true);
}

}  // namespace depgraph_ext
