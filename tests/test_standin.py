"""Meta tensors standing in for CPU tensors (depgraph_ext/standin.py): a meta trace must record
exactly what a fake-tensor trace records (ops, arguments, shapes, modules), on every kind of
model the library prunes, and fall back to fake tensors where it cannot."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from test_more_ops import Reshaped, Square, Tokens
from test_pointclouds import DGCNN
from test_recurrent import IDS as WORDS
from test_recurrent import BiGRUClassifier, WordLM
from torch import nn

import depgraph_ext as dx
from depgraph_ext.graph import trace as tr
from depgraph_ext.graph.walk import ModelWalk
from helpers import groups_of, prune_and_check
from nets import DenseNet, ResNeXt, randomize_norms

T = pytest.importorskip("transformers")
from test_transformers import ALL, build, inputs_for  # noqa: E402

F64 = torch.float64


def rand(*shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(0))


def without_device(x):
    """Arguments with devices left out (a meta trace's factories build on meta)."""
    if isinstance(x, torch.device):
        return "device"
    if isinstance(x, (list, tuple)):
        return type(x)(without_device(i) for i in x)
    if isinstance(x, dict):
        return {k: without_device(v) for k, v in x.items() if k != "device"}
    return x


def everything(g: tr.OpGraph):
    return (
        [(v.shape, v.dtype, v.kind, v.name, v.producer) for v in g.values],
        [
            (n.op, n.module, without_device(n.args), without_device(n.kwargs), n.inputs, n.outputs)
            for n in g.nodes
        ],
        g.params,
        g.buffers,
        g.aliases,
        g.inputs,
        g.outputs,
        g.module_calls,
    )


class Constants(nn.Module):
    """Tensors the forward makes itself: torch.tensor constants, a plain tensor attribute,
    factories with and without a device, moves to the input's device."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = torch.tensor([1.0, 2.0, 3.0, 4.0])

    def forward(self, x):
        y = self.fc(x) * self.scale + torch.tensor(2.0) + torch.arange(4)
        y = y + torch.zeros(4, device=x.device) + torch.ones(4).to(x.device) + x.new_ones(4)
        return y.to(x.device).cpu() * torch.full((1, 4), 0.5, device=x.device)


class DeviceBranches(nn.Module):
    """Code that asks the device: the CPU branch is the one a CPU model runs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        cpu = (
            y.device.type == "cpu"
            and y.is_cpu
            and not y.is_meta
            and y.get_device() == -1
            and str(y.device) == "cpu"
            and y.type() == "torch.FloatTensor"
        )
        y = y * 2 if cpu else y.reshape(-1, 2, 4).flip(1).reshape(-1, 8)
        return self.b(y)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(6, 8, num_layers=2, nonlinearity="relu")
        self.lstm = nn.LSTM(8, 10, proj_size=4)

    def forward(self, x):
        return self.lstm(self.rnn(x)[0])[0]


class Norms(nn.Module):
    def __init__(self, dims: int):
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        tconv = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
        inorm = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1]
        self.body = nn.Sequential(
            conv(3, 8, 3, padding=1),
            bn(8),
            nn.ReLU(),
            tconv(8, 6, 3, groups=2),
            inorm(6, affine=True),
            nn.GroupNorm(3, 6),
            nn.PReLU(6),
            conv(6, 4, 1),
        )

    def forward(self, x):
        return self.body(x)


class Shuffles(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3),
            nn.PixelShuffle(2),
            nn.Conv2d(2, 4, 1),
            nn.ChannelShuffle(2),
            nn.Conv2d(4, 2, 1),
        )

    def forward(self, x):
        return self.body(x)


