"""A prune traces the model once when the model's code cannot have fixed a pruned size: it read
no size the plan prunes (dim by dim), gave no pruned size of a view, reshape, expand or new
tensor as a number (rather than -1), indexed no pruned dim, passed no other integer to an op
whose tensors the plan prunes, read no value but Python numbers of decisions a trace of the
pruned shapes replays, and the plan sets no config field or module attribute the forward read
(graph/size_watch.py). Otherwise the pruned shapes are traced
again, as before, and a size the code fixes is still found. (Every other test of the suite
also traces the plans that skip the second trace, and fails if one does not run:
conftest.py.)"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.graph.dependency import DependencyGraph
from depgraph_ext.pruning import validate
from depgraph_ext.testing import assert_scatter_back_equal
from helpers import prune_and_check, tiny_llama


class SmallResNet(nn.Module):
    """conv/bn/relu, a residual block, a strided conv, pooling, flatten, a classifier: the code
    passes nothing but tensors, dims and spatial parameters."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 1)
        )
        self.down = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2), nn.BatchNorm2d(24))
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(torch.flatten(h, 1))


class ReadsItsWidth(SmallResNet):
    """The same, flattening with a size it reads: ``h.view(h.shape[0], h.shape[1])``."""

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(h.view(h.shape[0], h.shape[1]))


