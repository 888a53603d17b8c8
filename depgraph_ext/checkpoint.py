"""Pruning a transformers checkpoint on disk, never holding the model in memory.

    dx.prune_checkpoint("path/to/checkpoint", "out/dir", ratio=0.5, ratios={"heads": 0.25})

1. **Plan from the config.** The model is built from config.json on the meta device and traced;
   the groups are resolved with no weight loaded.
2. **Streaming scores.** Each safetensors shard is memory-mapped; for every scored parameter
   dim, the per-index sums of |w|^p are computed one tensor at a time (the same native kernel
   as ``prune``), then the pages are given back. Unit scores are assembled from those sums in
   the order ``prune`` adds them, so they are bit for bit the scores ``prune`` computes on the
   same weights in memory, and the plan is the same.
3. **Streaming rewrite.** Each output shard's header is computed from the plan, then its tensors
   are sliced and written one at a time. Shards, index, updated config.json and every
   non-weight file (tokenizer, generation config ...) go to a temporary directory next to
   ``dst``, which is renamed into place only when everything is written: an error (a full disk
   included) leaves no output behind.
4. **Distributed.** Under ``torch.distributed`` (gloo on CPU, nccl on GPUs) every rank plans
   the same way, scores its share of the shards, the per-index sums are all-reduced (each entry
   has exactly one contributor, so the sum is exact and the result is that of one process),
   every rank writes its share of the output shards and rank 0 the index and config.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import ops, safetensors_io
from .apply import gather
from .configs import ConfigUpdate
from .dependency import KINDS, DependencyGraph
from .errors import InvalidArgumentError, NonFiniteWeightsError, PlanValidationError, PruningError
from .importance import scored_slices
from .plan import (
    Plan,
    Selection,
    check_ratio,
    check_ratios,
    check_round_to,
    learn_fixed_sizes,
    make_plan,
    select_local,
    shrinkable_groups,
)
from .resolve import select_backend
from .safetensors_io import (
    Header,
    MappedFile,
    SafetensorsFormatError,
    copy_bytes,
    fsync,
    output_layout,
    read_header,
    sync_file,
    write_tensor,
)
from .trace import meta_stands_for

STREAMED_IMPORTANCES = ("l2", "l1")

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
CONFIG = "config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_MAX_FEEDBACK = 32  # validation rounds, as in ``prune``
_SEQ = 16  # tokens of the example input the model is traced on
_AHEAD = 2  # tensors whose reading is started ahead of the one being worked on


class CheckpointError(PruningError):
    """The source is not a checkpoint this can prune: missing, malformed, or inconsistent."""


class UnknownModelTypeError(CheckpointError):
    """config.json names a ``model_type`` the installed transformers does not know."""


class OutputExistsError(PruningError):
    """The destination exists and ``overwrite`` was not given."""


class CheckpointWriteError(PruningError):
    """Writing the pruned checkpoint failed; nothing was left at the destination."""


class DiskFullError(CheckpointWriteError):
    """The destination's file system has no room for the pruned checkpoint."""


@dataclass
class CheckpointResult:
    """What ``prune_checkpoint`` did."""

    src: Path
    dst: Path
    plan: Plan
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

    def summary(self) -> str:
        """A table: parameters and units of each group kind before and after, then times."""
        rows = [("parameters", self.params_before, self.params_after),
                ("bytes", self.bytes_before, self.bytes_after)]
        rows += [(f"{kind} units", self.units_before[kind], self.units_after[kind])
                 for kind in KINDS if self.units_before.get(kind)]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':<{width}}  {'before':>16}  {'after':>16}  {'kept':>6}"]
        for name, before, after in rows:
            kept = f"{after / before:.1%}" if before else "-"
            lines.append(f"{name:<{width}}  {before:>16,}  {after:>16,}  {kept:>6}")
        changes = ", ".join(f"{u.field} {u.old} -> {u.new}" for u in self.config_updates)
        lines.append(f"config: {changes or 'unchanged'}")
        ranks = f" on {self.world_size} ranks" if self.world_size > 1 else ""
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        lines.append(f"{self.num_shards} shards{ranks} -> {self.dst}; time: {stages}")
        return "\n".join(lines)


# -- the source checkpoint ------------------------------------------------------------------------
@dataclass
class Source:
    path: Path
    config: dict
    shards: list[Header]
    index: dict | None
    location: dict[str, tuple[int, str]]  # tensor key -> (shard number, key)

    def entry(self, key: str):
        shard, _ = self.location[key]
        return self.shards[shard].entries[key]


