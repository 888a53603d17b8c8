"""Training continuity (optimizer state and gradients sliced with the weights) and the
group-sparsity regulariser."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_importance import X, make_net
from torch import nn
from torch.nn import functional as F

import depgraph_ext as dx
from helpers import BACKENDS, assert_same_state, state_of


def _train(model, opt, steps=3):
    for i in range(steps):
        torch.manual_seed(i)
        opt.zero_grad()
        model(torch.randn(4, 3, 6, 6, dtype=torch.float64)).square().mean().backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=1e-3),
        lambda ps: torch.optim.AdamW(ps, lr=1e-3, amsgrad=True),
    ],
)
def test_optimizer_state_and_grads_are_sliced_with_the_weights(make_opt):
    model = make_net().train()
    opt = make_opt(model.parameters())
    _train(model, opt)
    params = dict(model.named_parameters())
    state_before = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in params.items()}
    grads_before = {n: p.grad.clone() for n, p in params.items()}
    result = dx.prune(model.eval(), X, ratio=0.5, optimizer=opt)
    assert result.plan
    for name, p in model.named_parameters():
        assert p is params[name]  # the optimizer still holds the same Parameter objects
        dims = result.plan.get(name, {})
        for key, old in state_before[name].items():
            new = opt.state[p][key]
            if old.dim() == 0:
                assert torch.equal(new, old)  # step counters untouched
                continue
            expected = old
            for d, kept in sorted(dims.items()):
                expected = expected.index_select(d, kept)
            assert new.shape == p.shape and torch.equal(new, expected), (name, key)
        expected = grads_before[name]
        for d, kept in sorted(dims.items()):
            expected = expected.index_select(d, kept)
        assert torch.equal(p.grad, expected)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model.train(), opt, steps=2)  # training goes on with the same optimizer
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_state_that_cannot_be_sliced_is_refused_before_any_change():
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.state[model.c1.weight]["factored_row"] = torch.zeros(8)  # like Adafactor's factors
    before = state_of(model)
    with pytest.raises(dx.InvalidArgumentError, match="factored_row"):
        dx.prune(model, X, optimizer=opt)
    assert_same_state(before, state_of(model))
    assert opt.state[model.c1.weight]["factored_row"].shape == (8,)


def test_a_failure_while_slicing_leaves_the_optimizer_as_it_was(monkeypatch):
    from depgraph_ext.pruning import apply

    model = make_net().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train(model, opt)
    model.eval()
    before = {id(p): {k: v for k, v in opt.state[p].items()} for p in model.parameters()}
    model_before = state_of(model)
    real = apply.gather
    calls = {"n": 0}

    def fail_late(t, dims):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("injected")
        return real(t, dims)

    monkeypatch.setattr(apply, "gather", fail_late)
    with pytest.raises(RuntimeError, match="injected"):
        dx.prune(model, X, optimizer=opt, backend="python")
    assert_same_state(model_before, state_of(model))
    for p in model.parameters():
        for k, v in opt.state[p].items():
            assert v is before[id(p)][k]


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_goes_on_while_the_last_steps_graph_is_alive(in_place, backend):
    # A training loop's last loss is still referenced when the model is pruned: its graph
    # holds autograd's gradient accumulators of the parameters, with their old shapes.
    model = make_net().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _train(model, opt, steps=1)
    loss = model(X).square().mean()
    loss.backward()
    dx.prune(model.eval(), X, ratio=0.5, optimizer=opt, in_place=in_place, backend=backend)
    fresh = copy.deepcopy(model)  # (no autograd history)
    for m in (model, fresh):
        m.zero_grad()
        m(X).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert p.grad.shape == p.shape, name
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    opt.step()
    assert loss.grad_fn is not None  # (the old graph was alive throughout)


class _SparseLookup(nn.Module):
    """An embedding with sparse gradients (a recommender's, word2vec's) before an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16, sparse=True)
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, ids):
        return self.b(torch.relu(self.a(self.embed(ids))))


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sparse_gradient_is_sliced_with_its_weight(in_place, backend):
    """nn.Embedding(sparse=True) keeps a sparse gradient (the prune failed in torch's
    layout code with "unsupported memory format option"): it is sliced as the dense one
    would be, stays sparse, and SparseAdam goes on."""
    torch.manual_seed(0)
    model, ids = _SparseLookup().double(), torch.randint(0, 20, (4, 5))
    opt = torch.optim.SparseAdam(list(model.embed.parameters()))
    model(ids).square().mean().backward()
    opt.step()
    dense = model.embed.weight.grad.to_dense()
    result = dx.prune(model, ids, ratio=0.5, optimizer=opt, in_place=in_place, backend=backend)
    [kept] = result.plan["embed.weight"].values()
    grad = model.embed.weight.grad
    assert grad.is_sparse and grad.shape == model.embed.weight.shape == (20, 8)
    torch.testing.assert_close(grad.to_dense(), dense[:, kept], rtol=0, atol=0)
    assert opt.state[model.embed.weight]["exp_avg"].shape == (20, 8)
    model.zero_grad()
    model(ids).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("importance", ["taylor", "fisher"])
