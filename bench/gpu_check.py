"""The GPU check (``make gpu-check``): on a machine with an NVIDIA GPU, build the CUDA kernels
for that GPU only, run every CUDA test, then print one table: the kernels on a Llama-2-7B-shaped
set of bf16 weights against plain PyTorch and the device's copy bandwidth, and whole prunes on
the GPU (time, peak GPU memory) next to Torch-Pruning's where it is installed. Without a GPU it
says so in one line and exits.

    python bench/gpu_check.py [--out DIR] [--skip-build] [--skip-tests] [--quick]

``--out DIR`` also writes the table (gpu_check.md) and every figure (gpu_check.json) there.
``--quick`` runs one layer of the weight set and the small models only (what the CPU-only
check of this script runs: ``--device cpu --quick``). The prunes run in one child process per
tool, so that each tool's imports and allocator state are its own; peak GPU memory is counted
per prune from a reset of the allocator's statistics, against the model's own bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

try:
    import torch
except ImportError:  # (the Makefile's python3: a GPU machine's carries torch, this one not)
    print(
        f"gpu-check: no torch in {sys.executable}, so no GPU to check here; where torch is, "
        "run it with that Python: make gpu-check PYTHON=<python>"
    )
    sys.exit(0)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path[:0] = [str(BENCH), str(ROOT / "tests")]

# (row, how our prune is called) in table order; the torchvision ones need torchvision.
VISION = ["resnet18", "densenet201", "vit_b_16", "vit_l_16", "regnet_y_32gf"]
LLMS = ["llama-small", "mixtral-small", "llama-2-7b", "llama-2-7b verify", "llama-2-13b"]
QUICK = ["resnet18", "llama-small", "mixtral-small"]


# -- timing -----------------------------------------------------------------------------------
def timed(fn, device: torch.device, rounds: int = 5) -> float:
    """Median seconds of ``fn()`` after one warm-up; CUDA events on a GPU."""
    times = []
    for i in range(rounds + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            seconds = start.elapsed_time(stop) / 1e3
        else:
            t = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t
        if i:
            times.append(seconds)
    return statistics.median(times)


# -- the kernels --------------------------------------------------------------------------------
def copy_bandwidth(device: torch.device) -> float:
    """GB/s of a 2 GiB device copy, read + write."""
    src = torch.ones(2**30, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / timed(lambda: dst.copy_(src), device) / 1e9


def kernel_rows(device: torch.device, layers: int) -> list[dict]:
    """grouped_norm, gather_slices and compact_ against plain PyTorch on the weights of
    ``layers`` Llama-2-7B layers (bf16), and the device's copy bandwidth."""
    from test_bench_kernels import llama_weights

    from depgraph_ext import ops

    rows = []
    copy_gbps = copy_bandwidth(device)
    rows.append(dict(what="device copy, read + write (2 GiB)", gbps=copy_gbps))
    rows[-1]["seconds"] = 2 * 2**31 / copy_gbps / 1e9

    tensors, dims, maps, units, kept = llama_weights(layers=layers, device=device)
    unique = list({id(t): t for t in tensors}.values())
    unique_bytes = sum(t.numel() * t.element_size() for t in unique)
    member_bytes = sum(t.numel() * t.element_size() for t in tensors)

    def plain_norms():
        out = torch.zeros(units, dtype=torch.float32, device=device)
        for t, d, m in zip(tensors, dims, maps):
            out.index_add_(0, m, torch.linalg.vector_norm(t, 2, dim=1 - d, dtype=torch.float32))
        return out

    def plain_sums():  # what grouped_norm computes: sums of squares
        out = torch.zeros(units, dtype=torch.float32, device=device)
        for t, d, m in zip(tensors, dims, maps):
            out.index_add_(0, m, t.float().square().sum(dim=1 - d))
        return out

    def native():
        return ops.grouped_norm(tensors, dims, maps, units, 2, "sum")

    agree = torch.allclose(native().float(), plain_sums(), rtol=1e-3, atol=0)
    for what, fn in [
        ("plain PyTorch: vector_norm(dtype=float32) per member + index_add_", plain_norms),
        ("plain PyTorch: w.float().square().sum(dim) per member + index_add_", plain_sums),
        ("depgraph_ext.ops.grouped_norm, same members", native),
    ]:
        seconds = timed(fn, device)
        rows.append(dict(what=what, seconds=seconds, gbps=member_bytes / seconds / 1e9))
    rows[-1]["note"] = f"agrees with plain PyTorch to 1e-3: {agree}"

    half = [k for k in kept]
    index_select = lambda: [t.index_select(0, k) for t, k in zip(unique, half)]  # noqa: E731
    gather = lambda: ops.gather_slices(unique, [0] * len(unique), half)  # noqa: E731
    exact = all(torch.equal(a, b) for a, b in zip(gather(), index_select()))
    for what, fn in [
        ("index_select of half the rows of every tensor", index_select),
        ("depgraph_ext.ops.gather_slices, same rows", gather),
    ]:
        seconds = timed(fn, device)
        rows.append(dict(what=what, seconds=seconds, gbps=unique_bytes / seconds / 1e9))
    rows[-1]["note"] = f"bit-identical to index_select: {exact}"
    # compact_ in place, over and over on the same tensors: the values change, the bytes it
    # moves do not (a fresh copy per round would not fit beside the weights of a large set).
    seconds = timed(lambda: ops.compact_(unique, [0] * len(unique), half), device)
    rows.append(
        dict(
            what="depgraph_ext.ops.compact_ (in place), same rows",
            seconds=seconds,
            gbps=unique_bytes / seconds / 1e9,
        )
    )
    for row in rows:
        row["of_copy"] = row["gbps"] / copy_gbps
    rows.append(
        dict(
            what=f"(weights: {layers} layers, {unique_bytes / 1e9:.2f} GB unique, "
            f"{member_bytes / 1e9:.2f} GB of member reads)"
        )
    )
    return rows


