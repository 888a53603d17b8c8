"""Where the score and apply stages of a Llama-2-7B-shaped prune go (bf16, heads and MLP
neurons at 50%, ``in_place=True``, the native kernels): the kernel calls inside them, as GB/s
of what they must move, beside a 1 GiB copy in the same process.

    .venv/bin/python bench/llm_stages.py [LAYERS]     # default 32: the whole 7B shape

score: ``ops.grouped_norm`` reads every pruned tensor once (where a background thread summed some
of them during the trace, ``ops.index_sums`` reads the rest and ``ops.units_from_sums`` maps
all to units); apply: ``ops.compact_`` reads and
writes the kept half, then ``release_tails`` gives the removed half's pages back to the system
(kernel work: no bytes moved). One run; the machine's bandwidth varies by the minute.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import torch
from profile_stages import timed

import llm_scale
from depgraph_ext.pruning import apply as applying
from depgraph_ext.pruning import importance


def main() -> None:
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    llm_scale.SHAPES["bench"] = dict(llm_scale.SHAPES["llama-2-7b"], num_hidden_layers=layers)
    model = llm_scale.build("bench")
    inputs = {
        "input_ids": torch.randint(0, 32000, (1, 8), generator=torch.Generator().manual_seed(0))
    }
    calls: dict[str, float] = defaultdict(float)
    for module, name in (
        (importance.ops, "grouped_norm"),
        (importance.ops, "index_sums"),
        (importance.ops, "units_from_sums"),
        (applying.ops, "compact_"),
    ):
        timed(module, name, name, calls)
    timed(applying, "release_tails", "release_tails", calls)
    result = llm_scale.run_ours(model, inputs, "native", False, {"hidden": 0.0})
    copy = llm_scale.run_forward(model, inputs, runs=1)["copy_bytes_per_second"] / 1e9
    stages = result["timings"]
    score, moved = result["score_bytes"] / 1e9, result["apply_bytes"] / 1e9
    print(
        f"Llama-2-7B shape, {layers} layers: prune {result['seconds']:.2f} s; copy {copy:.1f} GB/s"
    )
    ahead = result["score_ahead_bytes"] / 1e9
    if ahead:  # the background thread summed these during the trace
        print(
            f"  score ahead (beside the trace) {stages.get('score_ahead', 0.0):.3f} s: "
            f"{ahead:.2f} GB of the {score:.2f} GB"
        )
    left = score - ahead
    print(f"  score {stages['score']:.3f} s ({left / stages['score']:.1f} GB/s of {left:.2f} GB)")
    for name in ("grouped_norm", "index_sums"):
        if calls[name]:
            print(f"    {name} {calls[name]:.3f} s ({left / calls[name]:.1f} GB/s)")
    if calls["units_from_sums"]:
        print(f"    units_from_sums {calls['units_from_sums']:.3f} s")
    print(f"  apply {stages['apply']:.3f} s ({moved / stages['apply']:.1f} GB/s of {moved:.2f} GB)")
    print(f"    compact_ {calls['compact_']:.3f} s ({moved / calls['compact_']:.1f} GB/s)")
    print(f"    release_tails {calls['release_tails']:.3f} s (pages given back)")


if __name__ == "__main__":
    main()