def open_source(src) -> Source:
    """Read config.json, the index and every shard's header; refuse anything inconsistent."""
    path = Path(src)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    config_path = path / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG}: not a transformers checkpoint")
    config = _read_json(config_path, "the model config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object")
    index = None
    if (path / INDEX).is_file():
        index = _read_json(path / INDEX, "the shard index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise CheckpointError(f"{path / INDEX} has no weight_map of tensor name -> file")
        files = sorted(set(weight_map.values()))
    elif (path / SINGLE).is_file():
        weight_map, files = None, [SINGLE]
    else:
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        hint = (f" (found {', '.join(others)}: only safetensors checkpoints are pruned; save "
                "with save_pretrained(..., safe_serialization=True))" if others else "")
        raise CheckpointError(f"{path} has neither {INDEX} nor {SINGLE}{hint}")
    shards = []
    for name in files:
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise CheckpointError(f"shard {name} listed in {INDEX} is missing from {path}")
        try:
            shards.append(read_header(file))
        except SafetensorsFormatError as exc:
            raise CheckpointError(f"malformed shard: {exc}") from exc
    location: dict[str, tuple[int, str]] = {}
    for i, header in enumerate(shards):
        for key in header.entries:
            if key in location:
                raise CheckpointError(f"tensor {key} is stored in both {files[location[key][0]]} "
                                      f"and {files[i]}")
            location[key] = (i, key)
    if weight_map is not None:
        for key, name in weight_map.items():
            if key not in location or files[location[key][0]] != name:
                raise CheckpointError(f"{INDEX} puts {key} in {name}, which does not hold it")
    return Source(path, config, shards, index, location)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} ({what}) is not valid JSON: {exc}") from exc


def meta_model(source: Source):
    """The checkpoint's model built from its config on the meta device (no weight memory)."""
    try:
        import transformers
    except ImportError as exc:
        raise CheckpointError("pruning a checkpoint needs transformers installed") from exc
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, AutoModelForCausalLM

    model_type = source.config.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"{source.path / CONFIG} has no model_type")
    if model_type not in CONFIG_MAPPING:
        raise UnknownModelTypeError(
            f"{source.path / CONFIG} has model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know (custom code is not run)")
    try:
        config = AutoConfig.from_pretrained(source.path)
    except Exception as exc:  # transformers' own validation of the fields
        raise CheckpointError(f"{source.path / CONFIG} is not a valid {model_type} config: "
                              f"{type(exc).__name__}: {exc}") from exc
    classes = [getattr(transformers, a, None) for a in (config.architectures or [])]
    candidates = [c for c in classes if c is not None]
    candidates += [AutoModelForCausalLM.from_config, AutoModel.from_config]
    errors = []
    for build in candidates:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build(config)
            return model.eval()
        except Exception as exc:  # the next candidate
            errors.append(f"{getattr(build, '__qualname__', build)}: {exc}")
    raise CheckpointError(f"no model class builds from {source.path / CONFIG}: "
                          + "; ".join(errors))


def example_inputs(model):
    """Inputs the model is traced on (fake tensors: no value matters, only shapes)."""
    name = getattr(model, "main_input_name", "input_ids")
    config = model.config
    if name == "input_ids":
        return {"input_ids": torch.zeros(1, _SEQ, dtype=torch.long)}
    if name == "pixel_values" and hasattr(config, "image_size"):
        size = config.image_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        return {"pixel_values": torch.zeros(1, getattr(config, "num_channels", 3), *size)}
    raise CheckpointError(f"{type(model).__name__} takes {name!r} inputs, which checkpoint "
                          "pruning cannot make up; load it and use depgraph_ext.prune")


# -- distributed ----------------------------------------------------------------------------------
class _Ranks:
    """This process's place among the ranks (one process: rank 0 of 1, no communication)."""

    def __init__(self, distributed: bool | None) -> None:
        import torch.distributed as dist

        active = dist.is_available() and dist.is_initialized()
        if distributed and not active:
            raise InvalidArgumentError("distributed=True needs torch.distributed initialised "
                                       "(torch.distributed.init_process_group)")
        self.dist = dist if active and distributed is not False else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        self.device = torch.device("cpu")
        if self.dist and self.dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())

    def check(self, error: BaseException | None) -> None:
        """Every rank learns whether any rank failed; the failed ones raise their own error,
        the others a CheckpointError naming the rank and its message."""
        if self.dist is None:
            if error is not None:
                raise error
            return
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=self.device)
        self.dist.all_reduce(flag)
        if int(flag.item()) == 0:
            return
        messages = [None] * self.world
        self.dist.all_gather_object(
            messages, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
        raise CheckpointError(f"rank {rank} failed: {message}")

    def sum_(self, values: np.ndarray) -> np.ndarray:
        if self.dist is None:
            return values
        t = torch.from_numpy(values).to(self.device)
        self.dist.all_reduce(t)
        return t.cpu().numpy()

    def broadcast(self, value):
        if self.dist is None:
            return value
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]


