"""Regressions found by the transformers zoo sweep: a config field the forward reads, a memoised
module output, grid_sample, a data-dependent count, the real trace's error first."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.testing import assert_scatter_back_equal

F64 = torch.float64
transformers = pytest.importorskip("transformers")


class BiasConfig(transformers.PretrainedConfig):
    model_type = "zoo_fix_bias"

    def __init__(self, hidden_size=8, num_attention_heads=4, **kw):
        super().__init__(**kw)
        self.hidden_size, self.num_attention_heads = hidden_size, num_attention_heads


class ReadsConfig(transformers.PreTrainedModel):
    """LayoutLMv3's position bias: divided by sqrt(hidden_size / num_attention_heads) read from
    the config in the forward."""

    config_class = BiasConfig

    def __init__(self, config):
        super().__init__(config)
        h, n = config.hidden_size, config.num_attention_heads
        self.d = h // n
        self.q, self.k, self.v = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.bias = nn.Parameter(torch.randn(n, 1, 1))
        self.out = nn.Linear(h, h)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (f(x).view(b, t, -1, self.d).transpose(1, 2) for f in (self.q, self.k, self.v))
        scale = (self.config.hidden_size / self.config.num_attention_heads) ** 0.5
        w = (q @ k.transpose(-1, -2) * self.d**-0.5 + self.bias / scale).softmax(-1)
        return self.out((w @ v).transpose(1, 2).reshape(b, t, -1))


def test_a_config_field_the_forward_reads_keeps_its_value():
    model = ReadsConfig(BiasConfig()).double().eval()
    x = torch.randn(2, 5, 8, dtype=F64)
    original = copy.deepcopy(model)
    with pytest.warns(dx.ConfigMismatchWarning, match="forward reads it"):
        r = dx.prune(model, x, ratio=0.5, ratios={"hidden": 0})
    assert model.out.in_features < 8
    assert model.config.num_attention_heads == 4
    assert_scatter_back_equal(original, model, r.plan, x)


@functools.lru_cache(maxsize=4)
def _table(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(n, dtype=dtype)[:, None] / n


class Cached(nn.Module):
    def forward(self, x):
        return _table(x.shape[0], x.dtype)


class UsesCache(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.pos = nn.Linear(4, 8), nn.Linear(8, 3), Cached()

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + self.pos(x)


def test_a_memoised_module_output_is_the_same_call():
    """The first trace fills the cache, the plan's check hits it: same module calls."""
    _table.cache_clear()
    model = UsesCache().double().eval()
    x = torch.randn(6, 4, dtype=F64)
    original = copy.deepcopy(model)
    r = dx.prune(model, x, ratio=0.5)
    assert model.fc1.out_features == 4
    assert_scatter_back_equal(original, model, r.plan, x)


class Sampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 2)

    def forward(self, x, grid):
        y = torch.nn.functional.grid_sample(self.conv(x), grid, align_corners=False)
        return self.fc(y.flatten(2).transpose(1, 2))


def test_grid_sample_keeps_channels_prunable():
    model = Sampler().double().eval()
    x, grid = torch.randn(2, 3, 6, 6, dtype=F64), torch.rand(2, 5, 1, 2, dtype=F64) * 2 - 1
    original = copy.deepcopy(model)
    r = dx.prune(model, (x, grid), ratio=0.5)
    assert model.conv.out_channels == 4
    assert_scatter_back_equal(original, model, r.plan, (x, grid))


class Threshold(nn.Module):
    """A data-dependent count (nonzero of a threshold) after prunable channels."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 1)
        self.fc3 = nn.Linear(4, 3)

    def forward(self, x):
        score = self.fc2(torch.relu(self.fc1(x)))[:, 0]
        picked = x[score > 0]
        return self.fc3(picked).sum(0)


def test_a_data_dependent_count_is_not_a_fixed_size():
    model = Threshold().double().eval()
    x = torch.randn(16, 4, dtype=F64)
    r = dx.prune(model, x, ratio=0.5)
    assert model.fc1.out_features == 4
    assert r.params_after < r.params_before


class ScaleConfig(transformers.PretrainedConfig):
    model_type = "zoo_fix_scale"

    def __init__(self, hidden_size=8, intermediate_size=16, **kw):
        super().__init__(**kw)
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size


class ScaledMLP(transformers.PreTrainedModel):
    """Dory's MLP: its gate is scaled by sqrt(hidden_size), a float taken from the config
    when the module is built (an int, the width, is taken too)."""

    config_class = ScaleConfig

    def __init__(self, config):
        super().__init__(config)
        h, m = config.hidden_size, config.intermediate_size
        self.scale, self.width = config.intermediate_size**0.5, m
        self.up, self.down = nn.Linear(h, m), nn.Linear(m, h)

    def forward(self, x):
        return self.down(torch.relu(self.up(x) * self.scale)[..., : self.width])


def test_a_scale_the_config_decided_keeps_its_value():
    model = ScaledMLP(ScaleConfig()).double().eval()
    x = torch.randn(2, 5, 8, dtype=F64)
    original = copy.deepcopy(model)
    r = dx.prune(model, x, ratio=0.5, ratios={"hidden": 0}, exact_only=True, progress=False)
    assert model.config.intermediate_size == 8 and model.width == 8  # a size follows
    assert model.scale == 16**0.5  # a value the forward multiplies by does not
    assert_scatter_back_equal(original, model, r.plan, x)


class SamplesPatches(nn.Module):
    """ViLT: the forward samples which positions it keeps, with torch's RNG."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 3)

    def forward(self, x):
        keep = torch.randperm(x.shape[1])[:3]
        return self.fc2(torch.relu(self.fc1(x[:, keep])))


def test_a_sampling_model_verifies_and_passes_the_oracle():
    model = SamplesPatches().double().eval()
    x = torch.randn(2, 6, 4, dtype=F64)
    original = copy.deepcopy(model)
    r = dx.prune(model, x, ratio=0.5, verify=True, progress=False)  # both forwards sample alike
    assert model.fc1.out_features == 8
    assert_scatter_back_equal(original, model, r.plan, x)
