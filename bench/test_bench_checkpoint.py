"""A Llama-2-7B-shaped bf16 checkpoint (32 layers, hidden 4096, MLP 11008, 32 heads, vocab
32000, untied; 6.74B parameters, 13.5 GB on disk in 2 GB shards, random weights) pruned end to
end from disk: time and peak RSS of the pruning process, for 1 process and for 2 ranks under
torchrun (gloo). Before each timed run the page cache of the source shards is dropped, so both
read every byte from disk (twice: once to score, once to slice). The checkpoint is generated
tensor by tensor (never the whole model in memory) into a cache directory reused across runs.

    flock /tmp/depgraph-bigmem.lock .venv/bin/python -m pytest bench/test_bench_checkpoint.py -q -s

DEPGRAPH_BENCH_CKPT sets the cache directory (default /tmp/depgraph-bench-ckpt); the outputs
go beside it and are removed at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from depgraph_ext.io import safetensors_io
from measuring import EXTRA, RESULTS

T = pytest.importorskip("transformers")

CACHE = Path(os.environ.get("DEPGRAPH_BENCH_CKPT", "/tmp/depgraph-bench-ckpt"))
LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
SHARD_BYTES = 2 * 2**30
WORKLOAD = "llama-2-7b shape, bf16 checkpoint"
ARGS = ["--ratio", "0.5", "--ratios", "heads=0.5,hidden=0", "--no-progress", "--overwrite"]


def llama_tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of LlamaForCausalLM's state dict, in its order."""
    h, m, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "mlp.gate_proj.weight", (m, h)),
            (p + "mlp.up_proj.weight", (m, h)),
            (p + "mlp.down_proj.weight", (h, m)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


# A scaled-down Qwen3-MoE (the Qwen3-30B-A3B layout: per-expert tensors on disk, q/k norms):
# 16 layers of 32 experts (top-4, 512 neurons each), hidden 1024; 0.91B parameters, 1.8 GB.
QWEN3_MOE = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2048,
    moe_intermediate_size=512,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=64,
    num_experts=32,
    num_experts_per_tok=4,
    tie_word_embeddings=False,
)
MOE_WORKLOAD = "qwen3-moe, 32 experts x 16 layers, bf16 checkpoint"


def qwen3_moe_tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a Qwen3-MoE checkpoint as transformers saves it (one tensor per
    expert and projection)."""
    h, m, v, d = c["hidden_size"], c["moe_intermediate_size"], c["vocab_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "self_attn.q_norm.weight", (d,)),
            (p + "self_attn.k_norm.weight", (d,)),
            (p + "mlp.gate.weight", (c["num_experts"], h)),
        ]
        for e in range(c["num_experts"]):
            out += [
                (p + f"mlp.experts.{e}.gate_proj.weight", (m, h)),
                (p + f"mlp.experts.{e}.up_proj.weight", (m, h)),
                (p + f"mlp.experts.{e}.down_proj.weight", (h, m)),
            ]
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def generate(
    path: Path,
    config: dict,
    shard_bytes: int = SHARD_BYTES,
    tensors_of=llama_tensors,
    config_class: str = "LlamaConfig",
    architecture: str = "LlamaForCausalLM",
) -> None:
    """Write a bf16 checkpoint one tensor at a time (random normal * 0.02; norms near 1)."""
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = tensors_of(config)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        n = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    weight_map = {}
    gen = torch.Generator().manual_seed(0)
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, order = safetensors_io.output_layout(
            [(n, torch.bfloat16, s) for n, s in shard], {"format": "pt"}
        )
        shapes = dict(shard)
        with open(tmp / fname, "wb") as f:
            f.write(header)
            for name in order:
                t = torch.randn(shapes[name], generator=gen)
                if len(shapes[name]) == 1:
                    t = 1.0 + 0.1 * t
                else:
                    t.mul_(0.02)
                safetensors_io.write_tensor(f, t.to(torch.bfloat16))
                weight_map[name] = fname
    total = sum(2 * int(torch.Size(s).numel()) for _, s in tensors)
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    getattr(T, config_class)(
        **config, dtype="bfloat16", architectures=[architecture]
    ).save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)


def evict(path: Path) -> None:
    """Drop the page cache of these files only (posix_fadvise DONTNEED; nobody else's files),
    so every timed run reads its shards from disk: cold-cache figures, comparable."""
    for f in path.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@pytest.fixture(scope="module")
def checkpoint():
    marker = CACHE / "model.safetensors.index.json"
    if not marker.exists():  # the index is written last and the directory renamed into place
        t = time.perf_counter()
        generate(CACHE, LLAMA2_7B)
        EXTRA.append(f"generated the 7B-shaped checkpoint in {time.perf_counter() - t:.0f} s")
    return CACHE


# Peak RSS from VmHWM, which starts afresh at exec (ru_maxrss keeps the forking parent's peak:
# this process generated the checkpoint).
_HWM = (
    "def hwm_kib():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1])\n"
)

_RUN = (
    _HWM.replace("{", "{{").replace("}", "}}")
    + """
import json, sys, time
t = time.perf_counter()
import depgraph_ext as dx
imported = hwm_kib()
r = dx.prune_checkpoint(sys.argv[1], sys.argv[2], ratio=0.5, ratios={{"heads": 0.5,
                        "hidden": 0.0}}, overwrite=True, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "timings": r.timings,
                  "rss_kib": hwm_kib(),
                  "imported_kib": imported, "before": r.params_before, "after": r.params_after,
                  "bytes_before": r.bytes_before, "bytes_after": r.bytes_after}}))
