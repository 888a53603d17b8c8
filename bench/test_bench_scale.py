"""Speed and memory at LLM scale: one test per row of bench/README.md's tables.

    .venv/bin/python -m pytest bench/test_bench_scale.py -q -s

- Llama-2-7B and Llama-3-8B shapes (bf16, random weights), 50% of heads and MLP neurons, end to
  end, each tool in a fresh subprocess (its time and its own peak RSS); the big ones run under
  ``flock /tmp/depgraph-bigmem.lock`` so that one big job runs at a time on a shared machine.
- Llama-3-70B shape on the meta device: trace + rules + resolve + a validated plan.
- Llama-style hidden 256, GQA 8/2, 32 -> 256 layers: the whole prune, in this process (medians
  after a warm-up round), native vs python vs Torch-Pruning; writes bench/scaling.png.
- A DenseNet-201-style net (blocks 6/12/48/32), 50%, vs Torch-Pruning.

See bench/llm_scale.py for the models and for what Torch-Pruning is asked to do on Llama.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import depgraph_ext as dx
from llm_scale import SMALL_IDS as IDS
from llm_scale import run_torch_pruning, small_llama
from measuring import EXTRA, RESULTS, measure, torch_pruning

HERE = Path(__file__).resolve().parent
LOCK = os.environ.get("DEPGRAPH_BIGMEM_LOCK", "/tmp/depgraph-bigmem.lock")
GIB = 2**30
SCALING: dict[tuple[str, int], float] = {}


def run_script(tool: str, shape: str, big: bool, timeout: float = 1800) -> dict | str:
    """bench/llm_scale.py in a fresh process: its JSON, or why there is none."""
    cmd = [sys.executable, str(HERE / "llm_scale.py"), tool, shape]
    if big and shutil.which("flock"):
        cmd = ["flock", LOCK, *cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout:.0f} s"
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        return f"exit {done.returncode} ({'killed' if done.returncode < 0 else tail[0][:120]})"
    return json.loads(done.stdout.strip().splitlines()[-1])


# Fresh processes per tool and shape: the table gets the median, every run is listed. On this
# machine the first read of weights written seconds earlier costs 0.3-2 s more in some runs
# (the host pages idle memory of the VM out), so one run alone says little.
ROUNDS = int(os.environ.get("DEPGRAPH_BENCH_ROUNDS", "3"))


def run_rounds(tool: str, shape: str, rounds: int = ROUNDS) -> list[dict] | str:
    runs = []
    for _ in range(rounds):
        out = run_script(tool, shape, big=True)
        if isinstance(out, str):
            return out
        runs.append(out)
    return runs


def record(workload: str, stage: str, runs: list[dict] | str) -> None:
    if isinstance(runs, str):
        EXTRA.append(f"{workload}: {runs}")
        return
    ordered = sorted(runs, key=lambda r: r["seconds"])
    median = ordered[len(ordered) // 2]
    tool = median["tool"]
    RESULTS[(workload, stage, tool)] = median["seconds"]
    size = median["model_bytes"]
    peak = max(r["peak_rss"] for r in runs)
    EXTRA.append(
        f"{workload}, {tool}: median of {len(runs)} {median['seconds']:.2f} s (runs "
        + ", ".join(f"{r['seconds']:.2f}" for r in runs)
        + f"); peak RSS {peak / GIB:.2f} GiB = {peak / size:.3f}x the model "
        f"({size / GIB:.2f} GiB; RSS after building it {median['rss_after_build'] / GIB:.2f} "
        "GiB); the median run's stages "
        + ", ".join(f"{k} {v:.2f} s" for k, v in median["timings"].items() if k != "total")
    )


FORWARD: dict[str, dict] = {}  # shape -> the "forward" tool's run: forwards, copy bandwidth


def test_llama2_7b_bf16_forward():
    """Scale for the rows below, in the same run: two plain forwards of the model on the
    prune's inputs, and the machine's copy bandwidth (read + write of a 1 GiB tensor)."""
    out = run_script("forward", "llama-2-7b", big=True)
    assert isinstance(out, dict), out
    FORWARD["llama-2-7b"] = out
    EXTRA.append(
        f"llama-2-7b shape, bf16: a plain forward {out['seconds']:.2f} s (runs "
        + ", ".join(f"{t:.2f}" for t in out["forwards"])
        + f"); copy bandwidth {out['copy_bytes_per_second'] / 1e9:.1f} GB/s (read + write)"
    )


def bandwidths(shape: str, runs: list[dict]) -> None:
    """Score and apply of the median run in GB/s of the bytes they must move, next to the copy
    bandwidth of the same run of the suite (how far each is from it, as a factor)."""
    median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    copy_rate = FORWARD.get(shape, {}).get("copy_bytes_per_second")
    parts = []
    for stage in ("score", "apply"):
        seconds, moved = median["timings"].get(stage), median.get(f"{stage}_bytes")
        if not seconds or not moved:
            continue
        ahead = median.get("score_ahead_bytes", 0) if stage == "score" else 0
        if ahead:  # summed by the background thread during the trace: not read by the stage
            parts.append(
                f"score: {ahead / 1e9:.2f} GB of {moved / 1e9:.2f} GB summed during the trace "
                f"(the thread busy {median['timings'].get('score_ahead', 0.0):.2f} s)"
            )
            moved -= ahead
        rate = moved / seconds
        parts.append(
            f"{stage} {moved / 1e9:.2f} GB in {seconds:.2f} s = {rate / 1e9:.1f} GB/s"
            + (f" ({copy_rate / rate:.2f}x below the copy bandwidth)" if copy_rate else "")
        )
        lines = median.get(f"{stage}_line_bytes")
        if lines:  # (reads counted in whole 64-byte lines)
            line_rate = lines / seconds
            parts.append(
                f"{stage} counting whole lines read {lines / 1e9:.2f} GB = "
                f"{line_rate / 1e9:.1f} GB/s"
                + (f" ({copy_rate / line_rate:.2f}x below)" if copy_rate else "")
            )
    EXTRA.append(f"{shape} shape, bf16, native: " + "; ".join(parts))


@pytest.mark.parametrize("tool", ["native", "torch-pruning"])
def test_llama2_7b_bf16(tool):
    if tool == "torch-pruning" and torch_pruning is None:
        pytest.skip("torch-pruning not installed")
    runs = run_rounds(tool, "llama-2-7b")
    record("llama-2-7b shape, bf16", "prune 50% end to end", runs)
    assert isinstance(runs, list), runs
    if tool == "native":
        assert all(r["params_after"] < r["params_before"] for r in runs)
        bandwidths("llama-2-7b", runs)


def test_llama2_7b_bf16_verified():
    """verify=True: before anything changes, the plan's exact groups are checked on the inputs
    (a forward with the removed slices zeroed, one with the pruned tensors, each swapped in
    while the module holding it runs); its check next to two plain forwards of the same run."""
    runs = run_rounds("verify", "llama-2-7b")
    record("llama-2-7b shape, bf16", "prune 50% end to end", runs)
    assert isinstance(runs, list), runs
    forward = FORWARD.get("llama-2-7b")
    if forward is not None:
        checks = sorted(r["timings"]["verify"] for r in runs)
        check = checks[len(checks) // 2]
        EXTRA.append(
            f"llama-2-7b shape, bf16, verify=True: the check {check:.2f} s (median; runs "
            + ", ".join(f"{c:.2f}" for c in checks)
            + f") = {check / (2 * forward['seconds']):.2f}x two plain forwards "
            f"({2 * forward['seconds']:.2f} s)"
        )


def test_llama3_8b_bf16():
    runs = run_rounds("native", "llama-3-8b")
    record("llama-3-8b shape, bf16", "prune 50% end to end", runs)
    assert isinstance(runs, list), runs
    assert all(r["params_after"] < r["params_before"] for r in runs)


@pytest.mark.parametrize("backend", ["native", "python"])
def test_llama3_70b_meta(backend):
    out = run_script(backend, "llama-3-70b-meta", big=False)
    if isinstance(out, dict):
        EXTRA.append(
            f"llama-3-70b shape on meta, {backend}: trace + resolve + plan "
            f"{out['seconds']:.2f} s, peak RSS {out['peak_rss'] / GIB:.2f} GiB "
            f"(the bf16 weights would be {out['model_bytes'] / GIB:.0f} GiB); "
            + ", ".join(f"{k} {v:.2f} s" for k, v in out["timings"].items())
        )
        RESULTS[("llama-3-70b shape, meta", "trace + resolve + plan", backend)] = out["seconds"]
    assert isinstance(out, dict), out


@pytest.mark.parametrize("backend", ["native", "python"])
def test_qwen3_30b_a3b_meta(backend):
    """Qwen3-30B-A3B (48 layers x 128 experts) on meta: heads, expert neurons and half of the
    experts planned and validated."""
    out = run_script(backend, "qwen3-30b-a3b-meta", big=False)
    if isinstance(out, dict):
        units = ", ".join(f"{k} {a:,} -> {b:,}" for k, (a, b) in out["units"].items())
        EXTRA.append(
            f"qwen3-30b-a3b shape on meta, {backend}: trace + resolve + plan "
            f"{out['seconds']:.2f} s, peak RSS {out['peak_rss'] / GIB:.2f} GiB (the bf16 "
            f"weights would be {out['model_bytes'] / GIB:.0f} GiB); units {units}; "
            + ", ".join(f"{k} {v:.2f} s" for k, v in out["timings"].items())
        )
        RESULTS[("qwen3-30b-a3b shape, meta", "trace + resolve + plan", backend)] = out["seconds"]
    assert isinstance(out, dict), out


DEPTHS = [32, 64, 128, 256]


# "native, no cache": the inputs also say use_cache=False. With transformers' KV cache, each
# decoder layer reads its layer_idx to pick its part of the cache, so each is traced; without
# one, the layers are replayed from the first one's trace (graph/repeats.py).
NO_CACHE = "native, no cache"


@pytest.mark.parametrize("tool", ["native", NO_CACHE, "python", "torch-pruning"])
@pytest.mark.parametrize("layers", DEPTHS)
def test_llama_depth_scaling(benchmark, layers, tool):
    if tool == "torch-pruning" and torch_pruning is None:
        pytest.skip("torch-pruning not installed")
    model = small_llama(layers)
    key = (f"llama hidden 256, {layers} layers", "prune 50% end to end", tool)
    if tool == "torch-pruning":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measure(
                benchmark,
                key,
                lambda m: run_torch_pruning(m, IDS),
                setup=lambda: copy.deepcopy(model),
                rounds=1 if layers >= 128 else 2,
            )
    else:
        inputs = dict(IDS, use_cache=False) if tool == NO_CACHE else IDS
        backend = "native" if tool == NO_CACHE else tool

        def run(m):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return dx.prune(
                    m, inputs, ratio=0.5, ratios={"hidden": 0.0}, backend=backend, progress=False
                )

        # Five rounds: the first prunes of a process run up to 1.5x slower than later ones
        # (fresh memory for the traced graphs), so three rounds after one warm-up still
        # swing the median.
        result = measure(benchmark, key, run, setup=lambda: copy.deepcopy(model), rounds=5)
        forward = _forward_seconds(model, inputs)
        EXTRA.append(
            f"llama hidden 256, {layers} layers, {tool}: {RESULTS[key] / forward:.1f} plain "
            f"forwards' worth (a forward {forward * 1e3:.1f} ms, median of 5); stages of the "
            "last round " + ", ".join(f"{k} {v:.3f} s" for k, v in result.timings.items())
        )
    SCALING[(tool, layers)] = RESULTS[key]


def _forward_seconds(model, inputs=IDS, rounds: int = 5) -> float:
    """Median time of a plain forward of ``model`` on the scaling inputs, after a warm-up."""
    times = []
    with torch.no_grad():
        model(**inputs)
        for _ in range(rounds):
            t = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def test_llama_depth_scaling_plot():
    """bench/scaling.png from the medians above; each doubling's cost in the summary."""
    if not SCALING:
        pytest.skip("no scaling measurements in this run")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for tool, style in (
        ("native", "o-"),
        (NO_CACHE, "o-."),
        ("python", "s--"),
        ("torch-pruning", "^:"),
    ):
        depths = [d for d in DEPTHS if (tool, d) in SCALING]
        if not depths:
            continue
        times = [SCALING[(tool, d)] for d in depths]
        label = tool if tool != "torch-pruning" else "Torch-Pruning 1.6.1 (MLP only)"
        ax.plot(depths, times, style, label=label)
        steps = [f"{b / a:.2f}x" for a, b in zip(times, times[1:])]
        EXTRA.append(
            f"depth scaling, {tool}: "
            + ", ".join(f"{d} layers {t:.2f} s" for d, t in zip(depths, times))
            + f"; each doubling {', '.join(steps)}"
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(DEPTHS, [str(d) for d in DEPTHS])
    ax.set_xlabel("decoder layers (Llama-style, hidden 256, GQA 8/2)")
    ax.set_ylabel("prune 50%, end to end (s)")
    ax.set_title("Time vs depth (medians, one run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "scaling.png", dpi=120)


@pytest.fixture(scope="module")
def densenet201():
    sys.path.insert(0, str(HERE.parent / "tests"))
    from nets import DenseNet

    torch.manual_seed(0)
    return DenseNet(blocks=(6, 12, 48, 32)).eval(), torch.randn(1, 3, 224, 224)


@pytest.mark.parametrize("tool", ["native", "python", "torch-pruning"])
def test_densenet201(benchmark, densenet201, tool):
    model, x = densenet201
    key = ("densenet-201 style", "prune 50% end to end", tool)
    if tool == "torch-pruning":
        if torch_pruning is None:
            pytest.skip("torch-pruning not installed")
        tp = torch_pruning

        def run(m):
            return tp.pruner.MetaPruner(
                m,
                x,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=0.5,
                ignored_layers=[m.classifier],
            ).step()

        measure(benchmark, key, run, setup=lambda: copy.deepcopy(model), rounds=1)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measure(
            benchmark,
            key,
            lambda m: dx.prune(m, x, ratio=0.5, backend=tool, progress=False),
            setup=lambda: copy.deepcopy(model),
            rounds=3,
        )
