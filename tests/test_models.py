"""Whole models: the scatter-back oracle, python/native parity and bit-identical kept weights."""

from __future__ import annotations

import pytest
import torch

from helpers import prune_and_check
from nets import DenseNet, ResNeXt, randomize_norms

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
