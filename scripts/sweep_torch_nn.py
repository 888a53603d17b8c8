"""Prune every layer type of torch.nn (with its constructor options), each in a tiny net whose
"in" layer and head make the layer's input and output widths prunable, with random weights.

    .venv/bin/python scripts/sweep_torch_nn.py [--workers 1] [--timeout 120] [--cases Conv2d,GLU]
                                               [--fresh] [--out sweep_torch_nn.json]

The full sweep, from the repository root (362 cases, 3 to 5 minutes on one busy core; here
with the venv of torch 2.15):

    PYTHONPATH=. .venv-2.15.0/bin/python scripts/sweep_torch_nn.py --workers 1 \
        --out /tmp/nn_sweep.json

Each case is a net in float64, seeded: an "in" layer (``x -> Linear(8, C)`` on vectors and
tokens, ``Conv1d/2d/3d(3, C, 3)`` on sequences, 8x8 images and 5x5x5 volumes, the layer itself
where it takes ids), the layer, then a Linear head over its flattened output (or over its last
dim), C = 12. A layer that takes several inputs gets one "in" layer per input (Bilinear, the
key and value of MultiheadAttention, the memory of a decoder, the two sides of a distance or a
loss); a loss or a distance is the net's output. Names: the torch.nn class, then the options
(``Conv2d.groups4``, ``BatchNorm2d.train``); the nets are in eval mode unless the name says
``train``.

Each case runs in a process of its own: a server per worker (``--serve``) imports torch and
depgraph_ext once, prunes a tiny net to load the rest, and forks a child per case (one thread;
the child is killed after ``--timeout`` seconds); ``--fresh`` starts a new interpreter per case
instead (``--child NAME``, as the other sweeps do). In the child:
  build    the case's model and inputs, one forward (which materialises lazy modules)
  exact    dx.prune(copy, inputs, ratio=0.5, exact_only=True): the kept slices bit-identical to
           the original's, the scatter-back oracle to 1e-7, the pruned forward's output shapes
  default  dx.prune(copy, inputs, ratio=0.5): does the pruned model run, shapes kept
  verify   dx.prune(copy, inputs, ratio=0.5, verify=True): its outcome (a VerificationError
           saying that groups claimed exact are not is a failure; one saying that the exact
           groups do not run without the function-changing ones they split is a refusal)
Every prune that succeeds must also keep its slices bit-identical (checked before the pruned
model runs: a forward in train mode updates BatchNorm's running statistics) and leave each
torch.nn module's width attributes (in_features, out_channels, num_features, normalized_shape,
embed_dim, hidden_size, ...) saying what its weights' shapes say. After an error the model must
be as it was (the same tensor objects, the same values, the same plain attributes). Warnings are
recorded by category and first line. Writes one JSON record per case (``--out``), prints a line
per case, then the counts: torch.nn classes found and those with a case, built, pruned, oracle
holds, refusals grouped by reason, failures (what looks like a bug of the library).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from functools import partial

try:
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
except ImportError as error:
    sys.exit(f"sweep_torch_nn.py needs torch ({error})")

import sweep_layers as snap  # noqa: E402  (after torch: its own import needs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = "SWEEP_NN_RECORD "  # the line of a child (or a server) that carries a JSON record
STEPS = {"exact": {"exact_only": True}, "default": {}, "verify": {"verify": True}}
TOLERANCE = 1e-7

# ---- the inputs and the nets ----------------------------------------------------------------

B, L, C, D, H, OUT, V = 2, 6, 12, 8, 8, 5, 20  # batch, length, widths, head width, vocabulary
HEADS = 2  # attention heads (an even number: nn.MultiheadAttention's fused path needs one)


def _data() -> dict:
    """Every input a case may take, float64, from one seed."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g)

    ids = torch.randint(1, V, (B, L), generator=g)
    ids[1, -2:] = 0  # padding at the end of the second sequence
    pad_mask = torch.zeros(B, L, dtype=torch.bool)
    pad_mask[1, -2:] = True
    return {
        "vec": randn(B, 8),
        "seq": randn(B, 3, 12),
        "img": randn(B, 3, 8, 8),
        "vol": randn(B, 3, 5, 5, 5),
        "tok": randn(B, L, 8),
        "tok2": randn(B, 4, 8),
        "ids": ids,
        "flat_ids": ids.reshape(-1),
        "offsets": torch.tensor([0, 5]),  # two bags of the flat ids, of 5 and 7
        "bag_weights": randn(B, L).abs(),
        "pad_mask": pad_mask,
        "lengths": torch.tensor([L, L - 2]),
        "labels": torch.randint(0, C, (B,), generator=g),  # classes among the C channels
        "classes": torch.randint(0, 10, (B,), generator=g),  # classes among 10 outputs
        "signs": torch.tensor([1.0, -1.0], dtype=torch.float64),
        "targets": torch.randint(1, 5, (B, 3), generator=g),  # CTC targets
        "target_lengths": torch.tensor([3, 2]),
        "input_lengths": torch.tensor([L, L - 1]),
        "fractional_2d": torch.rand(B, C, 2, dtype=torch.float64, generator=g),
        "fractional_3d": torch.rand(B, C, 3, dtype=torch.float64, generator=g),
    }


DATA = _data()

# the "in" layer of each kind of input: it makes the width the layer under test reads
PRE = {
    "vec": lambda w: nn.Linear(8, w),
    "tok": lambda w: nn.Linear(8, w),
    "tok2": lambda w: nn.Linear(8, w),
    "seq": lambda w: nn.Conv1d(3, w, 3, padding=1),
    "img": lambda w: nn.Conv2d(3, w, 3, padding=1),
    "vol": lambda w: nn.Conv3d(3, w, 3, padding=1),
}


def first(layer, hs, xs):
    """The default call: layer(*branches), its first output where it returns a tuple."""
    out = layer(*hs)
    return out[0] if isinstance(out, tuple) else out


class Head(nn.Module):
    """Linear(width, OUT) over the flattened features (``flat``) or over the last dim."""

    def __init__(self, width: int, flat: bool):
        super().__init__()
        self.flat, self.linear = flat, nn.Linear(width, OUT)

    def forward(self, h):
        return self.linear(h.flatten(1) if self.flat else h)


class Net(nn.Module):
    """Branches ("in" layers, branch i reading input ``reads[i]``) -> ``call(layer, branches,
    inputs)`` -> head (none: the call's result is the output)."""

    def __init__(self, pre, reads, layer, call=first):
        super().__init__()
        self.pre, self.reads, self.layer, self.call = nn.ModuleList(pre), reads, layer, call
        self.head = None

    def forward(self, *xs):
        hs = [p(xs[i]) for p, i in zip(self.pre, self.reads)]
        h = self.call(self.layer, hs, xs)
        return h if self.head is None else self.head(h)


def case(branches, make, call=first, head="flat", extra=(), train=False):
    """A builder: Net(one "in" layer per branch, make(), call) on the inputs the branches and
    ``extra`` name, with a head found by one forward. ``branches``: a kind of input, or a list
    of (kind, width); width None: the input itself. ``head``: "flat", "last" or None."""
    if isinstance(branches, str):
        branches = [(branches, C)]
    names = list(dict.fromkeys(kind for kind, _ in branches)) + list(extra)

    def build():
        pre = [nn.Identity() if w is None else PRE[kind](w) for kind, w in branches]
        reads = [names.index(kind) for kind, _ in branches]
        model = Net(pre, reads, make(), call).double()
        xs = tuple(DATA[n] for n in names)
        if head is not None:
            with torch.no_grad():
                h = model(*xs)
            model.head = Head(h[0].numel() if head == "flat" else h.shape[-1], head == "flat")
            model.head.double()
        return model, xs

    build.train = train
    return build


def on(kind, make, **options):
    """case() with one branch of width C."""
    return case(kind, make, **options)


def two(kind, make, call=first, width=C, **options):
    """case() with two branches of one kind and width (a distance, a loss)."""
    return case([(kind, width), (kind, width)], make, call, **options)


