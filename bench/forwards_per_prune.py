"""How many times a default prune runs each torchvision model's forward, and how long it takes.

    python bench/forwards_per_prune.py resnext50_32x4d,maxvit_t [--ratio 0.5]

torchvision is not a dependency: run it where torchvision is installed beside torch, with
depgraph_ext importable (``PYTHONPATH=.`` from the repository root; ``PYTHONPATH`` of another
checkout compares it). Each model is built with ``torch.manual_seed(0)`` and random weights,
pruned (``ratio``) on one 1 x 3 x 224 x 224 input after a warm-up prune of resnet18, with a
forward pre-hook on the model counting its forwards (the graph trace, then each validation
trace). Prints one JSON object: model -> [forwards, seconds, parameters after].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", help="comma-separated torchvision model names")
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    try:
        import torchvision
    except ImportError:
        sys.exit("torchvision is not installed: install it beside torch to run this")
    import torch

    import depgraph_ext as dx

    torch.set_num_threads(1)
    x = torch.randn(1, 3, 224, 224)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dx.prune(torchvision.models.resnet18().eval(), x, ratio=args.ratio)
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = torchvision.models.get_model(name).eval()
            calls = []
            model.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
            start = time.perf_counter()
            result = dx.prune(model, x, ratio=args.ratio)
            seconds = time.perf_counter() - start
            out[name] = [len(calls), round(seconds, 3), result.params_after]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
