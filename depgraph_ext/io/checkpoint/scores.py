"""Streaming scores of a checkpoint: per-index sums of |w|^p of every scored tensor dim, read
one tensor at a time from memory-mapped shards, put together into unit scores exactly as
``prune``'s fused kernel adds them."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ... import ops
from ...errors import CheckpointError, NonFiniteWeightsError
from ...graph.dependency import DependencyGraph
from ...progress import Progress
from ...pruning.importance import scored_slices
from ..layout import StackedParameter, conversions_of, renamed, stacked_parameters
from ..safetensors_io import MappedFile
from .distributed import Ranks, collective
from .source import Source

AHEAD = 2  # tensors whose reading is started ahead of the one being worked on


class KeyMap:
    """The checkpoint's tensor keys for the model's canonical tensor names, every shape checked
    against the model built from the config: keys that name a tensor (after transformers'
    renamings, through tied aliases), and parameters stacked from one key per expert."""

    def __init__(self, source: Source, model, dg: DependencyGraph) -> None:
        self.source = source
        self.aliases = dg.graph.aliases
        state = model.state_dict(keep_vars=True)
        self.expected = {n: tuple(t.shape) for n, t in state.items()}
        self.dtypes = {n: t.dtype for n, t in state.items()}
        self.key_of: dict[str, str] = {}  # canonical tensor name -> checkpoint key
        self.name_of: dict[str, str] = {}  # checkpoint key -> canonical tensor name
        renamings, converters = conversions_of(model)
        for key in source.location:
            as_named = renamed(key, renamings)
            name = self.aliases.get(as_named, as_named)
            if name in self.expected or as_named in self.expected:
                shape = source.entry(key).shape
                want = self.expected.get(as_named, self.expected.get(name))
                if shape != want:
                    raise CheckpointError(
                        f"{key} has shape {list(shape)} in the checkpoint, the config gives "
                        f"{list(want)}: the shards do not belong to this config"
                    )
                self.name_of[key] = name
                if name not in self.key_of or as_named == name:
                    self.key_of[name] = key
        missing = {n: self.expected[n] for n in dg.graph.params if n not in self.key_of}
        self.stacked, self.expert_keys = stacked_parameters(
            [k for k in source.location if k not in self.name_of], renamings, converters, missing
        )
        for stacked in self.stacked.values():
            self._check_stacked(stacked)
        missing = [n for n in missing if n not in self.stacked]
        if missing:
            raise CheckpointError(
                f"the checkpoint lacks {len(missing)} parameter(s) of {type(model).__name__}: "
                + ", ".join(missing[:5])
                + (" ..." if len(missing) > 5 else "")
            )

    def _check_stacked(self, stacked: StackedParameter) -> None:
        shapes = [[self.source.entry(k).shape for k in parts] for parts in stacked.keys]
        stacked.part_sizes = [shape[0] for shape in shapes[0]]
        rest = shapes[0][0][1:]
        want = self.expected[stacked.name]
        got = (len(shapes), sum(stacked.part_sizes), *rest)
        if (
            any(s != shapes[0] for s in shapes)
            or any(s[1:] != rest for s in shapes[0])
            or (got != want)
        ):
            raise CheckpointError(
                f"the per-expert tensors of {stacked.name} ({stacked.keys[0][0]} ...) stack to "
                f"{list(got)}, the config gives {list(want)}: the shards do not belong to "
                "this config"
            )

    def shape(self, name: str) -> tuple[int, ...]:
        return self.expected[name]

    def dtype(self, name: str):
        key = self.key_of.get(name)
        if key is not None:
            return self.source.entry(key).dtype
        return self.source.entry(self.stacked[name].keys[0][0]).dtype

    def shards_of(self, names) -> list[int]:
        """The shards holding the keys of these tensors."""
        out = set()
        for name in names:
            if name in self.key_of:
                out.add(self.source.location[self.key_of[name]][0])
            else:
                out.update(self.source.location[k][0] for p in self.stacked[name].keys for k in p)
        return sorted(out)


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
        """Per-index sums of every wanted (tensor, dim) stored under one key in the given
        shards (stacked parameters: :meth:`stacked_sums`)."""
        by_key: dict[str, list[int]] = {}
        for name, dim in wanted:
            if name in self.keys.key_of:
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
                    name = self.keys.name_of[key]
                    for dim in by_key[key]:
                        sums[(name, dim)] = self._sums(t, dim, f"{key} in {header.path.name}")
                    del t
                    mapped.release(entry.begin, entry.end)
                    bar.update(entry.nbytes)
        return sums

    def _sums(self, t: torch.Tensor, dim: int, where: str) -> np.ndarray:
        s = per_index_sums(t, dim, self.p, self.native)
        if not np.isfinite(s).all():
            raise NonFiniteWeightsError(
                f"{where} holds NaN or infinite values; no ranking of units is meaningful"
            )
        return s

    def stacked_sums(self, wanted: list[tuple[str, int]]):
        """Per-index sums of parameters stored one key per expert: each stacked in memory as
        the model holds it (one layer's experts at a time), so that the sums are those of the
        in-memory parameter, bit for bit."""
        dims: dict[str, list[int]] = {}
        for name, dim in wanted:
            if name in self.keys.stacked:
                dims.setdefault(name, []).append(dim)
        sums: dict[tuple[str, int], np.ndarray] = {}
        for name, wanted_dims in dims.items():
            with contextlib.ExitStack() as files:
                t = self._stacked(self.keys.stacked[name], files)
                for dim in wanted_dims:
                    sums[(name, dim)] = self._sums(t, dim, f"{name} (stacked from its experts)")
                del t
        return sums

    def _stacked(self, stacked: StackedParameter, files: contextlib.ExitStack) -> torch.Tensor:
        mapped: dict[int, MappedFile] = {}

        def read(key: str) -> torch.Tensor:
            shard, _ = self.source.location[key]
            if shard not in mapped:
                mapped[shard] = files.enter_context(MappedFile(self.source.shards[shard]))
            return mapped[shard].tensor(self.source.entry(key))

        return torch.stack([torch.cat([read(k) for k in parts], 0) for parts in stacked.keys])

    def sums_of(self, wanted: list[tuple[str, int]]):
        """The sums of any wanted (tensor, dim), from whichever shards hold them."""
        direct = [(n, d) for n, d in wanted if n in self.keys.key_of]
        sums = self.shard_sums(self.keys.shards_of(n for n, _ in direct), direct)
        sums.update(self.stacked_sums(wanted))
        return sums

    def all_sums(self, owned: list[int], wanted: list[tuple[str, int]]):
        """Every rank's share, summed across ranks (one contributor per entry: exact);
        parameters stacked from one key per expert are rank 0's."""

        def mine_of():
            sums = self.shard_sums(owned, wanted)
            if self.ranks.rank == 0:
                sums.update(self.stacked_sums(wanted))
            return sums

        mine = collective(self.ranks, mine_of)
        if self.ranks.world == 1:
            return mine
        sizes = [self.keys.shape(n)[d] for n, d in wanted]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = np.zeros(int(offsets[-1]), dtype=np.float64)
        for i, item in enumerate(wanted):
            if item in mine:
                flat[offsets[i] : offsets[i + 1]] = mine[item]
        flat = self.ranks.sum_(flat)
        return {item: flat[offsets[i] : offsets[i + 1]] for i, item in enumerate(wanted)}
