"""Writing a pruned checkpoint: each output shard's header from the plan, then its tensors sliced
and written one at a time; index, config and every other file alongside; everything through a
temporary directory that is renamed into place only when complete."""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from ...errors import CheckpointWriteError, DiskFullError, InvalidArgumentError, OutputExistsError
from ...progress import Progress
from ...pruning.apply import gather
from ...pruning.configs import ConfigUpdate, set_field
from ...pruning.plan import TensorPlan
from .. import pretrained, safetensors_io
from ..safetensors_io import MappedFile, copy_bytes, fsync, output_layout, write_tensor
from .scores import KeyMap, read_ahead
from .source import CONFIG, INDEX, Source

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


def numel(shape) -> int:
    if shape is None:  # a key left out
        return 0
    n = 1
    for s in shape:
        n *= s
    return n


class ShardWriter:
    """The pruned shards of one plan: their layouts, sizes, and writing them. Every key keeps
    its name, except a removed expert's (left out) and a kept one's (renumbered from 0)."""

    def __init__(self, source: Source, keys: KeyMap, plan: TensorPlan, progress: Progress) -> None:
        self.source, self.keys, self.plan, self.progress = source, keys, plan, progress

    def output_of(self, key: str) -> tuple[str, dict[int, torch.Tensor]] | None:
        """The key ``key`` is written under and the kept indices of each of its dims (None:
        its expert is removed)."""
        part = self.keys.expert_keys.get(key)
        if part is None:
            return key, self.plan.get(self.keys.name_of.get(key, key), {})
        dims = self.plan.get(part.name, {})
        experts = dims.get(0)
        if experts is not None:
            position = torch.nonzero(experts == part.expert)
            if position.numel() == 0:
                return None
            key = part.renumbered(key, int(position[0, 0]))
        sizes = self.keys.stacked[part.name].part_sizes
        offset = sum(sizes[: part.part])
        out = {}
        for d, kept in dims.items():
            if d == 1:  # the parts' rows, concatenated: this part's, from 0
                mine = kept[(kept >= offset) & (kept < offset + sizes[part.part])] - offset
                if mine.numel() != sizes[part.part]:
                    out[0] = mine
            elif d > 1:
                out[d - 1] = kept
        return key, out

    def output_shape(self, key: str) -> tuple[int, ...] | None:
        written = self.output_of(key)
        if written is None:
            return None
        shape = list(self.source.entry(key).shape)
        for d, kept in written[1].items():
            shape[d] = int(kept.numel())
        return tuple(shape)

    def output_keys(self, i: int) -> dict[str, str]:
        """Shard ``i``'s keys as written -> the keys they are read from."""
        out = {}
        for key in self.source.shards[i].entries:
            written = self.output_of(key)
            if written is not None:
                out[written[0]] = key
        return out

    def shard_layout(self, i: int) -> tuple[bytes, list[str]]:
        """The header of output shard ``i`` and the source keys in the order written."""
        header = self.source.shards[i]
        sources = self.output_keys(i)
        items = [
            (k, header.entries[src].dtype, self.output_shape(src)) for k, src in sources.items()
        ]
        header_bytes, order = output_layout(items, header.metadata or {"format": "pt"})
        return header_bytes, [sources[k] for k in order]

    def output_bytes(self, i: int) -> int:
        header_bytes, keys = self.shard_layout(i)
        total = len(header_bytes)
        for k in keys:
            e = self.source.entry(k)
            total += e.nbytes // max(e.numel, 1) * numel(self.output_shape(k))
        return total

    def write_shard(self, i: int, out_dir: Path) -> None:
        header = self.source.shards[i]
        header_bytes, keys = self.shard_layout(i)
        with (
            self.progress.bar(
                f"write {header.path.name}",
                unit="B",
                total=sum(header.entries[k].nbytes for k in keys),
            ) as bar,
            MappedFile(header) as mapped,
            open(out_dir / header.path.name, "xb") as f,
        ):
            safetensors_io.write_chunk(f, header_bytes)
            for key, entry in read_ahead(mapped, header, keys):
                _, dims = self.output_of(key)
                if dims:
                    t = mapped.tensor(entry)
                    write_tensor(f, gather(t, dims))
                    del t
                    mapped.release(entry.begin, entry.end)
                else:
                    copy_bytes(f, mapped, entry.begin, entry.end)
                bar.update(entry.nbytes)
            f.flush()  # synced with the others at the end: the kernel writes back meanwhile


