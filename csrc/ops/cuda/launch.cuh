// Launch helpers shared by the CUDA kernels.
#pragma once

#include <c10/cuda/CUDAException.h>

namespace depgraph_ext {

constexpr int kThreads = 256;

// Streaming multiprocessors of the current device (grids are sized as a multiple of it).
inline int multiprocessors() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

}  // namespace depgraph_ext
