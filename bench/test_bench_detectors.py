"""torchvision's detectors (random weights, ``num_classes=5``, eval mode, one 320x320 image): the
whole prune (``ratio=0.5``, default options) with each backend, Torch-Pruning's (in a subprocess,
given 300 s: with the predicting layers ignored, and with its default options), one plain forward
for scale, and the checks of a prune: outputs of the same structure, the class count and anchors
kept, and with ``exact_only=True`` in float64 the scatter-back oracle on the heads' raw outputs
and on the detections. Skipped without torchvision, which is no dependency of the project.

    python -m pytest bench/test_bench_detectors.py -q -s

in an environment with torchvision beside a torch it was built for (torchvision pulls its own
torch: not this project's venv). ``-k "not none"`` leaves out Torch-Pruning with its default
options, which runs into its 300 s limit on three of the four.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
import torch.utils._pytree as pytree

import depgraph_ext as dx
from depgraph_ext.testing import scatter_back
from measuring import EXTRA, RESULTS, fresh, measure, torch_pruning

torchvision = pytest.importorskip("torchvision")

MODELS = [
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
]
BACKENDS = ["native", "python"]
TP_LIMIT = 300  # seconds Torch-Pruning is given
# The layers that predict: their outputs are the class count and the boxes per anchor (what
# stays), and the raw outputs the oracle compares.
HEADS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": ["rpn.head", "roi_heads.box_predictor"],
    "retinanet_resnet50_fpn": ["head"],
    "fcos_resnet50_fpn": ["head"],
    "ssdlite320_mobilenet_v3_large": ["head"],
}

warnings.filterwarnings("ignore", category=dx.FunctionChangingWarning)


def predictors(model) -> list[str]:
    """The layers whose outputs are per-anchor class scores and box regressions."""
    names = []
    for n, _ in model.named_modules():
        last = n.rsplit(".", 1)[-1]
        if last in ("cls_logits", "bbox_reg", "bbox_ctrness", "bbox_pred", "cls_score"):
            names.append(n)
        elif re.search(r"\.module_list\.\d+\.1$", n):  # SSD's per-level predictors
            names.append(n)
    return names


def detector(name: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, name)(
        weights=None, weights_backbone=None, num_classes=5
    )
    image = torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(0))
    return model.eval().to(dtype), image.to(dtype)


@pytest.fixture(scope="module", params=MODELS)
def workload(request):
    model, image = detector(request.param)
    return request.param, model, image


def test_forward(workload):
    name, model, image = workload
    times = []
    for _ in range(2):
        t = time.perf_counter()
        with torch.no_grad():
            model([image])
        times.append(time.perf_counter() - t)
    EXTRA.append(f"{name}: one forward {min(times):.2f} s")


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune(benchmark, workload, backend):
    if backend == "native" and not dx.native_available():
        pytest.skip("native core not built")
    name, model, image = workload
    result = measure(
        benchmark,
        (name, "prune 50% end to end", backend),
        lambda m: dx.prune(m, ([image],), ratio=0.5, backend=backend, progress=False),
        setup=fresh(model),
        rounds=1,
    )
    if backend == "native":
        EXTRA.append(
            f"{name}: depgraph_ext, default options: {result.params_before:,} -> "
            f"{result.params_after:,} parameters"
        )


_TP_RUN = """
import time, torch, torchvision, torch_pruning as tp
torch.manual_seed(0)
model = getattr(torchvision.models.detection, {name!r})(
    weights=None, weights_backbone=None, num_classes=5
).eval()
x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
ignored = [model.get_submodule(n) for n in {predictors!r}]
before = sum(p.numel() for p in model.parameters())
t = time.perf_counter()
tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                     pruning_ratio=0.5, ignored_layers=ignored).step()
print("SECONDS", time.perf_counter() - t, before, sum(p.numel() for p in model.parameters()))
"""


@pytest.mark.skipif(torch_pruning is None, reason="torch-pruning not installed")
@pytest.mark.parametrize("ignored", ["predictors", "none"])
def test_torch_pruning_prune(workload, ignored):
    """Torch-Pruning's MetaPruner and step in a fresh process given TP_LIMIT seconds: with the
    predicting layers ignored (as its examples for detectors do; the table's column), and
    with its default options (no layer ignored)."""
    name = workload[0]
    names = predictors(workload[1]) if ignored == "predictors" else []
    code = textwrap.dedent(_TP_RUN.format(name=name, predictors=names))
    what = f"Torch-Pruning, {'predictors ignored' if names else 'default options'}"
    try:
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=TP_LIMIT
        )
    except subprocess.TimeoutExpired:
        EXTRA.append(f"{name}: {what}: no answer in {TP_LIMIT} s")
        return
    found = [line.split()[1:] for line in run.stdout.splitlines() if line.startswith("SECONDS")]
    if not found:
        tail = (run.stderr.strip().splitlines() or ["?"])[-1]
        EXTRA.append(f"{name}: {what}: failed: {tail[:200]}")
        return
    seconds, before, after = float(found[0][0]), int(found[0][1]), int(found[0][2])
    EXTRA.append(f"{name}: {what}: {seconds:.1f} s, {before:,} -> {after:,} parameters")
    if names:
        RESULTS[(name, "prune 50% end to end", "torch-pruning")] = seconds


def _run_with_heads(model, heads, image):
    """The heads' raw outputs (before post-processing) and the detections, of one forward."""
    raw = []
    hooks = [
        model.get_submodule(h).register_forward_hook(lambda m, i, out: raw.append(out))
        for h in heads
    ]
    try:
        with torch.no_grad():
            detections = model([image])
    finally:
        for hook in hooks:
            hook.remove()
    leaves = [t for t in pytree.tree_leaves((raw, detections)) if isinstance(t, torch.Tensor)]
    return leaves, detections


@pytest.mark.parametrize("name", MODELS)
def test_an_exact_prune_passes_the_oracle(name):
    """float64, ``exact_only=True``: backbone, FPN and head channels go, the predicting layers'
    outputs (classes, boxes per anchor) stay, the detections keep their structure, and the
    scatter-back oracle holds on the heads' raw outputs and the detections."""
    model, image = detector(name, torch.float64)
    original = copy.deepcopy(model)
    result = dx.prune(model, ([image],), exact_only=True, progress=False)
    assert result.params_after < result.params_before
    for n in predictors(original):  # the class count and the boxes per anchor stay
        assert model.get_submodule(n).weight.shape[0] == original.get_submodule(n).weight.shape[0]
    expected, before = _run_with_heads(scatter_back(original, result.plan), HEADS[name], image)
    actual, after = _run_with_heads(model, HEADS[name], image)
    assert [d.keys() for d in after] == [d.keys() for d in before]
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)
    pruned_layers = {n.rsplit(".", 1)[0] for n in result.plan}
    EXTRA.append(
        f"{name}: exact_only in float64: {result.params_before:,} -> {result.params_after:,} "
        f"parameters, {len(pruned_layers)} layers changed, oracle holds on "
        f"{len(actual)} raw and detection tensors"
    )
