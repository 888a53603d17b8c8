"""Prune every torchvision model, built with random weights, and check the scatter-back oracle.

    python scripts/sweep_torchvision.py [--workers 1] [--timeout 300] [--models a,b] [--out F]
                                        [--stand-ins]

torchvision is not a dependency of depgraph_ext: install it beside torch to run this sweep (it
stops with a one-line message where torchvision cannot be imported). depgraph_ext must be
importable (installed, or ``PYTHONPATH=.`` from the repository root).

Every name of ``torchvision.models.list_models()`` (those over 150M parameters are skipped, with
a note), each in its own process (``--child NAME``, one thread; one that crashes or overruns
``--timeout`` is recorded as such), built with ``weights=None`` in float64 (float32 where the
model does not run in float64: RAFT) on small inputs:
  classification  1x3x64x64 (inception 1x3x96x96, vit_* and maxvit_t 1x3x224x224); quantized_*
                  are the builders' float models (quantize=False)
  segmentation    1x3x96x96, weights_backbone=None
  detection       one 3x128x128 image, weights_backbone=None, min_size=max_size=128 (SSD resizes
                  to its own size) and a score threshold of 0, so the outputs the oracle
                  compares are real detections, not empty
  video           1x3x4x64x64 (mvit_* and s3d 1x3x16x224x224)
  optical flow    two 1x3x128x128 frames
Three prunes, each of a fresh copy of the model, ``ratio=0.5, progress=False``:
  exact    exact_only=True: assert_kept_bit_identical, then assert_scatter_back_equal to 1e-7
           (1e-4 in float32)
  default  no options: does the pruned model run, are the output shapes the original's, how
           long it took (PruneResult.timings["total"]) and its stages
  verify   verify=True: the outcome (a VerificationError is an outcome, recorded)
After any error the copy must be as it was: its tensors the same objects, bit-equal to the
original's, its repr (module attributes) the same. Each prune's warnings are recorded (category,
count, the first messages shortened). Writes one JSON record per model (``--out``, default
sweep_torchvision.json) as each finishes, prints one line per model, then the counts, the
failures, and the ten slowest default prunes beside a prune of torchvision's ResNet-50 (float32,
1x3x224x224, after one to warm up) timed in a child of the same run. ``--stand-ins``: every
model traced as one over the real trace's size is (on meta tensors standing in for CPU ones):
its records should be the default sweep's, model by model.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

MAX_PARAMS = 150_000_000
TOLERANCE = {"float64": 1e-7, "float32": 1e-4}
STAGES = (("exact", {"exact_only": True}), ("default", {}), ("verify", {"verify": True}))
HOLDS_FLOAT32 = "holds to float32 precision"  # (see stage)
REFERENCE = "ResNet-50 (reference)"  # not a model name: the prune every other is compared with
# torchvision.models' submodules; a model in none of them is a classifier
TASKS = ("segmentation", "detection", "video", "optical_flow", "quantization")


def _short(e: BaseException, n: int = 300) -> str:
    return f"{type(e).__name__}: " + " ".join(str(e).split())[:n]


# ---------------------------------------------------------------------------------------------
# The child: one model in this process, its record rewritten at --record after every step


def task_of(name: str) -> str:
    import torchvision.models as tvm

    for task in TASKS:
        if name in tvm.list_models(module=getattr(tvm, task)):
            return task
    return "classification"


def recipe(name: str, task: str):
    """(builder kwargs, dtype -> example inputs, the inputs in words): the small inputs the model
    runs on (the sizes an earlier sweep found to work)."""
    import torch

    def images(size: int):
        return lambda dtype: torch.randn(1, 3, size, size, dtype=dtype), f"1x3x{size}x{size}"

    if task in ("classification", "quantization"):
        wide = name.startswith("vit_") or name == "maxvit_t"
        return {}, *images(224 if wide else 96 if "inception" in name else 64)
    if task == "segmentation":
        return {"weights_backbone": None}, *images(96)
    if task == "detection":
        kwargs: dict = {"weights_backbone": None}
        if name.startswith("ssd"):
            kwargs["score_thresh"] = 0.0  # SSD resizes to its fixed size: no min_size/max_size
        else:
            one_stage = name.startswith(("retinanet", "fcos"))  # the R-CNNs: box_score_thresh
            kwargs.update(min_size=128, max_size=128)
            kwargs["score_thresh" if one_stage else "box_score_thresh"] = 0.0
        return kwargs, lambda dtype: ([torch.rand(3, 128, 128, dtype=dtype)],), "[3x128x128]"
    if task == "video":
        frames, size = (16, 224) if name.startswith("mvit") or name == "s3d" else (4, 64)
        words = f"1x3x{frames}x{size}x{size}"
        return {}, lambda dtype: torch.randn(1, 3, frames, size, size, dtype=dtype), words
    if task == "optical_flow":

        def two_frames(dtype):
            return tuple(torch.rand(1, 3, 128, 128, dtype=dtype) for _ in range(2))

        return {}, two_frames, "2 x 1x3x128x128"
    raise ValueError(f"unknown task {task}")


def parameter_count(name: str, kwargs: dict) -> int:
    """Counted on the meta device (no memory, no init time) where the builder allows."""
    import torch
    import torchvision.models as tvm

    try:
        with torch.device("meta"):
            model = tvm.get_model(name, weights=None, **kwargs)
    except Exception:  # noqa: BLE001  (a builder that needs real tensors: built for real)
        model = tvm.get_model(name, weights=None, **kwargs)
    return sum(p.numel() for p in model.parameters())


def build(name: str, kwargs: dict, make_inputs, dtype):
    """The model in eval mode (seed 0) and its inputs (seed 1), both in ``dtype``."""
    import torch
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.get_model(name, weights=None, **kwargs).eval().to(dtype)
    torch.manual_seed(1)
    return model, make_inputs(dtype)


def tensors_by_name(model) -> dict:
    """Parameters and buffers under every name they have (tied ones under each)."""
    named = list(model.named_parameters(remove_duplicate=False))
    return dict(named + list(model.named_buffers(remove_duplicate=False)))


def _bits(t):
    """A float tensor's bytes (NaN equals NaN, -0.0 differs from 0.0); others as they are."""
    import torch

    t = t.detach()
    return t.reshape(-1).view(torch.uint8) if t.is_floating_point() else t