class Attention(nn.Module):
    """Attention written out: einsum, softmax, topk."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.out = nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, ids):
        h = self.norm(self.embed(ids))
        att = torch.einsum("bsd,btd->bst", h, h).softmax(-1)
        return self.out(att @ h).topk(2, dim=-1)[0]


class SquareNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(Square.apply(self.a(x)))


MODELS = {
    **{
        name: (lambda f=f: build(f), lambda name=name: inputs_for(name))
        for name, (f, _) in ALL.items()
    },
    "resnet50": (
        lambda: T.ResNetForImageClassification(T.ResNetConfig()).double().eval(),
        lambda: rand(2, 3, 64, 64),
    ),
    "mobilenet_v2": (
        lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config()).double().eval(),
        lambda: rand(2, 3, 64, 64),
    ),
    "densenet": (lambda: DenseNet().double().eval(), lambda: rand(2, 3, 32, 32)),
    "resnext": (lambda: ResNeXt().double().eval(), lambda: rand(2, 3, 32, 32)),
    "dgcnn": (lambda: DGCNN().double().eval(), lambda: rand(2, 3, 32)),
    "lstm_lm": (lambda: WordLM().double().eval(), lambda: WORDS),
    "bi_gru": (lambda: BiGRUClassifier().double().eval(), lambda: rand(5, 3, 10)),
    "rnn_and_projected_lstm": (lambda: Recurrent().double().eval(), lambda: rand(5, 3, 6)),
    "lstm_lm_fp32": (lambda: WordLM().eval(), lambda: WORDS),  # the fused CPU layer
    **{
        f"norms_{d}d": (lambda d=d: Norms(d).double().eval(), lambda d=d: rand(2, 3, *[6] * d))
        for d in (1, 2, 3)
    },
    "shuffles": (lambda: Shuffles().double().eval(), lambda: rand(2, 3, 8, 8)),
    "tokens": (lambda: Tokens().double().eval(), lambda: (rand(6, 4), torch.tensor([5, 0, 3, 3]))),
    "reshaped": (lambda: Reshaped().double().eval(), lambda: rand(6, 4)),
    "autograd_function": (lambda: SquareNet().double().eval(), lambda: rand(4, 3)),
    "attention": (
        lambda: Attention().double().eval(),
        lambda: torch.randint(0, 10, (2, 5), generator=torch.Generator()),
    ),
    "constants": (lambda: Constants().eval(), lambda: rand(3, 4, dtype=torch.float32)),
    "device_branches": (lambda: DeviceBranches().eval(), lambda: rand(5, 6, dtype=torch.float32)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_meta_trace_records_what_a_fake_trace_records(name):
    make_model, make_inputs = MODELS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, inputs = make_model(), make_inputs()
    walk = ModelWalk.of(model)
    meta = tr.trace_as(model, inputs, "meta", walk=walk)
    fake = tr.trace_as(model, inputs, "fake", walk=walk)
    assert everything(meta) == everything(fake)
    assert (meta.mode, fake.mode) == ("meta", "fake")
    if name == "lstm_lm_fp32":  # the CPU's fused layer, not the generic cell of meta
        assert "aten.mkldnn_rnn_layer.default" in {str(n.op) for n in meta.nodes}
    if name.startswith(("llama", "qwen", "mistral")):  # the CPU's fused attention, grouped
        assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in {
            str(n.op) for n in meta.nodes
        }


SMALL = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
IDS = {"input_ids": torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(1))}
PIXELS = {"pixel_values": rand(1, 3, 32, 32, dtype=torch.float32)}
MORE = {  # more transformers architectures, float32 as loaded
    "gemma": (lambda: T.GemmaForCausalLM(T.GemmaConfig(**SMALL, head_dim=16)), IDS),
    "gemma2": (lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**SMALL, head_dim=16)), IDS),
    "phi3": (lambda: T.Phi3ForCausalLM(T.Phi3Config(**SMALL, pad_token_id=0)), IDS),
    "falcon": (
        lambda: T.FalconForCausalLM(
            T.FalconConfig(
                vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4
            )
        ),
        IDS,
    ),
    "gpt_neox": (
        lambda: T.GPTNeoXForCausalLM(
            T.GPTNeoXConfig(
                vocab_size=100,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=4,
            )
        ),
        IDS,
    ),
    "t5": (
        lambda: T.T5ForConditionalGeneration(
            T.T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4)
        ),
        dict(IDS, decoder_input_ids=IDS["input_ids"][:, :5]),
    ),
    "convnext": (
        lambda: T.ConvNextForImageClassification(
            T.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=5)
        ),
        PIXELS,
    ),
    "deit": (
        lambda: T.DeiTForImageClassification(
            T.DeiTConfig(
                image_size=32,
                patch_size=8,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_labels=5,
            )
        ),
        PIXELS,
    ),
    "distilbert": (
        lambda: T.DistilBertForMaskedLM(
            T.DistilBertConfig(vocab_size=100, dim=64, hidden_dim=96, n_layers=2, n_heads=4)
        ),
        IDS,
    ),
}


def without_lifts(g: tr.OpGraph):
    """Ops, modules and result shapes, leaving out ``lift_fresh`` (the identity that lifts a
    constant into a trace: Python indexing by a list lifts its index on fake tensors only)."""
    return [
        (n.op, n.module, [g.values[v].shape for v in n.outputs])
        for n in g.nodes
        if n.op is not torch.ops.aten.lift_fresh.default
    ]


@pytest.mark.parametrize("name", list(MORE))
def test_more_architectures_same_ops_and_groups(name, monkeypatch):
    """Up to lifted constants, the same ops; and exactly the same groups."""
    make_model, inputs = MORE[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model().eval()
    walk = ModelWalk.of(model)
    meta = tr.trace_as(model, inputs, "meta", walk=walk)
    fake = tr.trace_as(model, inputs, "fake", walk=walk)
    assert without_lifts(meta) == without_lifts(fake)
    monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_meta = dx.DependencyGraph(model, inputs)
        monkeypatch.setattr(tr, "_meta_stands_in", lambda *args: False)
        on_fake = dx.DependencyGraph(model, inputs)
    assert (on_meta.graph.mode, on_fake.graph.mode) == ("meta", "fake")
    assert groups_of(on_meta) == groups_of(on_fake)


def test_meta_trace_shapes_only_and_pruned_shapes():
    """The validation's trace (pruned shapes, shapes only) records what a fake one records."""
    model = build(ALL["llama_8_2"][0])
    shapes = {
        f"model.layers.{i}.mlp.{p}_proj.weight": s
        for i in range(2)
        for p, s in (("up", (40, 64)), ("gate", (40, 64)), ("down", (64, 40)))
    }
    walk = ModelWalk.of(model)
    meta, fake = (
        tr.trace_as(
            model, inputs_for("llama_8_2"), mode, shapes=shapes, walk=walk, shapes_only=True
        )
        for mode in ("meta", "fake")
    )
    assert (meta.ops, meta.module_calls, meta.outputs) == (
        fake.ops,
        fake.module_calls,
        fake.outputs,
    )
    assert ("model.layers.1.mlp", [(2, 12, 64)]) in meta.module_calls


