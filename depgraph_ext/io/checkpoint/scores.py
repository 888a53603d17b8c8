"""Streaming scores of a checkpoint: per-index sums of |w|^p of every scored tensor dim, read
one tensor at a time from memory-mapped shards, put together into unit scores exactly as
``prune``'s fused kernel adds them."""

from __future__ import annotations

import numpy as np
import torch

from ... import ops
from ...errors import CheckpointError, NonFiniteWeightsError
from ...graph.dependency import DependencyGraph
from ...progress import Progress
from ...prune.importance import scored_slices
from ..safetensors_io import MappedFile
from .distributed import Ranks, collective
from .source import Source

AHEAD = 2  # tensors whose reading is started ahead of the one being worked on


class KeyMap:
    """The checkpoint's tensor keys for the model's canonical tensor names, every shape checked
    against the model built from the config."""

    def __init__(self, source: Source, model, dg: DependencyGraph) -> None:
        self.source = source
        self.aliases = dg.graph.aliases
        self.expected = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
        self.key_of: dict[str, str] = {}  # canonical tensor name -> checkpoint key
        for key in source.location:
            name = self.aliases.get(key, key)
            if name in self.expected or key in self.expected:
                shape = source.entry(key).shape
                want = self.expected.get(key, self.expected.get(name))
                if shape != want:
                    raise CheckpointError(
                        f"{key} has shape {list(shape)} in the checkpoint, the config gives "
                        f"{list(want)}: the shards do not belong to this config"
                    )
                if name not in self.key_of or key == name:
                    self.key_of[name] = key
        missing = [n for n in dg.graph.params if n not in self.key_of]
        if missing:
            raise CheckpointError(
                f"the checkpoint lacks {len(missing)} parameter(s) of {type(model).__name__}: "
                + ", ".join(missing[:5])
                + (" ..." if len(missing) > 5 else "")
            )


def per_index_sums(t: torch.Tensor, dim: int, p: int, native: bool) -> np.ndarray:
    """float64[t.shape[dim]]: sum of |w|^p over every other dim, for each index of ``dim``:
    the native ``index_sums`` op (exactly the sums ``prune``'s fused kernel maps to units),
    or its plain PyTorch reference."""
    if native:
        return ops.index_sums([t], [dim], p).numpy()
    return ops.per_index_sums(t, dim, p).numpy()


def scored_dims(dg: DependencyGraph) -> list[tuple[str, int]]:
    seen: dict[tuple[str, int], None] = {}
    for sl in scored_slices(dg):
        seen[(sl.name, sl.dim)] = None
    return list(seen)


def unit_scores_from_sums(
    dg: DependencyGraph, sums: dict[tuple[str, int], np.ndarray], result_fp32: bool
) -> torch.Tensor:
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


def read_ahead(mapped: MappedFile, header, keys: list[str]):
    """Each key with its entry; the pages of the next ``AHEAD`` tensors are requested from
    the disk while this one is worked on."""
    for n, key in enumerate(keys):
        entry = header.entries[key]
        if n == 0:
            mapped.prefetch(entry.begin, entry.end)
        for ahead in keys[n + 1 : n + 1 + AHEAD]:
            mapped.prefetch(header.entries[ahead].begin, header.entries[ahead].end)
        yield key, entry


class ShardScores:
    """Reads the scored tensors of a checkpoint's shards: this rank's share, or any shard."""

    def __init__(
        self, source: Source, keys: KeyMap, p: int, native: bool, progress: Progress, ranks: Ranks
    ) -> None:
        self.source, self.keys, self.p, self.native = source, keys, p, native
        self.progress, self.ranks = progress, ranks

    def shard_sums(self, shards: list[int], wanted: list[tuple[str, int]]):
        """Per-index sums of every wanted (tensor, dim) stored in the given shards."""
        by_key: dict[str, list[int]] = {}
        for name, dim in wanted:
            by_key.setdefault(self.keys.key_of[name], []).append(dim)
        sums: dict[tuple[str, int], np.ndarray] = {}
        for i in shards:
            header = self.source.shards[i]
            keys = [k for k in header.entries if k in by_key]
            with (
                self.progress.bar(
                    f"score {header.path.name}",
                    unit="B",
                    total=sum(header.entries[k].nbytes for k in keys),
                ) as bar,
                MappedFile(header) as mapped,
            ):
                for key, entry in read_ahead(mapped, header, keys):
                    t = mapped.tensor(entry)
                    name = self.keys.aliases.get(key, key)
                    for dim in by_key[key]:
                        s = per_index_sums(t, dim, self.p, self.native)
                        if not np.isfinite(s).all():
                            raise NonFiniteWeightsError(
                                f"{key} in {header.path.name} holds NaN or infinite values; "
                                "no ranking of units is meaningful"
                            )
                        sums[(name, dim)] = s
                    del t
                    mapped.release(entry.begin, entry.end)
                    bar.update(entry.nbytes)
        return sums

    def all_sums(self, owned: list[int], wanted: list[tuple[str, int]]):
        """Every rank's share, summed across ranks (one contributor per entry: exact)."""
        mine = collective(self.ranks, self.shard_sums, owned, wanted)
        if self.ranks.world == 1:
            return mine
        sizes = [self.source.entry(self.keys.key_of[n]).shape[d] for n, d in wanted]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = np.zeros(int(offsets[-1]), dtype=np.float64)
        for i, item in enumerate(wanted):
            if item in mine:
                flat[offsets[i] : offsets[i + 1]] = mine[item]
        flat = self.ranks.sum_(flat)
        return {item: flat[offsets[i] : offsets[i + 1]] for i, item in enumerate(wanted)}
