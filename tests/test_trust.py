"""Results users can keep and check: plans saved as JSON and replayed bit for bit on a freshly
built original; the dependency graph as DOT; refusals that leave the model as it was."""

from __future__ import annotations

import copy
import json
import shutil
import threading
import time
import warnings

import pytest
import torch

import depgraph_ext as dx
from depgraph_ext.testing import assert_kept_bit_identical, assert_scatter_back_equal, outputs_of
from helpers import assert_same_state, prune_and_check, state_of
from nets import ResNeXt, randomize_norms

X = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def resnext():
    torch.manual_seed(0)
    return randomize_norms(ResNeXt(ch=16, blocks=2, cardinality=4, width=4)).double().eval()


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module, inputs) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k
    for (na, ma), (nb, mb) in zip(a.named_modules(), b.named_modules()):
        assert na == nb
        public = {k: v for k, v in vars(ma).items() if not k.startswith("_")}
        assert public == {k: v for k, v in vars(mb).items() if not k.startswith("_")}, na
    for x, y in zip(outputs_of(a, inputs), outputs_of(b, inputs)):
        assert torch.equal(x, y)


def test_saved_plan_replays_bit_for_bit(tmp_path):
    original = resnext()
    pruned = copy.deepcopy(original)
    result = dx.prune(pruned, X, ratio=0.9)  # (0.9: whole conv groups go too)
    path = result.save_plan(tmp_path / "plan.json")
    data = json.loads(path.read_text())  # plain JSON: no pickle
    assert data["format"].startswith("depgraph_ext.plan/")
    assert any(u["attr"] == "groups" for u in data["attributes"])
    fresh = copy.deepcopy(original)
    dx.apply_plan(fresh, path)
    assert_same_model(fresh, pruned, X)


def test_saved_plan_replays_a_transformers_config(tmp_path):
    T = pytest.importorskip("transformers")
    config = T.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    original = T.LlamaForCausalLM(config).double().eval()
    ids = {"input_ids": torch.randint(0, 64, (1, 6))}
    pruned = copy.deepcopy(original)
    result = dx.prune(pruned, ids, ratio=0.5, ratios={"hidden": 0.25})
    result.save_plan(tmp_path / "plan.json")
    fresh = copy.deepcopy(original)
    dx.apply_plan(fresh, tmp_path / "plan.json")
    assert fresh.config.to_dict() == pruned.config.to_dict()
    assert_same_model(fresh, pruned, ids)


