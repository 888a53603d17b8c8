"""Graph networks from torch_geometric: GAT/GATv2 (heads x channels, attention vectors, concat
or mean of heads, residual), GCN, GraphSAGE, with the message passing's gathers and scatters
over nodes and edges. Node classifiers on a synthetic graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import prune_and_check

pyg = pytest.importorskip("torch_geometric.nn")

G = torch.Generator().manual_seed(0)
N, E = 30, 120
X = torch.randn(N, 12, dtype=torch.float64, generator=G)
EDGES = torch.randint(0, N, (2, E), generator=G)


class GAT(nn.Module):
    """3 GAT layers: 4 heads concatenated, 4 heads concatenated, 1 head to the classes."""

    def __init__(self):
        super().__init__()
        self.c1 = pyg.GATConv(12, 8, heads=4)
        self.c2 = pyg.GATConv(32, 8, heads=4)
        self.c3 = pyg.GATConv(32, 5, heads=1)

    def forward(self, x, edge_index):
        x = nn.functional.elu(self.c1(x, edge_index))
        x = nn.functional.elu(self.c2(x, edge_index))
        return self.c3(x, edge_index)


def test_three_layer_gat_node_classifier():
    torch.manual_seed(0)
    model = GAT().double().eval()
    pruned, result = prune_and_check(model, (X, EDGES), ratio=0.5)
    for conv in (pruned.c1, pruned.c2):
        heads, channels = conv.heads, conv.out_channels
        assert heads * channels < 32
        assert conv.att_src.shape == (1, heads, channels) == conv.att_dst.shape
        assert conv.lin.weight.shape[0] == heads * channels == conv.bias.shape[0]
    assert pruned.c2.lin.weight.shape[1] == pruned.c1.heads * pruned.c1.out_channels
    assert pruned(X, EDGES).shape == (N, 5)


def test_gatv2_residual_and_mean_of_heads():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = pyg.GATv2Conv(12, 6, heads=2, residual=True)
            self.c2 = pyg.GATv2Conv(12, 6, heads=3, concat=False)
            self.out = nn.Linear(6, 4)

        def forward(self, x, edge_index):
            return self.out(torch.relu(self.c2(torch.relu(self.c1(x, edge_index)), edge_index)))

    torch.manual_seed(0)
    # Heads averaged (concat=False) change the mean's divisor when pruned, so the oracle does
    # not apply to that layer; parity, bit-exact kept weights and the forward do.
    pruned, _ = prune_and_check(Net().double().eval(), (X, EDGES), ratio=0.5, oracle=False)
    assert pruned.c1.res.weight.shape[0] == pruned.c1.heads * pruned.c1.out_channels
    assert pruned(X, EDGES).shape == (N, 4)


def test_gcn_and_sage():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = pyg.GCNConv(12, 16), pyg.SAGEConv(16, 16)
            self.c3 = pyg.GCNConv(16, 3)

        def forward(self, x, edge_index):
            x = torch.relu(self.c1(x, edge_index))
            return self.c3(torch.relu(self.c2(x, edge_index)), edge_index)

    torch.manual_seed(0)
    pruned, _ = prune_and_check(Net().double().eval(), (X, EDGES), ratio=0.5)
    assert pruned.c1.lin.weight.shape == (8, 12)
    assert pruned.c2.lin_l.weight.shape == (8, 8) == pruned.c2.lin_r.weight.shape
