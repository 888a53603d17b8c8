// pybind11 module depgraph_ext._core: numpy arrays in, a dict of numpy arrays out.
// The only file of csrc/core that knows about Python; the algorithm lives in resolve.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "resolve.hpp"

namespace py = pybind11;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& values) {
  auto* owner = new std::vector<T>(std::move(values));
  py::capsule free_when_done(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owner->size())}, owner->data(), free_when_done);
}

template <typename T>
void check_1d(const Array<T>& a, const char* name) {
  if (a.ndim() != 1)
    throw std::invalid_argument(std::string(name) + " must be a 1-d array, not " +
                                std::to_string(a.ndim()) + "-d");
}

py::dict resolve_groups(const Array<int64_t>& slot_sizes, const Array<int8_t>& kinds,
                        const Array<int64_t>& offsets, const Array<int64_t>& data,
                        const Array<int64_t>& query_slots) {
  check_1d(slot_sizes, "slot_sizes");
  check_1d(kinds, "kinds");
  check_1d(offsets, "offsets");
  check_1d(data, "data");
  check_1d(query_slots, "query_slots");
  const depgraph::CouplingsView view{slot_sizes.data(), slot_sizes.size(), kinds.data(),
                                     kinds.size(),      offsets.data(),    offsets.size(),
                                     data.data(),       data.size(),       query_slots.data(),
                                     query_slots.size()};
  depgraph::Resolution r;
  {
    py::gil_scoped_release release;
    r = depgraph::resolve_groups(view);
  }
  py::dict out;
  out["leaf_sizes"] = to_numpy(std::move(r.leaf_sizes));
  out["slot_leaf_offsets"] = to_numpy(std::move(r.slot_leaf_offsets));
  out["slot_leaves"] = to_numpy(std::move(r.slot_leaves));
  out["leaf_unit_offsets"] = to_numpy(std::move(r.leaf_unit_offsets));
  out["elem_units"] = to_numpy(std::move(r.elem_units));
  out["unit_blocked"] = to_numpy(std::move(r.unit_blocked));
  out["unit_groups"] = to_numpy(std::move(r.unit_groups));
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "depgraph_ext core: torch-free group resolution over slot couplings";
  m.def("resolve_groups", &resolve_groups, py::arg("slot_sizes"), py::arg("kinds"),
        py::arg("offsets"), py::arg("data"), py::arg("query_slots"),
        "Resolve couplings into leaves, units and groups (see depgraph_ext/couplings.py).");
}
