"""Importance criteria against direct computations over each group's member slices."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import depgraph_ext as dx
from depgraph_ext.pruning.importance import fisher_statistics, normalize
from helpers import BACKENDS, assert_same_state, prune_and_check, state_of


class Net(nn.Module):
    """A residual group (c1, b1, c2 in and out, b2, c3 in, fc1's first 8 inputs), a concat piece
    (c3, b3, fc1's last 6 inputs) and a group without BatchNorm (fc1 out, fc2 in)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6)
        self.fc1, self.fc2 = nn.Linear(14, 10), nn.Linear(10, 4)

    def forward(self, x):
        a = F.relu(self.b1(self.c1(x)))
        b = F.relu(self.b2(self.c2(a)) + a)
        c = F.relu(self.b3(self.c3(b)))
        z = torch.cat([b.mean((2, 3)), c.mean((2, 3))], 1)
        return self.fc2(F.relu(self.fc1(z)))


def make_net() -> Net:
    torch.manual_seed(0)
    net = Net().double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-2, 2)
                m.bias.uniform_(-1, 1)
    return net.eval()


X = torch.randn(4, 3, 6, 6, dtype=torch.float64)


def member_contributions(dg, magnitude, p, keep_member=lambda name: True):
    """{unit id: [contribution of each member, in forward order]} from ``dg.groups`` members
    (built independently of the scoring code) and per-element ``magnitude(name, param)``."""
    params = dict(dg.model.named_parameters())
    order = {n: i for i, n in enumerate(_use_order(dg))}
    out: dict[int, list[tuple[int, float]]] = {}
    for group in dg.groups:
        for m in group.members:
            if m.name not in params or not keep_member(m.name):
                continue
            w = magnitude(m.name, params[m.name]).double()
            w = w.abs() if p == 1 else w.square()
            others = [d for d in range(w.dim()) if d != m.dim]
            per_index = w.sum(dim=others) if others else w
            sums: dict[int, float] = {}
            for idx, unit in zip(m.indices.tolist(), m.units.tolist()):
                sums[unit] = sums.get(unit, 0.0) + float(per_index[idx])
            for unit, value in sums.items():
                out.setdefault(int(group.unit_ids[unit]), []).append((order[m.name], value))
    return out


def _use_order(dg):
    first = {}
    for node in dg.graph.nodes:
        for v in node.inputs:
            first.setdefault(v, node.index)
    return sorted(dg.graph.params, key=lambda n: first.get(dg.graph.params[n], 10**9))


def reduce_direct(contribs, reduction, num_units):
    out = np.full(num_units, np.nan)
    for unit, values in contribs.items():
        v = np.array([x for _, x in sorted(values, key=lambda t: t[0])])
        out[unit] = {
            "sum": v.sum(),
            "mean": v.mean(),
            "max": v.max(),
            "prod": v.prod(),
            "first": v[0],
        }[reduction]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reduction", ["sum", "mean", "max", "prod", "first"])
def test_magnitude_every_reduction_matches_direct(backend, p, reduction):
    dg = dx.DependencyGraph(make_net(), X, backend=backend)
    imp = dx.MagnitudeImportance(p, reduction=reduction, normalization=None)
    got = imp.scores(dg).numpy()
    expected = reduce_direct(
        member_contributions(dg, lambda n, w: w.detach(), p), reduction, dg.resolution.num_units
    )
    scored = ~np.isnan(expected)
    assert scored.sum() >= 8 + 6 + 10
    np.testing.assert_allclose(got[scored], expected[scored], rtol=1e-9)


def test_first_is_the_root_layer_alone():
    dg = dx.DependencyGraph(make_net(), X)
    got = dx.MagnitudeImportance(2, reduction="first", normalization=None).scores(dg)
    net = dg.model
    root = {g.index: g.members[0].name for g in dg.groups}
    c1_rows = net.c1.weight.detach().square().sum((1, 2, 3))
    group = next(g for g in dg.groups if any(m.name == "c1.weight" for m in g.members))
    units = [m for m in group.members if m.name == "c1.weight" and m.dim == 0][0]
    assert root  # groups exist
    np.testing.assert_allclose(
        got[group.unit_ids[units.units.numpy()]].numpy(), c1_rows[units.indices].numpy(), rtol=1e-12
    )


@pytest.mark.parametrize("normalization", ["mean", "max", "sum", "standardization", "lamp"])
def test_normalizations_within_each_group(normalization):
    dg = dx.DependencyGraph(make_net(), X)
    raw = dx.MagnitudeImportance(2, normalization=None).scores(dg).numpy()
    got = normalize(dg, torch.from_numpy(raw.copy()), normalization).numpy()
    for group in dg.groups:
        x = raw[group.unit_ids]
        if normalization == "lamp":
            expected = np.array([v / x[x >= v].sum() for v in x])
        elif normalization == "standardization":
            expected = (x - x.mean()) / x.std()
        else:
            expected = x / getattr(x, normalization)()
        np.testing.assert_allclose(got[group.unit_ids], expected, rtol=1e-9)
        # the order within a group never changes
        assert (
            np.argsort(got[group.unit_ids], kind="stable") == np.argsort(x, kind="stable")
        ).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bn_scale_sums_gamma_of_every_batchnorm_and_skips_groups_without(backend):
    dg = dx.DependencyGraph(make_net(), X, backend=backend)
    got = dx.BNScaleImportance(normalization=None).scores(dg).numpy()
    net = dg.model
    res_group = next(g for g in dg.groups if any(m.name == "b1.weight" for m in g.members))
    b1 = [m for m in res_group.members if m.name == "b1.weight"][0]
    expected = (net.b1.weight.abs() + net.b2.weight.abs()).detach()[b1.indices].numpy()
    np.testing.assert_allclose(got[res_group.unit_ids[b1.units.numpy()]], expected, rtol=1e-12)
    fc_group = next(g for g in dg.groups if any(m.name == "fc2.weight" for m in g.members))
    assert np.isnan(got[fc_group.unit_ids]).all()
    # pruning by bn_scale leaves the unscored fc1/fc2 group whole
    model = make_net()
    result = dx.prune(model, X, importance="bn_scale", backend=backend)
    assert model.fc1.out_features == 10  # the concat joins c1's and c3's channels: 14 units
    assert model.c1.out_channels + model.c3.out_channels == model.fc1.in_features == 7
    assert result.units["channels"][1] < result.units["channels"][0]


def _with_grads(seed=1):
    net = make_net()
    torch.manual_seed(seed)
    net.train()
    loss = net(X).square().mean()
    loss.backward()
    return net.eval()


@pytest.mark.parametrize("backend", BACKENDS)
def test_taylor_is_w_times_grad_over_every_member(backend):
    net = _with_grads()
    net.c3.weight.requires_grad_(False)
    net.c3.weight.grad = None  # a frozen member does not score
    dg = dx.DependencyGraph(net, X, backend=backend)
    got = dx.TaylorImportance(normalization=None).scores(dg).numpy()
    contribs = member_contributions(
        dg,
        lambda n, w: w.detach() * w.grad,
        1,
        lambda n: dict(net.named_parameters())[n].grad is not None,
    )
    expected = reduce_direct(contribs, "sum", dg.resolution.num_units)
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-9)


