"""Pruned transformers models save and load again: dx.save_pretrained / dx.from_pretrained round
trips bit for bit (plain transformers from_pretrained too where the config says everything);
files that do not belong together are refused; what the CLI writes loads with plain
transformers; require_loadable rounds head counts to ones the config accepts."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

import depgraph_ext as dx

T = pytest.importorskip("transformers")
IDS = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(0))


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T.utils.logging.set_verbosity_error()
        T.utils.logging.disable_progress_bar()
        return fn(*args, **kwargs)


def llama(heads=16, kv=4, hidden=256, dtype=torch.float32, **extra):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=128,
        **extra,
    )
    return quiet(T.LlamaForCausalLM, cfg).to(dtype).eval()


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


MODELS = {
    # name: (factory, ratios, plain with require_loadable?)
    "llama 16 -> 12 heads": (llama, {"heads": 0.25, "hidden": 0.0}),
    "llama tied, hidden pruned": (
        lambda: llama(tie_word_embeddings=True),
        {"heads": 0.5, "hidden": 0.25},
    ),
    "llama bf16": (lambda: llama(dtype=torch.bfloat16), {"heads": 0.5, "hidden": 0.0}),
    "gpt2 heads": (
        lambda: quiet(
            T.GPT2LMHeadModel, T.GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=128)
        ).eval(),
        {"hidden": 0.0},
    ),
    "bert heads": (
        lambda: quiet(
            T.BertForMaskedLM,
            T.BertConfig(
                hidden_size=64,
                num_attention_heads=4,
                num_hidden_layers=2,
                intermediate_size=128,
                vocab_size=128,
            ),
        ).eval(),
        {"hidden": 0.0},
    ),
    "t5 heads and d_ff": (
        lambda: quiet(
            T.T5ForConditionalGeneration,
            T.T5Config(d_model=64, d_ff=128, num_heads=4, d_kv=16, num_layers=2, vocab_size=128),
        ).eval(),
        {"hidden": 0.0},
    ),
}


def inputs_of(model):
    if model.config.is_encoder_decoder:
        return {"input_ids": IDS, "decoder_input_ids": IDS}
    return {"input_ids": IDS}


def outputs(model):
    with torch.no_grad():
        return model(**inputs_of(model)).logits


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_models_round_trip_bit_for_bit(name, tmp_path):
    factory, ratios = MODELS[name]
    model = factory()
    quiet(dx.prune, model, inputs_of(model), ratio=0.5, ratios=ratios)
    info = quiet(dx.save_pretrained, model, tmp_path)
    again = quiet(dx.from_pretrained, tmp_path)
    assert type(again) is type(model) and not again.training
    assert torch.equal(outputs(again), outputs(model))
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), n
        # on memory aligned as torch allocates it: kernels vectorise by alignment, and the
        # last bits of their sums follow it (a depthwise conv on one thread differed)
        assert b.data_ptr() % 64 == 0, n
    meta = json.loads((tmp_path / "depgraph_ext.json").read_text())
    assert meta["plain"] == info.plain and meta["class"] == type(model).__name__
    if info.plain and model.dtype == torch.float32:  # the config says it all: plain
        # transformers loads it too (in bf16 it would compute rotary frequencies in fp32,
        # where this model, converted with .to(bfloat16), holds them in bf16)
        plain = quiet(type(model).from_pretrained, tmp_path, dtype=model.dtype).eval()
        assert torch.equal(outputs(plain), outputs(model))
    elif not info.plain:
        assert info.tensors or info.attributes
        assert "depgraph_ext.from_pretrained" in info.describe()


def test_the_t5_config_says_heads_and_feed_forward():
    factory, ratios = MODELS["t5 heads and d_ff"]
    model = factory()
    result = quiet(dx.prune, model, inputs_of(model), ratio=0.5, ratios=ratios)
    fields = {u.field: u.new for u in result.config_updates}
    assert fields == {"num_heads": 2, "d_ff": 64} or fields == {
        "num_attention_heads": 2,
        "d_ff": 64,
    }
    assert model.config.num_heads == 2 and model.config.d_ff == 64


def test_loading_to_a_dtype_and_a_device(tmp_path):
    model = llama()
    quiet(dx.prune, model, {"input_ids": IDS}, ratio=0.5, ratios={"heads": 0.25, "hidden": 0.0})
    quiet(dx.save_pretrained, model, tmp_path)
    again = quiet(dx.from_pretrained, tmp_path, torch_dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}
    assert torch.equal(logits(again), logits(model.to(torch.bfloat16)))


def prune_loadable(model, ratios):
    return quiet(
        dx.prune, model, {"input_ids": IDS}, ratio=0.5, ratios=ratios, require_loadable=True
    )


def test_require_loadable_rounds_heads_to_counts_the_config_accepts(tmp_path):
    """Llama's config wants hidden divisible by heads: 16 heads pruned by a quarter would be
    12 (256 % 12 != 0); the nearest count at or above that Llama accepts is 16, with GQA 4
    kv heads of 4: no head goes, and the result says so. Halving gives 8, which it accepts."""
    model = llama()
    result = prune_loadable(model, {"heads": 0.25, "hidden": 0.0})
    assert model.config.num_attention_heads == 16 and len(result.rounded) == 1
    assert "16 kept instead of 12" in result.rounded[0] and "rounded" in result.summary()
    assert quiet(dx.save_pretrained, model, tmp_path).plain
    model = llama()
    result = prune_loadable(model, {"heads": 0.5, "hidden": 0.0})
    assert model.config.num_attention_heads == 8 and not result.rounded


def test_config_fields_its_checks_relate_are_set_together(tmp_path):
    """Llama's config checks that the hidden size is a multiple of the heads: 4 heads pruned
    to 3 are refused while the hidden size is 64, and accepted once it is set to 48: the
    plan's config says both, and plain from_pretrained rebuilds the model."""
    model = llama(heads=4, kv=4, hidden=64, head_dim=16)
    result = prune_loadable(model, {"heads": 0.25, "hidden": 0.25})
    updates = {u.field: u.new for u in result.config_updates}
    assert updates["num_attention_heads"] == 3 and updates["hidden_size"] == 48
    assert quiet(dx.save_pretrained, model, tmp_path).plain
    assert torch.equal(logits(quiet(T.LlamaForCausalLM.from_pretrained, tmp_path)), logits(model))


