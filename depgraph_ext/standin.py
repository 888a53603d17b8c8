"""Meta tensors standing in for tensors of a real device, for tracing.

A trace on plain meta tensors costs about half of one on fake tensors (``FakeTensorMode``
checks, hashes and wraps every op in Python), but two things see the meta device where the
model would see its own: the model's Python code (``x.device``, ``x.to(device)``), and a few
composite ops that pick their decomposition in C++ by device (attention picks a fused kernel
on the CPU and plain math on meta; recurrent layers a fused layer on the CPU). So, during a
meta trace, :class:`StandIn`

- answers ``device``, ``is_cpu``, ``is_meta`` and ``get_device`` of a meta tensor as for a
  tensor of the stand-in device, and moves to the stand-in device mean staying on meta;
- runs the device-sensitive composites (``DEVICE_SENSITIVE``) on fake tensors of the stand-in
  device under the recorder, so the recorded ops are exactly those of a fake trace, and hands
  their results back as meta tensors.

The recorder itself puts every tensor that is not on meta (a constant the model's code made)
on meta before an op runs, and makes factories (``zeros``, ``arange`` ...) build on meta.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _pop_mode_temporarily

META = torch.device("meta")

# Functions whose ops (what a dispatch-level recorder sees) depend on the device: composites
# that pick a kernel by device (attention, recurrent layers), and batch and instance norm,
# whose CPU kernel returns empty saved statistics in eval mode where the meta kernel returns
# full ones. (A torch function mode sees the outermost call only: ``F.batch_norm``, not the
# ``torch.batch_norm`` inside it.)
DEVICE_SENSITIVE = frozenset({
    torch._C._nn.scaled_dot_product_attention,
    torch._VF.lstm,
    torch._VF.gru,
    torch._VF.rnn_tanh,
    torch._VF.rnn_relu,
    torch.nn.functional.batch_norm,
    torch.nn.functional.instance_norm,
    torch.batch_norm,
    torch.instance_norm,
})

# Modules whose Python code takes a fused path only when no torch function mode is active
# (``has_torch_function``): a model with one is traced on fake tensors instead.
FUSED_PATH_MODULES = (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer,
                      torch.nn.TransformerEncoder)

_DEVICE = torch.Tensor.device.__get__
_IS_CPU = torch.Tensor.is_cpu.__get__
_IS_META = torch.Tensor.is_meta.__get__
_GET_DEVICE = torch.Tensor.get_device
_MOVES = frozenset({torch.Tensor.to, torch.Tensor.cpu})


def on_meta(t: torch.Tensor, shape=None) -> torch.Tensor:
    """An uninitialised meta tensor of ``t``'s layout (or of ``shape``, contiguous) that
    requires grad as ``t`` does (ops decide on it: a matmul folds its batch dims or not)."""
    if shape is not None:
        m = torch.empty(shape, dtype=t.dtype, device=META)
    else:
        m = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=META)
    return m.requires_grad_() if t.requires_grad else m


class StandIn(TorchFunctionMode):
    """Meta tensors look like tensors of ``device`` (see the module's docstring).

    ``recorder``: the dispatch-level recorder of the trace; it must see the ops the
    device-sensitive composites run, and know their fake inputs and outputs as the meta
    tensors they stand for (``alias(fake, meta)``)."""

    def __init__(self, device: torch.device, recorder) -> None:
        super().__init__()
        self.device = device
        self.recorder = recorder
        self._fake_mode = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in DEVICE_SENSITIVE:
            return self._on_fake_device(func, args, kwargs)
        if func in _MOVES:  # staying on meta is what moving to the stand-in means here
            args = tuple(META if _is_stand_in(a, self.device) else a for a in args)
            if _is_stand_in(kwargs.get("device"), self.device):
                kwargs = dict(kwargs, device=META)
            if func is torch.Tensor.cpu:
                return torch.Tensor.to(args[0], META)
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if func == _DEVICE:
            return self.device if out.type == "meta" else out
        if func == _IS_CPU:
            return out or (self.device.type == "cpu" and _IS_META(args[0]))
        if func == _IS_META:
            return False if out else out
        if func == _GET_DEVICE and _IS_META(args[0]):
            return -1 if self.device.type == "cpu" else (self.device.index or 0)
        return out

    def _on_fake_device(self, func, args, kwargs):
        """``func`` on fake tensors of the stand-in device, under the recorder."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        if self._fake_mode is None:
            self._fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake_mode, recorder = self._fake_mode, self.recorder

        def to_fake(x):
            if not isinstance(x, torch.Tensor) or x.device.type != "meta":
                return x
            with fake_mode:
                f = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=self.device)
            if x.requires_grad:
                f.requires_grad_()
            recorder.alias(f, x)
            return f

        def to_meta(x):
            if not isinstance(x, torch.Tensor):
                return x
            m = on_meta(x)
            recorder.alias(m, x)
            return m

        # The recorder is the top dispatch mode: the fake tensors, made without it, go below.
        with _pop_mode_temporarily() as top:
            if top is not recorder:
                raise RuntimeError("internal error: the recorder is not the top dispatch mode")
            fake_args, fake_kwargs = pytree.tree_map(to_fake, (args, kwargs))
            recorder.meta = False
            try:
                with fake_mode, recorder:
                    out = func(*fake_args, **fake_kwargs)
            finally:
                recorder.meta = True
            return pytree.tree_map(to_meta, out)


def _is_stand_in(x: Any, device: torch.device) -> bool:
    if isinstance(x, str):
        try:
            x = torch.device(x)
        except RuntimeError:
            return False
    return isinstance(x, torch.device) and x.type == device.type and (
        x.index is None or device.index is None or x.index == device.index)
