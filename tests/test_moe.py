"""Mixture-of-experts models (transformers' fused expert weights): expert neurons and shared
experts' neurons prune exactly (the scatter-back oracle); whole experts prune when asked for,
with their router rows, as function-changing groups equal to the original whose router never
chooses the removed experts; expert counts follow in the config and module attributes."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import depgraph_ext as dx
from depgraph_ext.pruning.routing import routing_statistics
from depgraph_ext.testing import assert_scatter_back_equal, outputs_of
from nets import FusedExperts, LoopedExperts

T = pytest.importorskip("transformers")
IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
LAYERS = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
FAMILIES = {
    "mixtral": lambda: (
        T.MixtralForCausalLM,
        T.MixtralConfig(**LAYERS, num_local_experts=8, num_experts_per_tok=2),
    ),
    "qwen2_moe": lambda: (
        T.Qwen2MoeForCausalLM,
        T.Qwen2MoeConfig(
            **LAYERS,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=96,
        ),
    ),
    "qwen3_moe": lambda: (
        T.Qwen3MoeForCausalLM,
        T.Qwen3MoeConfig(
            **LAYERS, head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64
        ),
    ),
}
WIDTHS_KEPT = {"hidden": 0.0, "heads": 0.0}


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def build(family, dtype=torch.float32, implementation=None):
    model_class, config = FAMILIES[family]()
    torch.manual_seed(0)
    model = quiet(model_class._from_config, config).to(dtype).eval()
    if implementation is not None:  # float64 runs only through the batched implementation
        model.set_experts_implementation(implementation)
    return model


def experts_of(model):
    return [layer.mlp for layer in model.model.layers]


def expert_count(config):
    return getattr(config, "num_local_experts", None) or config.num_experts


class MaskedRouters(torch.overrides.TorchFunctionMode):
    """The original model with the removed experts never chosen: each router's logits get
    -inf at the removed experts (the softmax and top-k then see only the kept ones)."""

    def __init__(self, masks: dict[torch.Tensor, torch.Tensor]):
        super().__init__()
        self.masks = masks  # router weight -> additive mask over experts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.nn.functional.linear and len(args) > 1:
            mask = next((m for w, m in self.masks.items() if args[1] is w), None)
            if mask is not None:
                out = out + mask
        return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_expert_neurons_and_shared_experts_pass_the_oracle(family):
    model = build(family, torch.float64, "batched_mm")
    original = copy.deepcopy(model)
    result = quiet(dx.prune, model, {"input_ids": IDS}, ratio=0.5, ratios=WIDTHS_KEPT)
    assert not result.function_changing  # neurons only: exact
    for block, before in zip(experts_of(model), experts_of(original)):
        gate_up, down = block.experts.gate_up_proj, block.experts.down_proj
        assert gate_up.shape[0] == down.shape[0] == 8  # every expert stays
        # the same number of neurons in every expert: half of them
        assert gate_up.shape[1] == 2 * down.shape[2] == before.experts.gate_up_proj.shape[1] // 2
        shared = getattr(block, "shared_expert", None)
        if shared is not None:
            assert shared.down_proj.in_features == 48
    fields = {u.field: u.new for u in result.config_updates}
    width = "intermediate_size" if family == "mixtral" else "moe_intermediate_size"
    assert fields[width] == getattr(original.config, width) // 2
    assert_scatter_back_equal(original, model, result.plan, {"input_ids": IDS}, rtol=1e-9)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_default_implementation_traces_as_the_batched_one(family):
    model = build(family)  # grouped_mm, transformers' default
    implementation = model.config._experts_implementation
    quiet(dx.prune, model, {"input_ids": IDS}, ratio=0.5, ratios={**WIDTHS_KEPT, "experts": 0.5})
    assert model.config._experts_implementation == implementation  # set back after tracing
    assert all(block.experts.gate_up_proj.shape[0] == 4 for block in experts_of(model))
    default = outputs_of(model, {"input_ids": IDS})[0]
    model.set_experts_implementation("batched_mm")
    torch.testing.assert_close(outputs_of(model, {"input_ids": IDS})[0], default)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_whole_experts_equal_a_router_that_never_chooses_them(family):
    model = build(family, torch.float64, "batched_mm")
    original = copy.deepcopy(model)
    routers = {name: m.weight for name, m in original.named_modules() if name.endswith("mlp.gate")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dx.prune(
            model,
            {"input_ids": IDS},
            ratio=0.0,
            ratios={"experts": 0.5},
        )
    assert any(w.category is dx.FunctionChangingWarning for w in caught)
    assert result.units["experts"] == (16, 8)
    assert all("top-k choice" in g for g in result.function_changing)
    assert expert_count(model.config) == 4 and model.config.num_experts_per_tok == 2
    masks = {}
    for name, weight in routers.items():
        kept = result.plan[name + ".weight"].get(0)
        assert kept is not None and kept.numel() == 4
        mask = torch.full((weight.shape[0],), float("-inf"), dtype=weight.dtype)
        mask[kept] = 0.0
        masks[weight] = mask
        block = model.get_submodule(name.rpartition(".")[0])
        assert block.experts.num_experts == block.gate.num_experts == 4
        experts = original.get_submodule(name.rpartition(".")[0]).experts
        torch.testing.assert_close(  # the kept experts' weights, bit for bit
            block.experts.gate_up_proj, experts.gate_up_proj[kept], rtol=0, atol=0
        )
    with MaskedRouters(masks):
        expected = outputs_of(original, {"input_ids": IDS})[0]
    torch.testing.assert_close(
        outputs_of(model, {"input_ids": IDS})[0], expected, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_whole_experts_native_and_python_agree(family):
    pruned = {}
    for backend in ("native", "python"):
        model = build(family)
        result = quiet(
            dx.prune,
            model,
            {"input_ids": IDS},
            ratio=0.5,
            ratios={"experts": 0.5},
            backend=backend,
        )
        pruned[backend] = (model, result)
    (native, r_native), (python, r_python) = pruned["native"], pruned["python"]
    assert r_native.units == r_python.units and r_native.units["experts"] == (16, 8)
    assert r_native.plan.keys() == r_python.plan.keys()
    for name, dims in r_native.plan.items():
        for dim, kept in dims.items():
            assert torch.equal(kept, r_python.plan[name][dim]), (name, dim)
    for (n, a), (_, b) in zip(native.state_dict().items(), python.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(
        outputs_of(native, {"input_ids": IDS})[0], outputs_of(python, {"input_ids": IDS})[0]
    )


def test_experts_are_pruned_only_when_asked_for():
    model = build("mixtral")
    result = quiet(dx.prune, model, {"input_ids": IDS}, ratio=0.5)
    assert result.units["experts"] == (16, 16)
    assert expert_count(model.config) == 8


def test_at_least_top_k_experts_stay():
    model = build("qwen3_moe")
    result = quiet(dx.prune, model, {"input_ids": IDS}, ratio=0.0, ratios={"experts": 0.95})
    assert result.units["experts"] == (16, 4)  # top-2 in each of 2 layers
    assert expert_count(model.config) == 2 and model.config.num_experts_per_tok == 2
    outputs_of(model, {"input_ids": IDS})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pruned_experts_reload_with_plain_transformers(family, tmp_path):
    model = build(family)
    quiet(
        dx.prune,
        model,
        {"input_ids": IDS},
        ratio=0.5,
        ratios={**WIDTHS_KEPT, "experts": 0.5},
        require_loadable=True,
    )
    info = quiet(dx.save_pretrained, model, tmp_path)
    assert info.plain
    model_class, _ = FAMILIES[family]()
    ours = quiet(dx.from_pretrained, tmp_path)  # the per-expert files stacked as on loading
    for (n, a), (_, b) in zip(ours.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), n
    again = quiet(model_class.from_pretrained, tmp_path).eval()
    assert torch.equal(
        outputs_of(again, {"input_ids": IDS})[0], outputs_of(model, {"input_ids": IDS})[0]
    )


def test_routing_statistics_choose_the_experts_kept():
    model = build("qwen3_moe")
    batches = [
        torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(s)) for s in range(3)
    ]
    with dx.collect_routing(model):
        for ids in batches:
            outputs_of(model, {"input_ids": ids})
    routers = [block.gate for block in experts_of(model)]
    weights = []
    for router in routers:
        stats = routing_statistics(router)
        assert stats is not None
        assert stats.chosen.sum().item() == 3 * 2 * 16 * 2  # tokens x top-k
        weights.append(stats.weight.clone())
    result = quiet(
        dx.prune,
        model,
        {"input_ids": IDS},
        ratio=0.0,
        ratios={"experts": 0.5},
        importance="routing",
    )
    for name, weight in zip(["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"], weights):
        kept = result.plan[name + ".weight"][0]
        assert set(kept.tolist()) == set(weight.argsort(descending=True)[:4].tolist())


def test_routing_importance_needs_statistics():
    with pytest.raises(dx.MissingGradientsError, match="collect_routing"):
        quiet(
            dx.prune,
            build("mixtral"),
            {"input_ids": IDS},
            ratios={"experts": 0.5},
            importance="routing",
        )


def _with_experts(layer, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), layer(), torch.nn.Linear(16, 8)).double()


def test_experts_run_in_a_loop_prune_their_own_neurons_exactly():
    model = _with_experts(LoopedExperts)
    x = torch.randn(32, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    original = copy.deepcopy(model)
    result = quiet(dx.prune, model, x, ratio=0.5, exact_only=True, ratios={"experts": 0.5})
    assert "experts" not in result.units  # expert numbers compared with constants: fixed
    assert model[1].gate.out_features == 4  # every expert stays
    assert all(expert[0].out_features == 12 for expert in model[1].experts)
    assert_scatter_back_equal(original, model, result.plan, x)


def test_fused_experts_of_any_module_prune_whole():
    model = _with_experts(FusedExperts)
    x = torch.randn(32, 8, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    original = copy.deepcopy(model)
    result = quiet(dx.prune, model, x, ratio=0.0, ratios={"experts": 0.5})
    assert result.units["experts"] == (4, 2) and model[1].num_experts == 2
    kept = result.plan["1.gate.weight"][0]
    assert torch.equal(model[1].up, original[1].up[kept])
    mask = torch.full((4,), float("-inf"), dtype=torch.double)
    mask[kept] = 0.0
    with MaskedRouters({original[1].gate.weight: mask}):
        expected = original(x)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ratio", [0.3, 0.7])
@pytest.mark.parametrize("dtype, multiple", [(torch.float32, 4), (torch.bfloat16, 8)])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_expert_widths_stay_whole_16_bytes_so_the_grouped_matmul_runs(
    family, dtype, multiple, ratio
):
    """At ratio 0.3 an expert kept 45 of its 64 neurons and the stream 45 of 64 widths: the
    grouped matmul transformers runs by default takes strides of whole 16 bytes only, and the
    pruned model failed at its first forward ("strides should be multiple of 16 bytes"). Every
    dim of an expert weight but the expert dim keeps a multiple of 16 bytes' worth."""
    model = build(family, dtype)  # grouped_mm, transformers' default
    quiet(dx.prune, model, {"input_ids": IDS}, ratio=ratio)
    for block in experts_of(model):
        for weight in (block.experts.gate_up_proj, block.experts.down_proj):
            assert weight.shape[1] % multiple == 0 and weight.shape[2] % multiple == 0
    assert model.model.embed_tokens.weight.shape[1] < 64  # (the stream did shrink)
    default = outputs_of(model, {"input_ids": IDS})[0]
    model.set_experts_implementation("batched_mm")
    torch.testing.assert_close(outputs_of(model, {"input_ids": IDS})[0], default)


def test_expert_widths_stay_whole_16_bytes_after_validation_rounds():
    """OLMoE's plan is redone once validation finds a size its code fixes: the multiples of
    the first round's groups were kept for the new groups, and the experts lost their 16
    bytes again (20 of 64 neurons in bfloat16)."""
    from zoo_transformers import build as build_zoo

    zoo = build_zoo("olmoe")
    model = zoo.model.to(torch.bfloat16)
    quiet(dx.prune, model, zoo.inputs, ratio=0.7)
    for layer in model.model.layers:
        for weight in (layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj):
            assert weight.shape[1] % 8 == 0 and weight.shape[2] % 8 == 0
    with torch.no_grad():
        model(**zoo.inputs)  # (the default grouped matmul)
