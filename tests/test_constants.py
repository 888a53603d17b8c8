"""Constants are inputs: a dim whose values come only from constants (buffers the model computes
from its config, which its state_dict leaves out; tensors from outside the model; what
arange and the like make) is kept like a model input's, though removing it would be the same
as zeroing the weights that read it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from helpers import prune_and_check

F64 = torch.float64


def coordinates(window: int) -> torch.Tensor:
    """Swin v2's table of relative coordinates: [2w-1, 2w-1, 2], log-spaced."""
    r = torch.arange(-(window - 1), window, dtype=F64)
    table = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1) / (window - 1) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


class PositionBias(nn.Module):
    """Attention-like scores plus a bias an MLP computes from a coordinate table."""

    def __init__(self, persistent: bool = False, attribute: bool = False):
        super().__init__()
        self.q, self.out = nn.Linear(6, 16), nn.Linear(9, 3)
        self.mlp = nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 1, bias=False))
        if attribute:  # a plain tensor attribute: a constant from outside the trace
            self.table = coordinates(2)
        else:
            self.register_buffer("table", coordinates(2), persistent=persistent)

    def forward(self, x):  # x [B, 9, 6]
        bias = self.mlp(self.table).view(1, 9)
        scores = self.q(x).sum(-1) + bias  # [B, 9]
        return self.out(scores)


@pytest.mark.parametrize("attribute", [False, True], ids=["buffer", "attribute"])
def test_a_coordinate_table_keeps_both_coordinates(attribute):
    torch.manual_seed(0)
    model = PositionBias(attribute=attribute).double().eval()
    pruned, result = prune_and_check(model, torch.randn(2, 9, 6, dtype=F64), ratio=0.5)
    assert pruned.mlp[0].in_features == 2 and pruned.mlp[0].weight.shape == (6, 2)
    assert pruned.table.shape == (3, 3, 2)  # the table itself untouched
    assert "table" not in result.plan and not result.non_persistent


def test_a_persistent_buffer_is_state_not_a_constant():
    """A buffer the state_dict keeps is the model's state (a trained table, running
    statistics): it prunes like a weight."""
    torch.manual_seed(0)
    model = PositionBias(persistent=True).double().eval()
    pruned, result = prune_and_check(model, torch.randn(2, 9, 6, dtype=F64), ratio=0.5)
    assert pruned.mlp[0].in_features == 1 and "table" in result.plan


class FourierFeatures(nn.Module):
    """Random Fourier features from a fixed frequency table the model computes from a seed in
    its config, and a per-channel offset it computes too (which varies with the channels it is
    added to, so it prunes with them)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("freqs", torch.randn(3, 8, generator=g), persistent=False)
        self.register_buffer("shift", torch.linspace(-1, 1, 10), persistent=False)
        self.fc1, self.fc2 = nn.Linear(16, 10), nn.Linear(10, 2)

    def forward(self, x):  # x [B, 3]
        z = x @ self.freqs
        h = self.fc1(torch.cat([z.sin(), z.cos()], -1)) + self.shift
        return self.fc2(torch.relu(h))


def test_frequency_tables_are_kept_and_a_computed_offset_prunes():
    torch.manual_seed(0)
    model = FourierFeatures().double().eval()
    pruned, result = prune_and_check(model, torch.randn(4, 3, dtype=F64), ratio=0.5)
    assert pruned.freqs.shape == (3, 8) and pruned.fc1.in_features == 16
    assert pruned.fc1.out_features == 5 and pruned.shift.shape == (5,)
    assert set(result.non_persistent) == {"shift"}


def test_swinv2_continuous_position_bias_sees_both_coordinates():
    T = pytest.importorskip("transformers")
    config = T.Swinv2Config(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4
    )
    torch.manual_seed(0)
    model = T.Swinv2ForImageClassification(config).double().eval()
    x = {"pixel_values": torch.randn(1, 3, 32, 32, dtype=F64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.FunctionChangingWarning)
        pruned, result = prune_and_check(model, x, ratio=0.5, oracle=False)
    mlps = [m for n, m in pruned.named_modules() if n.endswith("continuous_position_bias_mlp")]
    assert mlps
    for mlp in mlps:
        assert mlp[0].in_features == 2 and mlp[0].weight.shape[1] == 2
        assert mlp[0].out_features < 512  # its hidden units still prune
    assert not any("relative_coords_table" in n for n in result.plan | result.non_persistent)
    # exact_only: the oracle
    prune_and_check(model, x, ratio=0.5, exact_only=True, rtol=1e-7, atol=1e-7)
