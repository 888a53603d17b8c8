"""One small net per op rule, checking the exact index mapping of every member slice."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from helpers import prune_and_check


def graph(model, x, backend="python", **kw) -> dx.DependencyGraph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.OpaqueOpWarning)
        return dx.DependencyGraph(model, x, backend=backend, **kw)


def member_map(dg: dx.DependencyGraph, name: str, dim: int) -> dict[int, tuple]:
    """index along (name, dim) -> its (group index, group-local unit) pairs, one per factor of
    the dim (a dim that is a product, e.g. [group, channel in group], has one per factor)."""
    out: dict[int, tuple] = {}
    for g in dg.groups:
        for m in g.members:
            if m.name == name and m.dim == dim:
                for i, u in zip(m.indices.tolist(), m.units.tolist()):
                    out[i] = out.get(i, ()) + ((g.index, u),)
    return out


def same_units(a: dict, b: dict, pairs) -> None:
    for i, j in pairs:
        assert a[i] == b[j], (i, j, a.get(i), b.get(j))


class ConvBnConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.bn(self.c1(x))))


def test_conv_bn_conv_identity_mapping(backend):
    dg = graph(ConvBnConv(), torch.randn(1, 3, 8, 8), backend)
    w1 = member_map(dg, "c1.weight", 0)
    assert sorted(w1) == list(range(6))
    assert len({u for u in w1.values()}) == 6  # six units, one group
    for name, dim in [
        ("c1.bias", 0),
        ("bn.weight", 0),
        ("bn.bias", 0),
        ("bn.running_mean", 0),
        ("bn.running_var", 0),
        ("c2.weight", 1),
    ]:
        same_units(w1, member_map(dg, name, dim), [(i, i) for i in range(6)])
    assert member_map(dg, "c1.weight", 1) == {}  # the image channels touch the input
    assert member_map(dg, "c2.weight", 0) == {}  # the output channels touch the output
    assert member_map(dg, "c1.weight", 2) == {}  # kernel dims are fixed


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(2, 4, 1), nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_flatten_maps_a_channel_to_a_block_of_columns(backend):
    dg = graph(FlattenLinear(), torch.randn(2, 2, 3, 3), backend)
    conv = member_map(dg, "conv.weight", 0)
    fc = member_map(dg, "fc.weight", 1)
    assert sorted(fc) == list(range(36))
    same_units(conv, fc, [(j // 9, j) for j in range(36)])
    [group] = [g for g in dg.groups if any(m.name == "fc.weight" for m in g.members)]
    [member] = [m for m in group.members if m.name == "fc.weight"]
    assert member.unit_size == 9
    prune_and_check(
        FlattenLinear().double(), torch.randn(2, 2, 3, 3, dtype=torch.float64), ratio=0.5
    )


class Grouped(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(8, 8, 3, groups=groups, padding=1)
        self.c3 = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


def test_grouped_conv_factors_channels_into_groups(backend):
    dg = graph(Grouped(), torch.randn(1, 3, 5, 5), backend)
    dims = dg.tensor_dims["c1.weight"][0]
    assert dims.leaf_sizes.tolist() == [2, 4]  # [group, index within group]
    c1 = member_map(dg, "c1.weight", 0)
    c2_in = member_map(dg, "c2.weight", 1)  # 4 input channels per group
    c2_out = member_map(dg, "c2.weight", 0)
    # c1's channel j is (group j // 4, index j % 4): two units, one per factor. c2's weight dim 1
    # (per-group inputs) carries the input index factor; its dim 0 shares the group factor and
    # has an output index factor of its own.
    assert sorted(c2_in) == list(range(4))
    for j in range(8):
        group_unit, index_unit = c1[j]
        assert c2_out[j][0] == group_unit and c2_out[j][1] != index_unit
        assert index_unit == c2_in[j % 4][0]
        assert group_unit == c1[(j // 4) * 4][0]
        assert group_unit != c1[(j + 4) % 8][0]
    pruned, result = prune_and_check(
        Grouped().double(), torch.randn(1, 3, 5, 5, dtype=torch.float64), ratio=0.5
    )
    assert pruned.c2.in_channels % pruned.c2.groups == 0


def test_depthwise_conv_prunes_groups(backend):
    class Depthwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 6, 1)
            self.dw = nn.Conv2d(6, 6, 3, groups=6, padding=1)
            self.c2 = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.c2(self.dw(self.c1(x)))

    model = Depthwise().double()
    pruned, _ = prune_and_check(model, torch.randn(1, 3, 5, 5, dtype=torch.float64), ratio=0.5)
    assert pruned.dw.groups == pruned.dw.in_channels == pruned.dw.out_channels == 3


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 5, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_cat_offsets(backend):
    dg = graph(Concat(), torch.randn(1, 2, 4, 4), backend)
    a, b, c = (member_map(dg, n, d) for n, d in [("a.weight", 0), ("b.weight", 0), ("c.weight", 1)])
    same_units(a, c, [(i, i) for i in range(3)])
    same_units(b, c, [(i, 3 + i) for i in range(5)])
    assert len({pairs[0][0] for pairs in c.values()}) == 1  # one group of 8 units
    prune_and_check(Concat().double(), torch.randn(1, 2, 4, 4, dtype=torch.float64), ratio=0.5)


def test_cat_of_a_tensor_with_itself(backend):
    class SelfCat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(2, 4, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.c(torch.cat([y, y], dim=1))

    dg = graph(SelfCat(), torch.randn(1, 2, 4, 4), backend)
    a, c = member_map(dg, "a.weight", 0), member_map(dg, "c.weight", 1)
    same_units(a, c, [(i, i) for i in range(4)] + [(i, 4 + i) for i in range(4)])
    prune_and_check(SelfCat().double(), torch.randn(1, 2, 4, 4, dtype=torch.float64), ratio=0.5)


class ChunkNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(2, 8, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        lo, hi = self.a(x).chunk(2, dim=1)
        return self.c(lo * torch.sigmoid(hi))


def test_chunk_couples_index_i_of_every_piece(backend):
    dg = graph(ChunkNet(), torch.randn(1, 2, 4, 4), backend)
    a, c = member_map(dg, "a.weight", 0), member_map(dg, "c.weight", 1)
    same_units(a, c, [(i, i) for i in range(4)] + [(4 + i, i) for i in range(4)])
    prune_and_check(ChunkNet().double(), torch.randn(1, 2, 4, 4, dtype=torch.float64), ratio=0.5)


def test_unaligned_constant_slice_blocks(backend):
    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(2, 7, 1), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.c(self.a(x)[:, 1:4])

    dg = graph(Sliced(), torch.randn(1, 2, 4, 4), backend)
    assert member_map(dg, "a.weight", 0) == {}
    assert member_map(dg, "c.weight", 1) == {}


def test_permute_linear_and_back(backend):
    class ChannelsLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc, self.out = nn.Conv2d(2, 6, 1), nn.Linear(6, 5), nn.Conv2d(5, 2, 1)

        def forward(self, x):
            y = self.fc(self.conv(x).permute(0, 2, 3, 1))
            return self.out(y.permute(0, 3, 1, 2).contiguous())

    dg = graph(ChannelsLast(), torch.randn(1, 2, 3, 3), backend)
    same_units(
        member_map(dg, "conv.weight", 0), member_map(dg, "fc.weight", 1), [(i, i) for i in range(6)]
    )
    same_units(
        member_map(dg, "fc.weight", 0), member_map(dg, "out.weight", 1), [(i, i) for i in range(5)]
    )
    prune_and_check(
        ChannelsLast().double(), torch.randn(1, 2, 3, 3, dtype=torch.float64), ratio=0.5
    )


def test_residual_add_and_broadcast_scale(backend):
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body = nn.Conv2d(2, 6, 1), nn.Conv2d(6, 6, 3, padding=1)
            self.scale = nn.Parameter(torch.rand(6, 1, 1) + 0.5)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            y = self.stem(x)
            y = y + self.scale * torch.relu(self.body(y))
            return self.head(y.mean(dim=(2, 3)))

    dg = graph(Residual(), torch.randn(2, 2, 4, 4), backend)
    stem = member_map(dg, "stem.weight", 0)
    for name, dim in [("body.weight", 0), ("body.weight", 1), ("scale", 0), ("head.weight", 1)]:
        same_units(stem, member_map(dg, name, dim), [(i, i) for i in range(6)])
    prune_and_check(Residual().double(), torch.randn(2, 2, 4, 4, dtype=torch.float64), ratio=0.5)


def test_mlp_on_3d_input_pool_and_dropout(backend):
    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 4)
            self.drop = nn.Dropout(0.1)
            self.pool = nn.AdaptiveAvgPool1d(2)

        def forward(self, x):  # x: [batch, tokens, 4]
            h = self.drop(torch.nn.functional.gelu(self.fc1(x)))
            y = self.fc2(h)
            return self.pool(y.transpose(1, 2)).sum(-1)

    x = torch.randn(2, 5, 4, dtype=torch.float64)
    dg = graph(Mlp(), x, backend)
    same_units(
        member_map(dg, "fc1.weight", 0),
        member_map(dg, "fc2.weight", 1),
        [(i, i) for i in range(16)],
    )
    same_units(
        member_map(dg, "fc1.weight", 0), member_map(dg, "fc1.bias", 0), [(i, i) for i in range(16)]
    )
    pruned, _ = prune_and_check(Mlp().double().eval(), x, ratio=0.5)
    assert pruned.fc1.out_features == 8 and pruned.fc2.in_features == 8


def test_maxpool_and_split_with_hardcoded_sizes(backend):
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(2, 6, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            p, q = torch.split(torch.nn.functional.max_pool2d(self.a(x), 2), [4, 2], dim=1)
            return self.c(p) + self.b(q.mean(1, keepdim=True).expand(-1, 2, -1, -1)).sum(
                1, keepdim=True
            )

    x = torch.randn(1, 2, 4, 4)
    dg = graph(Split(), x, backend)
    assert member_map(dg, "a.weight", 0) == {}  # unequal constant split sizes: blocked


def test_view_with_hard_coded_size_is_learned_from_validation():
    class Rows(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc0, self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 12), nn.Linear(12, 3)

        def forward(self, x):
            y = self.fc(torch.relu(self.fc0(x))).view(-1, 12)  # "12" is a constant of the code
            return self.out(y)

    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.warns(dx.FixedSizeWarning, match="aten.view"):
        pruned, result = prune_and_check(Rows().double(), x, ratio=0.5)
    assert pruned.fc.out_features == 12 and pruned.fc0.out_features == 4


@torch.library.custom_op("dxtest::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.flip(1)


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Mystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(self.b(mystery(self.a(x))))


def test_opaque_op_warns_blocks_and_strict_refuses(backend):
    # the warning names the op, its module and the line of the model's code that ran it
    where = r"dxtest\.mystery\.default in module <root> at .*test_rules\.py:\d+ \(.*mystery\("
    with pytest.warns(dx.OpaqueOpWarning, match=where):
        dg = dx.DependencyGraph(Mystery(), torch.randn(1, 2, 3, 3), backend=backend)
    assert member_map(dg, "a.weight", 0) == {}  # blocked by the unknown op
    assert sorted(member_map(dg, "b.weight", 0)) == list(range(4))  # after it: still prunable
    [op] = dg.opaque_ops
    assert "a.weight" in op.blocked and "b.weight" in op.blocked
    with pytest.raises(dx.UnsupportedOpError, match="dxtest.mystery"):
        dx.DependencyGraph(Mystery(), torch.randn(1, 2, 3, 3), backend=backend, strict=True)


def test_registered_rule_makes_a_custom_op_transparent():
    @dx.register_rule("dxtest.mystery")
    def _rule(ctx, node):  # flip(1) reverses channels: not expressible, so couple only batch/space
        x, out = node.inputs[0], node.outputs[0]
        ctx.equal_dims(x, out, [(0, 0), (2, 2), (3, 3)])
        ctx.block(ctx.slots(x)[1])

    try:
        dg = graph(Mystery(), torch.randn(1, 2, 3, 3), strict=True)
        assert not dg.opaque_ops
        assert member_map(dg, "a.weight", 0) == {}
        assert sorted(member_map(dg, "b.weight", 0)) == list(range(4))
    finally:
        dx.unregister_rule("dxtest.mystery")


def test_rules_looked_up_by_op_follow_changes_to_the_table():
    from depgraph_ext.graph import rules

    with pytest.warns(dx.OpaqueOpWarning, match="dxtest.mystery"):
        node = dx.DependencyGraph(Mystery(), torch.randn(1, 2, 3, 3)).graph.nodes
    mystery_node = next(n for n in node if n.name == "dxtest.mystery.default")
    assert rules.rule_for(mystery_node) is None  # looked up once: remembered by op
    dx.register_rule("dxtest.mystery", rules.registered_rule("aten.relu"))
    try:
        assert rules.rule_for(mystery_node) is rules.registered_rule("aten.relu")
    finally:
        dx.unregister_rule("dxtest.mystery")
    assert rules.rule_for(mystery_node) is None


def test_a_rule_emitting_malformed_couplings_makes_its_op_opaque(backend):
    """A user's rule whose couplings the resolution refuses (a cat piece past the end of its
    whole) does not crash anything: its op is opaque, and the warning says why."""

    @dx.register_rule("dxtest.mystery")
    def _rule(ctx, node):
        x, out = node.inputs[0], node.outputs[0]
        ctx.cat_piece(ctx.slots(out)[1], ctx.slots(x)[1], 1000)

    try:
        with pytest.warns(dx.OpaqueOpWarning, match="malformed coupling: coupling .*CAT_PIECE"):
            dg = dx.DependencyGraph(Mystery(), torch.randn(1, 2, 3, 3), backend=backend)
        assert [op.op for op in dg.opaque_ops] == ["dxtest.mystery.default"]
        assert member_map(dg, "a.weight", 0) == {}  # blocked, as an op without a rule
        with pytest.raises(dx.UnsupportedOpError, match="malformed coupling"):
            dx.DependencyGraph(Mystery(), torch.randn(1, 2, 3, 3), backend=backend, strict=True)
    finally:
        dx.unregister_rule("dxtest.mystery")
