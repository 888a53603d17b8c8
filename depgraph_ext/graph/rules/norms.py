"""Batch/instance/layer/group norm, weight norm and PReLU: per-channel parameters and
statistics."""

from __future__ import annotations

from ..trace import Node, Ref
from .context import RuleContext, arg, wrap_dim
from .registry import register_many


def channel_norm(ctx: RuleContext, node: Node) -> None:
    """Batch/instance norm: dim 1 of the input is the channel; every 1-D operand and statistic
    of that size is indexed by channel. Statistics of the input itself (a batch norm in
    training mode or without running statistics, an instance norm) are taken over the other
    dims (instance norm: the dims after the channel): removing an index of those changes
    every channel's (a standardised weight's input channels, timm's ``StdConv2d``)."""
    x = node.inputs[0]
    sx = ctx.slots(x)
    c = 1 if len(sx) > 1 else 0
    n_channels = ctx.size(sx[c])
    ctx.broadcast([x], [node.outputs[0]])
    if _input_statistics(node):
        instance = node.packet == "aten.instance_norm"
        what = "InstanceNorm" if instance else "BatchNorm"
        for d, s in enumerate(sx):
            if d != c and not (instance and d < c):
                ctx.reduces(s, node, f"{what} statistics of the input over the units")
    for v in node.inputs[1:] + node.outputs[1:]:
        sv = ctx.slots(v)
        if len(sv) == 1 and ctx.size(sv[0]) == n_channels:
            ctx.equal(sv[0], sx[c])


def _input_statistics(node: Node) -> bool:
    """Whether a batch or instance norm normalises with statistics of its input (not with
    running statistics)."""
    name = node.packet
    if name == "aten._native_batch_norm_legit_no_training":
        return False
    if name in ("aten._batch_norm_with_update", "aten._batch_norm_with_update_functional"):
        return True
    if name == "aten.instance_norm":
        return bool(arg(node, "use_input_stats", True))
    if arg(node, "training", False) is True:
        return True
    # (no running statistics to use: ``_native_batch_norm_legit.no_stats``, or none given)
    return not isinstance(arg(node, "running_mean"), Ref) or not isinstance(
        arg(node, "running_var"), Ref
    )


register_many(
    [
        "aten.native_batch_norm",
        "aten._native_batch_norm_legit",
        "aten._native_batch_norm_legit_no_training",
        "aten._native_batch_norm_legit_functional",
        "aten.batch_norm",
        "aten.instance_norm",
        # what batch norm runs on a GPU (cuDNN, MIOpen), and the forms export decomposes to
        "aten.cudnn_batch_norm",
        "aten.miopen_batch_norm",
        "aten._batch_norm_with_update",
        "aten._batch_norm_with_update_functional",
        "aten._batch_norm_no_update",
    ],
    channel_norm,
)


def layer_norm(ctx: RuleContext, node: Node) -> None:
    """Normalised trailing dims couple the weight/bias; statistics keep the leading dims."""
    _normalised_trailing(ctx, node, "LayerNorm statistics over the units")
    for s in ctx.slots(node.inputs[0])[-len(arg(node, "normalized_shape")) :]:
        ctx.tag(s, "hidden")


def rms_norm(ctx: RuleContext, node: Node) -> None:
    """RMSNorm fused (what ``F.rms_norm`` runs on a GPU; the CPU runs its decomposition, whose
    mean over the normalised dims the reductions' rule sees): as LayerNorm, without a bias."""
    _normalised_trailing(ctx, node, "RMSNorm statistics over the units")


def _normalised_trailing(ctx: RuleContext, node: Node, what: str) -> None:
    x = node.inputs[0]
    normalized = list(arg(node, "normalized_shape"))
    sx = ctx.slots(x)
    lead = len(sx) - len(normalized)
    ctx.broadcast([x], [node.outputs[0]])
    for s in sx[lead:]:
        ctx.reduces(s, node, what)
    for ref in (arg(node, "weight"), arg(node, "bias")):
        if isinstance(ref, Ref):
            sv = ctx.slots(ref)
            for i, s in enumerate(sv):
                ctx.equal(s, sx[lead + i])
    for stat in node.outputs[1:]:
        ss = ctx.slots(stat)
        for i in range(min(lead, len(ss))):
            if ctx.size(ss[i]) == ctx.size(sx[i]) != 1:
                ctx.equal(ss[i], sx[i])


register_many(["aten.native_layer_norm", "aten.layer_norm"], layer_norm)
register_many(["aten._fused_rms_norm"], rms_norm)


def group_norm(ctx: RuleContext, node: Node) -> None:
    """C = [groups, C/groups]: a unit is a whole norm group or one index inside every group."""
    x = node.inputs[0]
    groups = int(arg(node, "group"))
    sx = ctx.slots(x)
    ctx.broadcast([x], [node.outputs[0]])
    c = sx[1]
    g = ctx.new_slot(groups)
    inner = ctx.new_slot(ctx.size(c) // groups)
    ctx.reshape([c], [g, inner])
    # statistics per norm group: losing a whole group changes no other, losing an index
    # inside every group changes every group's
    ctx.reduces(inner, node, "GroupNorm statistics within each group over the units")
    for ref in (arg(node, "weight"), arg(node, "bias")):
        if isinstance(ref, Ref):
            ctx.equal(ctx.slots(ref)[0], c)
    for stat in node.outputs[1:]:  # mean/rstd: [N, groups]
        ss = ctx.slots(stat)
        ctx.equal(ss[0], sx[0])
        ctx.equal(ss[1], g)
    ctx.set_attr_from_slot(node.module, "num_groups", g)


register_many(["aten.native_group_norm"], group_norm)


def weight_norm(ctx: RuleContext, node: Node) -> None:
    """w = g * v / ||v||, the norm taken over every dim of v but ``dim`` (what
    ``weight_norm`` parametrizations and hooks compute a weight from): every dim of v is w's;
    g (and the norms returned) are indexed along ``dim`` only. The norm is a sum of squares,
    so removing indices of the other dims is the same as zeroing them: exact."""
    v, g = arg(node, "v"), arg(node, "g")
    sv = ctx.slots(v)
    dim = wrap_dim(int(arg(node, "dim", 0)), len(sv))
    ctx.equal_dims(v, node.outputs[0], [(i, i) for i in range(len(sv))])
    for ref in [g, *node.outputs[1:]]:
        sr = ctx.slots(ref)
        if len(sr) == len(sv) and ctx.size(sr[dim]) == ctx.size(sv[dim]) != 1:
            ctx.equal(sr[dim], sv[dim])
        elif len(sr) == 1 and ctx.size(sr[0]) == ctx.size(sv[dim]) != 1:
            ctx.equal(sr[0], sv[dim])


register_many(["aten._weight_norm_interface"], weight_norm)


def prelu(ctx: RuleContext, node: Node) -> None:
    """A 1-d weight indexes dim 1 (the channel); a weight already shaped to broadcast
    ([C, 1, 1]) broadcasts like any element-wise operand."""
    x, w = node.inputs[0], node.inputs[1]
    sx, sw = ctx.slots(x), ctx.slots(w)
    if len(sw) == 1 and ctx.size(sw[0]) > 1 and len(sx) > 1:
        ctx.broadcast([x], node.outputs)
        ctx.equal(sw[0], sx[1])
    else:
        ctx.broadcast([x, w], node.outputs)


register_many(["aten._prelu_kernel", "aten.prelu"], prelu)