def test_device_code_sees_the_cpu():
    x = rand(5, 6, dtype=torch.float32)
    g = tr.trace_as(DeviceBranches().eval(), x, "meta")
    assert "aten.flip.default" not in {str(n.op) for n in g.nodes}  # the CPU branch ran


def test_large_models_are_traced_on_meta_and_fused_paths_on_fake(monkeypatch):
    monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)  # as a model over the real-trace size
    assert tr.trace(build(ALL["llama_8_2"][0]), inputs_for("llama_8_2")).mode == "meta"

    class MHA(nn.Module):  # nn.MultiheadAttention's fused path needs no torch function mode
        def __init__(self):
            super().__init__()
            self.att, self.out = nn.MultiheadAttention(16, 4, batch_first=True), nn.Linear(16, 3)

        def forward(self, x):
            return self.out(self.att(x, x, x, need_weights=False)[0])

    g = tr.trace(MHA().eval(), rand(2, 5, 16, dtype=torch.float32))
    assert g.mode == "fake"
    assert "aten._native_multi_head_attention.default" in {str(n.op) for n in g.nodes}


class AttendsWithoutWeights(nn.Module):
    """nn.MultiheadAttention not asked for its weights (``need_weights=False``): two heads,
    its fused path; pruned to one head, its Python path (an odd head count)."""

    def __init__(self, need_weights: bool):
        super().__init__()
        self.need_weights = need_weights
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 3)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        h = self.inp(x)
        a, weights = self.att(h, h, h, need_weights=self.need_weights)
        return self.out(a) if weights is None else (self.out(a), weights)


