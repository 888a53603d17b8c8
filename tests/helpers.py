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
    attrs = {  # (a tensor kept as a plain attribute, a hook's weight: by identity)
        n: {
            k: ("tensor", id(v)) if isinstance(v, torch.Tensor) else copy.copy(v)
            for k, v in vars(m).items()
            if not k.startswith("_")
        }
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
    plans = [r.plan | r.non_persistent for _, r in results.values()]
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
    assert_plan_names_the_state_dict(original, pruned, result)
    assert_kept_bit_identical(original, pruned, result)
    if oracle:
        assert_scatter_back_equal(original, pruned, result, inputs, rtol=rtol, atol=atol)
    return pruned, result


def to_fake_device(model: torch.nn.Module, inputs, device: str = "cuda"):
    """A copy of ``model`` whose parameters and buffers are fake tensors on ``device``, and the
    inputs there too: a model "on a GPU" without one (a CUDA build of torch makes fake cuda
    tensors anywhere). Parameters stay Parameters with their ``requires_grad``."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    model = copy.deepcopy(model)
    moved: dict[int, torch.Tensor] = {}  # one tensor for every name it has (tied weights)
    with fake:
        for module in model.modules():
            for key, p in module._parameters.items():
                if p is not None and id(p) not in moved:
                    on = fake.from_tensor(p.detach()).to(device)
                    moved[id(p)] = torch.nn.Parameter(on, p.requires_grad)
                if p is not None:
                    module._parameters[key] = moved[id(p)]
            for key, b in module._buffers.items():
                if b is not None and id(b) not in moved:
                    moved[id(b)] = fake.from_tensor(b).to(device)
                if b is not None:
                    module._buffers[key] = moved[id(b)]

        def move(x):
            return fake.from_tensor(x).to(device) if isinstance(x, torch.Tensor) else x

        if isinstance(inputs, dict):
            inputs = {k: move(v) for k, v in inputs.items()}
        elif isinstance(inputs, (tuple, list)):
            inputs = type(inputs)(move(v) for v in inputs)
        else:
            inputs = move(inputs)
    return model, inputs


def groups_of(dg: dx.DependencyGraph) -> list:
    """Every group as its kind, sizes, exactness and members (tensor, dim, indices, units),
    in a canonical order: what two graphs of one model must agree on."""
    return sorted(
        (
            g.kind,
            g.num_units,
            g.num_prunable,
            g.exact,
            sorted((m.name, m.dim, m.indices.tolist(), m.units.tolist()) for m in g.members),
        )
        for g in dg.groups
    )


def assert_plan_names_the_state_dict(original, pruned, result) -> None:
    """The plan names exactly the state_dict keys whose tensors changed (tied names too), and
    the changed buffers outside the state_dict apart."""
    before, after = original.state_dict(), pruned.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if before[k].shape != after[k].shape}
    assert changed == set(result.plan), changed ^ set(result.plan)
    every = dict(original.named_buffers(remove_duplicate=False))
    every |= dict(original.named_parameters(remove_duplicate=False))
    pruned_every = dict(pruned.named_buffers(remove_duplicate=False))
    outside = {k for k in every.keys() - before.keys() if every[k].shape != pruned_every[k].shape}
    assert outside == set(result.non_persistent)
    for alias, name in result.tied.items():
        assert every[alias] is every[name]
        assert alias in result.plan or alias in result.non_persistent


def tiny_llama(**config):
    """A seeded transformers LlamaForCausalLM in eval mode from a LlamaConfig of ``config``
    (skips the test where transformers is missing)."""
    import pytest

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
