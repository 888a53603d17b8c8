"""LLM shapes: the dependency graph of a Llama-3-8B-shaped model (32 layers, 4096/14336, GQA
32/8, vocab 128256) on the meta device, where no weight exists; native vs python resolution of
that graph; and the peak RSS of a process that builds the graph.

    .venv/bin/python -m pytest bench/test_bench_llm.py -q
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import depgraph_ext as dx
from depgraph_ext.graph.resolve import resolve
from measuring import EXTRA, measure

T = pytest.importorskip("transformers")

LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
)
INPUTS = {"input_ids": torch.zeros(1, 16, dtype=torch.long)}


def meta_llama(**overrides):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return T.LlamaForCausalLM(T.LlamaConfig(**(LLAMA3_8B | overrides))).eval()


@pytest.fixture(scope="module")
def llama8b():
    return meta_llama()


def test_llama3_8b_meta_dependency_graph(benchmark, llama8b):
    dg = measure(
        benchmark,
        ("llama-3-8b shape, meta", "dependency graph", "native"),
        lambda: dx.DependencyGraph(llama8b, INPUTS),
    )
    kv_heads = [
        g
        for g in dg.groups
        if g.kind == "heads"
        and any(m.name.endswith("k_proj.weight") and m.dim == 0 for m in g.members)
    ]
    assert len(kv_heads) == 32 and [g.kind for g in dg.groups].count("hidden") == 1


@pytest.mark.parametrize("backend", ["native", "python"])
def test_llama3_8b_resolve(benchmark, llama8b, backend):
    couplings = dx.DependencyGraph(llama8b, INPUTS).couplings
    measure(
        benchmark,
        ("llama-3-8b shape, meta", "resolve groups", backend),
        lambda: resolve(couplings, backend),
        rounds=10 if backend == "native" else 2,
    )


_RSS = """
import time, warnings, torch, transformers as T, depgraph_ext as dx
warnings.simplefilter("ignore")
def peak():  # KiB; VmHWM starts afresh at exec (ru_maxrss keeps the parent's peak)
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
before = peak()
with torch.device("meta"):
    m = T.LlamaForCausalLM(T.LlamaConfig(**{config}))
t = time.perf_counter()
dg = dx.DependencyGraph(m, {{"input_ids": torch.zeros(1, 16, dtype=torch.long)}})
print(time.perf_counter() - t, before, peak())
"""


def test_llama3_8b_meta_peak_rss():
    out = subprocess.run(
        [sys.executable, "-c", _RSS.format(config=LLAMA3_8B)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    seconds, rss_before, rss_after = float(out[0]), int(out[1]), int(out[2])
    EXTRA.append(
        f"llama-3-8b shape on meta: dependency graph {seconds:.2f} s in a fresh "
        f"process; peak RSS {rss_after / 2**20:.2f} GiB (after imports "
        f"{rss_before / 2**20:.2f} GiB); the model's bf16 weights would be 15.0 GiB"
    )
    assert rss_after < 3 * 2**20  # KiB: under 3 GiB, far below the weights it describes


SMALL = {
    "llama gqa 8/2, 4 layers": lambda: T.LlamaForCausalLM(
        T.LlamaConfig(
            vocab_size=128,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
        )
    ),
    "gpt2, 4 layers": lambda: T.GPT2LMHeadModel(
        T.GPT2Config(vocab_size=128, n_embd=256, n_layer=4, n_head=8)
    ),
    "bert, 4 layers": lambda: T.BertForMaskedLM(
        T.BertConfig(
            vocab_size=128,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=8,
        )
    ),
}


@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.parametrize("name", list(SMALL))
def test_small_transformers_prune(benchmark, name, backend):
    """The models of bench/anchor_transformers.py (where Torch-Pruning hangs or crashes)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SMALL[name]().eval()
    ids = {"input_ids": torch.randint(0, 128, (1, 16))}

    def run(m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dx.prune(m, ids, ratio=0.5, ratios={"hidden": 0.0}, backend=backend)

    import copy

    measure(
        benchmark, (name, "prune 50% end to end", backend), run, setup=lambda: copy.deepcopy(model)
    )
