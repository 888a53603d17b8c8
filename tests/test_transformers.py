"""Transformers and LLMs: heads (GQA included), MLP channels and the hidden size, on real
transformers architectures with random weights; models reload with from_pretrained."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import depgraph_ext as dx
from depgraph_ext.testing import outputs_of, scatter_back
from helpers import BACKENDS, prune_and_check

T = pytest.importorskip("transformers")

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
PIXELS = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

# name -> (factory, inputs, class that reloads it, whether head pruning is expressible)
LLMS = {
    "llama_8_2": (
        lambda: T.LlamaForCausalLM(
            T.LlamaConfig(
                vocab_size=128,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=8,
                num_key_value_heads=2,
            )
        ),
        True,
    ),
    "qwen2_24_8": (
        lambda: T.Qwen2ForCausalLM(
            T.Qwen2Config(
                vocab_size=128,
                hidden_size=192,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=24,
                num_key_value_heads=8,
            )
        ),
        True,
    ),
    "qwen3_28_4": (
        lambda: T.Qwen3ForCausalLM(
            T.Qwen3Config(
                vocab_size=128,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=28,
                num_key_value_heads=4,
                head_dim=8,
            )
        ),
        True,
    ),
    "mistral_8_2": (
        lambda: T.MistralForCausalLM(
            T.MistralConfig(
                vocab_size=128,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=8,
                num_key_value_heads=2,
            )
        ),
        True,
    ),
    "gpt2": (
        lambda: T.GPT2LMHeadModel(
            T.GPT2Config(
                vocab_size=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
            )
        ),
        False,
    ),
    "opt": (
        lambda: T.OPTForCausalLM(
            T.OPTConfig(
                vocab_size=128,
                hidden_size=64,
                ffn_dim=96,
                num_hidden_layers=2,
                num_attention_heads=4,
                word_embed_proj_dim=64,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=1,
            )
        ),
        False,
    ),
    "bert": (
        lambda: T.BertForMaskedLM(
            T.BertConfig(
                vocab_size=128,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=4,
            )
        ),
        False,
    ),
}
VISION = {
    "vit": (
        lambda: T.ViTForImageClassification(
            T.ViTConfig(
                image_size=32,
                patch_size=8,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_labels=5,
            )
        ),
        True,
    ),
    "swin": (
        lambda: T.SwinForImageClassification(
            T.SwinConfig(
                image_size=32,
                patch_size=4,
                embed_dim=16,
                depths=[2, 2],
                num_heads=[2, 4],
                window_size=4,
                num_labels=5,
            )
        ),
        False,
    ),
}


def build(factory):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory().double().eval()


def inputs_for(name):
    return {"pixel_values": PIXELS} if name in VISION else {"input_ids": IDS}


def reload_and_compare(model, inputs, tmp_path, tolerance=0.0):
    """``tolerance``: where a loaded tensor's address alignment changes the order in which
    the CPU's matrix products sum (1e-16 apart in float64)."""
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = (
            type(model)
            .from_pretrained(
                tmp_path,
                dtype=torch.float64,
                attn_implementation=model.config._attn_implementation,  # (not saved: chosen)
            )
            .eval()
        )
    for a, b in zip(outputs_of(model, inputs), outputs_of(again, inputs)):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


def heads_of(model):
    return [
        m
        for m in model.modules()
        if any(hasattr(m, a) for a in ("num_heads", "num_attention_heads", "n_head"))
        and hasattr(m, "forward")
        and any(isinstance(c, nn.Linear) or type(c).__name__ == "Conv1D" for c in m.children())
    ]


ALL = {**LLMS, **VISION}


