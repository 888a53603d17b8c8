"""Random architectures (hypothesis): stacks of blocks drawn from conv/BN/activations, residual
adds, concats, chunks, grouped and depthwise convs, channel shuffles (with residuals across
them), squeeze-excitation, reshapes, attention over positions (heads split by the tensor's
own width), norms over merged dims, means over channels, depthwise convs whose taps another
op reads; ending in a classifier or a detector's data-dependent end (a threshold that may
leave no candidate, top-k of those left); pruned at random ratios. Every case is exact or
declared: with ``exact_only=True`` it passes the scatter-back oracle, python/native parity and
bit-identical kept weights; by default either the oracle holds or the result names the
function-changing groups it pruned.

    DEPGRAPH_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz.py -q   # longer run
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import depgraph_ext as dx
from depgraph_ext.testing import assert_scatter_back_equal
from helpers import assert_same_state, prune_and_check, state_of
from nets import randomize_norms

EXAMPLES = int(os.environ.get("DEPGRAPH_FUZZ_EXAMPLES", "120"))
ACTIVATIONS = [nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Identity]
# (the same cases in every run, however long they take)
FUZZING = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ConvBN(nn.Module):
    def __init__(self, c_in, c_out, groups=1, act=nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups, bias=False)
        self.bn, self.act = nn.BatchNorm2d(c_out), act()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        self.a, self.b = ConvBN(c, c, act=act), ConvBN(c, c, act=nn.Identity)

    def forward(self, x):
        return x + self.b(self.a(x))


class Concat(nn.Module):
    def __init__(self, c, growth, act):
        super().__init__()
        self.f = ConvBN(c, growth, act=act)

    def forward(self, x):
        return torch.cat([x, self.f(x)], dim=1)


class Chunk(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        self.f = ConvBN(c // 2, c // 2, act=act)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([a, self.f(b)], dim=1)


class Shuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class SE(nn.Module):
    def __init__(self, c, r):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class PositionAttention(nn.Module):
    """Single-head attention over the spatial positions, channels as features."""

    def __init__(self, c, d):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(c, d), nn.Linear(c, d), nn.Linear(c, c)

    def forward(self, x):
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # [n, hw, c]
        a = (self.q(t) @ self.k(t).transpose(1, 2) / 4.0).softmax(-1)
        return x + (a @ self.v(t)).transpose(1, 2).reshape(n, c, h, w)


class ShuffleResidual(nn.Module):
    """A grouped 1x1 conv, a channel shuffle, a depthwise conv, and the block's input added
    back: the residual ties channel i to the shuffled channel i."""

    def __init__(self, c, groups, act):
        super().__init__()
        self.grouped = nn.Conv2d(c, c, 1, groups=groups)
        self.shuffle, self.act = Shuffle(groups), act()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        return self.dw(self.shuffle(self.act(self.grouped(x)))) + x


class MergedNorm(nn.Module):
    """An RMS norm over channels viewed as [C/2, 2] (statistics over merged dims)."""

    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(c))

    def forward(self, x):
        n, c, h, w = x.shape
        y = x.view(n, c // 2, 2, h, w)
        y = y * torch.rsqrt(y.pow(2).mean((1, 2), keepdim=True) + 1e-5)
        return y.reshape(n, c, h, w) * self.gain.view(1, c, 1, 1)


class ChannelCentering(nn.Module):
    """Subtracts the mean over channels (a mean over a pruned dim), then a conv."""

    def __init__(self, c, act):
        super().__init__()
        self.f = ConvBN(c, c, act=act)

    def forward(self, x):
        return self.f(x - x.mean(1, keepdim=True))


class TapReader(nn.Module):
    """A depthwise conv run through a view of its weight (Mamba's causal conv): its taps are
    read by a squeeze and an unsqueeze before the convolution."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, (1, 3), padding=(0, 1), groups=c)

    def forward(self, x):
        w = self.conv.weight.squeeze(2)  # [c, 1, 3]
        return F.conv2d(x, w.unsqueeze(2), self.conv.bias, padding=(0, 1), groups=x.shape[1])


class WidthHeads(nn.Module):
    """Attention over positions with two heads split by the tensor's own width:
    ``view(n, hw, heads, t.shape[-1] // heads)``."""

    def __init__(self, c, d):
        super().__init__()
        self.heads = 2
        self.qkv, self.out = nn.Linear(c, 3 * d), nn.Linear(d, c)

    def forward(self, x):
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).chunk(3, dim=-1)

        def split(z):
            return z.view(n, h * w, self.heads, z.shape[-1] // self.heads).transpose(1, 2)

        a = (split(q) @ split(k).transpose(-1, -2) / 4.0).softmax(-1) @ split(v)
        y = self.out(a.transpose(1, 2).reshape(n, h * w, -1))
        return x + y.transpose(1, 2).reshape(n, c, h, w)


class DetectHead(nn.Module):
    """A detector's end: a score per position, a threshold (which may leave no candidate),
    top-k of the candidates left, their features classified; beside the pooled features'
    classes. Sizes the data decides (how many pass, how many are kept) reach the outputs."""

    def __init__(self, c, threshold, k):
        super().__init__()
        self.score, self.fc, self.cls = nn.Conv2d(c, 1, 1), nn.Linear(c, 3), nn.Linear(c, 2)
        self.threshold, self.k = threshold, k

    def forward(self, x):
        n, c, h, w = x.shape
        scores = self.score(x).flatten()
        features = x.permute(0, 2, 3, 1).reshape(-1, c)
        candidates = torch.where(scores > self.threshold)[0]
        top, idx = scores[candidates].topk(min(self.k, candidates.shape[0]))
        return self.cls(x.mean((2, 3))), top, self.fc(features[candidates[idx]])


@st.composite
def architectures(draw):
    c = draw(st.sampled_from([4, 6, 8, 12]))
    layers: list[nn.Module] = [ConvBN(3, c, act=draw(st.sampled_from(ACTIVATIONS)))]
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(
            st.sampled_from(
                [
                    "residual",
                    "concat",
                    "chunk",
                    "grouped",
                    "depthwise",
                    "shuffle",
                    "se",
                    "attention",
                    "shuffle_residual",
                    "merged_norm",
                    "centering",
                    "taps",
                    "width_heads",
                    "plain",
                ]
            )
        )
        act = draw(st.sampled_from(ACTIVATIONS))
        if kind == "residual":
            layers.append(Residual(c, act))
        elif kind == "concat":
            growth = draw(st.sampled_from([2, 4]))
            layers.append(Concat(c, growth, act))
            c += growth
        elif kind == "chunk" and c % 2 == 0:
            layers.append(Chunk(c, act))
        elif kind == "grouped" and c % 2 == 0:
            out = draw(st.sampled_from([c, 2 * c]))
            layers.append(ConvBN(c, out, groups=2, act=act))
            c = out
        elif kind == "depthwise":
            layers.append(ConvBN(c, c, groups=c, act=act))
        elif kind == "shuffle" and c % 2 == 0:
            layers.append(Shuffle(2))
        elif kind == "se":
            layers.append(SE(c, draw(st.sampled_from([2, 3]))))
        elif kind == "attention":
            layers.append(PositionAttention(c, draw(st.sampled_from([4, 8]))))
        elif kind == "shuffle_residual" and c % 4 == 0:
            layers.append(ShuffleResidual(c, draw(st.sampled_from([2, 4])), act))
        elif kind == "merged_norm" and c % 2 == 0:
            layers.append(MergedNorm(c))
        elif kind == "centering":
            layers.append(ChannelCentering(c, act))
        elif kind == "taps":
            layers.append(TapReader(c))
        elif kind == "width_heads":
            layers.append(WidthHeads(c, draw(st.sampled_from([4, 8]))))
        else:
            out = draw(st.sampled_from([4, 8, 10]))
            layers.append(ConvBN(c, out, act=act))
            c = out
    if draw(st.booleans()):  # a detector's data-dependent end (no candidate, some, all)
        return nn.Sequential(
            *layers, DetectHead(c, draw(st.sampled_from([-1e9, 0.0, 1e9])), draw(st.integers(1, 8)))
        )
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3))
    return nn.Sequential(*layers, head)


