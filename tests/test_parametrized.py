"""Weights computed from other tensors: torch's parametrizations (weight_norm, spectral_norm,
orthogonal) and the older hook-based weight_norm / spectral_norm. What they compute from is
pruned together (weight_norm's g and v as one weight's members, spectral_norm's u and v along
the dims they belong to), the parametrization stays in place and keeps working, and what the
rules cannot map (an orthogonal matrix) is blocked and said, never pruned silently."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import depgraph_ext as dx
from depgraph_ext.testing import assert_scatter_back_equal
from helpers import assert_same_state, prune_and_check, state_of

F64 = torch.float64


def _hooked_weight_norm(m):
    # (deprecated in favour of parametrizations; built without grad, the weight it stores is a
    # leaf, which copy.deepcopy needs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(m)


def _masked(m):
    """torch.nn.utils.prune: weight = weight_orig * weight_mask, in a forward pre-hook."""
    with torch.no_grad():
        return torch.nn.utils.prune.random_unstructured(m, "weight", amount=0.3)


WRAPS = {
    "weight_norm": parametrizations.weight_norm,
    "spectral_norm": parametrizations.spectral_norm,
    "orthogonal": parametrizations.orthogonal,
    "hooked_weight_norm": _hooked_weight_norm,
    "hooked_spectral_norm": torch.nn.utils.spectral_norm,
    "hooked_mask": _masked,
}
# What each computes the weight from, by the name under the module (state_dict keys).
SOURCES = {
    "weight_norm": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
    "spectral_norm": ("parametrizations.weight.original",),
    "hooked_weight_norm": ("weight_g", "weight_v"),
    "hooked_spectral_norm": ("weight_orig",),
    "hooked_mask": ("weight_mask", "weight_orig"),
}


def conv_net(wrap):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        wrap(nn.Conv2d(8, 8, 3, padding=1)),
        nn.ReLU(),
        nn.Conv2d(8, 6, 1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 1),
    )


def transposed_net(wrap):
    """A vocoder's upsampling: a transposed conv, whose weight is [in, out, k] (weight_norm's
    dim 0 is its input channels; spectral_norm's dim is 1)."""
    return nn.Sequential(
        nn.Conv1d(3, 8, 3, padding=1),
        nn.ReLU(),
        wrap(nn.ConvTranspose1d(8, 6, 4, stride=2, padding=1)),
        nn.ReLU(),
        nn.Conv1d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(5, 2, 1),
    )


def linear_net(wrap):
    return nn.Sequential(
        nn.Linear(5, 8),
        nn.ReLU(),
        wrap(nn.Linear(8, 8)),
        nn.ReLU(),
        nn.Linear(8, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )


class EmbeddingNet(nn.Module):
    def __init__(self, wrap):
        super().__init__()
        self.emb = wrap(nn.Embedding(11, 8))
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids)))).sum(1)


LAYERS = {
    "conv": (conv_net, lambda: torch.randn(2, 3, 6, 6, dtype=F64), "2"),
    "transposed": (transposed_net, lambda: torch.randn(2, 3, 10, dtype=F64), "2"),
    "linear": (linear_net, lambda: torch.randn(4, 5, dtype=F64), "2"),
    "embedding": (EmbeddingNet, lambda: torch.randint(0, 11, (2, 5)), "emb"),
}


def build(wrap_name: str, layer: str):
    make, inputs, where = LAYERS[layer]
    torch.manual_seed(0)
    model = make(lambda m: WRAPS[wrap_name](m.double())).double().eval()
    return model, inputs(), where


@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("wrap_name", sorted(WRAPS))
def test_every_parametrization_on_a_conv_a_linear_and_an_embedding(wrap_name, layer):
    """The sweep: what a parametrization computes from is pruned exactly (the oracle) with the
    weight it computes, or blocked with a warning naming the op; never pruned silently."""
    model, x, where = build(wrap_name, layer)
    if wrap_name == "orthogonal":
        # The matrix exponential (or Householder product) of the whole matrix has no rule:
        # what it reads is blocked and said. The rows of a ``base`` (Q = base @ exp(A)) are
        # rows of the weight, which go exactly where the net lets them.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", dx.OpaqueOpWarning)
            pruned, result = prune_and_check(model, x)
        said = [str(w.message) for w in caught if w.category is dx.OpaqueOpWarning]
        assert any(f"module {where}.parametrizations.weight.0" in m for m in said), said
    else:
        pruned, result = prune_and_check(model, x)
        sources = SOURCES[wrap_name] if layer != "embedding" else SOURCES[wrap_name][-1:]
        for source in sources:  # (an embedding's g is per word: the vocabulary stays)
            assert f"{where}.{source}" in result.plan, source
    assert not result.function_changing
    module = pruned.get_submodule(where)
    weight = module.weight  # as the parametrization computes it (a hook's: computed again)
    if wrap_name.startswith("hooked"):
        assert weight.shape == module.get_parameter(SOURCES[wrap_name][-1]).shape
    else:
        assert parametrize.is_parametrized(module, "weight")
    pruned_here = any(n.startswith(f"{where}.") for n in result.plan)
    assert pruned_here or wrap_name == "orthogonal"  # (orthogonal: where a base's rows go)
    if layer == "conv":
        assert (module.out_channels, module.in_channels) == tuple(weight.shape[:2])
    elif layer == "transposed":
        assert (module.in_channels, module.out_channels) == tuple(weight.shape[:2])
    elif layer == "linear":
        assert (module.out_features, module.in_features) == tuple(weight.shape)
    else:
        assert module.embedding_dim == weight.shape[1]
    full = {"conv": 8 * 8 * 9, "transposed": 8 * 6 * 4}.get(layer, 8 * 8)
    assert weight.numel() < full or not pruned_here