@pytest.mark.parametrize("name", list(ALL))
def test_heads_and_mlp_scatter_back_oracle(name):
    factory, loadable = ALL[name]
    model = build(factory)
    inputs = inputs_for(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.ConfigMismatchWarning)
        pruned, result = prune_and_check(
            model, inputs, ratio=0.5, ratios={"heads": 0.5, "hidden": 0.0}
        )
    before = dx.DependencyGraph(build(factory), inputs)
    after = dx.DependencyGraph(pruned, inputs)
    assert {g.kind for g in before.groups} >= {"heads", "channels"}

    def kv_heads(dg):  # key/value heads of every attention call, as traced
        sizes = dg.slot_sizes
        return [int(sizes[c.kv_heads]) for c in dg.coupling_model.attention]

    assert kv_heads(after) == [n - n // 2 for n in kv_heads(before)]
    assert result.params_after < result.params_before


@pytest.mark.parametrize("name", [n for n, (_, loadable) in ALL.items() if loadable])
def test_heads_mlp_and_hidden_reload(name, tmp_path):
    factory, _ = ALL[name]
    model = build(factory)
    inputs = inputs_for(name)
    original_config = copy.deepcopy(model.config)
    pruned, result = prune_and_check(
        model,
        inputs,
        ratio=0.5,
        oracle=False,
        ratios={"heads": 0.5, "hidden": 0.25},
        require_loadable=True,
    )
    cfg, old = pruned.config, original_config
    if hasattr(old, "num_key_value_heads"):
        assert cfg.num_key_value_heads == old.num_key_value_heads // 2
    assert cfg.num_attention_heads == old.num_attention_heads // 2
    assert cfg.hidden_size == old.hidden_size - old.hidden_size // 4
    assert cfg.intermediate_size == old.intermediate_size // 2
    assert cfg.head_dim == (
        getattr(old, "head_dim", None) or old.hidden_size // old.num_attention_heads
    )
    reload_and_compare(pruned, inputs, tmp_path)


@pytest.mark.parametrize("name", [n for n, (_, loadable) in ALL.items() if not loadable])
def test_models_whose_config_derives_head_dim(name, tmp_path):
    """Head pruning cannot be expressed by these configs: the user is told, and MLP-only
    pruning reloads."""
    factory, _ = ALL[name]
    inputs = inputs_for(name)
    with pytest.warns(dx.ConfigMismatchWarning, match="ratios="):
        dx.prune(build(factory), inputs, ratio=0.5, ratios={"hidden": 0.0})
    model = build(factory)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(dx.PruningError, match="cannot express"):
        dx.prune(model, inputs, ratio=0.5, ratios={"hidden": 0.0}, require_loadable=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruned, result = prune_and_check(
        model, inputs, ratio=0.5, ratios={"heads": 0.0, "hidden": 0.0}, require_loadable=True
    )
    reload_and_compare(pruned, inputs, tmp_path)


def test_gqa_unit_is_a_kv_head_with_its_query_heads():
    model = build(LLMS["qwen3_28_4"][0])
    dg = dx.DependencyGraph(model, {"input_ids": IDS})
    [heads] = [
        g
        for g in dg.groups
        if g.kind == "heads"
        and any(m.name == "model.layers.0.self_attn.q_proj.weight" for m in g.members)
    ]
    assert heads.num_units == 4  # key/value heads
    q = next(m for m in heads.members if m.name == "model.layers.0.self_attn.q_proj.weight")
    k = next(m for m in heads.members if m.name == "model.layers.0.self_attn.k_proj.weight")
    assert q.unit_size == 7 * 8 and k.unit_size == 8  # 7 query heads x head_dim 8 per unit
    assert q.units.tolist() == [i // 56 for i in range(224)]
    result = dx.prune(model, {"input_ids": IDS}, ratio=0.0, ratios={"heads": 0.5})
    assert model.config.num_attention_heads == 14 and model.config.num_key_value_heads == 2
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (112, 64)
    assert result.params_after < result.params_before


def test_rotary_rotate_half_closes_and_tied_embeddings(backend):
    config = T.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    model = build(lambda: T.LlamaForCausalLM(config))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    dg = dx.DependencyGraph(model, {"input_ids": IDS}, backend=backend)
    # rotate-half splits head_dim 16 into [half, pair]; the half factor is blocked, and head
    # dims are not offered, so the rotary buffer stays whole.
    dims = dg.tensor_dims["model.rotary_emb.inv_freq"][0]
    assert dims.size == 8
    result = dx.prune(model, {"input_ids": IDS}, ratio=0.5, backend=backend)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert result.tied == {"lm_head.weight": "model.embed_tokens.weight"}  # both names
    assert model.lm_head.weight.shape == (128, model.config.hidden_size)
    assert "model.rotary_emb.inv_freq" not in result.plan | result.non_persistent


class TimmStyleViT(nn.Module):
    """A ViT written the way timm writes it: class token and position embedding parameters,
    attention from a fused qkv linear, matmul and softmax, layer scale."""

    def __init__(self, dim=48, depth=2, heads=4, patch=8, image=32, classes=5):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))  # layer scale
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.gamma * self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


def test_timm_style_vit_heads_mlp_and_hidden():
    model = build(TimmStyleViT)
    pruned, result = prune_and_check(model, PIXELS, ratio=0.5, ratios={"hidden": 0.0})
    assert all(b.attn.num_heads == 2 for b in pruned.blocks)
    assert pruned.blocks[0].fc1.out_features == 96
    _, hidden = prune_and_check(build(TimmStyleViT), PIXELS, ratio=0.25, oracle=False)
    assert hidden.plan["pos_embed"].keys() == {2} and hidden.plan["cls_token"].keys() == {2}
    assert pruned.blocks[0].attn.qkv.weight.shape == (3 * 2 * 12, 48)


def test_llama_3_8b_shape_traces_on_meta_without_weights():
    config = T.LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=8,
    )
    with torch.device("meta"):
        model = T.LlamaForCausalLM(config)
    dg = dx.DependencyGraph(model, {"input_ids": torch.randint(0, 128256, (1, 16))})
    kinds = [g.kind for g in dg.groups]
    assert kinds.count("hidden") == 1 and kinds.count("channels") == 2
    kv = [
        g
        for g in dg.groups
        if any(
            m.name.endswith("layers.0.self_attn.k_proj.weight") and m.dim == 0 for m in g.members
        )
    ]
    assert [g.kind for g in kv] == ["heads"] and kv[0].num_units == 8
    assert BACKENDS  # both backends agree on this graph too
    if len(BACKENDS) == 2:
        from depgraph_ext.graph.resolve import resolutions_equal, resolve

        py = resolve(dg.couplings, "python")
        assert resolutions_equal(py, dg.resolution)