# -- whole prunes ---------------------------------------------------------------------------
def build(name: str, device: torch.device):
    """(model, inputs, our options) of a row, on ``device``."""
    import transformers as T

    from llm_scale import build as build_llm
    from nets import randomize_norms

    torch.manual_seed(0)
    if name in VISION:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
        model = randomize_norms(model).eval().to(device)
        return model, torch.randn(1, 3, 224, 224, device=device), {}
    ids = {"input_ids": torch.randint(0, 64, (1, 16), device=device)}
    small = dict(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "llama-small":
            return T.LlamaForCausalLM(T.LlamaConfig(**small)).eval().to(device), ids, {}
        if name == "mixtral-small":
            config = T.MixtralConfig(**small, num_local_experts=4, num_experts_per_tok=2)
            return T.MixtralForCausalLM(config).eval().to(device), ids, {}
        shape = name.removesuffix(" verify")
        model = build_llm(shape, device)
    ids = {"input_ids": torch.randint(0, model.config.vocab_size, (1, 16), device=device)}
    options = dict(ratios={"hidden": 0.0}, in_place=True, verify=name.endswith(" verify"))
    return model, ids, options


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def prune_ours(model, inputs, options) -> dict:
    import depgraph_ext as dx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.prune(model, inputs, ratio=0.5, progress=False, **options)
    return dict(timings=result.timings, after=result.params_after, before=result.params_before)


def prune_torch_pruning(model, inputs, name) -> dict:
    import torch_pruning as tp

    from llm_scale import run_torch_pruning

    if name.startswith("llama") and not name.endswith("small"):
        out = run_torch_pruning(model, inputs)
        return dict(timings=out["timings"], after=out["params_after"], before=out["params_before"])
    if name.endswith("-small"):
        raise RuntimeError("not run: its LLM job is measured on the full shapes")
    from measuring import classifier_of

    last = getattr(model, "fc", None) or getattr(model, "heads", None)
    ignored = [last] if last is not None else [classifier_of(model)]
    before = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=ignored,
    )
    t_graph = time.perf_counter()
    pruner.step()
    t_step = time.perf_counter()
    after = sum(p.numel() for p in model.parameters())
    return dict(
        timings={"graph": t_graph - t, "step": t_step - t_graph}, after=after, before=before
    )


