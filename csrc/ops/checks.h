// Argument checks shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace depgraph_ext {

// A member's shape as [outer, n, inner] around its dim.
struct Around {
  int64_t outer = 1, n = 1, inner = 1;
};

inline Around around(const at::Tensor& t, int64_t dim) {
  Around a;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (d < dim) a.outer *= t.size(d);
    else if (d == dim) a.n = t.size(d);
    else a.inner *= t.size(d);
  }
  return a;
}

inline int64_t checked_dim(const at::Tensor& t, int64_t dim, size_t i) {
  int64_t d = dim < 0 ? dim + t.dim() : dim;
  TORCH_CHECK(d >= 0 && d < t.dim(), "member ", i, ": dim ", dim, " out of range for a ",
              t.dim(), "-d tensor");
  return d;
}

inline void check_lists(size_t tensors, size_t dims, size_t maps, const char* what) {
  TORCH_CHECK(tensors == dims && tensors == maps, "tensors, dims and ", what,
              " must have one entry per member (got ", tensors, ", ", dims, ", ", maps, ")");
}

inline void check_index(const at::Tensor& idx, size_t i, const char* what) {
  TORCH_CHECK(idx.dim() == 1, "member ", i, ": ", what, " must be 1-d");
  TORCH_CHECK(idx.scalar_type() == at::kLong || idx.scalar_type() == at::kInt, "member ", i,
              ": ", what, " must be int32 or int64, not ", idx.scalar_type());
}

enum class Reduce { kSum, kMean, kMax };

inline Reduce parse_reduce(const std::string& reduce) {
  if (reduce == "sum") return Reduce::kSum;
  if (reduce == "mean") return Reduce::kMean;
  if (reduce == "max") return Reduce::kMax;
  TORCH_CHECK(false, "reduce must be \"sum\", \"mean\" or \"max\", not \"", reduce, "\"");
}

inline at::ScalarType result_type(const at::TensorList tensors) {
  for (const auto& t : tensors)
    if (t.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

}  // namespace depgraph_ext