def changes(model, objects_before: dict, pristine) -> list[str]:
    """How ``model`` (a copy of ``pristine`` whose prune raised) differs from what it was: its
    tensors must be the objects they were, bit-equal to pristine's, its repr pristine's.
    Empty: unchanged."""
    import torch

    found: list[str] = []
    now, original = tensors_by_name(model), tensors_by_name(pristine)
    if set(now) != set(objects_before):
        found.append(f"tensor names differ: {sorted(set(now) ^ set(objects_before))[:5]}")
    for name in sorted(set(now) & set(objects_before)):
        tensor, expected = now[name], original[name]
        if tensor is not objects_before[name]:
            found.append(f"{name}: another tensor object")
        if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
            found.append(f"{name}: {tuple(expected.shape)} -> {tuple(tensor.shape)}")
        elif not torch.equal(_bits(tensor), _bits(expected)):
            found.append(f"{name}: values changed")
        if len(found) >= 10:
            break
    if repr(model) != repr(pristine):
        found.append("repr (module attributes) differs")
    return found


def warnings_of(caught) -> dict:
    """Category -> {"n": how many, "messages": the first three distinct, shortened}."""
    summary: dict = {}
    for w in caught:
        entry = summary.setdefault(w.category.__name__, {"n": 0, "messages": []})
        entry["n"] += 1
        message = " ".join(str(w.message).split())[:160]
        if message not in entry["messages"] and len(entry["messages"]) < 3:
            entry["messages"].append(message)
    return summary


def outcome_of(e: BaseException, options: dict) -> str:
    from depgraph_ext import errors

    if isinstance(e, errors.InternalError):
        return "internal error"  # a bug of depgraph_ext, by its own contract
    if isinstance(e, errors.VerificationError):
        return "verification failed"
    if isinstance(e, errors.NoPrunableGroupsError) and options.get("exact_only"):
        return "nothing exact"  # every group that could shrink changes the function
    if isinstance(e, errors.PruningError):
        return "refused"
    return "error"  # not a PruningError: escapes the library's contract


