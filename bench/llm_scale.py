"""One prune of an LLM-shaped model in this process, printed as one JSON line: the bench suites
run it in a fresh subprocess per measurement, so that each peak RSS is that run's own.

    .venv/bin/python bench/llm_scale.py TOOL SHAPE

TOOL: ``native`` / ``python`` (our backends), ``verify`` (native with ``verify=True``: the plan
checked on the inputs before anything changes), ``torch-pruning``, or ``forward`` (two plain
forwards of the model on the same inputs and a 1 GiB copy: what a prune's stages compare to);
SHAPE: ``llama-2-7b``, ``llama-3-8b`` (bf16 weights), ``llama-3-70b-meta`` or
``qwen3-30b-a3b-meta`` (on the meta device: trace + resolve + plan, no weights; the MoE with
half its experts removed too), or ``llama-small-N`` (hidden 256, GQA 8/2, N layers, fp32).

Weights are random values: one block of 1,000,003 ``randn`` values tiled over every tensor (a
block length prime to every row length, so rows differ; drawing 7B normal values would take a
minute and is not what is measured). Building the model is not part of the measured time.

Our settings: ``ratio=0.5, ratios={"hidden": 0}`` (heads and MLP neurons, not the residual
stream); ``in_place=True`` for the bf16 shapes. Torch-Pruning 1.6.1's grouping does not finish
on Llama attention in transformers 5 (the rotate-half of rotary embeddings grows its attention
group without bound; see bench/anchor_transformers.py), so it is given the one job it finishes:
the MLP neurons at 50%, with the attention projections, embeddings, down projections and the
head ignored. It does less work than we do in these rows.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings

import torch

SHAPES = {
    "llama-2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
    "llama-2-13b": dict(
        vocab_size=32000,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
    ),
    "llama-3-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "llama-3-70b": dict(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    ),
}
# Qwen3-30B-A3B: 48 layers of 128 experts (8 chosen per token, 768 neurons each), 30.5B
# parameters; planned on meta with whole experts pruned too.
MOE_SHAPES = {
    "qwen3-30b-a3b": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=128,
        num_experts_per_tok=8,
    ),
}
SMALL = dict(
    vocab_size=128,
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=8,
    num_key_value_heads=2,
)
BLOCK = 1_000_003


def config_of(shape: str):
    import transformers as T

    if shape.startswith("llama-small-"):
        return T.LlamaConfig(**SMALL, num_hidden_layers=int(shape.rsplit("-", 1)[1])), "float32"
    if shape.removesuffix("-meta") in MOE_SHAPES:
        return T.Qwen3MoeConfig(**MOE_SHAPES[shape.removesuffix("-meta")]), "bfloat16"
    return T.LlamaConfig(**SHAPES[shape.removesuffix("-meta")]), "bfloat16"


def ratios_of(shape: str) -> dict:
    """Heads and MLP neurons (the residual stream kept); half the experts of an MoE too."""
    if shape.removesuffix("-meta") in MOE_SHAPES:
        return {"hidden": 0.0, "experts": 0.5}
    return {"hidden": 0.0}


def small_llama(layers: int):
    """The scaling rows' model (``SMALL``, ``layers`` layers), seeded, fp32, in eval mode."""
    import transformers as T

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.LlamaForCausalLM(T.LlamaConfig(**SMALL, num_hidden_layers=layers)).eval()


