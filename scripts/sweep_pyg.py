"""Prune every torch_geometric conv layer (and some ready-made models and layer options), each
in a small net on a 20-node graph with random weights.

    .venv/bin/python scripts/sweep_pyg.py [--workers 1] [--timeout 120] [--cases GATConv,models.GCN]
                                          [--out sweep_pyg.json] [--stand-ins]

The full sweep (112 cases, about 12 minutes on one core):

    .venv/bin/python scripts/sweep_pyg.py --workers 1 --out /tmp/pyg_sweep.json

Each case runs in its own child process (``sweep_pyg.py --child NAME``, one thread), in float64:
  build    the case's model and inputs (cases needing torch-sparse, pyg-lib, cugraph-ops or
           dgNN are recorded as not built, with the reason)
  exact    dx.prune(copy, inputs, ratio=0.5, exact_only=True): the kept slices bit-identical to
           the original's, the scatter-back oracle to 1e-7, the pruned forward's output shapes
  default  dx.prune(copy, inputs, ratio=0.5): does the pruned model run, shapes kept
  verify   dx.prune(copy, inputs, ratio=0.5, verify=True): its outcome
After an error the model must be as it was (the same tensor objects, the same values, the same
plain attributes). Warnings are recorded by category and first line. Writes one JSON record per
case (``--out``), prints a line per case, then the counts: conv classes found, built, pruned,
oracle holds, refusals grouped by reason, failures (what looks like a bug of the library).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from functools import partial

try:
    import torch
    import torch_geometric
    import torch_geometric.nn.conv as C
    import torch_geometric.nn.models as M
    from torch import nn
    from torch_geometric.utils import degree
except ImportError as error:
    sys.exit(f"sweep_pyg.py needs torch and torch_geometric ({error})")

import sweep_layers as snap  # noqa: E402  (after torch: its own import needs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = "SWEEP_PYG_RECORD "  # the child's stdout line that carries its JSON record
STEPS = {"exact": {"exact_only": True}, "default": {}, "verify": {"verify": True}}
TOLERANCE = 1e-7

# ---- the graph and the cases ----------------------------------------------------------------

N, E, IN, HID, OUT = 20, 60, 16, 32, 4  # nodes, edges, input width, hidden width, output width


class NotBuilt(Exception):
    """A case that cannot be built; the message says why."""


def _graph() -> dict:
    """Every input a case may take, float64: a graph of N nodes and E edges without self loops,
    edge features (3), edge types (3), positions and normals (3-d), node types (2)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, IN, dtype=torch.float64, generator=g)
    src = torch.randint(0, N, (E,), generator=g)
    edge_index = torch.stack([src, (src + torch.randint(1, N, (E,), generator=g)) % N])
    edge_attr = torch.randn(E, 3, dtype=torch.float64, generator=g)
    edge_type = torch.randint(0, 3, (E,), generator=g)
    pos = torch.randn(N, 3, dtype=torch.float64, generator=g)
    normal = nn.functional.normalize(torch.randn(N, 3, dtype=torch.float64, generator=g), dim=-1)
    node_type = torch.randint(0, 2, (N,), generator=g)
    mesh = torch.Generator().manual_seed(1)
    return {
        "x": x,
        "edge_index": edge_index,
        "edge_attr": edge_attr,
        "edge_pseudo": edge_attr.sigmoid(),  # SplineConv's pseudo-coordinates, in [0, 1]
        "edge_type": edge_type,
        "pos": pos,
        "normal": normal,
        "node_type": node_type,
        "batch": torch.zeros(N, dtype=torch.long),
        # node i is in hyperedge (edge id mod 8): [nodes, hyperedges]
        "hyperedge_index": torch.stack([edge_index[0], torch.arange(E) % 8]),
        "hyperedge_attr": torch.randn(
            8, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
        ),
        # LSTM aggregation needs the edges sorted by destination
        "sorted_edge_index": edge_index[:, torch.argsort(edge_index[1] * N + edge_index[0])],
        # MeshCNNConv: every node (edge of a mesh) has four neighbours
        "mesh_adjacency": torch.stack(
            [torch.arange(N).repeat_interleave(4), torch.randint(0, N, (4 * N,), generator=mesh)]
        ),
    }


G = _graph()
META = (["n"], [("n", "to", "n")])  # heterogeneous layers see one node type and one edge type


