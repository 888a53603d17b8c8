"""One graph, whatever the device.

ATen dispatches by device: on a GPU, batch norm runs cuDNN's kernel, attention a fused one
(flash, memory-efficient, cuDNN), ``F.rms_norm`` a fused kernel and a recurrent stack cuDNN's
whole-stack op. A model on a GPU is traced as the CPU would run it, so its groups and plan are
the CPU's; and each of those ops has a rule that couples what its CPU counterpart couples (a
model that calls one directly, or a trace on real GPU tensors, meets them).

Without a GPU: the GPU's ops are called directly (every build has their meta kernels), and with
a CUDA build of torch, models are put on fake ``cuda`` tensors.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import depgraph_ext as dx
from depgraph_ext.graph import trace as tr
from helpers import groups_of, tiny_llama, to_fake_device

aten = torch.ops.aten
CUDA_BUILD = torch.backends.cuda.is_built()
needs_cuda_build = pytest.mark.skipif(
    not CUDA_BUILD, reason="fake cuda tensors need a CUDA build of torch"
)


def graph(model, inputs, **kwargs) -> dx.DependencyGraph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dx.DependencyGraph(model, inputs, **kwargs)


# -- the GPU's ops, called directly -----------------------------------------------------------
class ConvNormNet(nn.Module):
    """conv -> batch norm (eval) -> relu -> conv; ``norm`` picks how the first conv and the
    batch norm run."""

    def __init__(self, norm: str = "functional"):
        super().__init__()
        self.norm = norm
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        c, bn = self.conv1, self.bn
        if self.norm == "mkldnn conv":  # the CPU's own convolution kernel, called by name
            h = aten.mkldnn_convolution(x, c.weight, c.bias, [1, 1], [1, 1], [1, 1], 1)
        else:
            h = c(x)
        args = (h, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if self.norm in ("functional", "mkldnn conv"):
            h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1)
        elif self.norm == "cudnn":
            h = aten.cudnn_batch_norm(*args, False, 0.1, bn.eps)[0]
        elif self.norm == "miopen":
            h = aten.miopen_batch_norm(*args, False, 0.1, bn.eps)[0]
        else:  # what export decomposes batch norm to
            h = aten._batch_norm_no_update(*args, 0.1, bn.eps)[0]
        return self.conv2(torch.relu(h))


class AttentionNet(nn.Module):
    """q/k/v projections, ``heads`` query heads over ``kv_heads`` key/value heads, one
    attention call (``kernel`` picks which), an output projection."""

    def __init__(self, kernel: str = "sdpa", heads: int = 4, kv_heads: int = 4, head_dim=8):
        super().__init__()
        self.kernel, self.heads, self.kv_heads, self.head_dim = kernel, heads, kv_heads, head_dim
        width = heads * head_dim
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, kv_heads * head_dim)
        self.v = nn.Linear(width, kv_heads * head_dim)
        self.o = nn.Linear(width, width)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.kernel == "sdpa":
            gqa = self.heads != self.kv_heads
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif self.kernel == "flash":
            out = aten._scaled_dot_product_flash_attention(q, k, v, is_causal=True)[0]
        elif self.kernel == "efficient":
            out = aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, True)[0]
        else:
            out = aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True)[0]
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class RMSNormNet(nn.Module):
    def __init__(self, fused: bool = False):
        super().__init__()
        self.fused = fused
        self.up = nn.Linear(6, 16)
        self.norm = nn.RMSNorm(16, eps=1e-6)
        self.down = nn.Linear(16, 3)

    def forward(self, x):
        h = self.up(x)
        if self.fused:
            h = aten._fused_rms_norm(h, [16], self.norm.weight, 1e-6)[0]
        else:
            h = F.rms_norm(h, (16,), self.norm.weight, 1e-6)
        return self.down(h)


class RecurrentNet(nn.Module):
    """A recurrent stack and a head; ``stack`` picks the module's own forward or the GPU's
    whole-stack op (cuDNN, MIOpen) over the module's weights."""

    def __init__(self, kind: str = "lstm", stack: str = "module", **kwargs):
        super().__init__()
        self.stack = stack
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](6, 12, **kwargs)
        r = self.rnn
        out = (r.proj_size or r.hidden_size) * (2 if r.bidirectional else 1)
        self.head = nn.Linear(out, 3)

    def forward(self, x):
        r = self.rnn
        if self.stack == "module":
            return self.head(r(x)[0])
        directions = 2 if r.bidirectional else 1
        batch = x.shape[1]
        hx = x.new_zeros(r.num_layers * directions, batch, r.proj_size or r.hidden_size)
        lstm = isinstance(r, nn.LSTM)
        cx = x.new_zeros(r.num_layers * directions, batch, r.hidden_size) if lstm else None
        mode = {"LSTM": 2, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 0}[r.mode]
        stride = (4 if r.bias else 2) + (1 if r.proj_size else 0)
        weights = [getattr(r, name) for name in r._flat_weights_names]
        if self.stack == "cudnn":
            out = aten._cudnn_rnn(
                x, weights, stride, None, hx, cx, mode, r.hidden_size, r.proj_size,
                r.num_layers, False, 0.0, False, r.bidirectional, [], None,
            )[0]  # fmt: skip
        else:
            out = aten.miopen_rnn(
                x, weights, stride, hx, cx, mode, r.hidden_size, r.num_layers, False, 0.0,
                False, r.bidirectional, [], None,
            )[0]  # fmt: skip
        return self.head(out)


