"""Pruning a transformers checkpoint on disk, never holding the model in memory.

    dx.prune_checkpoint("path/to/checkpoint", "out/dir", ratio=0.5, ratios={"heads": 0.25})

1. **Plan from the config** (``source``). The model is built from config.json on the meta
   device and traced; the groups are resolved with no weight loaded.
2. **Streaming scores** (``scores``). Each safetensors shard is memory-mapped; for every scored
   parameter dim, the per-index sums of |w|^p are computed one tensor at a time (the same
   native kernel as ``prune``), then the pages are given back. Unit scores are assembled from
   those sums in the order ``prune`` adds them, so they are bit for bit the scores ``prune``
   computes on the same weights in memory, and the plan (validated by the same loop) is the
   same.
3. **Streaming rewrite** (``write``). Each output shard's header is computed from the plan, then
   its tensors are sliced and written one at a time. Shards, index, updated config.json and
   every non-weight file (tokenizer, generation config ...) go to a temporary directory next to
   ``dst``, which is renamed into place only when everything is written: an error (a full disk
   included) leaves no output behind.
4. **Distributed** (``distributed``). Under ``torch.distributed`` (gloo on CPU, nccl on GPUs)
   every rank plans the same way, scores its share of the shards, the per-index sums are
   all-reduced (each entry has exactly one contributor, so the sum is exact and the result is
   that of one process), every rank writes its share of the output shards and rank 0 the index
   and config.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import DiskFullError, InvalidArgumentError, NoPrunableGroupsError
from ...graph.dependency import KINDS, DependencyGraph
from ...graph.resolve import select_backend
from ...progress import Progress
from ...pruning.configs import ConfigUpdate, round_to_config
from ...pruning.plan import TensorPlan, named_plan
from ...pruning.select import (
    Selection,
    check_ratio,
    check_ratios,
    check_round_to,
    select_local,
    shrinkable_groups,
    units_by_kind,
)
from ...pruning.validate import plan_until_valid
from ..safetensors_io import sync_file
from .distributed import Ranks, assign_shards, collective
from .scores import KeyMap, ShardScores, scored_dims, unit_scores_from_sums
from .source import example_inputs, meta_model, open_source
from .write import ShardWriter, check_destination, finish, numel, publish, write_error

STREAMED_IMPORTANCES = ("l2", "l1")


@dataclass
class CheckpointResult:
    """What ``prune_checkpoint`` did. ``plan``, ``tied``, ``non_persistent``: as
    ``PruneResult``'s, for the model the checkpoint holds (the checkpoint stores one name of a
    tied pair, which its shards keep)."""

    src: Path
    dst: Path
    plan: TensorPlan
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    units_before: dict[str, int]
    units_after: dict[str, int]
    config_updates: list[ConfigUpdate]
    timings: dict[str, float]
    num_shards: int
    world_size: int = 1
    copied_files: list[str] = field(default_factory=list)
    rounded: list[str] = field(default_factory=list)  # counts rounded up to what the config says
    tied: dict[str, str] = field(default_factory=dict)  # a planned name -> the one it is tied to
    non_persistent: TensorPlan = field(default_factory=dict)  # buffers outside the state_dict

    def summary(self) -> str:
        """A table: parameters and units of each group kind before and after, then times."""
        rows = [
            ("parameters", self.params_before, self.params_after),
            ("bytes", self.bytes_before, self.bytes_after),
        ]
        rows += [
            (f"{kind} units", self.units_before[kind], self.units_after[kind])
            for kind in KINDS
            if self.units_before.get(kind)
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':<{width}}  {'before':>16}  {'after':>16}  {'kept':>6}"]
        for name, before, after in rows:
            kept = f"{after / before:.1%}" if before else "-"
            lines.append(f"{name:<{width}}  {before:>16,}  {after:>16,}  {kept:>6}")
        changes = ", ".join(f"{u.field} {u.old} -> {u.new}" for u in self.config_updates)
        lines.append(f"config: {changes or 'unchanged'}")
        lines += [f"rounded: {note}" for note in self.rounded]
        ranks = f" on {self.world_size} ranks" if self.world_size > 1 else ""
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        lines.append(f"{self.num_shards} shards{ranks} -> {self.dst}; time: {stages}")
        return "\n".join(lines)


def prune_checkpoint(
    src,
    dst,
    ratio: float = 0.5,
    *,
    ratios: dict[str, float] | None = None,
    importance: str = "l2",
    round_to: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    backend: str | None = None,
    distributed: bool | None = None,
) -> CheckpointResult:
    """Prune the transformers checkpoint in directory ``src`` (config.json + safetensors
    shards) into a new checkpoint directory ``dst`` that ``from_pretrained`` loads.

    The model is never held in memory: it is planned on the meta device and its weights are
    scored and sliced one tensor at a time from memory-mapped shards. The plan and every kept
    weight are bit for bit those of ``prune(model, inputs, ratio, ratios=..., importance=...,
    round_to=..., require_loadable=True)`` on the loaded model; the output shards keep the
    source's file names and tensor names.

    ``progress``: a bar per shard on stderr (default: when stderr is a terminal, rank 0).
    ``distributed``: None uses ``torch.distributed`` when it is initialised (every rank must
    call this with the same arguments and see the same file system); False never does.
    ``dst`` is written through a temporary directory beside it and renamed at the end: on any
    error nothing is left behind; an existing ``dst`` is replaced only with ``overwrite``.
    """
    t0 = time.perf_counter()
    ratio = check_ratio(ratio)
    ratios = check_ratios(ratios)
    round_to = check_round_to(round_to)
    if importance not in STREAMED_IMPORTANCES:
        raise InvalidArgumentError(
            f"importance must be one of {STREAMED_IMPORTANCES} when pruning a checkpoint (the "
            f"others need gradients or statistics a checkpoint does not have), not "
            f"{importance!r}"
        )
    backend = select_backend(backend)
    src, dst = Path(src), Path(dst)
    ranks = Ranks(distributed)
    if progress is None:
        progress = sys.stderr.isatty() and ranks.rank == 0
    bars = Progress(bool(progress), delay=0)  # a bar per shard, from its start

    def setup():
        check_destination(src, dst, overwrite)
        source = open_source(src)
        model = meta_model(source)
        dg = DependencyGraph(model, example_inputs(model), backend=backend)
        keys = KeyMap(source, model, dg)
        scorer = ShardScores(
            source, keys, 1 if importance == "l1" else 2, backend == "native", bars, ranks
        )
        return source, model, dg, keys, scorer

    source, model, dg, keys, scorer = collective(ranks, setup)
    timings = {"graph": time.perf_counter() - t0}
    sizes = [h.file_size for h in source.shards]
    owned = assign_shards(sizes, ranks.world)[ranks.rank]
    t = time.perf_counter()
    selection = Selection(ratio, dict(ratios or {}), round_to=round_to)
    # groups whose ratio is 0 are never read for scores
    sums = scorer.all_sums(owned, scored_dims(dg.scoring_only(shrinkable_groups(dg, selection))))
    timings["score"] = time.perf_counter() - t
    t = time.perf_counter()
    dg, plan, rounded = collective(ranks, _plan, dg, source, keys, scorer, sums, selection)
    timings["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    writer = ShardWriter(source, keys, plan.tensors, bars)

    def prepare():
        dst.parent.mkdir(parents=True, exist_ok=True)
        needed = sum(writer.output_bytes(i) for i in range(len(source.shards)))
        free = shutil.disk_usage(dst.parent).free
        if needed > free:
            raise DiskFullError(
                f"the pruned checkpoint needs {needed / 2**30:.2f} GiB and "
                f"{dst.parent} has {free / 2**30:.2f} GiB free; nothing was "
                "written"
            )
        tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp

    tmp = Path(ranks.broadcast(collective(ranks, prepare if ranks.rank == 0 else str)))
    copied: list[str] = []
    try:

        def write_mine():
            try:
                for i in owned:
                    writer.write_shard(i, tmp)
                for i in owned:
                    sync_file(tmp / source.shards[i].path.name)
            except OSError as exc:
                raise write_error(exc, dst) from exc

        collective(ranks, write_mine)

        def finish_and_publish():
            try:
                finish(source, model, writer, plan.config, tmp, copied)
                publish(tmp, dst, overwrite)
            except OSError as exc:
                raise write_error(exc, dst) from exc

        collective(ranks, finish_and_publish if ranks.rank == 0 else (lambda: None))
    except BaseException:
        if ranks.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    units = units_by_kind(dg.groups, plan.keep)
    entries = [source.entry(k) for k in source.location]
    named = named_plan(plan.tensors, dg.walk)
    return CheckpointResult(
        src=src,
        dst=dst,
        plan=named.tensors,
        tied=named.tied,
        non_persistent=named.outside,
        params_before=sum(e.numel for e in entries),
        params_after=sum(numel(writer.output_shape(e.key)) for e in entries),
        bytes_before=sum(e.nbytes for e in entries),
        bytes_after=sum(
            e.nbytes // max(e.numel, 1) * numel(writer.output_shape(e.key)) for e in entries
        ),
        units_before={k: units.get(k, (0, 0))[0] for k in KINDS},
        units_after={k: units.get(k, (0, 0))[1] for k in KINDS},
        config_updates=list(plan.config),
        timings=timings,
        num_shards=len(source.shards),
        world_size=ranks.world,
        copied_files=copied,
        rounded=rounded,
    )


def _plan(
    dg: DependencyGraph,
    source,
    keys: KeyMap,
    scorer: ShardScores,
    sums: dict[tuple[str, int], np.ndarray],
    selection: Selection,
):
    """Select and validate as ``prune`` does (the same loop, blocking sizes the model's code
    fixes), from the streamed sums; a round after blocking may score tensors not read yet."""
    fp32 = not any(keys.dtype(n) == torch.float64 for n, _ in sums)
    rounded: list[str] = []

    def choose(g: DependencyGraph) -> np.ndarray:
        if not g.groups:
            raise NoPrunableGroupsError(
                "no group of the model has a prunable unit with these settings"
            )
        scoring = g.scoring_only(shrinkable_groups(g, selection))
        missing = [w for w in scored_dims(scoring) if w not in sums]
        if missing:
            sums.update(scorer.sums_of(missing))
        scores = unit_scores_from_sums(scoring, sums, fp32)
        keep = select_local(g, scores, selection.ratio, selection.round_to, selection.ratios)
        keep, notes = round_to_config(g, keep, scores)  # head counts the config can say
        rounded[:] = notes
        return keep

    dg, plan = plan_until_valid(dg, choose, require_loadable=True)
    return dg, plan, rounded
