"""The options of a prune, in one place: the keyword arguments of ``prune`` and ``Pruner``."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class PruneOptions:
    """How to prune (every field is a keyword argument of ``prune`` and ``Pruner``).

    How much: ``ratio`` (an argument of its own, default 0.5) is the fraction of each group's
    prunable units removed; ``ratios`` overrides it per group kind (``"heads"``, ``"hidden"``,
    ``"channels"``, ``"experts"``; 0 leaves the kind alone; whole experts are removed only
    when their kind is given a ratio) or per module (the group's root layer is in it);
    or, instead of ``ratio``, ``target_params`` / ``target_macs``: a count (int) or a fraction
    of the original (float) the pruned model must not exceed (the smallest ratio that reaches
    it is found). ``global_pruning``: groups of one kind compete on normalised scores instead
    of each losing the same fraction; ``max_ratio`` caps any group's loss; ``min_units`` is the
    least a group keeps; ``round_to`` rounds the units a group keeps up to a multiple of it.
    ``importance``: ``"l2"``, ``"l1"``, ``"lamp"``, ``"bn_scale"``, ``"taylor"`` (needs
    ``.grad``), ``"fisher"`` (needs ``collect_fisher``), ``"routing"`` (experts by the routing
    weight they got under ``collect_routing``), ``"random"``, or an ``Importance`` object.
    ``iterative_steps``: prune in N steps, tracing and scoring again between them (use ``Pruner``
    to train in between). ``optimizer``: its state (momentum, Adam moments) is sliced with the
    weights, so training goes on with the same optimizer; gradients are always sliced.
    ``ignore``: modules, parameter/buffer names or tensors that must not change.
    ``backend``: ``"native"`` (default when the extension is built) or ``"python"``.
    ``strict``: raise on ops without a rule instead of blocking their channels.
    ``require_loadable``: refuse (before any change) when a transformers config cannot express
    the pruned shapes; otherwise that is a ``ConfigMismatchWarning``. ``in_place``: compact
    weights inside their own memory (native backend), so a model close to the machine's memory
    is never held twice; by default every pruned tensor is built before the first is assigned,
    so any failure leaves the model as it was. ``progress``: bars on stages that take seconds;
    None shows them when standard error is a terminal, False never.

    Exactness: ``exact_only`` prunes only groups whose removal equals zeroing their units
    (``Group.exact``); function-changing groups (a norm's statistics, a mean or a softmax over
    their units ...) keep every unit. ``verify``: before the model changes, the pruned model
    and the original with the removed units zeroed run on the example inputs; for the exact
    groups they must agree, or a ``VerificationError`` names the groups that do not (two
    forward passes, and a copy of the removed slices while they run).

    Outputs: every tensor the model returns keeps its width (as its inputs do), except those
    ``prune_outputs`` names: positions among the model's tensor outputs (flattened in order)
    or names (a key of what it returns, or a key path); ``result.outputs`` says what each of
    them kept.
    """

    importance: object = "l2"
    global_pruning: bool = False
    iterative_steps: int = 1
    target_params: float | int | None = None
    target_macs: float | int | None = None
    ratios: dict | None = None
    max_ratio: float = 1.0
    min_units: int = 1
    round_to: int | None = None
    ignore: object = ()
    backend: str | None = None
    strict: bool = False
    require_loadable: bool = False
    in_place: bool = False
    optimizer: object = None
    progress: bool | None = None
    exact_only: bool = False
    verify: bool = False
    prune_outputs: object = ()

    @classmethod
    def of(cls, options: dict) -> PruneOptions:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InvalidArgumentError(
                f"unknown option(s) {unknown}; the options are "
                f"{[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**options)


def with_options_signature(fn, leading: list[inspect.Parameter]):
    """Give ``fn(..., **options)`` the signature that lists every option (what ``help`` and
    editors show), after its ``leading`` parameters."""
    options = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
        )
        for f in dataclasses.fields(PruneOptions)
    ]
    fn.__signature__ = inspect.Signature(leading + options)
    return fn
