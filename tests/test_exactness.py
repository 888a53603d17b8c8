"""Exact or declared: a pruned group either equals zeroing its units (the scatter-back oracle) or
says that it changes the function, and why. The patterns here once changed models silently
(kernel taps read through a view, a residual across a channel shuffle, a norm over all heads, a
mean over heads) or refused models that run (window, block/grid and multi-query attention, a
config field of another type)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.testing import assert_scatter_back_equal
from helpers import assert_same_state, prune_and_check, state_of
from nets import MaxViTStage, SwinStage

T = pytest.importorskip("transformers")
IDS = {"input_ids": torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(0))}


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def build(config_class, model_class, **fields):
    torch.manual_seed(0)
    return quiet(model_class, config_class(**fields)).double().eval()


def test_convolution_taps_read_through_a_view_are_never_pruned(backend):
    """Mamba runs its depthwise causal conv as conv1d(weight.squeeze(1).unsqueeze(1)): the
    views read the kernel taps, which stay whole; the channels prune exactly."""
    model = build(
        T.MambaConfig,
        T.MambaForCausalLM,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        vocab_size=128,
        expand=2,
    )
    pruned, result = quiet(prune_and_check, model, IDS, ratio=0.5, ratios={"hidden": 0.0})
    conv = pruned.backbone.layers[0].mixer.conv1d
    assert conv.weight.shape == (32, 1, 4)  # 64 channels -> 32, every one of the 4 taps kept
    assert not result.function_changing


class ShuffleResidual(nn.Module):
    """x = relu(conv3x3(in)); y = relu(grouped conv1x1(x)); shuffle(y); conv1x1(dw(y) + x)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.grouped = nn.Conv2d(32, 32, 1, groups=4)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.out = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.grouped(x))
        n, c, h, w = y.shape
        y = y.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.out(self.dw(y) + x)


def test_a_residual_across_a_shuffle_after_a_grouped_conv_prunes_exactly(backend):
    torch.manual_seed(0)
    model = ShuffleResidual().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pruned, result = quiet(prune_and_check, model, x, ratio=0.5)
    assert pruned.stem.weight.shape[0] < 32 and not result.function_changing


def olmo2():
    return build(
        T.Olmo2Config,
        T.Olmo2ForCausalLM,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=1,
        vocab_size=128,
    )


def test_a_norm_over_all_heads_makes_the_heads_function_changing():
    """OLMo-2 normalises the whole q_proj/k_proj output (heads x head_dim) before splitting
    heads: removing a head changes every kept head. The heads group says so; exact_only
    keeps it and prunes the rest exactly; a default prune warns and lists it."""
    model = olmo2()
    dg = quiet(dx.DependencyGraph, model, IDS)
    [heads] = [g for g in dg.groups if g.kind == "heads"]
    assert not heads.exact and any("q_norm" in r and "mean" in r for r in heads.reasons)
    assert all(g.exact for g in dg.groups if g.kind == "channels")  # the MLP

    pruned, result = quiet(prune_and_check, model, IDS, ratio=0.5, exact_only=True)
    attention = pruned.model.layers[0].self_attn
    assert (
        attention.q_proj.weight.shape == (64, 64)
        and pruned.model.layers[0].mlp.up_proj.weight.shape[0] == 64
    )
    assert not result.function_changing

    changed = copy.deepcopy(model)
    with pytest.warns(dx.FunctionChangingWarning, match="q_norm"):
        result = dx.prune(changed, IDS, ratio=0.5, ratios={"hidden": 0.0})
    assert len(result.function_changing) == 1 and "heads group" in result.function_changing[0]
    assert "function-changing groups pruned (1)" in result.summary()
    with pytest.raises(AssertionError):  # and indeed, the oracle does not hold
        assert_scatter_back_equal(model, changed, result.plan, IDS, rtol=1e-6, atol=1e-6)


def test_a_mean_over_heads_makes_the_heads_function_changing():
    """torch_geometric's GATConv(concat=False) averages its heads: removing heads changes the
    divisor. That group is function-changing; exact_only prunes the rest exactly."""
    pyg = pytest.importorskip("torch_geometric")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = pyg.nn.GATConv(8, 16, heads=4)
            self.c2 = pyg.nn.GATConv(64, 5, heads=4, concat=False)

        def forward(self, x, edge_index):
            return self.c2(torch.relu(self.c1(x, edge_index)), edge_index)

    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(10, 8, dtype=torch.float64)
    edges = torch.randint(0, 10, (2, 30))
    dg = quiet(dx.DependencyGraph, model, (x, edges))
    changing = [g for g in dg.groups if not g.exact]
    assert changing and all(any("mean" in r and "c2" in r for r in g.reasons) for g in changing)
    pruned, result = quiet(prune_and_check, model, (x, edges), ratio=0.5, exact_only=True)
    assert pruned.c1.lin.weight.shape[0] < 64 and not result.function_changing


