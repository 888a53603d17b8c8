"""The native ops against their PyTorch references: exact for gather/compact; for grouped_norm
the kernel is at most about 2x as far from an fp64 reference as PyTorch's own reduction at the
same precision. Plus opcheck, gradcheck, torch.compile and edge cases. CUDA cases skip without
a GPU."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from depgraph_ext import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="op library not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def members(device, dtype, seed=0, index_dtype=torch.long):
    g = torch.Generator().manual_seed(seed)
    shapes = [((64, 96), 0), ((64, 96), 1), ((8, 5, 7, 3), 1), ((300,), 0), ((40, 1, 9), 2)]
    tensors, dims, maps = [], [], []
    num_units = 12
    for shape, d in shapes:
        t = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        m = torch.randint(-1, num_units, (shape[d],), generator=g)
        tensors.append(t)
        dims.append(d)
        maps.append(m.to(device=device, dtype=index_dtype))
    # a head-like many-to-one map: blocks of 16 rows per unit
    tensors.append(torch.randn(96, 32, generator=g).to(device=device, dtype=dtype))
    dims.append(0)
    maps.append((torch.arange(96) // 16).to(device=device, dtype=index_dtype))
    return tensors, dims, maps, num_units


def torch_own(tensors, dims, maps, num_units, p, dtype):
    """PyTorch's own reduction at the same precision (fp32 accumulation below fp64)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.zeros(num_units, dtype=acc)
    for t, d, m in zip(tensors, dims, maps):
        w = t.to(acc).cpu()
        w = w.abs() if p == 1 else w.square()
        others = [x for x in range(w.dim()) if x != d]
        per_index = w.sum(dim=others) if others else w
        m = m.cpu().long()
        out.index_add_(0, m[m >= 0], per_index[m >= 0])
    return out.double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("index_dtype", [torch.long, torch.int32])
def test_grouped_norm_accuracy(device, dtype, p, index_dtype):
    tensors, dims, maps, n = members(device, dtype, index_dtype=index_dtype)
    got = ops.grouped_norm(tensors, dims, maps, n, p, "sum")
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    exact = ops.grouped_norm_reference([t.double() for t in tensors], dims, maps, n, p).cpu()
    own_error = (torch_own(tensors, dims, maps, n, p, dtype) - exact).abs()
    error = (got.cpu().double() - exact).abs()
    tiny = exact.abs() * (1e-15 if dtype == torch.float64 else 1e-7)
    assert (error <= 2 * own_error + tiny).all(), (error, own_error)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_grouped_norm_reductions(device, reduce):
    tensors, dims, maps, n = members(device, torch.float64, seed=3)
    got = ops.grouped_norm(tensors, dims, maps, n, 2, reduce)
    want = ops.grouped_norm_reference(tensors, dims, maps, n, 2, reduce)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_norm_edge_cases(device):
    f = torch.float32
    empty = torch.empty(0, 4, device=device, dtype=f)
    one = torch.tensor([[3.0, 4.0]], device=device, dtype=f)
    got = ops.grouped_norm(
        [empty, one], [0, 0], [torch.empty(0, dtype=torch.long), torch.tensor([0])], 1, 2, "sum"
    )
    assert got.tolist() == [25.0]
    wide = torch.randn(6, 10, device=device).t()  # non-contiguous
    m = torch.arange(10) % 3
    torch.testing.assert_close(
        ops.grouped_norm([wide], [0], [m], 3),
        ops.grouped_norm_reference([wide.contiguous()], [0], [m], 3),
    )
    assert ops.grouped_norm([one], [1], [torch.tensor([-1, -1])], 0).numel() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("map_device", ["cpu", "same"])