@pytest.mark.parametrize("need_weights", [False, True])
def test_a_fused_attention_not_asked_for_weights_returns_none_on_fake_tensors(
    monkeypatch, need_weights
):
    """Its CPU kernel returns no weights (None); its meta kernel an empty tensor, which the
    module returned on fake tensors: one more result than on real ones, and a plan taking it
    to one head (its Python path, which returns None) was refused as a change of control
    flow. On fake tensors it returns what the CPU returns, and the prune is the real trace's."""
    torch.manual_seed(0)
    model, x = AttendsWithoutWeights(need_weights).eval(), rand(2, 5, 8, dtype=torch.float32)
    real = dx.DependencyGraph(model, (x,))
    monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    fake = dx.DependencyGraph(model, (x,))
    assert (real.graph.mode, fake.graph.mode) == ("real", "fake")
    calls = {g.graph.mode: dict(g.graph.module_calls)["att"] for g in (real, fake)}
    assert len(calls["fake"]) == len(calls["real"]) == (2 if need_weights else 1)
    pruned = {}
    for mode in ("real", "fake"):
        monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0 if mode == "fake" else 1 << 40)
        copied = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dx.prune(copied, x, ratio=0.5)
        assert copied.att.num_heads == 1 and copied.att.embed_dim == 8
        pruned[mode] = copied.state_dict()
    assert pruned["real"].keys() == pruned["fake"].keys()
    assert all(torch.equal(pruned["real"][k], pruned["fake"][k]) for k in pruned["real"])


def test_a_forward_meta_cannot_run_falls_back_to_fake(monkeypatch):
    """``.item()`` of a constant: no value on meta; a fake tensor keeps small constants."""
    monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)

    class Item(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return self.fc(x) * torch.tensor(3.0).item()

    g = tr.trace(Item().eval(), rand(2, 4, dtype=torch.float32))
    assert g.mode == "fake" and g.nodes


@pytest.mark.parametrize("name", ["llama_8_2", "lstm_lm", "densenet"])
def test_pruning_through_meta_traces(monkeypatch, name):
    """Whole prunes whose traces (graph and validation) run on meta: the oracle holds and the
    plan is the fake traces' plan."""
    monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    make_model, make_inputs = MODELS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_model()
    if name == "densenet":
        model = randomize_norms(model)
    inputs = make_inputs()
    ratios = {"hidden": 0.0}  # a norm over the hidden size is no scatter-back oracle's case
    assert tr.trace(model, inputs).mode == "meta"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.ConfigMismatchWarning)
        _, on_meta = prune_and_check(model, inputs, ratio=0.5, ratios=ratios)
    monkeypatch.setattr(tr, "_meta_stands_in", lambda *args: False)
    assert tr.trace(model, inputs).mode == "fake"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_fake = dx.prune(copy.deepcopy(model), inputs, ratio=0.5, ratios=ratios)
    assert on_meta.plan.keys() == on_fake.plan.keys()
    for tensor, dims in on_meta.plan.items():
        assert {d: k.tolist() for d, k in dims.items()} == {
            d: k.tolist() for d, k in on_fake.plan[tensor].items()
        }