def test_norm_statistics_are_reasons_and_whole_norm_groups_stay_exact():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.b = nn.Linear(4, 16), nn.LayerNorm(16), nn.Linear(16, 2)
            self.c, self.gn, self.d = nn.Conv2d(3, 16, 1), nn.GroupNorm(4, 16), nn.Conv2d(16, 2, 1)

        def forward(self, x, img):
            return self.b(self.ln(self.a(x))), self.d(self.gn(self.c(img)))

    dg = dx.DependencyGraph(Net(), (torch.randn(2, 4), torch.randn(2, 3, 4, 4)))
    [ln] = [g for g in dg.groups if any(m.name == "ln.weight" for m in g.members)]
    assert not ln.exact and "LayerNorm statistics" in ln.reasons[0]
    norm_groups = [g for g in dg.groups if any(m.name == "gn.weight" for m in g.members)]
    assert sorted(g.num_units for g in norm_groups) == [4, 4]  # whole groups, index in groups
    whole, inner = sorted(norm_groups, key=lambda g: not g.exact)
    assert whole.exact and not inner.exact and "GroupNorm statistics" in inner.reasons[0]


class StandardisedConv(nn.Conv2d):
    """timm's StdConv2d (NF-Nets, BiT): the weight standardised over its fan-in by a batch
    norm in training mode, then convolved."""

    def forward(self, x):
        w = self.weight.reshape(1, self.out_channels, -1)
        w = torch.nn.functional.batch_norm(w, None, None, training=True, momentum=0.0, eps=1e-6)
        return torch.nn.functional.conv2d(x, w.reshape_as(self.weight), self.bias, padding=1)