def test_grouped_norm_refuses_bad_arguments(device, map_device):
    """The same refusals with the same messages on every device, unit maps on the host or on
    the members' device."""
    t = torch.randn(4, 3, device=device)

    def m(*values):
        return torch.tensor(values).to(device if map_device == "same" else "cpu")

    with pytest.raises(RuntimeError, match="member 0: unit_maps has 2 entries"):
        ops.grouped_norm([t], [0], [m(0, 1)], 2)
    with pytest.raises(RuntimeError, match="member 1: unit 5 out of range"):
        ops.grouped_norm([t, t], [0, 0], [m(0, 1, 2, 0), m(0, 1, 2, 5)], 3)
    with pytest.raises(RuntimeError, match="member 0: unit -2 out of range"):
        ops.grouped_norm([t], [0], [m(0, -2, 1, 0)], 3)
    with pytest.raises(RuntimeError, match="reduce must be"):
        ops.grouped_norm([t], [0], [m(0, 0, 0, 0)], 1, 2, "median")
    with pytest.raises(RuntimeError, match="p must be 1 or 2"):
        ops.grouped_norm([t], [0], [m(0, 0, 0, 0)], 1, 3)
    with pytest.raises(RuntimeError, match="num_units must be >= 0"):
        ops.grouped_norm([t], [0], [m(-1, -1, -1, -1)], -1)
    with pytest.raises(RuntimeError, match="dim 2 out of range"):
        ops.grouped_norm([t], [2], [m(0, 0, 0, 0)], 1)
    with pytest.raises(RuntimeError, match="must be int32 or int64"):
        ops.grouped_norm([t], [0], [m(0.0, 0.0, 0.0, 0.0)], 1)
    with pytest.raises(RuntimeError, match="must be floating point"):
        ops.grouped_norm([t.long()], [0], [m(0, 0, 0, 0)], 1)
    # fp8 is floating point to torch, but no kernel reads it (the CUDA one used to score it 0)
    fp8 = t.to(torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match=r"member 0 must be .*float64\), not Float8_e4m3fn"):
        ops.grouped_norm([fp8], [0], [m(0, 0, 0, 0)], 1)
    with pytest.raises(RuntimeError, match=r"member 1 must be .*float64\), not Float8_e4m3fn"):
        ops.index_sums([t, fp8], [0, 0])


# Shapes for the summing kernels' paths: long rows (16+ elements) and short ones along dim 0,
# dim 1's runs under 16 elements (one read: Linear, 3x3 conv) and of 16 or more (two reads),
# row counts around the blocks of 128 and groups of 8, empty tensors.
ROW_COLUMN_SHAPES = [
    (300, 700), (1000, 17), (16, 7), (5, 3), (129, 33), (2000, 24), (257, 1031), (1, 1),
    (64, 32, 3, 3), (64, 32, 5, 5), (64, 32, 1, 1), (8, 3, 2), (2000, 5, 4), (0, 5), (3, 0),
]  # fmt: skip


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("p", [1, 2])
def test_row_column_sums_are_index_sums_bit_for_bit(dtype, p):
    """Summed on the calling thread in one read, dim 0's and dim 1's sums are index_sums'
    (what scoring computes when the prefetch has not), bit for bit, and near the reference."""
    g = torch.Generator().manual_seed(1)
    for shape in ROW_COLUMN_SHAPES:
        t = (torch.randn(shape, generator=g) * 3).to(dtype)
        got = ops.row_column_sums(t, p)
        assert torch.equal(got, ops.index_sums([t, t], [0, 1], p)), shape
        ref = ops.row_column_sums_reference(t, p)
        assert torch.allclose(got, ref, rtol=1e-5 if dtype == torch.float64 else 2e-4), shape
    strided = torch.randn(48, 64, generator=g).to(dtype).t()  # copied to contiguous first
    assert torch.equal(ops.row_column_sums(strided, p), ops.index_sums([strided] * 2, [0, 1], p))


def test_row_column_sums_run_on_the_calling_thread_alone():
    """The prefetch's kernel opens no parallel region (it runs beside the trace, on the other
    core): the process's CPU time over wall time while it sums a large weight stays near 1
    with two intra-op threads (index_sums, which splits its work, takes about 2). The lowest of
    three measurements counts: another thread of the process may run now and then, a parallel
    region would every time."""
    import resource
    import time

    t = torch.randn(4096, 4096, dtype=torch.bfloat16)
    ops.row_column_sums(t, 2)

    def cpu_over_wall() -> float:
        time.sleep(0.3)  # intra-op threads woken before stop spinning (OpenMP's wait)
        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(5):
            ops.row_column_sums(t, 2)
        cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return cpu / (wall1 - wall0)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert min(cpu_over_wall() for _ in range(3)) < 1.3
    finally:
        torch.set_num_threads(threads)