def seq_first(layer, hs, xs):
    """The layer on (length, batch, features), its output back to batch first."""
    out = layer(*(h.transpose(0, 1) for h in hs))
    return (out[0] if isinstance(out, tuple) else out).transpose(0, 1)


class Input(int):
    """An argument of a call that is the net's input of this index."""


def attend(weights=False, seq_first=False, residual=False, **kwargs):
    """MultiheadAttention(query, key, value, **kwargs): key and value the query's branch where
    the case has no branch for them (the same tensor: self-attention); its output (``weights``:
    the output and the weights; ``residual``: the output plus the query). ``seq_first``:
    (length, batch, features) in and out."""

    def call(m, hs, xs):
        if seq_first:
            hs = [h.transpose(0, 1) for h in hs]
        q = hs[0]
        k = hs[1] if len(hs) > 1 else q
        v = hs[2] if len(hs) > 2 else k
        extra = {key: xs[a] if isinstance(a, Input) else a for key, a in kwargs.items()}
        out, w = m(q, k, v, **extra)
        out = out + q if residual else out
        out = out.transpose(0, 1) if seq_first else out
        return (out, w) if weights else out

    return call


def causal(n: int) -> torch.Tensor:
    return torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)


def unroll(cell, hs, xs):
    """A recurrent cell over the tokens, its state carried; the stacked hidden states."""
    h, state, outs = hs[0], None, []
    for t in range(h.shape[1]):
        state = cell(h[:, t], state)
        outs.append(state[0] if isinstance(state, tuple) else state)
    return torch.stack(outs, 1)


class PoolUnpool(nn.Module):
    """MaxPool(return_indices=True), then MaxUnpool of its indices."""

    def __init__(self, pool, unpool, output_size=False):
        super().__init__()
        self.pool, self.unpool, self.output_size = pool, unpool, output_size

    def forward(self, h):
        out, indices = self.pool(h)
        return self.unpool(out, indices, output_size=h.shape if self.output_size else None)


class FoldNet(nn.Module):
    """Conv2d -> Unfold(2) -> Linear over each patch's C*4 features -> Fold -> Conv2d head."""

    def __init__(self, stride=2):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.unfold = nn.Unfold(2, stride=stride)
        self.mix = nn.Linear(C * 4, D * 4)
        self.fold = nn.Fold(8, 2, stride=stride)
        self.out = nn.Conv2d(D, OUT, 1)

    def forward(self, x):
        patches = self.unfold(self.conv(x))
        return self.out(self.fold(self.mix(patches.transpose(1, 2)).transpose(1, 2)))


class Scaled(nn.Module):
    """A plain Module with a Parameter of its own: h * scale + shift (containers: a
    ParameterList or a ParameterDict holds them)."""

    def __init__(self, holder=None):
        super().__init__()
        self.holder = holder
        if holder is None:
            self.scale, self.shift = nn.Parameter(torch.randn(C)), nn.Parameter(torch.randn(C))
        elif holder == "list":
            self.params = nn.ParameterList([torch.randn(C), torch.randn(C)])
        else:
            self.params = nn.ParameterDict({"scale": torch.randn(C), "shift": torch.randn(C)})

    def forward(self, h):
        if self.holder is None:
            return h * self.scale + self.shift
        if self.holder == "list":
            return h * self.params[0] + self.params[1]
        return h * self.params["scale"] + self.params["shift"]


class Stack(nn.Module):
    """Linear layers held by a ModuleList or a ModuleDict, ReLU between them."""

    def __init__(self, holder):
        super().__init__()
        layers = [nn.Linear(C, D), nn.Linear(D, C)]
        self.layers = (
            nn.ModuleList(layers)
            if holder == "list"
            else nn.ModuleDict({"a": layers[0], "b": layers[1]})
        )

    def forward(self, h):
        for layer in (
            self.layers if isinstance(self.layers, nn.ModuleList) else self.layers.values()
        ):
            h = torch.relu(layer(h))
        return h


def loss(make, prepare=None, extra=(), kind="vec", branches=2, width=C):
    """A loss between branches (each Linear(8, width) of the vectors); ``prepare`` maps the
    branches (and the extra inputs) to the loss's arguments. The loss is the net's output."""

    def call(m, hs, xs):
        return m(*(prepare(hs, xs) if prepare else hs))

    return case([(kind, width)] * branches, make, call, head=None, extra=extra)


# ---- the cases --------------------------------------------------------------------------------

DIMS = {1: "seq", 2: "img", 3: "vol"}


def _linear() -> dict:
    return {
        "Linear": on("vec", lambda: nn.Linear(C, D)),
        "Linear.no_bias": on("vec", lambda: nn.Linear(C, D, bias=False)),
        "Linear.tokens": on("tok", lambda: nn.Linear(C, D), head="last"),
        "LazyLinear": on("vec", lambda: nn.LazyLinear(D)),
        "Bilinear": case([("vec", C), ("vec", D)], lambda: nn.Bilinear(C, D, 10)),
        "Bilinear.no_bias": case([("vec", C), ("vec", D)], lambda: nn.Bilinear(C, D, 10, False)),
        "Bilinear.tokens": case(
            [("tok", C), ("tok", D)], lambda: nn.Bilinear(C, D, 10), head="last"
        ),
        "Identity": on("vec", nn.Identity),
        "Module": on("vec", Scaled),
        "Sequential": on("vec", lambda: nn.Sequential(nn.Linear(C, D), nn.ReLU(), nn.Linear(D, C))),
        "ModuleList": on("vec", lambda: Stack("list")),
        "ModuleDict": on("vec", lambda: Stack("dict")),
        "ParameterList": on("vec", lambda: Scaled("list")),
        "ParameterDict": on("vec", lambda: Scaled("dict")),
    }


def _convs() -> dict:
    cases = {}
    for d, kind in DIMS.items():
        conv, transposed = getattr(nn, f"Conv{d}d"), getattr(nn, f"ConvTranspose{d}d")
        name, tname = f"Conv{d}d", f"ConvTranspose{d}d"
        cases |= {
            name: on(kind, partial(conv, C, D, 3)),
            f"{name}.groups4": on(kind, partial(conv, C, D, 3, groups=4)),
            f"{name}.depthwise": on(kind, partial(conv, C, 2 * C, 3, groups=C)),
            f"{name}.dilation2": on(kind, partial(conv, C, D, 3, dilation=2, padding=2)),
            f"{name}.stride2": on(kind, partial(conv, C, D, 3, stride=2, padding=1)),
            f"{name}.same": on(kind, partial(conv, C, D, 3, padding="same", bias=False)),
            f"{name}.reflect": on(kind, partial(conv, C, D, 3, padding=1, padding_mode="reflect")),
            f"{name}.replicate": on(
                kind, partial(conv, C, D, 3, padding=1, padding_mode="replicate")
            ),
            f"{name}.circular": on(
                kind, partial(conv, C, D, 3, padding=1, padding_mode="circular", groups=2)
            ),
            tname: on(kind, partial(transposed, C, D, 3)),
            f"{tname}.groups4": on(kind, partial(transposed, C, D, 3, groups=4)),
            f"{tname}.depthwise": on(kind, partial(transposed, C, C, 3, groups=C)),
            f"{tname}.output_padding": on(
                kind, partial(transposed, C, D, 3, stride=2, padding=1, output_padding=1)
            ),
            f"{tname}.dilation2": on(kind, partial(transposed, C, D, 3, dilation=2, bias=False)),
            f"LazyConv{d}d": on(kind, partial(getattr(nn, f"LazyConv{d}d"), D, 3)),
            f"LazyConvTranspose{d}d": on(
                kind, partial(getattr(nn, f"LazyConvTranspose{d}d"), D, 2)
            ),
        }
    return cases