def test_a_width_its_modules_hold_under_the_fields_name_needs_one_rebuild(monkeypatch, tmp_path):
    """Llama's MLPs hold ``intermediate_size``: the MLP width pruned, the field is tried with
    the heads' fields on the first rebuild, which matches (no search, which would rebuild the
    model once more), and plain from_pretrained rebuilds the pruned model."""
    from depgraph_ext.pruning import configs

    builds = []
    original = configs.Rebuilds.of

    def of(self, config):
        builds.append(config.to_json_string())
        return original(self, config)

    monkeypatch.setattr(configs.Rebuilds, "of", of)
    model = llama()
    result = quiet(dx.prune, model, {"input_ids": IDS}, ratio=0.5, ratios={"hidden": 0.0})
    updates = {u.field: u.new for u in result.config_updates}
    assert updates["intermediate_size"] == 64 and updates["num_attention_heads"] == 8
    assert len(set(builds)) == 1
    assert quiet(dx.save_pretrained, model, tmp_path).plain
    assert torch.equal(logits(quiet(T.LlamaForCausalLM.from_pretrained, tmp_path)), logits(model))


class _TwoWidthsConfig(T.PretrainedConfig):
    """``width`` sizes the model; ``spare_width`` holds the same number and sizes nothing."""

    model_type = "depgraph_two_widths"

    def __init__(self, spare_width=16, width=16, **kwargs):
        self.spare_width = spare_width
        self.width = width
        super().__init__(**kwargs)