def test_row_column_sums_refuse_bad_arguments():
    with pytest.raises(RuntimeError, match="2 or more dims"):
        ops.row_column_sums(torch.randn(5), 2)
    with pytest.raises(RuntimeError, match="p must be 1 or 2"):
        ops.row_column_sums(torch.randn(5, 4), 3)
    with pytest.raises(RuntimeError, match="must be floating point"):
        ops.row_column_sums(torch.ones(5, 4, dtype=torch.int64), 2)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_units_from_sums_of_index_sums_is_grouped_norm(reduce, dtype):
    """grouped_norm is index_sums, mapped to units and reduced by units_from_sums, then cast:
    bit for bit (how scoring uses sums a prefetch took)."""
    tensors, dims, maps, n = members("cpu", dtype)
    sums = ops.index_sums(tensors, dims, 2).split([t.shape[d] for t, d in zip(tensors, dims)])
    units = ops.units_from_sums(list(sums), maps, n, reduce)
    expected = ops.grouped_norm(tensors, dims, maps, n, 2, reduce)
    assert torch.equal(units.to(expected.dtype), expected)
    ref = ops.units_from_sums_reference(sums, maps, n, reduce)
    assert torch.allclose(units, ref, rtol=1e-12)


def test_units_from_sums_refuse_bad_arguments():
    s, m = torch.ones(4, dtype=torch.float64), torch.tensor([0, 1, -1, 1])
    with pytest.raises(RuntimeError, match="one entry per member"):
        ops.units_from_sums([s, s], [m], 2, "sum")
    with pytest.raises(RuntimeError, match="float64"):
        ops.units_from_sums([s.float()], [m], 2, "sum")
    with pytest.raises(RuntimeError, match="3 entries for 4 sums"):
        ops.units_from_sums([s], [m[:3]], 2, "sum")
    with pytest.raises(RuntimeError, match="unit 1 out of range"):
        ops.units_from_sums([s], [m], 1, "sum")
    with pytest.raises(RuntimeError, match="reduce must be"):
        ops.units_from_sums([s], [m], 2, "prod")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_members_with_indices_on_a_gpu_are_refused():
    """The dispatcher sends these to the CUDA kernels (an index tensor is on a GPU)."""
    t = torch.randn(4, 3)
    on_gpu = torch.tensor([0, 1, 0, 1], device="cuda")
    with pytest.raises(RuntimeError, match="member 0 is on cpu, and an index tensor is on a CUDA"):
        ops.grouped_norm([t], [0], [on_gpu], 2)
    with pytest.raises(RuntimeError, match="member 0 is on cpu, and an index tensor is on a CUDA"):
        ops.gather_slices([t], [0], [on_gpu[:2]])


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_grouped_norm_gradcheck(reduce):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    maps = [torch.tensor([0, 1, 1, 2]), torch.tensor([2, 0, 1, 1])]
    for p in (1, 2):
        assert torch.autograd.gradcheck(
            lambda x, y, p=p: ops.grouped_norm([x, y], [1, 0], maps, 3, p, reduce), (a, b)
        )


def test_opcheck():
    tensors, dims, maps, n = members("cpu", torch.float32)
    torch.library.opcheck(
        torch.ops.depgraph_ext.grouped_norm.default, (tensors, dims, maps, n, 2, "sum")
    )
    kept = [torch.tensor([0, 3, 5]), torch.tensor([1, 2])]
    gather_args = ([torch.randn(6, 4), torch.randn(2, 3, 4)], [0, 2], kept)
    torch.library.opcheck(torch.ops.depgraph_ext.gather_slices.default, gather_args)
    torch.library.opcheck(
        torch.ops.depgraph_ext.compact_.default,
        ([torch.randn(6, 4), torch.randn(2, 3, 4)], [0, 2], kept),
    )
    torch.library.opcheck(
        torch.ops.depgraph_ext.expand_.default,
        ([torch.randn(6, 4), torch.randn(2, 3, 4)], [0, 2], kept),
    )
    torch.library.opcheck(
        torch.ops.depgraph_ext.scatter_slices_.default,
        ([torch.randn(6, 4), torch.randn(2, 3, 4)], [0, 2], kept,
         [torch.randn(3, 4), torch.randn(2, 3, 2)]),
    )  # fmt: skip
    torch.library.opcheck(
        torch.ops.depgraph_ext.fill_slices_.default,
        ([torch.randn(6, 4), torch.randn(2, 3, 4)], [0, 2], kept, [0.0, 1.0]),
    )
    torch.library.opcheck(
        torch.ops.depgraph_ext.gather_slices_into.default,
        (*gather_args, [torch.empty(3, 4), torch.empty(2, 3, 2)]),
    )
    torch.library.opcheck(torch.ops.depgraph_ext.row_column_sums.default, (torch.randn(6, 4), 2))
    torch.library.opcheck(
        torch.ops.depgraph_ext.units_from_sums.default,
        ([torch.rand(4, dtype=torch.float64)], [torch.tensor([0, 1, -1, 1])], 2, "sum"),
    )
    torch.library.opcheck(
        torch.ops.depgraph_ext.copy_with_fills_.default,
        ([torch.empty(6, 4), torch.empty(2, 3, 4)], [torch.randn(6, 4), torch.randn(2, 3, 4)],
         [0, 2], kept, [0.0, 1.0]),
    )  # fmt: skip