def test_torch_multihead_attention_prunes_whole_heads_with_their_stream_block():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
            self.out = nn.Linear(16, 2)

        def forward(self, x):
            h = self.inp(x)
            a, _ = self.mha(h, h, h, need_weights=False)
            return self.out(a + h)

    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    pruned, result = prune_and_check(Block().double().eval(), x, ratio=0.5)
    mha = pruned.mha
    assert (mha.embed_dim, mha.num_heads, mha.head_dim) == (8, 2, 4)
    assert mha.in_proj_weight.shape == (24, 8) and mha.out_proj.weight.shape == (8, 8)


@pytest.mark.parametrize(
    "heads, ratio, options",
    [
        (3, 0.5, {}),  # an odd head count: the module's Python path, not its fused op
        (4, 0.67, {}),
        (5, 0.3, {"bias": False}),
        (4, 0.5, {"add_bias_kv": True, "add_zero_attn": True}),
        (4, 0.5, {"kdim": 10, "vdim": 6}),  # separate projections, the key and value own widths
        (6, 0.5, {"fast_path": False}),  # what traces of transformer layers run
    ],
    ids=["odd", "two-thirds", "no-bias", "bias-kv", "kdim-vdim", "python-path"],
)
def test_torch_multihead_attention_keeps_heads_times_head_dim_at_any_ratio(heads, ratio, options):
    """The module's Python path computes head_dim = embed_dim // num_heads from the query's
    width: the widths it takes and makes must stay heads x head dim. Before, they pruned by
    their own ratios and met only where the ratio happened to keep both alike (3 heads at 0.5:
    2 heads of 4 channels against 6 channels), and the plan's check then blocked them all."""
    options = dict(options)
    fast = options.pop("fast_path", True)
    width = 4 * heads

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, width)
            self.key = nn.Linear(6, options.get("kdim", width))
            self.value = nn.Linear(6, options.get("vdim", width))
            self.mha = nn.MultiheadAttention(width, heads, batch_first=True, **options)
            self.out = nn.Linear(width, 2)

        def forward(self, x):
            h = self.inp(x)
            k, v = (self.key(x), self.value(x)) if "kdim" in options else (h, h)
            a, _ = self.mha(h, k, v, need_weights=False)
            return self.out(a)

    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fast)
    try:
        pruned, _ = prune_and_check(Block().double().eval(), x, ratio=ratio)
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
    mha = pruned.mha
    kept = heads - int(heads * ratio + 1e-9)
    assert (mha.num_heads, mha.head_dim, mha.embed_dim) == (kept, 4, 4 * kept)
    assert pruned.inp.weight.shape[0] == mha.embed_dim == pruned.out.weight.shape[1]
    if "kdim" in options:
        assert mha.kdim == pruned.key.weight.shape[0] == mha.k_proj_weight.shape[1] < 10
        assert mha.vdim == pruned.value.weight.shape[0] == mha.v_proj_weight.shape[1] < 6
    assert pruned(x).shape == (2, 5, 2)