class _TwoWidths(T.PreTrainedModel):
    config_class = _TwoWidthsConfig

    def __init__(self, config, read_unseen: bool = False):
        super().__init__(config)
        # (``read_unseen``: read past the config's own attribute lookup, as no spy sees)
        width = object.__getattribute__(config, "spare_width") if read_unseen else config.width
        self.a, self.b = torch.nn.Linear(4, width), torch.nn.Linear(width, 3)
        self.post_init()

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _built_configs(monkeypatch) -> list[dict]:
    """Every config the plan's checks build a model from (as a dict), in order."""
    from depgraph_ext.pruning import configs

    built = []
    original = configs.Rebuilds._build

    def build(self, config, watch):
        built.append(config.to_dict())
        return original(self, config, watch)

    monkeypatch.setattr(configs.Rebuilds, "_build", build)
    return built


def test_the_config_search_builds_no_config_whose_change_its_build_does_not_read(monkeypatch):
    """The config field search builds the model once per field it tries; a field the model's
    build never read (``spare_width``, holding the pruned width's number, tried first) builds
    the same model, and is not tried: the search finds ``width`` without building it."""
    from depgraph_ext.pruning import configs

    monkeypatch.setattr(configs, "CHECK_SKIPPED_BUILDS", False)
    built = _built_configs(monkeypatch)
    torch.manual_seed(0)
    model = _TwoWidths(_TwoWidthsConfig()).eval()
    result = quiet(dx.prune, model, torch.randn(2, 4), ratio=0.5)
    assert [(u.field, u.old, u.new) for u in result.config_updates] == [("width", 16, 8)]
    assert (model.config.width, model.config.spare_width) == (8, 16)
    assert {(c["width"], c["spare_width"]) for c in built} == {(16, 16), (8, 16)}
    monkeypatch.setattr(configs, "CHECK_SKIPPED_BUILDS", True)  # (built all the same)
    built.clear()
    quiet(dx.prune, _TwoWidths(_TwoWidthsConfig()).eval(), torch.randn(2, 4), ratio=0.5)
    assert (16, 8) in {(c["width"], c["spare_width"]) for c in built}


def test_a_field_read_unseen_by_the_build_is_an_internal_error_in_check_mode(monkeypatch):
    """Where the build reads a field past the config's attribute lookup, the search would
    skip a field that changes the model: check mode builds it and says so."""
    from depgraph_ext.pruning import configs

    monkeypatch.setattr(configs, "CHECK_SKIPPED_BUILDS", True)

    class ReadsUnseen(_TwoWidths):
        def __init__(self, config):
            super().__init__(config, read_unseen=True)

    torch.manual_seed(0)
    model = ReadsUnseen(_TwoWidthsConfig()).eval()
    with pytest.raises(dx.InternalError, match=r"internal error: config\.spare_width"):
        quiet(dx.prune, model, torch.randn(2, 4), ratio=0.5)
    assert model.a.out_features == 16 and model.config.spare_width == 16  # (unchanged)


class _BlocksConfig(T.PretrainedConfig):
    """``n_blocks`` counts the blocks and ``width`` sizes each: the same number, before."""

    model_type = "depgraph_blocks"

    def __init__(self, n_blocks=8, width=8, **kwargs):
        self.n_blocks = n_blocks
        self.width = width
        super().__init__(**kwargs)


class _Blocks(T.PreTrainedModel):
    """Blocks side by side, each 4 -> ``width`` -> 3, summed."""

    config_class = _BlocksConfig

    def __init__(self, config):
        super().__init__(config)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(4, config.width), torch.nn.Linear(config.width, 3))
            for _ in range(config.n_blocks)
        )
        self.post_init()

    def forward(self, x):
        return sum(b(torch.relu(a(x))) for a, b in self.blocks)


