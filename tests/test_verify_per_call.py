"""verify=True's check with the substitutes swapped in per module call: the same numbers as the
check that changes the model's own tensors, the model left as it was, and the other check
wherever a planned tensor is read outside the modules holding it."""

import warnings

import pytest
import torch
import torch.nn as nn

import depgraph_ext as dx
from depgraph_ext.pruning import verify
from depgraph_ext.pruning.plan import propose_plan
from depgraph_ext.pruning.select import select_local
from helpers import assert_same_state, state_of, tiny_llama
from nets import TorchEncoder

LLAMA = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
)  # fmt: skip
IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])


class Shared(nn.Module):
    """One block called twice, a weight and its bias held by one module, a batch norm's
    buffers, and a linear layer whose weight its parent's code never touches."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.block(self.block(self.stem(x)))
        return self.head(x.mean((2, 3)))


class ReadsAChildsWeight(nn.Module):
    """The parent's code reads its child's weight: swapping it per call of the child would
    miss that read."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(6, 10)
        self.down = nn.Linear(10, 4)

    def forward(self, x):
        h = torch.relu(self.up(x))
        return self.down(h) + nn.functional.linear(h, self.down.weight)


def graph_and_plan(model, inputs, backend, seed=0, **options):
    dg = dx.DependencyGraph(model, inputs, backend=backend)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(dg.resolution.num_units, generator=g, dtype=torch.float64)
    return dg, propose_plan(dg, select_local(dg, scores, 0.5, None, options.get("ratios")))


class Recurrent(nn.Module):
    """An LSTM reads its weights through its flat-weights list, a linear head after it."""

    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(6, 12, batch_first=True), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.lstm(x)[0])


def weight_normed(parametrized: bool) -> nn.Module:
    """Weights computed from g and v as the module runs: by the older weight_norm's forward
    pre-hook, or by a parametrization module called from the layer's forward."""
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    for layer in (model[0], model[2]):
        if parametrized:
            nn.utils.parametrizations.weight_norm(layer)
        else:
            nn.utils.weight_norm(layer)
    return model.double().eval()


def cases():
    torch.manual_seed(0)
    yield "shared", Shared().double().eval(), torch.randn(2, 3, 8, 8, dtype=torch.float64), None
    yield "llama", tiny_llama(**LLAMA).double(), IDS, {"hidden": 0}
    yield "tied llama", tiny_llama(**LLAMA, tie_word_embeddings=True).double(), IDS, {"hidden": 0}
    x = torch.randn(3, 6, dtype=torch.float64)
    yield "weight_norm", weight_normed(False), x, None
    yield "parametrized weight_norm", weight_normed(True), x, None
    yield "lstm", Recurrent().double().eval(), torch.randn(2, 5, 6, dtype=torch.float64), None


CASES = ["shared", "llama", "tied llama", "weight_norm", "parametrized weight_norm", "lstm"]


@pytest.mark.parametrize("case", CASES)
def test_the_check_per_call_computes_what_the_check_in_memory_computes(case, backend):
    """Bit for bit the same largest difference (both forwards compute the same numbers from
    the same weights), the model's every tensor the original object with its bits after
    each, and the per-call check is the one these models get: blocks called twice, tied
    embeddings, weights computed by a pre-hook or a parametrization, an LSTM's flat weights."""
    name, model, inputs, ratios = next(c for c in cases() if c[0] == case)
    dg, plan = graph_and_plan(model, inputs, backend, ratios=ratios)
    assert any(n.endswith(("weight_g", "original0", "weight_ih_l0")) for n in plan.tensors) or (
        case in CASES[:3]
    )
    holders = verify._holders_of_every_read(dg, plan)
    assert holders is not None
    before = state_of(model)
    per_call = verify._difference_per_call(dg, plan, holders)
    assert_same_state(before, state_of(model))
    in_memory = verify._difference_in_memory(dg, plan)
    assert_same_state(before, state_of(model))
    assert per_call == in_memory and per_call < 1e-7