def test_torch_compile_fullgraph():
    maps = [torch.tensor([0, 1, 1, 0])]

    def score_and_slice(w):
        s = ops.grouped_norm([w], [0], maps, 2)
        return s, ops.gather_slices([w], [0], [torch.tensor([0, 2])])[0]

    w = torch.randn(4, 3)
    compiled = torch.compile(score_and_slice, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(w), score_and_slice(w)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.float64,
        torch.int8,
        torch.int64,
        torch.bool,
        torch.complex128,
    ],
)
@pytest.mark.parametrize("index_dtype", [torch.long, torch.int32])
def test_gather_slices_bit_exact(device, dtype, index_dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, 5, generator=g) * 10
    t = (base.to(dtype) if dtype != torch.complex128 else base.to(dtype) * 1j).to(device)
    cases = [(0, [0, 2, 5]), (1, [6]), (2, [0, 1, 2, 3, 4]), (1, []), (-1, [1, 3])]
    tensors = [t] * len(cases) + [t.transpose(0, 2)]  # the last one non-contiguous
    dims = [d for d, _ in cases] + [1]
    kept = [torch.tensor(k, dtype=index_dtype) for _, k in cases] + [
        torch.tensor([1, 4], dtype=index_dtype)
    ]
    got = ops.gather_slices(tensors, dims, kept)
    want = ops.gather_slices_reference(tensors, dims, kept)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype and a.is_contiguous()
        assert torch.equal(a.cpu(), b.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_compact_in_place_no_new_memory(device):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 6, 4, generator=g).to(device, torch.bfloat16)
    v = torch.randn(50, generator=g).to(device)
    original = (w.clone(), v.clone())
    pointers = (w.data_ptr(), v.data_ptr())
    kept = [torch.tensor([1, 2, 5]), torch.tensor([0, 7, 8, 49])]
    out = ops.compact_([w, v], [1, 0], kept)
    assert (out[0].data_ptr(), out[1].data_ptr()) == pointers
    assert torch.equal(out[0], original[0].index_select(1, kept[0].to(device)))
    assert torch.equal(out[1], original[1].index_select(0, kept[1].to(device)))