def test_replay_refuses_the_wrong_model_and_leaves_it_alone(tmp_path):
    pruned = resnext()
    dx.prune(pruned, X, ratio=0.5).save_plan(tmp_path / "plan.json")
    other = randomize_norms(ResNeXt(ch=16, blocks=2, cardinality=2, width=8)).double()
    before = state_of(other)
    with pytest.raises(dx.PruningError, match="plan was made for"):
        dx.apply_plan(other, tmp_path / "plan.json")
    assert_same_state(before, state_of(other))
    already = copy.deepcopy(pruned)
    with pytest.raises(dx.PruningError, match="apply it to the original"):
        dx.apply_plan(already, tmp_path / "plan.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(dx.InvalidArgumentError, match="not a depgraph_ext plan"):
        dx.apply_plan(resnext(), tmp_path / "bad.json")
    with pytest.raises(dx.InvalidArgumentError, match="cannot read a plan"):
        dx.apply_plan(resnext(), tmp_path / "missing.json")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_name(value):
    model = resnext()
    with torch.no_grad():
        model.blocks[1].conv2.weight[0, 0, 0, 0] = value
    before = state_of(model)
    with pytest.raises(dx.NonFiniteWeightsError, match="blocks.1.conv2.weight"):
        dx.prune(model, X, ratio=0.5)
    assert_same_state(before, state_of(model))


def test_dot_export_lists_every_group_and_member(tmp_path):
    dg = dx.DependencyGraph(resnext(), X)
    dot = dg.to_dot()
    assert dot.startswith("digraph") and dot.count("subgraph cluster_") == len(dg.groups)
    for g in dg.groups:
        assert f"group {g.index}: {g.kind}" in dot
        for m in g.members:
            assert f"{m.name}[{m.dim}]" in dot
    if shutil.which("dot") is None:
        with pytest.raises(dx.PruningError, match="graphviz"):
            dg.render(tmp_path / "g.svg")
    else:
        svg = dg.render(tmp_path / "g.svg").read_text()
        assert "<svg" in svg and "blocks.0.conv1.weight" in svg


@pytest.mark.parametrize(
    "ratios, match",
    [
        ({"attention": 0.5}, "neither group kinds"),
        ({"heads": 1.5}, r"ratios\['heads'\]"),
        ([0.5], "must be a dict"),
    ],
)
def test_bad_per_kind_ratios(ratios, match):
    model = resnext()
    before = state_of(model)
    with pytest.raises(dx.InvalidArgumentError, match=match):
        dx.prune(model, X, ratios=ratios)
    assert_same_state(before, state_of(model))


def test_not_a_module():
    with pytest.raises(dx.InvalidArgumentError, match="torch.nn.Module"):
        dx.prune(lambda x: x, X)


@pytest.mark.parametrize("where", ["model", "inside"])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_is_refused_by_name_and_left_alone(how, where):
    """A TorchScript module runs compiled code no trace follows (it failed with an internal
    error): refused, naming the module, the model unchanged."""
    torch.manual_seed(0)
    x = torch.randn(2, 8)
    inner = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    scripted = torch.jit.script(inner) if how == "script" else torch.jit.trace(inner, x)
    model = scripted if where == "model" else torch.nn.Sequential(torch.nn.Linear(8, 8), scripted)
    before = {n: (t, t.detach().clone()) for n, t in model.named_parameters()}
    match = "the model is TorchScript" if where == "model" else "its module '1' is TorchScript"
    with pytest.raises(dx.InvalidArgumentError, match=match):
        dx.prune(model, x, ratio=0.5)
    for name, t in model.named_parameters():
        assert t is before[name][0] and torch.equal(t, before[name][1])


def test_a_lazy_module_not_run_yet_is_refused_by_name():
    """Its parameters have no shape until a forward (an internal error before); once run, it
    prunes as the layer it became."""
    model = torch.nn.Sequential(torch.nn.LazyLinear(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(3, 8)
    with pytest.raises(
        dx.InvalidArgumentError,
        match=r"0\.weight is not initialized yet.*run model\(inputs\) first",
    ):
        dx.prune(model, x, ratio=0.5)
    assert torch.nn.parameter.is_lazy(model[0].weight)
    model(x)
    dx.prune(model, x, ratio=0.5)
    assert model[0].weight.shape == (8, 8)


def test_ignoring_everything_leaves_nothing_to_prune():
    model = resnext()
    with pytest.raises(dx.NoPrunableGroupsError):
        dx.prune(model, X, ignore=[model])


def test_frozen_weights_and_dtypes_survive():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        model = resnext().to(dtype)
        for p in model.stem.parameters():
            p.requires_grad_(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dx.prune(model, X.to(dtype), ratio=0.5)
        assert all(p.dtype == dtype for p in model.parameters())
        assert all(not p.requires_grad for p in model.stem.parameters())
        assert model(X.to(dtype)).dtype == dtype


def test_pruned_model_saves_exports_and_compiles(tmp_path):
    model = resnext()
    dx.prune(model, X, ratio=0.5)
    expected = model(X)
    torch.save(model, tmp_path / "model.pt")
    again = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(again(X), expected)
    exported = torch.export.export(model, (X,))
    assert torch.allclose(exported.module()(X), expected, rtol=1e-12, atol=1e-12)
    compiled = torch.compile(model, backend="aot_eager")
    assert torch.allclose(compiled(X), expected, rtol=1e-12, atol=1e-12)


class _CompiledInside(torch.nn.Module):
    def __init__(self, backend) -> None:
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(8, 16), torch.nn.Linear(16, 16),
                                  torch.nn.Linear(16, 4))  # fmt: skip
        self.mid = torch.compile(
            torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh()), backend=backend
        )

    def forward(self, x):
        return self.c(torch.relu(self.b(self.mid(torch.relu(self.a(x))))))


@pytest.mark.parametrize("where", ["the model", "a module inside"])
def test_a_compiled_model_is_traced_as_the_python_it_runs(where):
    """``torch.compile`` d code runs eagerly while a prune traces and checks it: nothing is
    compiled during the prune (compiling under the trace took 20 s for three linear layers
    and warned about the trace's own code), no warning reaches the user, and the pruned
    model, compiled again for its new shapes when called, computes the zeroed original's
    outputs."""
    from depgraph_ext.testing import assert_scatter_back_equal

    compiled: list = []

    def counting(graph_module, example_inputs):
        compiled.append(graph_module)
        return graph_module.forward

    torch.manual_seed(0)
    model = _CompiledInside(counting).double()
    if where == "the model":
        model = torch.compile(model, backend=counting)
    x = torch.randn(2, 8, dtype=torch.float64)
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = dx.prune(model, x, ratio=0.5, exact_only=True, verify=True)
    assert compiled == []
    assert result.params_after < result.params_before
    assert_scatter_back_equal(original, model, result, x)
    assert compiled  # (the pruned model compiles as it did)


@pytest.mark.parametrize("options", [{}, {"in_place": True}, {"verify": True}])
def test_a_prune_under_inference_mode_is_the_prune_outside_it(options):
    """Under ``torch.inference_mode()``, with inputs made there, torch hands a dispatch mode
    composite ops whole on those tensors (aten.linear: no rule, every channel blocked), and
    tensors made there can never be trained. The prune is the one made outside it, and the
    pruned weights train."""
    plans = []
    for inference in (False, True):
        torch.manual_seed(0)
        model = resnext()
        with torch.inference_mode(inference):
            x = X.clone()
            result = dx.prune(model, x, ratio=0.5, **options)
        plans.append(
            {n: {d: i.tolist() for d, i in dims.items()} for n, dims in result.plan.items()}
        )
        assert not any(p.is_inference() for p in model.parameters())
    assert plans[0] == plans[1]
    model(X).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


STAGES = [
    ("depgraph_ext.graph.dependency", "trace"),
    ("depgraph_ext.graph.dependency", "build_couplings"),
    ("depgraph_ext.graph.dependency", "resolve"),
    ("depgraph_ext.pruning.criteria", "unit_scores"),
    ("depgraph_ext.pruning.select", "select"),
    ("depgraph_ext.pruning.plan", "attribute_updates"),
    ("depgraph_ext.pruning.validate", "validate_plan"),
    ("depgraph_ext.pruning.plan", "config_updates"),
    ("depgraph_ext.ops", "gather_slices"),  # native slicing
    ("depgraph_ext.pruning.apply", "gather"),  # python slicing
]


class Injected(RuntimeError):
    pass


@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.parametrize("module, name", STAGES)
def test_a_failure_at_any_stage_leaves_the_model_as_it_was(monkeypatch, module, name, backend):
    import importlib

    if (module, name) == ("depgraph_ext.ops", "gather_slices") and backend == "python":
        pytest.skip("the python backend slices with index_select")
    model = resnext()
    model(X).sum().backward()  # gradients are state too
    before = state_of(model)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    def fail(*args, **kwargs):
        raise Injected(f"injected into {name}")

    monkeypatch.setattr(importlib.import_module(module), name, fail)
    with pytest.raises((Injected, dx.InternalError)) as info:  # a failure before apply is ours
        dx.prune(model, X, ratio=0.5, backend=backend)
    assert isinstance(info.value, Injected) or isinstance(info.value.__cause__, Injected)
    assert_same_state(before, state_of(model))
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n


class _ZeroWidthMLP(torch.nn.Module):
    """A residual MLP of width 0 (diffusers rounds a small MLP's width down to a multiple of
    128) beside a function-changing stream (a layer norm over it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)
        self.up, self.down = torch.nn.Linear(16, 0), torch.nn.Linear(0, 16)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        h = self.a(x)
        h = h + self.down(torch.relu(self.up(h)))
        return self.b(torch.relu(self.norm(h)))


def test_a_dim_of_size_zero_is_listed_and_pruned_around():
    """Listing the groups, for the warning about function-changing ones, failed on a dim of
    size 0 (an IndexError) after the model had been changed. The listing skips such dims,
    and runs before anything changes."""
    torch.manual_seed(0)
    model = _ZeroWidthMLP().double()
    x = torch.randn(2, 8, dtype=torch.float64)
    with pytest.warns(dx.FunctionChangingWarning, match="layer_norm|norm"):
        result = dx.prune(model, x, ratio=0.5)
    assert model.a.out_features == 8 and model.up.weight.shape == (0, 8)
    assert result.params_after < result.params_before and model(x).shape == (2, 4)


def test_the_groups_are_described_before_anything_changes(monkeypatch):
    from depgraph_ext.graph.dependency import Group

    def fail(self):
        raise Injected("describe")

    torch.manual_seed(0)
    model = _ZeroWidthMLP().double()  # (its stream is function-changing: described)
    before = state_of(model)
    monkeypatch.setattr(Group, "describe", fail)
    with pytest.raises((Injected, dx.InternalError)):
        dx.prune(model, torch.randn(2, 8, dtype=torch.float64), ratio=0.5)
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("in_place", [False, True])
def test_a_channels_last_model_stays_channels_last(in_place):
    """A model set to ``channels_last`` for speed got its pruned convolution weights back
    contiguous (the values right, the layout lost, silently): they keep the layout now,
    gradients too."""
    from depgraph_ext.testing import assert_scatter_back_equal

    def layouts(model):
        return {
            n: p.is_contiguous(memory_format=torch.channels_last)
            for n, p in model.named_parameters()
            if p.dim() == 4
        }

    model = resnext().to(memory_format=torch.channels_last)
    x = X.to(memory_format=torch.channels_last)
    model(x).sum().backward()
    original = copy.deepcopy(model)
    assert all(layouts(original).values())
    result = dx.prune(model, x, ratio=0.5, exact_only=True, in_place=in_place)
    assert all(layouts(model).values())
    assert all(
        p.grad.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
        if p.dim() == 4
    )
    model.zero_grad()
    original.zero_grad()
    assert_scatter_back_equal(original, model, result, x)


def test_in_place_mode_matches_the_default():
    a, b = resnext(), resnext()
    ra = dx.prune(a, X, ratio=0.5)
    rb = dx.prune(b, X, ratio=0.5, in_place=True)
    assert {k: {d: v.tolist() for d, v in dims.items()} for k, dims in ra.plan.items()} == {
        k: {d: v.tolist() for d, v in dims.items()} for k, dims in rb.plan.items()
    }
    assert_same_model(a, b, X)


class _Scheduler:
    """A plain object a model keeps (a diffusion scheduler), whose tensors its forward moves
    to the input's device (diffusers' consistency decoder does)."""

    def __init__(self) -> None:
        self.scale = torch.linspace(0.5, 1.5, 4, dtype=torch.float64)

    def follow(self, device) -> None:
        self.scale = self.scale.to(device)
        self.seen = torch.zeros(1, device=device)  # (and one it adds)


class _WithScheduler(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scheduler = _Scheduler()
        self.fc1, self.fc2 = torch.nn.Linear(4, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        self.scheduler.follow(x.device)
        y = torch.relu(self.fc1(x))
        if bool(x.sum() > -1e9):  # a decision of the data: the plan is checked on meta tensors
            y = y * 2
        b, c = y.shape  # (a size read: a trace of the pruned shapes)
        return self.fc2(y.reshape(b, c)) * self.scheduler.scale


def test_tensors_of_plain_objects_the_model_keeps_are_left_as_they_were():
    """A trace on meta tensors ran the forward's ``self.scale = self.scale.to(device)`` on a
    scheduler object (no module), which kept the meta tensor: the pruned model could not
    run. Tensors of objects a module holds are put back after every trace, and those the
    forward added removed."""
    torch.manual_seed(0)
    model = _WithScheduler().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    scale = model.scheduler.scale
    dx.prune(model, x, ratio=0.5)
    assert model.scheduler.scale is scale and not hasattr(model.scheduler, "seen")
    assert model(x).shape == (2, 4)


class _TokenMlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, ids):
        return self.down(torch.relu(self.up(self.embed(ids))))


def _double_mlp():
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    ).double()


@pytest.mark.parametrize(
    "build, inputs, good, cause",
    [
        (
            _TokenMlp,
            torch.tensor([[1, 12]]),
            torch.tensor([[1, 2]]),
            r"op aten\.embedding\.default.*IndexError: index out of range",
        ),
        (
            _double_mlp,
            torch.ones(2, 8),
            torch.ones(2, 8, dtype=torch.float64),
            r"op aten\.addmm\.default.*must have the same dtype",
        ),
    ],
)
def test_inputs_the_model_cannot_run_on_are_named_in_a_warning(build, inputs, good, cause):
    """The model's own kernels refuse the inputs (a token past the vocabulary, float inputs
    to a float64 model); meta kernels check less and the trace went on there without a word.
    It still prunes by the shapes it saw, and says why its own kernels refused, pointing at
    the caller's line; inputs it runs on prune silently."""
    torch.manual_seed(0)
    model = build()
    with pytest.warns(dx.ExampleInputsWarning, match=cause) as caught:
        result = dx.prune(model, inputs, ratio=0.5)
    assert caught[0].filename == __file__
    assert result.plan and result.params_after < result.params_before
    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.ExampleInputsWarning)
        dx.prune(build(), good, ratio=0.5)