def test_a_wrong_plan_differs_as_much_per_call_as_in_memory(backend):
    """A plan that is not exact (its pruned weights taken from other units than its zeroed
    ones) gives the same large difference both ways: the per-call check sees what the other
    sees."""
    torch.manual_seed(0)
    model = Shared().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    dg, plan = graph_and_plan(model, x, backend)
    name = next(n for n, dims in plan.tensors.items() if 0 in dims and n.endswith("weight"))
    kept = plan.tensors[name][0]
    removed = sorted(set(range(model.get_parameter(name).shape[0])) - set(kept.tolist()))
    plan.tensors[name][0] = torch.tensor([removed[0], *kept.tolist()[1:]]).sort().values
    holders = verify._holders_of_every_read(dg, plan)
    per_call = verify._difference_per_call(dg, plan, holders)
    assert per_call > 1e-3
    assert per_call == verify._difference_in_memory(dg, plan)


def test_a_tensor_read_outside_its_holders_is_checked_in_memory(backend, monkeypatch):
    """The parent reads ``down.weight`` in its own code: no per-call check, and verify=True
    still proves the prune on the model's own tensors."""
    torch.manual_seed(0)
    model = ReadsAChildsWeight().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    dg, plan = graph_and_plan(model, x, backend)
    assert "down.weight" in plan.tensors
    assert verify._holders_of_every_read(dg, plan) is None
    in_memory = []
    original = verify._difference_in_memory
    monkeypatch.setattr(
        verify, "_difference_in_memory", lambda *a: in_memory.append(1) or original(*a)
    )
    per_call = []
    monkeypatch.setattr(verify, "_difference_per_call", lambda *a: per_call.append(1))
    expected = model(x)
    result = dx.prune(model, x, ratio=0.5, verify=True, backend=backend)
    assert in_memory and not per_call
    assert result.params_after < result.params_before
    assert model(x).shape == expected.shape


def test_a_forward_that_raises_in_the_check_leaves_the_model_as_it_was(backend, monkeypatch):
    """A forward that fails halfway through the pruned forward (its substitutes swapped in for
    the modules running): every tensor gets its own data back, and the check in memory
    decides."""
    model = tiny_llama(**LLAMA).double()
    dg, plan = graph_and_plan(model, IDS, backend, ratios={"hidden": 0})
    holders = verify._holders_of_every_read(dg, plan)
    calls = []

    def fail_in_the_second_forward(module, args):
        calls.append(1)
        if len(calls) == 2:
            # inside down_proj's call, its substitute swapped in (its own hooks run after
            # the global ones)
            assert module.weight.shape[1] < LLAMA["intermediate_size"]
            raise RuntimeError("the model's own failure")

    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        fail_in_the_second_forward
    )
    try:
        before = state_of(model)
        with pytest.raises(RuntimeError, match="the model's own failure"):
            verify._difference_per_call(dg, plan, holders)
        assert_same_state(before, state_of(model))
        in_memory = []
        original = verify._difference_in_memory
        monkeypatch.setattr(
            verify, "_difference_in_memory", lambda *a: in_memory.append(1) or original(*a)
        )
        calls.clear()
        calls.append(1)  # the per-call check's second forward fails again, then in memory
        assert verify._difference(dg, plan, verify._tolerance(dg, plan)) < 1e-7
        assert in_memory
        assert_same_state(before, state_of(model))
    finally:
        handle.remove()


def test_the_scratch_memory_does_not_grow_with_depth(backend, monkeypatch):
    """Substitutes are put in scratch tensors that are reused once their call returns: a
    model four times as deep allocates no more of them."""
    allocated = []
    take = verify._Scratch.take

    def counting(self, shape, like):
        key = (tuple(shape), like.dtype, like.device)
        allocated.append(not self.free.get(key))
        return take(self, shape, like)

    monkeypatch.setattr(verify._Scratch, "take", counting)
    counts = []
    for layers in (2, 8):
        model = tiny_llama(**(LLAMA | {"num_hidden_layers": layers})).double()
        dg, plan = graph_and_plan(model, IDS, backend, ratios={"hidden": 0})
        allocated.clear()
        verify._difference_per_call(dg, plan, verify._holders_of_every_read(dg, plan))
        counts.append((sum(allocated), len(allocated)))
    (fresh_2, calls_2), (fresh_8, calls_8) = counts
    assert calls_8 == 4 * calls_2 and fresh_8 == fresh_2 < calls_2