def assign_shards(sizes: list[int], world: int) -> list[list[int]]:
    """Shards per rank: largest first to the least loaded rank (ties: lowest rank)."""
    load = [0] * world
    owned: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owned[r].append(i)
        load[r] += sizes[i]
    return [sorted(o) for o in owned]


def _collective(ranks: _Ranks, fn, *args):
    """Run ``fn`` on every rank and agree on failure before anyone goes on."""
    out, error = None, None
    try:
        out = fn(*args)
    except Exception as exc:
        error = exc
    ranks.check(error)
    return out


# -- progress -------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.tqdm = None
        if enabled:
            try:
                from tqdm import tqdm

                self.tqdm = tqdm
            except ImportError:
                self.tqdm = None

    def bar(self, total: int, desc: str):
        if self.tqdm is None:
            return _NoBar()
        return self.tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                         file=sys.stderr, dynamic_ncols=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


# -- scores ---------------------------------------------------------------------------------------
_EMPTY64 = torch.empty(0, dtype=torch.float64)
_EMPTY_MAP = torch.empty(0, dtype=torch.long)


def per_index_sums(t: torch.Tensor, dim: int, p: int, native: bool) -> np.ndarray:
    """float64[t.shape[dim]]: sum of |w|^p over every other dim, for each index of ``dim``.

    Native: the ``grouped_norm`` kernel with each index its own unit, beside an empty fp64
    member so the kernel returns its double accumulators uncast; these are exactly the sums
    ``prune``'s fused call maps to units. Python: plain PyTorch in float64, in row blocks.
    """
    n = t.shape[dim]
    if native:
        return ops.grouped_norm([t, _EMPTY64], [dim, 0], [torch.arange(n), _EMPTY_MAP], n, p,
                                "sum").numpy()
    out = torch.zeros(n, dtype=torch.float64)
    rows = max(1, (1 << 24) // max(1, t[0].numel())) if t.dim() and t.shape[0] else 1
    for start in range(0, max(t.shape[0], 1) if t.dim() else 1, rows):
        part = t[start:start + rows] if t.dim() else t
        w = part.to(torch.float64)
        w = w.abs() if p == 1 else w.square()
        others = [d for d in range(w.dim()) if d != dim]
        s = w.sum(dim=others) if others else w
        if dim == 0:
            out[start:start + s.shape[0]] = s
        else:
            out += s
    return out.numpy()


def _scored_dims(dg: DependencyGraph) -> list[tuple[str, int]]:
    seen: dict[tuple[str, int], None] = {}
    for sl in scored_slices(dg):
        seen[(sl.name, sl.dim)] = None
    return list(seen)


def unit_scores_from_sums(dg: DependencyGraph, sums: dict[tuple[str, int], np.ndarray],
                          result_fp32: bool) -> torch.Tensor:
    """Unit scores from per-index sums, added in the order of ``prune``'s fused kernel call
    (member by member, index by index, in double) and rounded as its result is."""
    out = np.zeros(dg.resolution.num_units, dtype=np.float64)
    for sl in scored_slices(dg):
        s = sums[(sl.name, sl.dim)]
        valid = sl.units >= 0
        touched, where = np.unique(sl.units[valid], return_inverse=True)
        contribution = np.zeros(touched.shape[0], dtype=np.float64)
        np.add.at(contribution, where, s[valid])
        out[touched] += contribution
    scores = torch.from_numpy(out)
    return scores.to(torch.float32).to(torch.float64) if result_fp32 else scores


def _read_ahead(mapped: MappedFile, header, keys: list[str]):
    """Each key with its entry; the pages of the next ``_AHEAD`` tensors are requested from
    the disk while this one is worked on."""
    for n, key in enumerate(keys):
        entry = header.entries[key]
        if n == 0:
            mapped.prefetch(entry.begin, entry.end)
        for ahead in keys[n + 1:n + 1 + _AHEAD]:
            mapped.prefetch(header.entries[ahead].begin, header.entries[ahead].end)
        yield key, entry


# -- the pipeline ---------------------------------------------------------------------------------
class _Job:
    def __init__(self, source: Source, model, dg: DependencyGraph, p: int, native: bool,
                 progress: _Progress, ranks: _Ranks) -> None:
        self.source, self.model, self.dg, self.p, self.native = source, model, dg, p, native
        self.progress, self.ranks = progress, ranks
        self.aliases = dg.graph.aliases
        self.expected = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
        self.key_of: dict[str, str] = {}  # canonical tensor name -> checkpoint key
        for key in source.location:
            name = self.aliases.get(key, key)
            if name in self.expected or key in self.expected:
                shape = self.source.entry(key).shape
                want = self.expected.get(key, self.expected.get(name))
                if shape != want:
                    raise CheckpointError(
                        f"{key} has shape {list(shape)} in the checkpoint, the config gives "
                        f"{list(want)}: the shards do not belong to this config")
                if name not in self.key_of or key == name:
                    self.key_of[name] = key
        missing = [n for n in dg.graph.params if n not in self.key_of]
        if missing:
            raise CheckpointError(
                f"the checkpoint lacks {len(missing)} parameter(s) of {type(model).__name__}: "
                + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))

    def shard_sums(self, shards: list[int], wanted: list[tuple[str, int]]):
        """Per-index sums of every wanted (tensor, dim) stored in the given shards."""
        by_key: dict[str, list[int]] = {}
        for name, dim in wanted:
            by_key.setdefault(self.key_of[name], []).append(dim)
        sums: dict[tuple[str, int], np.ndarray] = {}
        for i in shards:
            header = self.source.shards[i]
            keys = [k for k in header.entries if k in by_key]
            bar = self.progress.bar(sum(header.entries[k].nbytes for k in keys),
                                    f"score {header.path.name}")
            with MappedFile(header) as mapped:
                for key, entry in _read_ahead(mapped, header, keys):
                    t = mapped.tensor(entry)
                    name = self.aliases.get(key, key)
                    for dim in by_key[key]:
                        s = per_index_sums(t, dim, self.p, self.native)
                        if not np.isfinite(s).all():
                            raise NonFiniteWeightsError(
                                f"{key} in {header.path.name} holds NaN or infinite values; "
                                "no ranking of units is meaningful")
                        sums[(name, dim)] = s
                    del t
                    mapped.release(entry.begin, entry.end)
                    bar.update(entry.nbytes)
            bar.close()
        return sums

    def all_sums(self, owned: list[int], wanted: list[tuple[str, int]]):
        """Every rank's share, summed across ranks (one contributor per entry: exact)."""
        mine = _collective(self.ranks, self.shard_sums, owned, wanted)
        if self.ranks.world == 1:
            return mine
        sizes = [self.source.entry(self.key_of[n]).shape[d] for n, d in wanted]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = np.zeros(int(offsets[-1]), dtype=np.float64)
        for i, item in enumerate(wanted):
            if item in mine:
                flat[offsets[i]:offsets[i + 1]] = mine[item]
        flat = self.ranks.sum_(flat)
        return {item: flat[offsets[i]:offsets[i + 1]] for i, item in enumerate(wanted)}

    def plan(self, sums, ratio, round_to, ratios, require_loadable):
        """Select and validate as ``prune`` does, blocking sizes the model's code fixes."""
        dg = self.dg
        fp32 = not any(self.source.entry(self.key_of[n]).dtype == torch.float64
                       for n, _ in sums)
        for _ in range(_MAX_FEEDBACK):
            if not dg.groups:
                raise PruningError("no group of the model has a prunable unit with these "
                                   "settings")
            selection = Selection(ratio, dict(ratios or {}), round_to=round_to)
            with dg.scoring_only(shrinkable_groups(dg, selection)):
                wanted = _scored_dims(dg)
                missing = [w for w in wanted if w not in sums]
                if missing:  # a round after blocking found new members: read them here
                    shards = sorted({self.source.location[self.key_of[n]][0]
                                     for n, _ in missing})
                    sums.update(self.shard_sums(shards, missing))
                scores = unit_scores_from_sums(dg, sums, fp32)
            keep = select_local(dg, scores, ratio, round_to, ratios)
            try:
                with meta_stands_for("cpu"):
                    return keep, make_plan(dg, keep, require_loadable)
            except PlanValidationError as exc:
                learn_fixed_sizes(dg, exc)
        raise PlanValidationError(f"no valid plan after {_MAX_FEEDBACK} rounds of validation")

    def output_shape(self, key: str, plan: Plan) -> tuple[int, ...]:
        entry = self.source.entry(key)
        shape = list(entry.shape)
        for d, kept in plan.get(self.aliases.get(key, key), {}).items():
            shape[d] = int(kept.numel())
        return tuple(shape)

    def shard_layout(self, i: int, plan: Plan) -> tuple[bytes, list[str]]:
        header = self.source.shards[i]
        items = [(k, e.dtype, self.output_shape(k, plan)) for k, e in header.entries.items()]
        return output_layout(items, header.metadata or {"format": "pt"})

    def output_bytes(self, i: int, plan: Plan) -> int:
        header_bytes, keys = self.shard_layout(i, plan)
        total = len(header_bytes)
        for k in keys:
            e = self.source.entry(k)
            total += e.nbytes // max(e.numel, 1) * _numel(self.output_shape(k, plan))
        return total

    def write_shard(self, i: int, plan: Plan, out_dir: Path) -> None:
        header = self.source.shards[i]
        header_bytes, keys = self.shard_layout(i, plan)
        bar = self.progress.bar(sum(header.entries[k].nbytes for k in keys),
                                f"write {header.path.name}")
        with MappedFile(header) as mapped, open(out_dir / header.path.name, "xb") as f:
            safetensors_io.write_chunk(f, header_bytes)
            for key, entry in _read_ahead(mapped, header, keys):
                dims = plan.get(self.aliases.get(key, key))
                if dims:
                    t = mapped.tensor(entry)
                    write_tensor(f, gather(t, dims))
                    del t
                    mapped.release(entry.begin, entry.end)
                else:
                    copy_bytes(f, mapped, entry.begin, entry.end)
                bar.update(entry.nbytes)
            f.flush()  # synced with the others at the end: the kernel writes back meanwhile
        bar.close()


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _units(dg: DependencyGraph, keep: np.ndarray) -> tuple[dict[str, int], dict[str, int]]:
    before = dict.fromkeys(KINDS, 0)
    after = dict.fromkeys(KINDS, 0)
    for g in dg.groups:
        before[g.kind] += g.num_units
        after[g.kind] += int(keep[g.unit_ids].sum())
    return before, after


