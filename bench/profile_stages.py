"""Where a small-model prune spends its time: the figures bench/README.md quotes for the
Llama-style model of the scaling row (hidden 256, GQA 8/2).

    .venv/bin/python bench/profile_stages.py [LAYERS] [ROUNDS] [hidden] [nocache]
    # 128 layers, 8 rounds

The scaling row's prune keeps the hidden size (``ratios={"hidden": 0}``); the argument
``hidden`` prunes it too, as a plain ``prune(model, inputs, ratio=0.5)`` does (the hidden
group is function-changing: RMSNorm's statistics, which the prune describes in its warning).
``nocache`` adds ``use_cache=False`` to the inputs: without a KV cache, the layers read no
``layer_idx`` and are replayed from the first one's trace (graph/repeats.py).

Prints medians over ROUNDS prunes of fresh copies in one process (after one warm-up): the
stages of ``PruneResult.timings`` and the garbage collector's time, the parts of "plan"
(validation, its trace, the config check), scoring's slice listing and planned counts on the
last prune's graph, and the model's own forward (no_grad, one thread) plain, under a
pass-through dispatch mode (the floor of any ATen-level trace) and under a pass-through
function mode over it (the floor of the trace as designed: sizes are watched at the function
level, ops recorded at the dispatch level).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import statistics
import sys
import time
import warnings
from collections import defaultdict

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import depgraph_ext as dx
import depgraph_ext.counting as counting
from depgraph_ext.graph.dependency import DependencyGraph
from depgraph_ext.pruning import importance, pruner, validate
from llm_scale import SMALL_IDS as IDS
from llm_scale import small_llama


def timed(module, name: str, label: str, into: dict[str, float]) -> None:
    """Add the time of every call of ``module.name`` to ``into[label]`` (nothing where an
    older checkout has no such function, so the file measures it too)."""
    fn = getattr(module, name, None)
    if fn is None:
        return

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[label] += time.perf_counter() - t

    setattr(module, name, wrapper)


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _FunctionPassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _both_pass_through():
    """The two modes a graph trace runs under (size_watch's function mode over the recorder's
    dispatch mode), neither doing anything: the floor of the trace as it is designed."""
    with _FunctionPassThrough(), _PassThrough():
        yield


def median_ms(samples) -> str:
    return f"{statistics.median(samples) * 1e3:.1f} ms"


def main() -> None:
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    options = set(sys.argv[3:])
    ratios = {} if "hidden" in options else {"hidden": 0.0}
    inputs = dict(IDS, use_cache=False) if "nocache" in options else IDS
    model = small_llama(layers)
    parts: dict[str, float] = defaultdict(float)
    timed(validate, "validate_plan", "plan: validate_plan", parts)
    timed(DependencyGraph, "trace_pruned", "plan: validation trace", parts)
    timed(validate, "loadable_config", "plan: loadable_config (config check)", parts)
    timed(validate, "attributes_of_rebuild", "plan: attributes_of_rebuild", parts)
    timed(validate, "propose_plan", "plan: propose_plan", parts)
    graphs = []
    original_apply_step = pruner.apply_step

    def keep_graph(dg, *args, **kwargs):
        if last_round:  # (kept alive, a graph would cost the collector more in every round)
            graphs[:] = [dg]
        return original_apply_step(dg, *args, **kwargs)

    pruner.apply_step = keep_graph
    rows: dict[str, list[float]] = defaultdict(list)
    collecting: list[float] = []

    def collector(phase, info):  # the garbage collector's time, whenever it runs
        if phase == "start":
            collecting.append(time.perf_counter())
        elif collecting:
            start = collecting.pop()
            rows["garbage collection (every collection, summed)"][-1] += time.perf_counter() - start

    for i in range(rounds + 1):
        last_round = i == rounds
        m = copy.deepcopy(model)
        parts.clear()
        rows["garbage collection (every collection, summed)"].append(0.0)
        gc.callbacks.append(collector)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = dx.prune(m, inputs, ratio=0.5, ratios=ratios, progress=False)
        wall = time.perf_counter() - t
        gc.callbacks.remove(collector)
        if i == 0:
            rows["garbage collection (every collection, summed)"].pop()
            continue  # warm-up
        for k, v in result.timings.items():
            rows[k].append(v)
        for k, v in parts.items():
            rows[k].append(v)
        rows["wall"].append(wall)

    dg = graphs[0]
    for label, fn in (
        ("scored_slices (last graph)", lambda: importance.scored_slices(dg)),
        ("PlannedCosts(dg) (last graph)", lambda: counting.PlannedCosts(dg)),
    ):
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        rows[label] = samples

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fresh = copy.deepcopy(model)
    for label, mode in (
        ("forward, plain", None),
        ("forward, pass-through mode", _PassThrough),
        ("forward, both pass-through modes", _both_pass_through),
    ):
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            with torch.no_grad():
                if mode is None:
                    fresh(**inputs)
                else:
                    with mode():
                        fresh(**inputs)
            samples.append(time.perf_counter() - t)
        rows[label] = samples
    torch.set_num_threads(threads)

    print(
        f"llama hidden 256, {layers} layers{', use_cache=False' if 'nocache' in options else ''}"
        f": medians of {rounds} prunes (after a warm-up)"
    )
    for k, v in rows.items():
        print(f"  {k:32s} {median_ms(v)}")


if __name__ == "__main__":
    main()