PAIRS = {  # name: (the CPU's model, the model calling the GPU's op, its op, input shape)
    "cudnn batch norm": (
        ConvNormNet,
        lambda: ConvNormNet("cudnn"),
        "cudnn_batch_norm",
        (2, 3, 6, 6),
    ),
    "miopen batch norm": (
        ConvNormNet,
        lambda: ConvNormNet("miopen"),
        "miopen_batch_norm",
        (2, 3, 6, 6),
    ),
    "the CPU's mkldnn convolution": (
        ConvNormNet,
        lambda: ConvNormNet("mkldnn conv"),
        "mkldnn_convolution",
        (2, 3, 6, 6),
    ),
    "batch norm, export's form": (
        ConvNormNet,
        lambda: ConvNormNet("no_update"),
        "_batch_norm_no_update",
        (2, 3, 6, 6),
    ),
    "flash attention": (
        AttentionNet,
        lambda: AttentionNet("flash"),
        "_scaled_dot_product_flash_attention",
        (2, 5, 32),
    ),
    "flash attention, grouped query heads": (
        lambda: AttentionNet(heads=4, kv_heads=2),
        lambda: AttentionNet("flash", heads=4, kv_heads=2),
        "_scaled_dot_product_flash_attention",
        (2, 5, 32),
    ),
    "memory-efficient attention": (
        AttentionNet,
        lambda: AttentionNet("efficient"),
        "_scaled_dot_product_efficient_attention",
        (2, 5, 32),
    ),
    "cuDNN attention": (
        AttentionNet,
        lambda: AttentionNet("cudnn"),
        "_scaled_dot_product_cudnn_attention",
        (2, 5, 32),
    ),
    "cuDNN LSTM, 2 layers, bidirectional": (
        lambda: RecurrentNet("lstm", num_layers=2, bidirectional=True),
        lambda: RecurrentNet("lstm", "cudnn", num_layers=2, bidirectional=True),
        "_cudnn_rnn",
        (5, 3, 6),
    ),
    "cuDNN LSTM with projections": (
        lambda: RecurrentNet("lstm", num_layers=2, proj_size=4),
        lambda: RecurrentNet("lstm", "cudnn", num_layers=2, proj_size=4),
        "_cudnn_rnn",
        (5, 3, 6),
    ),
    "cuDNN GRU without biases": (
        lambda: RecurrentNet("gru", bias=False),
        lambda: RecurrentNet("gru", "cudnn", bias=False),
        "_cudnn_rnn",
        (5, 3, 6),
    ),
    "cuDNN RNN, 3 layers": (
        lambda: RecurrentNet("rnn", num_layers=3),
        lambda: RecurrentNet("rnn", "cudnn", num_layers=3),
        "_cudnn_rnn",
        (5, 3, 6),
    ),
    "MIOpen GRU, bidirectional": (
        lambda: RecurrentNet("gru", bidirectional=True),
        lambda: RecurrentNet("gru", "miopen", bidirectional=True),
        "miopen_rnn",
        (5, 3, 6),
    ),
}


@pytest.mark.parametrize("name", list(PAIRS))
def test_a_device_specific_op_couples_what_its_counterpart_couples(name):
    """The same groups (members, units, exactness, kind) from the GPU's op as from the
    functional the CPU runs; and something prunes."""
    make_cpu, make_gpu, op, shape = PAIRS[name]
    torch.manual_seed(0)
    reference = make_cpu().eval()
    on_gpu_ops = make_gpu().eval()
    on_gpu_ops.load_state_dict(reference.state_dict())
    x = torch.randn(shape)
    want = graph(reference, x)
    got = graph(on_gpu_ops, x, strict=True)  # strict: an op without a rule raises
    assert any(n.packet == f"aten.{op}" for n in got.graph.nodes)
    assert groups_of(got) == groups_of(want)
    assert any(g.num_prunable for g in got.groups)