def _norms() -> dict:
    cases = {
        "BatchNorm1d": on("vec", lambda: nn.BatchNorm1d(C)),
        "BatchNorm1d.train": on("vec", lambda: nn.BatchNorm1d(C), train=True),
        "BatchNorm1d.sequence": on("seq", lambda: nn.BatchNorm1d(C)),
        "BatchNorm1d.sequence_train": on("seq", lambda: nn.BatchNorm1d(C), train=True),
        "BatchNorm1d.no_running_stats": on(
            "vec", lambda: nn.BatchNorm1d(C, track_running_stats=False)
        ),
        "BatchNorm1d.no_affine": on("vec", lambda: nn.BatchNorm1d(C, affine=False)),
        "BatchNorm1d.momentum_none_train": on(
            "vec", lambda: nn.BatchNorm1d(C, momentum=None), train=True
        ),
        "BatchNorm2d": on("img", lambda: nn.BatchNorm2d(C)),
        "BatchNorm2d.train": on("img", lambda: nn.BatchNorm2d(C), train=True),
        "BatchNorm2d.no_running_stats": on(
            "img", lambda: nn.BatchNorm2d(C, track_running_stats=False)
        ),
        "BatchNorm2d.no_running_stats_train": on(
            "img", lambda: nn.BatchNorm2d(C, track_running_stats=False), train=True
        ),
        "BatchNorm2d.no_affine": on("img", lambda: nn.BatchNorm2d(C, affine=False)),
        "BatchNorm3d": on("vol", lambda: nn.BatchNorm3d(C)),
        "BatchNorm3d.train": on("vol", lambda: nn.BatchNorm3d(C), train=True),
        "LazyBatchNorm1d": on("seq", nn.LazyBatchNorm1d),
        "LazyBatchNorm2d": on("img", nn.LazyBatchNorm2d),
        "LazyBatchNorm3d": on("vol", nn.LazyBatchNorm3d),
        "SyncBatchNorm": on("img", lambda: nn.SyncBatchNorm(C)),
        "InstanceNorm1d": on("seq", lambda: nn.InstanceNorm1d(C)),
        "InstanceNorm1d.affine": on("seq", lambda: nn.InstanceNorm1d(C, affine=True)),
        "InstanceNorm1d.running_stats": on(
            "seq", lambda: nn.InstanceNorm1d(C, affine=True, track_running_stats=True)
        ),
        "InstanceNorm1d.running_stats_train": on(
            "seq", lambda: nn.InstanceNorm1d(C, track_running_stats=True), train=True
        ),
        "InstanceNorm2d": on("img", lambda: nn.InstanceNorm2d(C)),
        "InstanceNorm2d.affine": on("img", lambda: nn.InstanceNorm2d(C, affine=True)),
        "InstanceNorm2d.running_stats": on(
            "img", lambda: nn.InstanceNorm2d(C, affine=True, track_running_stats=True)
        ),
        "InstanceNorm3d.affine": on("vol", lambda: nn.InstanceNorm3d(C, affine=True)),
        "LazyInstanceNorm1d": on("seq", lambda: nn.LazyInstanceNorm1d(affine=True)),
        "LazyInstanceNorm2d": on("img", lambda: nn.LazyInstanceNorm2d(affine=True)),
        "LazyInstanceNorm3d": on("vol", lambda: nn.LazyInstanceNorm3d(affine=True)),
        "GroupNorm": on("img", lambda: nn.GroupNorm(4, C)),
        "GroupNorm.one_group": on("img", lambda: nn.GroupNorm(1, C)),
        "GroupNorm.per_channel": on("img", lambda: nn.GroupNorm(C, C)),
        "GroupNorm.no_affine": on("seq", lambda: nn.GroupNorm(3, C, affine=False)),
        "LayerNorm": on("tok", lambda: nn.LayerNorm(C), head="last"),
        "LayerNorm.no_affine": on(
            "tok", lambda: nn.LayerNorm(C, elementwise_affine=False), head="last"
        ),
        "LayerNorm.no_bias": on("tok", lambda: nn.LayerNorm(C, bias=False), head="last"),
        "LayerNorm.chw": on("img", lambda: nn.LayerNorm([C, 8, 8])),
        "LayerNorm.hw": on("img", lambda: nn.LayerNorm([8, 8])),  # per channel: exact
        "RMSNorm": on("tok", lambda: nn.RMSNorm(C), head="last"),
        "RMSNorm.eps": on("tok", lambda: nn.RMSNorm(C, eps=1e-5), head="last"),
        "RMSNorm.no_affine": on(
            "tok", lambda: nn.RMSNorm(C, elementwise_affine=False), head="last"
        ),
        "RMSNorm.hw": on("img", lambda: nn.RMSNorm([8, 8])),  # per channel: exact
        "LocalResponseNorm": on("img", lambda: nn.LocalResponseNorm(3)),
        "LocalResponseNorm.sequence": on("seq", lambda: nn.LocalResponseNorm(2, k=2.0)),
        "CrossMapLRN2d": on("img", lambda: nn.CrossMapLRN2d(3)),
    }
    return cases


ELEMENTWISE = {
    "ReLU": nn.ReLU,
    "ReLU.inplace": partial(nn.ReLU, inplace=True),
    "RReLU": nn.RReLU,  # eval: a fixed slope
    "Hardtanh": partial(nn.Hardtanh, -0.5, 0.5),
    "Hardtanh.inplace": partial(nn.Hardtanh, inplace=True),
    "ReLU6": nn.ReLU6,
    "Sigmoid": nn.Sigmoid,
    "Hardsigmoid": nn.Hardsigmoid,
    "Tanh": nn.Tanh,
    "SiLU": nn.SiLU,
    "SiLU.inplace": partial(nn.SiLU, inplace=True),
    "Mish": nn.Mish,
    "Hardswish": nn.Hardswish,
    "ELU": partial(nn.ELU, alpha=0.5),
    "ELU.inplace": partial(nn.ELU, inplace=True),
    "CELU": partial(nn.CELU, alpha=2.0),
    "SELU": nn.SELU,
    "GELU": nn.GELU,
    "GELU.tanh": partial(nn.GELU, approximate="tanh"),
    "Hardshrink": partial(nn.Hardshrink, 0.3),
    "LeakyReLU": partial(nn.LeakyReLU, 0.2),
    "LeakyReLU.inplace": partial(nn.LeakyReLU, 0.2, inplace=True),
    "LogSigmoid": nn.LogSigmoid,
    "Softplus": partial(nn.Softplus, beta=2.0, threshold=1.0),
    "Softshrink": partial(nn.Softshrink, 0.3),
    "Softsign": nn.Softsign,
    "Tanhshrink": nn.Tanhshrink,
    "Threshold": partial(nn.Threshold, 0.1, 20.0),
    "Threshold.inplace": partial(nn.Threshold, 0.1, -1.0, inplace=True),
}


def _activations() -> dict:
    cases = {name: on("img", make) for name, make in ELEMENTWISE.items()}
    cases |= {
        "PReLU": on("img", lambda: nn.PReLU(C)),
        "PReLU.one": on("img", lambda: nn.PReLU()),
        "PReLU.vector": on("vec", lambda: nn.PReLU(C)),
        "PReLU.sequence": on("seq", lambda: nn.PReLU(C)),
        "GLU": on("vec", lambda: nn.GLU(dim=1)),
        "GLU.channels": on("img", lambda: nn.GLU(dim=1)),
        "GLU.width": on("img", lambda: nn.GLU(dim=-1)),
        "GLU.tokens": on("tok", nn.GLU, head="last"),
        "Softmax2d": on("img", nn.Softmax2d),
    }
    for name in ("Softmax", "LogSoftmax", "Softmin"):
        make = getattr(nn, name)
        cases |= {
            f"{name}.channels": on("img", partial(make, dim=1)),
            f"{name}.width": on("img", partial(make, dim=-1)),
            f"{name}.features": on("tok", partial(make, dim=-1), head="last"),
            f"{name}.tokens": on("tok", partial(make, dim=1), head="last"),
        }
    return cases


