// The op library depgraph_ext: every schema in this one file; kernels live in cpu/ and cuda/.
//
// grouped_norm(tensors, dims, unit_maps, num_units, p, reduce) -> Tensor[num_units]
//   Member i is tensors[i] read along dims[i]; unit_maps[i] (int32/int64, one entry per index of
//   that dim) names the unit each index belongs to, or -1. A member's contribution to unit u is
//   the sum of |w|^p over every slice whose index maps to u (many-to-one maps: a head's block of
//   rows). Contributions are combined over members by reduce: "sum", "mean" (over the members
//   that touch the unit) or "max". fp32 accumulation for fp16/bf16/fp32 (fp64 for fp64); the
//   result is fp64 if any member is fp64, else fp32. One fused pass over all members.
// index_sums(tensors, dims, p) -> Tensor[sum of the dims' sizes]
//   Member i's per-index sums of |w|^p along dims[i] (every other dim summed), the members'
//   sums back to back, fp64 on the members' device: grouped_norm's first pass, before any
//   mapping to units or rounding (what streaming checkpoint scores add up exactly).
// row_column_sums(tensor, p) -> Tensor[size(0) + size(1)]
//   index_sums([tensor, tensor], [0, 1], p), bitwise, computed on the calling thread alone
//   and in one read of a Linear's or a small-kernel conv's weight: scoring that runs beside
//   other work (the trace) without taking its core. CPU.
// units_from_sums(sums, unit_maps, num_units, reduce) -> Tensor[num_units]
//   grouped_norm's second pass on given per-index sums (fp64, one entry per unit map entry):
//   grouped_norm(tensors, ...) is units_from_sums(index_sums(tensors) split per member, ...)
//   cast to grouped_norm's result type. fp64. CPU.
// gather_slices(tensors, dims, kept) -> Tensor[]
//   The kept indices (sorted, int32/int64) of each tensor along its dim, as new tensors;
//   bit-identical to index_select, any dtype.
// compact_(tensors, dims, kept) -> ()
//   The same, in place: the kept slices are written contiguously to the start of each
//   (contiguous) tensor's memory; the caller then views that prefix with the new shape, so no
//   second copy of the weights is ever allocated.
// scatter_slices_(tensors, dims, indices, sources) -> ()
//   The inverse of gather_slices, in place: sources[i]'s slices are written at indices[i]
//   (strictly increasing) of tensors[i] along its dim; bit-identical to index_copy_ (CPU).
// expand_(tensors, dims, kept) -> ()
//   compact_ undone: the slices compact_ wrote to the start of each tensor's memory go back to
//   their kept indices (strictly increasing) along its dim, in place; what lies between them
//   is left as it was (scatter_slices_ puts it back). CPU.
// fill_slices_(tensors, dims, indices, values) -> ()
//   tensors[i]'s slices at indices[i] along its dim set to values[i]; as index_fill_ (CPU).
// gather_slices_into(tensors, dims, kept, outs) -> ()
//   gather_slices into given tensors: outs[i] (contiguous, of the gathered shape and the
//   member's dtype, sharing no memory with it) receives the kept slices (CPU).
// copy_with_fills_(outs, tensors, dims, indices, values) -> ()
//   outs[i] (contiguous, of tensors[i]'s shape and dtype, sharing no memory with it) becomes
//   tensors[i] with its slices at indices[i] (strictly increasing) set to values[i]: copy_
//   then index_fill_, in one pass that never reads those slices (CPU).
// release_tails_(tensors) -> ()
//   After compact_: each tensor (contiguous, at the start of its storage, no two sharing one)
//   is the prefix of its storage; the storage's whole pages past it are given back to the
//   operating system (Linux) and its size becomes the tensor's bytes, so what reads storages
//   whole (torch.save) sees the pruned tensor. No copy. CPU.
// build_info() -> str
//   What was compiled: the devices with kernels, and the versions built against (the torch
//   version is also in the file as depgraph_ext_built_for, read before loading).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "build_info.h"

// The torch this library was built for, as a string in the file: depgraph_ext/ops.py reads it
// from there before loading the library, and loads only a library built for the torch it runs
// under (loading runs the registrations below, compiled against that torch's C++ ABI).
extern "C" __attribute__((used, visibility("default"))) const char depgraph_ext_built_for[] =
    "depgraph_ext op library built for torch " DEPGRAPH_TORCH_VERSION;

namespace depgraph_ext {

std::string build_info() {
  std::string info = "depgraph_ext ops: cpu";
#ifdef DEPGRAPH_WITH_CUDA
  info += ", cuda " + std::string(DEPGRAPH_CUDA_VERSION);
#endif
  info += "; torch " + std::string(DEPGRAPH_TORCH_VERSION);
  return info;
}

TORCH_LIBRARY(depgraph_ext, m) {
  m.def("build_info() -> str", &build_info);
  m.def(
      "grouped_norm(Tensor[] tensors, int[] dims, Tensor[] unit_maps, int num_units, int p, "
      "str reduce) -> Tensor");
  m.def("index_sums(Tensor[] tensors, int[] dims, int p) -> Tensor");
  m.def("row_column_sums(Tensor tensor, int p) -> Tensor");
  m.def("units_from_sums(Tensor[] sums, Tensor[] unit_maps, int num_units, str reduce) -> Tensor");
  m.def("gather_slices(Tensor[] tensors, int[] dims, Tensor[] kept) -> Tensor[]");
  m.def("compact_(Tensor(a!)[] tensors, int[] dims, Tensor[] kept) -> ()");
  m.def(
      "scatter_slices_(Tensor(a!)[] tensors, int[] dims, Tensor[] indices, Tensor[] sources) "
      "-> ()");
  m.def("fill_slices_(Tensor(a!)[] tensors, int[] dims, Tensor[] indices, float[] values) -> ()");
  m.def("expand_(Tensor(a!)[] tensors, int[] dims, Tensor[] kept) -> ()");
  m.def("gather_slices_into(Tensor[] tensors, int[] dims, Tensor[] kept, Tensor(a!)[] outs) -> ()");
  m.def(
      "copy_with_fills_(Tensor(a!)[] outs, Tensor[] tensors, int[] dims, Tensor[] indices, "
      "float[] values) -> ()");
  m.def("release_tails_(Tensor(a!)[] tensors) -> ()");
}

}  // namespace depgraph_ext

// `import depgraph_ext._ops` loads this library, whose static initialisers register the ops.
extern "C" PyObject* PyInit__ops(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ops", "depgraph_ext op library",
                                      -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
