"""Numbers the model's code computes from a size it read (torchvision's RAFT divides its
correlation volume by ``sqrt(tensor(num_channels))``, ``num_channels`` read from a feature
map): pruning that size changes what the kept units compute, though every shape runs. The
validation compares the numbers every op computes with in the original and the pruned trace
(graph/op_numbers.py) and keeps the sizes behind a number that changes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.errors import FixedSizeWarning
from depgraph_ext.graph import op_numbers, size_watch
from depgraph_ext.pruning import validate
from depgraph_ext.testing import assert_scatter_back_equal


class ScaledByWidth(nn.Module):
    """conv a -> relu -> conv b -> scaled by a number computed from b's channel count (or,
    with ``how="spatial"``/``"literal"``, from a size no plan prunes, or none) -> head."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        channels = y.shape[1]
        if self.how == "constant":  # RAFT's way
            y = y / torch.sqrt(torch.tensor(channels, dtype=y.dtype))
        elif self.how == "float":
            y = y * channels**-0.5
        elif self.how == "int":
            y = y / channels
        elif self.how == "fill":
            y = y + torch.full((1, 1, 1, 1), 1.0 / channels, dtype=y.dtype)
        elif self.how == "spatial":
            y = y / y.shape[-1]
        else:
            y = y * 0.5
        return self.head(y)


def _pruned(how: str, **options):
    torch.manual_seed(0)
    model = ScaledByWidth(how).double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    original = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dx.prune(model, x, ratio=0.5, progress=False, **options)
    return original, model, result, x, [w for w in caught if w.category is FixedSizeWarning]


@pytest.mark.parametrize("how", ["constant", "float", "int", "fill"])
def test_a_number_computed_from_a_pruned_size_keeps_that_size(how, backend):
    original, model, result, x, fixed = _pruned(how, exact_only=True, backend=backend)
    assert model.b.out_channels == 8  # the size the number is computed from: kept
    assert model.a.out_channels == 4  # the rest still prunes
    assert_scatter_back_equal(original, model, result, x)
    (warning,) = fixed
    message = str(warning.message)
    assert "computes a number from a size the plan prunes" in message
    assert "test_numbers_from_sizes.py" in message  # the model's line


@pytest.mark.parametrize("path", ["stand-ins", "fake"])
@pytest.mark.parametrize("how", ["constant", "float", "int", "fill"])
def test_traced_as_a_large_model_a_number_from_a_pruned_size_keeps_that_size(
    how, path, monkeypatch
):
    """As a model over the real trace's size is traced: on meta tensors standing in for CPU
    ones (the validation's trace saw RAFT's ``tensor(num_channels)`` as a tensor it knew,
    its meta copy made it so), or on fake ones (where a fused path needs them: the constant's
    values were read under the fake mode, which gave none). Neither compared that number, the
    channels pruned, and the oracle failed."""
    from depgraph_ext.graph import trace

    monkeypatch.setattr(trace, "REAL_TRACE_MAX_BYTES", 0)
    if path == "fake":
        monkeypatch.setattr(trace, "_meta_stands_in", lambda *args: False)
    original, model, result, x, fixed = _pruned(how, exact_only=True)
    assert model.b.out_channels == 8 and model.a.out_channels == 4
    assert_scatter_back_equal(original, model, result, x)
    assert len(fixed) == 1


@pytest.mark.parametrize("how", ["constant", "int"])
def test_without_the_comparison_the_plan_changes_the_function(how, monkeypatch):
    """What the comparison prevents: the same plan with it switched off prunes b's channels,
    and the pruned model no longer computes the zeroed original's outputs."""
    monkeypatch.setattr(validate, "_check_numbers", lambda *args: None)
    original, model, result, x, _ = _pruned(how, exact_only=True)
    assert model.b.out_channels == 4
    with pytest.raises(AssertionError, match="not close"):
        assert_scatter_back_equal(original, model, result, x)


def test_the_default_prune_keeps_it_too():
    """Not only under exact_only: a default prune would change the function silently."""
    original, model, result, x, fixed = _pruned("constant")
    assert model.b.out_channels == 8 and len(fixed) == 1
    assert_scatter_back_equal(original, model, result, x)


@pytest.mark.parametrize("how", ["spatial", "literal"])
def test_numbers_no_plan_changes_block_nothing(how):
    original, model, result, x, fixed = _pruned(how, exact_only=True)
    assert model.b.out_channels == 4 and model.a.out_channels == 4
    assert not fixed
    assert_scatter_back_equal(original, model, result, x)


def _mean_over_channels(x):
    """A mean over dim 1 written as torch.nn.functional writes its functions: torch hands a
    function mode the call whole, and the body runs with the mode off, so the size it reads
    is not seen where it is read (``F.multilabel_soft_margin_loss`` divides by its class
    count so)."""
    if torch.overrides.has_torch_function_unary(x):
        return torch.overrides.handle_torch_function(_mean_over_channels, (x,), x)
    return x.sum(1, keepdim=True) / x.size(1)


class MeanInAFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return self.head(y) + _mean_over_channels(y)


def test_a_size_read_inside_a_torch_function_of_python_keeps_its_number():
    """A Python function torch dispatches whole (its body unwatched) reads every size of the
    tensors it is given, as far as the plan's validation knows: the plan is traced, the
    number the body divides by is compared, and the channels it counts are kept. (Before,
    b's channels were pruned and the pruned model divided by 4 where the original divides
    by 8: a silent change.) Functions torch.nn.functional runs whose bodies read no size a
    plan prunes are listed (graph/size_watch.py) and cost no trace."""
    torch.manual_seed(0)
    model = MeanInAFunction().double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    original = copy.deepcopy(model)
    with pytest.warns(FixedSizeWarning, match="computes a number from a size"):
        result = dx.prune(model, x, ratio=0.5, exact_only=True, progress=False)
    assert model.b.out_channels == 8 and model.a.out_channels == 4
    assert_scatter_back_equal(original, model, result, x)


