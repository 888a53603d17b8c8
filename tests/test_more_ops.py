"""Ops other libraries get wrong, each in a small net under the scatter-back oracle, with the
exact index mapping checked where it is not the identity."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depgraph_ext as dx
from depgraph_ext.testing import assert_scatter_back_equal
from helpers import prune_and_check
from nets import TorchEncoder, randomize_norms

F64 = torch.float64


def check(model, x, **kw):
    torch.manual_seed(0)
    return prune_and_check(randomize_norms(model).double().eval(), x, ratio=0.5, **kw)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_and_transposed_conv_in_1d_2d_3d(dims):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    tconv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    model = nn.Sequential(
        conv(2, 8, 3, padding=1),
        bn(8),
        nn.ReLU(),
        tconv(8, 6, 2, stride=2, groups=2),
        nn.ReLU(),
        conv(6, 3, 1),
    )
    x = torch.randn(1, 2, *([4] * dims), dtype=F64)
    pruned, _ = check(model, x)
    t = pruned[3]  # its 2 groups make conv0's channels [group, channel in group]
    assert pruned[0].out_channels == t.in_channels < 8 and t.in_channels % t.groups == 0
    assert t.weight.shape == (t.in_channels, t.out_channels // t.groups, *([2] * dims))


def test_group_norm_keeps_groups_divisible():
    model = nn.Sequential(nn.Conv2d(3, 12, 1), nn.GroupNorm(4, 12), nn.ReLU(), nn.Conv2d(12, 2, 1))
    pruned, _ = check(model, torch.randn(2, 3, 4, 4, dtype=F64), oracle=False)
    gn = pruned[1]
    assert gn.num_channels % gn.num_groups == 0 and gn.num_channels < 12
    assert gn.weight.shape == (gn.num_channels,)


def test_instance_norm_and_prelu():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.InstanceNorm2d(8, affine=True), nn.PReLU(8), nn.Conv2d(8, 2, 1)
    )
    pruned, _ = check(model, torch.randn(2, 3, 4, 4, dtype=F64))
    assert pruned[1].num_features == 4 and pruned[2].num_parameters == 4


def test_pixel_shuffle_maps_a_channel_to_a_block():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 1),
        nn.PixelShuffle(2),
        nn.Conv2d(4, 8, 1),
        nn.PixelUnshuffle(2),
        nn.Conv2d(32, 2, 1),
    )
    x = torch.randn(1, 3, 4, 4, dtype=F64)
    dg = dx.DependencyGraph(randomize_norms(model).double(), x)
    # conv0's 16 channels are [4 shuffled channels, 2 x 2 positions]: only whole blocks of 4
    # (one output channel of the shuffle) can go.
    [group] = [g for g in dg.groups if any(m.name == "0.weight" for m in g.members)]
    member = next(m for m in group.members if m.name == "0.weight")
    assert member.units.tolist() == [i // 4 for i in range(16)]
    pruned, _ = check(model, x)
    assert pruned[0].out_channels == 8 and pruned[2].in_channels == 2


def test_channel_shuffle():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 12, 1)
            self.g = nn.Conv2d(12, 12, 1, groups=3)
            self.b = nn.Conv2d(12, 2, 1)

        def forward(self, x):
            y = self.g(self.a(x))
            n, c, h, w = y.shape
            y = y.view(n, 3, c // 3, h, w).transpose(1, 2).reshape(n, c, h, w)
            return self.b(torch.relu(y))

    pruned, result = check(Shuffle(), torch.randn(1, 3, 4, 4, dtype=F64))
    assert pruned.g.out_channels % 3 == 0


def test_the_channel_shuffle_op_prunes_within_groups():
    """nn.ChannelShuffle (one op, channel_shuffle): a channel within a group prunes with the
    same channel of every other group, on both sides of the shuffle; the groups stay."""

    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 12, 1)
            self.shuffle = nn.ChannelShuffle(3)
            self.b = nn.Conv2d(12, 2, 1)

        def forward(self, x):
            return self.b(torch.relu(self.shuffle(self.a(x))))

    pruned, result = check(Shuffle(), torch.randn(2, 3, 4, 4, dtype=F64))
    kept = result.plan["a.weight"][0].tolist()
    assert len(kept) == 6 and pruned.shuffle.groups == 3
    within = sorted({c % 4 for c in kept})  # input channel g * 4 + j: j is the unit
    assert len(within) == 2 and kept == [g * 4 + j for g in range(3) for j in within]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_rrelu_is_element_wise(train):
    """RReLU: a fixed negative slope in eval, a random one per element in training: element by
    element either way (rrelu_with_noise). Pruned exactly in eval (the oracle); in training
    its draws differ from call to call, so the pruned model is compared by shape."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.RReLU(), nn.Linear(12, 3)).double()
    x = torch.randn(4, 6, dtype=F64)
    if not train:
        pruned, _ = check(model.eval(), x)
        assert pruned[0].out_features == 6
        return
    model.train()
    result = dx.prune(model, x, ratio=0.5)
    assert model[0].out_features == 6 and result.params_after < result.params_before
    assert model(x).shape == (4, 3)


def test_squeeze_and_excitation():
    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
            self.out = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
            return self.out(y * s)

    pruned, _ = check(SE(), torch.randn(2, 3, 5, 5, dtype=F64))
    assert pruned.fc2.out_channels == pruned.conv.out_channels == 8


class Tokens(nn.Module):
    def __init__(self, hard_coded: bool = False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 10), nn.Linear(10, 3)
        self.hard_coded = hard_coded

    def forward(self, x, idx):
        y = torch.relu(self.fc1(x))  # [tokens, 10]
        picked = y.index_select(0, idx)
        width = 10 if self.hard_coded else y.shape[1]
        pooled = torch.zeros(2, width, dtype=y.dtype).index_add(0, idx % 2, picked)
        return self.fc2(pooled + y.gather(0, idx[:2, None].expand(-1, y.shape[1])))


def test_gather_and_scatter_on_non_channel_dims():
    x, idx = torch.randn(6, 4, dtype=F64), torch.tensor([5, 0, 3, 3])
    pruned, _ = check(Tokens(), (x, idx))
    assert pruned.fc1.out_features == 5


def test_a_size_the_code_fixes_is_found_and_kept():
    """zeros(2, 10) in the forward fixes the width: validation finds the op, the channels are
    kept, and with nothing else to prune the call refuses, leaving the model as it was."""
    from helpers import assert_same_state, state_of

    model = Tokens(hard_coded=True).double().eval()
    before = state_of(model)
    x, idx = torch.randn(6, 4, dtype=F64), torch.tensor([5, 0, 3, 3])
    with (
        pytest.warns(dx.FixedSizeWarning, match="aten.zeros"),
        pytest.raises(dx.NoPrunableGroupsError),
    ):
        dx.prune(model, (x, idx), ratio=0.5)
    assert_same_state(before, state_of(model))


