"""The scatter-back oracle: check that a pruned model computes what the plan says it should.

Put zeros back where the plan removed slices into a copy of the *original* model (where zero
would not remove a unit, what does: BatchNorm ``running_var`` gets 1 so removed channels
normalise to exactly zero; a weight norm's direction gets 1 where its scale is zeroed).
Wherever removed units contribute nothing (conv/BN channels, MLP neurons, attention heads),
that original-shaped model must compute what the pruned model computes.
"""

from __future__ import annotations

import copy

import torch

from .graph.computed import RemovedFills
from .graph.trace import fresh_copies, normalize_inputs, output_tensors


def changed_tensors(plan) -> dict:
    """What a plan changes, each tensor once: a ``PruneResult`` (its plan, tied names left out,
    and the buffers outside the state_dict) or a mapping name -> {dim: kept indices}."""
    tensors = getattr(plan, "tensors", None)
    return dict(tensors if tensors is not None and hasattr(plan, "tied") else plan)


def _named(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by every name they have (tied ones under each)."""
    return dict(model.named_parameters(remove_duplicate=False)) | dict(
        model.named_buffers(remove_duplicate=False)
    )


def scatter_back(original: torch.nn.Module, plan) -> torch.nn.Module:
    """A copy of ``original`` with every slice the plan removes set to zero (variances to 1;
    a weight norm's direction to 1 along its norm dim; with a ``PruneResult``, a tensor the
    model divides by to 1)."""
    model = model_copy(original)
    tensors = _named(model)
    fills = RemovedFills(model, getattr(plan, "divisors", ()))
    with torch.no_grad():
        for name, dims in changed_tensors(plan).items():
            t = tensors[name]
            for d, kept in dims.items():
                removed = torch.ones(t.shape[d], dtype=torch.bool)
                removed[kept] = False
                index = [slice(None)] * t.dim()
                index[d] = removed.to(t.device)
                t[tuple(index)] = fills.of(name, d)
    return model


def model_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``copy.deepcopy(model)``, also where a module holds a tensor computed with grad as a
    plain attribute (torch.nn.utils.weight_norm's and torch.nn.utils.prune's weight, which
    their hooks compute again at every forward): deepcopy refuses such tensors, and a
    detached copy stands for them."""
    memo: dict = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def outputs_of(
    model: torch.nn.Module, example_inputs, seed: int | None = None
) -> list[torch.Tensor]:
    """The model's tensor outputs without grad. With ``seed``, the forward draws its random
    numbers (ViLT samples image patches) from that seed, and the caller's RNG state is left
    as it was."""
    args, kwargs = fresh_copies(normalize_inputs(example_inputs))  # (a forward may write them)
    with torch.no_grad(), torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        out = model(*args, **kwargs)
    return output_tensors(out)


def assert_scatter_back_equal(
    original: torch.nn.Module,
    pruned: torch.nn.Module,
    plan,
    example_inputs,
    *,
    rtol: float = 1e-9,
    atol: float = 1e-9,
    seed: int | None = 0,
) -> None:
    """Raise AssertionError unless the pruned model matches the scatter-back of the original.

    ``plan``: the ``PruneResult`` (or its ``plan``, a mapping name -> {dim: kept indices}; a
    result also brings the buffers outside the state_dict). ``original`` must be an unpruned
    copy (e.g. ``copy.deepcopy`` taken before ``prune``), in
    the same training mode as ``pruned``. Use float64 models for tight tolerances. Both
    forwards draw random numbers from ``seed`` (None: from the current RNG state).
    """
    expected = outputs_of(scatter_back(original, plan), example_inputs, seed)
    actual = outputs_of(pruned, example_inputs, seed)
    for i, dims in getattr(plan, "outputs", {}).items():  # outputs that shrink: what they kept
        for d, kept in sorted(dims.items()):
            expected[i] = expected[i].index_select(d, kept.to(expected[i].device))
    assert len(expected) == len(actual), f"{len(actual)} outputs, expected {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert e.shape == a.shape, f"output {i}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(
            a, e, rtol=rtol, atol=atol, msg=lambda m, i=i: f"output {i}: {m}"
        )


def assert_kept_bit_identical(original: torch.nn.Module, pruned: torch.nn.Module, plan) -> None:
    """Every pruned tensor equals the original's kept slices, bit for bit (``plan``: a
    ``PruneResult`` or a mapping name -> {dim: kept indices}; every name checked, tied ones
    too)."""
    before, after = _named(original), _named(pruned)
    planned = dict(plan.plan) | plan.non_persistent if hasattr(plan, "tied") else plan
    for name, dims in planned.items():
        expected = before[name].detach()
        for d, kept in sorted(dims.items()):
            expected = expected.index_select(d, kept)
        got = after[name].detach()
        assert got.shape == expected.shape, f"{name}: {tuple(got.shape)} != {tuple(expected.shape)}"
        assert torch.equal(
            got.reshape(-1).view(torch.uint8) if got.is_floating_point() else got,
            expected.reshape(-1).view(torch.uint8) if expected.is_floating_point() else expected,
        ), f"{name} differs"
