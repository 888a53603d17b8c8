"""The public API: options, refusals (model untouched), tensor identity, and the lower level."""

from __future__ import annotations

import copy
import dataclasses
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.testing import assert_scatter_back_equal
from helpers import assert_same_state, prune_and_check, state_of
from nets import ResNeXt, randomize_norms


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return randomize_norms(ResNeXt(ch=16, blocks=2, cardinality=4, width=4)).double().eval()


X = torch.randn(2, 3, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "half", True])
def test_bad_ratio_is_refused_and_model_untouched(ratio):
    model = small_net()
    before = state_of(model)
    with pytest.raises(dx.InvalidArgumentError, match="ratio"):
        dx.prune(model, X, ratio=ratio)
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize(
    "options",
    [
        {"ratio": 0.4, "round_to": 2, "iterative_steps": 2, "max_ratio": 0.9, "min_units": 2},
        {"ratios": {"channels": 0.3}},
        {"ratio": None, "target_params": 0.6},
        {"ratio": None, "target_macs": 10_000},
    ],
)
def test_numpy_scalars_are_the_numbers_they_hold(options):
    """Ratios from ``np.linspace`` and counts of ``np.int64`` prune as the Python numbers do
    (an ``np.float32`` ratio was refused as no number)."""
    as_numpy = {
        k: (
            None
            if v is None
            else {n: np.float32(r) for n, r in v.items()}
            if isinstance(v, dict)
            else np.int64(v)
            if isinstance(v, int)
            else np.float32(v)
        )
        for k, v in options.items()
    }
    plain, numpy = small_net(), small_net()
    expected = dx.prune(plain, X, progress=False, **options)
    result = dx.prune(numpy, X, progress=False, **as_numpy)
    assert result.params_after == expected.params_after < expected.params_before
    kept = numpy.state_dict()
    for name, tensor in plain.state_dict().items():
        assert torch.equal(kept[name], tensor), name


@pytest.mark.parametrize("ignore", ["no.such.layer", ["stem.0", "blocks.9.conv1"]])
def test_unknown_ignore_name_is_refused(ignore):
    model = small_net()
    before = state_of(model)
    with pytest.raises(dx.InvalidArgumentError, match="names no module"):
        dx.prune(model, X, ignore=ignore)
    assert_same_state(before, state_of(model))


def test_foreign_module_in_ignore_is_refused():
    model = small_net()
    with pytest.raises(dx.InvalidArgumentError, match="not part of the model"):
        dx.prune(model, X, ignore=[nn.Linear(2, 2)])


@pytest.mark.parametrize("inputs", [torch.randn(2, 5, 8, 8), (torch.randn(2, 3),), {"y": X}])
def test_inputs_the_model_cannot_run(inputs):
    model = small_net()
    before = state_of(model)
    with pytest.raises(dx.TraceError, match="could not run"):
        dx.prune(model, inputs)
    assert_same_state(before, state_of(model))


def test_bad_inputs_type_and_options():
    model = small_net()
    before = state_of(model)
    with pytest.raises(dx.InvalidArgumentError, match="example_inputs"):
        dx.prune(model, 3.0)
    with pytest.raises(dx.InvalidArgumentError, match="importance"):
        dx.prune(model, X, importance="taylor-ish")
    with pytest.raises(dx.InvalidArgumentError, match="round_to"):
        dx.prune(model, X, round_to=0)
    with pytest.raises(dx.InvalidArgumentError, match="backend"):
        dx.prune(model, X, backend="gpu")
    with pytest.raises(dx.InvalidArgumentError, match=r"unknown option\(s\) \['ratoi'\]"):
        dx.prune(model, X, ratoi=0.3)
    with pytest.raises(dx.InvalidArgumentError, match="unknown option"):
        dx.Pruner(model, X, iterative_step=2)
    assert_same_state(before, state_of(model))


def test_the_options_are_in_the_signatures():
    import inspect

    fields = [f.name for f in dataclasses.fields(dx.PruneOptions)]
    for fn in (dx.prune, dx.Pruner):
        params = list(inspect.signature(fn).parameters)
        assert params[:3] == ["model", "example_inputs", "ratio"] and params[3:] == fields
    assert "global_pruning" in dx.prune.__doc__ and "require_loadable" in dx.prune.__doc__


