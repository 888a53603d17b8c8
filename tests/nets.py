"""Architectures written for the tests (no torchvision here): DenseNet, ResNeXt-style,
Swin- and MaxViT-style nets, mixtures of experts, a Llama as its reference code writes it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(torch.relu(self.norm1(x)))
        return self.conv2(torch.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, layers: int, in_ch: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_ch + i * growth, growth) for i in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.AvgPool2d(2, 2),
        )


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al.): blocks of concatenating layers joined by transitions.
    ``blocks=(6, 12, 24, 16), growth=32, stem=64`` is DenseNet-121."""

    def __init__(
        self, blocks=(6, 12, 24, 16), growth: int = 32, stem: int = 64, num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 7, 2, 3, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, ch = [], stem
        for i, n in enumerate(blocks):
            stages.append(DenseBlock(n, ch, growth))
            ch += n * growth
            if i != len(blocks) - 1:
                stages.append(Transition(ch, ch // 2))
                ch //= 2
        self.features = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(ch)
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.features(self.stem(x))))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


class ResNeXtBlock(nn.Module):
    """Bottleneck with a grouped 3x3 conv (cardinality x width) and a residual add."""

    def __init__(self, ch: int, cardinality: int, width: int, stride: int = 1) -> None:
        super().__init__()
        inner = cardinality * width
        self.conv1 = nn.Conv2d(ch, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + x)


class ResNeXt(nn.Module):
    def __init__(
        self,
        ch: int = 32,
        blocks: int = 3,
        cardinality: int = 8,
        width: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()
        )
        self.blocks = nn.Sequential(*(ResNeXtBlock(ch, cardinality, width) for _ in range(blocks)))
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so the oracle tests see them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


class WindowAttention(nn.Module):
    """Swin-style attention inside windows, the head dim derived from the input's own width
    (``C // num_heads``, as torchvision's shifted_window_attention), with a cyclic shift."""

    def __init__(self, dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias = nn.Parameter(0.02 * torch.randn(heads, window * window, window * window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, W, C]
        b, h, w, c = x.shape
        p = self.window
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
        x = x.view(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, p * p, c)
        qkv = self.qkv(x).reshape(x.size(0), p * p, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1) + self.bias
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(x.size(0), p * p, c)
        x = self.proj(x).view(b, h // p, w // p, p, p, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h, w, c)
        return torch.roll(x, (self.shift, self.shift), (1, 2)) if self.shift else x


class SwinStage(nn.Module):
    """Two Swin blocks (plain and shifted windows) on a patch embedding, 3 heads of 16."""

    def __init__(self, dim: int = 48, heads: int = 3, window: int = 4) -> None:
        super().__init__()
        self.patch, self.patch_norm = nn.Conv2d(3, dim, 4, 4), nn.LayerNorm(dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.attns = nn.ModuleList(WindowAttention(dim, heads, window, s) for s in (0, 2))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(2)
        )
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_norm(self.patch(x).permute(0, 2, 3, 1))
        for i in range(2):
            x = x + self.attns[i](self.norms[2 * i](x))
            x = x + self.mlps[i](self.norms[2 * i + 1](x))
        return self.head(x.mean((1, 2)))


class PartitionAttention(nn.Module):
    """MaxViT-style block or grid attention: the feature map split into partitions of p x p
    positions (block) or into p x p strided grids (grid), heads of a fixed head dim."""

    def __init__(self, dim: int, head_dim: int, p: int, grid: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.p, self.grid = dim // head_dim, head_dim, p, grid
        self.norm, self.qkv, self.merge = (
            nn.LayerNorm(dim),
            nn.Linear(dim, 3 * dim),
            nn.Linear(dim, dim),
        )
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        b, c, h, w = x.shape
        p = self.p
        if self.grid:  # p x p grids of positions h // p apart
            y = x.reshape(b, c, p, h // p, p, w // p).permute(0, 3, 5, 2, 4, 1)
        else:  # p x p blocks of neighbouring positions
            y = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        y = y.reshape(b, -1, p * p, c)
        q, k, v = self.qkv(self.norm(y)).chunk(3, dim=-1)
        shape = (b, y.shape[1], p * p, self.heads, self.head_dim)
        q, k, v = (t.reshape(shape).transpose(2, 3) for t in (q, k, v))
        a = torch.einsum("bghid,bghjd->bghij", q, k * self.head_dim**-0.5).softmax(-1)
        out = torch.einsum("bghij,bghjd->bghid", a, v).transpose(2, 3).reshape(y.shape)
        y = y + self.merge(out)
        y = y + self.mlp(y)
        if self.grid:
            y = y.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 3, 1, 4, 2)
        else:
            y = y.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return y.reshape(b, c, h, w)


class MaxViTStage(nn.Module):
    """A stem, block attention, grid attention and a head."""

    def __init__(self, dim: int = 32, head_dim: int = 8, p: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.block, self.grid = (
            PartitionAttention(dim, head_dim, p, False),
            PartitionAttention(dim, head_dim, p, True),
        )
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.grid(self.block(self.stem(x))).mean((2, 3)))


class RelativeAttention(nn.Module):
    """torchvision's MaxViT attention over partitions ``[B, G, P, D]``: the head count an
    attribute (``dim // head_dim``), q/k/v split off one projection and reshaped by it
    (a copy: the split is not contiguous), a relative position bias table indexed by a
    buffer, and the heads merged back to the input's own width. ``fixed_heads``: the head
    count taken from a tuple of the module's own numbers instead, which no plan sets: a size
    the code fixes (the bare attribute follows the heads a plan keeps)."""

    def __init__(self, dim: int, head_dim: int, p: int, fixed_heads: bool = False) -> None:
        super().__init__()
        self.n_heads, self.head_dim = dim // head_dim, head_dim
        self.fixed_heads, self.layout = fixed_heads, (self.n_heads, head_dim)
        self.to_qkv, self.merge = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(0.02 * torch.randn((2 * p - 1) ** 2, self.n_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij"))
        rel = (coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]).permute(1, 2, 0)
        self.register_buffer("index", ((rel[..., 0] + p - 1) * (2 * p - 1) + rel[..., 1] + p - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p, d = x.shape
        h, dh = self.layout if self.fixed_heads else (self.n_heads, self.head_dim)
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q, k, v = (t.reshape(b, g, p, h, dh).permute(0, 1, 3, 2, 4) for t in (q, k, v))
        dot = torch.einsum("bghid,bghjd->bghij", q * dh**-0.5, k)
        bias = self.table[self.index.reshape(-1)].reshape(p, p, h).permute(2, 0, 1)
        out = torch.einsum("bghij,bghjd->bghid", (dot + bias).softmax(-1), v)
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(b, g, p, d))


class PartitionBlock(nn.Module):
    """Window (p x p neighbours) or grid (p x p positions h // p apart) attention with an MLP,
    on ``[B, C, H, W]``."""

    def __init__(self, dim: int, head_dim: int, p: int, grid: bool, fixed_heads=False) -> None:
        super().__init__()
        self.p, self.grid = p, grid
        self.norm = nn.LayerNorm(dim)
        self.attn = RelativeAttention(dim, head_dim, p, fixed_heads)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.p
        if self.grid:
            y = x.reshape(b, c, p, h // p, p, w // p).permute(0, 3, 5, 2, 4, 1)
        else:
            y = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        y = y.reshape(b, -1, p * p, c)
        y = y + self.attn(self.norm(y))
        y = y + self.mlp(y)
        y = y.reshape(b, h // p, w // p, p, p, c)
        if self.grid:
            y = y.permute(0, 5, 3, 1, 4, 2)
        else:
            y = y.permute(0, 5, 1, 3, 2, 4)
        return y.reshape(b, c, h, w)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expansion, depthwise 3x3 (strided to downsample),
    squeeze-excitation, 1x1 projection; a residual (through a pooled 1x1 when downsampling)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        mid = 4 * c_out
        self.expand = nn.Sequential(nn.BatchNorm2d(c_in), nn.Conv2d(c_in, mid, 1), nn.GELU())
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid), nn.BatchNorm2d(mid), nn.GELU()
        )
        self.squeeze = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(mid, mid // 4, 1),
            nn.SiLU(),
            nn.Conv2d(mid // 4, mid, 1),
            nn.Sigmoid(),
        )
        self.project = nn.Conv2d(mid, c_out, 1)
        self.shortcut = (
            nn.Sequential(nn.AvgPool2d(stride), nn.Conv2d(c_in, c_out, 1))
            if stride > 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.expand(x))
        return self.shortcut(x) + self.project(y * self.squeeze(y))


class MaxViT(nn.Module):
    """torchvision's MaxViT in small: stages of MBConv + window attention + grid attention
    blocks, every attention with a head count attribute and a relative position bias. Its
    attention modules merge their heads back to their input's width, a size a default prune
    learns; with ``fixed_heads`` they fix their head counts too (see RelativeAttention)."""

    def __init__(
        self, dims=(16, 32), depths=(2, 2), head_dim: int = 8, p: int = 2, fixed_heads=False
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 3, 2, 1), nn.BatchNorm2d(dims[0]))
        layers, c_in = [], dims[0]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            for j in range(depth):
                layers += [
                    MBConv(c_in, dim, 2 if i and not j else 1),
                    PartitionBlock(dim, head_dim, p, grid=False, fixed_heads=fixed_heads),
                    PartitionBlock(dim, head_dim, p, grid=True, fixed_heads=fixed_heads),
                ]
                c_in = dim
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


class LoopedExperts(nn.Module):
    """A mixture of experts with one module per expert, run in a loop over experts (the layout
    before fused expert weights): each expert gets the tokens whose top-k chose it."""

    def __init__(self, hidden: int = 16, inner: int = 24, experts: int = 4, top_k: int = 2):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, inner), nn.SiLU(), nn.Linear(inner, hidden))
            for _ in range(experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.gate(x), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            out = out.index_add(0, token, expert(x[token]) * weights[token, slot, None])
        return out


class FusedExperts(nn.Module):
    """The same with every expert's weights in one tensor, gathered by the chosen indices."""

    def __init__(self, hidden: int = 16, inner: int = 24, experts: int = 4, top_k: int = 2):
        super().__init__()
        self.top_k = top_k
        self.num_experts = experts
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.up = nn.Parameter(torch.randn(experts, inner, hidden) / hidden**0.5)
        self.down = nn.Parameter(torch.randn(experts, hidden, inner) / inner**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.gate(x), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        flat = chosen.reshape(-1)
        h = torch.bmm(self.up[flat], x.repeat_interleave(self.top_k, 0).unsqueeze(-1))
        y = torch.bmm(self.down[flat], torch.nn.functional.silu(h)).squeeze(-1)
        return (y * weights.reshape(-1, 1)).view(x.shape[0], self.top_k, -1).sum(1)


class TorchEncoder(nn.Module):
    """A linear layer in, ``nn.TransformerEncoder`` (``layers`` of ``width``, ``heads``, a
    feed-forward of ``ffn``, batch first, no dropout), a linear head of 3; ``forward(x,
    mask=None)``, the mask a padding mask. In eval mode each layer runs its fast path, one
    fused op (on nested tensors where ``nested`` and a mask is given)."""

    def __init__(self, inp=8, width=32, heads=4, ffn=64, layers=2, nested=False):
        super().__init__()
        self.inp = nn.Linear(inp, width)
        layer = nn.TransformerEncoderLayer(width, heads, ffn, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=nested)
        self.out = nn.Linear(width, 3)

    def forward(self, x, mask=None):
        return self.out(self.body(self.inp(x), src_key_padding_mask=mask))


class ReferenceLlama(nn.Module):
    """Llama written as its reference code is, not as transformers writes it: rotary
    embeddings as complex numbers (``view_as_complex`` of pairs, times a complex buffer,
    ``view_as_real``), key/value heads repeated by an ``expand`` to ``self.n_rep`` and a
    reshape, head counts under names of its own (``n_local_heads``, ``n_local_kv_heads``),
    RMSNorm in float, a causal mask built per call. ``forward(tokens)``."""

    def __init__(self, vocab=64, dim=32, layers=2, heads=4, kv_heads=2, hidden=64, max_len=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            _ReferenceBlock(dim, heads, kv_heads, hidden) for _ in range(layers)
        )
        self.norm, self.output = _RMSNorm(dim), nn.Linear(dim, vocab, bias=False)
        half = dim // heads // 2
        freqs = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / half))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), freqs)
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(angles), angles))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.embed(tokens)
        mask = torch.full((n, n), float("-inf"), dtype=h.dtype).triu(1)
        for layer in self.layers:
            h = layer(h, self.freqs_cis[:n], mask)
        return self.output(self.norm(h))


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * (
            self.weight
        )


class _ReferenceAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.n_local_heads, self.n_local_kv_heads = heads, kv_heads
        self.n_rep, self.head_dim = heads // kv_heads, dim // heads
        self.wq = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(heads * self.head_dim, dim, bias=False)

    @staticmethod
    def _rotated(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
        turned = pairs * freqs_cis.view(1, pairs.shape[1], 1, pairs.shape[-1])
        return torch.view_as_real(turned).flatten(3).type_as(x)

    def _repeated(self, x: torch.Tensor) -> torch.Tensor:
        b, n, kv, d = x.shape
        if self.n_rep == 1:
            return x
        return x[:, :, :, None, :].expand(b, n, kv, self.n_rep, d).reshape(b, n, kv * self.n_rep, d)

    def forward(self, x, freqs_cis, mask):
        b, n, _ = x.shape
        q = self.wq(x).view(b, n, self.n_local_heads, self.head_dim)
        k = self.wk(x).view(b, n, self.n_local_kv_heads, self.head_dim)
        v = self.wv(x).view(b, n, self.n_local_kv_heads, self.head_dim)
        q, k = self._rotated(q, freqs_cis), self._rotated(k, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, self._repeated(k), self._repeated(v)))
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim) + mask
        out = (scores.float().softmax(-1).type_as(q) @ v).transpose(1, 2)
        return self.wo(out.contiguous().view(b, n, -1))


class _ReferenceBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.attention = _ReferenceAttention(dim, heads, kv_heads)
        self.w1, self.w2 = nn.Linear(dim, hidden, bias=False), nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.attention_norm, self.ffn_norm = _RMSNorm(dim), _RMSNorm(dim)

    def forward(self, x, freqs_cis, mask):
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask)
        y = self.ffn_norm(h)
        return h + self.w2(F.silu(self.w1(y)) * self.w3(y))