class _TwoPaths(torch.nn.Module):
    """Text tokens, and optionally image features projected into the same stream; an
    auxiliary head only the training mode runs (as GoogLeNet's)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 16)
        self.vision, self.projector = torch.nn.Linear(12, 24), torch.nn.Linear(24, 16)
        self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
        self.head, self.aux = torch.nn.Linear(16, 20), torch.nn.Linear(32, 20)

    def forward(self, ids, pixels=None):
        h = self.embed(ids)
        if pixels is not None:
            h = torch.cat([self.projector(torch.relu(self.vision(pixels))), h], 1)
        inner = torch.relu(self.up(h))
        h = h + self.down(inner)
        if self.training:
            return self.head(h), self.aux(inner)
        return self.head(h)


def test_parameters_the_forward_did_not_use_are_named_in_a_warning():
    """A path the example inputs do not run (the image one) or only training runs (the
    auxiliary head) is not traced: its parameters keep their shapes while widths they share
    shrink, and that path fails after the prune. This was silent; it is said now, naming them,
    and inputs that run every path prune with nothing to say."""
    ids, pixels = torch.tensor([[1, 2, 3]]), torch.randn(1, 2, 12)
    torch.manual_seed(0)
    model = _TwoPaths().eval()
    with pytest.warns(
        dx.UnusedParametersWarning,
        match=r"^6 parameter\(s\).*: module vision, module projector, module aux\.",
    ) as caught:
        dx.prune(model, {"ids": ids}, ratio=0.5)
    assert caught[0].filename == __file__
    with pytest.raises(RuntimeError):
        model(ids, pixels)  # (what the warning is about)
    torch.manual_seed(0)
    model = _TwoPaths().eval()
    with pytest.warns(dx.UnusedParametersWarning, match=r"^2 parameter\(s\).*: module aux\."):
        dx.prune(model, {"ids": ids, "pixels": pixels}, ratio=0.5)
    assert model(ids, pixels).shape == (1, 5, 20)


def test_a_model_in_training_mode_keeps_what_its_training_only_paths_read():
    """Pruned in training mode, the forward is traced in that mode too where the eval one
    leaves parameters unused: the auxiliary head reads the MLP's inner units, which are kept
    whole (said), the rest prunes, and the pruned model trains: in training mode it computes
    what the original computes with the removed units zeroed, auxiliary output included."""
    ids, pixels = torch.tensor([[1, 2, 3]]), torch.randn(1, 2, 12)
    torch.manual_seed(0)
    model = _TwoPaths().double().train()
    inputs = {"ids": ids, "pixels": pixels.double()}
    with pytest.warns(
        dx.UnusedParametersWarning,
        match=r"only the training mode uses: module aux\. The widths they read are kept whole "
        r"\(down\.weight\[1\], up\.bias\[0\], up\.weight\[0\]\)",
    ) as caught:
        pruned, result = prune_and_check(model, inputs, ratio=0.5)
    assert not any("not used by the forward" in str(w.message) for w in caught)
    assert pruned.up.out_features == 32 and pruned.embed.embedding_dim == 8
    assert pruned.training and pruned(**inputs)[1].shape == (1, 5, 20)


class _WritesItsInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        x.mul_(2)  # (the caller's tensor, in place)
        return self.down(torch.relu(self.up(x)))


def test_a_model_writing_its_inputs_in_place_verifies_and_the_inputs_stay():
    """verify=True ran its two forwards on the same input tensors, the second on what the
    first left (doubled): a VerificationError asked to report the model. Each forward of the
    checks, and of the oracle, gets inputs of its own, and the caller's are left as they were."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, dtype=torch.float64)
    before = x.clone()
    pruned, result = prune_and_check(_WritesItsInput().double(), x, ratio=0.5, verify=True)
    assert torch.equal(x, before) and pruned.up.out_features == 8
    assert result.verify(x) < 1e-12 and torch.equal(x, before)