@pytest.mark.parametrize("statistics", ["standardised weight", "instance norm"])
def test_statistics_of_a_norms_input_are_reasons(statistics):
    """A batch norm in training mode (or without running statistics) and an instance norm
    normalise with statistics over the dims other than the channel: a standardised weight's
    input channels are such a dim (removing one changes every output channel's mean and
    variance; the oracle failed on timm's NF-RegNet), an instance norm's spatial dims are
    none a rule prunes. Their channels (a standardised weight's output channels) are exact."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        StandardisedConv(8, 6, 3, padding=1)
        if statistics == "standardised weight"
        else nn.Sequential(nn.Conv2d(8, 6, 1), nn.InstanceNorm2d(6, affine=True)),
        nn.ReLU(),
        nn.Conv2d(6, 4, 1),
    )
    torch.manual_seed(0)
    model = model.double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    dg = quiet(dx.DependencyGraph, model, x)
    [first] = [g for g in dg.groups if any(m.name == "0.weight" for m in g.members)]
    [second] = [g for g in dg.groups if g.num_units == 6]
    assert second.exact
    if statistics == "standardised weight":
        assert not first.exact and "BatchNorm statistics of the input" in first.reasons[0]
    else:
        assert first.exact
    pruned, result = quiet(prune_and_check, model, x, ratio=0.5, exact_only=True)
    widths = (pruned[0].out_channels, pruned[4].in_channels)
    assert widths == ((8, 3) if statistics == "standardised weight" else (4, 3))
    assert not result.function_changing


@pytest.mark.parametrize("model_and_input", ["swin", "maxvit"])
def test_window_and_grid_attention_prune_by_default(model_and_input, backend):
    """Sizes the model's code fixes through Python (C // num_heads of an input's shape, a
    fixed head count) are learnt from the failing module: the defaults converge on a plan
    that runs instead of refusing, and the exact part passes the oracle."""
    if model_and_input == "swin":
        model, x = SwinStage(), torch.randn(2, 3, 32, 32)
    else:
        model, x = MaxViTStage(), torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    model, x = model.double().eval(), x.double()
    before = model(x).shape
    pruned = copy.deepcopy(model)
    result = quiet(dx.prune, pruned, x, ratio=0.5, backend=backend)
    assert result.params_after < result.params_before and pruned(x).shape == before
    quiet(prune_and_check, model, x, ratio=0.5, exact_only=True)


def test_multi_query_attention_split_by_sizes_prunes_by_default():
    """GPTBigCode: one key/value head and a fused c_attn split by (embed_dim, kv, kv)."""
    model = build(
        T.GPTBigCodeConfig,
        T.GPTBigCodeForCausalLM,
        n_embd=64,
        n_head=4,
        n_layer=2,
        vocab_size=128,
        n_positions=32,
        multi_query=True,
    )
    before = model(**IDS).logits.shape
    pruned = copy.deepcopy(model)
    result = quiet(dx.prune, pruned, IDS, ratio=0.5)
    assert result.params_after < result.params_before and pruned(**IDS).logits.shape == before
    quiet(prune_and_check, model, IDS, ratio=0.5, exact_only=True)


def test_config_updates_respect_the_fields_types():
    """DINOv2's mlp_ratio is an int: a whole new ratio is written as an int, a fractional one
    is not written at all (a ConfigMismatchWarning; require_loadable refuses, untouched)."""
    fields = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=4,
        image_size=32,
        patch_size=8,
    )
    x = {"pixel_values": torch.randn(1, 3, 32, 32, dtype=torch.float64)}
    model = build(T.Dinov2Config, T.Dinov2Model, **fields)
    quiet(dx.prune, model, x, ratio=0.5)
    assert model.config.mlp_ratio == 2 and type(model.config.mlp_ratio) is int

    model = build(T.Dinov2Config, T.Dinov2Model, **fields)
    with pytest.warns(dx.ConfigMismatchWarning, match="mlp_ratio"):
        dx.prune(model, x, ratio=0.3, ratios={"hidden": 0.0, "heads": 0.0})
    assert model.config.mlp_ratio == 4
    model = build(T.Dinov2Config, T.Dinov2Model, **fields)
    before = state_of(model)
    with pytest.raises(dx.PruningError, match="mlp_ratio"):
        quiet(
            dx.prune,
            model,
            x,
            ratio=0.3,
            ratios={"hidden": 0.0, "heads": 0.0},
            require_loadable=True,
        )
    assert_same_state(before, state_of(model))


# -- verification -------------------------------------------------------------------------------
def test_verify_passes_an_exact_prune_and_result_verify_agrees():
    model = build(
        T.LlamaConfig,
        T.LlamaForCausalLM,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=128,
    )
    result = dx.prune(model, IDS, ratio=0.5, exact_only=True, verify=True)
    assert result.timings["verify"] > 0 and not result.function_changing
    assert result.verify(IDS) < 1e-9


def test_result_verify_refuses_a_function_changing_prune():
    model = olmo2()
    result = quiet(dx.prune, model, IDS, ratio=0.5)
    assert result.function_changing
    with pytest.raises(dx.InvalidArgumentError, match="function-changing"):
        result.verify(IDS)


@torch.library.custom_op("dxtest::reverse_channels", mutates_args=())
def reverse_channels(x: torch.Tensor) -> torch.Tensor:
    return x.flip(1)


@reverse_channels.register_fake
def _(x):
    return torch.empty_like(x)


class Reversing(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(reverse_channels(self.a(x))))


def test_verify_catches_a_wrong_rule_and_leaves_the_model_untouched(backend):
    """A rule that claims channel i stays channel i through an op that reverses them gives a
    plan that is not exact: verify=True finds it before anything changes and names the group.
    (Its checks zero the removed slices of the original and write them back: natively, in
    one call, with the native backend on the CPU.)"""
    dx.register_rule(
        "dxtest.reverse_channels",
        lambda ctx, node: ctx.equal_dims(
            node.inputs[0], node.outputs[0], [(i, i) for i in range(4)]
        ),
    )
    try:
        torch.manual_seed(0)
        model = Reversing().double().eval()
        x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
        before = state_of(model)
        with pytest.raises(dx.VerificationError, match="a.weight") as info:
            dx.prune(model, x, ratio=0.5, verify=True, backend=backend)
        assert info.value.difference > 1e-3 and len(info.value.groups) == 1
        assert_same_state(before, state_of(model))
    finally:
        dx.unregister_rule("dxtest.reverse_channels")


def test_verify_zeroes_the_removed_slices_of_every_dim_and_puts_them_back(backend):
    """What verify compares with: the original with every removed slice zeroed, along each
    pruned dim of a tensor (the middle weight loses rows and columns), for the duration only;
    afterwards every value is back, bit for bit, in the same tensor objects."""
    import numpy as np

    from depgraph_ext.pruning.plan import propose_plan
    from depgraph_ext.pruning.verify import _zeroed

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    ).double()
    dg = dx.DependencyGraph(model, torch.randn(2, 4, dtype=torch.float64), backend=backend)
    keep = np.ones(dg.resolution.num_units, dtype=bool)
    for group in dg.groups:
        keep[np.asarray(group.unit_ids)[1::2]] = False  # every other unit of every group
    plan = propose_plan(dg, keep)
    assert sorted(plan.tensors["2.weight"]) == [0, 1]
    before = state_of(model)
    original = before["tensors"]["2.weight"][1]
    with _zeroed(dg, plan):
        rows, cols = plan.tensors["2.weight"][0], plan.tensors["2.weight"][1]
        kept = torch.zeros(8, 8, dtype=torch.bool)
        kept[rows[:, None], cols] = True
        weight = model[2].weight.detach()
        assert torch.equal(weight[kept], original[kept])
        assert (weight[~kept] == 0).all() and (~kept).sum() == 48
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verify_leaves_every_tensor_as_it_was(dtype, backend, monkeypatch):
    """verify's check zeroes the removed slices of the original and, natively on the CPU,
    moves the kept ones to the front of each tensor's own memory for the pruned forward (no
    copy of the weights): afterwards every tensor is the original object with the original
    bits, a weight pruned along both its dims included."""
    from depgraph_ext.pruning import verify
    from depgraph_ext.pruning.plan import propose_plan
    from depgraph_ext.pruning.select import select_local

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    ).to(dtype).eval()  # fmt: skip
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    dg = dx.DependencyGraph(model, x, backend=backend)
    scores = torch.rand(dg.resolution.num_units, dtype=torch.float64)
    plan = propose_plan(dg, select_local(dg, scores, 0.5, None, None))
    assert any(len(dims) == 2 for dims in plan.tensors.values())
    in_place = []
    compacts = verify._compacts_in_place
    monkeypatch.setattr(
        verify, "_compacts_in_place", lambda *a: in_place.append(compacts(*a)) or in_place[-1]
    )
    before = state_of(model)
    assert verify._difference_in_memory(dg, plan) < 0.05
    assert in_place == [backend == "native"]
    assert_same_state(before, state_of(model))


class SumAfter(nn.Module):
    """Linear -> f -> a sum over the units (a loss, a distance, a score): exact only where
    f(0) = 0, since the removed units' zeroed values still go into the sum otherwise."""

    def __init__(self, f) -> None:
        super().__init__()
        self.a, self.f = nn.Linear(8, 12), f

    def forward(self, x):
        return self.f(self.a(x)).sum(-1)