def test_release_tails_shrinks_storages_to_their_compacted_prefix():
    """After compact_, the storage is cut to the tensor: same address, the kept values, and
    nothing but them where the storage is read whole (pages past it given back: 64 pages
    here); a storage already the tensor's size is left as it is."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(512, 256, generator=g)  # 512 KiB
    v = torch.randn(10, generator=g)
    kept = torch.arange(0, 512, 4)
    want = w.index_select(0, kept)
    (out,) = ops.compact_([w], [0], [kept])
    pointer = out.data_ptr()
    ops.release_tails_([out, v])
    assert out.data_ptr() == pointer and torch.equal(out, want)
    assert out.untyped_storage().nbytes() == out.numel() * 4 == 128 * 256 * 4
    assert v.untyped_storage().nbytes() == 40
    assert torch.equal(torch.frombuffer(bytearray(out.untyped_storage()), dtype=torch.float32),
                       want.flatten())  # fmt: skip
    big = torch.empty(512, 256)  # the reference: the same cut, by reallocating
    big[:128].copy_(want)
    ops.release_tails_reference([big[:128]])
    assert bytes(big.untyped_storage()) == bytes(out.untyped_storage())


def test_release_tails_refuses_what_is_not_a_storage_prefix():
    w = torch.zeros(8, 8)
    with pytest.raises(RuntimeError, match="member 0 must be a contiguous tensor at the start"):
        ops.release_tails_([w[1:]])
    with pytest.raises(RuntimeError, match="member 0 must be a contiguous tensor at the start"):
        ops.release_tails_([w.t()])
    with pytest.raises(RuntimeError, match="members 0 and 1 share a storage"):
        ops.release_tails_([w[:2], w[:4]])
    with pytest.raises(RuntimeError, match="with Meta tensors"):
        ops.release_tails_([torch.zeros(4, device="meta")])
    assert w.untyped_storage().nbytes() == 256  # nothing changed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_long_rows_move_bit_exact(dtype):
    """Rows of 4 KiB and more are copied with streaming stores: kept rows (a prefix already in
    place, runs, scattered ones) and the inner dim of a 3-d tensor, in place and not."""
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(40, 3, 2048, generator=g) * 100).to(dtype)
    kept_rows = torch.tensor([0, 1, 2, 7, 8, 9, 10, 21, 33, 39])
    kept_mid = torch.tensor([0, 2])
    for dim, kept in ((0, kept_rows), (1, kept_mid)):
        want = base.index_select(dim, kept)
        assert torch.equal(ops.gather_slices([base], [dim], [kept])[0], want)
        t = base.clone()
        assert torch.equal(ops.compact_([t], [dim], [kept])[0], want)


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int32, torch.float64, torch.int8]
)
def test_scattered_columns_move_bit_exact(dtype):
    """Single words kept one by one along the last dim (an MLP neuron's column): rows of every
    length around the 64-byte chunks (tails, a whole chunk kept or dropped, one word kept,
    every word kept), in place and not, against index_select bit for bit; sorted or not."""
    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 16, 31, 32, 33, 64, 100, 1000):
        base = (torch.randn(37, n, generator=g) * 100).to(dtype)
        choices = [torch.nonzero(torch.rand(n, generator=g) < p).view(-1) for p in (0.1, 0.5, 0.9)]
        choices += [torch.arange(n), torch.tensor([n - 1]), torch.arange(0, n, 2)]
        if n >= 64:
            choices.append(torch.cat([torch.arange(0, 32), torch.arange(n - 3, n)]))
        for kept in choices:
            if kept.numel() == 0:
                continue
            want = base.index_select(1, kept)
            assert torch.equal(ops.gather_slices([base], [1], [kept])[0], want), (n, kept)
            moved = base.clone()
            assert torch.equal(ops.compact_([moved], [1], [kept])[0], want), (n, kept)
            shuffled = kept[torch.randperm(kept.numel(), generator=g)]
            assert torch.equal(
                ops.gather_slices([base], [1], [shuffled])[0], base.index_select(1, shuffled)
            )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_device", ["cpu", "same"])
def test_gather_and_compact_refuse_bad_indices(device, index_device):
    """The same refusals with the same messages on every device, indices on the host or on
    the tensors' device; a refused compact_ leaves its tensors as they were."""
    t = torch.randn(4, 3, device=device)

    def k(*values):
        return torch.tensor(values, dtype=torch.long).to(
            device if index_device == "same" else "cpu"
        )

    with pytest.raises(
        RuntimeError, match="member 1: kept index 4 out of range for a dim of size 4"
    ):
        ops.gather_slices([t, t], [0, 0], [k(0, 3), k(0, 4)])
    with pytest.raises(RuntimeError, match="member 0: kept index -1 out of range"):
        ops.gather_slices([t], [1], [k(-1)])
    moved = t.clone()
    with pytest.raises(RuntimeError, match="member 1: kept indices must be strictly increasing"):
        ops.compact_([moved, moved.clone()], [0, 0], [k(0, 2), k(2, 1)])
    with pytest.raises(RuntimeError, match="strictly increasing"):
        ops.compact_([moved], [0], [k(1, 1)])
    assert torch.equal(moved, t)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.compact_([t.t()], [0], [k(0)])
    with pytest.raises(RuntimeError, match="one entry per member"):
        ops.gather_slices([t], [0, 1], [k(0)])
    with pytest.raises(RuntimeError, match="member 0: kept must be 1-d"):
        ops.gather_slices([t], [0], [k(0, 1).view(1, 2)])
    with pytest.raises(RuntimeError, match="dim -3 out of range"):
        ops.gather_slices([t], [-3], [k(0)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_ops_run_on_the_current_stream():
    """Launched on a side stream, with indices and maps on the host and on the device: the
    results are the CPU's once that stream is done."""
    g = torch.Generator().manual_seed(0)
    cpu = [torch.randn(64, 96, generator=g), torch.randn(8, 5, 7, generator=g).bfloat16()]
    maps = [torch.arange(96) % 7, torch.arange(5) % 7]
    kept = [torch.tensor([1, 5, 70, 95]), torch.tensor([0, 4])]
    want_norm = ops.grouped_norm(cpu, [1, 1], maps, 7)
    want_kept = ops.gather_slices(cpu, [1, 1], kept)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        on_gpu = [t.cuda() for t in cpu]
        norm = ops.grouped_norm(on_gpu, [1, 1], [m.cuda() for m in maps], 7)
        gathered = ops.gather_slices(on_gpu, [1, 1], kept)
        compacted = ops.compact_([t.clone() for t in on_gpu], [1, 1], [k.cuda() for k in kept])
    side.synchronize()
    torch.testing.assert_close(norm.cpu(), want_norm, rtol=1e-6, atol=0)
    for a, b, c in zip(gathered, compacted, want_kept):
        assert torch.equal(a.cpu(), c) and torch.equal(b.cpu(), c)


def test_build_info_names_what_was_compiled():
    info = ops.build_info()
    assert info.startswith("depgraph_ext ops: cpu")
    assert info.endswith(f"; torch {torch.__version__}")
    if torch.version.cuda is None:
        assert "cuda" not in info  # a CPU torch: no CUDA kernels can have been built
    if os.environ.get("FORCE_CUDA") == "1":  # the build was made to include them
        assert f", cuda {torch.version.cuda};" in info


def test_the_library_file_names_the_torch_it_was_built_for():
    assert ops.built_for(importlib.util.find_spec("depgraph_ext._ops").origin) == torch.__version__


def test_a_library_built_for_another_torch_is_refused(monkeypatch):
    built = torch.__version__
    other = "2.12.0" if not built.startswith("2.12.") else "2.13.0"  # supported, not this one
    monkeypatch.setattr(torch, "__version__", other)
    message = ops._load()
    assert message is not None
    assert f"built for torch {built}, and this is torch {other}" in message


def test_a_library_from_an_older_checkout_is_refused_by_what_it_lacks():
    """Every op ops.cpp declares is one the loader checks for (a library built before an op
    was added loads, but lacks it: the native backend is then unavailable, with the reason,
    instead of an import that fails)."""
    import re
    from pathlib import Path

    source = (Path(__file__).parents[1] / "csrc" / "ops" / "ops.cpp").read_text()
    declared = re.findall(r'm\.def\(\s*"(\w+)\(', source)
    assert sorted(declared) == sorted(ops.OPS)
    assert ops.missing_ops(torch.ops.depgraph_ext) is None

    class Older:
        build_info = grouped_norm = index_sums = gather_slices = compact_ = None

    message = ops.missing_ops(Older())
    assert "has no expand_, scatter_slices_, fill_slices_" in message
    assert "pip install --no-build-isolation -e ." in message


@pytest.mark.parametrize(
    "dtype",
    [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int8, torch.int64,
     torch.bool, torch.complex64],
)  # fmt: skip
@pytest.mark.parametrize("index_dtype", [torch.long, torch.int32])
def test_scatter_and_fill_slices_are_index_copy_and_index_fill(dtype, index_dtype):
    """In place, several tensors and dims in one call (one tensor twice, along two dims),
    every dim, empty and full index sets, single words and whole rows, a non-contiguous
    source: bit for bit what index_copy_ and index_fill_ do."""
    g = torch.Generator().manual_seed(0)

    def tensor(*shape):
        base = torch.randn(*shape, generator=g) * 10
        return base.to(dtype) if dtype != torch.complex64 else base.to(dtype) * 1j

    cases = [(0, [0, 2, 5]), (1, [6]), (2, [0, 1, 2, 3, 4]), (1, []), (-1, [1, 3]), (0, [3])]
    for value in (0.0, 1.0):
        targets = [tensor(6, 7, 5) for _ in cases[:-1]] + [None]
        targets[-1] = targets[0]  # the first tensor again, along another dim
        indices = [torch.tensor(k, dtype=index_dtype) for _, k in cases]
        dims = [d for d, _ in cases]
        sources = []
        for t, d, k in zip(targets, dims, indices):
            shape = list(t.shape)
            shape[d] = k.numel()
            sources.append(tensor(*shape[::-1]).permute(2, 1, 0))  # non-contiguous
        want = [t.clone() for t in targets]
        want[-1] = want[0]
        ops.scatter_slices_reference(want, dims, indices, sources)
        ops.scatter_slices_(targets, dims, indices, sources)
        assert all(torch.equal(a, b) for a, b in zip(targets, want))
        ops.fill_slices_reference(want, dims, indices, [value] * len(want))
        ops.fill_slices_(targets, dims, indices, [value] * len(targets))
        assert all(torch.equal(a, b) for a, b in zip(targets, want))


def test_scatter_and_fill_refuse_bad_arguments_and_leave_the_tensors():
    """Refusals name the member and the cause; nothing is written when any member is bad."""
    t = torch.randn(4, 3)
    before = t.clone()
    k = torch.tensor([0, 2])
    src = torch.randn(2, 3)
    bad = [
        (
            lambda: ops.scatter_slices_([t, t], [0, 0], [k, torch.tensor([2, 1])], [src, src]),
            "member 1: kept indices must be strictly increasing",
        ),
        (
            lambda: ops.scatter_slices_([t, t], [0, 0], [k, torch.tensor([0, 4])], [src, src]),
            "member 1: kept index 4 out of range for a dim of size 4",
        ),
        (
            lambda: ops.scatter_slices_([t], [0], [k], [torch.randn(3, 3)]),
            "member 0: its source has shape",
        ),
        (
            lambda: ops.scatter_slices_([t], [0], [k], [src.double()]),
            "member 0: its source is Double, the tensor Float",
        ),
        (lambda: ops.scatter_slices_([t], [0], [k], []), "sources must have one entry per member"),
        (
            lambda: ops.scatter_slices_([t.t()], [0], [torch.tensor([0])], [torch.randn(1, 4)]),
            "contiguous",
        ),
        (
            lambda: ops.fill_slices_([t, t], [0, 2], [k, k], [0.0, 0.0]),
            "member 1: dim 2 out of range",
        ),
        (lambda: ops.fill_slices_([t], [0], [k.float()], [0.0]), "must be int32 or int64"),
        (lambda: ops.fill_slices_([t], [0], [k], [0.0, 1.0]), "values must have one entry"),
    ]
    for call, message in bad:
        with pytest.raises(RuntimeError, match=message):
            call()
        assert torch.equal(t, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64, torch.int8])
def test_expand_undoes_compact_in_place(dtype):
    """compact_ then expand_ with the same kept indices puts every kept slice back where it
    was (the others then written back by scatter_slices_): the original bits, in the same
    memory, for single words, whole rows and a middle dim; runs, scattered, all, none kept."""
    g = torch.Generator().manual_seed(0)
    for shape in ((37, 100), (6, 7, 5), (40, 3, 2048)):
        for d in range(len(shape)):
            n = shape[d]
            for kept in (
                torch.nonzero(torch.rand(n, generator=g) < 0.5).view(-1),
                torch.arange(n),
                torch.tensor([n - 1]),
                torch.arange(0, n // 2),
            ):
                t = (torch.randn(*shape, generator=g) * 100).to(dtype)
                original, pointer = t.clone(), t.data_ptr()
                removed = torch.nonzero(~torch.isin(torch.arange(n), kept)).view(-1)
                saved = original.index_select(d, removed)
                view = ops.compact_([t], [d], [kept])[0]
                assert torch.equal(view, original.index_select(d, kept))
                ops.expand_([t], [d], [kept])
                ops.scatter_slices_([t], [d], [removed], [saved])
                assert t.data_ptr() == pointer and torch.equal(t, original), (shape, d, kept)
    with pytest.raises(RuntimeError, match="member 0: kept indices must be strictly increasing"):
        ops.expand_([torch.zeros(4, 3)], [0], [torch.tensor([2, 1])])
    with pytest.raises(RuntimeError, match="expand_ needs a contiguous tensor"):
        ops.expand_([torch.zeros(4, 3).t()], [0], [torch.tensor([0])])


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.bool]
)
def test_gather_into_and_copy_with_fills_are_index_select_and_index_fill(dtype):
    """Into given tensors (reused scratch), every dim, single words and whole rows, long rows
    that are streamed (8 KiB and more) and short ones, empty and full index sets: bit for bit
    what index_select(out=) and copy_ + index_fill_ give."""
    g = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return (torch.randn(*shape, generator=g) * 10).to(dtype)

    cases = [
        ((6, 7, 5), 0, [0, 2, 5]), ((6, 7, 5), 1, [6]), ((6, 7, 5), 2, [0, 1, 2, 3, 4]),
        ((6, 7, 5), 1, []), ((4, 4096), 0, [1, 3]), ((3, 4096), 1, list(range(0, 4096, 3))),
        ((9, 2048), 0, [0, 8]),
    ]  # fmt: skip
    for value in (0.0, 1.0):
        tensors = [tensor(*shape) for shape, _, _ in cases]
        dims = [d for _, d, _ in cases]
        indices = [torch.tensor(k, dtype=torch.long) for _, _, k in cases]
        kept = [
            torch.tensor(sorted(set(range(t.shape[d])) - set(k.tolist())), dtype=torch.long)
            for t, d, k in zip(tensors, dims, indices)
        ]
        outs = [torch.full_like(t, 7) for t in tensors]
        want = [torch.empty_like(t) for t in tensors]
        ops.copy_with_fills_(outs, tensors, dims, indices, [value] * len(cases))
        ops.copy_with_fills_reference(want, tensors, dims, indices, [value] * len(cases))
        assert all(torch.equal(a, b) for a, b in zip(outs, want))
        gathered = [torch.full_like(r, 7) for r in ops.gather_slices_reference(tensors, dims, kept)]
        want = [torch.empty_like(t) for t in gathered]
        ops.gather_slices_into(tensors, dims, kept, gathered)
        ops.gather_slices_into_reference(tensors, dims, kept, want)
        assert all(torch.equal(a, b) for a, b in zip(gathered, want))


def test_gather_into_and_copy_with_fills_refuse_bad_outs_and_write_nothing():
    """An out tensor of the wrong shape, dtype or layout, or one that shares the member's
    memory, is refused by member before anything is written."""
    t = torch.randn(4, 3)
    k = torch.tensor([0, 2])
    out = torch.zeros(2, 3)
    full = torch.zeros(4, 3)
    bad = [
        (lambda: ops.gather_slices_into([t], [0], [k], [torch.zeros(3, 3)]), "has shape"),
        (lambda: ops.gather_slices_into([t], [0], [k], [out.double()]), "is Double"),
        (lambda: ops.gather_slices_into([t], [0], [k], [torch.zeros(3, 2).t()]), "contiguous"),
        (lambda: ops.gather_slices_into([t], [0], [k], [t[:2]]), "shares memory"),
        (lambda: ops.gather_slices_into([t, t], [0, 0], [k, k], [out]), "one tensor per member"),
        (
            lambda: ops.copy_with_fills_([full, t], [t, t], [0, 0], [k, k], [0.0, 0.0]),
            "member 1: its out tensor shares memory",
        ),
        (
            lambda: ops.copy_with_fills_([full], [t], [0], [torch.tensor([2, 0])], [0.0]),
            "strictly increasing",
        ),
        (lambda: ops.copy_with_fills_([full], [t], [0], [k], []), "values must have one entry"),
        (lambda: ops.copy_with_fills_([torch.zeros(4, 4)], [t], [0], [k], [0.0]), "has shape"),
        (
            lambda: ops.copy_with_fills_([full, t], [t, full], [0, 0], [k, k], [0.0, 0.0]),
            "member 0: its out tensor shares memory with member 1",
        ),
        (
            lambda: ops.gather_slices_into([t, full], [0, 0], [k, k], [out, out]),
            "member 1: its out tensor shares memory with the out tensor of member 0",
        ),
    ]  # fmt: skip
    for call, message in bad:
        with pytest.raises(RuntimeError, match=message):
            call()
        assert not out.any() and not full.any()