def test_a_default_device_set_elsewhere_changes_nothing_and_is_put_back():
    """Under ``torch.set_default_device("meta")`` the library's own tensors were made on meta
    and the plan failed with an internal error. The prune is the plain one, the weights stay
    on the CPU, and the caller's default device is theirs again, after an error too."""
    torch.manual_seed(0)
    model = resnext()
    expected = dx.prune(copy.deepcopy(model), X, ratio=0.5).plan
    torch.set_default_device("meta")
    try:
        result = dx.prune(model, X, ratio=0.5)
        assert torch.get_default_device().type == "meta"
        with pytest.raises(dx.InvalidArgumentError):
            dx.prune(model, X, ratio=1.5)
        assert torch.get_default_device().type == "meta"
    finally:
        torch.set_default_device(None)
    assert result.plan.keys() == expected.keys()
    for name, dims in expected.items():
        assert all(torch.equal(result.plan[name][d], kept) for d, kept in dims.items())
    assert all(p.device.type == "cpu" for p in model.parameters())


class _OneBlock(torch.nn.Module):
    """Two layers whose weights are cut from one block of memory (views of one storage), as
    code that splits a fused weight, or keeps every parameter in one flat buffer, makes."""

    def __init__(self):
        super().__init__()
        block = torch.randn(32, 8, dtype=torch.float64)
        self.a = torch.nn.Linear(8, 16, dtype=torch.float64)
        self.b = torch.nn.Linear(8, 16, dtype=torch.float64)
        self.a.weight, self.b.weight = (
            torch.nn.Parameter(block[:16]),
            torch.nn.Parameter(block[16:]),
        )
        self.out = torch.nn.Linear(32, 4, dtype=torch.float64)

    def forward(self, x):
        return self.out(torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], 1))


