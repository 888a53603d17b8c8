// What every kernel of an op checks and prepares on the host, whatever its device, so that
// the CPU and CUDA kernels refuse the same arguments with the same messages and reduce over
// units the same way.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
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

// A member's dtype: one the kernels read. The fp8 types count as floating point for
// at::isFloatingType, and would fail inside the CPU kernel's dispatch or be left out of the CUDA
// launches (scoring zero); they are refused here, on every device alike.
inline void check_member_dtype(const at::Tensor& t, size_t i) {
  const at::ScalarType s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
              "member ", i, " must be floating point (float16, bfloat16, float32 or float64), not ",
              s);
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

// Index tensors (int32/int64, any device, already checked by check_index) as host int64
// tensors, in order. The ones on a device are copied in one batch: a single synchronisation
// however many members there are.
inline std::vector<at::Tensor> on_host(at::TensorList indices) {
  std::vector<at::Tensor> out(indices.size());
  std::vector<at::Tensor> remote;
  std::vector<size_t> where;
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i].device().is_cpu()) {
      out[i] = indices[i].to(at::kLong).contiguous();
    } else {
      remote.push_back(indices[i].to(at::kLong).view(-1));
      where.push_back(i);
    }
  }
  if (!remote.empty()) {
    std::vector<int64_t> lengths;
    for (const auto& r : remote) lengths.push_back(r.numel());
    const at::Tensor all = at::cat(remote).cpu();
    int64_t start = 0;
    for (size_t k = 0; k < remote.size(); ++k) {
      out[where[k]] = all.narrow(0, start, lengths[k]);
      start += lengths[k];
    }
  }
  return out;
}

// Kept indices of member i along a dim of size n: each in [0, n), and strictly increasing
// when `increasing` (compact_ moves each kept slice toward the front).
inline std::vector<int64_t> kept_indices(const at::Tensor& host, int64_t n, size_t i,
                                         bool increasing) {
  const int64_t* p = host.const_data_ptr<int64_t>();
  std::vector<int64_t> out(p, p + host.numel());
  for (size_t j = 0; j < out.size(); ++j) {
    TORCH_CHECK(out[j] >= 0 && out[j] < n, "member ", i, ": kept index ", out[j],
                " out of range for a dim of size ", n);
    TORCH_CHECK(!increasing || j == 0 || out[j] > out[j - 1], "member ", i,
                ": kept indices must be strictly increasing");
  }
  return out;
}

// Unit map of member i (one unit id per index of its dim, or -1): each in [-1, num_units).
inline std::vector<int64_t> unit_map(const at::Tensor& host, int64_t num_units, size_t i) {
  const int64_t* p = host.const_data_ptr<int64_t>();
  std::vector<int64_t> out(p, p + host.numel());
  for (int64_t u : out)
    TORCH_CHECK(u >= -1 && u < num_units, "member ", i, ": unit ", u, " out of range");
  return out;
}

enum class Reduce { kSum, kMean, kMax };

inline Reduce parse_reduce(const std::string& reduce) {
  if (reduce == "sum") return Reduce::kSum;
  if (reduce == "mean") return Reduce::kMean;
  if (reduce == "max") return Reduce::kMax;
  TORCH_CHECK(false, "reduce must be \"sum\", \"mean\" or \"max\", not \"", reduce, "\"");
}

// grouped_norm's result dtype: fp64 if any member is fp64, else fp32.
inline at::ScalarType result_type(const at::TensorList tensors) {
  for (const auto& t : tensors)
    if (t.scalar_type() == at::kDouble) return at::kDouble;
  return at::kFloat;
}

// A unit map viewed in place: a host int64 tensor's entries, each checked to be in
// [-1, num_units) (no copy: on a machine where fresh memory faults in slowly, copying a
// large model's maps cost more than reading them).
struct UnitMapView {
  const int64_t* ids = nullptr;
  size_t size = 0;
};

inline UnitMapView checked_unit_map(const at::Tensor& host, int64_t num_units, size_t i) {
  const int64_t* p = host.const_data_ptr<int64_t>();
  const int64_t n = host.numel();
  for (int64_t j = 0; j < n; ++j)
    TORCH_CHECK(p[j] >= -1 && p[j] < num_units, "member ", i, ": unit ", p[j], " out of range");
  return {p, static_cast<size_t>(n)};
}

// grouped_norm's last step, on every device: member i's per-index sums sums[i] (fp64) are
// mapped to units by maps[i], each member's contribution to a unit summed over its indices
// in index order, then the contributions reduced over the members that touch the unit, in
// member order. Returns fp64 [num_units] on the CPU.
inline at::Tensor reduce_to_units(const std::vector<UnitMapView>& maps,
                                  const std::vector<const double*>& sums, int64_t num_units,
                                  Reduce reduce) {
  // The result is reduced in place and the counts kept only where the reduction needs them:
  // each array here is fresh memory the size of the units (a large model's: megabytes).
  at::Tensor result = at::zeros({num_units}, at::TensorOptions().dtype(at::kDouble));
  double* out = result.mutable_data_ptr<double>();
  std::vector<double> contribution(num_units, 0.0);
  std::vector<int32_t> count(reduce == Reduce::kSum ? 0 : num_units, 0);
  std::vector<uint8_t> touched(num_units, 0);
  std::vector<int64_t> hit;  // units this member touches, to reset only those
  for (size_t i = 0; i < maps.size(); ++i) {
    const int64_t* map = maps[i].ids;
    hit.clear();
    for (size_t j = 0; j < maps[i].size; ++j) {
      if (map[j] < 0) continue;
      if (!touched[map[j]]) {
        touched[map[j]] = 1;
        hit.push_back(map[j]);
      }
      contribution[map[j]] += sums[i][j];
    }
    for (int64_t u : hit) {
      if (reduce == Reduce::kMax) out[u] = count[u] ? std::max(out[u], contribution[u])
                                                    : contribution[u];
      else out[u] += contribution[u];
      if (reduce != Reduce::kSum) ++count[u];
      contribution[u] = 0.0;
      touched[u] = 0;
    }
  }
  if (reduce == Reduce::kMean)
    for (int64_t u = 0; u < num_units; ++u)
      if (count[u]) out[u] /= static_cast<double>(count[u]);
  return result;
}

inline at::Tensor reduce_to_units(const std::vector<std::vector<int64_t>>& maps,
                                  const std::vector<const double*>& sums, int64_t num_units,
                                  Reduce reduce) {
  std::vector<UnitMapView> views(maps.size());
  for (size_t i = 0; i < maps.size(); ++i) views[i] = {maps[i].data(), maps[i].size()};
  return reduce_to_units(views, sums, num_units, reduce);
}

}  // namespace depgraph_ext
