"""A zoo type's prune against transformers' ResNet-50's, in one process: what "at most 3x
ResNet-50" is measured with, for one type at a time.

    PYTHONPATH=. .venv/bin/python bench/zoo_ratio.py slanext [ROUNDS]

Builds transformers' ResNet-50 (default config, 1 x 3 x 224 x 224) and the type as the test
zoo builds it (tests/zoo_transformers.py), prunes each once to warm up, then ROUNDS times
(3 by default) each, alternating, on fresh copies (``ratio=0.5``, the default two threads),
and prints the medians: both totals, the ratio, and the type's stages.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
import warnings

import torch

import depgraph_ext as dx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

STAGES = ("trace", "rules", "score", "plan", "apply")


def _prune(model, inputs) -> tuple[float, dict]:
    copied = copy.deepcopy(model)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(copied, inputs, ratio=0.5)
    return time.perf_counter() - start, result.timings


def main() -> None:
    import transformers

    import zoo_transformers

    model_type = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resnet = transformers.ResNetForImageClassification(transformers.ResNetConfig()).eval()
    image = torch.randn(1, 3, 224, 224)
    built = zoo_transformers.build(model_type)
    runs = {"resnet50": (resnet, image), model_type: (built.model, built.inputs)}
    for model, inputs in runs.values():
        _prune(model, inputs)  # (warm-up)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    stages: list[dict] = []
    for _ in range(rounds):
        for name, (model, inputs) in runs.items():
            took, timings = _prune(model, inputs)
            seconds[name].append(took)
            if name == model_type:
                stages.append(timings)
    reference = statistics.median(seconds["resnet50"])
    mine = statistics.median(seconds[model_type])
    parts = ", ".join(f"{k} {statistics.median(t.get(k, 0.0) for t in stages):.3f}" for k in STAGES)
    print(
        f"resnet50 {reference:.3f} s; {model_type} {mine:.3f} s = {mine / reference:.2f}x "
        f"(medians of {rounds}; {model_type}'s stages, s: {parts})"
    )


if __name__ == "__main__":
    main()
