"""Real transformers architectures, built from their configs with random weights.

Each model type is pruned twice: by default (the pruned model must run and give outputs of the
original shapes) and with ``exact_only=True`` in float64, where the scatter-back oracle must hold.
Mixture-of-experts models run the oracle in float32: their expert dispatch refuses float64.
``scripts/sweep_transformers.py`` runs the same checks over every model type transformers has.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import depgraph_ext as dx
import zoo_transformers as zoo
from depgraph_ext.graph import trace as tr
from depgraph_ext.testing import assert_scatter_back_equal, outputs_of
from helpers import groups_of, record_prune, to_fake_device

pytest.importorskip("transformers")

CAUSAL_LMS = """
    llama mistral qwen2 qwen3 gemma gemma2 gemma3_text gemma4_text phi phi3 gpt2 gpt_neo
    gpt_neox gptj bloom falcon opt codegen cohere cohere2 olmo olmo2 starcoder2 stablelm
    persimmon granite helium internlm3 exaone4 glm glm4 minicpm3 smollm3 ctrl biogpt openai-gpt
    gpt_bigcode diffllama doge llama4_text mllama_text_model nanochat vaultgemma
""".split()
STATE_SPACE_AND_HYBRID = "recurrent_gemma rwkv mamba falcon_mamba zamba2 lfm2 olmo_hybrid".split()
ENCODERS = """
    bert roberta albert distilbert deberta deberta-v2 electra ernie modernbert mpnet squeezebert
    convbert longformer big_bird mobilebert xlnet xlm-roberta fnet nystromformer layoutlm tapas
    rembert clip_text_model siglip_text_model
""".split()
SEQ2SEQ = """
    t5 mt5 umt5 bart mbart marian pegasus blenderbot m2m_100 plbart longt5 switch_transformers
    nllb-moe seamless_m4t prophetnet whisper
""".split()
VISION = """
    vit deit beit dinov2 swin swinv2 convnext resnet regnet mobilenet_v2 mobilevit poolformer
    segformer pvt_v2 hiera yolos vit_mae focalnet dinov3_convnext glpn swiftformer
    clip_vision_model siglip_vision_model vivit videomae vitpose groupvit
""".split()
SPEECH = """
    wav2vec2 hubert wavlm sew data2vec-audio wav2vec2-conformer speech_to_text moonshine
""".split()  # (a waveform or frames of features in; wav2vec2's family: weight_norm's conv)
MIXTURES_OF_EXPERTS = """
    mixtral qwen2_moe qwen3_moe deepseek_v2 deepseek_v3 granitemoe phimoe glm4_moe ernie4_5_moe
    jamba qwen3_next xglm jetmoe
""".split()  # (jamba and qwen3_next are hybrids with experts; xglm's positions need float32)

FLOAT32_ONLY = set(MIXTURES_OF_EXPERTS)
REPLACES_ITS_MODULES = {"big_bird"}  # block-sparse attention swapped for full on short inputs
ALL = CAUSAL_LMS + STATE_SPACE_AND_HYBRID + ENCODERS + SEQ2SEQ + VISION + SPEECH
ALL += MIXTURES_OF_EXPERTS


def build(model_type):
    try:
        return zoo.build(model_type)
    except zoo.Unbuildable as e:  # a transformers version without this type or its inputs
        pytest.skip(f"{model_type}: {e}")


def in_dtype(inputs, dtype):
    return {
        k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in inputs.items()
    }


def prune_quietly(model_type, model, inputs, **options):
    """Prune half; returns the result and the categories of the warnings raised. Opaque ops are
    expected in a zoo (they block what they touch): the prune must work around them. How long
    it took is recorded (the session ends with the slowest)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dx.prune(model, inputs, ratio=0.5, **options)
    record_prune(" ".join([model_type, *(f"{k}={v}" for k, v in options.items())]), result)
    return result, {w.category for w in caught}


def seeded_outputs(model, inputs):
    torch.manual_seed(0)  # a model that samples takes the same draw each time
    return outputs_of(model, inputs)


@pytest.mark.parametrize("model_type", ALL)
def test_default_prune_runs_with_the_original_output_shapes(model_type):
    z = build(model_type)
    shapes = [o.shape for o in seeded_outputs(z.model, z.inputs)]
    result, warned = prune_quietly(model_type, z.model, z.inputs)
    assert result.params_after < result.params_before
    assert [o.shape for o in seeded_outputs(z.model, z.inputs)] == shapes
    # function-changing groups pruned are declared: warned about and listed in the summary
    assert (dx.FunctionChangingWarning in warned) == bool(result.function_changing)
    assert all(group in result.summary(max_rows=None) for group in result.function_changing)