def test_einsum_attention_heads():
    class Einsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
            self.o = nn.Linear(16, 8)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = (f(x).view(b, n, -1, 4) for f in (self.q, self.k, self.v))
            a = torch.einsum("bnhd,bmhd->bhnm", q, k).softmax(-1)
            return self.o(torch.einsum("bhnm,bmhd->bnhd", a, v).reshape(b, n, -1))

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    dg = dx.DependencyGraph(Einsum().double(), x)
    assert [(g.kind, g.num_units) for g in dg.groups] == [("heads", 4)]
    pruned, _ = prune_and_check(Einsum().double().eval(), x, ratio=0.5)
    assert pruned.q.out_features == 8 and pruned.o.in_features == 8


@pytest.mark.parametrize("name", list(ALL))
def test_hidden_pruning_runs_with_parity(name):
    """Norms make exact equality impossible when the residual stream shrinks; the model's own
    forward runs, both backends agree and kept weights are bit-exact."""
    factory, _ = ALL[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.ConfigMismatchWarning)
        pruned, result = prune_and_check(
            build(factory),
            inputs_for(name),
            ratio=0.25,
            oracle=False,
            ratios={"heads": 0.0, "channels": 0.0},
        )
    assert result.params_after < result.params_before
    assert pruned(**inputs_for(name)) is not None


