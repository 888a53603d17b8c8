"""Detectors whose outputs have data-dependent sizes (score thresholds, top-k over the candidates
left, NMS): built in plain torch (tests/detectors.py), pruned in eval mode. Sizes the data decides
are recorded as such, are no channels, and the plan's check replays the original's decisions;
sizes the code fixes (anchors per location, the class count, a literal view) stay fixed."""

from __future__ import annotations

import contextlib
import copy
import re

import pytest
import torch

import depgraph_ext as dx
from depgraph_ext.graph.trace import TraceMode, trace_as
from depgraph_ext.testing import assert_scatter_back_equal
from detectors import build, image
from helpers import assert_same_state, prune_and_check, state_of

KINDS = ["retinanet", "fcos", "ssd", "fasterrcnn"]
_nothing = contextlib.nullcontext


def structure(detections) -> list:
    """What the detections look like: per image, each key with its trailing dims and dtype."""
    return [{k: (tuple(v.shape[1:]), v.dtype) for k, v in d.items()} for d in detections]


def oracle(original, pruned, plan, inputs) -> None:
    """The scatter-back oracle on the heads' raw outputs and on the detections."""
    original, pruned = copy.deepcopy(original), copy.deepcopy(pruned)
    original.with_raw = pruned.with_raw = True
    assert_scatter_back_equal(original, pruned, plan, inputs)


def what_stays(model) -> dict:
    """The sizes the code fixes: the class count and the anchors per location."""
    if hasattr(model, "rpn"):
        return {
            "objectness": model.rpn.objectness.out_channels,
            "deltas": model.rpn.deltas.out_channels,
            "classes": model.cls_score.out_features,
            "boxes": model.bbox_pred.out_features,
        }
    if hasattr(model.head, "cls"):
        return {
            "classes": [h[-1].out_channels for h in model.head.cls],
            "boxes": [h[-1].out_channels for h in model.head.reg],
        }
    return {
        "classes": model.head.cls_logits.out_channels,
        "boxes": model.head.bbox_reg.out_channels,
    }


