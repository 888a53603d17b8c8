"""The native kernels on a Llama-7B-shaped set of bf16 weights (4 layers of 4096/11008, 32
heads; 0.81B parameters, 1.6 GB): grouped_norm against plain PyTorch (fp32-accumulated row
norms + index_add, per tensor) and gather_slices/compact_ against index_select, with the
machine's copy bandwidth measured in the same run. In this suite the "python" column is that
plain PyTorch baseline. Peak memory of each slicing method is taken in a fresh process.

    .venv/bin/python -m pytest bench/test_bench_kernels.py -q
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from depgraph_ext import ops
from measuring import EXTRA, RESULTS, measure

pytestmark = pytest.mark.skipif(not ops.available(), reason="op library not built")
LAYERS, HIDDEN, MLP, HEADS = 4, 4096, 11008, 32


def llama_weights(seed: int = 0, layers: int = LAYERS, device="cpu"):
    """(tensors, dims, unit maps, units, kept) as the pipeline would score and slice them:
    heads on q/k/v rows and o columns, MLP neurons on gate/up rows and down columns, the hidden
    size on every other dim. Everything on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    tensors, dims, maps, kept = [], [], [], []
    units = HIDDEN
    hidden_map = torch.arange(HIDDEN, device=device)
    for _ in range(layers):
        heads = torch.arange(HIDDEN, device=device) // (HIDDEN // HEADS) + units
        units += HEADS
        neurons = torch.arange(MLP, device=device) + units
        units += MLP
        for shape, dim, unit_map in [((HIDDEN, HIDDEN), 0, heads)] * 3 + [
            ((HIDDEN, HIDDEN), 1, heads),
            ((MLP, HIDDEN), 0, neurons),
            ((MLP, HIDDEN), 0, neurons),
            ((HIDDEN, MLP), 1, neurons),
        ]:
            w = torch.empty(shape, dtype=torch.bfloat16, device=device).normal_(generator=g)
            for d, m in ((dim, unit_map), (1 - dim, hidden_map)):
                tensors.append(w)
                dims.append(d)
                maps.append(m)
            kept.append(torch.arange(0, shape[0], 2, device=device))
    return tensors, dims, maps, units, kept


@pytest.fixture(scope="module")
def weights():
    return llama_weights()


def unique_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def plain_pytorch_norms(tensors, dims, maps, units):
    out = torch.zeros(units, dtype=torch.float32)
    for t, d, m in zip(tensors, dims, maps):
        out.index_add_(0, m, t.float().square().sum(dim=1 - d))
    return out


def test_copy_bandwidth(benchmark):
    src = torch.ones(2**29, dtype=torch.bfloat16)  # 1 GiB: far beyond any cache
    dst = torch.empty_like(src).fill_(0)
    key = ("bf16 weights", "memory copy of 1 GiB", "torch")
    measure(benchmark, key, lambda: dst.copy_(src), rounds=10)
    gbps = 2 * src.numel() * src.element_size() / RESULTS[key] / 1e9
    EXTRA.append(f"copy bandwidth (read + write): {gbps:.1f} GB/s")


@pytest.mark.parametrize("tool", ["native", "python"])
def test_grouped_norm(benchmark, weights, tool):
    tensors, dims, maps, units, _ = weights
    if tool == "native":
        fn = lambda: ops.grouped_norm(tensors, dims, maps, units, 2, "sum")  # noqa: E731
    else:
        fn = lambda: plain_pytorch_norms(tensors, dims, maps, units)  # noqa: E731
    measure(benchmark, ("bf16 weights", "grouped_norm over every member", tool), fn)
    read = sum(t.numel() * t.element_size() for t in tensors)  # each member reads its tensor
    seconds = RESULTS[("bf16 weights", "grouped_norm over every member", tool)]
    EXTRA.append(f"grouped_norm, {tool}: {read / seconds / 1e9:.1f} GB/s of weights read")


def test_grouped_norm_agree(weights):
    tensors, dims, maps, units, _ = weights
    torch.testing.assert_close(
        ops.grouped_norm(tensors, dims, maps, units, 2, "sum"),
        plain_pytorch_norms(tensors, dims, maps, units),
        rtol=1e-4,
        atol=0,
    )


@pytest.mark.parametrize("tool", ["native", "python"])
def test_gather_slices(benchmark, weights, tool):
    tensors = list({id(t): t for t in weights[0]}.values())
    kept = weights[4]
    if tool == "native":
        fn = lambda: ops.gather_slices(tensors, [0] * len(tensors), kept)  # noqa: E731
    else:
        fn = lambda: [t.index_select(0, k) for t, k in zip(tensors, kept)]  # noqa: E731
    measure(benchmark, ("bf16 weights", "gather half the rows of every tensor", tool), fn)
    moved = unique_bytes(tensors)  # half read + half written
    seconds = RESULTS[("bf16 weights", "gather half the rows of every tensor", tool)]
    EXTRA.append(f"gather, {tool}: {moved / seconds / 1e9:.1f} GB/s (kept bytes read + written)")


def test_compact_in_place(benchmark, weights):
    tensors = list({id(t): t for t in weights[0]}.values())
    kept = weights[4]
    measure(
        benchmark,
        ("bf16 weights", "gather half the rows of every tensor", "native in place"),
        lambda ts: ops.compact_(ts, [0] * len(ts), kept),
        setup=lambda: [t.clone() for t in tensors],
    )
    seconds = RESULTS[("bf16 weights", "gather half the rows of every tensor", "native in place")]
    EXTRA.append(f"compact_ (in place): {unique_bytes(tensors) / seconds / 1e9:.1f} GB/s")


_FRESH = """
import sys, time, torch
sys.path.insert(0, "bench")
from test_bench_kernels import llama_weights
from depgraph_ext import ops


def hwm():  # peak RSS of this process image, in KiB (reset by exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


tensors, _, _, _, kept = llama_weights()
tensors = list({{id(t): t for t in tensors}}.values())
before = hwm()
t = time.perf_counter()
if "{method}" == "compact_":
    out = ops.compact_(tensors, [0] * len(tensors), kept)
elif "{method}" == "gather_slices":
    out = ops.gather_slices(tensors, [0] * len(tensors), kept)
else:
    out = [t.index_select(0, k) for t, k in zip(tensors, kept)]
print(time.perf_counter() - t, before, hwm())
"""


def test_slicing_in_a_fresh_process():
    """Time and peak memory of each way of slicing, each in a new process (a long-lived one
    times the allocator's cache as much as the copy)."""
    lines = []
    for method in ("index_select", "gather_slices", "compact_"):
        out = subprocess.run(
            [sys.executable, "-c", _FRESH.format(method=method)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        seconds, before, after = float(out[0]), int(out[1]), int(out[2])
        lines.append(
            f"{method} {seconds * 1e3:.0f} ms, peak RSS +{(after - before) / 2**20:.2f} GiB"
        )
    EXTRA.append(
        "slicing half the rows of 1.6 GB of weights, fresh process each: " + "; ".join(lines)
    )