def inputs(*names: str) -> tuple:
    return tuple(G[name] for name in names)


def degree_histogram() -> torch.Tensor:
    return torch.bincount(degree(G["edge_index"][1], N, dtype=torch.long))


def mlp(*widths: int) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class TwoLayers(nn.Module):
    """[Linear(IN, width)] -> layer -> ReLU -> layer -> Linear(width, OUT). ``call``: how a layer
    takes its inputs: "graph" layer(h, edge_index, *extra), "points" layer(h, *extra,
    edge_index), "features" layer(h, *extra) (a layer that builds its own graph). A layer that
    returns (features, something) gives its features."""

    def __init__(self, first, second, call="graph", pre=None, width=HID):
        super().__init__()
        self.pre, self.c1, self.c2, self.out = pre, first, second, nn.Linear(width, OUT)
        self.call = call

    def layer(self, conv, h, edge_index, extra):
        if self.call == "graph":
            out = conv(h, edge_index, *extra)
        elif self.call == "points":
            out = conv(h, *extra, edge_index)
        else:
            out = conv(h, *extra)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, x, edge_index, *extra):
        h = x if self.pre is None else self.pre(x)
        h = torch.relu(self.layer(self.c1, h, edge_index, extra))
        return self.out(self.layer(self.c2, h, edge_index, extra))


def two(make, *extra, second=None, call="graph", pre=False, width=HID, edges="edge_index"):
    """A case: TwoLayers(make(IN, width), (second or make)(width, width)) on (x, G[edges],
    *G[extra]). ``pre``: a Linear(IN, width) first, and the first layer made (width, width)
    (layers that keep their input's width)."""

    def build():
        first = make(width if pre else IN, width)
        model = TwoLayers(
            first,
            (second or make)(width, width),
            call,
            nn.Linear(IN, width) if pre else None,
            width,
        )
        return model, inputs("x", edges, *extra)

    return build


class SumOfNeighbours(C.MessagePassing):
    """The abstract base made concrete: a Linear, then the sum of x_j over the edges."""

    def __init__(self, in_channels, out_channels):
        super().__init__(aggr="add")
        self.lin = nn.Linear(in_channels, out_channels)

    def forward(self, x, edge_index):
        return self.propagate(edge_index, x=self.lin(x))

    def message(self, x_j):
        return x_j


class InitialResidualNet(nn.Module):
    """Linear -> layer(h, x0) -> ReLU -> layer(h, x0) -> Linear: GCN2Conv, FAConv."""

    def __init__(self, make):
        super().__init__()
        self.pre, self.c1, self.c2 = nn.Linear(IN, HID), make(), make()
        self.out = nn.Linear(HID, OUT)

    def forward(self, x, edge_index):
        x0 = self.pre(x)
        h = torch.relu(self.c1(x0, x0, edge_index))
        return self.out(self.c2(h, x0, edge_index))


