"""DGCNN for point clouds, written the way the paper's model is built: EdgeConv blocks (k nearest
neighbours by topk over pairwise distances, a gather of neighbour features by those
data-dependent indices, [x_j - x_i, x_i], conv + BN + LeakyReLU, max over neighbours), the concat
of all EdgeConv outputs, a 1x1 conv, global max + avg pooling and an MLP head."""

from __future__ import annotations

import torch
from torch import nn

from helpers import prune_and_check
from nets import randomize_norms


def knn(x: torch.Tensor, k: int) -> torch.Tensor:
    inner = -2 * torch.matmul(x.transpose(2, 1), x)
    xx = torch.sum(x**2, dim=1, keepdim=True)
    return (-xx - inner - xx.transpose(2, 1)).topk(k=k, dim=-1)[1]  # [B, N, k]


def edge_features(x: torch.Tensor, k: int) -> torch.Tensor:
    b, c, n = x.shape
    idx = (knn(x, k) + torch.arange(b, device=x.device).view(-1, 1, 1) * n).view(-1)
    x = x.transpose(2, 1).contiguous()  # [B, N, C]
    neighbours = x.view(b * n, -1)[idx, :].view(b, n, k, c)  # indexes points, not channels
    centre = x.view(b, n, 1, c).repeat(1, 1, k, 1)
    return torch.cat((neighbours - centre, centre), dim=3).permute(0, 3, 1, 2).contiguous()


class EdgeConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(2 * c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        y = nn.functional.leaky_relu(self.bn(self.conv(edge_features(x, self.k))), 0.2)
        return y.max(dim=-1)[0]


class DGCNN(nn.Module):
    def __init__(self, k: int = 5, classes: int = 4):
        super().__init__()
        self.edge = nn.ModuleList([EdgeConv(3, 16, k), EdgeConv(16, 16, k), EdgeConv(16, 32, k)])
        self.fuse = nn.Sequential(
            nn.Conv1d(64, 48, 1, bias=False), nn.BatchNorm1d(48), nn.LeakyReLU(0.2)
        )
        self.head = nn.Sequential(
            nn.Linear(96, 32, bias=False),
            nn.BatchNorm1d(32),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.5),
            nn.Linear(32, classes),
        )

    def forward(self, points):  # [B, 3, N]
        features = []
        x = points
        for block in self.edge:
            x = block(x)
            features.append(x)
        x = self.fuse(torch.cat(features, dim=1))
        b = x.shape[0]
        pooled = torch.cat(
            [
                nn.functional.adaptive_max_pool1d(x, 1).view(b, -1),
                nn.functional.adaptive_avg_pool1d(x, 1).view(b, -1),
            ],
            dim=1,
        )
        return self.head(pooled)


def test_dgcnn_prunes_under_the_oracle():
    torch.manual_seed(0)
    model = randomize_norms(DGCNN()).double().eval()
    g = torch.Generator().manual_seed(1)
    points = torch.randn(2, 3, 24, dtype=torch.float64, generator=g)
    pruned, result = prune_and_check(model, points, ratio=0.5)
    widths = [block.conv.out_channels for block in pruned.edge]
    # the concat of every EdgeConv output makes their channels one group: half of it goes
    assert sum(widths) == 32 and all(w > 0 for w in widths)
    # each EdgeConv reads [x_j - x_i, x_i]: a pruned channel c removes columns c and C + c
    assert pruned.edge[1].conv.in_channels == 2 * widths[0]
    assert pruned.fuse[0].in_channels == sum(widths) and pruned.head[0].in_features == 2 * 24
    assert "edge.0.conv.weight" in result.plan and 1 not in result.plan["edge.0.conv.weight"]
