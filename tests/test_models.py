"""Whole models: the scatter-back oracle, python/native parity and bit-identical kept weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import prune_and_check
from nets import DenseNet, ReferenceLlama, ResNeXt, randomize_norms

transformers = pytest.importorskip("transformers")


def _image(n=2, size=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, dtype=torch.float64, generator=g)


def test_transformers_resnet50_default_config():
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(transformers.ResNetConfig())
    model = randomize_norms(model.double().eval())
    pruned, result = prune_and_check(model, _image(), ratio=0.5)
    # The residual streams are coupled across each stage: every tensor of a stream shrinks alike.
    stage0 = [
        n
        for n in result.plan
        if n.startswith("resnet.encoder.stages.0.") and n.endswith("layer.2.convolution.weight")
    ]
    assert len({result.shapes_after[n][0] for n in stage0}) == 1
    assert pruned.classifier[1].in_features == pruned.classifier[1].weight.shape[1]
    labels = model.config.num_labels
    assert pruned.classifier[1].out_features == labels  # the output stays
    assert pruned(_image()).logits.shape == (2, labels)


def test_transformers_mobilenet_v2_depthwise():
    torch.manual_seed(0)
    model = transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config())
    model = randomize_norms(model.double().eval())
    pruned, result = prune_and_check(model, _image(), ratio=0.5)
    depthwise = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise
    for m in depthwise:  # depthwise stays depthwise, attributes follow the weight
        assert m.groups == m.in_channels == m.out_channels == m.weight.shape[0]
        assert m.weight.shape[1] == 1


def test_resnext_grouped_conv():
    torch.manual_seed(0)
    model = randomize_norms(ResNeXt(ch=32, blocks=3, cardinality=8, width=4).double().eval())
    x = _image(size=16)
    pruned, result = prune_and_check(model, x, ratio=0.5)
    for block in pruned.blocks:
        conv = block.conv2
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0
        assert conv.weight.shape == (conv.out_channels, conv.in_channels // conv.groups, 3, 3)
    # Units of a grouped conv are whole groups or one index inside every group: either way every
    # group keeps the same width.
    assert any(b.conv2.groups < 8 or b.conv2.in_channels < 32 for b in pruned.blocks)


@pytest.mark.parametrize(
    "cardinality,width,ratio,kept",
    [
        (32, 4, 0.5, (32, 2)),  # resnext50_32x4d's layer1: 128 channels in 32 groups
        (32, 4, 0.25, (32, 3)),
        (6, 8, 0.5, (6, 4)),  # regnet_y_400mf: 48 channels in 6 groups
        (6, 8, 0.9, (5, 1)),  # the width cannot lose 90%: the groups take the rest
    ],
)
def test_grouped_convs_keep_what_the_ratio_says(cardinality, width, ratio, kept):
    """A grouped conv's channels are [groups, channels per group], two atoms: the width in every
    group takes the ratio and the groups keep their number (cardinality is the architecture's
    choice); whole groups go only for what the width cannot lose. Either way the layer keeps
    the ratio's share of its channels, as a plain conv does."""
    torch.manual_seed(0)
    inner = cardinality * width
    model = ResNeXt(ch=16, blocks=2, cardinality=cardinality, width=width)
    model = randomize_norms(model.double().eval())
    pruned, result = prune_and_check(model, _image(size=8), ratio=ratio)
    for block in pruned.blocks:
        conv = block.conv2
        assert (conv.groups, conv.out_channels // conv.groups) == kept
        assert conv.in_channels == conv.out_channels == block.conv1.out_channels
        assert conv.out_channels >= inner * (1 - ratio) and conv.out_channels < inner
        assert conv.weight.shape == (conv.out_channels, conv.in_channels // conv.groups, 3, 3)
    # the summary says what each layer keeps, in channels
    channels = f"{inner} -> {kept[0] * kept[1]}"
    row = next(line for line in result.summary().splitlines() if line.startswith("blocks.0.conv2"))
    assert channels in row, row


def test_depthwise_convs_keep_what_the_ratio_says():
    """Depthwise: one channel per group, so the groups take the ratio; with a channel multiplier
    the groups are also another depthwise conv's channels, which keep what the ratio says, and
    the multiplier keeps its two."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, groups=16),  # depthwise, two channels a group
        nn.ReLU(),
        nn.Conv2d(32, 4, 1),
    )
    torch.manual_seed(0)
    model = randomize_norms(model).double().eval()
    pruned, _ = prune_and_check(model, _image(size=8), ratio=0.5)
    assert (pruned[3].groups, pruned[3].out_channels) == (8, 8)
    assert (pruned[6].groups, pruned[6].out_channels) == (8, 16)


def test_densenet_concat_heavy():
    torch.manual_seed(0)
    model = randomize_norms(DenseNet(blocks=(3, 4, 3), growth=8, stem=16, num_classes=10))
    model = model.double().eval()
    pruned, result = prune_and_check(model, _image(size=32), ratio=0.5)
    # Each dense layer's new channels are pruned inside the block-wide concat group.
    for layer in pruned.features[0].layers:
        assert layer.conv2.out_channels < 8
        assert layer.norm1.num_features == layer.conv1.in_channels


def test_densenet121():
    torch.manual_seed(0)
    model = randomize_norms(DenseNet()).double().eval()
    x = _image(n=1, size=64)
    pruned, result = prune_and_check(model, x, ratio=0.3)
    assert pruned(x).shape == (1, 1000)
    assert result.params_after < 0.8 * result.params_before


def test_a_llama_written_as_its_reference_code_prunes_heads_exactly():
    """Llama's reference code (complex rotary embeddings, key/value heads repeated by an
    expand to ``self.n_rep``, head counts named ``n_local_heads`` and ``n_local_kv_heads``):
    its heads and MLP neurons prune exactly, its head counts follow the heads kept (the code
    gives them as they are to its views), and the pruned model runs other sequence lengths."""
    torch.manual_seed(0)
    model = ReferenceLlama().double().eval()
    tokens = torch.randint(0, 64, (2, 8))
    pruned, result = prune_and_check(model, tokens, ratio=0.5, exact_only=True)
    for layer in pruned.layers:
        attention = layer.attention
        assert (attention.n_local_heads, attention.n_local_kv_heads, attention.n_rep) == (2, 1, 2)
        assert attention.wq.out_features == 2 * attention.head_dim == 16
        assert layer.w1.out_features == 32
    assert pruned(torch.randint(0, 64, (1, 13))).shape == (1, 13, 64)