@pytest.mark.parametrize("in_place", [False, True])
def test_weights_sharing_one_storage_prune_in_place_without_touching_each_other(in_place):
    """In place, the first weight was compacted and its storage cut to its pruned size: the
    second weight, further along the same storage, lost its values (silently: its kept slices
    were no longer the original's). Weights sharing a storage get memory of their own; the
    others are compacted in place as before."""
    torch.manual_seed(0)
    model = _OneBlock()
    original = copy.deepcopy(model)  # (values only: a deep copy does not share storages)
    storage = model.a.weight.untyped_storage().data_ptr()
    assert model.b.weight.untyped_storage().data_ptr() == storage
    x = torch.randn(3, 8, dtype=torch.float64)
    result = dx.prune(model, x, ratio=0.5, in_place=in_place)
    assert model.a.out_features + model.b.out_features == 16 and "out.weight" in result.plan
    assert_kept_bit_identical(original, model, result)
    assert_scatter_back_equal(original, model, result, x)


class _Slow(torch.nn.Module):
    """Reads an attribute of its own (the trace's spy patches its class) and sleeps mid-forward,
    so that a second thread's prune starts while the first is tracing."""

    def __init__(self):
        super().__init__()
        self.scale = 2
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        time.sleep(0.02)
        return self.down(torch.relu(self.up(x)) * self.scale)