class Reshaped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 10), nn.Linear(10, 3)

    def forward(self, x):
        y = torch.relu(self.fc1(x))  # [6, 10]
        # reshape(-1, 10) is the identity here, but pruned to [6, 5] it would run silently and
        # give [3, 10]: only the op-by-op shape check can find it.
        return self.fc2(y) + y.reshape(-1, 10).sum()


def test_a_size_fixed_silently_is_found_by_the_shape_check():
    from helpers import assert_same_state, state_of

    model = Reshaped().double().eval()
    before = state_of(model)
    with (
        pytest.warns(dx.FixedSizeWarning, match="aten.view"),
        pytest.raises(dx.NoPrunableGroupsError),
    ):
        dx.prune(model, torch.randn(6, 4, dtype=F64), ratio=0.5)
    assert_same_state(before, state_of(model))


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_custom_autograd_function_is_traced_through_its_aten_ops():
    """At the ATen level a custom Function is the ops its forward runs: no guess is needed."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(Square.apply(self.a(x)))

    pruned, _ = check(Net(), torch.randn(4, 3, dtype=F64))
    assert pruned.a.out_features == 4


class FixedRows(nn.Module):
    """Rows whose width the code fixes, and nothing else to prune."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.out(self.fc(x).view(-1, 12))  # "12": a constant of the code


def test_a_refusal_for_sizes_the_code_fixes_names_the_line():
    with pytest.warns(dx.FixedSizeWarning):
        with pytest.raises(dx.NoPrunableGroupsError, match=r"test_more_ops.py:\d+ \(return "):
            dx.prune(FixedRows(), torch.randn(3, 4), ratio=0.5)


def test_a_mask_over_several_dims_indexes_them_together(backend):
    """h[mask] with a [batch, tokens] mask (torch_geometric's to_dense_batch): the mask's
    dims are indexed at once, the features pass through."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x, mask):
            return self.b(torch.relu(self.a(x)[mask]))

    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    original = copy.deepcopy(model)
    result = dx.prune(model, (x, mask), ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.a.out_features == 8
    assert_scatter_back_equal(original, model, result, (x, mask))


@pytest.mark.parametrize("value", [0.0, 1e-6])
def test_a_fill_where_a_mask_of_the_same_shape_says_is_element_wise(value, backend):
    """``h[h < 0] = v`` (SGFormer's ``qs[qs == 0] = eps``) fills where a mask of h's own shape
    says: masked_fill, element-wise; the features prune through it."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            h = self.a(x)
            h[h < 0] = value
            return self.b(h)

    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    original = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.a.out_features == 8
    assert_scatter_back_equal(original, model, result, x)


class PadsItsUnits(nn.Module):
    """A constant pad of the width the plan prunes: the padded positions are the op's own."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.a, self.b, self.value = nn.Linear(8, 12), nn.Linear(15, 5), value

    def forward(self, x):
        return self.b(F.pad(self.a(x), (1, 2), value=self.value))


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_a_constant_pad_keeps_the_positions_it_makes(value):
    torch.manual_seed(0)
    x = torch.randn(2, 8, dtype=torch.float64)
    pruned, result = prune_and_check(PadsItsUnits(value).double(), x, ratio=0.5)
    kept = result.plan["b.weight"][1].tolist()
    assert kept[0] == 0 and kept[-2:] == [13, 14]  # the padding's columns
    assert pruned.b.weight.shape == (5, 1 + pruned.a.weight.shape[0] + 2)


@pytest.mark.parametrize("dim", [-1, 1])
def test_glu_prunes_its_halves_together(dim):
    torch.manual_seed(0)
    if dim == -1:
        model = nn.Sequential(nn.Linear(8, 24), nn.GLU(dim=-1), nn.Linear(12, 3))
        x = torch.randn(2, 8, dtype=torch.float64)
    else:
        model = nn.Sequential(nn.Conv2d(3, 24, 3), nn.GLU(dim=1), nn.Conv2d(12, 4, 1))
        x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    pruned, _ = prune_and_check(model.double().eval(), x, ratio=0.5)
    assert pruned[0].weight.shape[0] == 2 * pruned[2].weight.shape[1] < 24


NORMS_BY_SHAPE = {
    "layer norm without affine": lambda: nn.LayerNorm(64, elementwise_affine=False),
    "RMS norm without affine": lambda: nn.RMSNorm(64, elementwise_affine=False),
    "RMS norm": lambda: nn.RMSNorm(64),
    "group norm without affine": lambda: nn.GroupNorm(4, 64, affine=False),
}


@pytest.mark.parametrize("name", NORMS_BY_SHAPE)
def test_a_norm_that_checks_its_shape_follows_the_plan(name):
    """A norm whose functional form checks its input against an attribute (a layer or RMS
    norm's ``normalized_shape``; a group norm's ``num_channels`` is only said) gets the pruned
    width, from its weight or, without one, from what it returned: the model prunes, and
    computes what the kept slices compute through the original norm (the statistics are over
    the kept units: declared function-changing)."""
    torch.manual_seed(0)
    norm = NORMS_BY_SHAPE[name]()
    conv = isinstance(norm, nn.GroupNorm)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 1) if conv else nn.Linear(16, 64), norm,
        nn.Conv2d(64, 8, 1) if conv else nn.Linear(64, 8),
    )  # fmt: skip
    x = torch.randn(4, 3, 5, 5) if conv else torch.randn(4, 16)
    original = copy.deepcopy(model)
    with pytest.warns(dx.FunctionChangingWarning):
        result = dx.prune(model, x, ratio=0.5)
    kept = result.plan["0.weight"][0]
    assert len(kept) == 32
    attr = "num_channels" if conv else "normalized_shape"
    assert getattr(model[1], attr) == (32 if conv else (32,))
    with torch.no_grad():
        h = original[0](x).index_select(1, kept)
        if conv:
            h = F.group_norm(h, 4)
        else:
            weight = None if original[1].weight is None else original[1].weight[kept]
            functional = F.layer_norm if isinstance(norm, nn.LayerNorm) else F.rms_norm
            h = functional(h, (32,), weight, eps=original[1].eps)
        w2 = original[2].weight.index_select(1, kept)
        want = F.conv2d(h, w2, original[2].bias) if conv else F.linear(h, w2, original[2].bias)
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", [False, True], ids=["dense", "padding mask"])
def test_a_torch_transformer_encoder_prunes_through_its_fast_path(padding):
    """nn.TransformerEncoder in eval mode runs one fused op per layer, its fast path (with a
    padding mask, on nested tensors), opaque to the rules; traced through its Python path,
    the same function: its feed-forward widths prune exactly (the oracle, in float64), its
    heads with their block of the stream by default, and the pruned model takes its fast path
    again, computing what its Python path computes."""

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2]) if padding else None
    inputs = (x, mask) if padding else (x,)
    model = TorchEncoder(nested=padding).double().eval()
    original = copy.deepcopy(model)
    result = dx.prune(model, inputs, ratio=0.5, exact_only=True)
    assert model.body.layers[0].linear1.out_features == 32  # the feed-forward widths
    assert_scatter_back_equal(original, model, result, inputs, rtol=1e-8, atol=1e-8)
    model = copy.deepcopy(original).float()
    inputs = (x.float(), mask) if padding else (x.float(),)
    with pytest.warns(dx.FunctionChangingWarning):
        dx.prune(model, inputs, ratio=0.5)
    attention = model.body.layers[0].self_attn
    assert (attention.embed_dim, attention.num_heads, attention.head_dim) == (16, 2, 8)
    with torch.no_grad(), torch.profiler.profile() as profiled:
        fast = model(*inputs)
    assert "aten::_transformer_encoder_layer_fwd" in {e.key for e in profiled.key_averages()}
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            python_path = model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    if padding:  # (padded positions: zeros on the fast path, computed on the other)
        fast, python_path = fast[~mask], python_path[~mask]
    torch.testing.assert_close(fast, python_path, rtol=1e-5, atol=1e-5)


def test_an_encoder_pruned_to_an_odd_number_of_heads_stops_nesting_its_batches():
    """nn.TransformerEncoder decides once, when made, to turn padded batches into nested
    tensors, which only an even number of heads takes: six heads pruned to three would
    assert on the next padded batch; the decision follows the pruned heads."""
    torch.manual_seed(0)
    model = TorchEncoder(width=36, heads=6, nested=True).eval()
    x, mask = torch.randn(2, 5, 8), torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    assert model.body.use_nested_tensor
    with pytest.warns(dx.FunctionChangingWarning):
        result = dx.prune(model, (x, mask), ratio=0.5)
    assert model.body.layers[0].self_attn.num_heads == 3
    assert not model.body.use_nested_tensor
    assert ("body", "use_nested_tensor") in {(u.module, u.attr) for u in result.attribute_updates}
    with torch.no_grad():
        assert model(x, mask).shape == (2, 5, 3)


class _Bags(nn.Module):
    """An embedding bag (of class ``bag``, 20 x 12) and a linear head of 3."""

    def __init__(self, bag, mode: str):
        super().__init__()
        self.bag = bag(20, 12, mode=mode)
        self.head = nn.Linear(12, 3)

    def forward(self, ids, offsets, weights=None):
        return self.head(torch.relu(self.bag(ids, offsets, per_sample_weights=weights)))


def _bag_inputs(mode: str):
    """Seven indices in three bags (and per-index weights for a sum)."""
    torch.manual_seed(0)
    ids, offsets = torch.tensor([1, 4, 7, 7, 2, 19, 0]), torch.tensor([0, 3, 5])
    return (ids, offsets, torch.rand(7, dtype=F64)) if mode == "sum" else (ids, offsets)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bags_prune_their_dim(mode):
    """nn.EmbeddingBag: each bag's rows summed, averaged or maxed column by column (weighted
    per index for a sum): its embedding dim prunes exactly; the vocabulary stays."""
    inputs = _bag_inputs(mode)  # (seeds, then the model draws its weights)
    pruned, _ = check(_Bags(nn.EmbeddingBag, mode), inputs)
    assert pruned.bag.weight.shape == (20, 6) and pruned.bag.embedding_dim == 6


class _ViewedBag(nn.EmbeddingBag):
    """An embedding bag whose forward reads the width it returns (its plans are traced, and
    the size read is in its own module)."""

    def forward(self, ids, offsets, per_sample_weights=None):
        h = super().forward(ids, offsets, per_sample_weights=per_sample_weights)
        return h.view(h.shape[0], h.shape[1])


@pytest.mark.parametrize("mode", ["sum", "max"])
def test_an_embedding_bag_traced_again_runs_the_same_kernel(mode):
    """A real trace runs on detached parameters; the trace of a plan's shapes gave the
    pruned weight requires_grad, so torch ran the embedding bag's kernel for training
    (``_embedding_bag``) where the original ran the forward-only one, and the comparison of
    the two traces took it for a branch on a pruned size: nothing was left to prune. The
    pruned trace's tensors need no gradient either now."""
    inputs = _bag_inputs(mode)  # (seeds, then the model draws its weights)
    pruned, _ = check(_Bags(_ViewedBag, mode), inputs)
    assert pruned.bag.weight.shape == (20, 6)