def test_every_module_imports_by_its_dotted_name_and_none_import_each_other():
    """``import depgraph_ext.pruning.importance as x`` works (no sub-package is shadowed by a
    function of the facade), and the modules' imports, module-level or inside functions, form
    no cycle (package facades aside)."""
    import ast
    import importlib
    import pathlib

    root = pathlib.Path(dx.__file__).parent
    files = {}
    for f in root.rglob("*.py"):
        parts = ["depgraph_ext", *f.relative_to(root).with_suffix("").parts]
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    imports = {}
    for name, f in files.items():
        module = importlib.import_module(name)
        reached = dx  # what ``import depgraph_ext.a.b as x`` binds: attributes, one by one
        for part in name.split(".")[1:]:
            reached = getattr(reached, part)
        assert reached is module, f"depgraph_ext's attributes do not lead to {name}"
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets |= {base} | {f"{base}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        imports[name] = {t for t in targets if t in files and files[t].name != "__init__.py"}
    modules = [n for n, f in files.items() if f.name != "__init__.py"]

    def reaches(start, goal, seen):
        for t in imports[start]:
            if t == goal or (t not in seen and (seen.add(t) or reaches(t, goal, seen))):
                return True
        return False

    cyclic = [n for n in modules if reaches(n, n, set())]
    assert not cyclic, f"import cycles through {cyclic}"


def test_validation_failure_leaves_model_untouched(monkeypatch):
    model = small_net()
    before = state_of(model)
    from depgraph_ext.pruning import validate

    def refuse(*a, **k):
        raise dx.PlanValidationError("injected")

    monkeypatch.setattr(validate, "checked_plan", refuse)
    with pytest.raises(dx.PlanValidationError, match="injected"):
        dx.prune(model, X)
    assert_same_state(before, state_of(model))


def test_nothing_prunable_is_a_clear_error():
    model = nn.Linear(4, 3)
    with pytest.raises(dx.NoPrunableGroupsError, match="no group"):
        dx.prune(model, torch.randn(2, 4))


def _dynamically_quantized() -> nn.Module:
    quantize = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantize is None or not hasattr(quantize, "quantize_dynamic"):
        pytest.skip("this torch has no torch.ao.quantization.quantize_dynamic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (deprecated in the torch of these tests)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        return quantize.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.parametrize("kind", ["no layers with weights", "dynamically quantized"])
def test_a_model_without_parameters_is_refused_by_its_cause(kind, backend):
    """A model with no parameters at all (a quantized model's weights are packed, not
    parameters) is refused with that cause and the ops that block it, not an internal error."""
    if backend == "native" and not dx.ops.available():
        pytest.skip("native backend not built")
    if kind == "dynamically quantized":
        model = _dynamically_quantized()
    else:
        model = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool1d(2))
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.OpaqueOpWarning)
        with pytest.raises(dx.NoPrunableGroupsError, match="the model has no parameters") as e:
            dx.prune(model, torch.randn(2, 4), ratio=0.5, backend=backend, progress=False)
    if kind == "dynamically quantized":
        assert "quantized.linear_dynamic" in str(e.value)
    after = model.state_dict()
    assert before.keys() <= after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_identity_dtype_device_requires_grad_and_grads_kept():
    model = small_net()
    model.stem[0].weight.requires_grad_(False)
    params = {n: p for n, p in model.named_parameters()}
    model(X).sum().backward()
    result = dx.prune(model, X, ratio=0.5)
    for n, p in model.named_parameters():
        assert p is params[n]
        assert isinstance(p, nn.Parameter)
        assert p.dtype == torch.float64 and p.device.type == "cpu"
        if p.grad is not None:
            assert p.grad.shape == p.shape
    assert model.stem[0].weight.requires_grad is False
    assert model.blocks[0].conv1.weight.requires_grad is True
    assert "stem.0.weight" in result.plan
    model(X).sum().backward()  # still trainable


def test_ignore_keeps_tensors_whole_and_couplings_follow():
    model = small_net()
    original = copy.deepcopy(model)
    result = dx.prune(model, X, ratio=0.5, ignore=[model.blocks[0].conv1, "blocks.1.bn3.weight"])
    for name in ("blocks.0.conv1.weight", "blocks.1.bn3.weight"):
        assert name not in result.plan
    # The residual stream touches blocks.1.bn3: it is ignored as a whole, stem included.
    assert "stem.0.weight" not in result.plan or 0 not in result.plan["stem.0.weight"]
    assert_scatter_back_equal(original, model, result.plan, X)