@pytest.mark.parametrize("nms", ["op", "torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_detectors_prune_exactly(kind, nms):
    """Backbone, FPN and head channels go; the class count and anchors stay; python/native
    parity, kept weights bit for bit, the oracle on the raw head outputs and the detections."""
    model = build(kind, nms=nms)
    inputs = ([image()],)
    before = structure(model(*inputs))
    assert before[0]["boxes"][0] == (4,)
    original = copy.deepcopy(model)
    pruned, result = prune_and_check(model, inputs, oracle=False, exact_only=True)
    oracle(original, pruned, result.plan, inputs)
    assert structure(pruned(*inputs)) == before
    assert pruned.backbone.stem[0].out_channels < 8
    assert pruned.backbone.stages[2][1].a[0].out_channels < 16
    assert pruned.fpn.output[0].out_channels < 8
    if kind == "fasterrcnn":
        assert pruned.rpn.conv.out_channels < 8 and pruned.fc6.out_features < 16
    elif kind == "ssd":
        assert pruned.head.cls[0][0][0].out_channels == pruned.fpn.output[0].out_channels
    elif kind == "retinanet":
        assert pruned.head.cls_tower[0].out_channels < 8
    assert what_stays(pruned) == what_stays(original)


@pytest.mark.parametrize("kind", KINDS)
def test_detectors_prune_by_default_exact_or_declared(kind):
    """Default options: FCOS's GroupNorm towers are pruned and declared; every other group is
    exact (the oracle holds)."""
    model = build(kind)
    inputs = ([image(1)],)
    original = copy.deepcopy(model)
    with pytest.warns(dx.FunctionChangingWarning) if kind == "fcos" else _nothing():
        result = dx.prune(model, inputs, progress=False)
    assert result.params_after < result.params_before
    assert what_stays(model) == what_stays(original)
    if kind == "fcos":
        assert result.function_changing
        assert model.head.cls_tower[0].out_channels < 8
        assert all("GroupNorm" in group for group in result.function_changing)
    else:
        assert not result.function_changing
        oracle(original, model, result.plan, inputs)


@pytest.mark.parametrize("kind", ["retinanet", "fcos", "ssd"])
def test_no_candidate_passes_the_threshold(kind):
    """A threshold nothing passes: top-k over no candidate, NMS of no box, no detection (a
    top-k of nothing once raised IndexError while the groups were listed)."""
    model = build(kind, score_thresh=1.0)
    inputs = ([image()],)
    assert model(*inputs)[0]["boxes"].shape == (0, 4)
    original = copy.deepcopy(model)
    pruned, result = prune_and_check(model, inputs, oracle=False, exact_only=True)
    oracle(original, pruned, result.plan, inputs)
    assert pruned(*inputs)[0]["boxes"].shape == (0, 4)


def test_data_dependent_sizes_are_recorded_and_are_no_channels():
    """The trace records the decisions of the data (the thresholds' selections, NMS); every
    size they make is dynamic, none is a prunable unit, and the channels stay prunable."""
    model = build("retinanet", nms="op")
    dg = dx.DependencyGraph(model, ([image()],))
    ops = {str(d.op) for d in dg.graph.decisions}
    assert {"dxtest.nms.default", "aten.nonzero.default", "aten.index.Tensor"} <= ops
    slots, dynamic = dg.coupling_model.value_slots, dg.dynamic_slots
    nms = [d.node for d in dg.graph.decisions if str(d.op) == "dxtest.nms.default"]
    assert all(dynamic[slots[v][0]] for n in nms for v in dg.graph.nodes[n].outputs)
    boxes = next(v for v in dg.graph.outputs if len(dg.graph.values[v].shape) == 2)  # [n, 4]
    assert dynamic[slots[boxes][0]] and not dynamic[slots[boxes][1]]
    conv = dg.graph.params["fpn.output.0.weight"]
    assert not dynamic[slots[conv][0]]
    res = dg.resolution
    for s in range(dynamic.shape[0]):
        for leaf in res.leaves_of(s) if dynamic[s] else ():
            if res.leaf_unit_offsets[leaf] >= 0:
                assert not dg.unit_prunable[res.units_of_leaf(int(leaf))].any()
    assert any(m.name == "fpn.output.0.weight" for g in dg.groups for m in g.members)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((torch.ones(2),), {}),
        ((torch.ones(2), None, 3, torch.float32), {"dim": 1, "out": None}),
        ((torch.ones(2), [torch.zeros(1), torch.zeros(3)]), {"n": (1, 2)}),
        ((torch.ones(2), torch.Size([2, 3])), {"d": {"a": torch.ones(1)}}),
    ],
)
def test_a_decisions_arguments_flatten_as_pytree_flattens_them(args, kwargs):
    """A decision's snapshot flattens its call's arguments in one pass where none holds
    others (an ``.item()``'s tensor): the leaves pytree gives, in its order."""
    import torch.utils._pytree as pytree

    from depgraph_ext.graph.decisions import _leaves

    mine, theirs = _leaves(args, kwargs), pytree.tree_leaves((args, kwargs))
    assert len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs))


@pytest.mark.parametrize("mode", ["meta", "real"])
def test_the_plans_check_replays_the_datas_decisions(mode):
    """Traced with the pruned shapes (zero-filled weights, other scores), the model makes the
    original's decisions: on meta tensors every decision returns the original's result, on
    real ones it is given the original's inputs; the detections have the original's sizes."""
    model = build("fasterrcnn", nms="op")
    inputs = ([image()],)
    dg = dx.DependencyGraph(model, inputs)
    shapes = dict(dg.planned_shapes(dx.prune(copy.deepcopy(model), inputs, progress=False).plan))

    def kept_by_nms(ops):
        return [shapes for op, _, shapes in ops if str(op) == "dxtest.nms.default"]

    original = kept_by_nms(
        (n.op, n.module, [dg.graph.values[v].shape for v in n.outputs]) for n in dg.graph.nodes
    )
    replayed = trace_as(
        model, inputs, TraceMode(mode), shapes=shapes, shapes_only=True, replay=dg.graph.decisions
    )
    assert replayed.mode == mode and kept_by_nms(replayed.ops) == original
    assert replayed.outputs == [dg.graph.values[v].shape for v in dg.graph.outputs]
    if mode == "real":  # without the replay, the zero-filled weights decide otherwise
        plain = trace_as(model, inputs, TraceMode.REAL, shapes=shapes, shapes_only=True)
        assert kept_by_nms(plain.ops) != original