class _LearnedMemory(nn.Module):
    """Attention of the input's tokens over six learned memory tokens (key positions that
    the model's parameters make, as WanAnimate's face encoder turns conv channels into
    tokens)."""

    def __init__(self):
        super().__init__()
        self.memory = nn.Parameter(torch.randn(1, 6, 8))
        self.q, self.kv, self.out = nn.Linear(8, 8), nn.Linear(8, 16), nn.Linear(8, 4)

    def forward(self, x):
        b = x.shape[0]
        q = self.q(x).unflatten(-1, (2, 4)).transpose(1, 2)
        k, v = self.kv(self.memory).expand(b, -1, -1).chunk(2, dim=-1)
        k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2) for t in (k, v))
        h = F.scaled_dot_product_attention(q, k, v)
        return self.out(h.transpose(1, 2).flatten(2))


def test_key_positions_the_parameters_make_are_function_changing():
    """Each query's weights are a softmax over the key positions, so removing positions
    changes what the kept ones get, whatever their values. Scaled dot-product attention
    coupled keys and values position by position and said nothing more: learned memory
    tokens were an exact group, and the pruned model computed something else (no error, no
    warning). They are declared now: kept under exact_only, pruned and said by default."""
    torch.manual_seed(0)
    model = _LearnedMemory().double()
    x = torch.randn(2, 5, 8, dtype=F64)
    pruned, _ = prune_and_check(copy.deepcopy(model), x, ratio=0.5, exact_only=True)
    assert pruned.memory.shape[1] == 6
    with pytest.warns(dx.FunctionChangingWarning, match="attention's softmax over the units"):
        dx.prune(model, x, ratio=0.5)
    assert model.memory.shape[1] == 3