def test_weight_norm_g_and_v_are_one_weights_members(backend):
    model, x, _ = build("weight_norm", "conv")
    original = copy.deepcopy(model)
    result = dx.prune(model, x, backend=backend)
    conv = model[2]
    g = conv.parametrizations.weight.original0
    v = conv.parametrizations.weight.original1
    kept_out = result.plan["2.parametrizations.weight.original1"][0]
    assert torch.equal(result.plan["2.parametrizations.weight.original0"][0], kept_out)
    assert g.shape == (kept_out.numel(), 1, 1, 1)
    assert v.shape == (kept_out.numel(), conv.in_channels, 3, 3)
    # the parametrization still computes the weight, from the kept g and v
    expected = torch._weight_norm(v, g, 0)
    assert torch.equal(conv.weight, expected)
    # and training goes on: gradients reach g and v
    model.train()
    model(x).sum().backward()
    assert g.grad is not None and v.grad is not None and v.grad.shape == v.shape
    assert_scatter_back_equal(original, model.eval(), result.plan, x)


def test_spectral_norm_vectors_follow_their_dims_and_power_iterations_run():
    model, x, _ = build("spectral_norm", "conv")
    model.train()  # every forward runs a power iteration, updating u and v in place
    original = copy.deepcopy(model)
    result = dx.prune(model, x)
    sn = model[2].parametrizations.weight[0]
    out_kept = result.plan["2.parametrizations.weight.original"][0].numel()
    in_kept = result.plan["2.parametrizations.weight.original"][1].numel()
    assert sn._u.shape == (out_kept,) and sn._v.shape == (in_kept * 9,)
    assert_scatter_back_equal(original.eval(), model.eval(), result.plan, x)
    # the power iteration of training mode, on the pruned model and on the zeroed original
    assert_scatter_back_equal(original.train(), model.train(), result.plan, x)


@pytest.mark.parametrize("wrap_name", ["hooked_weight_norm", "hooked_spectral_norm"])
def test_tracing_leaves_a_hook_computed_weight_as_it_was(wrap_name):
    """The older hooks set ``module.weight`` in a forward pre-hook: a trace must not leave its
    own (meta, fake) tensor there."""
    model, x, _ = build(wrap_name, "conv")
    weight = model[2].weight
    before = state_of(model)
    dx.DependencyGraph(model, x)
    dx.DependencyGraph(model, x, trace_device="meta")
    assert model[2].weight is weight
    assert_same_state(before, state_of(model))


def test_wav2vec2_positional_convolution():
    """wav2vec2's positional embedding: a grouped Conv1d under weight_norm over its kernel dim
    (dim=2), so the norm runs over the channels."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=37,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        vocab_size=12,
    )
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(config).double().eval()
    x = torch.randn(2, 400, dtype=F64)
    conv = model.wav2vec2.encoder.pos_conv_embed.conv
    assert parametrize.is_parametrized(conv, "weight")
    # its channels are the hidden width, under layer norms: function-changing, and declared
    with pytest.warns(dx.FunctionChangingWarning):
        pruned, result = prune_and_check(model, x, oracle=False)
    conv = pruned.wav2vec2.encoder.pos_conv_embed.conv
    name = "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight"
    assert f"{name}.original1" in result.plan  # (g is [1, 1, kernel]: nothing of it goes)
    assert conv.in_channels == conv.out_channels < 32
    assert conv.weight.shape == (conv.out_channels, conv.in_channels // conv.groups, 8)
    assert all("weight_norm" not in why for why in result.function_changing)
    assert pruned(x).logits.shape == model(x).logits.shape


@pytest.mark.parametrize("wrap_name", ["hooked_weight_norm", "hooked_spectral_norm", "hooked_mask"])
def test_a_hooks_stored_weight_is_computed_again_after_the_prune(wrap_name):
    """``module.weight`` is what the hook stored at the last forward: the prune computes it
    again from the pruned tensors, so it has the pruned shape before any forward."""
    model, x, _ = build(wrap_name, "conv")
    dx.prune(model, x, ratio=0.5)
    conv = model[2]
    assert conv.weight.shape == (conv.out_channels, conv.in_channels, 3, 3)
    assert conv.out_channels < 8 and conv.in_channels < 8
    copy.deepcopy(model)  # (a stored weight with an autograd graph could not be copied)


@pytest.mark.parametrize("wrap", ["weight_norm", "mask"])
def test_the_oracle_copies_a_model_whose_hook_stored_a_weight_with_grad(wrap):
    """Built the usual way (grad on), the hook-based weight_norm and torch.nn.utils.prune
    store a weight with an autograd graph, which copy.deepcopy refuses: the oracle and
    ``PruneResult.verify`` copy such a model all the same, and the oracle still sees a
    wrong weight."""

    def make():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))
        net = net.double()
        if wrap == "weight_norm":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.nn.utils.weight_norm(net[0])
        else:
            torch.nn.utils.prune.l1_unstructured(net[0], "weight", amount=0.3)
        return net

    model, original = make(), make()
    assert not model[0].weight.is_leaf
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    result = dx.prune(model, x, ratio=0.5, exact_only=True)
    assert model[0].out_channels < 8
    assert_scatter_back_equal(original, model, result, x)
    assert result.verify(x) == 0.0
    with torch.no_grad():
        model[2].weight[0, 0] += 1.0
    with pytest.raises(AssertionError):
        assert_scatter_back_equal(original, model, result, x)