def test_prunes_in_two_threads_do_not_undo_each_others_patches():
    """A trace patches process-wide state (its classes' attribute lookup, global hooks): two
    threads tracing at once each put back what the other had patched, and a class was left
    with the spy for good. Traces take turns; both plans are the plain one."""
    torch.manual_seed(0)
    model, x = _Slow(), torch.randn(3, 8)
    expected = dx.prune(copy.deepcopy(model), x, ratio=0.5).plan
    plans, errors = [], []

    def work():
        try:
            for _ in range(3):
                plans.append(dx.prune(copy.deepcopy(model), x, ratio=0.5).plan)
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(plans) == 6
    for plan in plans:
        assert plan.keys() == expected.keys()
        assert all(torch.equal(plan[n][d], expected[n][d]) for n in expected for d in expected[n])
    assert "__getattribute__" not in vars(_Slow)


class _DrawsNoise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x + 1e-3 * torch.randn_like(x))))


@pytest.mark.parametrize("options", [{}, {"verify": True}])
def test_a_prune_leaves_the_callers_random_stream_where_it_was(options):
    """The traces ran the forward's random draws on the caller's generator: a seeded script
    drew other numbers after a prune than without one."""
    torch.manual_seed(123)
    model, x = _DrawsNoise(), torch.randn(3, 8)
    state = torch.get_rng_state()
    dx.prune(model, x, ratio=0.5, **options)
    assert torch.equal(torch.get_rng_state(), state)


