"""Graph networks from torch_geometric: GAT/GATv2 (heads x channels, attention vectors, concat
or mean of heads, residual), GCN, GraphSAGE, with the message passing's gathers and scatters
over nodes and edges. Node classifiers on a synthetic graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import depgraph_ext as dx
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


class Transformer(nn.Module):
    """Graph transformer layers (heads concatenated, root weight, no edge features): each
    reshapes its projections by ``view(-1, self.heads, self.out_channels)``."""

    def __init__(self):
        super().__init__()
        self.c1 = pyg.TransformerConv(12, 8, heads=4)
        self.c2 = pyg.TransformerConv(32, 8, heads=4)
        self.c3 = pyg.TransformerConv(32, 5, heads=1)

    def forward(self, x, edge_index):
        x = torch.relu(self.c1(x, edge_index))
        x = torch.relu(self.c2(x, edge_index))
        return self.c3(x, edge_index)


def test_transformer_conv_prunes_heads():
    """The head count the code reshapes by follows the heads kept; the channels per head stay
    (the code fixes them, and the attention scale reads them)."""
    torch.manual_seed(0)
    model = Transformer().double().eval()
    with pytest.warns(dx.FixedSizeWarning, match="view"):  # the channels per head: fixed
        pruned, result = prune_and_check(model, (X, EDGES), ratio=0.5)
    for conv in (pruned.c1, pruned.c2):
        assert conv.heads == 2 and conv.out_channels == 8
        for lin in (conv.lin_query, conv.lin_key, conv.lin_value, conv.lin_skip):
            assert lin.weight.shape[0] == 16
    assert pruned.c2.lin_query.weight.shape[1] == 16
    assert pruned(X, EDGES).shape == (N, 5)


def test_transformer_conv_with_nothing_to_prune_names_the_op_and_its_line():
    """One head: its channels are all there is, and its attention scales by their count
    (``/ math.sqrt(self.out_channels)``, the attribute its views give the channels by): the
    refusal says which op, which line of the model's code, and which attribute."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = pyg.TransformerConv(12, 8, heads=1), nn.Linear(8, 5)

        def forward(self, x, edge_index):
            return self.out(torch.relu(self.conv(x, edge_index)))

    model = Net().double().eval()
    with pytest.warns(dx.FixedSizeWarning):
        with pytest.raises(dx.NoPrunableGroupsError) as refusal:
            dx.prune(model, (X, EDGES), ratio=0.5)
    message = str(refusal.value)
    assert "aten.div" in message and "transformer_conv.py:" in message
    assert "math.sqrt(self.out_channels)" in message and "conv.out_channels 8 -> 4" in message
    assert model.conv.lin_query.weight.shape == (8, 12)  # untouched