class _FlexHeads(nn.Module):
    """Four heads of attention by ``flex_attention`` (``how``: plain, a causal block mask, a
    score function adding a bias by head index) or by scaled dot-product attention."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.heads = how, 4
        self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
        self.o = nn.Linear(16, 4)

    def forward(self, x):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        q, k, v = (
            p(x).unflatten(-1, (self.heads, -1)).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        if self.how == "sdpa":
            h = F.scaled_dot_product_attention(q, k, v)
        elif self.how == "plain":
            h = flex_attention(q, k, v)
        elif self.how == "causal":
            n = x.shape[1]
            mask = create_block_mask(lambda b, h, i, j: i >= j, None, None, n, n, device="cpu")
            h = flex_attention(q, k, v, block_mask=mask)
        else:  # a bias by head index: the heads' positions matter
            h = flex_attention(q, k, v, score_mod=lambda s, b, h, i, j: s + 0.1 * h)
        return self.o(h.transpose(1, 2).flatten(2))


def _flex_prune(how: str, **options):
    torch.manual_seed(0)
    model = _FlexHeads(how).double().requires_grad_(False)  # (no backward of it on the CPU)
    x = torch.randn(2, 16, 8, dtype=F64)
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, x, ratio=0.5, **options)
    return original, model, result, x


@pytest.mark.parametrize("how", ["plain", "causal", "head_bias"])
def test_flex_attention_is_traced_through_its_eager_implementation(how):
    """flex_attention is a higher-order op (it runs the model's score and mask functions
    inside one op), which a dispatch mode gets whole: the trace refused it. It follows its
    eager implementation now, op by op: heads prune as they do under scaled dot-product
    attention (the same plan, the oracle holds), and a score function that reads the head
    index keeps the heads whole (their positions are its input)."""
    original, model, result, x = _flex_prune(how, exact_only=True)
    assert_scatter_back_equal(original, model, result, x)
    if how == "head_bias":
        assert model.q.out_features == 16
    else:
        _, sdpa, reference, _ = _flex_prune("sdpa", exact_only=True)
        assert model.q.out_features == sdpa.q.out_features == 8
        assert {n: {d: i.tolist() for d, i in dims.items()} for n, dims in result.plan.items()} == {
            n: {d: i.tolist() for d, i in dims.items()} for n, dims in reference.plan.items()
        }
    original, model, result, x = _flex_prune(how, verify=True)
    assert model(x).shape == (2, 16, 4)


def test_a_model_runs_flex_attention_after_its_prune():
    """flex_attention compiles a wrapper of its op at every eager call; compiled for the first
    time under the trace's eager stance, it failed at every later call ("marked as
    skipped"): the pruned model could not run. The trace calls the op as it is."""
    _, model, _, x = _flex_prune("plain")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert model(x).shape == (2, 16, 4)


