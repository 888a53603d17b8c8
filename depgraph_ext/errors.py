"""Every exception and warning of the library. Everything it refuses raises a subclass of
:class:`PruningError`."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first caller outside this package
    (the user's line, however deep inside the library the warning is raised)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and _inside(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


# Decorators' frames between the package's own (``contextlib.contextmanager``'s, torch's
# ``no_grad`` and ``inference_mode``, ``functools.wraps``'): not the user's line either.
_PLUMBING = ("contextlib.py", "_contextlib.py", "functools.py")


def _inside(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR) or filename.endswith(_PLUMBING)


class PruningError(Exception):
    """Base class of every refusal; the message names the cause (and the module where known)."""


class InternalError(PruningError, RuntimeError):
    """depgraph_ext itself failed (a bug: please report it with the model's code); raised
    before anything changed, so the model is as it was. The message names the stage, the
    error and the library's line; ``__cause__`` is the original error."""


@contextlib.contextmanager
def internal_errors(stage: str):
    """Within ``stage`` (which changes nothing of the model), any error but a
    :class:`PruningError` is an :class:`InternalError`; a warning the caller turned into an
    error (``warnings.simplefilter("error", ...)``) is raised as it is: it names its cause."""
    try:
        yield
    except (PruningError, Warning):
        raise
    except Exception as exc:
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if f.filename.startswith(_PACKAGE_DIR)
        ]
        at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        raise InternalError(
            f"depgraph_ext failed while {stage} ({type(exc).__name__}: {exc}{at}); the model "
            "is unchanged. This is a bug of depgraph_ext: please report it with the model's code"
        ) from exc


class InvalidArgumentError(PruningError, ValueError):
    """An argument of ``prune``/``DependencyGraph`` is out of range or names nothing."""


class TraceError(PruningError):
    """The model could not run on the example inputs under the tracer."""


class UnsupportedOpError(PruningError):
    """Strict mode met an op that has no rule."""


class PlanValidationError(PruningError):
    """The pruned shapes failed the fake forward that checks every plan before weights change.

    ``node`` is the index of the first op that deviated from the plan (None if unknown),
    ``fixed_slots`` the slots it showed to be fixed by the model's code, and ``module`` the
    innermost module where it happened (None if unknown). ``more``: the errors of ops that
    failed later in the same trace (each of them such an error); ``untraced``: found from the
    sizes the model's code passed, without a trace of the pruned shapes; ``read_slots``: the
    pruned dims whose sizes the code read and computed the failing sizes from (kept where
    keeping the op's own dims changes nothing)."""

    def __init__(
        self, message: str, node: int | None = None, fixed_slots=(), module: str | None = None
    ) -> None:
        super().__init__(message)
        self.node = node
        self.fixed_slots = list(fixed_slots)
        self.module = module
        self.more: tuple[PlanValidationError, ...] = ()
        self.untraced = False
        self.read_slots: list[int] = []
        self.ops_done: int | None = None  # (a trace's failure: the ops that ran before it)


class NoPrunableGroupsError(PruningError):
    """Nothing in the model can be pruned with the given settings."""


class BackendUnavailableError(PruningError):
    """``backend="native"`` was asked for but the compiled extension is not importable."""


class MissingGradientsError(PruningError):
    """A gradient-based criterion found no gradients or statistics to score with."""


class NonFiniteWeightsError(PruningError):
    """Weights are NaN or infinite, so no importance ranking is meaningful."""


class OpaqueOpWarning(UserWarning):
    """An op without a rule blocked the channels it touches."""


class FixedSizeWarning(UserWarning):
    """Validation found a size fixed by the model's code; the channels it touches are kept."""


class ExampleInputsWarning(UserWarning):
    """The model could not run on the example inputs with its own weights (wrong dtype, a
    token id past the vocabulary, or a kernel this machine lacks for the dtype); it was traced
    on meta or fake tensors, whose kernels check less."""


class UnusedParametersWarning(UserWarning):
    """Parameters the traced forward never used (a vision tower under text-only inputs, a
    head only the training mode runs): left as they are, while widths they may share were
    pruned; a forward that uses them may fail."""


class ConfigMismatchWarning(UserWarning):
    """The pruned model's shapes cannot be expressed by its config: it will not reload."""


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


class VerificationError(PruningError):
    """``verify=True``: the pruned model does not compute what the original computes with the
    removed units zeroed, for groups that claim to be exact. ``groups`` describes them,
    ``difference`` is the largest relative difference of the outputs."""

    def __init__(self, message: str, groups=(), difference: float = float("nan")) -> None:
        super().__init__(message)
        self.groups = list(groups)
        self.difference = difference


class FunctionChangingWarning(UserWarning):
    """Groups whose removal changes what the kept units compute (a norm's statistics, a mean or
    a softmax over them ...) were pruned; ``exact_only=True`` keeps them."""
