"""Progress bars for the stages of a prune that can take seconds (tracing a large model, checking
the plan, slicing its weights).

A bar appears only once its stage has run for ``DELAY`` seconds, only when standard error is a
terminal, and never with ``progress=False``; ``progress=True`` shows bars on any stream.
"""

from __future__ import annotations

import sys

DELAY = 1.0  # seconds a stage runs before its bar is drawn


class _Off:
    """A bar that does nothing (progress off, or tqdm missing)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class Progress:
    """``enabled``: True, False, or None (on when standard error is a terminal)."""

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.enabled = bool(enabled)

    def bar(self, stage: str, total: int | None = None, unit: str = "it"):
        """A context-managed bar for one stage (``update(n)`` as work is done)."""
        if not self.enabled:
            return _Off()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _Off()
        return tqdm(total=total, desc=f"depgraph_ext: {stage}", unit=unit, delay=DELAY,
                    leave=False, file=sys.stderr, dynamic_ncols=True)


OFF = Progress(False)


def as_progress(progress) -> Progress:
    """A :class:`Progress` from ``True``/``False``/``None`` or one already made."""
    return progress if isinstance(progress, Progress) else Progress(progress)