def test_gradient_criteria_score_a_sparse_gradient_as_its_dense_twin(importance):
    """Taylor and Fisher scores from an nn.Embedding(sparse=True)'s gradient (Taylor failed
    inside torch: no as_strided for sparse tensors) are those of the same model with dense
    gradients: the same plan."""
    torch.manual_seed(0)
    sparse, ids = _SparseLookup().double(), torch.randint(0, 20, (4, 5))
    dense = copy.deepcopy(sparse)
    dense.embed.sparse = False
    plans = []
    for model in (sparse, dense):
        with dx.collect_fisher(model):
            for _ in range(2):
                model.zero_grad()
                model(ids).square().mean().backward()
        plans.append(dx.prune(model, ids, ratio=0.5, importance=importance).plan)
    assert sparse.embed.weight.grad.is_sparse and not dense.embed.weight.grad.is_sparse
    assert plans[0].keys() == plans[1].keys()
    for name, dims in plans[0].items():
        for d, kept in dims.items():
            assert torch.equal(kept, plans[1][name][d]), (name, d)


# -- group sparsity ------------------------------------------------------------------------------
def _direct_penalty(reg: dx.GroupSparsity, lam: float) -> torch.Tensor:
    """lam * sum_k gamma_k * ||w_k||_2 written from the groups' member slices, in autograd."""
    params = dict(reg.model.named_parameters())
    total = torch.zeros((), dtype=torch.float64)
    for group in reg.groups:
        squares = torch.zeros(group.num_units, dtype=torch.float64)
        for m in group.members:
            if m.name not in params:
                continue
            w = params[m.name]
            w = (w.abs() if w.is_complex() else w).double().square()  # (|z|^2 of complex ones)
            others = [d for d in range(w.dim()) if d != m.dim]
            per_index = w.sum(dim=others) if others else w
            squares = squares.index_add(0, m.units, per_index[m.indices])
        gamma = reg.gamma[torch.from_numpy(group.unit_ids)]
        total = total + (gamma * torch.sqrt(squares + 1e-12)).sum()
    return lam * total


@pytest.mark.parametrize("backend", BACKENDS)
def test_penalty_and_its_gradient_match_autograd_of_the_reference(backend):
    model = make_net()
    reg = dx.GroupSparsity(model, X, lam=0.01, backend=backend)
    penalty = reg.penalty()
    expected = _direct_penalty(reg, 0.01)
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-10, atol=0)
    params = [p for p in model.parameters()]
    got = torch.autograd.grad(penalty, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for g, w in zip(got, want):
        if w is None:
            assert g is None or not g.any()
            continue
        torch.testing.assert_close(g.double(), w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_complex_model_is_regularised_by_its_moduli(backend):
    """Unit norms of complex weights are made of ``|z|`` (the native kernel refused them)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Linear(10, 3))
    model = model.to(torch.complex128)
    reg = dx.GroupSparsity(model, torch.randn(4, 6, dtype=torch.complex128), 0.01, backend=backend)
    penalty, expected = reg.penalty(), _direct_penalty(reg, 0.01)
    torch.testing.assert_close(penalty.double(), expected, rtol=1e-10, atol=0)
    params = list(model.parameters())
    got = torch.autograd.grad(penalty, params, allow_unused=True)
    want = torch.autograd.grad(expected, params, allow_unused=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_apply_gradients_adds_the_penalty_gradient_to_grad():
    model = make_net()
    reg = dx.GroupSparsity(model, X, lam=0.1)
    model(X).sum().backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    reg.apply_gradients()
    model.zero_grad()
    model(X).sum().backward()
    reg.penalty().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(before[n] + (p.grad - before[n]), p.grad)
    # and it equals loss + penalty in one backward
    model.zero_grad()
    (model(X).sum() + reg.penalty()).backward()
    with_loss = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(X).sum().backward()
    reg.apply_gradients()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, with_loss[n], rtol=1e-12, atol=1e-15)


def test_scales_run_from_alpha_for_the_least_to_one_for_the_most_important():
    reg = dx.GroupSparsity(make_net(), X, alpha=16)
    for group, norms in zip(reg.groups, reg.scores()):
        gamma = reg.gamma[torch.from_numpy(group.unit_ids)]
        assert gamma[norms.argmin()] == pytest.approx(16.0)
        assert gamma[norms.argmax()] == pytest.approx(1.0)
        assert (np.diff(gamma[norms.argsort()].numpy()) <= 1e-12).all()  # monotone


def test_training_with_the_penalty_drives_the_least_important_units_to_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    x = torch.randn(256, 8, dtype=torch.float64)
    with torch.no_grad():
        y = teacher(x)
    reg = dx.GroupSparsity(model, x, lam=0.005, alpha=16)
    [initial] = reg.scores()
    least = initial.argsort()[:4]
    most = initial.argsort()[-4:]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        (F.mse_loss(model(x), y) + reg.penalty()).backward()
        opt.step()
    [final] = reg.scores()
    assert (final[least] < 0.05 * initial[least]).all(), final[least] / initial[least]
    assert (final[most] > 0.3 * initial[most]).all(), final[most] / initial[most]
    # and pruning afterwards removes units the penalty already drove to zero
    keep = dx.prune(model, x, ratio=0.25).plan["0.weight"][0]
    removed = torch.tensor(sorted(set(range(16)) - set(keep.tolist())))
    assert removed.numel() == 4 and (final[removed] < 0.05 * initial[removed]).all()


def test_regulariser_refuses_a_model_pruned_since():
    model = make_net()
    reg = dx.GroupSparsity(model, X)
    dx.prune(model, X)
    with pytest.raises(dx.PruningError, match="build a new GroupSparsity"):
        reg.penalty()


@pytest.mark.parametrize("kwargs, match", [(dict(lam=-1.0), "lam"), (dict(alpha=0.5), "alpha")])
def test_bad_regulariser_arguments(kwargs, match):
    with pytest.raises(dx.InvalidArgumentError, match=match):
        dx.GroupSparsity(make_net(), X, **kwargs)
