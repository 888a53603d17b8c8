"""Checkpoint pruning on several processes (``torch.distributed``: gloo on CPU, nccl on GPUs):
who reads and writes which shards, and how the ranks agree on failure."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import CheckpointError, InvalidArgumentError


class Ranks:
    """This process's place among the ranks (one process: rank 0 of 1, no communication)."""

    def __init__(self, distributed: bool | None) -> None:
        import torch.distributed as dist

        active = dist.is_available() and dist.is_initialized()
        if distributed and not active:
            raise InvalidArgumentError(
                "distributed=True needs torch.distributed initialised "
                "(torch.distributed.init_process_group)"
            )
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
            messages, None if error is None else f"{type(error).__name__}: {error}"
        )
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


def collective(ranks: Ranks, fn, *args):
    """Run ``fn`` on every rank and agree on failure before anyone goes on."""
    out, error = None, None
    try:
        out = fn(*args)
    except Exception as exc:
        error = exc
    ranks.check(error)
    return out