def prune_copy(pristine, inputs, options: dict):
    """dx.prune of a deepcopy of ``pristine``: (the copy, the PruneResult or None, a record)."""
    import copy
    import warnings

    import depgraph_ext as dx

    model = copy.deepcopy(pristine)
    objects_before = tensors_by_name(model)
    record: dict = {}
    result = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            result = dx.prune(model, inputs, ratio=0.5, progress=False, **options)
        except Exception as e:  # noqa: BLE001
            record.update(outcome=outcome_of(e, options), error=_short(e, 500))
            difference = getattr(e, "difference", None)  # VerificationError's; NaN: not run
            if difference is not None and not math.isnan(difference):
                record["difference"] = difference
        record["wall"] = round(time.perf_counter() - start, 4)
    record["warnings"] = warnings_of(caught)
    if result is None:
        record["changed_after_error"] = changes(model, objects_before, pristine)
        return model, None, record
    record.update(
        outcome="ok",
        params=[result.params_before, result.params_after],
        groups=result.num_groups,
        function_changing=len(result.function_changing),
        seconds=round(result.timings["total"], 4),
        stages={k: round(v, 4) for k, v in result.timings.items()},
    )
    return model, result, record


def runs_with_shapes(model, inputs, shapes: list) -> dict:
    from depgraph_ext.testing import outputs_of

    try:
        after = [list(o.shape) for o in outputs_of(model, inputs, seed=0)]
    except Exception as e:  # noqa: BLE001
        return {"runs": False, "run_error": _short(e)}
    record = {"runs": True, "shapes_kept": after == shapes}
    if after != shapes:
        record["shapes_after"] = after[:8]
    return record


def stage(name: str, options: dict, pristine, inputs, shapes: list, tolerance: float) -> dict:
    from depgraph_ext.testing import assert_kept_bit_identical, assert_scatter_back_equal

    model, result, record = prune_copy(pristine, inputs, options)
    if result is None:
        return record
    record.update(runs_with_shapes(model, inputs, shapes))
    if name == "exact":
        try:
            assert_kept_bit_identical(pristine, model, result)
            record["kept_bit_identical"] = True
        except AssertionError as e:
            record["kept_bit_identical"] = False
            record["kept_error"] = _short(e)
        try:
            assert_scatter_back_equal(
                pristine, model, result, inputs, rtol=tolerance, atol=tolerance
            )
            record["oracle"] = "holds"
        except AssertionError as e:
            record["oracle"] = _short(e, 400)
            if tolerance < TOLERANCE["float32"]:
                # A float64 model whose code computes in float32 inside (a norm or attention
                # cast up to float32 and back): the sums its kernels make over another width
                # round differently, at float32's precision, not at float64's.
                try:
                    assert_scatter_back_equal(pristine, model, result, inputs,
                                              rtol=TOLERANCE["float32"],
                                              atol=TOLERANCE["float32"])  # fmt: skip
                    record["oracle_float64"] = record["oracle"]
                    record["oracle"] = HOLDS_FLOAT32
                except AssertionError:
                    pass
    return record


def reference_prune() -> dict:
    """torchvision's ResNet-50 in float32 on 1x3x224x224, pruned as the default stage prunes,
    after one prune to warm up: what the slowest models are compared with."""
    import torch
    import torchvision.models as tvm

    import depgraph_ext as dx

    inputs = torch.randn(1, 3, 224, 224)
    for _ in range(2):
        torch.manual_seed(0)
        result = dx.prune(tvm.resnet50().eval(), inputs, ratio=0.5, progress=False)
    return {"reference": True, "seconds": round(result.timings["total"], 4)}


def child(name: str, record_path: str) -> None:
    import sweep_layers  # (the --stand-ins switch the sweeps share)
    import torch

    from depgraph_ext.testing import outputs_of

    torch.set_num_threads(1)
    sweep_layers.stand_ins_if_asked()
    record: dict = {"model": name}

    def save() -> None:
        _save(record, record_path)

    if name == REFERENCE:
        record.update(reference_prune())
        return save()
    task = task_of(name)
    kwargs, make_inputs, words = recipe(name, task)
    record.update(task=task, inputs=words, kwargs=dict(kwargs))
    record["params"] = parameter_count(name, kwargs)
    if record["params"] > MAX_PARAMS:
        record["skipped"] = f"{record['params'] / 1e6:.0f}M parameters > {MAX_PARAMS / 1e6:.0f}M"
        return save()
    for dtype in (torch.float64, torch.float32):
        record["dtype"] = str(dtype).removeprefix("torch.")
        try:
            pristine, inputs = build(name, kwargs, make_inputs, dtype)
            outputs = outputs_of(pristine, inputs, seed=0)
            break
        except Exception as e:  # noqa: BLE001
            record[f"{record['dtype']}_fails"] = _short(e)
    else:
        record["setup_failed"] = record.pop("float32_fails")
        return save()
    run_stages(record, pristine, inputs, outputs, save)