# -- models on a GPU, traced as the CPU runs them ------------------------------------------------
def small_llama():
    return tiny_llama(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )


MODELS = {
    "conv net with batch norm": (lambda: ConvNormNet(), lambda d: torch.randn(2, 3, 6, 6)),
    "attention, grouped query heads": (
        lambda: AttentionNet(heads=4, kv_heads=2),
        lambda d: torch.randn(2, 5, 32),
    ),
    "LSTM, 2 layers, bidirectional": (
        lambda: RecurrentNet("lstm", num_layers=2, bidirectional=True),
        lambda d: torch.randn(5, 3, 6),
    ),
    "RMSNorm": (lambda: RMSNormNet(), lambda d: torch.randn(2, 5, 6)),
    "small Llama (GQA 4/2)": (small_llama, lambda d: {"input_ids": torch.randint(0, 64, (1, 7))}),
}


GPU_OPS = {f"aten.{op}" for _, _, op, _ in PAIRS.values()} | {"aten._fused_rms_norm"}


def on_fake_cuda(make_model, make_inputs):
    """The model built on the CPU (seeded), then put on fake ``cuda`` tensors with its inputs."""
    torch.manual_seed(0)
    return to_fake_device(make_model().eval(), make_inputs("cpu"), "cuda")


@needs_cuda_build
@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_on_the_gpu_gets_the_groups_it_gets_on_the_cpu(name):
    make_model, make_inputs = MODELS[name]
    torch.manual_seed(0)
    want = graph(make_model().eval(), make_inputs("cpu"))
    model, inputs = on_fake_cuda(make_model, make_inputs)
    got = graph(model, inputs)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert not [n.packet for n in got.graph.nodes if n.packet in GPU_OPS]
    assert groups_of(got) == groups_of(want)


@needs_cuda_build
def test_a_model_on_the_gpu_prunes_to_the_plan_it_gets_on_the_cpu(monkeypatch):
    """Scores that read no weight (random, seeded) on a model on fake cuda tensors: the plan,
    the attributes and the new shapes are the CPU's; parameters stay cuda tensors. (The
    slicing runs in the model's fake mode: without a GPU, kept indices cannot go to one.)"""
    from depgraph_ext.pruning import pruner

    make_model, make_inputs = MODELS["small Llama (GQA 4/2)"]
    torch.manual_seed(0)
    cpu_model = make_model()
    want = dx.prune(cpu_model, make_inputs("cpu"), importance=dx.RandomImportance(seed=3))
    model, inputs = on_fake_cuda(make_model, make_inputs)
    params = dict(model.named_parameters())
    apply_changes = pruner.apply_changes

    def in_fake_mode(*args, **kwargs):
        with next(iter(params.values())).fake_mode:
            return apply_changes(*args, **kwargs)

    monkeypatch.setattr(pruner, "apply_changes", in_fake_mode)
    got = dx.prune(model, inputs, importance=dx.RandomImportance(seed=3))
    assert got.plan.keys() == want.plan.keys()
    for name, dims in want.plan.items():
        assert {d: k.tolist() for d, k in got.plan[name].items()} == {
            d: k.tolist() for d, k in dims.items()
        }
    for name, p in model.named_parameters():
        assert p is params[name] and p.device.type == "cuda"
        assert p.shape == dict(cpu_model.named_parameters())[name].shape
    assert model.config.num_key_value_heads == cpu_model.config.num_key_value_heads


@needs_cuda_build
@pytest.mark.parametrize("name", ["conv net with batch norm", "RMSNorm"])
def test_a_trace_as_the_gpu_records_its_ops_and_the_same_groups(name):
    """A meta model traced as ``cuda`` runs the GPU's dispatch on fake cuda tensors: batch norm
    becomes cuDNN's, ``F.rms_norm`` the fused kernel (which a CPU build decomposes even when
    called by name). The rules give the CPU's groups. (Attention is left out: with no GPU to
    choose a kernel for, it decomposes into matmuls, another graph, which is why models are
    traced as the CPU.)"""
    make_model, make_inputs = MODELS[name]
    torch.manual_seed(0)
    want = graph(make_model().eval(), make_inputs("cpu"))
    with torch.device("meta"):
        model = make_model().eval()
    got = graph(model, make_inputs("cpu").to("meta"), trace_device="cuda")
    gpu_op = {ConvNormNet: "aten.cudnn_batch_norm", RMSNormNet: "aten._fused_rms_norm"}
    if type(model) in gpu_op:
        assert any(n.packet == gpu_op[type(model)] for n in got.graph.nodes)
    assert groups_of(got) == groups_of(want)