print(r.summary(), file=sys.stderr)
"""
)


def check_output(src: Path, dst: Path) -> None:
    """Config and shapes follow the plan; kept weights are the source's slices, bit for bit."""
    from safetensors import safe_open

    config = json.loads((dst / "config.json").read_text())
    assert config["num_attention_heads"] == 16 and config["num_key_value_heads"] == 16
    assert config["intermediate_size"] == 5504 and config["hidden_size"] == 4096
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    key = "model.layers.7.mlp.down_proj.weight"
    with (
        safe_open(dst / index["weight_map"][key], "pt") as out,
        safe_open(src / index["weight_map"][key], "pt") as inp,
    ):
        pruned, original = out.get_tensor(key), inp.get_tensor(key)
    assert pruned.shape == (4096, 5504)
    # every pruned column is one of the original's, in order
    cols = {
        bytes(original[:, j].contiguous().view(torch.uint8).numpy()): j
        for j in range(original.shape[1])
    }
    found = [
        cols[bytes(pruned[:, j].contiguous().view(torch.uint8).numpy())]
        for j in range(pruned.shape[1])
    ]
    assert found == sorted(found) and len(set(found)) == 5504


def prune_in_a_fresh_process(script: str, src: Path, dst: Path) -> dict:
    """Run ``script`` (one of the _RUN texts) on ``src`` -> ``dst`` with a cold page cache;
    its JSON line (seconds, stages, peak RSS, counts)."""
    shutil.rmtree(dst, ignore_errors=True)
    evict(src)
    out = subprocess.run(
        [sys.executable, "-c", script.format(), str(src), str(dst)],
        capture_output=True,
        text=True,
        check=True,
    )
    print(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_prune_7b_checkpoint_one_process(checkpoint):
    dst = CACHE.with_name(CACHE.name + "-out1")
    r = prune_in_a_fresh_process(_RUN, checkpoint, dst)
    check_output(checkpoint, dst)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
    EXTRA.append(
        f"llama-2-7b shape, bf16, {r['bytes_before'] / 1e9:.1f} GB on disk in "
        f"{len(list(checkpoint.glob('*.safetensors')))} shards (page cache dropped) -> "
        f"{r['bytes_after'] / 1e9:.1f} GB "
        f"(params {r['before']:,} -> {r['after']:,}), 1 process: {r['seconds']:.1f} s in the "
        f"process ({stages}); peak RSS {r['rss_kib'] / 2**20:.2f} GiB (after imports "
        f"{r['imported_kib'] / 2**20:.2f} GiB)"
    )
    RESULTS[(WORKLOAD, "prune from disk end to end, 1 process", "native")] = r["seconds"]
    print(EXTRA[-1])
    assert r["rss_kib"] < 3 * 2**20  # KiB: under 3 GiB for a 13.5 GB model


def test_prune_7b_checkpoint_two_ranks(checkpoint):
    """Two ranks under torchrun on this 2-core machine; output identical to one process."""
    one = CACHE.with_name(CACHE.name + "-out1")
    two = CACHE.with_name(CACHE.name + "-out2")
    if not one.exists():
        subprocess.run(
            [sys.executable, "-m", "depgraph_ext.cli", str(checkpoint), str(one), *ARGS],
            check=True,
            capture_output=True,
        )
    wrapper = Path(CACHE.with_name(CACHE.name + "-rss.py"))
    # Each rank prints its peak RSS as it leaves: the CLI of a distributed run leaves through
    # os._exit (see depgraph_ext/cli.py), which skips finally blocks.
    wrapper.write_text(
        "import runpy, sys, os\n" + _HWM + "def rss():\n"
        "    print('RSS', os.environ['RANK'], hwm_kib(), file=sys.stderr, flush=True)\n"
        "leave = os._exit\n"
        "def exit_after_rss(code):\n    rss()\n    leave(code)\n"
        "os._exit = exit_after_rss\n"
        "try:\n    runpy.run_module('depgraph_ext.cli', run_name='__main__')\n"
        "finally:\n    rss()\n"
    )
    shutil.rmtree(two, ignore_errors=True)
    evict(checkpoint)
    t = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(wrapper),
            str(checkpoint),
            str(two),
            *ARGS,
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout)
    rss = [int(line.split()[2]) for line in run.stderr.splitlines() if line.startswith("RSS ")]
    for f in sorted(p.name for p in one.iterdir()):
        assert subprocess.run(["cmp", "-s", str(one / f), str(two / f)]).returncode == 0, f
    stages = re.search(r"time: (.*)$", run.stdout.strip().splitlines()[-1]).group(1)
    EXTRA.append(
        f"llama-2-7b shape, 2 ranks (gloo, torchrun, OMP_NUM_THREADS=1 each): "
        f"{seconds:.1f} s wall including torchrun and imports (rank 0: {stages}); "
        "peak RSS per rank "
        f"{', '.join(f'{k / 2**20:.2f}' for k in rss)} GiB; output byte-identical to "
        "1 process"
    )
    RESULTS[(WORKLOAD, "prune from disk end to end, 2 ranks (torchrun)", "native")] = seconds
    print(EXTRA[-1])
    assert len(rss) == 2 and max(rss) < 3 * 2**20
    shutil.rmtree(one, ignore_errors=True)
    shutil.rmtree(two, ignore_errors=True)
    wrapper.unlink()


