"""What a trace on real tensors may spend before a fake trace is the cheaper one.

A small model is traced on its real tensors first: its ops cost microseconds, less than the
Python dispatch of fake tensors. A model whose ops compute a lot (large activations, heavy
convolutions) is cheaper to trace on fake tensors, so the real trace gives up once its ops
have done more work than a fake trace of as many ops would cost.

The work is estimated from the ops' shapes, never measured: how busy the machine is must not
decide which trace runs, since the two can see different code paths (transformers reads an
attention mask's values where it can, and builds the mask where it cannot), and a prune must
come out the same on any machine at any load.
"""

from __future__ import annotations

import itertools
import math

import torch

# Nominal seconds: a fixed allowance, and the allowance per op (about what a fake tensor's
# dispatch costs an op).
ALLOWANCE = 0.1
ALLOWANCE_PER_OP = 4e-4
# Nominal cost of real work on one CPU thread: a multiply-add of a contraction, and an element
# read or written by any other op.
SECONDS_PER_MAC = 1 / 40e9
SECONDS_PER_ELEMENT = 1 / 1.5e9

_aten = torch.ops.aten
_MATMULS = frozenset({_aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm})
_ATTENTION = frozenset(
    getattr(_aten, name)
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_attention_math",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
        "scaled_dot_product_attention",
    )
    if hasattr(_aten, name)
)
_CONVOLUTIONS = frozenset({_aten.convolution, _aten._convolution})
# Ops that read a table at a few rows: their work is what they write.
_LOOKUPS = frozenset(
    getattr(_aten, name)
    for name in (
        "embedding",
        "_embedding_bag",
        "embedding_bag",
        "index_select",
        "index",
        "gather",
        "take",
    )
    if hasattr(_aten, name)
)


def _elements(args) -> int:
    """The elements of every tensor among ``args`` and in their lists and tuples (a stack of
    a decoder's growing list of steps: one C-level pass over its tensors)."""
    total = 0
    for a in args:
        if isinstance(a, torch.Tensor):
            total += a.numel()
        elif type(a) in (list, tuple):
            if all(map(isinstance, a, _TENSOR_TYPES)):
                total += sum(map(_NUMEL, a))
            else:
                total += sum(x.numel() for x in a if isinstance(x, torch.Tensor))
    return total


_TENSOR_TYPES = itertools.repeat(torch.Tensor)
_NUMEL = torch.Tensor.numel


def _macs(packet, args, outputs) -> int | None:
    """Multiply-adds of a contraction (None: the op is none)."""
    if packet in _MATMULS:
        a, b = (args[0], args[1]) if packet in (_aten.mm, _aten.bmm) else (args[1], args[2])
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() < 2:
            return None
        return a.numel() * b.shape[-1]
    if packet in _ATTENTION:
        q, k, v = args[:3]
        if not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in (q, k, v)):
            return None
        batch = math.prod(q.shape[:-2])
        return batch * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    if packet in _CONVOLUTIONS:
        x, w = args[0], args[1]
        if not (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)) or not outputs:
            return None
        per_output = w.numel() // max(w.shape[0], 1)  # (Cin / groups) x kernel
        transposed = len(args) > 6 and args[6] is True
        return (x.numel() if transposed else outputs[0].numel()) * per_output
    return None


def op_work(func, args, outputs) -> float:
    """Nominal seconds a real op's work costs: the multiply-adds of a contraction, else the
    elements it reads and writes (a view: none; a lookup: what it writes, twice)."""
    if func.is_view:
        return 0.0
    packet = func.overloadpacket
    macs = _macs(packet, args, outputs)
    if macs is not None:
        return macs * SECONDS_PER_MAC
    written = sum(map(_NUMEL, outputs))
    read = written if packet in _LOOKUPS else _elements(args)
    return (read + written) * SECONDS_PER_ELEMENT