def test_another_higher_order_op_is_refused_as_what_it_is():
    """``torch.cond`` is a higher-order op the trace does not follow: the error said the model
    could not run on its inputs, where it runs; it names the op, the module and the line
    now, and the model is untouched."""

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):
            h = self.a(x)
            h = torch.cond(h.sum() > 0, lambda t: t.relu(), lambda t: t.tanh(), (h,))
            return self.b(h)

    model, x = Branches(), torch.randn(2, 8)
    assert model(x).shape == (2, 4)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(dx.TraceError, match=r"higher-order op cond .*test_more_ops"):
        dx.prune(model, x, ratio=0.5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_unfold_and_fold_keep_channels_through_their_patches():
    """nn.Unfold puts each channel's kernel positions in a block of its output's dim 1
    (im2col), nn.Fold takes them back (col2im, summing overlaps): channels prune through both."""

    class Patches(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.unfold = nn.Unfold(2, stride=1)
            self.fold = nn.Fold((5, 5), 2, stride=1)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            patches = torch.tanh(self.unfold(torch.relu(self.conv(x))))
            return self.out(self.fold(patches))

    pruned, _ = check(Patches(), torch.randn(2, 3, 5, 5, dtype=F64))
    assert pruned.conv.out_channels == 4 and pruned.out.in_channels == 4


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_unpool_keeps_channels_with_their_indices(dims):
    """nn.MaxUnpool puts each plane's values back where its pool's indices say: channels
    prune, positions stay."""
    conv, pool, unpool = (
        getattr(nn, f"{kind}{dims}d") for kind in ("Conv", "MaxPool", "MaxUnpool")
    )

    class Unpool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv(3, 8, 1)
            self.pool, self.unpool = pool(2, return_indices=True), unpool(2)
            self.out = conv(8, 2, 1)

        def forward(self, x):
            h, where = self.pool(self.conv(x))
            return self.out(self.unpool(torch.relu(h), where))

    pruned, _ = check(Unpool(), torch.randn(2, 3, *([4] * dims), dtype=F64))
    assert pruned.conv.out_channels == 4


@pytest.mark.parametrize("sizes", [(4, 6), (4, -1), [4, 6]], ids=["tuple", "inferred", "list"])
def test_unflatten_sizes_follow_the_plan(sizes):
    """nn.Unflatten's sizes are its attribute, which its view checks: they follow what it
    returns under the plan (a -1 stays), and the width it splits prunes exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 24), nn.Unflatten(-1, sizes), nn.ReLU(), nn.Flatten(1), nn.Linear(24, 3)
    )
    pruned, result = check(model, torch.randn(5, 8, dtype=F64))
    assert result.params_after < result.params_before
    (a, b), width = pruned[1].unflattened_size, pruned[0].out_features
    assert type(pruned[1].unflattened_size) is type(sizes) and (b == -1) == (sizes[1] == -1)
    assert width == a * b if b != -1 else width % a == 0


@pytest.mark.parametrize("cls", [nn.Embedding, nn.EmbeddingBag])
def test_an_embeddings_max_norm_is_declared_and_tracing_leaves_its_rows(cls):
    """An embedding with ``max_norm`` rescales the rows it looks up, in place, to that norm
    over its embedding dim: pruning that dim is function-changing (declared). A real trace
    runs on the parameters' own memory, so the renormalising write used to land in the model
    (the first trace scaled its rows; a trace of the pruned shapes wrote into views of them):
    the kept weights are now the original's bits."""
    torch.manual_seed(0)
    model = nn.Sequential(cls(20, 12, max_norm=1.0), nn.Linear(12, 3))
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # every row longer than max_norm
    ids = torch.tensor([[1, 4, 7], [7, 2, 19]])
    before = model[0].weight.detach().clone()
    dx.DependencyGraph(model, ids)
    assert torch.equal(model[0].weight, before)
    with pytest.warns(dx.FunctionChangingWarning, match="max_norm"):
        result = dx.prune(model, ids, ratio=0.5)
    kept = result.plan["0.weight"][1]
    assert torch.equal(model[0].weight, before[:, kept])


def test_a_bilinear_layer_prunes_its_three_widths():
    """nn.Bilinear (_trilinear: x1 W x2 summed over both inputs' features): both input widths
    and the output width prune exactly, and its in1/in2/out_features follow."""

    class TwoSides(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 10), nn.Linear(5, 8)
            self.bilinear = nn.Bilinear(10, 8, 12)
            self.head = nn.Linear(12, 3)

        def forward(self, x):
            h = self.bilinear(torch.sigmoid(self.a(x)), torch.tanh(self.b(x)))
            return self.head(torch.relu(h))

    pruned, _ = check(TwoSides(), torch.randn(4, 5, dtype=F64))
    b = pruned.bilinear
    assert (b.in1_features, b.in2_features, b.out_features) == (5, 4, 6)
    assert b.weight.shape == (6, 5, 4)


class Codebook(nn.Module):
    """A vector quantiser (VQ-VAE, diffusers' VQModel): each feature vector is replaced by its
    nearest codebook row, by ``torch.cdist``, and decoded; ``shift`` moves the features off
    zero at every channel first."""

    def __init__(self, shift: float = 0.0, p: float = 2.0):
        super().__init__()
        self.enc = nn.Conv2d(3, 16, 3, padding=1)
        self.codebook = nn.Embedding(10, 16)
        self.dec = nn.Conv2d(16, 3, 1)
        self.shift, self.p = shift, p

    def forward(self, x):
        z = self.enc(x)
        flat = z.permute(0, 2, 3, 1).flatten(0, 2) + self.shift
        index = torch.cdist(flat, self.codebook.weight, p=self.p).argmin(1)
        q = self.codebook(index).view(z.shape[0], z.shape[2], z.shape[3], -1)
        return self.dec(q.permute(0, 3, 1, 2) + z)


@pytest.mark.parametrize(
    "size, p", [(6, 2.0), (2, 2.0), (2, 1.0)]
)  # _euclidean_dist past 25 rows; _cdist_forward below, any p
def test_a_distance_over_channels_is_exact_where_both_sides_are_zero_there(size, p):
    """cdist sums over the feature channels: with the features and the codebook both zero at
    removed channels the distances, and so every nearest code, stay as they were (the oracle
    holds); features shifted off zero make the channels function-changing, said so."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, dtype=F64)
    pruned, result = check(Codebook(p=p), x)
    assert pruned.enc.out_channels == pruned.codebook.embedding_dim == 8
    assert not result.function_changing
    shifted = Codebook(shift=0.5, p=p).double().eval()
    with pytest.warns(dx.FunctionChangingWarning, match="a distance over units"):
        result = dx.prune(copy.deepcopy(shifted), x, ratio=0.5)
    assert result.function_changing
    with pytest.raises(dx.NoPrunableGroupsError):
        dx.prune(copy.deepcopy(shifted), x, ratio=0.5, exact_only=True)


class TokensBetweenConvs(nn.Module):
    """UVit's middle (diffusers' UVit2DModel): the feature map's width read from its shape,
    tokens projected to a hidden width and back by linear layers, and the result viewed with
    the width read before, though it is another layer's output of the same size (which the
    plan keeps whole here)."""

    def __init__(self):
        super().__init__()
        self.conv_in, self.conv_out = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 3, 1)
        self.to_hidden, self.from_hidden = nn.Linear(16, 24), nn.Linear(24, 16)

    def forward(self, x):
        h = torch.relu(self.conv_in(x))
        b, c, height, width = h.shape
        tokens = h.permute(0, 2, 3, 1).reshape(b, height * width, c)
        tokens = self.from_hidden(torch.relu(self.to_hidden(tokens)))
        out = self.conv_out(tokens.reshape(b, height, width, c).permute(0, 3, 1, 2))
        return out, tokens  # (the tokens an output: their width stays)


def test_a_view_given_a_width_read_from_another_tensor_keeps_that_width():
    """The last view's width is the feature map's (read), not its own tensor's: a plan that
    pruned the two differently failed the view, and nothing the plan could keep was found
    (the view's own dims were kept already): the prune raised. Now the width read is kept,
    and the rest prunes."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    with pytest.warns(dx.FixedSizeWarning):
        pruned, _ = check(TokensBetweenConvs(), x)
    assert pruned.conv_in.out_channels == pruned.from_hidden.out_features == 16
    assert pruned.to_hidden.out_features == 12
    assert pruned(x)[0].shape == (2, 3, 4, 4)


class ComplexRotaryAttention(nn.Module):
    """Attention as diffusers' attention modules write it: the head count an attribute
    (``self.heads``) the code splits by, and rotary embeddings as a complex product
    (``view_as_complex`` of channel pairs, times unit phases, ``view_as_real``), as Meta's
    Llama code, Lumina and Qwen-Image do."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.Linear(dim, dim)

    def rotate(self, x, phases):
        pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * phases).flatten(-2)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        head_dim = k.shape[-1] // self.heads
        q, k, v = (t.view(b, -1, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        angles = torch.arange(n, dtype=x.dtype)[:, None] * torch.arange(1, head_dim // 2 + 1)
        phases = torch.polar(torch.ones_like(angles), angles)
        q, k = self.rotate(q, phases), self.rotate(k, phases)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * head_dim))


def test_heads_split_by_a_heads_attribute_with_complex_rotary_embeddings_prune_exactly():
    """``view_as_complex`` and ``view_as_real`` had no rule (every head blocked, an opaque op
    named), and a module's ``heads`` attribute (diffusers' name) did not follow the heads
    pruned, so the code's split failed validation and kept them all. Both follow now: two of
    four heads go, the attribute says so, and the oracle holds."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 32, dtype=F64)
    pruned, result = check(ComplexRotaryAttention(), x)
    assert pruned.heads == 2 and pruned.to_q.out_features == 16
    assert not result.function_changing


class NormalisedLatents(nn.Module):
    """Latents standardised by per-channel buffers, ``(z - means) / stds`` (diffusers'
    consistency decoder), then decoded."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 1)
        self.register_buffer("means", torch.linspace(-0.5, 0.5, 8).view(1, 8, 1, 1))
        self.register_buffer("stds", torch.linspace(0.5, 2.0, 8).view(1, 8, 1, 1))

    def forward(self, x):
        return self.dec(torch.relu((self.enc(x) - self.means) / self.stds))


def test_a_channel_divided_by_a_buffer_is_removed_as_its_zeroing_with_the_divisor_one():
    """The oracle's original-shaped model zeroed the removed channels of ``stds`` too: 0 / 0
    there, NaN everywhere after. A tensor the model divides by holds one at removed units
    (the zero numerator stays zero), in the oracle and in ``verify=True``'s check."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=F64)
    pruned, result = check(NormalisedLatents(), x)
    assert pruned.enc.out_channels == 4 and result.divisors == {"stds": 1.0}
    model = NormalisedLatents().double().eval()
    assert dx.prune(model, x, ratio=0.5, verify=True).verify(x) < 1e-12