def test_remembered_meta_results_are_the_kernels_results():
    """Results of ops that make new tensors are rebuilt from a key of their arguments'
    layouts; they must be what the meta kernel gives, and views must stay views."""
    from depgraph_ext.graph import standin

    memo = standin.MetaResults()

    def meta(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype, device="meta")

    mul = torch.ops.aten.mul.Tensor
    a, b = meta(4, 6), meta(6)
    for _ in range(2):  # the second call is rebuilt
        out = memo.run(mul, (a, b), {})
        assert (out.shape, out.stride(), out.dtype) == ((4, 6), (6, 1), torch.float32)
    t = meta(6, 4).t()  # same shape, other strides: the result follows the input's layout
    out = memo.run(mul, (t, b), {})
    assert out.stride() == mul(t, b).stride() == t.stride() == (1, 4)
    ints = meta(3, dtype=torch.int64)  # 2 and 2.0 promote differently
    assert memo.run(torch.ops.aten.mul.Scalar, (ints, 2), {}).dtype == torch.int64
    assert memo.run(torch.ops.aten.mul.Scalar, (ints, 2.0), {}).dtype == torch.float32
    assert memo.run(torch.ops.aten.sum.dim_IntList, (a, [1], True), {}).shape == (4, 1)
    assert memo.run(torch.ops.aten.sum.dim_IntList, (a, [0], False), {}).shape == (6,)
    values, indices = memo.run(torch.ops.aten.topk.default, (a, 2), {})
    assert (values.shape, indices.dtype) == ((4, 2), torch.int64)
    view = torch.ops.aten.view.default
    for _ in range(2):
        v = memo.run(view, (a, [24]), {})
        assert v._base is a  # not rebuilt: a view shares its input's storage
    assert standin.result_key(torch.ops.aten.add_.Tensor, (a, a), {}) is None  # writes
    assert standin.result_key(torch.ops.aten.zeros.default, ([3],), {}) is None  # factory


def test_cat_and_stack_of_meta_tensors_are_shaped_as_their_kernels_shape_them():
    """A decoder loop stacks all it made so far at every step: cat and stack of plain meta
    tensors are shaped without their Python meta kernels, and give what those give (shape,
    strides, dtype) or leave the call to them (other dtypes, layouts, ranks; sizes that do
    not line up, which the kernel refuses)."""
    from depgraph_ext.graph import standin

    memo = standin.MetaResults()
    cat, stack = torch.ops.aten.cat.default, torch.ops.aten.stack.default

    def meta(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype, device="meta")

    def same(func, args):
        out, expected = memo.run(func, args, {}), func(*args)
        return (out.shape, out.stride(), out.dtype) == (
            expected.shape,
            expected.stride(),
            expected.dtype,
        )

    joined = [
        (cat, ([meta(2, 3), meta(4, 3)],)),
        (cat, ([meta(2, 3), meta(2, 5), meta(2, 1)], 1)),
        (cat, ([meta(2, 3, 4)] * 300, -1)),
        (cat, ([meta(5, dtype=torch.int64)] * 3,)),
        (stack, ([meta(3)] * 500, 1)),
        (stack, ([meta(2, 3)] * 4, -1)),
        (stack, ([meta(2, 3)] * 4,)),
    ]
    for func, args in joined:
        assert standin._joined(func, args, {}) is not None
        assert same(func, args)
    left_to_the_kernel = [
        (cat, ([meta(2, 3), meta(2, 3, dtype=torch.float64)],)),  # promotion
        (cat, ([meta(2, 3), meta(3, 2).t()],)),  # a transposed input
        (cat, ([meta(2, 3, 4, 5)] * 2, 1)),  # rank 4: a layout the kernel decides
        (cat, ([meta(0), meta(2, 3)],)),  # the legacy empty tensor, skipped
        (stack, ([meta(2, 3, 4)] * 2,)),
    ]
    for func, args in left_to_the_kernel:
        assert standin._joined(func, args, {}) is None
        assert same(func, args)
    for func, args in [(cat, ([meta(2, 3), meta(2, 4)],)), (stack, ([meta(2), meta(3)],))]:
        assert standin._joined(func, args, {}) is None
        with pytest.raises(RuntimeError):
            memo.run(func, args, {})