class DNANet(nn.Module):
    """DNAConv attends over the layers so far: (N, layers, width) in."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(IN, HID)
        self.c1, self.c2 = C.DNAConv(HID, heads=2), C.DNAConv(HID, heads=2)
        self.out = nn.Linear(HID, OUT)

    def forward(self, x, edge_index):
        h0 = self.pre(x)
        h1 = torch.relu(self.c1(h0.unsqueeze(1), edge_index))
        return self.out(self.c2(torch.stack([h0, h1], 1), edge_index))


class SignedNet(nn.Module):
    """SignedConv on positive and negative edges; its output is twice its out_channels."""

    def __init__(self):
        super().__init__()
        self.c1 = C.SignedConv(IN, 16, first_aggr=True)
        self.c2 = C.SignedConv(16, 16, first_aggr=False)
        self.out = nn.Linear(32, OUT)

    def forward(self, x, positive_edges, negative_edges):
        h = torch.relu(self.c1(x, positive_edges, negative_edges))
        return self.out(self.c2(h, positive_edges, negative_edges))


class HeteroNet(nn.Module):
    """The homogeneous graph as node type "n" and edge type ("n", "to", "n")."""

    def __init__(self, first, second):
        super().__init__()
        self.c1, self.c2, self.out = first, second, nn.Linear(HID, OUT)

    def forward(self, x, edge_index):
        edges = {META[1][0]: edge_index}
        h = torch.relu(self.c1({"n": x}, edges)["n"])
        return self.out(self.c2({"n": h}, edges)["n"])


def hetero(make, second=None):
    return lambda: (HeteroNet(make(IN, HID), (second or make)(HID, HID)), inputs("x", "edge_index"))


class HyperedgeAttentionNet(nn.Module):
    """HypergraphConv with attention: hyperedge features (projected for the second layer)."""

    def __init__(self):
        super().__init__()
        self.c1 = C.HypergraphConv(IN, 16, use_attention=True, heads=2)
        self.c2 = C.HypergraphConv(HID, 16, use_attention=True, heads=2)
        self.project, self.out = nn.Linear(IN, HID), nn.Linear(HID, OUT)

    def forward(self, x, hyperedge_index, hyperedge_attr):
        h = torch.relu(self.c1(x, hyperedge_index, hyperedge_attr=hyperedge_attr))
        h = self.c2(h, hyperedge_index, hyperedge_attr=self.project(hyperedge_attr))
        return self.out(h)


class EdgeEmbeddingNet(nn.Module):
    """GINEConv without edge_dim: edge features embedded as wide as each layer's input."""

    def __init__(self):
        super().__init__()
        self.e1, self.e2 = nn.Linear(3, IN), nn.Linear(3, HID)
        self.c1, self.c2 = C.GINEConv(mlp(IN, HID, HID)), C.GINEConv(mlp(HID, HID, HID))
        self.out = nn.Linear(HID, OUT)

    def forward(self, x, edge_index, edge_attr):
        h = torch.relu(self.c1(x, edge_index, self.e1(edge_attr)))
        return self.out(self.c2(h, edge_index, self.e2(edge_attr)))


class DeepGCNNet(nn.Module):
    """Linear -> two DeepGCNLayer("res+") of GENConv -> Linear."""

    def __init__(self):
        super().__init__()

        def layer():
            return M.DeepGCNLayer(C.GENConv(HID, HID), nn.LayerNorm(HID), nn.ReLU(), block="res+")

        self.pre, self.l1, self.l2, self.out = (
            nn.Linear(IN, HID),
            layer(),
            layer(),
            nn.Linear(HID, OUT),
        )

    def forward(self, x, edge_index):
        return self.out(self.l2(self.l1(self.pre(x), edge_index), edge_index))


def not_built(reason: str):
    def build():
        raise NotBuilt(reason)

    return build


def sgformer():
    torch.set_default_dtype(torch.float64)  # its forward makes tensors of the default dtype
    return M.SGFormer(IN, HID, OUT), inputs("x", "edge_index", "batch")


HEAT = dict(
    num_node_types=2, num_edge_types=3, edge_type_emb_dim=4, edge_dim=3, edge_attr_emb_dim=4
)
GEN = dict(edge_dim=3, msg_norm=True, learn_t=True, num_layers=2)