def test_hypergraph_attention_keeps_its_channel_count():
    """HypergraphConv's attention vector is [1, heads, 2 x out_channels] (node and hyperedge
    features side by side): out_channels follows as half its last dim."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = pyg.HypergraphConv(12, 16, use_attention=True, heads=2)
            self.e = nn.Linear(12, 32)
            self.c2 = pyg.HypergraphConv(32, 16, use_attention=True, heads=2)
            self.out = nn.Linear(32, 4)

        def forward(self, x, hyperedges, features):
            h = torch.relu(self.c1(x, hyperedges, hyperedge_attr=features))
            return self.out(self.c2(h, hyperedges, hyperedge_attr=self.e(features)))

    torch.manual_seed(0)
    hyperedges = torch.stack([EDGES[0], torch.arange(E) % 8])
    features = torch.randn(8, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = Net().double().eval()
    pruned, _ = prune_and_check(model, (X, hyperedges, features), ratio=0.5, exact_only=True)
    for conv in (pruned.c1, pruned.c2):
        assert conv.att.shape == (1, conv.heads, 2 * conv.out_channels)
        assert conv.lin.weight.shape[0] == conv.heads * conv.out_channels


TYPES = torch.randint(0, 3, (E,), generator=G)


@pytest.mark.parametrize(
    "options",
    [{}, {"num_bases": 2}, {"num_blocks": 4}],
    ids=["relations", "bases", "blocks"],
)
@pytest.mark.parametrize("conv", ["RGCNConv", "FastRGCNConv"])
def test_relational_convs_follow_their_widths(conv, options):
    """R-GCN layers view their weights by ``in_channels_l``, ``out_channels`` and
    ``num_bases``, and make their output by ``zeros(n, self.out_channels)``: the attributes
    follow the kept widths, so the layers prune (exactly) instead of keeping every width."""
    make = getattr(pyg, conv)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = make(12, 16, num_relations=3, **options)
            self.c2 = make(16, 16, num_relations=3, **options)
            self.out = nn.Linear(16, 4)

        def forward(self, x, edge_index, edge_type):
            x = torch.relu(self.c1(x, edge_index, edge_type))
            return self.out(torch.relu(self.c2(x, edge_index, edge_type)))

    torch.manual_seed(0)
    pruned, result = prune_and_check(Net().double().eval(), (X, EDGES, TYPES), ratio=0.5)
    for c in (pruned.c1, pruned.c2):
        width = c.root.shape[1]
        assert c.out_channels == width == c.bias.shape[0] < 16
        assert c.in_channels_l == c.root.shape[0]
        if "num_bases" in options:
            assert c.num_bases == c.weight.shape[0] == c.comp.shape[1]
    assert pruned.c2.in_channels_l == pruned.c1.out_channels
    assert pruned(X, EDGES, TYPES).shape == (N, 4)


EDGE_ATTR = torch.rand(E, 3, dtype=torch.float64, generator=G)
# every node (an edge of a mesh) has four neighbours
MESH = torch.stack(
    [torch.arange(N).repeat_interleave(4), torch.randint(0, N, (4 * N,), generator=G)]
)


def _edge_mlp(width_in, width_out):
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, width_in * width_out))


LAYERS_BY_THEIR_WIDTHS = {
    "NNConv": (lambda i, o: pyg.NNConv(i, o, nn=_edge_mlp(i, o)), "edge_attr"),
    "NNConv_mean": (lambda i, o: pyg.NNConv(i, o, nn=_edge_mlp(i, o), aggr="mean"), "edge_attr"),
    "GMMConv": (lambda i, o: pyg.GMMConv(i, o, dim=3, kernel_size=2), "edge_attr"),
    "GMMConv_separate": (
        lambda i, o: pyg.GMMConv(i, o, dim=3, kernel_size=2, separate_gaussians=True),
        "edge_attr",
    ),
    "FiLMConv": (lambda i, o: pyg.FiLMConv(i, o, num_relations=3), "edge_type"),
    "MFConv": (lambda i, o: pyg.MFConv(i, o, max_degree=6), None),
    "GeneralConv": (lambda i, o: pyg.GeneralConv(i, o, heads=2, skip_linear=True), None),
    "HypergraphConv": (pyg.HypergraphConv, None),
    "EGConv": (
        lambda i, o: pyg.EGConv(i, o, aggregators=["sum", "mean", "max"], num_heads=2, num_bases=2),
        None,
    ),
    "MeshCNNConv": (pyg.MeshCNNConv, "mesh"),
    "GeneralConv_additive": (
        lambda i, o: pyg.GeneralConv(i, o, in_edge_channels=3, attention=True, heads=2),
        "edge_attr",
    ),
    "GeneralConv_dot_product": (
        lambda i, o: pyg.GeneralConv(i, o, attention=True, attention_type="dot_product", heads=2),
        None,
    ),
}


@pytest.mark.parametrize("layer", sorted(LAYERS_BY_THEIR_WIDTHS))
def test_layers_that_view_by_their_widths_prune(layer):
    """Layers whose code sizes views, splits and new tensors by their own ``out_channels``
    (and ``heads``, ``kernel_size``, ``in_channels_l``, ``rel_in_channels``): the attributes
    follow the kept widths, so the layers prune exactly instead of keeping every width."""
    make, extra = LAYERS_BY_THEIR_WIDTHS[layer]
    extras = {"edge_attr": EDGE_ATTR, "edge_type": TYPES, "mesh": MESH, None: None}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = make(12, 16), make(16, 16)
            self.out = nn.Linear(16, 4)

        def forward(self, x, edge_index, *more):
            x = torch.relu(self.c1(x, edge_index, *more))
            return self.out(torch.relu(self.c2(x, edge_index, *more)))

    edges = MESH if extra == "mesh" else EDGES
    inputs = (X, edges) + (() if extra in (None, "mesh") else (extras[extra],))
    torch.manual_seed(0)
    pruned, result = prune_and_check(Net().double().eval(), inputs, ratio=0.5)
    more = inputs[2:]
    with torch.no_grad():
        h1 = pruned.c1(X, edges, *more)
        h2 = pruned.c2(torch.relu(h1), edges, *more)
    assert h1.shape[-1] == pruned.c1.out_channels < 16
    assert h2.shape[-1] == pruned.c2.out_channels == pruned.out.weight.shape[1]
    in_l = pruned.c2.in_channels
    assert (in_l[0] if isinstance(in_l, tuple) else in_l) == pruned.c1.out_channels
    for c in (pruned.c1, pruned.c2):
        if hasattr(c, "lin_msg"):
            assert c.lin_msg.weight.shape[0] == c.heads * c.out_channels


class _GraphClassifier(nn.Module):
    """Takes the batch object itself, as torch_geometric models are called: ``model(data)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = pyg.GCNConv(5, 16), pyg.GCNConv(16, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, data):
        h = self.conv1(data.x, data.edge_index).relu()
        h = self.conv2(h, data.edge_index).relu()
        return self.fc(pyg.global_mean_pool(h, data.batch))