def _new_config(source: Source, model, updates: list[ConfigUpdate]) -> dict:
    """The source's config.json with the changed fields (as transformers serialises them)."""
    new = copy.deepcopy(model.config)
    for u in updates:
        setattr(new, u.field, u.new)
    old_fields, new_fields = model.config.to_dict(), new.to_dict()
    raw = dict(source.config)
    for key, value in new_fields.items():
        if key not in old_fields or old_fields[key] != value:
            raw[key] = value
    return raw


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents or d in s.parents:
        raise InvalidArgumentError(f"the destination {dst} must be outside the source {src} "
                                   "(and not contain it)")
    if dst.exists() and not overwrite and not (dst.is_dir() and not any(dst.iterdir())):
        raise OutputExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to "
                                "replace it")


def _write_error(exc: OSError, dst: Path) -> CheckpointWriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left on the device of {dst.parent} while writing the "
                             f"pruned checkpoint ({exc}); nothing was written to {dst}")
    return CheckpointWriteError(f"writing the pruned checkpoint failed ({exc}); nothing was "
                                f"written to {dst}")


def _publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Rename the finished temporary directory into place (the old one replaced if asked)."""
    if dst.exists():
        if dst.is_dir() and not any(dst.iterdir()):
            dst.rmdir()
        elif not overwrite:
            raise OutputExistsError(f"{dst} appeared while pruning; not replacing it")
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dst, old)
        try:
            os.rename(tmp, dst)
        except BaseException:
            os.rename(old, dst)
            raise
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.rename(tmp, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_other_files(source: Source, out: Path) -> list[str]:
    skip = {CONFIG, INDEX} | {h.path.name for h in source.shards}
    copied = []
    for item in sorted(source.path.iterdir()):
        if item.name in skip or item.name.startswith(".") or item.name.endswith(
                _WEIGHT_SUFFIXES):
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name,
                            ignore=shutil.ignore_patterns(*(f"*{s}" for s in _WEIGHT_SUFFIXES)))
        else:
            shutil.copy2(item, out / item.name)
        copied.append(item.name)
    return copied


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
            f"{importance!r}")
    backend = select_backend(backend)
    src, dst = Path(src), Path(dst)
    ranks = _Ranks(distributed)
    if progress is None:
        progress = sys.stderr.isatty() and ranks.rank == 0
    bars = _Progress(bool(progress))

    def setup():
        _check_destination(src, dst, overwrite)
        source = open_source(src)
        model = meta_model(source)
        with meta_stands_for("cpu"):
            dg = DependencyGraph(model, example_inputs(model), backend=backend)
        return source, model, dg, _Job(source, model, dg, 1 if importance == "l1" else 2,
                                      backend == "native", bars, ranks)

    source, model, dg, job = _collective(ranks, setup)
    timings = {"graph": time.perf_counter() - t0}
    sizes = [h.file_size for h in source.shards]
    owned = assign_shards(sizes, ranks.world)[ranks.rank]
    t = time.perf_counter()
    selection = Selection(ratio, dict(ratios or {}), round_to=round_to)
    with dg.scoring_only(shrinkable_groups(dg, selection)):  # ratio 0: never read for scores
        wanted = _scored_dims(dg)
    sums = job.all_sums(owned, wanted)
    timings["score"] = time.perf_counter() - t
    t = time.perf_counter()
    keep, (plan, _, config_updates) = _collective(
        ranks, job.plan, sums, ratio, round_to, ratios, True)
    timings["plan"] = time.perf_counter() - t
    t = time.perf_counter()

    def prepare():
        dst.parent.mkdir(parents=True, exist_ok=True)
        needed = sum(job.output_bytes(i, plan) for i in range(len(source.shards)))
        free = shutil.disk_usage(dst.parent).free
        if needed > free:
            raise DiskFullError(f"the pruned checkpoint needs {needed / 2**30:.2f} GiB and "
                                f"{dst.parent} has {free / 2**30:.2f} GiB free; nothing was "
                                "written")
        tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp

    tmp = Path(ranks.broadcast(_collective(ranks, prepare if ranks.rank == 0 else str)))
    copied: list[str] = []
    try:
        def write_mine():
            try:
                for i in owned:
                    job.write_shard(i, plan, tmp)
                for i in owned:
                    sync_file(tmp / source.shards[i].path.name)
            except OSError as exc:
                raise _write_error(exc, dst) from exc

        _collective(ranks, write_mine)

        def finish():
            try:
                _finish(source, model, job, plan, config_updates, tmp, copied)
                _publish(tmp, dst, overwrite)
            except OSError as exc:
                raise _write_error(exc, dst) from exc

        _collective(ranks, finish if ranks.rank == 0 else (lambda: None))
    except BaseException:
        if ranks.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    units_before, units_after = _units(dg, keep)
    entries = [source.entry(k) for k in source.location]
    params_after = sum(_numel(job.output_shape(e.key, plan)) for e in entries)
    return CheckpointResult(
        src=src, dst=dst, plan=plan,
        params_before=sum(e.numel for e in entries),
        params_after=params_after,
        bytes_before=sum(e.nbytes for e in entries),
        bytes_after=sum(e.nbytes // max(e.numel, 1) * _numel(job.output_shape(e.key, plan))
                        for e in entries),
        units_before=units_before, units_after=units_after,
        config_updates=config_updates, timings=timings, num_shards=len(source.shards),
        world_size=ranks.world, copied_files=copied,
    )


def _finish(source: Source, model, job: _Job, plan: Plan, updates, tmp: Path,
            copied: list[str]) -> None:
    """Rank 0: the index, the config and the non-weight files, into ``tmp``."""
    if source.index is not None:
        index = copy.deepcopy(source.index)
        metadata = dict(index.get("metadata") or {})
        keys = list(source.location)
        metadata["total_size"] = sum(
            source.entry(k).nbytes // max(source.entry(k).numel, 1)
            * _numel(job.output_shape(k, plan)) for k in keys)
        if "total_parameters" in metadata:
            metadata["total_parameters"] = sum(_numel(job.output_shape(k, plan)) for k in keys)
        index["metadata"] = metadata
        _write_text(tmp / INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = _new_config(source, model, updates)
    _write_text(tmp / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    copied.extend(_copy_other_files(source, tmp))


def _write_text(path: Path, text: str) -> None:
    with open(path, "xb") as f:
        safetensors_io.write_chunk(f, text.encode())
        fsync(f)
