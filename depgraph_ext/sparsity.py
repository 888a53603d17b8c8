"""Group-sparsity training (the DepGraph paper's regulariser).

``lambda * sum over prunable units k of gamma_k * ||w_k||_2``, where ``w_k`` is unit k's slice of
every member of its group (all coupled layers at once) and, within each group,
``gamma_k = alpha ** ((I_max - I_k) / (I_max - I_min))``: the least important unit of a group is
pushed toward zero ``alpha`` times harder than the most important one. Training with it
concentrates what a group computes in few units, so pruning the rest costs little.
"""

from __future__ import annotations

import numpy as np
import torch

from . import ops
from .errors import InvalidArgumentError, PruningError
from .graph.dependency import DependencyGraph
from .pruning.criteria import unit_scores
from .pruning.importance import scored_slices

_EPS = 1e-12  # inside the square root: a unit at exactly zero has a finite gradient


class GroupSparsity:
    """The regulariser for ``model``: add :meth:`penalty` to the loss, or call
    :meth:`apply_gradients` after ``loss.backward()``.

    ``lam``: the penalty's weight; ``alpha``: the ratio of the strongest to the weakest
    per-unit scale in a group; ``importance``: what ranks units for the scales (``"l2"`` by
    default; any name or Importance object :func:`depgraph_ext.prune` takes). The scales are
    computed now and again by :meth:`update_scales`. Build a new regulariser after pruning.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        example_inputs,
        lam: float = 1e-4,
        alpha: float = 16.0,
        importance="l2",
        *,
        ignore=(),
        backend: str | None = None,
        strict: bool = False,
    ) -> None:
        if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0:
            raise InvalidArgumentError(f"lam must be a number >= 0, not {lam!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha >= 1:
            raise InvalidArgumentError(f"alpha must be a number >= 1, not {alpha!r}")
        self.model = model
        self.lam = float(lam)
        self.alpha = float(alpha)
        self.importance = importance
        self.dg = DependencyGraph(
            model, example_inputs, ignore=ignore, strict=strict, backend=backend
        )
        if not self.dg.groups:
            raise PruningError("the model has no prunable group to regularise")
        params = dict(model.named_parameters())
        self._slices = scored_slices(self.dg)
        self._params = [params[s.name] for s in self._slices]
        self._shapes = [tuple(p.shape) for p in self._params]
        self._maps = [
            torch.from_numpy(s.units).to(p.device) for s, p in zip(self._slices, self._params)
        ]
        self.groups = self.dg.groups
        self.update_scales()

    def _check_unchanged(self) -> None:
        for s, p, shape in zip(self._slices, self._params, self._shapes):
            if tuple(p.shape) != shape:
                raise PruningError(
                    f"{s.name} changed shape since this regulariser was built "
                    f"({shape} -> {tuple(p.shape)}): build a new GroupSparsity "
                    "for the pruned model"
                )

    def unit_norms(self) -> torch.Tensor:
        """``||w_k||_2`` of every unit over all its group's member slices (differentiable)."""
        self._check_unchanged()
        n = self.dg.resolution.num_units
        if self.dg.backend != "native":
            return torch.sqrt(_squares_reference(self._params, self._slices, n) + _EPS)
        by_device: dict[torch.device, list[int]] = {}  # one kernel call per device
        for i, p in enumerate(self._params):
            by_device.setdefault(p.device, []).append(i)
        home = self._params[0].device
        squares = sum(
            ops.grouped_norm(
                [_real(self._params[i]) for i in idx],
                [self._slices[i].dim for i in idx],
                [self._maps[i] for i in idx],
                n,
                2,
                "sum",
            ).to(home)
            for idx in by_device.values()
        )
        return torch.sqrt(squares + _EPS)

    def update_scales(self) -> None:
        """Recompute every unit's ``gamma`` from the current weights."""
        self._check_unchanged()
        imp = unit_scores(self.dg, self.importance).numpy()
        gamma = np.zeros(self.dg.resolution.num_units)
        for group in self.groups:
            ids = group.unit_ids[group.prunable]
            score = imp[ids]
            lo, hi = np.nanmin(score), np.nanmax(score)
            rel = np.zeros_like(score) if hi <= lo else (hi - score) / (hi - lo)
            gamma[ids] = np.where(np.isnan(rel), 0.0, self.alpha ** np.nan_to_num(rel))
        self.gamma = torch.from_numpy(gamma)

    def penalty(self) -> torch.Tensor:
        """``lam * sum_k gamma_k * ||w_k||_2``: a differentiable scalar to add to the loss."""
        norms = self.unit_norms()
        return self.lam * (self.gamma.to(norms.device, norms.dtype) * norms).sum()

    def apply_gradients(self) -> None:
        """Add the penalty's gradient to every trainable member's ``.grad`` (for training
        loops that do not put the penalty in the loss)."""
        trainable = list({id(p): p for p in self._params if p.requires_grad}.values())
        if not trainable:
            return
        with torch.enable_grad():
            grads = torch.autograd.grad(self.penalty(), trainable, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(trainable, grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.to(p.dtype)
                else:
                    p.grad.add_(g.to(p.grad.dtype))

    def scores(self) -> list[torch.Tensor]:
        """Per group (in the order of ``self.groups``): each unit's current ``||w_k||_2``."""
        with torch.no_grad():
            norms = self.unit_norms().to("cpu", torch.float64)
        return [norms[torch.from_numpy(g.unit_ids)] for g in self.groups]


def _real(p: torch.Tensor) -> torch.Tensor:
    """A complex weight's moduli (differentiable), what its unit norms are made of."""
    return p.abs() if p.is_complex() else p


def _squares_reference(params, slices, num_units: int) -> torch.Tensor:
    """Sum of w^2 per unit in plain differentiable PyTorch (the python backend)."""
    out = torch.zeros(num_units, dtype=torch.float64, device=params[0].device)
    for p, s in zip(params, slices):
        per_index = ops.per_index_sums(_real(p), s.dim, 2)
        units = torch.from_numpy(s.units).to(out.device)
        valid = units >= 0
        out = out.index_add(0, units[valid], per_index.to(out.device)[valid])
    return out