def test_a_size_the_code_fixes_after_nms_is_still_found():
    """A literal view of the box features (the width the code was written for), after the
    proposals' NMS: the plan's check still finds it and keeps those channels."""
    model = build("fasterrcnn", nms="op", fixed_view=True)
    inputs = ([image()],)
    original = copy.deepcopy(model)
    with pytest.warns(dx.FixedSizeWarning, match="reshape|view"):
        result = dx.prune(model, inputs, exact_only=True, progress=False)
    assert model.fc6.in_features == 128 and model.fpn.output[0].out_channels == 8
    assert model.backbone.stem[0].out_channels < 8
    oracle(original, model, result.plan, inputs)


def test_roi_align_keeps_the_features_channels():
    """RoI pooling by a custom op with torchvision.roi_align's rule: the FPN's channels and the
    box head's inputs are one group."""
    model = build("fasterrcnn", nms="op", roi="op")
    inputs = ([image()],)
    original = copy.deepcopy(model)
    pruned, result = prune_and_check(model, inputs, oracle=False, exact_only=True)
    oracle(original, pruned, result.plan, inputs)
    assert pruned.fc6.in_features == pruned.fpn.output[0].out_channels * 16 < 128


class CellAnchors(torch.nn.Module):
    """torchvision's anchor generator: its forward replaces the anchors it keeps in a plain
    attribute with copies of the input's dtype and device, and keeps a cache."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.cell_anchors = [torch.ones(2, 4), torch.zeros(3, 4)]
        self.cache = {"k": torch.ones(1)}

    def forward(self, x):
        self.cell_anchors = [a.to(dtype=x.dtype, device=x.device) for a in self.cell_anchors]
        self.cache["k"] = self.cache["k"] + 1
        self.seen = x.sum()
        return self.conv(x).sum() + sum(a.sum() for a in self.cell_anchors)


@pytest.mark.parametrize("mode", ["meta", "fake", "real"])
def test_a_trace_leaves_tensors_the_model_keeps_as_they_were(mode):
    """What a trace computes is meta or fake tensors: attributes holding tensors are put back
    (the model's next forward uses them) and those the forward added are removed."""
    model = CellAnchors()
    anchors, items, cache = model.cell_anchors, list(model.cell_anchors), model.cache
    trace_as(model, torch.randn(1, 3, 5, 5), TraceMode(mode))
    assert model.cell_anchors is anchors and all(a is b for a, b in zip(anchors, items))
    assert model.cache is cache and torch.equal(cache["k"], torch.ones(1))
    assert not hasattr(model, "seen")
    model(torch.randn(1, 3, 5, 5))


def test_a_failed_prune_of_a_detector_leaves_it_untouched():
    """A detector whose every group is ignored: refused, and nothing changed."""
    model = build("ssd")
    before = state_of(model)
    with pytest.raises(dx.NoPrunableGroupsError):
        dx.prune(model, ([image()],), ignore=[model], progress=False)
    assert_same_state(before, state_of(model))


def test_a_trace_error_names_the_op_the_module_and_the_line():
    """Inputs the detector cannot run: the error names the op, the module and the model's
    line that ran it; nothing changed."""
    model = build("retinanet")
    before = state_of(model)
    with pytest.raises(dx.TraceError) as info:
        dx.prune(model, ([torch.rand(4, 64, 64, dtype=torch.float64)],), progress=False)
    message = str(info.value)
    assert "in module backbone.stem.0" in message and "op aten.convolution" in message
    assert re.search(r"detectors\.py:\d+ \(x = self\.stem\(x\)\)", message), message
    assert_same_state(before, state_of(model))


def test_a_size_the_code_fixes_is_named_with_its_line():
    model = build("fasterrcnn", fixed_view=True)
    with pytest.warns(dx.FixedSizeWarning) as caught:
        dx.prune(model, ([image()],), exact_only=True, progress=False)
    assert re.search(
        r"op aten\.view\.default in module <root> at \S*detectors\.py:\d+ "
        r"\(rois = rois\.reshape\(self\.box_shape\)\)",
        str(caught[0].message),
    )


def test_an_internal_error_is_a_pruning_error_and_changes_nothing(monkeypatch):
    """A bug of the library (the top-k of no candidate once raised IndexError while the groups
    were listed) reaches the user as an InternalError naming the stage; nothing changed."""
    model = build("ssd")
    before = state_of(model)

    def broken(self):
        raise IndexError("index 0 is out of bounds for axis 0 with size 0")

    monkeypatch.setattr(dx.DependencyGraph, "_min_kept", broken)
    with pytest.raises(dx.InternalError, match="listing the groups.*IndexError"):
        dx.prune(model, ([image()],), progress=False)
    assert_same_state(before, state_of(model))


def test_a_warning_turned_into_an_error_is_raised_as_it_is():
    """A caller that turns warnings into errors gets the warning (it names the op and what it
    blocked), not an InternalError that calls it a bug; nothing changed."""
    model = Spectral()
    before = state_of(model)
    with pytest.raises(dx.OpaqueOpWarning, match="aten.linalg_matrix_exp"):  # pyproject.toml
        dx.prune(model, torch.randn(2, 9), progress=False)
    assert_same_state(before, state_of(model))


class Spectral(torch.nn.Module):
    """A linear layer, then the matrix exponential (an op without a rule) of its output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(9, 9), torch.nn.Linear(9, 8)

    def forward(self, x):
        return self.b(torch.linalg.matrix_exp(self.a(x).view(-1, 3, 3)).flatten(1))


def test_only_the_backbone():
    """A ratio by module name: the backbone's channels go (and the FPN's inputs with them);
    the FPN's and the head's own channels stay."""
    model = build("retinanet")
    inputs = ([image()],)
    original = copy.deepcopy(model)
    result = dx.prune(model, inputs, ratio=0.0, ratios={"backbone": 0.5}, progress=False)
    assert model.backbone.stem[0].out_channels == 4
    assert model.fpn.lateral[0].in_channels == model.backbone.widths[0] // 2
    assert model.fpn.output[0].out_channels == 8 and model.head.cls_tower[0].out_channels == 8
    assert {name.split(".")[0] for name in result.plan} == {"backbone", "fpn"}
    oracle(original, model, result.plan, inputs)


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("kind", ["retinanet", "fasterrcnn"])
def test_a_detectors_plan_is_checked_on_meta_tensors(monkeypatch, kind, large):
    """The plan's check reads no value: on real tensors a pruned trace computes on zero-filled
    or borrowed weights, and RoI pooling of the boxes computed so may fail or crash
    (torchvision's roi_align on NaN boxes); on meta tensors each decision returns the
    original's result. Past the size traced on real tensors first, the original is traced on
    meta tensors up to its first decision, then on real ones."""
    import depgraph_ext.graph.trace as tr

    if large:
        monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    monkeypatch.setattr(tr, "CHECK_REPEATS", False)  # (its traces without replays: not counted)
    modes = []
    trace_as = tr.trace_as

    def recorded(*args, **kwargs):
        modes.append((TraceMode(args[2]).value, kwargs.get("shapes_only", False)))
        return trace_as(*args, **kwargs)

    monkeypatch.setattr(tr, "trace_as", recorded)
    model = build(kind, nms="op")
    inputs = ([image()],)
    original = copy.deepcopy(model)
    result = dx.prune(model, inputs, exact_only=True, progress=False)
    checks = [mode for mode, shapes_only in modes if shapes_only]
    assert checks == ["meta"]
    if large:
        assert modes == [("meta", False), ("real", False), ("meta", True)]
    oracle(original, model, result.plan, inputs)


class GreedyDecoder(torch.nn.Module):
    """Decodes until every sequence emits the end token (at most 8 steps), each step's argmax
    fed back through ``F.one_hot``, as SLANeXt's table decoder does. On real tensors
    ``one_hot`` reads its indices' range (``.item()`` calls of its own), on meta it does not:
    the replayed decisions must be the model's own, the loop's stop among them."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = torch.nn.Linear(4, 16), torch.nn.Linear(16, 5)
        self.cell = torch.nn.Linear(16 + 5, 16)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        chars = torch.zeros(x.shape[0], dtype=torch.long)
        steps = []
        for _ in range(8):
            fed = torch.nn.functional.one_hot(chars, 5).to(h.dtype)
            h = torch.tanh(self.cell(torch.cat([h, fed], -1)))
            logits = self.out(h)
            chars = logits.argmax(-1)
            steps.append(logits)
            if chars.eq(4).all():
                break
        return torch.stack(steps, 1)


def test_a_loop_the_data_stops_runs_as_often_in_the_plans_check():
    """The plan's check replays the loop's stop, not one_hot's own range checks: the pruned
    decoder is checked, and prunes exactly (the hidden width goes; with its units removed it
    decides otherwise, as the original with them zeroed does: the oracle)."""
    torch.manual_seed(0)
    model = GreedyDecoder().double().eval()
    with torch.no_grad():
        model.out.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    x = torch.randn(3, 4, dtype=torch.float64)
    steps = model(x).shape[1]
    assert 1 < steps < 8  # the data stops the loop, not its bound
    pruned, _ = prune_and_check(model, (x,))
    assert pruned.inp.out_features < 16


def counted_checks(monkeypatch) -> list:
    """A list that gets an item per trace of a plan's pruned shapes."""
    checks = []
    trace_pruned = dx.DependencyGraph.trace_pruned

    def counted(self, *args, **kwargs):
        checks.append(1)
        return trace_pruned(self, *args, **kwargs)

    monkeypatch.setattr(dx.DependencyGraph, "trace_pruned", counted)
    return checks


@pytest.mark.parametrize("kind", KINDS)
def test_a_detectors_plan_needs_no_second_trace(monkeypatch, kind):
    """The data's decisions (thresholds, top-k, NMS) are made on tensors whose sizes the plan
    leaves as they are (scores and boxes per anchor): a trace of the pruned shapes would
    replay them and see the original's sizes, so the plan is known from the code's sizes
    alone, traced once; traced all the same (the suite's check), it runs, and the oracle
    holds."""
    from depgraph_ext.pruning import validate

    checks = counted_checks(monkeypatch)
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    model, inputs = build(kind, nms="op"), ([image()],)
    dx.prune(copy.deepcopy(model), inputs, exact_only=True, progress=False)
    assert checks == []
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", True)
    original = copy.deepcopy(model)
    result = dx.prune(model, inputs, exact_only=True, progress=False)
    assert checks and result.params_after < result.params_before
    oracle(original, model, result.plan, inputs)


class SelectsRows(torch.nn.Module):
    """A selection of rows by a boolean mask (a decision of the data) of a tensor whose
    columns the plan prunes: a replay on meta needs the mask at its original shape, not the
    tensor, so the plan needs no second trace either."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h[h.sum(1) > 0.5])


def test_a_selection_of_rows_of_a_pruned_tensor_needs_no_second_trace(monkeypatch):
    from depgraph_ext.pruning import validate

    checks = counted_checks(monkeypatch)
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", False)
    torch.manual_seed(0)
    model, x = SelectsRows().double(), torch.randn(6, 4, dtype=torch.float64)
    decisions = dx.DependencyGraph(model, (x,)).graph.decisions
    assert [str(d.op) for d in decisions] == ["aten.index.Tensor"]
    dx.prune(copy.deepcopy(model), (x,), ratio=0.5, progress=False)
    assert checks == []
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", True)
    pruned, _ = prune_and_check(model, (x,), ratio=0.5)
    assert checks and pruned.a.out_features == 4