def _attention() -> dict:
    mha = partial(nn.MultiheadAttention, C, HEADS, batch_first=True)
    mha3 = partial(nn.MultiheadAttention, C, 3)  # odd: never on the fused path
    kv = [("tok", C), ("tok2", 10), ("tok2", 6)]  # query, key and value of their own widths
    return {
        "MultiheadAttention": on("tok", mha, call=attend(), head="last"),
        "MultiheadAttention.odd_heads": on(
            "tok", partial(mha3, batch_first=True), call=attend(need_weights=False), head="last"
        ),
        "MultiheadAttention.odd_heads_residual": on(
            "tok",
            partial(mha3, batch_first=True),
            call=attend(need_weights=False, residual=True),
            head="last",
        ),
        "MultiheadAttention.residual": on(
            "tok", mha, call=attend(residual=True, need_weights=False), head="last"
        ),
        "MultiheadAttention.residual_weights": on(
            "tok", mha, call=attend(residual=True), head="last"
        ),
        "MultiheadAttention.residual_seq_first": on(
            "tok",
            partial(nn.MultiheadAttention, C, HEADS),
            call=attend(residual=True, seq_first=True),
            head="last",
        ),
        "MultiheadAttention.seq_first": on(
            "tok",
            partial(nn.MultiheadAttention, C, HEADS),
            call=attend(seq_first=True),
            head="last",
        ),
        "MultiheadAttention.cross": case(
            [("tok", C), ("tok2", C)], mha, call=attend(), head="last"
        ),
        "MultiheadAttention.kdim_vdim": case(
            kv, partial(mha, kdim=10, vdim=6), call=attend(), head="last"
        ),
        "MultiheadAttention.kdim_vdim_seq_first": case(
            kv,
            partial(nn.MultiheadAttention, C, HEADS, kdim=10, vdim=6),
            attend(seq_first=True),
            head="last",
        ),
        "MultiheadAttention.bias_kv": on(
            "tok", partial(mha, add_bias_kv=True), call=attend(), head="last"
        ),
        "MultiheadAttention.zero_attn": on(
            "tok", partial(mha, add_zero_attn=True), call=attend(), head="last"
        ),
        "MultiheadAttention.bias_kv_zero_attn_kdim": case(
            kv,
            partial(mha, add_bias_kv=True, add_zero_attn=True, kdim=10, vdim=6),
            call=attend(),
            head="last",
        ),
        "MultiheadAttention.no_bias": on(
            "tok", partial(mha, bias=False), call=attend(), head="last"
        ),
        "MultiheadAttention.no_weights": on(
            "tok", mha, call=attend(need_weights=False), head="last"
        ),
        "MultiheadAttention.dropout": on(
            "tok", partial(mha, dropout=0.2), call=attend(need_weights=False), head="last"
        ),
        "MultiheadAttention.causal": on(
            "tok", mha, call=attend(attn_mask=causal(L), is_causal=True), head="last"
        ),
        "MultiheadAttention.key_padding_mask": on(
            "tok", mha, call=attend(key_padding_mask=Input(1)), extra=["pad_mask"], head="last"
        ),
        # the output and the attention weights averaged over the heads / per head
        "MultiheadAttention.weights_out": on("tok", mha, call=attend(weights=True), head=None),
        "MultiheadAttention.head_weights_out": on(
            "tok", mha, call=attend(weights=True, average_attn_weights=False), head=None
        ),
    }


def _dropout() -> dict:
    return {
        "Dropout": on("vec", lambda: nn.Dropout(0.5)),
        "Dropout1d": on("seq", lambda: nn.Dropout1d(0.5)),
        "Dropout2d": on("img", lambda: nn.Dropout2d(0.5)),
        "Dropout3d": on("vol", lambda: nn.Dropout3d(0.5)),
        "AlphaDropout": on("vec", lambda: nn.AlphaDropout(0.5)),
        "FeatureAlphaDropout": on("img", lambda: nn.FeatureAlphaDropout(0.5)),
    }


def _pooling() -> dict:
    cases = {}
    for d, kind in DIMS.items():
        cases |= {
            f"MaxPool{d}d": on(kind, partial(getattr(nn, f"MaxPool{d}d"), 2)),
            f"AvgPool{d}d": on(kind, partial(getattr(nn, f"AvgPool{d}d"), 2)),
            f"LPPool{d}d": on(kind, partial(getattr(nn, f"LPPool{d}d"), 2, 2)),
            f"AdaptiveAvgPool{d}d": on(kind, partial(getattr(nn, f"AdaptiveAvgPool{d}d"), 3)),
            f"AdaptiveMaxPool{d}d": on(kind, partial(getattr(nn, f"AdaptiveMaxPool{d}d"), 3)),
            f"MaxUnpool{d}d": on(
                kind,
                lambda d=d: PoolUnpool(
                    getattr(nn, f"MaxPool{d}d")(2, return_indices=True),
                    getattr(nn, f"MaxUnpool{d}d")(2),
                    output_size=True,
                ),
            ),
        }
    cases |= {
        "MaxPool2d.padding_ceil": on(
            "img", lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        ),
        "MaxPool2d.dilation": on("img", lambda: nn.MaxPool2d(2, dilation=2)),
        "MaxPool2d.indices_out": on(
            "img",
            lambda: nn.MaxPool2d(2, return_indices=True),
            call=lambda m, hs, xs: m(hs[0]),
            head=None,
        ),
        "AvgPool2d.no_pad_count": on(
            "img", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        ),
        "AvgPool2d.divisor": on("img", lambda: nn.AvgPool2d(2, divisor_override=3)),
        "AvgPool2d.ceil": on("img", lambda: nn.AvgPool2d(3, stride=2, ceil_mode=True)),
        "LPPool2d.p1": on("img", lambda: nn.LPPool2d(1, 2)),
        "LPPool2d.ceil": on("img", lambda: nn.LPPool2d(2, 3, stride=2, ceil_mode=True)),
        "AdaptiveAvgPool2d.rect": on("img", lambda: nn.AdaptiveAvgPool2d((3, None))),
        "AdaptiveMaxPool2d.indices": on(
            "img", lambda: nn.AdaptiveMaxPool2d((3, 2), return_indices=True)
        ),
        "AdaptiveMaxPool2d.indices_out": on(
            "img",
            lambda: nn.AdaptiveMaxPool2d(3, return_indices=True),
            call=lambda m, hs, xs: m(hs[0]),
            head=None,
        ),
        "FractionalMaxPool2d": on(
            "img",
            lambda: nn.FractionalMaxPool2d(2, output_size=4, _random_samples=DATA["fractional_2d"]),
        ),
        "FractionalMaxPool2d.ratio": on(
            "img",
            lambda: nn.FractionalMaxPool2d(
                3, output_ratio=0.5, _random_samples=DATA["fractional_2d"]
            ),
        ),
        "FractionalMaxPool2d.random": on("img", lambda: nn.FractionalMaxPool2d(2, output_size=4)),
        "FractionalMaxPool3d": on(
            "vol",
            lambda: nn.FractionalMaxPool3d(2, output_size=3, _random_samples=DATA["fractional_3d"]),
        ),
        "MaxUnpool2d.no_output_size": on(
            "img",
            lambda: PoolUnpool(nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)),
        ),
    }
    return cases


def _padding() -> dict:
    cases = {}
    for d, kind in DIMS.items():
        pad = (1, 2) * d
        for name, make in (
            (f"ReflectionPad{d}d", lambda d=d, pad=pad: getattr(nn, f"ReflectionPad{d}d")(pad)),
            (f"ReplicationPad{d}d", lambda d=d, pad=pad: getattr(nn, f"ReplicationPad{d}d")(pad)),
            (f"ZeroPad{d}d", lambda d=d, pad=pad: getattr(nn, f"ZeroPad{d}d")(pad)),
            (f"ConstantPad{d}d", lambda d=d, pad=pad: getattr(nn, f"ConstantPad{d}d")(pad, 0.5)),
            (f"CircularPad{d}d", lambda d=d, pad=pad: getattr(nn, f"CircularPad{d}d")(pad)),
        ):
            cases[name] = on(kind, make)
    # a pad one dim more than the layer's: on a batched input it reaches the channel dim
    cases |= {
        "ConstantPad2d.channels": on("seq", lambda: nn.ConstantPad2d((0, 0, 1, 2), 0.5)),
        "ZeroPad3d.channels": on("img", lambda: nn.ZeroPad3d((0, 0, 0, 0, 2, 1))),
        "ConstantPad1d.last_dim": on("tok", lambda: nn.ConstantPad1d((1, 2), 0.5), head="last"),
        "ReflectionPad2d.channels": on("seq", lambda: nn.ReflectionPad2d((0, 0, 1, 2))),
        "ReplicationPad2d.channels": on("seq", lambda: nn.ReplicationPad2d((0, 0, 2, 1))),
        "CircularPad2d.channels": on("seq", lambda: nn.CircularPad2d((0, 0, 1, 2))),
        "ZeroPad2d.negative": on("img", lambda: nn.ZeroPad2d((-1, 1, 0, -2))),
    }
    return cases


