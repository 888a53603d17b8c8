"""Shared pieces of the benchmark suites: model factories, and a ratio table printed at the end
(native vs python backend vs Torch-Pruning, all measured in the same run)."""

from __future__ import annotations

import copy
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

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
        result = benchmark.pedantic(lambda *a: fn(*a), setup=lambda: ((setup(),), {}),
                                    rounds=rounds, warmup_rounds=1)
    RESULTS[key] = benchmark.stats.stats.median
    return result


def fresh(model):
    return lambda: copy.deepcopy(model)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tools = ["native", "python", "torch-pruning"]
    extra_tools = sorted({t for _, _, t in RESULTS} - set(tools))
    rows = sorted({(w, s) for w, s, _ in RESULTS})
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"torch-pruning {TORCH_PRUNING_VERSION}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| workload | stage | native | python | torch-pruning | python / native | "
        "torch-pruning / native |",
        "|---|---|---|---|---|---|---|",
    ]
    for w, s in rows:
        t = {tool: RESULTS.get((w, s, tool)) for tool in tools}
        cells = [f"{t[x] * 1e3:.1f} ms" if t[x] is not None else "-" for x in tools]
        ratios = [f"{t[x] / t['native']:.1f}x" if t[x] and t["native"] else "-"
                  for x in ("python", "torch-pruning")]
        lines.append(f"| {w} | {s} | " + " | ".join(cells + ratios) + " |")
        for tool in extra_tools:
            if (w, s, tool) in RESULTS:
                t_x = RESULTS[(w, s, tool)]
                lines.append(f"| {w} | {s}, {tool} | {t_x * 1e3:.1f} ms | | | | |")
    lines += [""] + [f"- {line}" for line in EXTRA] if EXTRA else []
    text = "\n".join(lines)
    terminalreporter.write_sep("=", "depgraph_ext: medians and ratios (same run)")
    terminalreporter.write_line(text)
    out = Path(__file__).parent / ".results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(text + "\n")
