"""Helpers of the benchmark suites: model factories, the Torch-Pruning anchor when installed,
and ``measure``, which keeps each median for the ratio table conftest.py prints at the end
(native vs python backend vs Torch-Pruning, all measured in the same run)."""

from __future__ import annotations

import copy
import importlib.metadata

import pytest
import torch

RESULTS: dict[tuple[str, str, str], float] = {}  # (workload, stage, tool) -> median seconds
EXTRA: list[str] = []  # other figures of the run (memory, ...), printed under the table

try:
    import torch_pruning  # optional: the anchor, measured side by side when installed

    TORCH_PRUNING_VERSION = importlib.metadata.version("torch-pruning")
except ImportError:
    torch_pruning = None
    TORCH_PRUNING_VERSION = "not installed"


def image_model(name: str):
    torch.manual_seed(0)
    if name == "densenet121":
        from nets import DenseNet

        return DenseNet().eval(), torch.randn(1, 3, 224, 224)
    if name == "resnext":
        from nets import ResNeXt

        return ResNeXt(ch=256, blocks=8, cardinality=32, width=4).eval(), torch.randn(1, 3, 56, 56)
    transformers = pytest.importorskip("transformers")
    if name == "resnet50":
        model = transformers.ResNetForImageClassification(transformers.ResNetConfig())
    elif name == "mobilenet_v2":
        model = transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config())
    else:
        raise KeyError(name)
    return model.eval(), torch.randn(1, 3, 224, 224)


def classifier_of(model):
    """The output layer, which Torch-Pruning must be told to leave alone."""
    for attr in ("classifier", "head"):
        if hasattr(model, attr):
            layer = getattr(model, attr)
            return [m for m in layer.modules() if isinstance(m, torch.nn.Linear)][-1]
    raise KeyError(type(model).__name__)


def measure(benchmark, key: tuple[str, str, str], fn, *, setup=None, rounds: int = 3):
    """Time ``fn`` with pytest-benchmark (``setup`` excluded) and keep the median for the table."""
    benchmark.group = f"{key[0]}: {key[1]}"
    benchmark.name = key[2]
    if setup is None:
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        result = benchmark.pedantic(
            lambda *a: fn(*a), setup=lambda: ((setup(),), {}), rounds=rounds, warmup_rounds=1
        )
    RESULTS[key] = benchmark.stats.stats.median
    return result


def fresh(model):
    return lambda: copy.deepcopy(model)