def test_verify_checks_the_prunes_own_plan_with_its_config_fields():
    """DINOv2's MLP width is config.mlp_ratio x hidden: the prune sets mlp_ratio to the
    integer its config takes; the check runs the same plan (a plan proposed anew set 2.0,
    which the config's validation refuses, and verify=True raised an internal error)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
        image_size=32, patch_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Dinov2Model(config).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    result = dx.prune(model, x, ratio=0.5, exact_only=True, verify=True)
    assert result.params_after < result.params_before
    assert model.config.mlp_ratio == 2 and isinstance(model.config.mlp_ratio, int)
    assert model(pixel_values=x).last_hidden_state.shape == (2, 17, 32)


def test_verify_says_when_the_exact_groups_do_not_run_on_their_own():
    """The code views one branch by the other's width (``g.view(b, h.shape[1])``): pruned by
    default, the width behind a layer norm (function-changing) and the other branch's (exact)
    shrink together, so the exact groups alone, which verify=True checks, do not run. It says
    so, and changes nothing; with exact_only=True the plan is checked whole."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 16), nn.Linear(6, 16)
            self.norm = nn.LayerNorm(16)
            self.out = nn.Linear(16, 3)
            self.side = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))

        def forward(self, x):
            h = self.norm(self.a(x))
            g = self.b(x).view(x.shape[0], h.shape[1])
            return self.out(h) + self.side(torch.relu(g))

    torch.manual_seed(0)
    model = Tied().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    before = state_of(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.FunctionChangingWarning)
        with pytest.raises(dx.VerificationError, match="does not run with only its exact"):
            dx.prune(model, x, ratio=0.5, verify=True)
    assert_same_state(before, state_of(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.FixedSizeWarning)
        result = dx.prune(model, x, ratio=0.5, verify=True, exact_only=True)
    assert result.params_after < result.params_before  # (the side branch's 12 units)


def test_an_encoder_verifies_with_its_stream_and_heads_pruned_together():
    """nn.MultiheadAttention fixes head count x head dim = the stream's width: its heads and
    the stream are one group, so a default plan's exact groups (the feed-forward widths) run
    on their own and verify=True checks them."""
    from nets import TorchEncoder

    torch.manual_seed(0)
    model = TorchEncoder().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.FunctionChangingWarning)
        result = dx.prune(model, x, ratio=0.5, verify=True)
    attention = model.body.layers[0].self_attn
    assert attention.num_heads * attention.head_dim == attention.embed_dim < 32
    assert result.params_after < result.params_before
    assert model(x).shape == (2, 5, 3)


class Upcasts(nn.Module):
    """A float64 model that computes one step in float32 after its first layer."""

    def __init__(self, upcast: bool):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.upcast = upcast
        self.register_buffer("scale", torch.ones(3, dtype=torch.float32))

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.upcast:
            h = h.float().double()
        return self.fc2(h) * self.scale.double()


@pytest.mark.parametrize("upcast", [False, True])
def test_the_tolerance_is_that_of_the_least_precise_dtype_computed_from_pruned_weights(upcast):
    """float64 weights, and float32 either on the way from a pruned weight to the outputs
    (rounded as float32 there) or only in a buffer no pruned weight reaches (float64's)."""
    from depgraph_ext.pruning.verify import TOLERANCE, _tolerance

    model = Upcasts(upcast).double().eval()
    model.scale.data = model.scale.data.float()
    dg, plan = graph_and_plan(model, torch.randn(2, 6, dtype=torch.float64), "native")
    assert "fc1.weight" in plan.tensors
    expected = TOLERANCE[torch.float32 if upcast else torch.float64]
    assert _tolerance(dg, plan) == expected