@settings(max_examples=EXAMPLES, **FUZZING)
@given(
    model=architectures(),
    ratio=st.sampled_from([0.25, 0.5, 0.75]),
    seed=st.integers(0, 2**16),
    global_pruning=st.booleans(),
)
def test_random_architectures_prune_exactly(model, ratio, seed, global_pruning):
    check_exact_or_declared(model, ratio, seed, global_pruning)


def check_exact_or_declared(model, ratio, seed, global_pruning):
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model = randomize_norms(model, seed).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    before = state_of(model)
    options = dict(ratio=ratio, global_pruning=global_pruning)
    try:  # exact: the oracle, parity, kept weights bit for bit
        prune_and_check(
            model, x, rtol=1e-7, atol=1e-9, require_change=False, exact_only=True, **options
        )
    except dx.NoPrunableGroupsError:
        # e.g. two channel shuffles whose factorisations no pruning can keep: refused whole
        assert_same_state(before, state_of(model))
    # by default: exact, or declared
    pruned = copy.deepcopy(model)
    try:
        result = dx.prune(pruned, x, **options)
    except dx.NoPrunableGroupsError:
        return
    if not result.function_changing:
        assert_scatter_back_equal(model, pruned, result.plan, x, rtol=1e-7, atol=1e-9)


# Blocks that keep their width, for stacks of repeats.
SAME_WIDTH = {
    "residual": lambda c, act: Residual(c, act),
    "depthwise": lambda c, act: ConvBN(c, c, groups=c, act=act),
    "se": lambda c, act: SE(c, 2),
    "attention": lambda c, act: PositionAttention(c, 4),
    "centering": lambda c, act: ChannelCentering(c, act),
    "taps": lambda c, act: TapReader(c),
    "chunk": lambda c, act: Chunk(c, act),
    "merged_norm": lambda c, act: MergedNorm(c),
    "width_heads": lambda c, act: WidthHeads(c, 4),
}
# What may stand between two of them: ops that keep zeros zero, or make them non-zero (a
# replayed block's rules read what made its input non-zero: graph/rule_replay.py).
BETWEEN = [nn.Identity, nn.ReLU, nn.Sigmoid, nn.Tanh]