NONZERO_AT_ZERO = {
    "exp": torch.exp,
    "sigmoid": torch.sigmoid,
    "cos": torch.cos,
    "plus a constant": lambda h: h + 0.5,
    "one minus": lambda h: 1 - h,
    "a hinge": lambda h: torch.clamp_min(0.5 - h, 0.0),
    "softplus": torch.nn.functional.softplus,
    "a distance with eps": lambda h: (h + 1e-3).abs(),
    "in place": lambda h: h.add_(0.25),
}
ZERO_AT_ZERO = {
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "scaled": lambda h: h * 2,
    "squared": lambda h: h.square(),
    "clamped around zero": lambda h: h.clamp(-1.0, 1.0),
}


@pytest.mark.parametrize("name", NONZERO_AT_ZERO)
def test_a_sum_over_units_not_zero_where_removed_is_a_reason(name):
    torch.manual_seed(0)
    model = SumAfter(NONZERO_AT_ZERO[name]).double().eval()
    x = torch.randn(2, 8, dtype=torch.float64)
    [group] = quiet(dx.DependencyGraph, model, x).groups
    assert not group.exact
    assert "over units whose removed values are not zero" in group.reasons[0]
    before = state_of(model)
    with pytest.raises(dx.NoPrunableGroupsError, match="changes the function"):
        quiet(dx.prune, copy.deepcopy(model), x, ratio=0.5, exact_only=True)
    result = quiet(dx.prune, model, x, ratio=0.5)  # pruned, and declared
    assert result.function_changing and before.keys() == state_of(model).keys()