def test_config_check_reads_the_state_dicts_entries():
    """The loadability check walks a freshly built model's state_dict entries without building
    the dict: the same names and shapes (tied weights under both names, no non-persistent
    buffer such as rotary's inv_freq, a BatchNorm's counter)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from depgraph_ext.pruning.configs import state_shapes

    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        tie_word_embeddings=True,
    )
    extra = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    for model in (LlamaForCausalLM(cfg), extra):
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert dict(state_shapes(model)) == expected
        assert len(list(state_shapes(model))) == len(expected)


@pytest.mark.parametrize(
    "model_type, head_dim", [("yoso", "attention_head_size"), ("mvp", "head_dim")]
)
def test_a_configs_head_dims_stay_where_its_code_views_by_them(model_type, head_dim, tmp_path):
    """YOSO's and MVP's attention view by a head dim attribute the config derives
    (hidden / heads). Attributes given to views follow a plan in models from outside, not in
    a model its config builds: the head dims stay, and plain ``from_pretrained`` rebuilds the
    pruned model from its saved config."""
    from zoo_transformers import build as build_type

    zoo = build_type(model_type)
    model = zoo.model.double().eval()
    dims = {name: getattr(m, head_dim) for name, m in model.named_modules() if hasattr(m, head_dim)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.ConfigMismatchWarning)
        result = dx.prune(model, zoo.inputs, ratio=0.5, progress=False)
    assert result.params_after < result.params_before
    assert {name: getattr(model.get_submodule(name), head_dim) for name in dims} == dims
    reload_and_compare(model, zoo.inputs, tmp_path)


def test_repeated_key_value_groups_keep_their_query_heads():
    """EmbeddingGemma2 repeats its keys to the query heads (repeat_kv) in layers of two and of
    four query heads per key/value head: a unit is a key/value head with its query heads, so
    every layer keeps its count per group (no group goes down to one query head, where
    repeat_kv returns early and SDPA's math path runs other ops), and the oracle holds."""
    from zoo_transformers import build as build_type

    zoo = build_type("embedding_gemma2_text")
    model = zoo.model.double().eval()
    before = {
        n: m.num_key_value_groups
        for n, m in model.named_modules()
        if hasattr(m, "num_key_value_groups")
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, result = prune_and_check(model, zoo.inputs, ratio=0.5, exact_only=True)
    assert not [w for w in caught if "branches on module attributes" in str(w.message)]
    after = {n: pruned.get_submodule(n).num_key_value_groups for n in before}
    assert after == before and sorted(set(before.values())) == [2, 4]
    assert result.units["heads"][1] < result.units["heads"][0]  # (heads were pruned)


@pytest.mark.parametrize("name", ["llama_8_2", "gpt2"])
def test_a_pruned_model_generates_with_its_cache_what_its_scatter_back_generates(name):
    """``generate()`` after a prune: the key/value cache is made for the pruned heads (the
    config's counts follow), greedy decoding with it gives the tokens and scores of the
    scatter-back original, and the same as decoding without the cache."""
    factory, _ = LLMS[name]
    model = build(factory)
    original = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.ConfigMismatchWarning)
        result = dx.prune(model, {"input_ids": IDS}, ratio=0.5, exact_only=True, progress=False)
    assert result.params_after < result.params_before

    def generated(m, **options):
        out = m.generate(
            input_ids=IDS,
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
            **options,
        )
        return out.sequences, torch.stack(out.scores)

    tokens, scores = generated(model)
    expected_tokens, expected_scores = generated(scatter_back(original, result))
    assert torch.equal(tokens, expected_tokens)
    finite = expected_scores.isfinite()
    assert torch.equal(finite, scores.isfinite())
    torch.testing.assert_close(scores[finite], expected_scores[finite], rtol=1e-9, atol=1e-9)
    uncached_tokens, uncached_scores = generated(model, use_cache=False)
    assert torch.equal(tokens, uncached_tokens)
    torch.testing.assert_close(uncached_scores[finite], scores[finite], rtol=1e-9, atol=1e-9)


def _shared_config_pair():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    teacher = transformers.LlamaForCausalLM(config).eval()
    student = transformers.LlamaForCausalLM(teacher.config).eval()  # one config object
    return transformers, config, teacher, student


def test_a_model_sharing_its_config_object_prunes_without_changing_the_others(tmp_path):
    transformers, config, teacher, student = _shared_config_pair()
    before = config.to_dict()
    ids = {"input_ids": torch.randint(0, 64, (2, 7))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(student, ids, ratio=0.5, ratios={"hidden": 0, "heads": 0})
    assert [(u.field, u.new) for u in result.config_updates] == [("intermediate_size", 32)]
    # the student has a config of its own, held wherever the shared one was
    assert student.config.intermediate_size == 32 and student.config is not config
    assert student.model.layers[1].self_attn.config is student.config
    assert all(getattr(m, "config", student.config) is student.config for m in student.modules())
    # the teacher's (and the caller's) config is as it was: its checkpoint loads
    assert teacher.config is config and config.to_dict() == before
    teacher.save_pretrained(tmp_path / "teacher")
    student.save_pretrained(tmp_path / "student")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model, name in ((teacher, "teacher"), (student, "student")):
            reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / name).eval()
            torch.testing.assert_close(reloaded(**ids).logits, model(**ids).logits)


def test_an_undone_step_gives_the_model_its_config_back(monkeypatch):
    from depgraph_ext.pruning import validate

    _, config, _, student = _shared_config_pair()
    before = config.to_dict()
    real, calls = validate.checked_plan, []

    def fail_second(*args, **kwargs):
        calls.append(student.config is config)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(validate, "checked_plan", fail_second)
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="injected"):
        warnings.simplefilter("ignore")
        dx.prune(student, {"input_ids": torch.randint(0, 64, (2, 7))}, iterative_steps=2)
    assert calls == [True, False]  # the first step gave the student a config of its own
    assert student.config is config and config.to_dict() == before
    assert all(getattr(m, "config", config) is config for m in student.modules())
    assert student.model.layers[0].mlp.up_proj.out_features == 64