def prune_rows(tool: str, names: list[str], device: torch.device) -> list[dict]:
    """Every row's prune by ``tool``, one after the other in this process."""
    rows = []
    for name in names:
        row = dict(model=name, tool=tool)
        try:
            model, inputs, options = build(name, device)
        except ImportError as exc:
            rows.append(dict(row, error=f"skipped: {exc}"))
            continue
        size = model_bytes(model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t = time.perf_counter()
        try:
            if tool == "ours":
                out = prune_ours(model, inputs, options)
            else:
                if name.endswith(" verify"):
                    raise RuntimeError("not run: Torch-Pruning has no verification")
                out = prune_torch_pruning(model, inputs, name)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row.update(out, seconds=time.perf_counter() - t)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                row["peak_of_model"] = (peak - base + size) / size
            with torch.no_grad():  # the pruned model still runs
                model(**inputs) if isinstance(inputs, dict) else model(inputs)
        except Exception as exc:  # a row that fails is a finding, not the end of the check
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        row["model_bytes"] = size
        rows.append(row)
        del model, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# -- the check ------------------------------------------------------------------------------
def run(cmd: list[str], env=None) -> float:
    t = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t


def child(args: list[str]) -> list[dict]:
    out = subprocess.run(
        [sys.executable, __file__, *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(kernels: list[dict], prunes: list[dict]) -> str:
    lines = ["| kernel | time | GB/s | of copy | note |", "|---|---|---|---|---|"]
    for r in kernels:
        if "seconds" not in r:
            lines.append(f"| {r['what']} | | | | |")
            continue
        lines.append(
            f"| {r['what']} | {r['seconds'] * 1e3:.2f} ms | {r['gbps']:,.0f} | "
            f"{r['of_copy']:.2f} | {r.get('note', '')} |"
        )
    lines += [
        "",
        "| model | depgraph_ext | stages (s) | peak GPU memory / model | Torch-Pruning | "
        "its peak / model |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["tool"]): r for r in prunes}
    for name in dict.fromkeys(r["model"] for r in prunes):
        ours, theirs = by.get((name, "ours"), {}), by.get((name, "torch-pruning"), {})

        def cell(r):
            if not r:
                return "not run", ""
            if "error" in r:
                return r["error"], ""
            peak = f"{r['peak_of_model']:.3f}x" if "peak_of_model" in r else ""
            return f"{r['seconds']:.2f} s", peak

        stages = ", ".join(
            f"{k} {v:.2f}" for k, v in ours.get("timings", {}).items() if isinstance(v, float)
        )
        o, o_peak = cell(ours)
        t, t_peak = cell(theirs)
        lines.append(f"| {name} | {o} | {stages} | {o_peak} | {t} | {t_peak} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.child:  # ["kernels", layers] or ["prune", tool, names...]
        if args.child[0] == "kernels":
            rows = kernel_rows(device, int(args.child[1]))
        else:
            rows = prune_rows(args.child[1], args.child[2:], device)
        print(json.dumps(rows))
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no GPU here (torch.cuda.is_available() is False); nothing to check")
        return 0
    started = time.perf_counter()
    facts = dict(torch=torch.__version__, python=platform.python_version())
    if device.type == "cuda":
        cc = torch.cuda.get_device_capability(device)
        facts["gpu"] = torch.cuda.get_device_name(device)
        if not args.skip_build:
            env = dict(
                os.environ,
                TORCH_CUDA_ARCH_LIST=f"{cc[0]}.{cc[1]}",
                FORCE_CUDA="1",
                MAX_JOBS=str(os.cpu_count() or 4),
            )
            pip = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation"]
            facts["build_s"] = run([*pip, "--no-deps", "-e", "."], env=env)
    from depgraph_ext import ops

    facts["build_info"] = ops.build_info()
    print(facts["build_info"], flush=True)
    if not args.skip_tests:
        tests = ["tests/test_ops.py", "tests/test_device_independence.py", "tests/test_devices.py"]
        facts["tests_s"] = run([sys.executable, "-m", "pytest", *tests, "-q", "-x"])
    kernels = child(["--device", args.device, "--child", "kernels", "1" if args.quick else "32"])
    names = QUICK if args.quick else VISION + LLMS
    prunes = child(["--device", args.device, "--child", "prune", "ours", *names])
    try:
        import torch_pruning  # noqa: F401

        prunes += child(["--device", args.device, "--child", "prune", "torch-pruning", *names])
        facts["torch_pruning"] = "installed"
    except ImportError:
        facts["torch_pruning"] = "not installed: its column is empty"
    facts["total_s"] = time.perf_counter() - started
    text = table(kernels, prunes)
    print(json.dumps(facts))
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(json.dumps(facts) + "\n\n" + text + "\n")
        (args.out / "gpu_check.json").write_text(
            json.dumps(dict(facts=facts, kernels=kernels, prunes=prunes), indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
