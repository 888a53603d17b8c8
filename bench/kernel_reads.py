"""How fast the CPU scoring kernel reads one Llama-7B MLP weight (4096 x 11008, bf16, 90 MB):
the per-index sums of squares along its rows and along its columns (``ops.grouped_norm``
with one unit per index), the best of 15 calls each, as GB/s of the weight read.

    PYTHONPATH=<checkout> .venv/bin/python bench/kernel_reads.py [THREADS]   # default 1

Run two checkouts' builds one after the other, a few times, to compare them (this machine's
bandwidth varies by the minute; the best of 15 is what a quiet moment allows).
"""

from __future__ import annotations

import sys
import time

import torch

from depgraph_ext import ops


def best_seconds(call, repeats: int = 15) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    weight = torch.randn(4096, 11008, generator=torch.Generator().manual_seed(0))
    weight = weight.to(torch.bfloat16)
    gigabytes = weight.numel() * weight.element_size() / 1e9
    rows, columns = torch.arange(4096), torch.arange(11008)
    along_rows = best_seconds(lambda: ops.grouped_norm([weight], [0], [rows], 4096, 2, "sum"))
    along_columns = best_seconds(
        lambda: ops.grouped_norm([weight], [1], [columns], 11008, 2, "sum")
    )
    print(
        f"{threads} thread(s): rows {gigabytes / along_rows:.1f} GB/s, "
        f"columns {gigabytes / along_columns:.1f} GB/s"
    )


if __name__ == "__main__":
    main()
