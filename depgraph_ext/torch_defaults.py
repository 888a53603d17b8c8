"""torch's process-wide defaults a caller may have changed, set aside while the library runs.

``torch.set_default_device("meta")`` (or ``"cuda"``) makes every factory call without a device
create its tensor there: the library's own index and score tensors too, which it makes on
the CPU and moves where the weights are. For the duration of a prune, the default device is
the CPU's (the model's tensors stay where they are; a trace makes the model's own factory
calls on the device it traces as)."""

from __future__ import annotations

import contextlib
import functools

import torch


@contextlib.contextmanager
def cpu_default_device():
    """The CPU as torch's default device for the duration (nothing done where it is)."""
    before = torch.get_default_device()
    if before.type == "cpu":
        yield
        return
    torch.set_default_device(None)
    try:
        yield
    finally:
        torch.set_default_device(before)


def with_library_defaults(function):
    """``function``, each call of it under :func:`cpu_default_device`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with cpu_default_device():
            return function(*args, **kwargs)

    return wrapper
