"""``depgraph-prune``: prune a transformers checkpoint on disk into a new one.

    depgraph-prune path/to/checkpoint out/dir --ratio 0.5 --ratios heads=0.25,hidden=0
    torchrun --nproc-per-node 2 -m depgraph_ext.cli path/to/checkpoint out/dir --ratio 0.5

Under torchrun (WORLD_SIZE > 1) the ranks share the shards (gloo on CPU; nccl when CUDA is
available, or as ``--dist-backend`` says). Exit status: 0 done, 1 refused (the message says
why; nothing is written), 2 bad command line.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import PruningError
from .graph.dependency import KINDS
from .io.checkpoint import STREAMED_IMPORTANCES


def parse_ratios(text: str) -> dict[str, float]:
    """``"heads=0.25,hidden=0"`` -> ``{"heads": 0.25, "hidden": 0.0}``."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected KIND=RATIO with KIND one of {', '.join(KINDS)}"
            )
        try:
            out[kind] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {value!r} is not a number") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="depgraph-prune",
        description="Structurally prune a transformers checkpoint (config.json + safetensors "
        "shards) into a new checkpoint that from_pretrained loads, without holding "
        "the model in memory. Under torchrun the processes share the shards.",
        epilog="example: depgraph-prune llama out --ratio 0.5 --ratios heads=0.25,hidden=0",
    )
    p.add_argument("src", help="checkpoint directory to read (left unchanged)")
    p.add_argument("dst", help="directory to create with the pruned checkpoint")
    p.add_argument(
        "--ratio",
        type=float,
        default=0.5,
        help="fraction of each group's prunable units to remove (default 0.5)",
    )
    p.add_argument(
        "--ratios",
        type=parse_ratios,
        default=None,
        metavar="KIND=R,...",
        help=f"per group kind ({', '.join(KINDS)}) ratios overriding --ratio; 0 "
        "leaves a kind alone",
    )
    p.add_argument(
        "--importance",
        choices=STREAMED_IMPORTANCES,
        default="l2",
        help="grouped magnitude criterion (default l2)",
    )
    p.add_argument(
        "--round-to",
        type=int,
        default=None,
        metavar="N",
        help="round the units each group keeps up to a multiple of N",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they are off anyway when stderr is not a terminal)",
    )
    p.add_argument(
        "--backend",
        choices=("native", "python"),
        default=None,
        help="native (C++ core and kernels, default when built) or python",
    )
    p.add_argument(
        "--dist-backend",
        choices=("gloo", "nccl"),
        default=None,
        help="torch.distributed backend under torchrun (default: nccl with CUDA, else gloo)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .io.checkpoint import prune_checkpoint

    started = _init_distributed(args.dist_backend)
    code = 0
    try:
        result = prune_checkpoint(
            args.src,
            args.dst,
            args.ratio,
            ratios=args.ratios,
            importance=args.importance,
            round_to=args.round_to,
            overwrite=args.overwrite,
            progress=False if args.no_progress else None,
            backend=args.backend,
        )
    except PruningError as exc:
        print(f"depgraph-prune: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        if started:
            import torch.distributed as dist

            try:  # every rank done before any tears the group down (else gloo may abort one)
                dist.barrier()
            finally:
                dist.destroy_process_group()
    if code == 0 and (result.world_size == 1 or _rank() == 0):
        print(result.summary())
    if started:
        # The process group's threads can abort the interpreter's teardown ("terminate called
        # without an active exception", seen about 1 run in 15 in a failing rank under gloo):
        # the work is done and the output flushed, so the process leaves without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _init_distributed(backend: str | None) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


if __name__ == "__main__":
    sys.exit(main())
