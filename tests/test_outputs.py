"""What a model hands out: outputs keep their width unless named in ``prune_outputs``; a model
with nothing else to prune, or whose every group changes the function under ``exact_only``,
is refused saying so."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.testing import outputs_of
from helpers import assert_same_state, prune_and_check, state_of

F64 = torch.float64
X = torch.randn(2, 3, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(0))


class TwoFeatures(nn.Module):
    """Two feature outputs returned next to a classifier that reads them: the features are
    the only channels."""

    def __init__(self, as_dict: bool = False):
        super().__init__()
        self.as_dict = as_dict
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(14, 5)

    def forward(self, x):
        f1 = torch.relu(self.a(x)).mean((2, 3))
        f2 = torch.relu(self.b(x)).mean((2, 3))
        logits = self.fc(torch.cat([f1, f2], 1))
        if self.as_dict:
            return {"f1": f1, "f2": f2, "logits": logits}
        return f1, f2, logits


def model(**kw):
    torch.manual_seed(0)
    return TwoFeatures(**kw).double().eval()


def test_outputs_keep_their_width_and_the_refusal_says_how_to_let_them_shrink():
    m = model()
    before = state_of(m)
    with pytest.raises(dx.NoPrunableGroupsError, match="prune_outputs"):
        dx.prune(m, X, ratio=0.5)
    assert_same_state(before, state_of(m))


def test_prune_outputs_by_position():
    pruned, result = prune_and_check(model(), X, ratio=0.5, prune_outputs=[0, 1])
    a, b = pruned.a.out_channels, pruned.b.out_channels  # (one group: the classifier's concat)
    assert a + b == pruned.fc.in_features == 7 and a < 8 and b < 6
    assert set(result.outputs) == {0, 1} and result.outputs[0][1].numel() == a
    f1, f2, logits = pruned(X)
    assert f1.shape == (2, a) and f2.shape == (2, b) and logits.shape == (2, 5)


def test_shrinking_outputs_verify_and_are_summarised():
    m = model()
    result = dx.prune(m, X, ratio=0.5, prune_outputs=[0, 1], verify=True)
    assert result.verify(X) < 1e-12
    assert "output 0 shrinks (prune_outputs): dim 1 keeps" in result.summary()


def test_prune_outputs_by_name():
    pruned, result = prune_and_check(model(as_dict=True), X, ratio=0.5, prune_outputs=["f2"])
    assert (pruned.a.out_channels, pruned.b.out_channels) == (8, 3)
    assert set(result.outputs) == {1}


@pytest.mark.parametrize("bad", [[3], ["f3"], [-1], "f1", [1.5]])
def test_prune_outputs_naming_no_output_is_refused(bad):
    m = model(as_dict=True)
    before = state_of(m)
    with pytest.raises(dx.InvalidArgumentError, match="prune_outputs"):
        dx.prune(m, X, ratio=0.5, prune_outputs=bad)
    assert_same_state(before, state_of(m))


class NormedMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(4, 16), nn.LayerNorm(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def test_exact_only_with_every_group_function_changing_is_refused():
    """As any model with nothing to prune: refused, saying how many groups were left whole
    because they change the function."""
    m = NormedMlp().double()
    before = state_of(m)
    with pytest.raises(dx.NoPrunableGroupsError, match=r"1 group .*changes the function"):
        dx.prune(m, torch.randn(5, 4, dtype=F64), ratio=0.5, exact_only=True)
    assert_same_state(before, state_of(m))
    with pytest.warns(dx.FunctionChangingWarning):  # without exact_only: pruned, declared
        dx.prune(m, torch.randn(5, 4, dtype=F64), ratio=0.5)


class _AttributeDict(dict):
    """A config as diffusers keeps one (its FrozenDict): a dict whose items are set as
    attributes too."""

    def __init__(self, **items):
        super().__init__(**items)
        for name, value in items.items():
            setattr(self, name, value)


class _KeylessOutput(dict):
    """An output class registered for pytree without key paths, as diffusers' outputs are."""


torch.utils._pytree.register_pytree_node(
    _KeylessOutput,
    lambda o: (list(o.values()), list(o.keys())),
    lambda values, keys: _KeylessOutput(zip(keys, values)),
)