def test_round_to_and_l1():
    model = small_net()
    dx.prune(model, X, ratio=0.3, round_to=4, importance="l1")
    for block in model.blocks:
        assert block.conv1.out_channels % 4 == 0


def test_l1_and_l2_rank_by_their_own_norm():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)

        def forward(self, x):
            return self.b(self.a(x))

    model = Two()
    with torch.no_grad():
        # unit 0: |w| = (3, 0, 0) -> l1 3, l2 9; unit 1: (1, 1, 1.5) -> l1 3.5, l2 4.25
        model.a.weight.copy_(torch.tensor([[3.0, 0.0], [1.0, 1.0]]))
        model.b.weight.copy_(torch.tensor([[0.0, 1.5]]))
    l1 = dx.prune(copy.deepcopy(model), torch.randn(1, 2), ratio=0.5, importance="l1")
    l2 = dx.prune(copy.deepcopy(model), torch.randn(1, 2), ratio=0.5, importance="l2")
    assert l1.plan["a.weight"][0].tolist() == [1]
    assert l2.plan["a.weight"][0].tolist() == [0]


def test_grouped_scores_sum_every_member():
    model = small_net()
    dg = dx.DependencyGraph(model, X)
    scores = dx.MagnitudeImportance(2).raw_scores(dg)
    params = dict(model.named_parameters())
    group = max(dg.groups, key=lambda g: len(g.members))
    expected = np.zeros(group.num_units)
    for m in group.members:
        if m.name not in params:
            continue  # buffers are not importance
        w = params[m.name].detach().double()
        others = [d for d in range(w.dim()) if d != m.dim]
        per_index = w.square().sum(dim=others) if others else w.square()
        np.add.at(expected, m.units.numpy(), per_index[m.indices].numpy())
    np.testing.assert_allclose(scores[group.unit_ids].numpy(), expected, rtol=1e-12)


def test_dependency_graph_groups_and_prune_one_group_by_hand():
    model = small_net()
    original = copy.deepcopy(model)
    dg = dx.DependencyGraph(model, X)
    assert dg.groups
    # conv1 feeds a conv of 4 groups: its 16 channels are [group, index in group], two groups.
    found = [
        (g, m)
        for g in dg.groups
        for m in g.members
        if m.name == "blocks.0.conv1.weight" and m.dim == 0
    ]
    assert len(found) == 2
    patterns = sorted(m.units.tolist() for _, m in found)
    assert patterns == sorted([[j % 4 for j in range(16)], [j // 4 for j in range(16)]])
    assert all(m.unit_size == 4 for _, m in found)
    group = next(g for g, m in found if m.units.tolist()[:4] == [0, 1, 2, 3])
    units = np.nonzero(group.prunable)[0][:2]
    result = dx.prune_group(dg, group, units)
    assert set(result.plan) >= {"blocks.0.conv1.weight", "blocks.0.bn1.weight"}
    assert result.params_after < result.params_before
    assert_scatter_back_equal(original, model, result.plan, X)
    with pytest.raises(dx.PruningError, match="built before"):
        dx.prune_group(dg, group, units)


def test_prune_group_refuses_bad_units():
    model = small_net()
    dg = dx.DependencyGraph(model, X)
    group = dg.groups[0]
    with pytest.raises(dx.InvalidArgumentError, match="units must be in"):
        dx.prune_group(dg, group, [group.num_units])
    with pytest.raises(dx.InvalidArgumentError, match="empty a layer"):
        dx.prune_group(dg, group, np.nonzero(group.prunable)[0])


def test_inputs_as_tuple_and_dict():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

        def forward(self, x, scale=None):
            return self.b(torch.relu(self.a(x)) * scale)

    x, s = torch.randn(4, 3, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    prune_and_check(Two().double(), (x, s), ratio=0.5)
    prune_and_check(Two().double(), {"x": x, "scale": s}, ratio=0.5)


def test_trace_on_meta_parameters_uses_no_weight_memory():
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(16)])  # 1 GiB in fp32
    tracemalloc.start()
    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.OpaqueOpWarning)
        dg = dx.DependencyGraph(model, torch.randn(2, 4096))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(dg.groups) == 15
    assert peak < 64 * 2**20, peak
    with pytest.raises(dx.PruningError, match="meta device"):
        dx.prune(model, torch.randn(2, 4096))


def test_model_output_pytree_and_shared_parameters():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)
            self.d = self.b  # the same module (and parameters) under two names

        def forward(self, x):
            h = torch.relu(self.a(x))
            return {"out": self.c(torch.relu(self.d(torch.relu(self.b(h))))), "aux": [h.sum()]}

    x = torch.randn(3, 3, dtype=torch.float64)
    pruned, result = prune_and_check(Tied().double(), x, ratio=0.5)
    assert pruned.b.weight is pruned.d.weight
    # one tensor under two state_dict keys: the plan names both, the second marked as tied
    assert result.tied == {"d.weight": "b.weight", "d.bias": "b.bias"}
    assert result.plan["d.weight"] is result.plan["b.weight"]
    assert "d.weight" not in result.tensors  # (each tensor once)