def test_taylor_without_gradients_is_a_clear_error_and_model_untouched():
    model = make_net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(dx.MissingGradientsError, match="backward"):
        dx.prune(model, X, importance="taylor")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fisher_averages_squared_gradients_over_batches(backend):
    net = make_net()
    batches = [torch.randn(4, 3, 6, 6, dtype=torch.float64) for _ in range(3)]
    grads = {n: [] for n, _ in net.named_parameters()}
    with dx.collect_fisher(net):
        for xb in batches:  # .grad accumulates across batches on purpose: stats must not care
            net(xb).square().mean().backward()
            for n, p in net.named_parameters():
                grads[n].append(p.grad.clone())
    per_batch = {n: [g[0]] + [g[i] - g[i - 1] for i in range(1, 3)] for n, g in grads.items()}
    fisher = {n: sum(g.square() for g in gs) / 3 for n, gs in per_batch.items()}
    params = dict(net.named_parameters())
    for n in fisher:
        torch.testing.assert_close(
            fisher_statistics(params[n]).double(), fisher[n], rtol=1e-5, atol=1e-12
        )
    dg = dx.DependencyGraph(net, X, backend=backend)
    got = dx.FisherImportance(normalization=None).scores(dg).numpy()
    contribs = member_contributions(dg, lambda n, w: w.detach().square() * fisher[n], 1)
    expected = reduce_direct(contribs, "sum", dg.resolution.num_units)
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-5)
    # the summed .grad squared would be a different (wrong) statistic
    wrong = member_contributions(
        dg, lambda n, w: w.detach().square() * params[n].grad.square() / 9, 1
    )
    assert not np.allclose(
        reduce_direct(wrong, "sum", dg.resolution.num_units)[ok], expected[ok], rtol=1e-3
    )


def test_fisher_without_statistics_is_a_clear_error():
    with pytest.raises(dx.MissingGradientsError, match="collect_fisher"):
        dx.prune(make_net(), X, importance="fisher")


def test_fisher_statistics_are_sliced_with_the_weights():
    net = make_net()
    with dx.collect_fisher(net):
        net(X).square().mean().backward()
    stats = {n: fisher_statistics(p).clone() for n, p in net.named_parameters()}
    result = dx.prune(net, X, importance="fisher", ratio=0.5)
    for name, p in net.named_parameters():
        s = fisher_statistics(p)
        assert s.shape == p.shape
        expected = stats[name]
        for d, kept in sorted(result.plan.get(name, {}).items()):
            expected = expected.index_select(d, kept)
        assert torch.equal(s, expected)