def run_stages(record: dict, pristine, inputs, outputs, save) -> None:
    """The three prunes of STAGES into ``record`` (in ``record["dtype"]``), saved before each."""
    record["shapes"] = shapes = [list(o.shape) for o in outputs]
    record["finite"] = all(bool(o.isfinite().all()) for o in outputs if o.is_floating_point())
    tolerance = TOLERANCE[record["dtype"]]
    for stage_name, options in STAGES:
        record["in_stage"] = stage_name  # what a crash or a timeout interrupted
        save()
        try:
            record[stage_name] = stage(stage_name, options, pristine, inputs, shapes, tolerance)
        except Exception as e:  # noqa: BLE001  (the sweep's own failure, not the library's)
            record[stage_name] = {"outcome": "sweep error", "error": _short(e)}
            record[stage_name]["traceback"] = traceback.format_exc()[-1500:]
    del record["in_stage"]
    save()


# ---------------------------------------------------------------------------------------------
# The parent: one child process per model, at most --workers at a time


def run(
    names: list[str],
    workers: int,
    timeout: float,
    done: dict,
    out: str,
    script: str = __file__,
    child_options: tuple[str, ...] = (),
) -> dict:
    """Each name in a child process of ``script`` (``--child NAME``, and ``child_options``),
    at most ``workers`` at once; ``done`` (records by name) with every new record, saved to
    ``out`` as each ends."""
    pending = [n for n in names if n not in done]
    total = len(done) + len(pending)
    running: dict = {}  # name -> (process, started, record path, log file)
    script = os.path.abspath(script)
    with tempfile.TemporaryDirectory(prefix="sweep_") as directory:
        while pending or running:
            while pending and len(running) < workers:
                name = pending.pop(0)
                path = os.path.join(directory, f"{total - len(pending):04d}.json")
                log = open(path + ".log", "w+")  # noqa: SIM115  (closed in finish)
                command = [sys.executable, script, "--child", name, "--record", path]
                command += child_options
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                running[name] = (process, time.monotonic(), path, log)
            time.sleep(0.2)
            for name, (process, started, path, log) in list(running.items()):
                overran = False
                if process.poll() is None:
                    if time.monotonic() - started <= timeout:
                        continue
                    overran = True  # killed with its group: a model may start processes
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                del running[name]
                done[name] = finish(name, process.returncode, overran, path, log, timeout)
                print(f"{len(done):4d}/{total} {name}: {verdict(done[name])}", flush=True)
                _save(done, out)
    return done


def finish(name: str, returncode: int, overran: bool, path: str, log, timeout: float) -> dict:
    """The child's record, with how it ended where it did not end well."""
    record = {"model": name}
    if os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
    log.seek(0)
    tail = log.read()[-1500:]
    log.close()
    where = f" in stage {record['in_stage']}" if "in_stage" in record else ""
    if overran:
        record["timeout"] = f"over {timeout:.0f} s{where}"
    elif returncode != 0:
        signalled = returncode < 0
        how = f"signal {signal.Signals(-returncode).name}" if signalled else f"exit {returncode}"
        record["crash"] = f"{how}{where}: " + " ".join(tail.split())[-400:]
    return record