@pytest.mark.parametrize("name", ZERO_AT_ZERO)
def test_a_sum_over_units_zero_where_removed_is_exact(name):
    torch.manual_seed(0)
    model = SumAfter(ZERO_AT_ZERO[name]).double().eval()
    x = torch.randn(2, 8, dtype=torch.float64)
    prune_and_check(model, x, ratio=0.5, exact_only=True)


class ProductOfActivations(nn.Module):
    """Linear attention's ``phi(q) @ phi(k).T`` over the units: exact for phi(0) = 0 (the
    zeroed units add nothing), function-changing for ``elu(x) + 1`` (they add one each)."""

    def __init__(self, shifted: bool) -> None:
        super().__init__()
        self.q, self.k, self.out = nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(5, 3)
        self.shifted = shifted

    def forward(self, x):
        phi = (lambda h: torch.nn.functional.elu(h) + 1) if self.shifted else torch.relu
        return self.out(phi(self.q(x)) @ phi(self.k(x)).transpose(-1, -2))


@pytest.mark.parametrize("shifted", [False, True])
def test_a_product_of_activations_over_units(shifted):
    torch.manual_seed(0)
    model = ProductOfActivations(shifted).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    groups = quiet(dx.DependencyGraph, model, x).groups
    [qk] = [g for g in groups if any(m.name == "q.weight" for m in g.members)]
    if shifted:
        assert not qk.exact and "a matrix product over units" in qk.reasons[0]
    else:
        assert qk.exact
        prune_and_check(model, x, ratio=0.5, exact_only=True)


class SummedAttention(nn.Module):
    """Attention's output is its weights times the values: zero at a removed head, so a sum
    over the heads after it is exact (Dory's sub-norm sums its squares)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(8, 12)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, -1, 6).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, n, -1).square().sum(-1)  # over the heads


class IndexedExperts(nn.Module):
    """Experts' weights picked by index (``w[expert_ids]``, GPT-OSS's batched experts): a
    selection of a zeroed weight is zero there, so the product over the neurons is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.randn(3, 8, 10))
        self.down = nn.Parameter(torch.randn(3, 10, 8))
        self.register_buffer("ids", torch.tensor([0, 2]))

    def forward(self, x):
        h = torch.sigmoid(torch.bmm(x, self.up[self.ids]))  # not zero at removed neurons
        return torch.bmm(h, self.down[self.ids])


@pytest.mark.parametrize(
    "net, shape",
    [(SummedAttention, (2, 5, 8)), (IndexedExperts, (2, 4, 8))],
    ids=["a sum over heads after attention", "a product with a selection of a weight"],
)
def test_zeros_followed_through_attention_and_selections_are_exact(net, shape):
    torch.manual_seed(0)
    model = net().double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    groups = quiet(dx.DependencyGraph, model, x).groups
    assert all("not zero" not in r for g in groups for r in g.reasons)
    prune_and_check(model, x, ratio=0.5, exact_only=True)


class LongChain(nn.Module):
    """A value passed through a chain of ops far deeper than Python's recursion limit, then
    summed over its units after an exp."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.a, self.b, self.depth = nn.Linear(8, 12), nn.Linear(12, 3), depth

    def forward(self, x):
        h = self.a(x)
        for _ in range(self.depth):
            h = torch.relu(h + 0.5 * h)
        return self.b(h), torch.exp(h).sum(-1)


def test_whether_removed_values_are_zero_is_followed_down_any_chain():
    torch.manual_seed(0)
    model = LongChain(1500).double().eval()
    x = torch.randn(2, 8, dtype=torch.float64)
    [group] = quiet(dx.DependencyGraph, model, x).groups
    assert not group.exact and "aten.exp" in group.reasons[0]


class _DividesByWidth(nn.Module):
    """``y / self.a.out_features``: a number from an attribute the plan sets."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.side = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) / self.a.out_features + self.side(x)


class _ScalesByHeads(nn.Module):
    """Viewed by its own head count, then scaled by ``self.heads ** -0.5``."""

    def __init__(self):
        super().__init__()
        self.heads = 4
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.side = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x):
        h = torch.relu(self.a(x)).view(x.shape[0], self.heads, -1) * self.heads**-0.5
        return self.b(h.reshape(x.shape[0], -1)) + self.side(x)