def _resampling() -> dict:
    return {
        "Upsample": on("img", lambda: nn.Upsample(scale_factor=2)),
        "Upsample.bilinear": on("img", lambda: nn.Upsample(scale_factor=2, mode="bilinear")),
        "Upsample.bilinear_corners": on(
            "img", lambda: nn.Upsample(size=(11, 5), mode="bilinear", align_corners=True)
        ),
        "Upsample.bicubic": on("img", lambda: nn.Upsample(scale_factor=1.5, mode="bicubic")),
        "Upsample.nearest_exact": on(
            "img", lambda: nn.Upsample(scale_factor=1.5, mode="nearest-exact")
        ),
        "Upsample.recompute_scale": on(
            "img",
            lambda: nn.Upsample(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
        ),
        "Upsample.area": on("img", lambda: nn.Upsample(size=5, mode="area")),
        "Upsample.linear": on("seq", lambda: nn.Upsample(scale_factor=2, mode="linear")),
        "Upsample.trilinear": on("vol", lambda: nn.Upsample(scale_factor=2, mode="trilinear")),
        "Upsample.nearest3d": on("vol", lambda: nn.Upsample(size=(3, 6, 7))),
        "UpsamplingNearest2d": on("img", lambda: nn.UpsamplingNearest2d(scale_factor=2)),
        "UpsamplingBilinear2d": on("img", lambda: nn.UpsamplingBilinear2d(scale_factor=2)),
        "PixelShuffle": on("img", lambda: nn.PixelShuffle(2)),
        "PixelUnshuffle": on("img", lambda: nn.PixelUnshuffle(2)),
        "PixelShuffle.then_conv": on(
            "img", lambda: nn.Sequential(nn.PixelShuffle(2), nn.Conv2d(C // 4, D, 3))
        ),
        "ChannelShuffle": on("img", lambda: nn.ChannelShuffle(3)),
        "ChannelShuffle.four": on("img", lambda: nn.ChannelShuffle(4)),
        "Flatten": on("img", nn.Flatten),
        "Flatten.spatial": on("img", lambda: nn.Flatten(2)),
        "Flatten.channels_depth": on("vol", lambda: nn.Flatten(1, 2)),
        "Unflatten": on("vec", lambda: nn.Unflatten(1, (3, 4))),
        "Unflatten.inferred": on("vec", lambda: nn.Unflatten(1, (4, -1))),
        "Unflatten.width": on("img", lambda: nn.Unflatten(-1, (2, 4))),
        "Unflatten.conv": on(
            "vec", lambda: nn.Sequential(nn.Unflatten(1, (C // 4, 4)), nn.Conv1d(C // 4, D, 3))
        ),
        "Unfold": on("img", lambda: nn.Unfold(2, stride=2)),
        "Unfold.overlapping": on("img", lambda: nn.Unfold(3, padding=1, dilation=1)),
        "Unfold.dilation": on("img", lambda: nn.Unfold(2, dilation=2, stride=2)),
        "Fold": lambda: (FoldNet(), (DATA["img"],)),
        "Fold.overlapping": lambda: (FoldNet(stride=1), (DATA["img"],)),
    }


def _embedding() -> dict:
    ids = [("ids", None)]
    bag = [("flat_ids", None)]
    return {
        "Embedding": case(ids, lambda: nn.Embedding(V, C), head="last"),
        "Embedding.padding_idx": case(ids, lambda: nn.Embedding(V, C, padding_idx=0)),
        "Embedding.max_norm": case(ids, lambda: nn.Embedding(V, C, max_norm=1.0), head="last"),
        "Embedding.scale_grad_by_freq": case(
            ids, lambda: nn.Embedding(V, C, scale_grad_by_freq=True), head="last"
        ),
        "Embedding.sparse": case(ids, lambda: nn.Embedding(V, C, sparse=True), head="last"),
        "Embedding.from_pretrained": case(
            ids, lambda: nn.Embedding.from_pretrained(torch.randn(V, C)), head="last"
        ),
        "EmbeddingBag": case(ids, lambda: nn.EmbeddingBag(V, C)),
        "EmbeddingBag.sum": case(ids, lambda: nn.EmbeddingBag(V, C, mode="sum")),
        "EmbeddingBag.max": case(ids, lambda: nn.EmbeddingBag(V, C, mode="max")),
        "EmbeddingBag.padding_idx": case(ids, lambda: nn.EmbeddingBag(V, C, padding_idx=0)),
        "EmbeddingBag.per_sample_weights": case(
            ids,
            lambda: nn.EmbeddingBag(V, C, mode="sum"),
            call=lambda m, hs, xs: m(hs[0], per_sample_weights=xs[1]),
            extra=["bag_weights"],
        ),
        "EmbeddingBag.offsets": case(
            bag,
            lambda: nn.EmbeddingBag(V, C, mode="mean"),
            call=lambda m, hs, xs: m(hs[0], xs[1]),
            extra=["offsets"],
        ),
        "EmbeddingBag.offsets_max_last": case(
            bag,
            lambda: nn.EmbeddingBag(V, C, mode="max", include_last_offset=True),
            call=lambda m, hs, xs: m(hs[0], torch.cat([xs[1], xs[1].new_tensor([B * L])])),
            extra=["offsets"],
        ),
        "EmbeddingBag.max_norm": case(ids, lambda: nn.EmbeddingBag(V, C, max_norm=1.0)),
    }


def _lstm_state(m, hs, xs):
    """LSTM(tokens, (h0, c0)), the initial states from the vectors' branches."""
    return m(hs[0], (hs[1].unsqueeze(0), hs[2].unsqueeze(0)))[0]


def _packed(m, hs, xs):
    packed = pack_padded_sequence(hs[0], xs[1], batch_first=True)
    out, _ = m(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=L)[0]


def _final_state(m, hs, xs):
    out = m(hs[0])[1]
    out = out[0] if isinstance(out, tuple) else out  # an LSTM's h_n
    return out.transpose(0, 1)


def _recurrent() -> dict:
    rnn = partial(nn.RNN, C, H, batch_first=True)
    lstm = partial(nn.LSTM, C, H, batch_first=True)
    gru = partial(nn.GRU, C, H, batch_first=True)
    tok = {"head": "last"}
    return {
        "RNN": on("tok", rnn, **tok),
        "RNN.relu": on("tok", partial(rnn, nonlinearity="relu"), **tok),
        "RNN.two_layers": on("tok", partial(rnn, num_layers=2), **tok),
        "RNN.bidirectional": on("tok", partial(rnn, bidirectional=True), **tok),
        "RNN.seq_first_no_bias": on(
            "tok", partial(nn.RNN, C, H, bias=False), call=seq_first, **tok
        ),
        "RNN.final_state": on("tok", partial(rnn, num_layers=2), call=_final_state),
        "LSTM": on("tok", lstm, **tok),
        "LSTM.two_layers_bidirectional": on(
            "tok", partial(lstm, num_layers=2, bidirectional=True), **tok
        ),
        "LSTM.proj_size": on("tok", partial(lstm, proj_size=4), **tok),
        "LSTM.proj_size_two_layers_bidirectional": on(
            "tok", partial(lstm, proj_size=4, num_layers=2, bidirectional=True), **tok
        ),
        "LSTM.seq_first": on("tok", partial(nn.LSTM, C, H), call=seq_first, **tok),
        "LSTM.dropout": on("tok", partial(lstm, num_layers=2, dropout=0.3), **tok),
        "LSTM.initial_state": case(
            [("tok", C), ("vec", H), ("vec", H)], lstm, call=_lstm_state, **tok
        ),
        "LSTM.final_state": on("tok", partial(lstm, num_layers=2), call=_final_state),
        "LSTM.packed": on("tok", lstm, call=_packed, extra=["lengths"], **tok),
        "GRU": on("tok", gru, **tok),
        "GRU.two_layers_bidirectional": on(
            "tok", partial(gru, num_layers=2, bidirectional=True), **tok
        ),
        "GRU.seq_first": on("tok", partial(nn.GRU, C, H), call=seq_first, **tok),
        "GRU.packed": on("tok", partial(gru, bidirectional=True), call=_packed, extra=["lengths"]),
        "RNNCell": on("tok", lambda: nn.RNNCell(C, H), call=unroll, **tok),
        "RNNCell.relu_no_bias": on(
            "tok", lambda: nn.RNNCell(C, H, bias=False, nonlinearity="relu"), call=unroll, **tok
        ),
        "LSTMCell": on("tok", lambda: nn.LSTMCell(C, H), call=unroll, **tok),
        "GRUCell": on("tok", lambda: nn.GRUCell(C, H), call=unroll, **tok),
        # one step from no state: the state is zeros of hidden_size, made by the module
        "RNNCell.one_step": on("vec", lambda: nn.RNNCell(C, H)),
        "LSTMCell.one_step": on("vec", lambda: nn.LSTMCell(C, H)),
        "GRUCell.one_step": on("vec", lambda: nn.GRUCell(C, H)),
    }


def _transformers() -> dict:
    enc = partial(nn.TransformerEncoderLayer, C, HEADS, 16, batch_first=True)
    dec = partial(nn.TransformerDecoderLayer, C, HEADS, 16, batch_first=True)
    memory = [("tok", C), ("tok2", C)]
    tok = {"head": "last"}

    def with_mask(m, hs, xs):
        return m(hs[0], src_key_padding_mask=xs[1])

    def decode(m, hs, xs):
        return m(hs[0], hs[1])

    def decode_causal(m, hs, xs):
        return m(hs[0], hs[1], tgt_mask=causal(L), tgt_is_causal=True)

    def translate(m, hs, xs):
        return m(hs[1], hs[0], tgt_mask=causal(L), tgt_is_causal=True)

    return {
        "TransformerEncoderLayer": on("tok", enc, **tok),
        "TransformerEncoderLayer.odd_heads": on(
            "tok", partial(nn.TransformerEncoderLayer, C, 3, 16, batch_first=True), **tok
        ),
        "TransformerEncoderLayer.norm_first": on("tok", partial(enc, norm_first=True), **tok),
        "TransformerEncoderLayer.gelu": on("tok", partial(enc, activation="gelu"), **tok),
        "TransformerEncoderLayer.callable_activation": on(
            "tok", partial(enc, activation=nn.functional.silu, norm_first=True), **tok
        ),
        "TransformerEncoderLayer.seq_first": on(
            "tok", partial(nn.TransformerEncoderLayer, C, HEADS, 16), call=seq_first, **tok
        ),
        "TransformerEncoderLayer.no_bias": on("tok", partial(enc, bias=False), **tok),
        "TransformerEncoderLayer.causal": on(
            "tok", enc, call=lambda m, hs, xs: m(hs[0], causal(L), is_causal=True), **tok
        ),
        "TransformerEncoderLayer.padding_mask": on(
            "tok", enc, call=with_mask, extra=["pad_mask"], **tok
        ),
        "TransformerDecoderLayer": case(memory, dec, call=decode, **tok),
        "TransformerDecoderLayer.norm_first_gelu": case(
            memory, partial(dec, norm_first=True, activation="gelu"), call=decode, **tok
        ),
        "TransformerDecoderLayer.causal": case(memory, dec, call=decode_causal, **tok),
        "TransformerEncoder": on(
            "tok", lambda: nn.TransformerEncoder(enc(), 2, norm=nn.LayerNorm(C)), **tok
        ),
        "TransformerEncoder.nested_padding": on(
            "tok",
            lambda: nn.TransformerEncoder(enc(), 2, norm=nn.LayerNorm(C)),
            call=with_mask,
            extra=["pad_mask"],
            **tok,
        ),
        "TransformerEncoder.no_nested": on(
            "tok",
            lambda: nn.TransformerEncoder(enc(), 2, enable_nested_tensor=False),
            call=with_mask,
            extra=["pad_mask"],
            **tok,
        ),
        "TransformerDecoder": case(
            memory,
            lambda: nn.TransformerDecoder(dec(norm_first=True), 2, norm=nn.LayerNorm(C)),
            call=decode,
            **tok,
        ),
        "Transformer": case(
            memory,
            lambda: nn.Transformer(C, HEADS, 1, 1, 16, batch_first=True),
            call=translate,
            **tok,
        ),
        "Transformer.norm_first_gelu": case(
            memory,
            lambda: nn.Transformer(
                C, HEADS, 2, 1, 16, batch_first=True, norm_first=True, activation="gelu"
            ),
            call=translate,
            **tok,
        ),
    }


def _distances_and_heads() -> dict:
    asm = partial(nn.AdaptiveLogSoftmaxWithLoss, C, 10, cutoffs=[4, 8], div_value=2.0)
    return {
        "CosineSimilarity": two("vec", lambda: nn.CosineSimilarity(dim=1), head=None),
        "CosineSimilarity.channels": two("img", lambda: nn.CosineSimilarity(dim=1)),
        "PairwiseDistance": two("vec", nn.PairwiseDistance, head=None),
        "PairwiseDistance.p1": two("vec", lambda: nn.PairwiseDistance(p=1.0), head=None),
        "PairwiseDistance.p1_eps": two(
            "vec", lambda: nn.PairwiseDistance(p=1.0, eps=1e-3), head=None
        ),
        "PairwiseDistance.keepdim": two(
            "vec", lambda: nn.PairwiseDistance(keepdim=True), head="last"
        ),
        "AdaptiveLogSoftmaxWithLoss.log_prob": on(
            "vec", asm, call=lambda m, hs, xs: m.log_prob(hs[0]), head=None
        ),
        "AdaptiveLogSoftmaxWithLoss.head_bias": on(
            "vec",
            partial(asm, head_bias=True),
            call=lambda m, hs, xs: m.log_prob(hs[0]),
            head=None,
        ),
        "AdaptiveLogSoftmaxWithLoss.forward": on(
            "vec",
            asm,
            call=lambda m, hs, xs: tuple(m(hs[0], xs[1])),
            extra=["classes"],
            head=None,
        ),
        "AdaptiveLogSoftmaxWithLoss.predict": on(
            "vec", asm, call=lambda m, hs, xs: m.predict(hs[0]), head=None
        ),
    }


def _sigmoid_target(hs, xs):
    return hs[0], torch.sigmoid(hs[1])


def _losses() -> dict:
    """Losses between branches of width C (the hidden width, prunable): the sum over the
    features of what each feature contributes; mean: divided by their number."""
    s = {"reduction": "sum"}
    cases = {
        "MSELoss": loss(nn.MSELoss),
        "MSELoss.sum": loss(partial(nn.MSELoss, **s)),
        "L1Loss.sum": loss(partial(nn.L1Loss, **s)),
        "SmoothL1Loss.sum": loss(partial(nn.SmoothL1Loss, beta=0.5, **s)),
        "HuberLoss.sum": loss(partial(nn.HuberLoss, delta=0.5, **s)),
        "KLDivLoss.sum_log_target": loss(partial(nn.KLDivLoss, log_target=True, **s)),
        "KLDivLoss.batchmean": loss(
            partial(nn.KLDivLoss, reduction="batchmean"),
            lambda hs, xs: (hs[0], torch.exp(hs[1])),
        ),
        "BCEWithLogitsLoss.sum": loss(partial(nn.BCEWithLogitsLoss, **s), _sigmoid_target),
        "BCELoss.sum": loss(
            partial(nn.BCELoss, **s), lambda hs, xs: (torch.sigmoid(hs[0]), torch.sigmoid(hs[1]))
        ),
        "SoftMarginLoss.sum": loss(
            partial(nn.SoftMarginLoss, **s), lambda hs, xs: (hs[0], torch.sign(hs[1]))
        ),
        "PoissonNLLLoss.sum": loss(
            partial(nn.PoissonNLLLoss, **s), lambda hs, xs: (hs[0], hs[1].abs())
        ),
        "GaussianNLLLoss.sum": loss(
            partial(nn.GaussianNLLLoss, **s),
            lambda hs, xs: (hs[0], hs[1], nn.functional.softplus(hs[2])),
            branches=3,
        ),
        "HingeEmbeddingLoss.sum": loss(
            partial(nn.HingeEmbeddingLoss, margin=0.5, **s),
            lambda hs, xs: (hs[0], torch.sign(hs[1])),
        ),
        "MarginRankingLoss.sum": loss(
            partial(nn.MarginRankingLoss, margin=0.5, **s),
            lambda hs, xs: (hs[0], hs[1], torch.ones_like(hs[0])),
        ),
        "CosineEmbeddingLoss": loss(
            nn.CosineEmbeddingLoss, lambda hs, xs: (hs[0], hs[1], xs[1]), extra=["signs"]
        ),
        "TripletMarginLoss.sum": loss(partial(nn.TripletMarginLoss, **s), branches=3),
        "TripletMarginWithDistanceLoss": loss(
            partial(
                nn.TripletMarginWithDistanceLoss,
                distance_function=lambda a, b: 1 - nn.functional.cosine_similarity(a, b),
            ),
            branches=3,
        ),
        "MultiLabelSoftMarginLoss.sum": loss(
            partial(nn.MultiLabelSoftMarginLoss, **s), _sigmoid_target
        ),
        # the channels are classes the targets name
        "CrossEntropyLoss": loss(
            nn.CrossEntropyLoss, lambda hs, xs: (hs[0], xs[1]), ["labels"], branches=1
        ),
        "CrossEntropyLoss.probabilities": loss(
            partial(nn.CrossEntropyLoss, label_smoothing=0.1),
            lambda hs, xs: (hs[0], torch.softmax(hs[1], 1)),
        ),
        "NLLLoss.sum": loss(
            partial(nn.NLLLoss, **s), lambda hs, xs: (hs[0], xs[1]), ["labels"], branches=1
        ),
        "NLLLoss2d": loss(
            partial(nn.NLLLoss2d, reduction="sum"),
            lambda hs, xs: (hs[0], xs[1].view(B, 1, 1).expand(B, 8, 8)),
            ["labels"],
            kind="img",
            branches=1,
        ),
        "MultiMarginLoss.sum": loss(
            partial(nn.MultiMarginLoss, **s), lambda hs, xs: (hs[0], xs[1]), ["labels"], branches=1
        ),
        "MultiLabelMarginLoss.sum": loss(
            partial(nn.MultiLabelMarginLoss, **s),
            lambda hs, xs: (
                hs[0],
                torch.cat([xs[1][:, None], -torch.ones_like(hs[0][:, 1:]).long()], 1),
            ),
            ["labels"],
            branches=1,
        ),
        "CTCLoss": loss(
            partial(nn.CTCLoss, reduction="sum"),
            lambda hs, xs: (hs[0].log_softmax(-1).transpose(0, 1), xs[1], xs[2], xs[3]),
            ["targets", "input_lengths", "target_lengths"],
            kind="tok",
            branches=1,
        ),
    }
    if hasattr(nn, "LinearCrossEntropyLoss"):  # (torch 2.15 on)
        cases["LinearCrossEntropyLoss"] = loss(
            partial(nn.LinearCrossEntropyLoss, C, 10, bias=True, reduction="sum"),
            lambda hs, xs: (hs[0], xs[1]),
            ["classes"],
            branches=1,
        )
    return cases


CASES = (
    _linear()
    | _convs()
    | _norms()
    | _activations()
    | _attention()
    | _dropout()
    | _pooling()
    | _padding()
    | _resampling()
    | _embedding()
    | _recurrent()
    | _transformers()
    | _distances_and_heads()
    | _losses()
)
WITHOUT_CASE = {
    "Container": "deprecated, an empty Module",
    "RNNCellBase": "abstract: no forward",
    "RNNBase": "no forward of its own (RNN, LSTM and GRU have theirs)",
    "LinearCrossEntropyOptions": "not a module (LinearCrossEntropyLoss's options)",
}

# ---- one case (in the child process) --------------------------------------------------------


GATES = {"LSTM": 4, "GRU": 3}


def _widths(m: nn.Module) -> dict:
    """What a torch.nn module's width attributes should say, read from its tensors' shapes."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        return {"in_features": w.shape[1], "out_features": w.shape[0]}
    if isinstance(m, nn.Bilinear):
        return {"in1_features": w.shape[1], "in2_features": w.shape[2], "out_features": w.shape[0]}
    if isinstance(m, nn.modules.conv._ConvNd):
        inner, outer = (w.shape[0], w.shape[1] * m.groups)
        if not m.transposed:
            inner, outer = w.shape[1] * m.groups, w.shape[0]
        return {"in_channels": inner, "out_channels": outer}
    if isinstance(m, nn.modules.batchnorm._NormBase):
        t = m.weight if m.weight is not None else m.running_mean
        return {} if t is None else {"num_features": t.shape[0]}
    if isinstance(m, nn.GroupNorm) and m.affine:
        return {"num_channels": w.shape[0]}
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and w is not None:
        return {"normalized_shape": tuple(w.shape)}
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        return {"num_embeddings": w.shape[0], "embedding_dim": w.shape[1]}
    if isinstance(m, nn.PReLU):
        return {"num_parameters": w.numel()}
    if isinstance(m, nn.MultiheadAttention):
        if m._qkv_same_embed_dim:
            e = m.in_proj_weight.shape[0] // 3
            widths = {"embed_dim": m.in_proj_weight.shape[1], "kdim": e, "vdim": e}
        else:
            e = m.q_proj_weight.shape[0]
            widths = {
                "embed_dim": m.q_proj_weight.shape[1],
                "kdim": m.k_proj_weight.shape[1],
                "vdim": m.v_proj_weight.shape[1],
            }
        return widths | {"head_dim": e // m.num_heads, "head_dim * num_heads": e}
    if isinstance(m, nn.RNNBase):
        widths = {
            "input_size": m.weight_ih_l0.shape[1],
            "hidden_size": m.weight_ih_l0.shape[0] // GATES.get(m.mode, 1),
        }
        if m.proj_size:
            widths["proj_size"] = m.weight_hr_l0.shape[0]
        else:
            widths["hidden_size (weight_hh_l0's columns)"] = m.weight_hh_l0.shape[1]
        return widths
    if isinstance(m, nn.RNNCellBase):
        gates = {nn.LSTMCell: 4, nn.GRUCell: 3}.get(type(m), 1)
        return {
            "input_size": m.weight_ih.shape[1],
            "hidden_size": m.weight_ih.shape[0] // gates,
            "hidden_size (weight_hh's columns)": m.weight_hh.shape[1],
        }
    if isinstance(m, nn.AdaptiveLogSoftmaxWithLoss):
        return {"in_features": m.head.weight.shape[1]}
    return {}


def _stale_attributes(model: nn.Module) -> list[str]:
    """Width attributes of torch.nn modules that do not say what the module's tensors say."""
    stale = []
    for name, m in model.named_modules():
        for attr, expected in _widths(m).items():
            if attr == "head_dim * num_heads":
                actual = m.head_dim * m.num_heads
            else:
                actual = getattr(m, attr.split(" ")[0])  # "attr (what else says it)"
            if isinstance(actual, list):
                actual = tuple(actual)
            if actual != expected:
                stale.append(f"{name or 'model'}.{attr} = {actual}, its tensors say {expected}")
    return stale


def _inspect(pruned) -> dict:
    return {"stale_attributes": _stale_attributes(pruned)}


def sweep_case(name: str, emit=lambda record: None) -> dict:
    """Build the case, then its three prunes; ``emit`` gets the record so far before each
    step (``running`` names it), so that a child killed on the way leaves what it did."""
    record: dict = {"case": name}
    torch.manual_seed(0)
    build = CASES[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lazy modules, deprecated classes
            model, example_inputs = build()
        model = model.double().train(getattr(build, "train", False))
        shapes = snap.output_shapes(model, example_inputs)
        from depgraph_ext.testing import outputs_of

        if not all(t.isfinite().all() for t in outputs_of(model, example_inputs, seed=0)):
            raise ValueError("the net's outputs are not all finite")
    except ImportError as e:  # a case needing a package not installed
        return record | {"build": "not built", "reason": snap.short(e)}
    except Exception as e:  # noqa: BLE001
        return record | {"build": "error", "reason": snap.short(e)}
    params = sum(t.numel() for t in model.parameters())
    record.update(
        build="ok",
        model=type(model.layer if isinstance(model, Net) else model).__name__,
        train=model.training,
        params=params,
        shapes=shapes,
    )
    for step in STEPS:
        record["running"] = step
        emit(record)
        record[step] = snap.prune_step(
            model, example_inputs, shapes, step, STEPS, TOLERANCE, _inspect
        )
    del record["running"]
    return record


def child(name: str) -> None:
    """``--child NAME``: the case in this process, its record so far printed at each step."""
    torch.set_num_threads(1)
    snap.stand_ins_if_asked()
    record = sweep_case(name, lambda r: print(RECORD + json.dumps(r), flush=True))
    print(RECORD + json.dumps(record), flush=True)


def _ended(name: str, last: dict | None, how: str, reason: str) -> dict:
    """The record of a child that ended without one: ``how`` "timeout" or "crash"; the step it
    was running gets the outcome, the steps after it "not run"."""
    if last is None or "running" not in last:
        return {"case": name, "build": how, "reason": reason}
    record = dict(last)
    running = record.pop("running")
    steps = list(STEPS)
    record[running] = {"outcome": how, "error": reason}
    for step in steps[steps.index(running) + 1 :]:
        record[step] = {"outcome": "not run"}
    return record


def _last_record(lines) -> dict | None:
    found = None
    for line in lines:
        if line.startswith(RECORD):
            try:
                found = json.loads(line[len(RECORD) :])
            except ValueError:  # a line cut short
                pass
    return found


def _forked(name: str, timeout: float) -> dict:
    """The case in a forked child of this server (killed by SIGALRM after ``timeout``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    log = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(max(1, round(timeout)))
            out = os.fdopen(write_end, "w")

            def emit(record):
                out.write(RECORD + json.dumps(record) + "\n")
                out.flush()

            emit(sweep_case(name, emit))
            out.close()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 70
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        lines = f.read().splitlines()
    _, status = os.waitpid(pid, 0)
    last = _last_record(lines)
    if last is not None and "running" not in last and status == 0:
        return last
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
        return _ended(name, last, "timeout", f"over {timeout:.0f} s")
    log.seek(0)
    tail = " ".join(log.read().decode(errors="replace").strip().splitlines()[-3:])[-600:]
    how = (
        f"signal {os.WTERMSIG(status)}"
        if os.WIFSIGNALED(status)
        else f"exit {os.WEXITSTATUS(status)}"
    )
    return _ended(name, last, "crash", f"{how}: {tail}")


def _warm_up() -> None:
    """One prune of a tiny net, so that what it loads is loaded before the children fork."""
    import depgraph_ext as dx

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dx.prune(model, torch.randn(2, 4, dtype=torch.float64), ratio=0.5, progress=False)


def serve(timeout: float) -> None:
    """``--serve``: a case name per line on stdin, its record on stdout."""
    torch.set_num_threads(1)
    snap.stand_ins_if_asked()
    _warm_up()
    for line in sys.stdin:
        if name := line.strip():
            print(RECORD + json.dumps(_forked(name, timeout)), flush=True)


# ---- the sweep (in the parent) --------------------------------------------------------------


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_fresh(name: str, timeout: float) -> dict:
    """``sweep_torch_nn.py --child NAME`` in a new interpreter."""
    command = [sys.executable, os.path.abspath(__file__), "--child", name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        return _ended(name, _last_record(out.splitlines()), "timeout", f"over {timeout:.0f} s")
    last = _last_record(done.stdout.splitlines())
    if last is not None and "running" not in last:
        return last
    tail = " ".join(done.stderr.strip().splitlines()[-3:])[-600:]
    return _ended(name, last, "crash", f"exit {done.returncode}: {tail}")


class Server:
    """A ``--serve`` process of this script: a name in, a record out; started again after it
    dies or stops answering."""

    def __init__(self, timeout: float):
        self.timeout, self.process, self.lines = timeout, None, None

    def _start(self) -> None:
        command = [sys.executable, os.path.abspath(__file__), "--serve"]
        command += ["--timeout", str(self.timeout)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()

    @staticmethod
    def _read(process, lines) -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    def run(self, name: str) -> dict:
        if self.process is None or self.process.poll() is not None:
            self._start()
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + self.timeout + 90  # the server's start and its warm-up
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.close()
                return {"case": name, "build": "crash", "reason": "the server stopped answering"}
            if line.startswith(RECORD):
                return json.loads(line[len(RECORD) :])

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def _sweep(names: list[str], workers: int, timeout: float, fresh: bool):
    """Yield each case's record as it is done."""
    todo: queue.Queue = queue.Queue()
    for name in names:
        todo.put(name)
    results: queue.Queue = queue.Queue()

    def worker() -> None:
        server = None if fresh else Server(timeout)
        try:
            while True:
                try:
                    name = todo.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                record = run_fresh(name, timeout) if fresh else server.run(name)
                record["wall_seconds"] = round(time.perf_counter() - t0, 1)
                results.put(record)
        finally:
            if server is not None:
                server.close()

    for _ in range(workers):
        threading.Thread(target=worker, daemon=True).start()
    for _ in names:
        yield results.get()


def failures(record: dict) -> list[str]:
    return snap.failures(record, STEPS)


def verdict(record: dict) -> str:
    return snap.verdict(record, STEPS)


def class_of(case_name: str) -> str:
    return case_name.split(".")[0]


def summary(done: dict, seconds: float) -> str:
    classes = list(nn.modules.__all__)
    with_case = {class_of(n) for n in CASES}
    without_case = [c for c in classes if c not in with_case]
    records = list(done.values())
    built = [r for r in records if r["build"] == "ok"]
    lines = [
        f"\n{len(records)} cases in {seconds:.0f} s (torch {torch.__version__})",
        f"classes found: {len(classes)} in torch.nn.modules, "
        f"{len(classes) - len(without_case)} with a case"
        + (
            " (none for "
            + ", ".join(f"{c}: {WITHOUT_CASE[c]}" if c in WITHOUT_CASE else c for c in without_case)
            + ")"
            if without_case
            else ""
        ),
        f"cases: {len(records)} of {len(CASES)}, over {len({class_of(n) for n in done})} classes",
    ]
    lines += snap.outcome_lines(records, STEPS, TOLERANCE, failures)
    exact = [r for r in built if r["exact"]["outcome"] == "pruned"]
    same = [r["case"] for r in exact if r["exact"]["params"][0] == r["exact"]["params"][1]]
    if same:
        lines.append(f"exact_only prunes that removed nothing: {', '.join(same)}")
    return "\n".join(lines)


def main() -> None:
    parser = snap.case_arguments(__doc__, "sweep_torch_nn.json")
    parser.add_argument("--fresh", action="store_true", help="a new interpreter per case")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stand-ins", action="store_true", help=snap.STAND_INS_HELP)
    args = parser.parse_args()
    if args.stand_ins:
        snap.ask_for_stand_ins()
    if args.child:
        return child(args.child)
    if args.serve:
        return serve(args.timeout)
    names = snap.chosen_cases(parser, args.cases, CASES)
    t0 = time.perf_counter()
    records = _sweep(names, args.workers, args.timeout, args.fresh)
    done = snap.collect(records, names, args.out, verdict)
    print(summary(done, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