def test_comparisons_and_boolean_reductions_of_meta_tensors_are_shaped_as_their_kernels_do():
    """A decoder's stop test at every step (``stack(ids).eq(end).any(-1).all()``) on meta
    tensors: comparisons with a number, any and all are shaped without their Python meta
    kernels, exactly as those shape them; other inputs are left to the kernels."""
    from depgraph_ext.graph import standin

    memo = standin.MetaResults()
    a = torch.ops.aten

    def meta(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype, device="meta")

    def layout(t):
        return t.shape, t.stride(), t.dtype

    shaped = [
        (a.eq.Scalar, (meta(2, 7, dtype=torch.int64), 49)),
        (a.ne.Scalar, (meta(3), 0.5)),
        (a.lt.Scalar, (meta(2, 3, 4), 0)),
        (a.ge.Scalar, (meta(0, 3), True)),
        (a.gt.Scalar, (meta((), dtype=torch.float64), 1)),
        (a.le.Scalar, (meta(5, dtype=torch.bool), 0)),
        (a.any.dim, (meta(2, 7, dtype=torch.bool), -1)),
        (a.any.dim, (meta(2, 7, 3), 1, True)),
        (a.all.dim, (meta(4, 0, 2, dtype=torch.int32), 0)),
        (a.any.default, (meta(2, 7, dtype=torch.bool),)),
        (a.all.default, (meta(3, 1),)),
    ]
    for func, args in shaped:
        assert standin._tested(func, args, {}) is not None, (func, args)
        assert layout(memo.run(func, args, {})) == layout(func(*args)), (func, args)
    left_to_the_kernel = [
        (a.eq.Scalar, (meta(3, 2).t(), 1)),  # strided: the result follows its layout
        (a.any.dim, (meta(2, 3, dtype=torch.uint8), 1)),  # uint8 stays uint8
        (a.all.default, (meta(2, dtype=torch.uint8),)),
        (a.eq.Scalar, (meta(2, dtype=torch.complex64), 1)),
        (a.any.dim, (meta(2, 3), 2)),  # a dim out of range: the kernel raises
    ]
    for func, args in left_to_the_kernel:
        assert standin._tested(func, args, {}) is None, (func, args)
    for func, args in left_to_the_kernel[:-1]:
        assert layout(memo.run(func, args, {})) == layout(func(*args)), (func, args)
    with pytest.raises(IndexError):
        memo.run(a.any.dim, (meta(2, 3), 2), {})


def test_resampling_of_meta_tensors_is_shaped_as_their_kernels_shape_it():
    """Upsampling (linear, bilinear, bicubic, trilinear) and grid samples have Python meta
    kernels that compute the result (milliseconds a call; a keypoint head upsamples each of
    100 detections bicubically): they are shaped directly, as those kernels shape them (shape,
    strides, dtype) and as the CPU kernels do, and every call a kernel may refuse goes to the
    meta kernels."""
    from depgraph_ext.graph import standin

    aten = torch.ops.aten
    memo = standin.MetaResults()
    cl, cl3 = torch.channels_last, torch.channels_last_3d

    def cpu(*shape, fmt=None, dtype=torch.float64, t=False):
        x = torch.rand(*shape, dtype=dtype) * 2 - 1
        x = x.contiguous(memory_format=fmt) if fmt is not None else x
        return x.transpose(0, 1) if t else x

    def layout(x):
        return (x.shape, x.stride(), x.dtype)

    shaped = [
        (aten.upsample_linear1d.default, (cpu(2, 3, 7), [11], False)),
        (aten.upsample_linear1d.default, (cpu(2, 3, 7, t=True), [5], True, 0.7)),
        (aten.upsample_bilinear2d.default, (cpu(2, 3, 7, 9), [11, 13], False)),
        (aten.upsample_bilinear2d.default, (cpu(2, 3, 7, 9, fmt=cl), [14, 18], True, 2.0, 2.0)),
        (aten.upsample_bilinear2d.default, (cpu(2, 3, 7, 9, t=True), [3, 4], False, None, None)),
        (aten.upsample_bicubic2d.default, (cpu(1, 17, 20, 30), [56, 56], False)),
        (
            aten.upsample_bicubic2d.default,
            (cpu(2, 3, 7, 9, fmt=cl, dtype=torch.float32), [5, 6], True),
        ),
        (aten.upsample_trilinear3d.default, (cpu(2, 3, 4, 5, 6), [8, 10, 12], False)),
        (aten.upsample_trilinear3d.default, (cpu(2, 3, 4, 5, 6, fmt=cl3), [3, 3, 3], True)),
        (aten.grid_sampler_2d.default, (cpu(2, 5, 7, 9), cpu(2, 6, 8, 2), 0, 0, False)),
        (
            aten.grid_sampler_2d.default,
            (cpu(2, 5, 7, 9, fmt=cl), cpu(2, 6, 8, 2).transpose(1, 2), 2, 1, True),
        ),
        (aten.grid_sampler_2d.default, (cpu(5, 2, 7, 9, t=True), cpu(2, 3, 4, 2), 1, 2, False)),
        (aten.grid_sampler_3d.default, (cpu(2, 5, 4, 7, 9), cpu(2, 3, 6, 8, 3), 0, 0, False)),
        (
            aten.grid_sampler_3d.default,
            (cpu(2, 5, 4, 7, 9, fmt=cl3), cpu(2, 3, 6, 8, 3), 1, 1, True),
        ),
    ]

    def on_meta(args):
        return tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)

    for func, args in shaped:
        meta_args = on_meta(args)
        assert standin._resampled(func, meta_args, {}) is not None, func
        out = memo.run(func, meta_args, {})
        assert layout(out) == layout(func(*meta_args)) == layout(func(*args)), func
    refused = [  # (the CPU kernels of some torch versions raise)
        (aten.upsample_bilinear2d.default, (cpu(2, 3, 0, 9), [4, 4], False)),  # an empty dim
        (aten.upsample_bilinear2d.default, (cpu(2, 3, 7), [4, 4], False)),  # rank 3
        (aten.upsample_bicubic2d.default, (cpu(2, 3, 7, 9), [0, 4], False)),  # size 0
        (aten.grid_sampler_2d.default, (cpu(2, 5, 7, 9), cpu(2, 6, 8, 3), 0, 0, False)),
        (aten.grid_sampler_2d.default, (cpu(2, 5, 7, 9), cpu(3, 6, 8, 2), 0, 0, False)),
        (aten.grid_sampler_3d.default, (cpu(2, 5, 4, 7, 9), cpu(2, 3, 6, 8, 3), 2, 0, False)),
    ]
    for func, args in refused:
        meta_args = on_meta(args)
        assert standin._resampled(func, meta_args, {}) is None, func
        try:  # (some meta kernels are more lenient than the CPU's: their word stands)
            expected = layout(func(*meta_args))
        except Exception as exc:  # noqa: BLE001
            with pytest.raises(type(exc)):
                memo.run(func, meta_args, {})
        else:
            assert layout(memo.run(func, meta_args, {})) == expected
    other_dtypes = (cpu(2, 5, 7, 9), cpu(2, 6, 8, 2, dtype=torch.float32), 0, 0, False)
    assert standin._resampled(aten.grid_sampler_2d.default, on_meta(other_dtypes), {}) is None