class QuantisedByLevels(nn.Module):
    """Finite scalar quantisation (diffusers' ACE-Step audio tokenizer): each code channel
    has its number of levels, a buffer, and the code divides by ``levels - 1``."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(5, 6), nn.Linear(6, 5)
        levels = torch.tensor([8.0, 8.0, 8.0, 5.0, 5.0, 5.0])
        self.register_buffer("levels", levels)
        self.register_buffer("scales", torch.stack([levels**-i for i in range(2)]))

    def forward(self, x):
        clamp = 1.0 + 1.0 / (self.levels - 1.0)
        residual = torch.tanh(self.enc(x) / clamp) * clamp
        step, out = 2.0 / (self.levels - 1.0), 0
        for scale in self.scales:  # (residual quantisation, one scale per round)
            h = residual / scale
            q = step * torch.floor((self.levels - 1.0) * (h.clamp(-1, 1) + 1.0) / 2 + 0.5) - 1
            residual, out = residual - q * scale, out + q * scale
        return self.dec(out)


def test_a_buffer_divided_by_after_a_subtraction_holds_what_makes_the_divisor_one():
    """``1 / (levels - 1)``: one at a removed code channel still divides by zero (NaN in
    the oracle's original-shaped model and in ``verify=True``'s check, which then refused a
    good prune). It holds what makes the divisor one: two. And a row of ``scales`` the loop
    takes (an unbind) is a divisor too."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=F64)
    pruned, result = check(QuantisedByLevels(), x)
    assert pruned.levels.shape == (3,) and result.divisors == {"levels": 2.0, "scales": 1.0}
    model = QuantisedByLevels().double().eval()
    assert dx.prune(model, x, ratio=0.5, verify=True).verify(x) < 1e-12


class DividedByAConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) / torch.tensor([2.0], dtype=x.dtype))


def test_a_divisor_made_by_an_op_that_returns_its_input_is_followed_once():
    """``torch.tensor(...)`` records an op (lift_fresh) that returns its input: following a
    divisor back to a parameter looped on it for ever (here: a minute, then an error)."""
    import signal

    def too_long(*_):
        raise TimeoutError("the prune did not end")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        torch.manual_seed(0)
        pruned, result = check(DividedByAConstant(), torch.randn(3, 4, dtype=F64))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert pruned.a.out_features == 4 and not result.divisors


class CheckedUpsample(nn.Module):
    """diffusers' Upsample2D: the channel count an attribute the forward asserts."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpsamplingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in, self.up = nn.Conv2d(3, 16, 3, padding=1), CheckedUpsample(16)
        self.conv_out = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return self.conv_out(torch.relu(self.up(torch.relu(self.conv_in(x)))))


def test_an_attribute_the_code_compares_with_a_size_follows_that_size():
    """``assert x.shape[1] == self.channels`` kept the channels whole (the plan's trace failed
    the assertion): an attribute of a module no attribute rule covers, compared with a size
    the code read, now follows the kept size, and the plan's trace checks it."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    pruned, result = check(UpsamplingNet(), x)
    assert pruned.up.channels == pruned.conv_in.out_channels == 8
    assert any(u.attr == "channels" and u.new == 8 for u in result.attribute_updates)


class AssertsItsWidth(nn.Module):
    """T5-FiLM's decoder (diffusers): ``assert emb.shape == (batch, 1, 4 * d_model)``, a size
    the code checks against a number it computed, in Python, between two ops."""

    def __init__(self):
        super().__init__()
        self.d_model = 4
        self.emb, self.out = nn.Linear(3, 16), nn.Linear(16, 2)
        self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        emb = torch.relu(self.emb(x))
        assert emb.shape == (x.shape[0], 4 * self.d_model)
        return self.out(emb) + self.fc2(torch.relu(self.fc1(x)))


def test_a_size_python_checks_between_two_ops_is_kept():
    """The plan's trace failed in the assertion, which is no op: the failure was placed at
    the next op, whose dims were whole, and nothing was found to keep (the prune raised).
    The dims the code read just before the failing op are kept now, and the rest prunes."""
    torch.manual_seed(0)
    with pytest.warns(dx.FixedSizeWarning, match="assert"):
        pruned, _ = check(AssertsItsWidth(), torch.randn(4, 3, dtype=F64))
    assert pruned.emb.out_features == 16 and pruned.fc1.out_features == 4


class SparseGcn(nn.Module):
    """Graph convolutions over a sparse adjacency, ``torch.sparse.mm(adj, x W)``: one
    ``_sparse_addmm`` each, which had no rule (every channel blocked)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x, adjacency):
        h = torch.relu(torch.sparse.mm(adjacency, self.l1(x)))
        return torch.sparse.mm(adjacency, self.l2(h))


def test_a_sparse_adjacency_product_prunes_the_features_it_carries():
    torch.manual_seed(0)
    edges = torch.tensor([[0, 1, 2, 3, 4, 5, 0], [1, 2, 3, 4, 5, 0, 3]])
    adjacency = torch.sparse_coo_tensor(edges, torch.rand(7, dtype=torch.float64), (6, 6))
    x = torch.randn(6, 8, dtype=torch.float64)
    pruned, _ = prune_and_check(SparseGcn().double(), (x, adjacency), ratio=0.5)
    assert pruned.l1.out_features == 8


class PerGraphMean(nn.Module):
    """Node features divided by their graph's node count, counted from CSR row pointers made
    by ``_convert_indices_from_coo_to_csr`` (as torch_geometric's HeteroLinear makes them),
    which had no rule: an OpaqueOpWarning, though it reads only the batch vector."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x, batch):
        pointers = torch._convert_indices_from_coo_to_csr(batch, 3)
        counts = (pointers[1:] - pointers[:-1]).to(x.dtype)
        return self.l2(torch.relu(self.l1(x)) / counts[batch].unsqueeze(1))


def test_csr_row_pointers_are_read_as_data_not_opaque():
    torch.manual_seed(0)
    batch = torch.tensor([0, 0, 1, 1, 1, 2])
    x = torch.randn(6, 8, dtype=torch.float64)
    pruned, _ = prune_and_check(PerGraphMean().double(), (x, batch), ratio=0.5)
    assert pruned.l1.out_features == 8


class _Scored(nn.Module):
    """Conv features scored by a loss against targets: the model returns the loss alone."""

    def __init__(self, loss) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 4, 1)
        self.loss = loss

    def forward(self, x, target):
        return self.loss(self.c(F.relu(self.b(F.relu(self.a(x))))), target)


def _ctc(y, target):
    log_probs = y.flatten(2).permute(2, 0, 1).log_softmax(-1)  # [T, N, C], C[0] the blank
    lengths = torch.full((y.shape[0],), log_probs.shape[0], dtype=torch.long)
    return F.ctc_loss(log_probs, target, lengths, torch.full_like(lengths, target.shape[1]))