class DiffusersStyle(nn.Module):
    """What a diffusers model does: reads its config by attribute in the forward and returns
    an output class pytree knows without key paths."""

    def __init__(self):
        super().__init__()
        self.config = _AttributeDict(scale_input=True, out_channels=4)
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        if self.config.scale_input:
            x = 2 * x
        return _KeylessOutput(sample=self.conv2(torch.relu(self.conv1(x))))


def test_a_dict_config_and_an_output_without_key_paths_prune_exactly():
    """A config that is a dict subclass (no ``attribute_map``) was read through a spy that
    asked for one, and the model failed to run under the trace; an output class registered
    without key paths raised an internal error naming the output's type. Both prune, under
    the oracle, and the output is named by its key."""
    torch.manual_seed(0)
    pruned, result = prune_and_check(DiffusersStyle().double().eval(), X, ratio=0.5)
    assert pruned.conv1.out_channels == 8 and result.plan
    with pytest.raises(dx.InvalidArgumentError, match=r"\['sample'\]"):
        dx.prune(DiffusersStyle().double().eval(), X, ratio=0.5, prune_outputs=["nothing"])


@dataclasses.dataclass
class _Features:
    """A model's own output class, which pytree does not open."""

    f1: torch.Tensor
    rest: object


class _Held:
    """Any object holding results as attributes (one in ``__slots__``)."""

    __slots__ = ("f2", "__dict__")

    def __init__(self, f2, logits):
        self.f2, self.logits = f2, logits


class OwnOutputs(TwoFeatures):
    """TwoFeatures returning its three outputs inside its own containers."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        f1, f2, logits = super().forward(x)
        if self.kind == "set":
            return frozenset((f1, f2, logits))
        if self.kind == "iterator":
            return iter((f1, f2, logits))
        return _Features(f1, [_Held(f2, logits)])


@pytest.mark.parametrize("kind", ["objects", "set"])
def test_outputs_inside_the_models_own_objects_keep_their_width(kind):
    """A dataclass, an object's attributes or a set: their tensors are outputs all the same.
    They were unseen before: every width was free, and the pruned model returned other
    shapes (the features halved)."""
    m = model()
    m.__class__ = OwnOutputs
    m.kind = kind
    before = state_of(m)
    with pytest.raises(dx.NoPrunableGroupsError, match="prune_outputs"):
        dx.prune(m, X, ratio=0.5)
    assert_same_state(before, state_of(m))
    assert len(outputs_of(m, X)) == 3  # (what the oracle and verify compare)


def test_outputs_inside_objects_are_named_by_their_paths():
    m = model()
    m.__class__, m.kind = OwnOutputs, "objects"
    pruned, result = prune_and_check(m, X, ratio=0.5, prune_outputs=[".rest[0].f2"])
    assert (pruned.a.out_channels, pruned.b.out_channels) == (8, 3)
    out = pruned(X)
    assert out.f1.shape == (2, 8) and out.rest[0].f2.shape == (2, 3)
    assert out.rest[0].logits.shape == (2, 5)


def test_a_model_returning_an_iterator_is_refused_by_name():
    m = model()
    m.__class__, m.kind = OwnOutputs, "iterator"
    before = state_of(m)
    with pytest.raises(dx.InvalidArgumentError, match=r"returns an iterator \(tuple_iterator\)"):
        dx.prune(m, X, ratio=0.5)
    assert_same_state(before, state_of(m))


class ReturnsAWidth(nn.Module):
    """Returns its output and the width of its first layer's output, as a number (``how``:
    "size", that tensor's "shape" whole, or the size converted by "int()" first): the
    number is an output too."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        y = self.head(torch.relu(self.c2(h)))
        width = {"size": h.shape[1], "shape": h.shape}.get(self.how)
        return y, int(h.shape[1]) if width is None else width


@pytest.mark.parametrize("how", ["size", "shape", "int()"])
def test_a_width_the_model_returns_as_a_number_is_kept(how):
    """(Pruned, the model returned 8 where it returned 16, and the oracle, which compares
    tensors, held.) A size is kept as an output; a number converted from one is caught by
    the plan's trace, which returns another."""
    torch.manual_seed(0)
    model = ReturnsAWidth(how).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before = model(x)[1]
    pruned, _ = prune_and_check(model, x, ratio=0.5, exact_only=True)
    assert pruned(x)[1] == before
    assert pruned.c1.out_channels == 16 and pruned.c2.out_channels < 8