class _DeviceProbe(torch.nn.Module):
    """An empty parameter kept to find the model's device, a scalar only training uses."""

    def __init__(self):
        super().__init__()
        self.probe = torch.nn.Parameter(torch.empty(0))
        self.temperature = torch.nn.Parameter(torch.tensor(1.0))
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.down(torch.relu(self.up(x.to(self.probe.device))))


def test_unused_parameters_without_a_width_are_not_warned_about():
    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.UnusedParametersWarning)
        result = dx.prune(_DeviceProbe().train(), torch.randn(3, 8), ratio=0.5)
    assert result.plan


class _OpaqueTrainingHead(_TwoPaths):
    """The auxiliary head reads the inner units through an op no rule knows (a QR
    decomposition), only in training."""

    def forward(self, ids, pixels=None):
        h = self.embed(ids)
        inner = torch.relu(self.up(h))
        out = self.head(h + self.down(inner))
        if self.training:
            q, _ = torch.linalg.qr(inner.transpose(-1, -2))
            return out, self.aux(q.transpose(-1, -2))
        return out


def test_a_training_path_through_an_op_without_a_rule_is_said_not_followed():
    """What the training mode reads through an op without a rule cannot be followed: the
    auxiliary head is named as unused with that reason, and nothing is kept for it by a
    guess."""
    torch.manual_seed(0)
    model = _OpaqueTrainingHead().train()
    with pytest.warns(
        dx.UnusedParametersWarning,
        match=r"module vision, module projector, module aux\..*training forward runs an op "
        r"without a rule: op aten\.linalg_qr",
    ):
        dx.prune(model, {"ids": torch.tensor([[1, 2, 3]])}, ratio=0.5)


def test_a_distributed_wrapper_is_refused_and_its_module_prunes_and_trains_rewrapped(tmp_path):
    """DistributedDataParallel holds gradient buckets of its parameters' sizes (a prune through
    it left training with no gradients, then a DDP error): refused by name, the model as it
    was; its module prunes, and a new wrapper trains the pruned one."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        inner = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        wrapped = torch.nn.parallel.DistributedDataParallel(inner)
        x = torch.randn(3, 8)
        before = {n: (t, t.detach().clone()) for n, t in inner.named_parameters()}
        with pytest.raises(dx.InvalidArgumentError, match="the model is a DistributedDataParallel"):
            dx.prune(wrapped, x, ratio=0.5)
        outer = torch.nn.Sequential(wrapped)
        with pytest.raises(dx.InvalidArgumentError, match="its module '0' is a DistributedData"):
            dx.prune(outer, x, ratio=0.5)
        for name, t in inner.named_parameters():
            assert t is before[name][0] and torch.equal(t, before[name][1])
        from torch.distributed.fsdp import fully_shard

        sharded = fully_shard(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)))
        with pytest.raises(dx.InvalidArgumentError, match="is a FSDPModule.*before fully_shard"):
            dx.prune(sharded, x, ratio=0.5)
        dx.prune(wrapped.module, x, ratio=0.5)
        rewrapped = torch.nn.parallel.DistributedDataParallel(inner)
        rewrapped(x).sum().backward()
        assert [tuple(p.grad.shape) for p in inner.parameters()] == [(8, 8), (8,), (4, 8), (4,)]
    finally:
        dist.destroy_process_group()