def test_a_graph_batch_given_alone_is_the_one_input_it_is():
    """A torch_geometric Data or Batch given as the example inputs is the model's one input
    (it was refused: no tensor, tuple or mapping), the same prune as ``(data,)``; an object
    holding no tensor is still refused by name."""
    from torch_geometric.data import Batch, Data

    torch.manual_seed(0)
    edges = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    data = Batch.from_data_list([Data(x=torch.randn(4, 5).double(), edge_index=edges)] * 2)
    model = _GraphClassifier().double()  # (prune_and_check prunes copies)
    plans = [prune_and_check(model, inputs, ratio=0.5)[1].plan for inputs in (data, (data,))]
    assert plans[0].keys() == plans[1].keys() and "conv1.lin.weight" in plans[0]
    for name, dims in plans[0].items():
        assert all(torch.equal(kept, plans[1][name][d]) for d, kept in dims.items()), name
    with pytest.raises(dx.InvalidArgumentError, match="one object holding tensors, not object"):
        dx.prune(model, object(), ratio=0.5)


def test_one_walk_lists_modules_parameters_buffers_and_aliases_as_torch_does():
    """ModelWalk's single walk: its modules are ``named_modules()``'s, its tensors those of
    ``named_parameters``/``named_buffers(remove_duplicate=False)``, each under its first name,
    its other names aliases (a module reached by two paths, a tensor held twice)."""
    from depgraph_ext.graph.walk import ModelWalk

    shared = nn.Linear(3, 3)

    class Sharing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(shared, nn.ReLU(), nn.Sequential(shared))
            self.b = shared
            self.none = None
            self.register_buffer("buf", torch.zeros(2))
            self.register_buffer("gone", None)
            self.p = nn.Parameter(torch.ones(1))
            self.tied = self.a[0].weight
            self.d = nn.ModuleDict({"x": nn.Linear(2, 2), "y": shared})

    model = Sharing()
    walk = ModelWalk.of(model)
    assert walk.modules == list(model.named_modules())
    params, buffers, aliases, seen = {}, {}, {}, {}
    for store, named in (
        (params, model.named_parameters(remove_duplicate=False)),
        (buffers, model.named_buffers(remove_duplicate=False)),
    ):
        for name, t in named:
            if id(t) in seen:
                aliases[name] = seen[id(t)]
            else:
                seen[id(t)] = name
                store[name] = t
    assert list(walk.params.items()) == list(params.items())
    assert list(walk.buffers.items()) == list(buffers.items())
    assert walk.aliases == aliases
    assert walk.aliases["b.weight"] == "tied" and walk.aliases["d.y.bias"] == "a.0.bias"