def test_summary_lists_changes():
    model = small_net()
    result = dx.prune(model, X, ratio=0.5)
    text = result.summary(max_rows=None)
    [row] = [line for line in text.splitlines() if line.startswith("stem.0 ")]
    assert "(16, 3, 3, 3)" in row and str(tuple(model.stem[0].weight.shape)) in row
    assert f"{result.params_before:,} -> {result.params_after:,}" in text and "time:" in text


def test_group_members_are_those_of_the_resolution_they_came_from():
    """Members are listed on first use; groups taken before the graph is resolved again (a
    size found fixed) list the members of their own resolution, the new groups theirs."""
    net = (
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
        .double()
        .eval()
    )
    x = torch.randn(3, 4, dtype=torch.float64)

    def listed(groups):
        return [
            [(m.name, m.dim, m.indices.tolist(), m.units.tolist()) for m in g.members]
            for g in groups
        ]

    expected = listed(dx.DependencyGraph(net, x).groups)
    dg = dx.DependencyGraph(net, x)
    taken = dg.groups
    assert len(taken) == 2 and all(g._members is None for g in taken)  # not listed yet
    blocked = dg.with_blocked(dg.coupling_model.value_slots[dg.graph.params["0.weight"]][:1])
    assert len(blocked.groups) == 1 and blocked.groups is not taken
    assert listed(taken) == expected  # listed now, from the resolution they came from
    assert listed(blocked.groups) == expected[1:]
    assert dg.groups is taken  # the first graph is as it was


def test_a_model_without_a_transformers_config_is_pruned_without_importing_transformers():
    """Importing transformers takes about a second: a model transformers did not build never
    pays for it (the config checks look for a config only where transformers is loaded)."""
    import subprocess
    import sys

    code = (
        "import sys, torch, depgraph_ext as dx\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
        "dx.prune(m, torch.randn(3, 4), ratio=0.5)\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--ratio", "1.5"], "ratio must be in [0, 1)"),
        (["--rows", "-3"], "argument --rows: must be 0 (all) or more"),
    ],
)
def test_the_demo_refuses_bad_options_in_one_line(argv, said, capsys):
    """A bad ratio ended the demo in a traceback; it is said as argparse says its own errors
    (exit status 2)."""
    from depgraph_ext.__main__ import main

    with pytest.raises(SystemExit) as ended:
        main(["--model", "mobilenet_v2", *argv])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


class _TakesOneDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, batch):
        return self.b(torch.relu(self.a(batch["x"] + batch["y"])))


class _TakesOneList(_TakesOneDict):
    def forward(self, batch):
        return self.b(torch.relu(self.a(batch[0] + batch[1])))


def test_a_dict_or_list_the_model_takes_whole_is_refused_saying_how_to_give_it():
    """A dict is keyword inputs and a list positional ones: where the model's forward takes
    one dict (or one list) the refusal says to give it as (inputs,), which then prunes."""
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    for make, inputs, unpacked in (
        (_TakesOneDict, {"x": x, "y": y}, "keyword"),
        (_TakesOneList, [x, y], "positional"),
    ):
        model = make()
        before = state_of(model)
        with pytest.raises(dx.TraceError, match=rf"is {unpacked} inputs; .* pass \(inputs,\)"):
            dx.prune(model, inputs, ratio=0.5)
        assert_same_state(before, state_of(model))
        result = dx.prune(model, (inputs,), ratio=0.5)
        assert result.params_after < result.params_before