@pytest.fixture(scope="module")
def moe_checkpoint():
    path = CACHE.with_name(CACHE.name + "-moe")
    if not (path / "model.safetensors.index.json").exists():
        t = time.perf_counter()
        generate(
            path,
            QWEN3_MOE,
            shard_bytes=2**30,
            tensors_of=qwen3_moe_tensors,
            config_class="Qwen3MoeConfig",
            architecture="Qwen3MoeForCausalLM",
        )
        EXTRA.append(f"generated the MoE checkpoint in {time.perf_counter() - t:.0f} s")
    return path


_RUN_MOE = _RUN.replace(
    'ratios={{"heads": 0.5,\n                        "hidden": 0.0}}',
    'ratios={{"hidden": 0.0, "experts": 0.5}}',
)


def test_prune_moe_checkpoint(moe_checkpoint):
    """Half the experts and half of every kept expert's neurons (and heads), from disk."""
    assert _RUN_MOE != _RUN
    dst = moe_checkpoint.with_name(moe_checkpoint.name + "-out")
    r = prune_in_a_fresh_process(_RUN_MOE, moe_checkpoint, dst)
    config = json.loads((dst / "config.json").read_text())
    assert config["num_local_experts"] == 16 and config["moe_intermediate_size"] == 256
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert "model.layers.3.mlp.experts.15.down_proj.weight" in index["weight_map"]
    assert "model.layers.3.mlp.experts.16.down_proj.weight" not in index["weight_map"]
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
    EXTRA.append(
        f"{MOE_WORKLOAD}: {r['bytes_before'] / 1e9:.2f} GB on disk (page cache dropped) -> "
        f"{r['bytes_after'] / 1e9:.2f} GB (params {r['before']:,} -> {r['after']:,}; experts "
        f"32 -> 16 per layer, 512 -> 256 neurons each), 1 process: {r['seconds']:.1f} s "
        f"({stages}); peak RSS {r['rss_kib'] / 2**20:.2f} GiB (after imports "
        f"{r['imported_kib'] / 2**20:.2f} GiB)"
    )
    RESULTS[(MOE_WORKLOAD, "prune from disk end to end, 1 process", "native")] = r["seconds"]
    print(EXTRA[-1])
