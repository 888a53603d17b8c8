"""Prune one model of every timm architecture, built with random weights, and check the oracle.

    python scripts/sweep_timm.py [--workers 1] [--timeout 300] [--per-module 1] [--models a,b]
                                  [--features-only] [--stand-ins] [--out F]

timm is not a dependency of depgraph_ext (it pulls a torch and torchvision of its own choice):
install it beside torch and torchvision to run this sweep (it stops with a one-line message
where timm cannot be imported). depgraph_ext must be importable (installed, or ``PYTHONPATH=.``
from the repository root).

For every module of ``timm.list_modules()`` (an architecture family: resnet, vision_transformer,
convnext, ...), the model of that module with the fewest parameters (counted on the meta device;
timm's ``test_*`` configs only where the module has nothing else; ``--per-module N``: the
smallest of each of N name prefixes), or the names of ``--models``.
Each runs in its own process (one thread; a crash or a timeout is recorded as such), built with
``pretrained=False`` in float64 (float32 where the model does not run in float64) on one image of
its own default input size (``pretrained_cfg["input_size"]``), and is pruned three times as
scripts/sweep_torchvision.py prunes (exact_only under the scatter-back oracle, default, verify),
with the same checks: the model unchanged after any error, the pruned model running with the
original's output shapes, the slowest ten beside a ResNet-50 prune of the same run.
``--features-only``: each model built with ``features_only=True``, a backbone returning its
feature maps (whose widths the prune keeps), as detection and segmentation heads use it.
``--stand-ins``: every model traced as one over the real trace's size is (on meta tensors
standing in for CPU ones): its records should be the default sweep's, model by model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import sweep_torchvision as common


def smallest_per_module(per_module: int = 1) -> list[str]:
    """The model with the fewest parameters of each timm module (``test_*`` ones last); with
    ``per_module`` > 1, that many, each the smallest of another name prefix (the name up to
    its first ``_``: byobnet's gernet, repvgg, resnet51q ...)."""
    import warnings

    import timm
    import torch

    names = []
    for module in sorted(timm.list_modules()):
        counted = []
        for name in timm.list_models(module=module):
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.simplefilter("ignore")
                    model = timm.create_model(name, pretrained=False)
            except Exception:  # noqa: BLE001  (a builder that refuses meta: not a candidate)
                continue
            params = sum(p.numel() for p in model.parameters())
            counted.append((name.startswith("test_"), params, name))
        prefixes: set[str] = set()
        for _, _, name in sorted(counted):
            prefix = name.split("_")[0]
            if prefix not in prefixes and len(prefixes) < per_module:
                prefixes.add(prefix)
                names.append(name)
    return names


def child(name: str, record_path: str, features_only: bool = False) -> None:
    import sweep_layers  # (the --stand-ins switch the sweeps share)
    import timm
    import torch

    from depgraph_ext.testing import outputs_of

    torch.set_num_threads(1)
    sweep_layers.stand_ins_if_asked()
    record: dict = {"model": name}

    def save() -> None:
        common._save(record, record_path)

    if name == common.REFERENCE:
        record.update(common.reference_prune())
        return save()
    kwargs = {"features_only": True} if features_only else {}
    task = "features" if features_only else "classification"
    record.update(task=task, kwargs=kwargs)
    try:
        with torch.device("meta"):
            shape_only = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # noqa: BLE001  (features_only is not every model's)
        record["setup_failed"] = common._short(e)
        return save()
    record["params"] = sum(p.numel() for p in shape_only.parameters())
    size = tuple(shape_only.pretrained_cfg.get("input_size", (3, 224, 224)))
    record["inputs"] = "1x" + "x".join(map(str, size))
    if record["params"] > common.MAX_PARAMS:
        record["skipped"] = f"{record['params'] / 1e6:.0f}M parameters"
        return save()
    for dtype in (torch.float64, torch.float32):
        record["dtype"] = str(dtype).removeprefix("torch.")
        try:
            torch.manual_seed(0)
            pristine = timm.create_model(name, pretrained=False, **kwargs).eval().to(dtype)
            torch.manual_seed(1)
            inputs = torch.randn(1, *size, dtype=dtype)
            outputs = outputs_of(pristine, inputs, seed=0)
            break
        except Exception as e:  # noqa: BLE001
            record[f"{record['dtype']}_fails"] = common._short(e)
    else:
        record["setup_failed"] = record.pop("float32_fails")
        return save()
    common.run_stages(record, pristine, inputs, outputs, save)


def main() -> None:
    import sweep_layers  # (the --stand-ins switch the sweeps share)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="models pruned at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--models", default="", help="comma-separated timm names (default: one "
                        "per module)")  # fmt: skip
    parser.add_argument("--per-module", type=int, default=1, help="models of each module, "
                        "each of another name prefix (default 1)")  # fmt: skip
    parser.add_argument("--out", default="sweep_timm.json", help="JSON records")
    parser.add_argument("--resume", action="store_true", help="keep the records in --out")
    parser.add_argument("--features-only", action="store_true", help="build each model with "
                        "features_only=True (its feature maps, a backbone's outputs)")  # fmt: skip
    parser.add_argument("--stand-ins", action="store_true", help=sweep_layers.STAND_INS_HELP)
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stand_ins:
        sweep_layers.ask_for_stand_ins()
    try:
        import timm
    except ImportError as e:
        sys.exit(f"this sweep needs timm, not a dependency of depgraph_ext ({e})")
    if args.child:
        return child(args.child, args.record, args.features_only)
    import depgraph_ext  # noqa: F401  (fail here, once, rather than in every child)

    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = sorted(set(names) - set(timm.list_models()))
        if unknown:
            sys.exit(f"not timm models: {', '.join(unknown)}")
    else:
        names = smallest_per_module(args.per_module)
    done: dict = {}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            done = {n: r for n, r in json.load(f).items() if n in names or n == common.REFERENCE}
    started = time.perf_counter()
    options = ("--features-only",) if args.features_only else ()
    done = common.run(
        [common.REFERENCE, *names],
        args.workers,
        args.timeout,
        done,
        args.out,
        script=__file__,
        child_options=options,
    )
    count = len(done) - (common.REFERENCE in done)
    print(f"\n{count} models in {time.perf_counter() - started:.0f} s")
    print(f"records: {args.out}")
    print(common.summary(done))
    print(common.slowest(done))


if __name__ == "__main__":
    main()