def new_config(source: Source, model, updates: list[ConfigUpdate]) -> dict:
    """The source's config.json with the changed fields (as transformers serialises them)."""
    new = copy.deepcopy(model.config)
    for u in updates:
        set_field(new, u.field, u.new)
    old_fields, new_fields = model.config.to_dict(), new.to_dict()
    raw = dict(source.config)
    for key, value in new_fields.items():
        if key not in old_fields or old_fields[key] != value:
            raw[key] = value
    return raw


def check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents or d in s.parents:
        raise InvalidArgumentError(
            f"the destination {dst} must be outside the source {src} (and not contain it)"
        )
    if dst.exists() and not overwrite and not (dst.is_dir() and not any(dst.iterdir())):
        raise OutputExistsError(
            f"{dst} already exists; pass overwrite=True (--overwrite) to replace it"
        )


def write_error(exc: OSError, dst: Path) -> CheckpointWriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"no space left on the device of {dst.parent} while writing the "
            f"pruned checkpoint ({exc}); nothing was written to {dst}"
        )
    return CheckpointWriteError(
        f"writing the pruned checkpoint failed ({exc}); nothing was written to {dst}"
    )


def publish(tmp: Path, dst: Path, overwrite: bool) -> None:
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


def copy_other_files(source: Source, out: Path) -> list[str]:
    skip = {CONFIG, INDEX, pretrained.META, pretrained.BUFFERS} | {
        h.path.name for h in source.shards
    }
    copied = []
    for item in sorted(source.path.iterdir()):
        if item.name in skip or item.name.startswith(".") or item.name.endswith(_WEIGHT_SUFFIXES):
            continue
        if item.is_dir():
            shutil.copytree(
                item,
                out / item.name,
                ignore=shutil.ignore_patterns(*(f"*{s}" for s in _WEIGHT_SUFFIXES)),
            )
        else:
            shutil.copy2(item, out / item.name)
        copied.append(item.name)
    return copied


def finish(
    source: Source, model, writer: ShardWriter, updates, tmp: Path, copied: list[str]
) -> None:
    """Rank 0: the index, the config and the non-weight files, into ``tmp``."""
    if source.index is not None:
        index = copy.deepcopy(source.index)
        metadata = dict(index.get("metadata") or {})
        keys = [k for k in source.location if writer.output_shape(k) is not None]
        metadata["total_size"] = sum(
            source.entry(k).nbytes // max(source.entry(k).numel, 1) * numel(writer.output_shape(k))
            for k in keys
        )
        if "total_parameters" in metadata:
            metadata["total_parameters"] = sum(numel(writer.output_shape(k)) for k in keys)
        index["metadata"] = metadata
        if writer.keys.expert_keys:  # experts left out or renumbered: the map is the new keys'
            index["weight_map"] = {
                out: h.path.name
                for i, h in enumerate(source.shards)
                for out in writer.output_keys(i)
            }
        write_text(tmp / INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = new_config(source, model, updates)
    write_text(tmp / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    # the file depgraph_ext.from_pretrained reads: its config says every pruned shape
    write_text(tmp / pretrained.META, json.dumps(pretrained.plain_meta(model), indent=2) + "\n")
    copied.extend(copy_other_files(source, tmp))


def write_text(path: Path, text: str) -> None:
    with open(path, "xb") as f:
        safetensors_io.write_chunk(f, text.encode())
        fsync(f)