_LOSSES = {
    "cross_entropy": (lambda y, t: F.cross_entropy(y, t), lambda: torch.randint(0, 4, (2, 3, 3))),
    "cross_entropy_weighted": (
        lambda y, t: F.cross_entropy(y, t, weight=torch.tensor([1.0, 2.0, 0.5, 1.0]).double()),
        lambda: torch.randint(0, 4, (2, 3, 3)),
    ),
    "nll_per_pixel": (
        lambda y, t: F.nll_loss(y.log_softmax(1), t, reduction="none"),
        lambda: torch.randint(0, 4, (2, 3, 3)),
    ),
    "nll_pooled": (
        lambda y, t: F.nll_loss(y.mean((2, 3)).log_softmax(1), t),
        lambda: torch.tensor([1, 3]),
    ),
    "mse": (F.mse_loss, lambda: torch.rand(2, 4, 3, 3).double()),
    "bce_with_logits": (
        F.binary_cross_entropy_with_logits,
        lambda: torch.rand(2, 4, 3, 3).double(),
    ),
    "bce": (
        lambda y, t: F.binary_cross_entropy(y.sigmoid(), t),
        lambda: torch.rand(2, 4, 3, 3).double(),
    ),
    "smooth_l1": (F.smooth_l1_loss, lambda: torch.rand(2, 4, 3, 3).double()),
    "huber": (F.huber_loss, lambda: torch.rand(2, 4, 3, 3).double()),
    "soft_margin": (F.soft_margin_loss, lambda: torch.rand(2, 4, 3, 3).double().sign()),
    "multi_margin": (
        lambda y, t: F.multi_margin_loss(y.mean((2, 3)), t),
        lambda: torch.tensor([1, 3]),
    ),
    "multilabel_margin": (
        lambda y, t: F.multilabel_margin_loss(y.mean((2, 3)), t),
        lambda: torch.tensor([[0, 1, -1, 0], [3, -1, 0, 0]]),
    ),
    "ctc": (_ctc, lambda: torch.tensor([[1, 2], [3, 3]])),
}


@pytest.mark.parametrize("name", sorted(_LOSSES))
def test_a_loss_keeps_the_dims_it_scores_and_the_rest_prunes_exactly(name):
    loss, target = _LOSSES[name]
    torch.manual_seed(0)
    model = _Scored(loss).double()
    inputs = (torch.randn(2, 3, 3, 3, dtype=torch.float64), target())
    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.OpaqueOpWarning)  # a loss is an op the rules know
        pruned, result = prune_and_check(model, inputs, ratio=0.5, exact_only=True)
        dg = dx.DependencyGraph(copy.deepcopy(model), inputs)
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.out_channels) == (4, 3, 4)
    [why] = dg.blockers("c.weight", 0)  # the scored dim: kept by the loss, named
    assert why.what.split()[1].rsplit(".", 1)[0] in _LOSS_OPS  # (op aten.mse_loss.default ...)
    assert why.what.endswith("whose rule allows no pruning there")


_LOSS_OPS = {
    "aten.nll_loss_forward",
    "aten.nll_loss2d_forward",
    "aten.mse_loss",
    "aten.binary_cross_entropy_with_logits",
    "aten.binary_cross_entropy",
    "aten.smooth_l1_loss",
    "aten.huber_loss",
    "aten.soft_margin_loss",
    "aten.multi_margin_loss",
    "aten.multilabel_margin_loss_forward",
    "aten._ctc_loss",
}


class _Forces(nn.Module):
    """An energy of positions and the forces as its negative gradient, taken in the forward
    (a learned force field, a physics-informed net): the backward's activation gradients
    are traced ops like any other."""

    def __init__(self, activation) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 16), nn.Linear(16, 16), nn.Linear(16, 1)
        self.act = activation

    def forward(self, pos):
        with torch.enable_grad():
            pos = pos.detach().requires_grad_(True)
            energy = self.c(self.act(self.b(self.act(self.a(pos))))).sum()
            forces = -torch.autograd.grad(energy, pos, create_graph=True)[0]
        return energy, forces


@pytest.mark.parametrize(
    "activation", [torch.tanh, torch.sigmoid, F.silu, F.gelu, F.softplus, F.elu, torch.relu]
)
def test_a_forward_that_differentiates_itself_prunes_exactly(activation):
    torch.manual_seed(0)
    pos = torch.randn(6, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.OpaqueOpWarning)  # (activation gradients: known)
        pruned, _ = prune_and_check(_Forces(activation).double(), pos, ratio=0.5, exact_only=True)
    assert (pruned.a.out_features, pruned.b.out_features) == (8, 8)


class WritesFeaturesOverTokens(nn.Module):
    """A vision-language model's merge: image features written over the embeddings of the
    image tokens, ``embeds.masked_scatter(mask, features)``; ``per_unit``: a mask of the
    embeddings' own shape, which may select units of a row apart (no width can follow)."""

    def __init__(self, per_unit: bool) -> None:
        super().__init__()
        self.embed, self.project = nn.Linear(6, 16), nn.Linear(4, 16)
        self.head, self.per_unit = nn.Linear(16, 3), per_unit

    def forward(self, tokens, image, is_image):
        embeds, features = self.embed(tokens), self.project(image)
        mask = is_image.unsqueeze(-1)  # [B, S, 1]: whole rows
        if self.per_unit:
            mask = mask.expand_as(embeds).contiguous()
        return self.head(torch.relu(embeds.masked_scatter(mask, features)))


def _tokens_and_an_image():
    """Token features [2, 5, 6], image features [3, 4] and the three image tokens' mask."""
    torch.manual_seed(0)
    tokens = torch.randn(2, 5, 6, dtype=torch.float64)
    image = torch.randn(3, 4, dtype=torch.float64)
    return tokens, image, torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)


def test_features_written_over_tokens_prune_with_the_embeddings(backend):
    inputs = _tokens_and_an_image()
    model = WritesFeaturesOverTokens(per_unit=False).double().eval()
    original = copy.deepcopy(model)
    result = dx.prune(model, inputs, ratio=0.5, strict=True, backend=backend, progress=False)
    # one group: the embeddings' width, the features' written over them and what reads both
    assert model.embed.out_features == model.project.out_features == 8
    assert model.head.in_features == 8
    assert_scatter_back_equal(original, model, result, inputs)


def test_features_written_unit_by_unit_keep_the_width():
    """A mask that may select single units: source's elements land where the data says, in
    an order that removing units would shift; the width stays, named as the op's."""
    inputs = _tokens_and_an_image()
    model = WritesFeaturesOverTokens(per_unit=True).double().eval()
    dg = dx.DependencyGraph(model, inputs)
    pruned = {m.name for g in dg.groups for m in g.members}
    assert "embed.weight" not in pruned and "project.weight" not in pruned
    assert any("masked_scatter" in b.what for b in dg.blockers("embed.weight", 0))


class UnfoldsPatches(nn.Module):
    """Image patches by unfold (along the spatial dims: channels prune through; ``along_c``:
    along the channels, whose windows are the data's layout: they stay)."""

    def __init__(self, along_c: bool) -> None:
        super().__init__()
        self.conv, self.along_c = nn.Conv2d(3, 8, 3, padding=1), along_c
        self.head = nn.Linear(8 * 4 if not along_c else 4 * 2 * 16, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))  # [B, 8, 4, 4]
        if self.along_c:
            return self.head(h.unfold(1, 2, 2).flatten(1))  # [B, 4, 4, 4, 2]
        patches = h.unfold(2, 2, 2).unfold(3, 2, 2)  # [B, 8, 2, 2, 2, 2]
        return self.head(patches.sum((-1, -2)).flatten(1))