@st.composite
def repeated_architectures(draw):
    """One kind of block repeated 2-4 times (its repeats replayed from the first's trace and
    rules), other modules drawn between them."""
    c = draw(st.sampled_from([4, 8]))
    kind = draw(st.sampled_from(sorted(SAME_WIDTH)))
    act = draw(st.sampled_from(ACTIVATIONS))
    layers: list[nn.Module] = [ConvBN(3, c, act=draw(st.sampled_from(ACTIVATIONS)))]
    for i in range(draw(st.integers(2, 4))):
        if i:
            layers.append(draw(st.sampled_from(BETWEEN))())
        layers.append(SAME_WIDTH[kind](c, act))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3))
    return nn.Sequential(*layers, head)


@settings(max_examples=max(EXAMPLES // 2, 1), **FUZZING)
@given(
    model=repeated_architectures(),
    ratio=st.sampled_from([0.25, 0.5, 0.75]),
    seed=st.integers(0, 2**16),
    global_pruning=st.booleans(),
)
def test_repeated_blocks_prune_exactly_and_replay_as_traced(model, ratio, seed, global_pruning):
    """Stacks of one block repeated: what the checks above ask, and (``tests/conftest.py``'s
    check mode) every replayed graph the whole trace's, its couplings every op's rule's."""
    check_exact_or_declared(model, ratio, seed, global_pruning)
