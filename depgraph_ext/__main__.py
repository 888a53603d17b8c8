"""``python -m depgraph_ext``: prune a built-in default model and print what changed.

The default model is ResNet-50 (transformers' ``ResNetConfig()`` defaults, random weights); a
DenseNet-121 written in plain PyTorch is used when transformers is not installed.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import depgraph_ext as dx


def default_model(name: str):
    if name == "resnet50":
        from transformers import ResNetConfig, ResNetForImageClassification

        return ResNetForImageClassification(ResNetConfig()).eval()
    if name == "mobilenet_v2":
        from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

        return MobileNetV2ForImageClassification(MobileNetV2Config()).eval()
    raise SystemExit(f"unknown model {name!r}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m depgraph_ext",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="resnet50", choices=["resnet50", "mobilenet_v2"])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--backend", default=None, choices=["native", "python"])
    parser.add_argument("--rows", type=int, default=25, help="layers to list (0: all)")
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error(f"argument --rows: must be 0 (all) or more, not {args.rows}")

    torch.manual_seed(0)
    model = default_model(args.model)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits_before = model(x).logits
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dx.ConfigMismatchWarning)
        try:
            result = dx.prune(model, x, ratio=args.ratio, backend=args.backend)
        except dx.PruningError as exc:  # (bad options: said as argparse says its own)
            parser.error(str(exc))
    elapsed = time.perf_counter() - t
    with torch.no_grad():
        logits_after = model(x).logits
    print(
        f"{args.model}: pruned {args.ratio:.0%} of every group's prunable units in {elapsed:.2f} s"
    )
    print(result.summary(max_rows=args.rows or None))
    print(
        f"forward after pruning: logits {tuple(logits_after.shape)} "
        f"(before {tuple(logits_before.shape)})"
    )
    if any(issubclass(w.category, dx.ConfigMismatchWarning) for w in caught):
        print(
            "note: the config update does not cover this model's per-stage widths, so keep "
            "the pruned model with torch.save or result.save_plan(path), not save_pretrained"
        )


if __name__ == "__main__":
    main()