# The scaling rows' inputs: 16 tokens.
SMALL_IDS = {
    "input_ids": torch.randint(
        0, SMALL["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(0)
    )
}


def build(shape: str, device="cpu"):
    """The model with random weights on ``device`` (on meta for ``*-meta``), in eval mode."""
    import transformers as T

    config, dtype = config_of(shape)
    dtype = getattr(torch, dtype)
    model_class = T.Qwen3MoeForCausalLM if isinstance(config, T.Qwen3MoeConfig) else None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = (model_class or T.LlamaForCausalLM)(config).to(dtype).eval()
    if shape.endswith("-meta"):
        return model
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    block = torch.randn(BLOCK, generator=gen, device=device).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            for start in range(0, flat.numel(), BLOCK):
                stop = min(flat.numel(), start + BLOCK)
                flat[start:stop].copy_(block[: stop - start])
        rotary = model.model.rotary_emb  # its buffers were never computed on meta
        model.model.rotary_emb = type(rotary)(config=config).to(device).eval()
    return model


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux: VmHWM, which starts afresh at exec (ru_maxrss would
    carry the forking parent's peak over into a subprocess)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_ours(model, inputs, backend: str, meta: bool, ratios: dict, verify: bool = False) -> dict:
    import depgraph_ext as dx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if meta:  # no weights: the graph, then the plan for equal scores, validated
            from depgraph_ext.pruning.select import select_local
            from depgraph_ext.pruning.validate import plan_until_valid

            t = time.perf_counter()
            dg = dx.DependencyGraph(model, inputs, backend=backend, progress=False)
            t_graph = time.perf_counter()
            rounds = []

            def choose(g):  # equal scores; validation may block sizes the code fixes
                rounds.append(1)
                scores = torch.zeros(g.resolution.num_units, dtype=torch.float64)
                return select_local(g, scores, 0.5, None, ratios)

            dg, plan = plan_until_valid(dg, choose)
            t_plan = time.perf_counter()
            timings = dict(dg.timings, plan=t_plan - t_graph)
            units = {}
            for group in dg.groups:
                before, after = units.get(group.kind, (0, 0))
                units[group.kind] = (
                    before + group.num_units,
                    after + int(plan.keep[group.unit_ids].sum()),
                )
            return {
                "seconds": t_plan - t,
                "timings": timings,
                "planned": len(plan.tensors),
                "validation_rounds": len(rounds),
                "units": units,
            }
        bytes_before = tensor_bytes(model)
        served = _count_sums_taken_ahead()
        t = time.perf_counter()
        result = dx.prune(
            model,
            inputs,
            ratio=0.5,
            ratios=ratios,
            backend=backend,
            in_place=backend == "native",
            progress=False,
            verify=verify,
        )
        seconds = time.perf_counter() - t
        bytes_after = tensor_bytes(model)
    changed = [name for name in result.plan if name in bytes_before]
    shapes = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
    return {
        "seconds": seconds,
        "timings": result.timings,
        "params_before": result.params_before,
        "params_after": result.params_after,
        # What score and apply must move at least: every pruned tensor read once to score
        # it; its kept part read and written once to compact it in place.
        "score_bytes": sum(bytes_before[n] for n in changed),
        # Of those, the bytes of the weights whose sums scoring took from the background
        # thread that summed them during the trace (the score stage did not read them).
        "score_ahead_bytes": sum(served.values()),
        "apply_bytes": 2 * sum(bytes_after[n] for n in changed),
        # The same, counting the reads in the 64-byte lines memory moves: a tensor whose
        # columns are pruned (o_proj, down_proj) is read whole, kept columns being spread over
        # every line of every row.
        "apply_line_bytes": sum(
            compaction_bytes(shapes[n], result.plan[n], bytes_after[n] // _numel(shapes[n]))
            for n in changed
        ),
    }


def _count_sums_taken_ahead() -> dict:
    """id -> bytes (as scored: before the prune shrinks it) of each weight whose sums scoring
    takes from the prefetch from now on."""
    from depgraph_ext.pruning import prefetch

    served, sums = {}, prefetch.IndexSumsPrefetch.sums

    def counted(self, tensor, dim, p):
        out = sums(self, tensor, dim, p)
        if out is not None:
            served[id(tensor)] = tensor.numel() * tensor.element_size()
        return out

    prefetch.IndexSumsPrefetch.sums = counted
    return served


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return max(n, 1)


def compaction_bytes(shape_after, kept: dict, itemsize: int, line: int = 64) -> int:
    """Bytes a compaction must move at least: the kept elements written once, and read in
    whole lines of ``line`` bytes. Along the last pruned dim, each kept index is a contiguous
    block of the dims after it; the lines those blocks touch in one row of that dim are read,
    in every kept row of the dims before it (rows starting on a line: the shapes here do)."""
    dims = sorted(kept)
    last = dims[-1]
    block = itemsize * _numel(shape_after[last + 1 :])
    touched = set()
    for k in kept[last].tolist():
        touched.update(range(k * block // line, ((k + 1) * block - 1) // line + 1))
    rows = _numel(shape_after[:last])  # (pruned dims before it: their kept sizes)
    written = itemsize * _numel(shape_after)
    return rows * len(touched) * line + written


def tensor_bytes(model) -> dict[str, int]:
    """Bytes of every parameter and buffer, by name."""
    return {n: t.numel() * t.element_size() for n, t in model.state_dict(keep_vars=True).items()}


def run_forward(model, inputs, runs: int = 2) -> dict:
    """Plain forwards of the model on the inputs (no grad), and the machine's copy bandwidth
    (a 1 GiB tensor copied, read + write bytes per second, best of 5) in the same process."""
    times = []
    with torch.no_grad():
        for _ in range(runs):
            t = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - t)
    source = torch.ones(2**30, dtype=torch.uint8)
    target = torch.empty_like(source)
    copies = []
    for _ in range(5):
        t = time.perf_counter()
        target.copy_(source)
        copies.append(time.perf_counter() - t)
    return {
        "seconds": sum(times) / len(times),
        "forwards": times,
        "copy_bytes_per_second": 2 * 2**30 / min(copies),
        "timings": {},
    }


def run_torch_pruning(model, inputs) -> dict:
    import torch_pruning as tp

    layers = model.model.layers
    ignored = [model.lm_head, model.model.embed_tokens] + [
        m
        for layer in layers
        for m in (
            layer.self_attn.q_proj,
            layer.self_attn.k_proj,
            layer.self_attn.v_proj,
            layer.self_attn.o_proj,
            layer.mlp.down_proj,
        )
    ]
    before = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=inputs["input_ids"],
        output_transform=lambda out: out.logits,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=False,
        pruning_ratio=0.5,
        ignored_layers=ignored,
    )
    t_graph = time.perf_counter()
    pruner.step()
    t_step = time.perf_counter()
    after = sum(p.numel() for p in model.parameters())
    return {
        "seconds": t_step - t,
        "timings": {"graph": t_graph - t, "step": t_step - t_graph},
        "params_before": before,
        "params_after": after,
    }


def main() -> None:
    tool, shape = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    rss_start = peak_rss_bytes()
    model = build(shape)
    meta = shape.endswith("-meta")
    size = (
        model_bytes(model)
        if not meta
        else sum(p.numel() * p.element_size() for p in model.parameters())
    )
    rss_built = peak_rss_bytes()
    inputs = {"input_ids": torch.randint(0, model.config.vocab_size, (1, 16))}
    if tool == "torch-pruning":
        out = run_torch_pruning(model, inputs)
    elif tool == "forward":  # plain forwards and the copy bandwidth, for scale
        out = run_forward(model, inputs)
    elif tool == "verify":  # native, checking the plan on the inputs before slicing
        out = run_ours(model, inputs, "native", meta, ratios_of(shape), verify=True)
    else:
        out = run_ours(model, inputs, tool, meta, ratios_of(shape))
    out.update(
        tool=tool,
        shape=shape,
        model_bytes=size,
        peak_rss=peak_rss_bytes(),
        rss_after_imports=rss_start,
        rss_after_build=rss_built,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