def test_the_config_search_takes_no_field_that_builds_other_tensors(tmp_path):
    """Every block's width is halved: ``width`` says it. ``n_blocks`` holds the same number
    and is tried first: a model of half the blocks has half the mismatched shapes, but the
    tensors of the other half missing, which count as mismatches too (no config with it can
    be the pruned model's). The search finds ``width`` alone, and the class's own
    from_pretrained rebuilds the model."""
    torch.manual_seed(0)
    model = _Blocks(_BlocksConfig()).eval()
    x = torch.randn(2, 4)
    result = quiet(dx.prune, model, x, ratio=0.5)
    assert [(u.field, u.old, u.new) for u in result.config_updates] == [("width", 8, 4)]
    assert (model.config.n_blocks, model.config.width) == (8, 4)
    quiet(model.save_pretrained, tmp_path)
    again = quiet(_Blocks.from_pretrained, tmp_path).eval()
    assert again.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_the_config_search_keeps_a_projection_the_model_has(tmp_path):
    """ELECTRA projects its embeddings (32) to its hidden size (64) where the two differ:
    halved, hidden_size set (32) equals the old embedding_size, and a model built so has no
    projection. The search counts the projection it lacks as mismatches and finds
    embedding_size (16) too: plain from_pretrained rebuilds the pruned model."""
    config = T.ElectraConfig(
        vocab_size=128, embedding_size=32, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
        is_decoder=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T.ElectraForCausalLM(config).eval()
    quiet(dx.prune, model, {"input_ids": IDS}, ratio=0.5)
    assert (model.config.embedding_size, model.config.hidden_size) == (16, 32)
    assert model.electra.embeddings_project.weight.shape == (32, 16)
    assert quiet(dx.save_pretrained, model, tmp_path).plain
    assert torch.equal(logits(quiet(T.ElectraForCausalLM.from_pretrained, tmp_path)), logits(model))


def test_a_config_that_would_build_other_tensors_is_left_as_it_was(tmp_path):
    """ELECTRA's embeddings kept (ignored) and its hidden size halved to their width (32):
    a config with ``hidden_size`` 32 builds no projection between the two, which the pruned
    model has. No update is set (the config still builds the model's tensors, at their old
    shapes), the prune says the config cannot express the shapes, and the model saves and
    loads back bit for bit with depgraph_ext's own save_pretrained / from_pretrained."""
    config = T.ElectraConfig(
        vocab_size=128, embedding_size=32, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
        is_decoder=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T.ElectraForCausalLM(config).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dx.prune(model, {"input_ids": IDS}, ratio=0.5, ignore=["electra.embeddings"])
    assert model.electra.embeddings_project.weight.shape == (32, 32)
    assert result.config_updates == [] and model.config.hidden_size == 64
    assert any(issubclass(w.category, dx.ConfigMismatchWarning) for w in caught)
    saved = quiet(dx.save_pretrained, model, tmp_path)
    assert not saved.plain
    assert torch.equal(logits(quiet(dx.from_pretrained, tmp_path)), logits(model))


@pytest.mark.parametrize("model_type", ["llama", "maskformer", "dory"])
def test_a_reloaded_config_is_what_from_dict_makes(model_type, monkeypatch):
    """The rebuilds' round trip through a dict calls the class directly where it keeps
    transformers' from_dict (whose log line formats the whole config: not formatted here),
    and the class's own from_dict where it has one (Dory's): the same config."""
    from depgraph_ext.pruning.configs import reloaded_config

    try:
        config = T.AutoConfig.for_model(model_type)
    except ValueError:  # (a transformers without it)
        pytest.skip(f"this transformers has no {model_type}")
    expected = type(config).from_dict(config.to_dict()).to_dict()
    own = "from_dict" in vars(type(config))
    assert own == (model_type == "dory")
    calls = []
    if own:
        original = vars(type(config))["from_dict"].__func__

        def from_dict(cls, *args, **kwargs):
            calls.append(cls)
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(type(config), "from_dict", classmethod(from_dict))
    else:

        def formatted(self):
            raise AssertionError("the config was formatted")

        monkeypatch.setattr(type(config), "__repr__", formatted)
    assert reloaded_config(config).to_dict() == expected
    assert bool(calls) == own


def test_a_model_under_weight_norm_saves_and_loads_bit_for_bit(tmp_path):
    """wav2vec2's positional convolution is under ``weight_norm`` (torch's parametrization,
    whose module class is made anew for every module it wraps: a model built from the config
    holds another class of the same name). The pruned model saves and loads back."""
    import zoo_transformers

    z = zoo_transformers.build("wav2vec2")  # (its base model, on a waveform)
    model, wave = z.model, z.inputs["input_values"]
    mlp = model.encoder.layers[0].feed_forward.intermediate_dense
    width = mlp.out_features
    quiet(dx.prune, model, {"input_values": wave}, ratio=0.5)
    assert torch.nn.utils.parametrize.is_parametrized(model.encoder.pos_conv_embed.conv)
    assert mlp.out_features < width
    quiet(dx.save_pretrained, model, tmp_path)
    again = quiet(dx.from_pretrained, tmp_path)
    assert type(again) is type(model)
    with torch.no_grad():
        assert torch.equal(
            again(input_values=wave).last_hidden_state, model(input_values=wave).last_hidden_state
        )
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


# -- refusals ------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = llama()
    quiet(dx.prune, model, {"input_ids": IDS}, ratio=0.5, ratios={"heads": 0.25, "hidden": 0.0})
    assert not quiet(dx.save_pretrained, model, tmp_path).plain
    return tmp_path


def test_shapes_that_do_not_match_the_weights_are_refused(saved):
    meta = json.loads((saved / "depgraph_ext.json").read_text())
    name = next(iter(meta["tensors"]))
    meta["tensors"][name] = [s + 1 for s in meta["tensors"][name]]
    (saved / "depgraph_ext.json").write_text(json.dumps(meta))
    with pytest.raises(dx.CheckpointError, match=name.replace(".", r"\.")):
        quiet(dx.from_pretrained, saved)


def test_a_missing_shard_and_broken_files_are_refused(saved, tmp_path_factory):
    (saved / "model.safetensors").rename(saved / "elsewhere.safetensors")
    with pytest.raises(dx.CheckpointError, match="model.safetensors is missing"):
        quiet(dx.from_pretrained, saved)
    (saved / "elsewhere.safetensors").rename(saved / "model.safetensors")
    (saved / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(dx.CheckpointError, match="not valid safetensors"):
        quiet(dx.from_pretrained, saved)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(dx.CheckpointError, match="has no depgraph_ext.json"):
        quiet(dx.from_pretrained, empty)
    (empty / "depgraph_ext.json").write_text("{nope")
    with pytest.raises(dx.CheckpointError, match="not valid JSON"):
        quiet(dx.from_pretrained, empty)


def test_a_config_of_another_model_is_refused(saved):
    quiet(T.GPT2Config(n_embd=64, n_head=4, n_layer=2).save_pretrained, saved)
    with pytest.raises(dx.CheckpointError, match="describes a 'gpt2' model"):
        quiet(dx.from_pretrained, saved)


def squeezebert_classifier():
    torch.manual_seed(0)
    cfg = T.SqueezeBertConfig(
        vocab_size=128,
        hidden_size=64,
        embedding_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    return quiet(T.SqueezeBertForSequenceClassification, cfg).eval()


def test_config_updates_the_class_refuses_together_are_not_set(tmp_path):
    # hidden_size alone validates, but SqueezeBERT's constructor asserts embedding_size ==
    # hidden_size, and its query/key/value widths (hidden_size) were not pruned: no config
    # says these shapes, so the config is left as one the class builds, and the model saves
    # for dx.from_pretrained (it used to be left with hidden_size pruned, and saving raised
    # the constructor's AssertionError).
    model = squeezebert_classifier()
    ids = IDS[:, :8] + 1  # no padding token
    with pytest.warns(dx.ConfigMismatchWarning, match="cannot be built from the updated config"):
        result = dx.prune(model, {"input_ids": ids}, ratio=0.5)
    assert result.params_after < result.params_before
    assert model.config.hidden_size == model.config.embedding_size == 64
    quiet(T.SqueezeBertForSequenceClassification, model.config)  # builds
    expected = logits(model, ids)
    info = quiet(dx.save_pretrained, model, tmp_path)
    assert not info.plain
    again = quiet(dx.from_pretrained, tmp_path)
    assert torch.equal(logits(again, ids), expected)


def test_a_config_its_class_refuses_is_named_when_saving(tmp_path):
    model = squeezebert_classifier()
    model.config.embedding_size = 48
    with pytest.raises(dx.CheckpointError, match="cannot be built from its own config"):
        quiet(dx.save_pretrained, model, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_tuple_the_config_holds_reloads_plain_as_a_list(tmp_path):
    """Qwen3-VL's vision tower holds its config's ``deepstack_visual_indexes`` tuple, which
    config.json gives back a list (transformers' own round trip, pruned or not): no size a
    plain reload misses, so plain from_pretrained is said to rebuild the pruned model, and
    it does."""
    import zoo_transformers

    zoo = quiet(zoo_transformers.build, "qwen3_vl")
    model = zoo.model
    assert isinstance(model.visual.deepstack_visual_indexes, tuple)
    quiet(dx.prune, model, zoo.inputs, ratio=0.5)
    assert quiet(dx.save_pretrained, model, tmp_path).plain
    again = quiet(type(model).from_pretrained, tmp_path).eval()
    with torch.no_grad():
        a, b = model(**zoo.inputs), again(**zoo.inputs)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)


def test_only_transformers_models_are_saved(tmp_path):
    with pytest.raises(dx.InvalidArgumentError, match="transformers model"):
        dx.save_pretrained(torch.nn.Linear(2, 2), tmp_path)


# -- the CLI -------------------------------------------------------------------------------------
def seeded(factory):
    def build():
        torch.manual_seed(0)
        return factory()

    return build


def cli_qwen2():
    config = T.Qwen2Config(
        hidden_size=192,
        num_attention_heads=24,
        num_key_value_heads=8,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=128,
    )
    return quiet(T.Qwen2ForCausalLM, config).eval()


def cli_mistral():
    config = T.MistralConfig(
        hidden_size=128,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=96,
        num_hidden_layers=2,
        vocab_size=128,
        head_dim=16,
    )
    return quiet(T.MistralForCausalLM, config).eval()


CLI_MODELS = {
    "llama": seeded(lambda: llama(heads=16, kv=4, hidden=256)),
    "qwen2": seeded(cli_qwen2),
    "mistral": seeded(cli_mistral),
}


@pytest.mark.parametrize("heads", ["0.25", "0.5"])
@pytest.mark.parametrize("name", list(CLI_MODELS))
def test_the_cli_writes_checkpoints_plain_transformers_loads(name, heads, tmp_path):
    torch.manual_seed(0)
    model = CLI_MODELS[name]()
    quiet(model.save_pretrained, tmp_path / "src")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "depgraph_ext.cli",
            str(tmp_path / "src"),
            str(tmp_path / "out"),
            "--ratio",
            "0.5",
            "--ratios",
            f"heads={heads},hidden=0",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = quiet(T.AutoModelForCausalLM.from_pretrained, tmp_path / "out").eval()
    ours = quiet(dx.from_pretrained, tmp_path / "out")
    assert torch.equal(logits(plain), logits(ours))
    expected = CLI_MODELS[name]()
    quiet(
        dx.prune,
        expected,
        {"input_ids": torch.zeros(1, 16, dtype=torch.long)},
        ratio=0.5,
        ratios={"heads": float(heads), "hidden": 0.0},
        require_loadable=True,
    )
    assert torch.equal(logits(plain), logits(expected))
    assert plain.config.num_attention_heads == expected.config.num_attention_heads