def test_in_place_ops_on_meta_are_checked_once_per_layout():
    """An op that writes its first argument alone is run once per key of its arguments'
    layouts; from then on it returns that argument as its kernel did. One that refuses its
    arguments refuses every time, and one that changes its argument's layout (``t_``,
    ``unsqueeze_``) always runs."""
    from depgraph_ext.graph import standin

    memo = standin.MetaResults()

    def meta(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype, device="meta")

    sigmoid_, add_ = torch.ops.aten.sigmoid_.default, torch.ops.aten.add_.Tensor
    runs = []
    for _ in range(3):
        x = meta(4, 6)
        assert memo.run(sigmoid_, (x,), {}) is x
        assert memo.run(add_, (x, meta(6)), {}) is x
        runs.append(len(memo._writes_accepted))
    assert runs == [2, 2, 2]
    for _ in range(2):  # does not broadcast to the written shape; a float into an int
        with pytest.raises(RuntimeError):
            memo.run(add_, (meta(4, 6), meta(4, 1, 6)), {})
        with pytest.raises(RuntimeError):
            memo.run(add_, (meta(4, dtype=torch.int64), meta(4)), {})
    for _ in range(2):
        x = meta(4, 6)
        assert memo.run(torch.ops.aten.t_.default, (x,), {}) is x and x.shape == (6, 4)
        assert memo.run(torch.ops.aten.unsqueeze_.default, (x, 0), {}).shape == (1, 6, 4)
    assert len(memo._writes_accepted) == 2
    assert standin.in_place_key(torch.ops.aten.copy_.default, (meta(2), meta(2)), {}) is not None
    assert standin.in_place_key(torch.ops.aten.add.Tensor, (meta(2), meta(2)), {}) is None