def test_a_tokenizers_output_is_the_example_inputs_it_holds():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).double().eval()
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    encoded = transformers.BatchEncoding({"input_ids": ids, "attention_mask": mask})
    assert not isinstance(encoded, dict)  # (a UserDict: a mapping)
    plans = []
    for inputs in ({"input_ids": ids, "attention_mask": mask}, encoded):
        m = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = dx.prune(m, inputs, ratio=0.5, exact_only=True)
        plans.append(result.plan)
        assert result.verify(inputs) <= 1e-9  # the scatter-back, run on the same inputs
    assert plans[0].keys() == plans[1].keys()
    assert all(torch.equal(plans[0][n][d], plans[1][n][d]) for n in plans[0] for d in plans[0][n])
    with pytest.raises(dx.InvalidArgumentError, match="whose names are strings, not 0"):
        dx.prune(copy.deepcopy(model), {0: ids}, ratio=0.5)


def _tiny_llava(**text_sizes):
    vision = T.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=16,
    )  # fmt: skip
    sizes = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)
    text = T.LlamaConfig(vocab_size=96, num_hidden_layers=2, **(sizes | text_sizes))
    config = T.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=95, image_seq_length=16,
        vision_feature_layer=-1,
    )  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = T.LlavaForConditionalGeneration(config).double().eval()
    ids = torch.randint(0, 90, (2, 24), generator=torch.Generator().manual_seed(1))
    ids[:, 2:18] = 95  # 16 image tokens: one image's patches each
    return model, {"input_ids": ids, "pixel_values": PIXELS}


def test_a_vision_language_models_towers_prune_and_its_sub_configs_reload(tmp_path):
    """Each tower of a composite model reads its own sub-config: the widths it prunes are
    set there (``text_config.intermediate_size``), and plain ``from_pretrained`` rebuilds the
    pruned model. (The projector's inner width is its text_config.hidden_size: kept.)"""
    model, inputs = _tiny_llava()
    before = copy.deepcopy(model.config.to_dict())
    config = model.config
    pruned, result = prune_and_check(
        model,
        inputs,
        ratio=0.5,
        ratios={"heads": 0, "hidden": 0},
        ignore=["model.multi_modal_projector.linear_1"],
        require_loadable=True,
        strict=True,
    )
    updates = {u.field: (u.old, u.new) for u in result.config_updates}
    assert updates == {
        "vision_config.intermediate_size": (64, 32),
        "text_config.intermediate_size": (48, 24),
    }
    assert pruned.config.text_config.intermediate_size == 24
    assert pruned.model.language_model.layers[0].mlp.config is pruned.config.text_config
    assert config.to_dict() == before  # the caller's config object is left as it was
    reload_and_compare(pruned, inputs, tmp_path, tolerance=1e-12)


