// release_tails_ on CPU: after compact_, each tensor is the prefix of its own storage. The
// storage's whole pages past that prefix go back to the operating system (madvise, no copy),
// and the storage's size becomes the prefix's, so that what reads the storage whole
// (torch.save, pickling, sharing) sees the pruned tensor, not the original's bytes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/StorageImpl.h>
#include <torch/library.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace depgraph_ext {
namespace {

void release_tails_cpu(at::TensorList tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.device().is_cpu(), "release_tails_: member ", i, " is on ", t.device(),
                ", not the CPU");
    TORCH_CHECK(t.has_storage() && t.storage_offset() == 0 && t.is_contiguous(),
                "release_tails_: member ", i,
                " must be a contiguous tensor at the start of its storage");
    const auto needed = static_cast<size_t>(t.numel()) * t.element_size();
    TORCH_CHECK(t.storage().nbytes() >= needed, "release_tails_: member ", i,
                "'s storage holds fewer bytes than the tensor");
    for (size_t j = 0; j < i; ++j)
      TORCH_CHECK(!t.storage().is_alias_of(tensors[j].storage()), "release_tails_: members ", j,
                  " and ", i, " share a storage");
  }
#if defined(__linux__)
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
#endif
  // Giving pages back is the kernel's work, per page: spread over threads, a tensor each.
  at::parallel_for(0, static_cast<int64_t>(tensors.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const at::Tensor& t = tensors[i];
      c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
      const auto needed = static_cast<size_t>(t.numel()) * t.element_size();
      if (storage->nbytes() == needed) continue;
#if defined(__linux__)
      const auto base = reinterpret_cast<uintptr_t>(storage->data_ptr().get());
      const uintptr_t first = (base + needed + page - 1) / page * page;
      const uintptr_t last = (base + storage->nbytes()) / page * page;
      // (a failure leaves the pages where they are: memory not given back, nothing wrong)
      if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
#endif
      // Only the size changes: the allocation is freed by its pointer, whole, as before.
      storage->set_nbytes(needed);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(depgraph_ext, CPU, m) { m.impl("release_tails_", &release_tails_cpu); }

}  // namespace depgraph_ext
