"""No pathological model: the whole prune of vision models whose code fixes sizes the rules
treat as prunable (MaxViT's and Swin V2's attention), against ResNet-50's, in one run.

Such a model is planned in several validation rounds (each traces the pruned shapes once
more); the ratio to ResNet-50 (one round) is what this suite keeps in view, worst first.
torchvision's models are measured where torchvision is importable; the MaxViT-style net of
tests/nets.py (the same attention and blocks, small) always is, and so is transformers'
ResNet-50 where torchvision is missing. So is the slowest type of the transformers sweep,
SLANeXt as the test zoo builds it (a vision encoder, then a decoder of 501 steps, each
calling the same attention cell and reading a value).

    .venv/bin/python -m pytest bench/test_bench_vision.py -q -s
"""

from __future__ import annotations

import statistics
import warnings

import pytest
import torch

import depgraph_ext as dx
from measuring import EXTRA, RESULTS, fresh, image_model, measure

try:
    import torchvision
except ImportError:  # not a dependency of the project: its rows are skipped
    torchvision = None

STAGE = "prune 50% end to end"
REFERENCE = "resnet50"
TORCHVISION = ["resnet50", "resnext50_32x4d", "maxvit_t", "swin_v2_t"]
STAGES: dict[str, list[dict]] = {}  # workload -> timings of every measured prune


def _workload(name: str):
    torch.manual_seed(0)
    if name == "slanext":
        pytest.importorskip("transformers")
        import zoo_transformers

        built = zoo_transformers.build("slanext")
        return built.model.eval(), built.inputs
    if name == "maxvit-style net":
        from nets import MaxViT

        return MaxViT().eval(), torch.randn(1, 3, 32, 32)
    if torchvision is None:
        return image_model(name)  # transformers' ResNet-50 (skipped without transformers)
    return torchvision.models.get_model(name).eval(), torch.randn(1, 3, 224, 224)


def _prune(name: str, x):
    def run(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = dx.prune(model, x, ratio=0.5)
        STAGES.setdefault(name, []).append(result.timings)
        return result

    return run


@pytest.mark.parametrize(
    "name",
    [*(TORCHVISION if torchvision is not None else [REFERENCE]), "maxvit-style net", "slanext"],
)
def test_prune(benchmark, name):
    model, x = _workload(name)
    measure(benchmark, (name, STAGE, "native"), _prune(name, x), setup=fresh(model))


def test_ratios_to_resnet50():
    """Not a measurement: each workload's median over ResNet-50's, worst first, with the
    stages of its median prune (written under the table)."""
    reference = RESULTS.get((REFERENCE, STAGE, "native"))
    if reference is None:
        pytest.skip("ResNet-50 was not measured")
    ratios = {w: t / reference for (w, s, tool), t in RESULTS.items() if s == STAGE and w in STAGES}
    for w, ratio in sorted(ratios.items(), key=lambda kv: -kv[1]):
        runs = sorted(STAGES[w], key=lambda t: t["total"])
        median = runs[len(runs) // 2]
        stages = ", ".join(
            f"{k} {median[k]:.2f}" for k in ("trace", "score", "plan", "apply") if k in median
        )
        total = statistics.median(t["total"] for t in runs)
        EXTRA.append(f"{w}: {ratio:.2f}x ResNet-50 ({total:.2f} s; {stages})")