@pytest.mark.parametrize("model_type", ALL)
def test_exact_only_prune_equals_zeroing_the_removed_units(model_type):
    z = build(model_type)
    dtype = torch.float32 if model_type in FLOAT32_ONLY else torch.float64
    model = z.model.to(dtype)
    inputs = in_dtype(z.inputs, dtype)
    original = copy.deepcopy(model)
    result, warned = prune_quietly(model_type, model, inputs, exact_only=True)
    assert result.params_after < result.params_before
    assert not result.function_changing and dx.FunctionChangingWarning not in warned
    tolerance = 1e-4 if dtype == torch.float32 else 1e-8
    assert_scatter_back_equal(original, model, result, inputs, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("model_type", ALL)
def test_pruned_models_save_and_load_bit_for_bit(model_type, tmp_path):
    z = build(model_type)
    prune_quietly(model_type, z.model, z.inputs)
    expected = seeded_outputs(z.model, z.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model_type in REPLACES_ITS_MODULES:
            with pytest.raises(dx.CheckpointError, match="replaced its own modules"):
                dx.save_pretrained(z.model, tmp_path)
            return
        info = dx.save_pretrained(z.model, tmp_path)
        again = dx.from_pretrained(tmp_path)
        loaders = [again] + ([type(z.model).from_pretrained(tmp_path).eval()] if info.plain else [])
    for model in loaders:  # dx's loader, and plain transformers where the config says it all
        actual = seeded_outputs(model, z.inputs)
        assert len(actual) == len(expected)
        assert all(torch.equal(a, e) for a, e in zip(actual, expected))


# Its forward moves one of its modules (``.to(dtype)``), which fake parameters cannot take.
MOVES_ITS_MODULES = {"nllb-moe"}


@pytest.mark.skipif(not torch.backends.cuda.is_built(), reason="needs a CUDA build of torch")
@pytest.mark.parametrize("model_type", ALL)
def test_the_groups_on_a_gpu_are_the_groups_on_the_cpu(model_type, monkeypatch):
    """The model on fake cuda tensors (traced as the CPU runs it) and on the CPU, both traced
    on fake tensors (the trace modes are compared elsewhere): the same groups. (A model whose
    shapes depend on data is traced on real tensors where they are: on a GPU, that needs one.)"""
    if model_type in MOVES_ITS_MODULES:
        pytest.skip("its forward moves a module, which fake parameters cannot take")
    z = build(model_type)
    monkeypatch.setattr(tr, "REAL_TRACE_MAX_BYTES", 0)
    monkeypatch.setattr(tr, "_meta_stands_in", lambda *args: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = dx.DependencyGraph(z.model, z.inputs)
        if want.graph.mode == "real":
            pytest.skip("its shapes depend on data: traced on the device itself")
        on_gpu, inputs = to_fake_device(z.model, z.inputs, "cuda")
        got = dx.DependencyGraph(on_gpu, inputs)
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}
    assert (want.graph.mode, got.graph.mode) == ("fake", "fake")
    assert groups_of(got) == groups_of(want)


# Task heads on a few bodies: a sequence classifier pooling the last token that is not padding
# (found from the ids, a decision of the data) or the end-of-sequence token (a boolean mask over
# an encoder-decoder's states), a token classifier, a span head splitting its logits in two.
# ``scripts/sweep_transformers.py --head`` runs every type that has one.
TASK_HEADS = [
    ("llama", "seq-cls"),
    ("gpt2", "seq-cls"),
    ("bart", "seq-cls"),
    ("bert", "token-cls"),
    ("bert", "qa"),
    ("bart", "qa"),
]


@pytest.mark.parametrize("model_type, head", TASK_HEADS)
def test_a_task_head_prunes_exactly_and_by_default(model_type, head):
    try:
        z = zoo.build(model_type, head=head)
    except zoo.Unbuildable as e:
        pytest.skip(f"{model_type} {head}: {e}")
    assert z.task == head
    exactly_and_by_default(f"{model_type} {head}", z)


def exactly_and_by_default(name: str, z) -> set:
    """``exact_only=True`` in float64 under the oracle, then a default prune in float32 that
    runs with the original output shapes; returns the default prune's warning categories."""
    shapes = [o.shape for o in seeded_outputs(z.model, z.inputs)]
    model = copy.deepcopy(z.model).double()
    inputs = in_dtype(z.inputs, torch.float64)
    original = copy.deepcopy(model)
    result, _ = prune_quietly(name, model, inputs, exact_only=True)
    assert result.params_after < result.params_before
    assert_scatter_back_equal(original, model, result, inputs, rtol=1e-8, atol=1e-8)
    result, warned = prune_quietly(name, z.model, z.inputs)
    assert result.params_after < result.params_before
    assert [o.shape for o in seeded_outputs(z.model, z.inputs)] == shapes
    return warned


# Attention written out (matmuls, a softmax, masks added) instead of SDPA's one op
# (``scripts/sweep_transformers.py --attn eager`` runs every type so). Embedding Gemma 2's
# config is heterogeneous: it sets its key/value heads per layer (``per_layer_config``), and
# reading such a field from the config itself raises.
EAGER = ["llama", "gpt2", "bert", "t5", "embedding_gemma2_text"]


@pytest.mark.parametrize("model_type", EAGER)
def test_eager_attention_prunes_exactly_and_by_default(model_type):
    try:
        z = zoo.build(model_type, attn="eager")
    except zoo.Unbuildable as e:
        pytest.skip(f"{model_type} eager: {e}")
    assert z.model.config._attn_implementation == "eager"
    warned = exactly_and_by_default(f"{model_type} eager", z)
    per_layer = z.model.config.per_layer_attributes or ()
    assert not per_layer or dx.ConfigMismatchWarning in warned