@pytest.mark.parametrize("along_c", [False, True])
def test_unfold_keeps_its_windows_and_the_rest_prunes_exactly(along_c, backend):
    torch.manual_seed(0)
    model = UnfoldsPatches(along_c).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    if along_c:
        dg = dx.DependencyGraph(model, x, strict=True)
        assert not any(m.name == "conv.weight" for g in dg.groups for m in g.members)
        assert any("unfold" in b.what for b in dg.blockers("conv.weight", 0))
        return
    original = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.conv.out_channels == 4 and model.head.in_features == 16
    assert_scatter_back_equal(original, model, result, x)


class LooksUpBuckets(nn.Module):
    """Coordinates put in buckets of a buffer's boundaries (bucketize, searchsorted), whose
    ids look up an embedding; features repeated per row by counts the data gives
    (repeat_interleave with a tensor of repeats)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bounds", torch.linspace(0, 1, 7))
        self.pos, self.feat = nn.Embedding(8, 12), nn.Linear(4, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, coords, x, counts):
        ids = torch.bucketize(coords, self.bounds) + torch.searchsorted(self.bounds, coords) // 8
        h = torch.relu(self.feat(x)).repeat_interleave(counts, dim=0)  # [sum(counts), 12]
        return self.head(self.pos(ids) + h)


def test_bucket_ids_and_rows_repeated_by_the_data_prune_the_features_exactly(backend):
    torch.manual_seed(0)
    model = LooksUpBuckets().double().eval()
    counts = torch.tensor([2, 1, 3])
    coords = torch.rand(6, dtype=torch.float64)
    inputs = (coords, torch.randn(3, 4, dtype=torch.float64), counts)
    original = copy.deepcopy(model)
    result = dx.prune(model, inputs, ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.feat.out_features == model.pos.embedding_dim == 6
    assert_scatter_back_equal(original, model, result, inputs)


class SolvesTriangular(nn.Module):
    """A triangular system solved for features (a chunked delta rule's within-chunk solve):
    the solved columns (rows, on the right) prune with B's; the system's dim stays."""

    def __init__(self, left: bool) -> None:
        super().__init__()
        self.b, self.head, self.left = nn.Linear(6, 10), nn.Linear(10, 2), left

    def forward(self, a, x):
        b = self.b(x)  # [B, n, 10]
        if self.left:
            return self.head(torch.linalg.solve_triangular(a, b, upper=False))
        solved = torch.linalg.solve_triangular(a, b.transpose(1, 2), upper=False, left=False)
        return self.head(solved.transpose(1, 2))


@pytest.mark.parametrize("left", [True, False])
def test_a_triangular_solve_prunes_its_solved_columns_exactly(left, backend):
    torch.manual_seed(0)
    model = SolvesTriangular(left).double().eval()
    a = torch.randn(2, 5, 5, dtype=torch.float64).tril() + 3 * torch.eye(5, dtype=torch.float64)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    original = copy.deepcopy(model)
    result = dx.prune(model, (a, x), ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.b.out_features == model.head.in_features == 5
    assert_scatter_back_equal(original, model, result, (a, x))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_antialiased_resampling_keeps_positions_and_prunes_channels_exactly(mode, backend):
    """``F.interpolate(..., antialias=True)`` (a ViT resizing its position embeddings) runs
    ops of its own: positions resampled, channels each on their own."""

    class Resamples(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            h = F.interpolate(torch.relu(self.a(x)), size=(3, 3), mode=mode, antialias=True)
            return self.b(h)

    torch.manual_seed(0)
    model = Resamples().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    original = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.a.out_channels == 4
    assert_scatter_back_equal(original, model, result, x)


class UpdatesMaskedTokens(nn.Module):
    """Tokens a [B, S] mask selects updated by their own MLP in place (a speech model's
    audio tokens: ``h[mask] += mlp(h[mask])``; UDOP's ``embeds[mask] = 0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mlp = nn.Linear(4, 12), nn.Sequential(nn.Linear(12, 6), nn.ReLU())
        self.up, self.head = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x, mask):
        h = self.embed(x)  # [B, S, 12]
        h[mask] += self.up(self.mlp(h[mask]))
        h[~mask] = 0.0
        return self.head(h)


def test_tokens_a_mask_over_several_dims_selects_are_updated_and_the_width_prunes(backend):
    torch.manual_seed(0)
    model = UpdatesMaskedTokens().double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    original = copy.deepcopy(model)
    result = dx.prune(model, (x, mask), ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.embed.out_features == model.up.out_features == 6
    assert model.mlp[0].out_features == 3
    assert_scatter_back_equal(original, model, result, (x, mask))


class CrossesPositions(nn.Module):
    """Point features with the cross product of two coordinate vectors (PPFConv's angle
    features): the vectors' dim stays; the features prune through the product."""

    def __init__(self) -> None:
        super().__init__()
        self.lift, self.head = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, v1, v2):
        return self.head(torch.relu(self.lift(torch.cross(v1, v2, dim=1))))


def test_a_cross_product_keeps_its_vectors_and_the_features_prune_exactly(backend):
    torch.manual_seed(0)
    model = CrossesPositions().double().eval()
    inputs = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64))
    original = copy.deepcopy(model)
    result = dx.prune(model, inputs, ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.lift.out_features == 4
    assert_scatter_back_equal(original, model, result, inputs)


class FourierLayer(nn.Module):
    """A Fourier neural operator's block: channels lifted, transformed over the grid
    (``rfft2``), mixed by complex weights on the lowest modes, transformed back, plus a
    pointwise path. The grid's dims are what the transforms mix; channels prune."""

    def __init__(self, width: int = 8, modes: int = 3) -> None:
        super().__init__()
        self.lift, self.skip = nn.Conv2d(3, width, 1), nn.Conv2d(width, width, 1)
        scale = 1 / width**2
        self.weights = nn.Parameter(
            scale * torch.randn(width, width, modes, modes, dtype=torch.cdouble)
        )
        self.proj, self.modes = nn.Conv2d(width, 1, 1), modes

    def forward(self, x):
        h = self.lift(x)
        b, _, height, width = h.shape
        spectrum = torch.fft.rfft2(h)
        mixed = torch.zeros(b, self.weights.shape[1], height, width // 2 + 1, dtype=spectrum.dtype)
        m = self.modes
        mixed[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", spectrum[:, :, :m, :m], self.weights)
        return self.proj(F.gelu(torch.fft.irfft2(mixed, s=(height, width)) + self.skip(h)))


def test_a_fourier_neural_operator_prunes_its_channels_exactly(backend):
    torch.manual_seed(0)
    model = FourierLayer().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    original = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, strict=True, backend=backend, progress=False)
    assert model.lift.out_channels == 4 and model.weights.shape == (4, 4, 3, 3)
    assert model.weights.dtype == torch.cdouble
    assert_scatter_back_equal(original, model, result, x)
