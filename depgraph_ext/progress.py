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
    """``enabled``: True, False, or None (on when standard error is a terminal); ``delay``:
    seconds a stage runs before its bar is drawn (default ``DELAY``; 0: at once, with the bar
    left on screen)."""

    def __init__(self, enabled: bool | None = None, delay: float | None = None) -> None:
        if enabled is None:
            enabled = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.enabled = bool(enabled)
        self.delay = DELAY if delay is None else delay

    def bar(self, stage: str, total: int | None = None, unit: str = "it"):
        """A context-managed bar for one stage (``update(n)`` as work is done); ``unit="B"``
        counts bytes (shown in KiB, MiB, ...)."""
        if not self.enabled:
            return _Off()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _Off()
        scale = dict(unit_scale=True, unit_divisor=1024) if unit == "B" else {}
        return tqdm(
            total=total,
            desc=f"depgraph_ext: {stage}",
            unit=unit,
            delay=self.delay,
            leave=not self.delay,
            file=sys.stderr,
            dynamic_ncols=True,
            **scale,
        )


OFF = Progress(False)


def as_progress(progress) -> Progress:
    """A :class:`Progress` from ``True``/``False``/``None`` or one already made."""
    return progress if isinstance(progress, Progress) else Progress(progress)