class FlattensByItsCount(SmallResNet):
    """The same, flattening with its element count: ``h.view(B, h.numel() // B)``."""

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(h.view(h.shape[0], h.numel() // h.shape[0]))


class ConvertsItsWidth(SmallResNet):
    """The same, with the width it reads converted to a plain int before the arithmetic:
    ``h.view(B, int(h.shape[1]) * h.shape[2])``."""

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(h.view(h.shape[0], int(h.shape[1]) * h.shape[2] * h.shape[3]))


class FixesItsWidth(SmallResNet):
    """The same, flattening to a width it fixes: ``h.view(-1, 24)``."""

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(h.view(-1, 24))


class ReadsTheBatchSize(SmallResNet):
    """The same, flattening with the batch size it reads: ``h.view(h.shape[0], -1)``."""

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(h.view(h.shape[0], -1))


class SlicesItsWidth(SmallResNet):
    """The same, taking the first channels by a number it reads: ``h[:, : h.shape[1] // 2]``
    (a width it could as well fix)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1)).flatten(1)
        return self.head(h[:, : h.shape[1] // 2])


class ReadsAValue(SmallResNet):
    """The same, with a branch on a value: ``if h.mean() > 100``."""

    def forward(self, x):
        h = self.stem(x)
        if h.mean() > 100:  # never, but the code looked at the values
            h = -h
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(torch.flatten(h, 1))


class ReadsValuesAsAList(SmallResNet):
    """The same, with a branch on values read as a list: ``if max(h.mean((2, 3))[0].tolist())
    > 100`` (no decision a trace records: a trace of the pruned shapes could not replay it)."""

    def forward(self, x):
        h = self.stem(x)
        if max(h.mean((2, 3))[0].tolist()) > 100:
            h = -h
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(torch.flatten(h, 1))


class ReadsAValueAndFixesItsWidth(SmallResNet):
    """A branch on a value, then a flatten to a width it fixes: ``h.view(-1, 24)``."""

    def forward(self, x):
        h = self.stem(x)
        if h.mean() > 100:
            h = -h
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(h.view(-1, 24))


X = torch.randn(2, 3, 8, 8, dtype=torch.float64)


def forwards_during_prune(model, **options) -> tuple[int, dx.PruneResult]:
    """How many times the model's forward ran during one prune, and the result."""
    calls = []
    handle = model.register_forward_pre_hook(lambda *args: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, X, ratio=0.5, **options)
    handle.remove()
    return len(calls), result


@pytest.mark.parametrize(
    "make, traces",
    [
        (SmallResNet, 1),
        (ReadsTheBatchSize, 1),
        (ReadsItsWidth, 2),
        (FixesItsWidth, 1),
        (SlicesItsWidth, 2),
        (ReadsAValue, 1),
        (ReadsValuesAsAList, 2),
        (ReadsAValueAndFixesItsWidth, 1),
    ],
)
def test_one_trace_unless_the_code_saw_a_pruned_size(make, traces, monkeypatch):
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model = make().double().eval()
    count, result = forwards_during_prune(model)
    assert count == traces
    assert result.plan and model(X).shape == (2, 5)


def test_a_size_the_code_fixes_is_still_found():
    torch.manual_seed(0)
    model = FixesItsWidth().double().eval()
    with pytest.warns(dx.FixedSizeWarning, match="aten.view"):
        pruned, result = prune_and_check(model, X)
    assert pruned.down[0].out_channels == 24  # the width the code fixes is kept
    assert pruned.stem[0].out_channels < 16


class _Scales:
    """An object that is no module, holding a tensor."""

    def __init__(self) -> None:
        self.scale = torch.linspace(0.5, 2.0, 16, dtype=torch.float64).view(1, -1, 1, 1)


class ScalesByAHeldTensor(SmallResNet):
    """The stem's output scaled by a tensor of an object it holds (not a buffer)."""

    def __init__(self):
        super().__init__()
        self.scales = _Scales()

    def forward(self, x):
        h = self.stem(x) * self.scales.scale
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(torch.flatten(h, 1))


class ScalesByAList(SmallResNet):
    """The stem's output scaled by a tensor made from a Python list of 16 numbers."""

    def __init__(self):
        super().__init__()
        self.scales = [0.5 + i / 10 for i in range(16)]

    def forward(self, x):
        h = self.stem(x) * x.new_tensor(self.scales).view(1, -1, 1, 1)
        h = torch.relu(h + self.block(h))
        h = nn.functional.adaptive_avg_pool2d(self.down(h), (1, 1))
        return self.head(torch.flatten(h, 1))


@pytest.mark.parametrize("make", [FlattensByItsCount, ConvertsItsWidth])
def test_a_width_read_into_arithmetic_is_no_size_the_code_fixes(make, monkeypatch):
    """A count the code takes (``numel()``) is the product of the sizes, followed through the
    arithmetic; a size converted to a plain int is a number of the original, not a literal:
    neither makes the flatten a size the code fixes (both left the model unpruned, each
    flatten taken for one that fixes its width). The plans are traced: the code read them."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model = make().double().eval()
    original = copy.deepcopy(model)
    count, result = forwards_during_prune(model)
    assert count == 2
    assert model.down[0].out_channels < 24 and model.head.in_features < 24
    assert_scatter_back_equal(original, model, result, X)


@pytest.mark.parametrize("source", ["forward hook", "pre-hook", "held object", "list"])
def test_a_tensor_from_outside_the_model_fixes_its_sizes(source, monkeypatch):
    """A tensor that is not the model's state (a hook's, from its closure; an object's the
    model holds; one made from a Python list) scales the stem's 16 channels: no rule follows
    its sizes, so a plan pruning them is traced, and the stem's width is kept. (Judged
    without a trace, the pruned model failed when run.)"""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    make = {"held object": ScalesByAHeldTensor, "list": ScalesByAList}.get(source, SmallResNet)
    model = make().double().eval()
    scale = torch.linspace(0.5, 2.0, 16, dtype=torch.float64).view(1, -1, 1, 1)
    if source == "forward hook":
        model.stem[0].register_forward_hook(lambda module, args, out: out * scale)
    elif source == "pre-hook":
        model.block[0].register_forward_pre_hook(lambda module, args: (args[0] + scale,))
    original = copy.deepcopy(model)
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.warns(dx.FixedSizeWarning):
        result = dx.prune(model, X, ratio=0.5)
    assert len(calls) == 2  # the graph's trace and the plan's
    assert model.stem[0].out_channels == 16 and model.down[0].out_channels < 24
    assert_scatter_back_equal(original, model, result, X)


def test_a_value_the_code_reads_is_replayed_not_traced(monkeypatch):
    """``if h.mean() > 100`` is a Python number of one decision the graph's real trace
    recorded (``aten._local_scalar_dense``); a trace of the pruned shapes would replay it, so
    the plan needs none. A list read is no such decision: traced again. Traced all the same
    (the suite's check), the plan of the first runs too, and the pruned model computes the
    zeroed original's outputs."""
    saws = {}
    for make in (ReadsAValue, ReadsValuesAsAList):
        torch.manual_seed(0)
        saws[make] = dx.DependencyGraph(make().double().eval(), X).graph.code_saw
    assert saws[ReadsAValue].values_read and not saws[ReadsAValue].unreplayed_reads
    assert saws[ReadsValuesAsAList].values_read and saws[ReadsValuesAsAList].unreplayed_reads

    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", True)
    torch.manual_seed(0)
    pruned, result = prune_and_check(ReadsAValue().double().eval(), X)
    assert pruned.stem[0].out_channels < 16 and result.params_after < result.params_before


def test_a_size_fixed_after_a_value_read_is_found_without_a_trace(monkeypatch):
    """A branch on a value, then ``h.view(-1, 24)``: the fixed width is found from the sizes
    the code passed, kept, and the plan redone, in one trace; the pruned model computes the
    zeroed original's outputs."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model = ReadsAValueAndFixesItsWidth().double().eval()
    count, _ = forwards_during_prune(copy.deepcopy(model))
    assert count == 1
    with pytest.warns(dx.FixedSizeWarning, match="aten.view"):
        pruned, _ = prune_and_check(model, X)
    assert pruned.down[0].out_channels == 24 and pruned.stem[0].out_channels < 16


def _llama():
    return tiny_llama(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        # (with fewer key/value heads, transformers repeats them on some torch versions,
        # reading their count off a shape: a second trace there)
        num_key_value_heads=4,
        vocab_size=100,
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"ratios": {"hidden": 0}}, {"exact_only": True}],
    ids=["default", "heads-and-mlp", "exact-only"],
)
def test_a_llama_is_traced_once(options, monkeypatch):
    """Its code reads the batch and sequence sizes and head_dim, gives the heads and the
    hidden width to views as -1, slices the head dim in halves, and its config fields and the
    attributes named like them (the MLP's intermediate_size) are set but never read by the
    forward: the plan needs no second trace, and it runs."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    model = _llama()
    ids = torch.randint(0, 100, (1, 8))
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, ids, ratio=0.5, **options)
    assert len(calls) == 1
    assert result.params_after < result.params_before
    assert result.config_updates  # (the config does follow the pruning)
    calls.clear()
    assert model(ids).logits.shape == (1, 8, 100)


def test_a_config_field_the_forward_reads_keeps_its_value(monkeypatch):
    """A forward that reads a config field (the MLP's intermediate_size, here) could compute
    otherwise with a new value: the field keeps its value (the search for fields that make
    the config rebuild the pruned shapes does not set it either), and the user is told."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    model = _llama()
    for layer in model.model.layers:
        mlp = layer.mlp
        forward = type(mlp).forward

        def reading(x, mlp=mlp, forward=forward):
            assert mlp.config.intermediate_size % 2 == 0
            return forward(mlp, x)

        mlp.config = model.config
        mlp.forward = reading
    ids = torch.randint(0, 100, (1, 8))
    with pytest.warns(dx.ConfigMismatchWarning, match="cannot express the pruned shapes"):
        result = dx.prune(model, ids, ratio=0.5, ratios={"hidden": 0})
    assert model.model.layers[0].mlp.up_proj.out_features < 128
    assert "intermediate_size" not in {u.field for u in result.config_updates}
    assert model.config.intermediate_size == 128


def test_sizes_the_code_reads_are_noted_dim_by_dim():
    """What ``x.shape`` gives the model's code during a graph trace: it behaves as the
    torch.Size it stands for; taking a size reads that dim, and the sizes (SizeInts) carry
    how they were computed."""
    from depgraph_ext.graph.size_watch import CodeSaw, SizeInt, WatchedShape, evaluate

    def watched():
        saw = CodeSaw()
        return WatchedShape(torch.Size((2, 3, 4)), saw, 7, (0, 1, 2)), saw

    def dims_read(use) -> set:
        shape, saw = watched()
        use(shape)
        return {d for v, d in saw.size_reads if v == 7}

    assert dims_read(lambda s: s[0]) == {0}
    assert dims_read(lambda s: s[-1]) == {2}
    assert dims_read(lambda s: s[:-1]) == set()
    assert dims_read(lambda s: s[1:][0]) == {1}
    assert dims_read(lambda s: (*s[:-1], -1)) == {0, 1}
    assert dims_read(len) == set()
    for reads_all in (list, tuple, hash, str, lambda s: s == (2, 3, 4), lambda s: s.numel(),
                      lambda s: s + (1,), lambda s: 3 in s):  # fmt: skip
        assert dims_read(reads_all) == {0, 1, 2}
    shape, _ = watched()
    assert shape == torch.Size((2, 3, 4)) and shape.numel() == 24 and len(shape) == 3
    assert shape + (5,) == torch.Size((2, 3, 4, 5)) and isinstance(shape + (5,), torch.Size)
    assert repr(shape) == "torch.Size([2, 3, 4])" and torch.zeros(shape).shape == (2, 3, 4)
    # the integers computed again with other sizes
    b, c, d = watched()[0]
    width = (c * d) // 2 + 1 - b % 2
    assert type(width) is SizeInt and width == 7
    other = {0: 5, 1: 6, 2: 8}
    assert evaluate(width, lambda leaf: other[leaf.dim]) == (6 * 8) // 2 + 1 - 5 % 2
    assert evaluate(-c + 10, lambda leaf: other[leaf.dim]) == 4
    assert evaluate(17, lambda leaf: None) == 17
    assert evaluate(c * 0.5, lambda leaf: 1) is None  # (a float: no size)


def test_an_attribute_followed_into_sizes_is_read_by_any_other_use():
    """A module's integer attribute, read during the graph trace, is a SizeInt: followed
    through integer arithmetic into sizes, read (as before) by any other use."""
    import math

    import numpy as np

    from depgraph_ext.graph.size_watch import AttributeLeaf, SizeInt

    def attribute_read(use) -> bool:
        reads: set = set()
        heads = SizeInt(4, AttributeLeaf(reads, 1, "heads", 4, lambda: True))
        use(heads)
        return bool(reads)

    for follows in (lambda h: h * 8, lambda h: (h + 1) // 2 - h % 3, lambda h: 64 - h,
                    lambda h: -h, lambda h: +h):  # fmt: skip
        assert not attribute_read(follows)
    for reads in (lambda h: h == 4, lambda h: int(h), lambda h: h / 2, lambda h: h**-0.5,
                  lambda h: h * 0.5, lambda h: math.sqrt(h), lambda h: np.sqrt(h), str,
                  lambda h: f"{h}", hash, bool, lambda h: {h: 1}, lambda h: divmod(h, 3),
                  lambda h: h.bit_length(), lambda h: h.real, lambda h: (h * 2) > 3):  # fmt: skip
        assert attribute_read(reads)


def test_the_code_of_a_traced_model_gets_watched_sizes():
    """During the graph trace ``x.shape`` and ``x.size()`` are watched and ``x.size(1)`` reads
    one dim; a shape given whole to a view is not read (its sizes are recorded); the model
    run outside a trace sees torch.Size."""
    seen = []

    class Looks(nn.Module):
        def __init__(self, whole):
            super().__init__()
            self.fc, self.whole = nn.Linear(4, 6), whole

        def forward(self, x):
            h = self.fc(x)
            seen.append((type(h.shape).__name__, type(h.size()).__name__))
            if self.whole == "joined":
                return h.view(h.shape[:1] + h.shape[1:])
            if self.whole:
                return h.view(h.shape)
            return h.view(h.shape[0], -1) * h.size(1)

    def reads_of_fc(whole) -> tuple[set, list]:
        graph = dx.DependencyGraph(Looks(whole), torch.randn(2, 4)).graph
        fc = [n for n in graph.nodes if n.module == "fc"][-1].outputs[0]
        views = [c for c in graph.code_saw.shaped_calls if c.source == fc]
        return {d for v, d in graph.code_saw.size_reads if v == fc}, views

    reads, views = reads_of_fc(whole=False)
    assert reads == {0, 1}  # h.shape[0], h.size(1)
    assert seen[0] == ("WatchedShape", "WatchedShape")
    assert reads_of_fc(whole="joined")[0] == {0, 1}  # (adding to a shape reads it)
    reads, views = reads_of_fc(whole=True)
    assert reads == set() and [int(x) for x in views[0].ints] == [2, 6]
    assert all(type(x).__name__ == "SizeInt" for x in views[0].ints)
    Looks(False)(torch.randn(2, 4))
    assert seen[-1] == ("Size", "Size")


def test_a_scale_the_config_derives_from_a_pruned_size_keeps_its_value():
    """MiniCPM3 divides its last hidden states by ``config.logits_scaling``, a property of
    ``hidden_size / dim_model_base``: the forward reads hidden_size through it, so pruning the
    hidden width leaves the field (and the scale) as they were; the config search set it
    before, and the pruned model's logits were scaled otherwise, unannounced."""
    pytest.importorskip("transformers")
    import zoo_transformers as zoo

    try:
        built = zoo.build("minicpm3")
    except zoo.Unbuildable as e:  # a transformers version without this type
        pytest.skip(str(e))
    config = built.model.config
    hidden, scaling = config.hidden_size, config.logits_scaling
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(built.model, built.inputs, ratio=0.5)
    assert built.model.model.norm.weight.shape[0] < hidden  # the hidden width was pruned
    assert "hidden_size" not in {u.field for u in result.config_updates}
    assert (config.hidden_size, config.logits_scaling) == (hidden, scaling)


class ChannelsLayerNorm(nn.LayerNorm):
    """A layer norm over the channels of an image (ConvNeXt's LayerNorm2d): its forward
    permutes and reads ``normalized_shape``, a tuple attribute (or, ``literal``, normalises
    over a width written in the code)."""

    def __init__(self, channels: int, literal: bool = False):
        super().__init__(channels)
        self.literal = literal

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        shape = (16,) if self.literal else self.normalized_shape
        x = nn.functional.layer_norm(x, shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class NormedConvs(nn.Module):
    def __init__(self, literal: bool = False):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = ChannelsLayerNorm(16, literal)
        self.b = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.b(torch.relu(self.norm(self.a(x))))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("literal", [False, True], ids=["attribute", "literal"])
def test_a_layer_norm_over_a_tuple_attribute_needs_no_second_trace(literal, monkeypatch):
    """``normalized_shape``, a tuple the plan sets, is followed into the layer norm's sizes:
    the plan is known to run without a second trace (the pruned model runs, the backends
    agree; the norm's statistics change, declared, so no oracle); a width written in the
    code is traced, found fixed, and kept."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model = NormedConvs(literal).double().eval()
    count, _ = forwards_during_prune(copy.deepcopy(model))
    assert count == (2 if literal else 1)
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, _ = prune_and_check(model, X, oracle=False)
    assert (pruned.a.out_channels == 16) is literal
    assert pruned(X).shape == (2, 5)


class TwoHeads(nn.Module):
    """Attention-like: a projection split into 2 heads of 8 (the head count given as -1), a
    softmax within each head, merged back, a projection out. ``squeeze``: the merge squeezes
    every size of 1 away first and transposes by position (a batch of 1 is squeezed, and a
    single head would be too); ``einsum``: attention within each head by two einsums, whose
    ATen decompositions differ where a size is 1."""

    def __init__(self, how: str = "plain"):
        super().__init__()
        self.how = how
        self.qkv, self.proj = nn.Linear(16, 2 * 8), nn.Linear(16, 16)

    def forward(self, x):
        B, N, _ = x.shape
        h = self.qkv(x).view(B, N, -1, 8).softmax(-1)
        if self.how == "einsum":
            attention = torch.einsum("bnhd,bmhd->bhnm", h, h).softmax(-1)
            h = torch.einsum("bhnm,bmhd->bnhd", attention, h)
        if self.how == "squeeze":
            return self.proj(h.squeeze().transpose(-3, -2).transpose(-3, -2).flatten(-2))
        return self.proj(h.reshape(B, N, -1))


def _forwards_of_prune(model, x, **options):
    calls = []
    handle = model.register_forward_pre_hook(lambda *args: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, x, ratio=0.5, ratios={"hidden": 0}, **options)
    handle.remove()
    return len(calls), result


def test_a_size_taken_down_to_one_needs_no_trace_of_its_own(monkeypatch):
    """Two heads pruned to one: nothing in the model squeezes sizes of 1 or decomposes by
    them, so the plan is not traced again (a GQA Llama's two key/value heads pruned to one
    likewise), and the pruned model computes the zeroed original's outputs."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model = TwoHeads().double().eval()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    forwards, result = _forwards_of_prune(copy.deepcopy(model), x)
    assert forwards == 1 and result.params_after < result.params_before
    pruned, _ = prune_and_check(model, x, ratio=0.5, ratios={"hidden": 0})
    assert pruned.qkv.out_features == 8  # one head left


def test_a_squeeze_of_a_size_taken_down_to_one_is_traced(monkeypatch):
    """The same heads squeezed: with one head left, ``squeeze()`` would drop the heads dim and
    the merge would fail. The plan is traced, the failure found, and the heads kept: nothing
    else is left to prune, which the error says; the model is as it was and runs."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model = TwoHeads("squeeze").double().eval()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    expected = model(x)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(dx.NoPrunableGroupsError, match="aten.transpose"):
        _forwards_of_prune(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(x), expected)


def test_an_einsum_over_a_size_taken_down_to_one_needs_no_trace_either(monkeypatch):
    """einsum decomposes otherwise where a size is 1 (the same steps, other permutations) to
    the same result: the heads go down to one without a second trace, and the pruned model
    computes the zeroed original's outputs. Traced all the same (the suite's check of plans
    judged without a trace), the plan passes too: a trace compares an einsum's result, not
    its steps."""
    torch.manual_seed(0)
    model = TwoHeads("einsum").double().eval()
    x = torch.randn(1, 5, 16, dtype=torch.float64)
    with monkeypatch.context() as m:
        m.setattr(validate, "CHECK_SKIPPED_TRACES", False)
        forwards, _ = _forwards_of_prune(copy.deepcopy(model), x)
    assert forwards == 1
    dg = dx.DependencyGraph(model, x)
    assert dg.graph.code_saw.decomposed_by_ones  # (the einsums' steps, known as theirs)
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", True)
    pruned, _ = prune_and_check(model, x, ratio=0.5, ratios={"hidden": 0})
    assert pruned.qkv.out_features == 8  # one head left


class AddsFixedZeros(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        out = torch.zeros(x.size(0), 8, dtype=x.dtype)  # (a width the code fixes)
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))) + out)


def test_a_new_tensor_of_a_fixed_width_is_named_by_the_op_that_made_it(monkeypatch):
    """Known without a trace, the failure names the factory (``aten.zeros``), not the
    ``detach`` torch records after it, with the line of the model's code."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model, x = AddsFixedZeros().double(), torch.randn(3, 4, dtype=torch.float64)
    calls = []
    copied = copy.deepcopy(model)
    copied.register_forward_pre_hook(lambda *args: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dx.prune(copied, x, ratio=0.5)
    assert calls == [1]
    with pytest.warns(dx.FixedSizeWarning, match=r"op aten\.zeros\.default .*torch\.zeros"):
        pruned, _ = prune_and_check(model, x)
    assert pruned.b.out_features == 8 and pruned.a.out_features < 8


class _WidthConfig:
    width = 8


class ReadsItsWidthAndZerosAConfigWidth(nn.Module):
    """Reads a pruned size (``h.view(h.shape[0], h.shape[1])``: its plans are traced), and
    adds ``torch.zeros(x.size(0), self.config.width)``: a width its config fixes."""

    def __init__(self):
        super().__init__()
        self.config = _WidthConfig()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h.view(h.shape[0], h.shape[1])
        out = torch.zeros(x.size(0), self.config.width, dtype=x.dtype)
        return self.c(torch.relu(self.b(h)) + out)


def test_a_width_a_config_field_fixes_is_found_without_a_trace(monkeypatch):
    """A size the code computes from a config field it reads is computed again under the
    plan (the field keeps its value): the zeros' fixed width is a failure known without a
    trace, so the plan is traced once, for the size read, not twice (SLANeXt's decoder
    state, ``torch.zeros((batch, self.config.hidden_size))``). The pruned model computes
    the zeroed original's outputs."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model, x = ReadsItsWidthAndZerosAConfigWidth().double(), torch.randn(3, 4, dtype=torch.float64)
    calls = []
    copied = copy.deepcopy(model)
    copied.register_forward_pre_hook(lambda *args: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dx.prune(copied, x, ratio=0.5)
    assert calls == [1, 1]  # the graph's trace and the valid plan's
    with pytest.warns(dx.FixedSizeWarning, match=r"op aten\.zeros\.default"):
        pruned, _ = prune_and_check(model, x)
    assert pruned.b.out_features == 8 and pruned.a.out_features < 8


class _Encoder(nn.Module):
    """Convolutions whose code takes its width by unpacking the shape (a size read) and
    reshapes with it (``b, c, h, w = x.shape``: a windowed vision encoder's)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.mix = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        b, c, height, width = h.shape
        tokens = h.reshape(b, c, height * width).transpose(1, 2)  # (b, positions, channels)
        return self.mix(tokens.transpose(1, 2).reshape(b, c, height, width))


class _KeepsItsWidth(_Encoder):
    """The same, keeping the width it took as an attribute (``self.seen = c``)."""

    def forward(self, x):
        h = torch.relu(self.conv(x))
        b, c, height, width = h.shape
        self.seen = c
        return self.mix(h.reshape(b, c, height * width).reshape(b, c, height, width))


class _Decoder(nn.Module):
    """A step loop over pooled features: an autoregressive head's shape, whose code reads no
    size."""

    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(16 + 8, 8)
        self.out = nn.Linear(8, 5)

    def forward(self, features, steps: int):
        pooled = features.mean((2, 3))
        state = torch.zeros_like(self.out.weight[0]).expand(pooled.shape[0], -1)
        outs = []
        for _ in range(steps):
            state = torch.tanh(self.cell(torch.cat([pooled, state], 1)))
            outs.append(self.out(state))
        return torch.stack(outs, 1)


class EncoderThenLoop(nn.Module):
    """An encoder that reads the pruned width, then a decoder's loop that reads none."""

    def __init__(self):
        super().__init__()
        self.encoder = _Encoder()
        self.decoder = _Decoder()

    def forward(self, x):
        return self.decoder(self.encoder(x), 12)


class LoopsByTheWidthKept(EncoderThenLoop):
    """The same, its decoder stepping as often as the width the encoder kept says:
    ``range(self.encoder.seen // 4)``, which Python reads unseen."""

    def __init__(self):
        super().__init__()
        self.encoder = _KeepsItsWidth()

    def forward(self, x):
        features = self.encoder(x)
        return self.decoder(features, self.encoder.seen // 4)


class _ReturnsItsWidth(_Encoder):
    """The same, returning the width it took with its features."""

    def forward(self, x):
        h = torch.relu(self.conv(x))
        b, c, height, width = h.shape
        return self.mix(h.reshape(b, c, height * width).reshape(b, c, height, width)), c


class LoopsByTheWidthReturned(EncoderThenLoop):
    """The same, its decoder stepping as often as the width the encoder returned says."""

    def __init__(self):
        super().__init__()
        self.encoder = _ReturnsItsWidth()

    def forward(self, x):
        features, width = self.encoder(x)
        return self.decoder(features, width // 4)


def _with_validation_traces(make, monkeypatch) -> tuple[nn.Module, list]:
    """A model of ``make`` (float64, eval), and the list that gets (graph, trace) of each
    trace of a plan's shapes (the suite's check of plans traced in part is off: its traces
    are not the prune's)."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    traces = []
    original = DependencyGraph.trace_pruned

    def recording(self, *args, **kwargs):
        traces.append((self, original(self, *args, **kwargs)))
        return traces[-1][1]

    monkeypatch.setattr(DependencyGraph, "trace_pruned", recording)
    return make().double().eval(), traces


class Wrapped(nn.Module):
    """A model whose forward calls one module, which does everything (a transformers
    ``...ForSomething``'s base model): the trace stops inside it."""

    def __init__(self):
        super().__init__()
        self.model = EncoderThenLoop()

    def forward(self, x):
        return self.model(x)


@pytest.mark.parametrize("make", [EncoderThenLoop, Wrapped])
def test_a_plan_is_traced_only_as_far_as_the_code_that_read_its_sizes(make, monkeypatch):
    model, traces = _with_validation_traces(make, monkeypatch)
    pruned, result = prune_and_check(model, X, ratio=0.5)
    inner = pruned.model if make is Wrapped else pruned
    assert inner.encoder.conv.out_channels < 16 and inner.decoder.cell.in_features < 24
    stopped = [(dg, t) for dg, t in traces if t.stopped_after is not None]
    assert stopped, "no trace of a plan stopped after the encoder"
    for dg, t in stopped:
        (encoder_ops,) = [s[3] for s in dg.graph.call_spans if s[0].endswith("encoder")]
        assert len(t.ops) <= encoder_ops < len(dg.graph.nodes) / 4
    # the same plan as a trace of the whole model gives
    monkeypatch.setattr(validate, "_stop_after", lambda *args: None)
    whole = dx.prune(copy.deepcopy(model), X, ratio=0.5)
    for name, dims in whole.plan.items():
        for d, kept in dims.items():
            assert torch.equal(kept, result.plan[name][d]), name


@pytest.mark.parametrize("make", [LoopsByTheWidthKept, LoopsByTheWidthReturned])
def test_a_size_kept_past_the_call_that_read_it_is_traced_to_the_end(make, monkeypatch):
    # The encoder keeps the width it read, or returns it; the decoder loops over it unseen:
    # the trace of the plan runs whole (the encoder's attributes changed, or it returned a
    # number), and finds that the loop changes.
    model, traces = _with_validation_traces(make, monkeypatch)
    expected = model(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(dx.PlanValidationError, match="control flow depends on the pruned"):
            dx.prune(model, X, ratio=0.5)
    assert traces and all(t.stopped_after is None for _, t in traces)
    assert model.encoder.conv.out_channels == 16  # nothing changed
    assert torch.equal(model(X), expected)
