"""Prune diffusers models (UNets, autoencoders, diffusion transformers, ControlNets, adapters),
built from small configs with random weights, and check the oracle.

    python scripts/sweep_diffusers.py [--workers 1] [--timeout 300] [--models a,b] [--out F]
                                      [--stand-ins]

diffusers is not a dependency of depgraph_ext: install it beside torch (``pip install --no-deps
diffusers``: it asks for no torch of its own) to run this sweep, which stops with a one-line
message where diffusers cannot be imported. depgraph_ext must be importable (installed, or
``PYTHONPATH=.`` from the repository root).

Every model class of ``RECIPES`` (tests/zoo_diffusers.py: a diffusers class name, the
small config it is built from, keeping its family's own block layout, and the inputs its
forward takes) runs in its own process (one thread; a crash or a timeout is recorded as such),
built in float64 (float32 where the model does not run in it), with every all-zero parameter
drawn anew (diffusion models zero-initialise whole blocks' outputs, which would make any prune
of them look exact), and is pruned three times as scripts/sweep_torchvision.py prunes
(exact_only under the scatter-back oracle with bit-identical kept slices, default, verify),
with the same checks: the model unchanged after any error, the pruned model running with the
original's output shapes, the slowest ten beside a ResNet-50 prune of the same run
(transformers' ResNet-50, as the transformers sweep times it). The summary also counts the
model classes diffusers exports that no recipe builds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import sweep_layers
import sweep_torchvision as common

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)
from zoo_diffusers import RECIPES, draw_zero_parameters  # noqa: E402


def model_classes() -> list[str]:
    """Every model class diffusers exports (a ModelMixin subclass), by name."""
    import inspect
    import warnings

    import diffusers
    from diffusers.models.modeling_utils import ModelMixin

    names = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in dir(diffusers):
            try:
                cls = getattr(diffusers, name)
            except Exception:  # noqa: BLE001  (an optional backend missing)
                continue
            if inspect.isclass(cls) and issubclass(cls, ModelMixin) and cls is not ModelMixin:
                names.append(name)
    return sorted(names)


def reference_prune() -> dict:
    """transformers' ResNet-50, pruned as the transformers sweep times it, in the record
    sweep_torchvision's summary reads."""
    import sweep_transformers

    record = sweep_transformers.reference_prune()
    return {"reference": True, "seconds": record["prune"]["seconds"]}


def child(name: str, record_path: str) -> None:
    import warnings

    import diffusers
    import torch

    from depgraph_ext.testing import outputs_of

    torch.set_num_threads(1)
    record: dict = {"model": name}

    def save() -> None:
        common._save(record, record_path)

    if name == common.REFERENCE:
        record.update(reference_prune())
        return save()
    sweep_layers.stand_ins_if_asked()  # (the reference is traced as it always is)
    config, make_inputs = RECIPES[name]
    cls = getattr(diffusers, name)
    record.update(task="diffusers", kwargs=config)
    for dtype in (torch.float64, torch.float32):
        record["dtype"] = str(dtype).removeprefix("torch.")
        generator = torch.Generator().manual_seed(1)

        def randn(*shape, dtype=dtype, generator=generator):
            return torch.randn(*shape, generator=generator, dtype=dtype)

        try:
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pristine = cls(**config).eval().to(dtype)
            record["zero_parameters_drawn"] = draw_zero_parameters(pristine)
            inputs = make_inputs(randn, dtype)
            outputs = outputs_of(pristine, inputs, seed=0)
            break
        except Exception as e:  # noqa: BLE001
            record[f"{record['dtype']}_fails"] = common._short(e)
    else:
        record["setup_failed"] = record.pop("float32_fails")
        return save()
    record["params"] = sum(p.numel() for p in pristine.parameters())
    common.run_stages(record, pristine, inputs, outputs, save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="models pruned at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--models", default="", help="comma-separated class names of RECIPES")
    parser.add_argument("--out", default="sweep_diffusers.json", help="JSON records")
    parser.add_argument("--resume", action="store_true", help="keep the records in --out")
    parser.add_argument("--stand-ins", action="store_true", help=sweep_layers.STAND_INS_HELP)
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stand_ins:
        sweep_layers.ask_for_stand_ins()
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        sys.exit(f"this sweep needs diffusers, not a dependency of depgraph_ext ({e})")
    if args.child:
        return child(args.child, args.record)
    import depgraph_ext  # noqa: F401  (fail here, once, rather than in every child)

    names = [n.strip() for n in args.models.split(",") if n.strip()] or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        sys.exit(f"no recipe for: {', '.join(unknown)} (recipes: {', '.join(RECIPES)})")
    done: dict = {}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            done = {n: r for n, r in json.load(f).items() if n in names or n == common.REFERENCE}
    started = time.perf_counter()
    done = common.run([common.REFERENCE, *names], args.workers, args.timeout, done, args.out,
                      script=__file__)  # fmt: skip
    count = len(done) - (common.REFERENCE in done)
    print(f"\n{count} models in {time.perf_counter() - started:.0f} s")
    print(f"records: {args.out}")
    print(common.summary(done))
    print(common.slowest(done))
    classes = model_classes()
    missing = [n for n in classes if n not in RECIPES]
    print(f"recipes for {len(classes) - len(missing)} of the {len(classes)} model classes "
          f"diffusers exports")  # fmt: skip


if __name__ == "__main__":
    main()