def test_image_features_written_over_tokens_prune_with_the_text_width():
    """The merge of image features into the text (``masked_scatter`` over the image tokens'
    embeddings) couples the projector's output with the text hidden width: both prune (a
    width the RMSNorms normalise over: declared function-changing, so no oracle here; the
    merge's own exactness is tests/test_more_ops.py's), the same on every backend, and the
    pruned model runs on the images and the text."""
    model, inputs = _tiny_llava()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.ConfigMismatchWarning)
        warnings.simplefilter("ignore", dx.FunctionChangingWarning)
        pruned, result = prune_and_check(
            model, inputs, ratio=0.5, strict=True, oracle=False, prune_outputs=["image_outputs"]
        )  # (the image features are outputs too: their width prunes with the text's)
    width = pruned.model.language_model.embed_tokens.weight.shape[1]
    assert width < 32 and pruned.model.multi_modal_projector.linear_2.out_features == width
    with torch.no_grad():
        assert pruned(**inputs).logits.shape == (2, 24, 96)


def test_a_vision_language_models_text_heads_round_to_counts_its_text_config_accepts():
    """require_loadable rounds head counts by the sub-config the layers read: Llama's wants
    its hidden size divisible by the heads, 16 heads pruned by a quarter would be 12 (64 % 12
    != 0); the nearest count at or above that it accepts is 16 (GQA: 4 kv heads of 4)."""
    model, inputs = _tiny_llava(hidden_size=64, num_attention_heads=16, num_key_value_heads=4)
    text_only = {"input_ids": inputs["input_ids"].clamp(max=90)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(
            model, text_only, ratio=0.5, ratios={"heads": 0.25, "hidden": 0}, require_loadable=True
        )
    assert "16 kept instead of 12" in result.rounded[0]
    assert model.config.text_config.num_attention_heads == 16


def test_a_config_field_tried_and_refused_is_left_absent(tmp_path):
    """Pruning the vision tower's heads, the plan tries ``vision_config.head_dim`` (CLIP's
    config derives it from hidden_size / heads, and holds none) and the validation refuses
    it: the config must be left without the field, not holding None, which CLIP's code would
    read in place of the derived value (the model no longer built from its config: saving
    failed)."""
    model, inputs = _tiny_llava()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, inputs, ratio=0.5, ratios={"hidden": 0})
    assert not any(u.field.startswith("vision_config.") for u in result.config_updates)
    assert "head_dim" not in model.config.vision_config.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dx.save_pretrained(model, tmp_path)
        again = dx.from_pretrained(tmp_path, torch_dtype=torch.float64).eval()
    for a, b in zip(outputs_of(model, inputs), outputs_of(again, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _gemma2_eager():
    """Eager attention (Gemma-2's logit soft-capping asks for it): the keys are repeated to
    the query heads before the matmul and softmax; GQA 8/4."""
    config = T.Gemma2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=4, head_dim=16, attn_implementation="eager",
    )  # fmt: skip
    return build(lambda: T.Gemma2ForCausalLM(config))


def test_eager_attention_heads_set_the_configs_key_value_heads(tmp_path):
    """The attention ops see the query heads only (the keys repeated to them): the config's
    key/value heads follow its ratio to the query heads, and plain from_pretrained rebuilds
    the pruned heads and MLP (the oracle holds)."""
    pruned, result = prune_and_check(
        _gemma2_eager(), {"input_ids": IDS}, ratio=0.5, ratios={"hidden": 0}, require_loadable=True
    )
    updates = {u.field: (u.old, u.new) for u in result.config_updates}
    assert updates["num_attention_heads"] == (8, 4)
    assert updates["num_key_value_heads"] == (4, 2)
    assert pruned.model.layers[0].self_attn.k_proj.out_features == 2 * 16
    reload_and_compare(pruned, {"input_ids": IDS}, tmp_path)


@pytest.mark.parametrize("model_type", ["mimo_v2_flash", "t5gemma2"])
def test_key_value_heads_of_repeated_keys_set_the_configs_field(model_type, tmp_path):
    """Eager attention after repeat_kv: the config's key/value heads are the count the
    repeated keys came from. MiMo-V2-Flash's sliding-window layers build twice the field's
    count (4 where it says 2): the field follows the layers that hold its count, and a
    rebuild checks the others; T5Gemma2 sets it in its encoder's and decoder's sub-configs.
    Plain from_pretrained rebuilds either pruned model."""
    from zoo_transformers import build as build_type

    zoo = build_type(model_type)
    model = zoo.model.eval()  # (float32: MiMo's experts run grouped matmuls, which take no float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.ConfigMismatchWarning)
        result = dx.prune(model, zoo.inputs, ratio=0.5, ratios={"hidden": 0}, progress=False)
    updates = {u.field.rpartition(".")[2]: (u.old, u.new) for u in result.config_updates}
    assert updates["num_attention_heads"] == (4, 2)
    assert updates["num_key_value_heads"] == (2, 1)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = (
            type(model)
            .from_pretrained(tmp_path, attn_implementation=model.config._attn_implementation)
            .eval()
        )
    for a, b in zip(outputs_of(model, zoo.inputs), outputs_of(again, zoo.inputs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_scale_the_config_decides_is_a_mismatch_a_plain_reload_would_miss(tmp_path):
    """Gemma scales its embeddings by sqrt(hidden_size), a number its embedding module takes
    from the config when it is built: a pruned hidden width keeps the old scale (the pruned
    function), and a model built from a config saying the new width would compute with
    another. The config can say every shape, not this: the user is told, require_loadable
    refuses before anything changes, and the model reloads with dx.from_pretrained."""
    model = _gemma2_eager()
    with pytest.warns(dx.ConfigMismatchWarning, match="scalar_embed_scale would be 6.9282"):
        dx.prune(model, {"input_ids": IDS}, ratio=0.5, ratios={"hidden": 0.25})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = dx.save_pretrained(model, tmp_path)
        again = dx.from_pretrained(tmp_path, torch_dtype=torch.float64).eval()
    assert not saved.plain
    torch.testing.assert_close(
        outputs_of(again, {"input_ids": IDS})[0], outputs_of(model, {"input_ids": IDS})[0]
    )
    model = _gemma2_eager()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(dx.PruningError, match="scalar_embed_scale"):
        dx.prune(
            model, {"input_ids": IDS}, ratio=0.5, ratios={"hidden": 0.25}, require_loadable=True
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_field_read_under_the_name_an_alias_stands_for_keeps_its_value():
    """Funnel's attention reads ``config.n_head`` as it runs, the field its config's
    ``num_attention_heads`` is an alias of: the heads' count is a field the forward reads,
    so it keeps its value, and the views the code sizes by it keep the heads (the check that
    runs every skipped trace agrees: it found a trace-free verdict wrong before)."""
    config = T.FunnelConfig(
        vocab_size=128, block_sizes=[1, 1], d_model=32, n_head=4, d_head=8, d_inner=64,
    )  # fmt: skip
    model = build(lambda: T.FunnelModel(config))
    with pytest.warns(dx.FixedSizeWarning, match="n_head, d_head"):
        pruned, result = prune_and_check(model, {"input_ids": IDS}, ratio=0.5, ratios={"hidden": 0})
    assert "num_attention_heads" not in {u.field for u in result.config_updates}
    assert (
        pruned.config.n_head == 4
        and pruned.encoder.blocks[0][0].attention.q_head.out_features == 32
    )
    assert {u.field: u.new for u in result.config_updates} == {"d_inner": 32}
