"""Helpers of the test suite: the backends to compare, model state snapshots, and the
prune-and-check routine every model test uses (python/native parity, the oracle)."""

from __future__ import annotations

import copy

import torch

import depgraph_ext as dx
from depgraph_ext.testing import assert_kept_bit_identical, assert_scatter_back_equal

BACKENDS = ["python", "native"] if dx.native_available() else ["python"]

# Every prune the zoo tests ran, by what was pruned: its PruneResult.timings. The session's
# slowest are listed at its end (conftest.py); timings are never asserted (bench/ has them).
PRUNE_TIMINGS: list[tuple[str, dict[str, float]]] = []


def record_prune(what: str, result) -> None:
    PRUNE_TIMINGS.append((what, dict(result.timings)))


def state_of(model: torch.nn.Module) -> dict:
    """Everything prune may touch: tensors (values, identity), module attributes, modes."""
    tensors = {
        n: (id(t), t.detach().clone(), t.requires_grad)
        for n, t in list(model.named_parameters()) + list(model.named_buffers())
    }
    attrs = {
        n: {k: copy.copy(v) for k, v in vars(m).items() if not k.startswith("_")}
        for n, m in model.named_modules()
    }
    hooks = {
        n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()
    }
    return {"tensors": tensors, "attrs": attrs, "hooks": hooks}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN equals the same NaN)."""
    return a.dtype == b.dtype and torch.equal(
        a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    )


def assert_same_state(before: dict, after: dict) -> None:
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, (ident, value, rg) in before["tensors"].items():
        ident2, value2, rg2 = after["tensors"][name]
        assert ident == ident2, f"{name}: a different tensor object"
        assert rg == rg2, f"{name}: requires_grad changed"
        assert value.shape == value2.shape and same_bits(value, value2), f"{name} changed"
    assert before["attrs"] == after["attrs"]
    assert before["hooks"] == after["hooks"]


def prune_and_check(
    model: torch.nn.Module,
    inputs,
    *,
    rtol=1e-9,
    atol=1e-9,
    oracle=True,
    require_change=True,
    **kwargs,
):
    """Prune copies with every backend; check identical plans, the scatter-back oracle and
    bit-identical kept weights. Returns (pruned model, result) of the last backend."""
    original = copy.deepcopy(model)
    results = {}
    for backend in BACKENDS:
        m = copy.deepcopy(model)
        results[backend] = (m, dx.prune(m, inputs, backend=backend, **kwargs))
    plans = [r.plan for _, r in results.values()]
    for plan in plans[1:]:
        assert plan.keys() == plans[0].keys()
        for name in plan:
            assert plan[name].keys() == plans[0][name].keys(), name
            for d in plan[name]:
                assert torch.equal(plan[name][d], plans[0][name][d]), (name, d)
    pruned, result = results[BACKENDS[-1]]
    if require_change:
        assert result.plan, "nothing was pruned"
        assert result.params_after < result.params_before
    assert_kept_bit_identical(original, pruned, result.plan)
    if oracle:
        assert_scatter_back_equal(original, pruned, result.plan, inputs, rtol=rtol, atol=atol)
    return pruned, result