def _save(data: dict, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _megas(params: list) -> str:
    return f"{params[0] / 1e6:.1f}M->{params[1] / 1e6:.1f}M"


def problems(stage_name: str, r: dict) -> list[str]:
    """What went wrong in one stage's record: an error (but "nothing exact" and verify's
    VerificationError, outcomes), a model changed after its error, a pruned model that does
    not run or changed its output shapes, the oracle or the kept tensors failing."""
    found = []
    if r["outcome"] not in ("ok", "nothing exact", "verification failed"):
        found.append(f"{r['outcome']}: {r['error'][:200]}")
    if r.get("changed_after_error"):
        found.append(f"MODEL CHANGED after the error: {r['changed_after_error'][:3]}")
    if r["outcome"] != "ok":
        return found
    if not r.get("runs"):
        found.append(f"DOES NOT RUN: {r['run_error'][:160]}")
    elif not r.get("shapes_kept"):
        found.append(f"OUTPUT SHAPES CHANGED: {r['shapes_after'][:3]}")
    if stage_name == "exact" and r["oracle"] not in ("holds", HOLDS_FLOAT32):
        found.append(f"ORACLE FAILS: {r['oracle'][:300]}")
    if stage_name == "exact" and not r["kept_bit_identical"]:
        found.append(f"KEPT NOT BIT-IDENTICAL: {r['kept_error'][:160]}")
    return found


def stage_words(stage_name: str, r: dict) -> str:
    if r["outcome"] == "ok":
        words = _megas(r["params"]) if stage_name == "exact" else f"{r['seconds']:.2f} s"
        words += f", oracle {r['oracle']}" if r.get("oracle") in ("holds", HOLDS_FLOAT32) else ""
    else:
        words = f"{r['outcome']} ({r['error'][:90]})"
    wrong = problems(stage_name, r)
    return words + (f" ({'; '.join(w[:120] for w in wrong)})" if wrong else "")


def verdict(record: dict) -> str:
    if record.get("reference"):
        return f"pruned in {record['seconds']:.2f} s"
    if record["model"] == REFERENCE:  # no time: a crash or a timeout
        return " ".join(f"{e.upper()} {record[e]}" for e in ("timeout", "crash") if e in record)
    if "skipped" in record:
        return f"skipped ({record['skipped']})"
    if "setup_failed" in record:
        return f"does not build or run: {record['setup_failed'][:120]}"
    parts = [f"[{record.get('dtype')} {record.get('inputs')}]"]
    parts += [f"{s}: {stage_words(s, record[s])}" for s, _ in STAGES if s in record]
    for ending in ("timeout", "crash"):
        if ending in record:
            parts.append(f"{ending.upper()} {record[ending][:160]}")
    return " | ".join(parts)


def summary(done: dict) -> str:
    """Counts per stage, the oracle, the failures with their messages, the warnings."""
    models = {n: r for n, r in done.items() if n != REFERENCE}
    lines = [f"{len(models)} models"]
    skipped = sorted(n for n, r in models.items() if "skipped" in r)
    lines.append(f"skipped (over {MAX_PARAMS / 1e6:.0f}M parameters): {len(skipped)} {skipped}")
    unbuilt = sorted(n for n, r in models.items() if "setup_failed" in r)
    lines.append(f"do not build or run: {len(unbuilt)} {unbuilt}")
    ended = sorted(
        f"{n} ({'timeout' if 'timeout' in r else 'crash'} in {r.get('in_stage', 'setup')})"
        for n, r in models.items()
        if "timeout" in r or "crash" in r
    )
    lines.append(f"crashed or timed out: {len(ended)} {ended}")
    in_float32 = sorted(n for n, r in models.items() if r.get("dtype") == "float32")
    lines.append(f"in float32 (do not run in float64): {in_float32}")
    columns = ("ok", "nothing exact", "refused", "verification failed", "internal error", "error")
    columns += ("sweep error", "crash/timeout")
    lines.append(f"{'stage':<8}" + "".join(f"{c:>{len(c) + 2}}" for c in columns))
    for name, _ in STAGES:
        counts = collections.Counter(r[name]["outcome"] for r in models.values() if name in r)
        counts["crash/timeout"] = sum(
            r.get("in_stage") == name and ("crash" in r or "timeout" in r) for r in models.values()
        )
        lines.append(f"{name:<8}" + "".join(f"{counts[c]:>{len(c) + 2}}" for c in columns))
    exact = [r["exact"] for r in models.values() if r.get("exact", {}).get("outcome") == "ok"]
    holds = sum(r["oracle"] == "holds" for r in exact)
    identical = sum(r["kept_bit_identical"] for r in exact)
    lines.append(f"exact: oracle holds for {holds} of {len(exact)}, kept bit-identical {identical}")
    float32 = sorted(
        n for n, r in models.items() if r.get("exact", {}).get("oracle") == HOLDS_FLOAT32
    )
    if float32:
        lines.append(f"exact: oracle {HOLDS_FLOAT32} (float32 inside): {len(float32)} {float32}")
    default = [r["default"] for r in models.values() if r.get("default", {}).get("outcome") == "ok"]
    kept = sum(bool(r.get("runs") and r.get("shapes_kept")) for r in default)
    lines.append(f"default: runs with the original's output shapes {kept} of {len(default)}")
    changed = sorted(
        f"{n} ({s})"
        for n, r in models.items()
        for s, _ in STAGES
        if r.get(s, {}).get("changed_after_error")
    )
    lines.append(f"model changed after an error: {changed or 'none'}")
    failed = sorted(
        f"{n} ({r['verify'].get('difference', 'did not run')})"
        for n, r in models.items()
        if r.get("verify", {}).get("outcome") == "verification failed"
    )
    lines.append(f"verify: VerificationError (largest relative difference) {len(failed)} {failed}")
    by_category: dict = collections.defaultdict(set)
    for n, r in models.items():
        for s, _ in STAGES:
            for category in r.get(s, {}).get("warnings", {}):
                by_category[category].add(n)
    counted = ", ".join(f"{c} {len(ns)}" for c, ns in sorted(by_category.items()))
    lines.append(f"warnings (models): {counted or 'none'}")
    lines.append("failures:")
    for n, r in sorted(models.items()):
        for s, _ in STAGES:
            lines += [f"  {n} {s}: {p}" for p in problems(s, r[s])] if s in r else []
        lines += [f"  {n}: {e} {r[e][:300]}" for e in ("timeout", "crash") if e in r]
    if lines[-1] == "failures:":
        lines[-1] = "failures: none"
    return "\n".join(lines)


def slowest(done: dict, n: int = 10) -> str:
    """The ``n`` slowest default prunes, with their stages and their ratio to the reference."""
    timed = [
        (r["default"]["seconds"], name, r["default"]["stages"])
        for name, r in done.items()
        if r.get("default", {}).get("outcome") == "ok"
    ]
    reference = done.get(REFERENCE, {}).get("seconds")
    lines = [
        f"slowest {min(n, len(timed))} of {len(timed)} default prunes"
        + (f" (ResNet-50 in the same run: {reference:.2f} s)" if reference else "")
    ]
    for seconds, name, stages in sorted(timed, reverse=True)[:n]:
        ratio = f" = {seconds / reference:5.1f}x ResNet-50" if reference else ""
        parts = ", ".join(
            f"{k} {stages[k]:.2f}" for k in ("trace", "score", "plan", "apply") if k in stages
        )
        lines.append(f"  {name:<40} {seconds:6.2f} s{ratio} ({parts})")
    return "\n".join(lines)


def main() -> None:
    import sweep_layers  # (the --stand-ins switch the sweeps share)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="models pruned at once")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--models", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--out", default="sweep_torchvision.json", help="JSON records")
    parser.add_argument("--resume", action="store_true", help="keep the records in --out")
    parser.add_argument("--stand-ins", action="store_true", help=sweep_layers.STAND_INS_HELP)
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)  # one model, here
    parser.add_argument("--record", help=argparse.SUPPRESS)  # where --child writes its record
    args = parser.parse_args()
    if args.stand_ins:
        sweep_layers.ask_for_stand_ins()
    try:
        import torchvision.models as tvm
    except ImportError as e:
        sys.exit(f"this sweep needs torchvision, not a dependency of depgraph_ext ({e})")
    if args.child:
        return child(args.child, args.record)
    import depgraph_ext  # noqa: F401  (fail here, once, rather than in every child)

    names = sorted(tvm.list_models())
    if args.models:
        wanted = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            sys.exit(f"not torchvision models: {', '.join(unknown)}")
        names = wanted
    done: dict = {}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            done = {n: r for n, r in json.load(f).items() if n in names or n == REFERENCE}
    started = time.perf_counter()
    done = run([REFERENCE, *names], args.workers, args.timeout, done, args.out)
    print(f"\n{len(done) - (REFERENCE in done)} models in {time.perf_counter() - started:.0f} s")
    print(f"records: {args.out}")
    print(summary(done))
    print(slowest(done))


if __name__ == "__main__":
    main()