def test_random_is_reproducible_by_seed():
    dg = dx.DependencyGraph(make_net(), X)
    a = dx.RandomImportance(seed=3).scores(dg)
    assert torch.equal(a, dx.RandomImportance(seed=3).scores(dg))
    assert not torch.equal(a, dx.RandomImportance(seed=4).scores(dg))
    m1, m2 = make_net(), make_net()
    r1 = dx.prune(m1, X, importance=dx.RandomImportance(seed=7))
    r2 = dx.prune(m2, X, importance=dx.RandomImportance(seed=7))
    assert all(torch.equal(r1.plan[n][d], r2.plan[n][d]) for n in r1.plan for d in r1.plan[n])


def test_lamp_is_l2_normalised_by_lamp():
    dg = dx.DependencyGraph(make_net(), X)
    lamp = dx.LAMPImportance().scores(dg)
    raw = dx.MagnitudeImportance(2, normalization=None).scores(dg)
    torch.testing.assert_close(lamp, normalize(dg, raw, "lamp"), equal_nan=True)


class Cubed(dx.GroupImportance):
    """A user's criterion: sum of |w|^3 over the group."""

    def magnitudes(self, name, param):
        return param.detach().abs() ** 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_user_criterion_plugs_in(backend):
    dg = dx.DependencyGraph(make_net(), X, backend=backend)
    got = Cubed(normalization=None).scores(dg).numpy()
    expected = reduce_direct(
        member_contributions(dg, lambda n, w: w.detach().abs() ** 3, 1),
        "sum",
        dg.resolution.num_units,
    )
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-9)
    model = make_net()
    dx.prune(model, X, importance=Cubed())
    assert model.c1.out_channels + model.c3.out_channels == 7 and model.fc1.out_features == 5


class WrongShape(dx.Importance):
    def scores(self, dg):
        return torch.zeros(3)


@pytest.mark.parametrize(
    "importance, match",
    [
        (WrongShape(), "must return a tensor of shape"),
        ("taylor-ish", "importance must be one of"),
        (42, "importance must be a name"),
    ],
)
def test_bad_importance_is_refused_and_model_untouched(importance, match):
    model = make_net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(dx.InvalidArgumentError, match=match):
        dx.prune(model, X, importance=importance)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reduction="median"), "reduction must be one of"),
        (dict(normalization="softmax"), "normalization must be one of"),
        (dict(p=3), "p must be 1 or 2"),
    ],
)
def test_bad_importance_options(kwargs, match):
    with pytest.raises(dx.InvalidArgumentError, match=match):
        dx.MagnitudeImportance(**kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("importance", ["l1", "l2", "taylor"])
def test_complex_weights_score_by_their_moduli(backend, importance):
    """A complex layer's units score by ``|z|`` (the native kernel refused complex members,
    an internal error; the Python twin cast them to real, dropping the imaginary part)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.Linear(10, 3)).to(torch.complex128)
    x = torch.randn(4, 6, dtype=torch.complex128)
    if importance == "taylor":
        net(x).abs().square().sum().backward()
    dg = dx.DependencyGraph(net, x, backend=backend)
    (group,) = dg.groups
    criterion = (
        dx.TaylorImportance(normalization=None)
        if importance == "taylor"
        else dx.MagnitudeImportance(int(importance[1]), normalization=None)
    )
    scores = criterion.scores(dg)[group.unit_ids]

    def term(w):
        m = (w * w.grad).abs() if importance == "taylor" else w.detach().abs()
        return m.square() if importance == "l2" else m

    first, second = net[0], net[1]
    expected = term(first.weight).sum(1) + term(first.bias) + term(second.weight).sum(0)
    torch.testing.assert_close(scores, expected, rtol=1e-9, atol=0)


def test_a_complex_model_prunes_exactly_with_every_backend():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.Linear(10, 3)).to(torch.complex128)
    pruned, _ = prune_and_check(net, torch.randn(4, 6, dtype=torch.complex128), ratio=0.5)
    assert pruned[0].out_features == 5 and pruned[0].weight.dtype == torch.complex128


def test_a_criterion_scoring_no_unit_is_refused_not_a_silent_no_op():
    """``bn_scale`` on a model without batch norms scored nothing, and the prune removed
    nothing without a word."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    before = state_of(net)
    with pytest.raises(dx.NoPrunableGroupsError, match=r"'bn_scale' scores no unit.*BatchNorm"):
        dx.prune(net, torch.randn(4, 6), ratio=0.5, importance="bn_scale")
    assert_same_state(before, state_of(net))
    dx.prune(net, torch.randn(4, 6), ratio=0.0, importance="bn_scale")  # (nothing asked: fine)