# One per class of torch_geometric.nn.conv, by its name: a builder returning (model, inputs).
CONVS = {
    "MessagePassing": two(SumOfNeighbours),
    "SimpleConv": two(lambda i, o: C.SimpleConv(aggr="mean", combine_root="self_loop"), pre=True),
    "GCNConv": two(C.GCNConv),
    "ChebConv": two(partial(C.ChebConv, K=2)),
    "SAGEConv": two(C.SAGEConv),
    "CuGraphSAGEConv": two(C.CuGraphSAGEConv),
    "GraphConv": two(C.GraphConv),
    "GravNetConv": two(
        partial(C.GravNetConv, space_dimensions=4, propagate_dimensions=8, k=4), call="features"
    ),
    "GatedGraphConv": two(lambda i, o: C.GatedGraphConv(o, num_layers=2)),
    "ResGatedGraphConv": two(C.ResGatedGraphConv),
    "GATConv": two(lambda i, o: C.GATConv(i, o // 2, heads=2)),
    "CuGraphGATConv": two(lambda i, o: C.CuGraphGATConv(i, o // 2, heads=2)),
    "FusedGATConv": two(lambda i, o: C.FusedGATConv(i, o // 2, heads=2, add_self_loops=False)),
    "GATv2Conv": two(lambda i, o: C.GATv2Conv(i, o // 2, heads=2)),
    "TransformerConv": two(lambda i, o: C.TransformerConv(i, o // 2, heads=2)),
    "AGNNConv": two(lambda i, o: C.AGNNConv(), pre=True),
    "TAGConv": two(partial(C.TAGConv, K=2)),
    "GINConv": two(lambda i, o: C.GINConv(mlp(i, o, o))),
    "GINEConv": two(lambda i, o: C.GINEConv(mlp(i, o, o), edge_dim=3), "edge_attr"),
    "ARMAConv": two(partial(C.ARMAConv, num_stacks=2, num_layers=2)),
    "SGConv": two(partial(C.SGConv, K=2)),
    "SSGConv": two(partial(C.SSGConv, alpha=0.1, K=2)),
    "APPNP": two(lambda i, o: C.APPNP(K=2, alpha=0.1), pre=True),
    "MFConv": two(partial(C.MFConv, max_degree=6)),
    "RGCNConv": two(partial(C.RGCNConv, num_relations=3), "edge_type"),
    "FastRGCNConv": two(partial(C.FastRGCNConv, num_relations=3), "edge_type"),
    "CuGraphRGCNConv": two(partial(C.CuGraphRGCNConv, num_relations=3), "edge_type"),
    "RGATConv": two(lambda i, o: C.RGATConv(i, o // 2, num_relations=3, heads=2), "edge_type"),
    "SignedConv": lambda: (SignedNet(), (G["x"], G["edge_index"][:, :30], G["edge_index"][:, 30:])),
    "DNAConv": lambda: (DNANet(), inputs("x", "edge_index")),
    "PointNetConv": two(
        lambda i, o: C.PointNetConv(local_nn=mlp(i + 3, o, o), global_nn=mlp(o, o)),
        "pos",
        call="points",
    ),
    "GMMConv": two(partial(C.GMMConv, dim=3, kernel_size=2), "edge_attr"),
    "SplineConv": two(partial(C.SplineConv, dim=3, kernel_size=2), "edge_pseudo"),
    "NNConv": two(lambda i, o: C.NNConv(i, o, nn=mlp(3, 8, i * o)), "edge_attr"),
    "CGConv": two(lambda i, o: C.CGConv(o, dim=3), "edge_attr", pre=True),
    "EdgeConv": two(lambda i, o: C.EdgeConv(mlp(2 * i, o, o))),
    "DynamicEdgeConv": two(lambda i, o: C.DynamicEdgeConv(mlp(2 * i, o, o), k=4), call="features"),
    "XConv": two(partial(C.XConv, dim=3, kernel_size=4), "pos", call="features"),
    "PPFConv": two(
        lambda i, o: C.PPFConv(local_nn=mlp(i + 4, o, o), global_nn=mlp(o, o)),
        "pos",
        "normal",
        call="points",
    ),
    "FeaStConv": two(partial(C.FeaStConv, heads=2)),
    "PointTransformerConv": two(C.PointTransformerConv, "pos", call="points"),
    "HypergraphConv": two(C.HypergraphConv, edges="hyperedge_index"),
    "LEConv": two(C.LEConv),
    "PNAConv": two(
        partial(
            C.PNAConv,
            aggregators=["mean", "min", "max", "std"],
            scalers=["identity", "amplification", "attenuation"],
            deg=degree_histogram(),
            towers=2,
            edge_dim=3,
        ),
        "edge_attr",
    ),
    "ClusterGCNConv": two(C.ClusterGCNConv),
    "GENConv": two(C.GENConv),
    "GCN2Conv": lambda: (
        InitialResidualNet(lambda: C.GCN2Conv(HID, alpha=0.1, theta=0.5, layer=1)),
        inputs("x", "edge_index"),
    ),
    "PANConv": two(partial(C.PANConv, filter_size=2)),
    "WLConv": not_built(
        "WLConv maps integer colours to new colour ids (a hash table) and has no parameters: "
        "no float channels to prune or to feed a Linear"
    ),
    "WLConvContinuous": two(lambda i, o: C.WLConvContinuous(), pre=True),
    "FiLMConv": two(partial(C.FiLMConv, num_relations=3), "edge_type"),
    "SuperGATConv": two(lambda i, o: C.SuperGATConv(i, o // 2, heads=2)),
    "FAConv": lambda: (
        InitialResidualNet(lambda: C.FAConv(HID, eps=0.1)),
        inputs("x", "edge_index"),
    ),
    "EGConv": two(partial(C.EGConv, aggregators=["sum", "mean", "max"], num_heads=2, num_bases=2)),
    "PDNConv": two(partial(C.PDNConv, edge_dim=3, hidden_channels=8), "edge_attr"),
    "GeneralConv": two(
        partial(C.GeneralConv, in_edge_channels=3, attention=True, heads=2), "edge_attr"
    ),
    "HGTConv": hetero(partial(C.HGTConv, metadata=META, heads=2)),
    "HEATConv": two(
        lambda i, o: C.HEATConv(i, o // 2, heads=2, **HEAT), "node_type", "edge_type", "edge_attr"
    ),
    "HeteroConv": hetero(
        lambda i, o: C.HeteroConv({META[1][0]: C.GCNConv(i, o)}),
        lambda i, o: C.HeteroConv({META[1][0]: C.SAGEConv(i, o)}),
    ),
    "HANConv": hetero(partial(C.HANConv, metadata=META, heads=2)),
    "LGConv": two(lambda i, o: C.LGConv(), pre=True),
    "PointGNNConv": two(
        lambda i, o: C.PointGNNConv(mlp_h=mlp(o, 16, 3), mlp_f=mlp(3 + o, o), mlp_g=mlp(o, o)),
        "pos",
        call="points",
        pre=True,
    ),
    "GPSConv": two(lambda i, o: C.GPSConv(o, C.GINConv(mlp(o, o, o)), heads=2), pre=True),
    "AntiSymmetricConv": two(lambda i, o: C.AntiSymmetricConv(o), pre=True),
    "DirGNNConv": two(lambda i, o: C.DirGNNConv(C.GCNConv(i, o))),
    "MixHopConv": two(lambda i, o: C.MixHopConv(i, o // 2, powers=[0, 1])),
    "MeshCNNConv": two(C.MeshCNNConv, edges="mesh_adjacency"),
}

# Ready-made models of torch_geometric.nn.models.
MODELS = {
    "models.MLP": lambda: (M.MLP([IN, HID, HID, OUT]), inputs("x")),
    "models.GCN": lambda: (M.GCN(IN, HID, 2, OUT), inputs("x", "edge_index")),
    "models.GraphSAGE": lambda: (M.GraphSAGE(IN, HID, 2, OUT), inputs("x", "edge_index")),
    "models.GIN": lambda: (M.GIN(IN, HID, 2, OUT), inputs("x", "edge_index")),
    "models.GAT": lambda: (M.GAT(IN, HID, 2, OUT, heads=2), inputs("x", "edge_index")),
    "models.PNA": lambda: (
        M.PNA(
            IN,
            HID,
            2,
            OUT,
            aggregators=["mean", "max", "std"],
            scalers=["identity", "amplification"],
            deg=degree_histogram(),
        ),
        inputs("x", "edge_index"),
    ),
    "models.EdgeCNN": lambda: (M.EdgeCNN(IN, HID, 2, OUT), inputs("x", "edge_index")),
    "models.GCN_jk_cat_batchnorm": lambda: (
        M.GCN(IN, HID, 3, OUT, jk="cat", norm="batch_norm"),
        inputs("x", "edge_index"),
    ),
    "models.GraphUNet": lambda: (M.GraphUNet(IN, HID, OUT, depth=2), inputs("x", "edge_index")),
    "models.LINKX": lambda: (M.LINKX(N, IN, HID, OUT, num_layers=2), inputs("x", "edge_index")),
    "models.PMLP": lambda: (M.PMLP(IN, HID, OUT, num_layers=2), inputs("x", "edge_index")),
    "models.RECT_L": lambda: (M.RECT_L(IN, HID), inputs("x", "edge_index")),
    "models.AttentiveFP": lambda: (
        M.AttentiveFP(IN, HID, OUT, edge_dim=3, num_layers=2, num_timesteps=2),
        inputs("x", "edge_index", "edge_attr", "batch"),
    ),
    "models.SGFormer": sgformer,
    "models.Polynormer": lambda: (
        M.Polynormer(IN, HID, OUT, local_layers=2, global_layers=1, heads=2),
        inputs("x", "edge_index", "batch"),
    ),
    "models.DeepGCNLayer": lambda: (DeepGCNNet(), inputs("x", "edge_index")),
}

# Other constructor options of the same layers and models.
VARIANTS = {
    "var.GATConv_edge_dim_residual": two(
        lambda i, o: C.GATConv(i, o // 2, heads=2, edge_dim=3, residual=True), "edge_attr"
    ),
    "var.GATConv_concat_false": two(partial(C.GATConv, heads=2, concat=False)),
    "var.GATv2Conv_share_weights_edge": two(
        lambda i, o: C.GATv2Conv(i, o // 2, heads=2, share_weights=True, edge_dim=3), "edge_attr"
    ),
    "var.TransformerConv_edge_beta": two(
        lambda i, o: C.TransformerConv(i, o // 2, heads=2, edge_dim=3, beta=True), "edge_attr"
    ),
    "var.TransformerConv_concat_false": two(partial(C.TransformerConv, heads=2, concat=False)),
    "var.SAGEConv_project_normalize": two(
        partial(C.SAGEConv, project=True, normalize=True), second=partial(C.SAGEConv, project=True)
    ),
    "var.SAGEConv_multi_aggr": two(
        partial(C.SAGEConv, aggr=["mean", "max", "sum"]),
        second=partial(C.SAGEConv, aggr=["mean", "max"]),
    ),
    "var.SAGEConv_lstm_aggr": two(
        partial(C.SAGEConv, aggr="lstm"),
        second=partial(C.SAGEConv, aggr="max"),
        edges="sorted_edge_index",
    ),
    "var.GENConv_edge_msgnorm": two(
        partial(C.GENConv, **GEN),
        "edge_attr",
        second=partial(C.GENConv, aggr="powermean", learn_p=True, **GEN),
    ),
    "var.RGCNConv_bases": two(
        partial(C.RGCNConv, num_relations=3, num_bases=2),
        "edge_type",
        second=partial(C.RGCNConv, num_relations=3, num_blocks=4),
    ),
    "var.FastRGCNConv_bases": two(
        partial(C.FastRGCNConv, num_relations=3, num_bases=2),
        "edge_type",
        second=partial(C.FastRGCNConv, num_relations=3, num_blocks=4),
    ),
    "var.PNAConv_divide_input": two(
        partial(
            C.PNAConv,
            aggregators=["mean", "max"],
            scalers=["identity", "linear"],
            deg=degree_histogram(),
            towers=2,
            divide_input=True,
            pre_layers=2,
            post_layers=2,
        )
    ),
    "var.GeneralConv_plain_skip": two(
        partial(C.GeneralConv, in_edge_channels=3, skip_linear=True),
        "edge_attr",
        second=partial(C.GeneralConv, in_edge_channels=3),
    ),
    "var.GeneralConv_dotproduct_heads": two(
        partial(C.GeneralConv, attention=True, attention_type="dot_product", heads=2)
    ),
    "var.HypergraphConv_attention": lambda: (
        HyperedgeAttentionNet(),
        inputs("x", "hyperedge_index", "hyperedge_attr"),
    ),
    "var.ResGatedGraphConv_edge": two(partial(C.ResGatedGraphConv, edge_dim=3), "edge_attr"),
    "var.CGConv_batchnorm": two(
        lambda i, o: C.CGConv(o, dim=3, batch_norm=True), "edge_attr", pre=True
    ),
    "var.SuperGATConv_SD": two(
        lambda i, o: C.SuperGATConv(i, o // 2, heads=2, attention_type="SD")
    ),
    "var.GINConv_train_eps": two(lambda i, o: C.GINConv(mlp(i, o, o), train_eps=True)),
    "var.MixHopConv_three_powers": two(
        lambda i, o: C.MixHopConv(i, o // 3, powers=[0, 1, 2]), width=24
    ),
    "var.GPSConv_performer": two(
        lambda i, o: C.GPSConv(
            o, C.GCNConv(o, o), heads=2, attn_type="performer", norm="layer_norm"
        ),
        pre=True,
    ),
    "var.DirGNNConv_sage": two(
        lambda i, o: C.DirGNNConv(C.SAGEConv(i, o), alpha=0.3),
        second=lambda i, o: C.DirGNNConv(C.SAGEConv(i, o), root_weight=False),
    ),
    "var.NNConv_mean": two(
        lambda i, o: C.NNConv(i, o, nn=mlp(3, i * o), aggr="mean"),
        "edge_attr",
        second=lambda i, o: C.NNConv(i, o, nn=mlp(3, i * o), aggr="max"),
    ),
    "var.EdgeConv_add": two(
        lambda i, o: C.EdgeConv(mlp(2 * i, o), aggr="add"),
        second=lambda i, o: C.EdgeConv(mlp(2 * i, o), aggr="mean"),
    ),
    "var.models.GAT_v2_jk_max": lambda: (
        M.GAT(IN, HID, 3, OUT, heads=2, v2=True, jk="max"),
        inputs("x", "edge_index"),
    ),
    "var.models.GIN_jk_lstm": lambda: (
        M.GIN(IN, HID, 3, OUT, jk="lstm"),
        inputs("x", "edge_index"),
    ),
    "var.models.GraphSAGE_layernorm": lambda: (
        M.GraphSAGE(IN, HID, 2, OUT, norm="layer_norm"),
        inputs("x", "edge_index"),
    ),
    "var.HEATConv_concat_false": two(
        lambda i, o: C.HEATConv(i, o, heads=2, concat=False, **HEAT),
        "node_type",
        "edge_type",
        "edge_attr",
    ),
    "var.GINEConv_no_edge_dim": lambda: (
        EdgeEmbeddingNet(),
        inputs("x", "edge_index", "edge_attr"),
    ),
}

CASES = CONVS | MODELS | VARIANTS

# ---- one case (in the child process) --------------------------------------------------------


def sweep_case(name: str) -> dict:
    record: dict = {"case": name}
    torch.manual_seed(0)
    try:
        model, example_inputs = CASES[name]()
        model = model.double().eval()
        shapes = snap.output_shapes(model, example_inputs)
    except (NotBuilt, ImportError) as e:  # the cases needing a package not installed
        return record | {"build": "not built", "reason": snap.short(e)}
    except Exception as e:  # noqa: BLE001
        return record | {"build": "error", "reason": snap.short(e)}
    params = sum(t.numel() for t in model.parameters())
    record.update(build="ok", model=type(model).__name__, params=params, shapes=shapes)
    for step in STEPS:
        record[step] = snap.prune_step(model, example_inputs, shapes, step, STEPS, TOLERANCE)
    return record


def child(name: str) -> None:
    torch.set_num_threads(1)
    snap.stand_ins_if_asked()
    record = sweep_case(name)
    print(RECORD + json.dumps(record), flush=True)


# ---- the sweep (in the parent) --------------------------------------------------------------


def run_case(name: str, timeout: float) -> dict:
    """``sweep_pyg.py --child NAME`` in a subprocess; a child that dies or overruns is a record."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, os.path.abspath(__file__), "--child", name]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"case": name, "build": "timeout", "reason": f"over {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RECORD)]
    if not lines:
        tail = " ".join(done.stderr.strip().splitlines()[-3:])[-600:]
        return {"case": name, "build": "crash", "reason": f"exit {done.returncode}: {tail}"}
    record = json.loads(lines[-1][len(RECORD) :])
    record["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return record


def failures(record: dict) -> list[str]:
    return snap.failures(record, STEPS)


def verdict(record: dict) -> str:
    return snap.verdict(record, STEPS)


def summary(done: dict, seconds: float) -> str:
    classes = list(C.__all__)
    without_case = [c for c in classes if c not in CASES]
    records = list(done.values())
    lines = [
        f"\n{len(records)} cases in {seconds:.0f} s (torch {torch.__version__}, "
        f"torch_geometric {torch_geometric.__version__})",
        f"classes found: {len(classes)} in torch_geometric.nn.conv, "
        f"{len(classes) - len(without_case)} with a case"
        + (f" (none for {', '.join(without_case)})" if without_case else ""),
        f"cases: {len(records)} ({sum(n in CONVS for n in done)} conv classes, "
        f"{sum(n in MODELS for n in done)} models, {sum(n in VARIANTS for n in done)} variants)",
    ]
    lines += snap.outcome_lines(records, STEPS, TOLERANCE, failures)
    return "\n".join(lines)


def main() -> None:
    parser = snap.case_arguments(__doc__, "sweep_pyg.json")
    parser.add_argument("--stand-ins", action="store_true", help=snap.STAND_INS_HELP)
    args = parser.parse_args()
    if args.stand_ins:
        snap.ask_for_stand_ins()
    if args.child:
        return child(args.child)
    names = snap.chosen_cases(parser, args.cases, CASES)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_case, name, args.timeout) for name in names]
        records = (f.result() for f in concurrent.futures.as_completed(futures))
        done = snap.collect(records, names, args.out, verdict)
    print(summary(done, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