class Embedded(nn.Module):
    """An embedding, a linear layer with a bias, and one without: every planned tensor's
    zeroing is its holder's activations masked. ``keyword``: the second layer is called with
    its input by keyword; ``hooked``: the last has a forward pre-hook of its own that shifts
    its input (a mask applied before it would no longer zero the removed features)."""

    def __init__(self, keyword=False, hooked=False, own_forward=False):
        super().__init__()
        self.embed = nn.Embedding(20, 12)
        self.up, self.down = nn.Linear(12, 16), nn.Linear(16, 4, bias=False)
        self.keyword = keyword
        if hooked:
            self.down.register_forward_pre_hook(lambda m, args: (args[0] + 1,))
        if own_forward:  # the same shift, in a forward set on the instance
            down = self.down
            down.forward = lambda x: nn.functional.linear(x + 1, down.weight)

    def forward(self, ids):
        h = self.embed(ids)
        h = torch.relu(self.up(input=h) if self.keyword else self.up(h))
        return self.down(h)


EMBEDDED_IDS = torch.tensor([[1, 5, 9, 3, 7, 2, 19, 0]])


def masked_and_plan(model, backend):
    dg, plan = graph_and_plan(model, EMBEDDED_IDS, backend)
    holders = verify._holders_of_every_read(dg, plan)
    tensors = dg.walk.params | dg.walk.buffers
    removed = {n: verify._removed_indices(tensors[n].data, d) for n, d in plan.tensors.items()}
    masks = verify._activation_masks(dg, plan, holders, removed, verify.RemovedFills(model))
    return dg, plan, holders, {n for n, m in model.named_modules() if id(m) in masks}


def test_the_zeroed_forward_masks_activations_instead_of_copying_weights(backend, monkeypatch):
    """An embedding pruned along its width, a linear layer pruned along both dims and one
    along its inputs: the zeroed forward copies none of their weights (no scratch tensor is
    taken for it) and computes bit for bit what zeroing the weights computes."""
    torch.manual_seed(0)
    model = Embedded().double().eval()
    dg, plan, holders, masked = masked_and_plan(model, backend)
    assert masked == {"embed", "up", "down"}
    assert set(plan.tensors["up.weight"]) == {0, 1}
    taken = []
    take = verify._Scratch.take
    monkeypatch.setattr(verify._Scratch, "take", lambda *a: taken.append(1) or take(*a))
    before = state_of(model)
    per_call = verify._difference_per_call(dg, plan, holders)
    assert_same_state(before, state_of(model))
    with_masks = len(taken)
    taken.clear()
    monkeypatch.setattr(verify, "_activation_masks", lambda *a: {})
    assert verify._difference_per_call(dg, plan, holders) == per_call
    # each pruned tensor's zeroed copy, when nothing is masked (``up.weight``, pruned along two
    # dims, is gathered without scratch in the pruned forward)
    assert len(taken) == with_masks + len(plan.tensors)
    assert per_call == verify._difference_in_memory(dg, plan) and per_call < 1e-7


@pytest.mark.parametrize("wrong", ["bias", "columns"])
def test_a_wrong_plan_differs_as_much_with_masks_as_in_memory(backend, wrong):
    """Wrong plans: a bias keeping other entries than its weight's rows (the output mask
    cannot say it, so that layer's tensors are zeroed instead), or the next layer keeping
    other input columns than the rows kept before it (both layers masked, each its own way).
    The check finds the difference the check in memory finds, to the bit."""
    torch.manual_seed(0)
    model = Embedded().double().eval()
    dg, plan, holders, _ = masked_and_plan(model, backend)
    name, d, size = ("up.bias", 0, 16) if wrong == "bias" else ("down.weight", 1, 16)
    kept = plan.tensors[name][d].tolist()
    removed = sorted(set(range(size)) - set(kept))
    plan.tensors[name][d] = torch.tensor(sorted([removed[0], *kept[1:]]))
    tensors = dg.walk.params | dg.walk.buffers
    gone = {n: verify._removed_indices(tensors[n].data, d) for n, d in plan.tensors.items()}
    masks = verify._activation_masks(dg, plan, holders, gone, verify.RemovedFills(model))
    assert (id(model.up) in masks) == (wrong == "columns") and id(model.down) in masks
    per_call = verify._difference_per_call(dg, plan, holders)
    assert per_call > 1e-3 and per_call == verify._difference_in_memory(dg, plan)