def test_code_that_moves_tensors_elsewhere_is_traced_on_the_cpu():
    """A move to another device and a factory there: a meta trace and a fake one both run
    them as the CPU's, and the groups are those of the same code without the moves."""

    class Moves(nn.Module):
        def __init__(self, move: bool = True):
            super().__init__()
            self.move = move
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            if self.move:
                h = h.to("meta") + torch.zeros(8, device="meta")
                h = h.to("cpu")
            return self.b(h)

    x = torch.randn(2, 4)
    for allow_meta in (True, False):
        g = tr.trace(Moves(), x, allow_meta=allow_meta)
        assert g.mode == ("meta" if allow_meta else "fake")
        assert {g.values[v].shape for v in g.outputs} == {(2, 2)}
    assert groups_of(graph(Moves(), x)) == groups_of(graph(Moves(move=False), x))


# -- whole prunes on a GPU (skipped without one; `make gpu-check` runs them) ---------------------
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def tiny_mixtral():
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(config).eval()


def small_resnext():
    from nets import ResNeXt, randomize_norms

    torch.manual_seed(0)
    return randomize_norms(ResNeXt(ch=16, blocks=2, cardinality=4, width=4)).eval()


def small_densenet():
    from nets import DenseNet, randomize_norms

    torch.manual_seed(0)
    return randomize_norms(DenseNet(blocks=(2, 2), growth=8, stem=16, num_classes=10)).eval()


IDS = {"input_ids": torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))}
ON_GPU = {
    "ResNeXt (grouped convs, batch norm)": (small_resnext, torch.randn(2, 3, 16, 16)),
    "DenseNet": (small_densenet, torch.randn(2, 3, 16, 16)),
    "attention, grouped query heads": (
        lambda: AttentionNet(heads=4, kv_heads=2),
        torch.randn(2, 5, 32),
    ),
    "LSTM, 2 layers, bidirectional": (
        lambda: RecurrentNet("lstm", num_layers=2, bidirectional=True),
        torch.randn(5, 3, 6),
    ),
    "small Llama (GQA 4/2)": (small_llama, IDS),
    "small Mixtral (4 experts, top-2)": (tiny_mixtral, IDS),
}


def to_device(inputs, device):
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


@needs_gpu
@pytest.mark.parametrize("name", list(ON_GPU))
def test_a_prune_on_the_gpu_is_the_prune_on_the_cpu(name):
    """Default options on cuda: the CPU's plan (float64: the same scores up to reduction
    order), every parameter the same object on cuda, kept slices bit-identical; exact_only
    passes the oracle on cuda; verify=True passes."""
    import copy

    from depgraph_ext.testing import assert_kept_bit_identical, assert_scatter_back_equal

    make_model, x = ON_GPU[name]
    torch.manual_seed(0)
    base = make_model().double().eval()
    want = dx.prune(copy.deepcopy(base), x)
    original = copy.deepcopy(base).to("cuda")
    model = copy.deepcopy(original)
    params = dict(model.named_parameters())
    xc = to_device(x, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.FunctionChangingWarning)
        got = dx.prune(model, xc)
    assert got.plan.keys() == want.plan.keys()
    for tensor, dims in want.plan.items():
        for d, kept in dims.items():
            assert torch.equal(got.plan[tensor][d].cpu(), kept.cpu()), (tensor, d)
    for n, p in model.named_parameters():
        assert p is params[n] and p.device.type == "cuda"
    assert_kept_bit_identical(original, model, got.plan)
    exact = copy.deepcopy(original)
    result = dx.prune(exact, xc, exact_only=True, verify=True)
    assert_scatter_back_equal(original, exact, result.plan, xc)


@needs_gpu
def test_an_in_place_prune_on_the_gpu_leaves_storages_of_the_pruned_size(tmp_path):
    """``in_place=True`` on cuda: kept slices bit-identical to the default prune's, each
    parameter the same object, and each storage cut to its tensor (the caching allocator's
    block is reallocated: ``torch.save`` writes the pruned bytes, not the original's)."""
    make_model, x = ON_GPU["small Llama (GQA 4/2)"]
    torch.manual_seed(0)
    a, b = make_model().to("cuda"), make_model().to("cuda")
    params = dict(b.named_parameters())
    xc = to_device(x, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.FunctionChangingWarning)
        want = dx.prune(a, xc, ratio=0.5)
        got = dx.prune(b, xc, ratio=0.5, in_place=True)
    assert got.plan.keys() == want.plan.keys() and got.plan
    for n, p in b.named_parameters():
        assert p is params[n] and p.device.type == "cuda"
        assert torch.equal(p, dict(a.named_parameters())[n])
        if n in got.plan:
            assert p.untyped_storage().nbytes() == p.numel() * p.element_size(), n
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    assert (tmp_path / "b.pt").stat().st_size == (tmp_path / "a.pt").stat().st_size