class _ScalesByHeadsReadingAValue(_ScalesByHeads):
    """The same, after a value the code reads (``bool(...)``): numbers are still compared
    where they may come from attributes the plan sets."""

    def forward(self, x):
        if not bool((x != 0).any()):
            return x.new_zeros(x.shape[0], 4)
        return super().forward(x)


class _ScalesByChannels(nn.Module):
    """``conv(x) * self.c.out_channels ** -0.5``."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 1)
        self.side = nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(), nn.Conv2d(12, 4, 1))

    def forward(self, x):
        return self.d(torch.relu(self.c(x))) * self.c.out_channels**-0.5 + self.side(x)


@pytest.mark.parametrize(
    "make, x, attribute",
    [
        (_DividesByWidth, torch.randn(3, 8), ("a", "out_features", 16)),
        (_ScalesByHeads, torch.randn(3, 8), ("", "heads", 4)),
        (_ScalesByHeadsReadingAValue, torch.randn(3, 8), ("", "heads", 4)),
        (_ScalesByChannels, torch.randn(1, 3, 8, 8), ("c", "out_channels", 16)),
    ],
    ids=["divides-by-width", "scales-by-heads", "reads-a-value", "scales-by-channels"],
)
def test_a_number_the_code_computes_from_an_attribute_the_plan_sets_keeps_its_width(
    make, x, attribute
):
    """The plan would set the attribute (a linear's ``out_features``, a head count the code
    views by, a conv's ``out_channels``), and the forward computes a number from it: the
    pruned model would compute something else, silently, even under ``exact_only``. The
    number is compared in the plan's trace, put down to the attribute, and its width kept."""
    torch.manual_seed(0)
    model = make().double().eval()
    with pytest.warns(dx.FixedSizeWarning, match="module attributes the plan sets"):
        pruned, result = prune_and_check(model, x.double(), ratio=0.5, exact_only=True)
    module, attr, value = attribute
    assert getattr(pruned.get_submodule(module), attr) == value
    assert result.params_after < result.params_before  # (the side branch)


class _BranchesOnHeads(nn.Module):
    """Viewed by its own head count (an attribute named ``name``: ``n_local_heads``, which
    no rule knows by name, or ``heads``), and a branch on it: ``if self.heads > 3``."""

    def __init__(self, name: str, branch: bool, reads: bool = False):
        super().__init__()
        self.name, self.branch, self.reads = name, branch, reads
        setattr(self, name, 4)
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.side = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x):
        if self.reads and not bool((x != 0).any()):  # (a value the code reads)
            return x.new_zeros(x.shape[0], 4)
        heads = getattr(self, self.name)
        h = torch.relu(self.a(x)).view(x.shape[0], heads, -1)
        if self.branch and heads > 3:
            h = h * 2
        return self.b(h.reshape(x.shape[0], -1)) + self.side(x)


@pytest.mark.parametrize("reads", [False, True], ids=["", "reads-a-value"])
@pytest.mark.parametrize("name", ["n_local_heads", "heads"])
@pytest.mark.parametrize("branch", [False, True], ids=["views-only", "branches"])
def test_a_branch_on_an_attribute_the_plan_sets_keeps_its_width(name, branch, reads):
    """An attribute the code gives as it is to a view follows the units the plan keeps,
    whatever its name (where the code reads no tensor value: otherwise only a name the rules
    know follows); where the code also branches on it, the pruned model would take the other
    branch (the original doubles ``h``, the pruned one would not), silently, even under
    ``exact_only``: the plan's trace runs other ops, put down to the attribute, and the
    attribute's width is kept; so too where the code reads a value, whose data could steer
    the trace elsewhere (keeping them is the safe side)."""
    torch.manual_seed(0)
    model = _BranchesOnHeads(name, branch, reads).double().eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    follows = not (reads and name == "n_local_heads")
    if branch and follows:
        with pytest.warns(dx.FixedSizeWarning, match="branches on module attributes the plan"):
            pruned, result = prune_and_check(model, x, ratio=0.5, exact_only=True)
        assert getattr(pruned, name) == 4  # (the channels within each head may go)
    elif not follows:
        with pytest.warns(dx.FixedSizeWarning, match="fixes a size"):
            pruned, result = prune_and_check(model, x, ratio=0.5, exact_only=True)
        assert getattr(pruned, name) == 4
    else:
        pruned, result = prune_and_check(model, x, ratio=0.5, exact_only=True)
        assert getattr(pruned, name) == 2 and pruned.a.out_features == 8
    assert result.params_after < result.params_before  # (the side branch, at least)