def test_functions_listed_as_reading_no_size_read_none():
    """The Python functions of torch a trace lets run unwatched, because their bodies read
    no size (or only sizes their ops' rules never prune, or only to check and raise): their
    source, in the torch installed, reads no size but where the list says it may."""
    import inspect
    import re

    tokens = re.compile(
        r"\.size\(|\.shape\b|\.numel\(|\.stride\(|\.nelement\(|\.unbind\(|"
        r"_verify_batch_size|_verify_spatial_size|_list_with_default|\blen\("
    )
    for func, allowed in size_watch.BODIES_READING_NO_PRUNED_SIZE.items():
        try:
            source = inspect.getsource(func)
        except TypeError:  # (a wrapper of a C function: its own code)
            source = inspect.getsource(func.__code__)
        source = re.sub(r'(?s)""".*?"""', "", source)
        found = set(tokens.findall(source))
        assert found <= set(allowed), (func, found - set(allowed))


def test_op_numbers_lists_the_numbers_not_the_sizes():
    aten = torch.ops.aten
    known: dict = {}

    def constant_of(t):
        return op_numbers.constant_value(t) if id(t) not in known else None

    x, xt = torch.ones(2, 3), torch.ones(3, 2)
    known.update({id(x): x, id(xt): xt})
    assert op_numbers.op_numbers(aten.div.Tensor, (x, 8), {}, constant_of) == ((1, 8),)
    assert op_numbers.op_numbers(aten.mul.Tensor, (x, 0.5), {}, constant_of) == ((1, 0.5),)
    scale = torch.tensor(2.0)
    assert op_numbers.op_numbers(aten.div.Tensor, (x, scale), {}, constant_of) == (
        (1, (torch.float32, (), (2.0,))),
    )
    # sizes and dims are not numbers; nor are the sizes of a factory; a tensor the trace
    # computed is not a constant
    assert op_numbers.op_numbers(aten.view.default, (x, [3, 2]), {}, constant_of) == ()
    assert op_numbers.op_numbers(aten.sum.dim_IntList, (x, [1]), {}, constant_of) == ()
    assert op_numbers.op_numbers(aten.arange.default, (8,), {}, constant_of) == ()
    assert op_numbers.op_numbers(aten.mm.default, (x, xt), {}, constant_of) == ()
    assert op_numbers.op_numbers(aten.full.default, ([2], 0.25), {}, constant_of) == ((1, 0.25),)
    assert op_numbers.differences(((1, 8),), ((1, 4),)) == [(1, 8, 4)]
    assert op_numbers.differences(((1, float("nan")),), ((1, float("nan")),)) == []
    assert op_numbers.differences(((0, 1.0),), ((1, 2.0),)) == []  # nothing to compare


def test_instance_norm_without_tensors_follows_its_channels():
    """An InstanceNorm without affine weights or running statistics holds num_features all
    the same (its forward warns when its input disagrees): it follows the channels kept."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.InstanceNorm2d(8)
            self.b = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.relu(self.norm(self.a(x))))

    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    original = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, exact_only=True, progress=False)
    assert model.a.out_channels == 4 and model.norm.num_features == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the norm's own check: no warning
        model(x)
    assert_scatter_back_equal(original, model, result, x)


class SkipWhenSameWidth(nn.Module):
    """torch_geometric's HGTConv adds a skip connection when its output is as wide as its
    input: a branch on sizes, which a plan keeping 16 of the 32 features turns on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 32)
        self.out = nn.Linear(32, 4)
        self.skip = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        h = torch.relu(self.lin(x))
        if h.size(-1) == x.size(-1):
            a = self.skip.sigmoid()
            h = a * h + (1 - a) * x
        return self.out(h)


def _skip_model():
    torch.manual_seed(0)
    return SkipWhenSameWidth().double().eval(), torch.randn(5, 16, dtype=torch.float64)


def test_a_branch_on_a_pruned_size_is_not_taken_silently():
    model, x = _skip_model()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(dx.errors.NoPrunableGroupsError, match="branches on a size the plan"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dx.prune(model, x, ratio=0.5, exact_only=True, progress=False)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    # A plan that keeps another width takes the original's branch, and prunes exactly.
    original = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.25, exact_only=True, progress=False)
    assert model.lin.out_features == 24
    assert_scatter_back_equal(original, model, result, x)


def test_without_the_op_comparison_the_branch_changes_the_function(monkeypatch):
    monkeypatch.setattr(validate, "_check_same_computation", lambda *args: None)
    model, x = _skip_model()
    original = copy.deepcopy(model)
    result = dx.prune(model, x, ratio=0.5, exact_only=True, progress=False)
    assert model.lin.out_features == 16
    with pytest.raises(AssertionError, match="not close"):
        assert_scatter_back_equal(original, model, result, x)


def test_a_number_from_a_function_changing_groups_size_is_part_of_its_declared_change():
    """A LayerNorm'd width (a function-changing group: its statistics change) the code also
    scales by: the default prune prunes it and declares it; nothing is put down to an exact
    group, so nothing is kept for the number's sake."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.norm, self.b = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)

        def forward(self, x):
            h = self.norm(self.a(x))
            return self.b(h * h.shape[-1] ** 0.5)

    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dx.prune(model, x, ratio=0.5, progress=False)
    assert model.a.out_features == 8 and result.function_changing
    assert not [w for w in caught if w.category is FixedSizeWarning]