def test_a_layer_called_by_keyword_or_hooked_is_still_checked_exactly(backend, monkeypatch):
    """A masked layer called with its input by keyword cannot be masked as it runs: the
    per-call check raises and the check in memory decides. A layer with a hook or a forward
    of its own is not masked (they shift the features the mask would zero). All pass
    verify=True."""
    torch.manual_seed(0)
    keyword = Embedded(keyword=True).double().eval()
    dg, plan, holders, masked = masked_and_plan(keyword, backend)
    assert "up" in masked
    with pytest.raises(verify._CannotMask):
        verify._difference_per_call(dg, plan, holders)
    in_memory = []
    original = verify._difference_in_memory
    monkeypatch.setattr(
        verify, "_difference_in_memory", lambda *a: in_memory.append(1) or original(*a)
    )
    assert verify._difference(dg, plan, verify._tolerance(dg, plan)) < 1e-7 and in_memory
    models = [keyword]
    for changed in ({"hooked": True}, {"own_forward": True}):
        model = Embedded(**changed).double().eval()
        dg, plan, holders, masked = masked_and_plan(model, backend)
        assert "down" not in masked and "up" in masked
        per_call = verify._difference_per_call(dg, plan, holders)
        assert per_call == original(dg, plan) and per_call < 1e-7
        models.append(model)
    for model in models:
        result = dx.prune(model, EMBEDDED_IDS, ratio=0.5, verify=True, backend=backend)
        assert result.params_after < result.params_before


def test_an_encoders_fast_path_is_checked_through_its_python_path(backend):
    """The check swaps a planned tensor while a module holding it runs; the encoder's fast
    path would read the feed-forward weights unswapped (a wrong plan passing as exact).
    Its forwards run the layers' Python path, as the trace did: an exact plan passes, a wrong
    one differs as much per call as in memory."""
    torch.manual_seed(0)
    model = TorchEncoder(inp=6, width=16, heads=2, ffn=24).double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    dg, plan = graph_and_plan(model, x, backend, ratios={"hidden": 0, "heads": 0})
    name = "body.layers.0.linear1.weight"  # (the feed-forward widths alone)
    assert {n.split(".")[-2] for n in plan.tensors} == {"linear1", "linear2"}
    holders = verify._holders_of_every_read(dg, plan)
    assert holders is not None
    assert verify._difference_per_call(dg, plan, holders) < 1e-7
    kept = plan.tensors[name][0]
    for removed in sorted(set(range(24)) - set(kept.tolist())):
        # a wrong plan: a removed row instead of a kept one (one that a ReLU does not zero
        # on these inputs, so that the wrong plan computes something else)
        plan.tensors[name][0] = torch.tensor([removed, *kept.tolist()[1:]]).sort().values
        in_memory = verify._difference_in_memory(dg, plan)
        if in_memory > 1e-3:
            break
    assert in_memory > 1e-3
    assert verify._difference_per_call(dg, plan, holders) == in_memory


def test_the_checks_forwards_leave_weights_the_model_writes_itself():
    """An embedding with ``max_norm`` rescales, in place, the rows each forward looks up: the
    check's forwards would have left the model's rows rescaled (and its kept weights not the
    original's bits); what a forward writes into a parameter is put back after it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(20, 12, max_norm=1.0), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # every row longer than max_norm
    ids = torch.tensor([[1, 4, 7], [7, 2, 19]])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, ids, ratio=0.5, verify=True)
    assert "1.weight" in result.plan  # an exact group, checked by two forwards
    for name, p in model.named_parameters():
        expected = before[name]
        for dim, kept in result.plan.get(name, {}).items():
            expected = expected.index_select(dim, kept)
        assert torch.equal(p, expected), name
