"""Prune every model type transformers has, built small from its config with random weights.

    python scripts/sweep_transformers.py [--workers 2] [--timeout 150] [--only a,b] [--out F]
                                         [--head seq-cls|token-cls|qa] [--attn eager]
                                         [--no-cache] [--stand-ins]

Per model type, in a worker process (one that overruns ``--timeout`` is replaced):
  build    tests/zoo_transformers.build(type): a tiny model and inputs that run it, or why not
  prune    dx.prune(model, inputs, ratio=0.5) in float32: does it prune, does the pruned model
           run, are the output shapes the original's, how many function-changing groups, how
           long it took (seconds and the stages of PruneResult.timings);
           then dx.save_pretrained and reloading: dx.from_pretrained, and plain transformers
           where the config says everything (outputs equal to the saved model's, bit for bit)
  oracle   dx.prune(model, inputs, ratio=0.5, exact_only=True, verify=True) in float64
           (float32 where the model cannot run in float64, as expert dispatch): the plan checked
           before it is applied, then the scatter-back oracle on the result, to 1e-8 (1e-5
           where the model computes parts in float32 whatever its dtype; recorded)
Writes one JSON record per type (``--out``, default sweep_transformers.json) and prints the
counts the README's table shows, and the ten slowest prunes with their stages beside the
prune of a ResNet-50 (transformers' default config, 224 x 224) in a worker of the same run.
Types whose config has sub-configs (vision-language models run on text, say) are counted
apart: the generic recipe feeds them only part of their inputs. ``--head``: every type with
that task head (a sequence classifier, a token classifier, a span head) in place of its
default class; a type that has none is recorded as unbuildable. ``--attn eager``: every type
with attention written out (matmuls, a softmax, masks added) instead of SDPA's one op, where
its class has it. ``--stand-ins``: every model traced as one over the real trace's size is
(on meta tensors standing in for CPU ones, where a value read from the data is not there to
read): its records should be the default sweep's, type by type.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _short(e: BaseException, n: int = 300) -> str:
    return f"{type(e).__name__}: " + " ".join(str(e).split())[:n]


def _in_dtype(inputs, dtype):
    import torch

    return {
        k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in inputs.items()
    }


def _prune(model, inputs, **options):
    import warnings

    import depgraph_ext as dx

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dx.prune(model, inputs, ratio=0.5, **options)
    return result, sorted({w.category.__name__ for w in caught})


def _timed(result) -> dict:
    """How long the prune took (its "total": graph to applied plan) and its stages."""
    return {
        "seconds": round(result.timings["total"], 4),
        "stages": {k: round(v, 4) for k, v in result.timings.items()},
    }


def _seeded_outputs(model, inputs):
    import torch

    from depgraph_ext.testing import outputs_of

    torch.manual_seed(0)
    return outputs_of(model, inputs)


def _round_trip(model, inputs) -> dict:
    """dx.save_pretrained, then dx.from_pretrained (and plain transformers where the config
    says everything): the reloaded model's outputs equal the saved one's, bit for bit."""
    import tempfile
    import warnings

    import torch

    import depgraph_ext as dx

    record: dict = {}
    expected = _seeded_outputs(model, inputs)
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            info = dx.save_pretrained(model, directory)
        except Exception as e:  # noqa: BLE001
            return {"saved": False, "error": _short(e)}
        record.update(saved=True, plain=info.plain)
        try:
            again = dx.from_pretrained(directory)
            same = all(torch.equal(a, b) for a, b in zip(_seeded_outputs(again, inputs), expected))
            record.update(dx_loads=same)
        except Exception as e:  # noqa: BLE001
            record.update(dx_loads=False, error=_short(e))
        if info.plain:
            try:
                again = type(model).from_pretrained(directory).eval()
                same = all(
                    torch.equal(a, b) for a, b in zip(_seeded_outputs(again, inputs), expected)
                )
                record.update(plain_loads=same)
            except Exception as e:  # noqa: BLE001
                record.update(plain_loads=False, plain_error=_short(e))
    return record


def _default_prune(build, model_type) -> dict:
    record: dict = {}
    z = build(model_type)
    try:
        shapes = [tuple(o.shape) for o in _seeded_outputs(z.model, z.inputs)]
        result, warned = _prune(z.model, z.inputs)
        record.update(
            ok=True,
            warnings=warned,
            params=[result.params_before, result.params_after],
            function_changing=len(result.function_changing),
            **_timed(result),
        )
    except Exception as e:  # noqa: BLE001
        record.update(ok=False, error=_short(e))
        return record
    try:
        after = [tuple(o.shape) for o in _seeded_outputs(z.model, z.inputs)]
        record.update(runs=True, shapes_kept=after == shapes)
    except Exception as e:  # noqa: BLE001
        record.update(runs=False, error=_short(e))
        return record
    record["round_trip"] = _round_trip(z.model, z.inputs)
    return record


def _oracle(build, model_type) -> dict:
    import copy
    import warnings

    import torch

    from depgraph_ext.testing import assert_scatter_back_equal

    z = build(model_type)
    dtype = torch.float64
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _seeded_outputs(z.model.to(dtype), _in_dtype(z.inputs, dtype))
        if not all(bool(torch.isfinite(o).all()) for o in out if o.is_floating_point()):
            raise ValueError("not finite in float64")
    except Exception:  # noqa: BLE001
        dtype = torch.float32
        z = build(model_type)
    model, inputs = z.model.to(dtype), _in_dtype(z.inputs, dtype)
    record: dict = {"dtype": str(dtype).removeprefix("torch.")}
    original = copy.deepcopy(model)
    try:
        result, warned = _prune(model, inputs, exact_only=True, verify=True)
    except Exception as e:  # noqa: BLE001
        import depgraph_ext as dx

        if isinstance(e, dx.NoPrunableGroupsError) and "exact_only" in str(e):
            # every group that could shrink changes the function: nothing exact to prune
            record.update(ok=True, params=[0, 0], nothing=_short(e))
        else:
            record.update(ok=False, error=_short(e))
        return record
    record.update(ok=True, warnings=warned, params=[result.params_before, result.params_after])
    # Models that compute parts in float32 whatever their dtype (a softmax, a norm) hold to
    # float32's precision only: checked at 1e-8, then at 1e-5, and recorded which.
    tolerances = [1e-4] if dtype == torch.float32 else [1e-8, 1e-5]
    for tolerance in tolerances:
        try:
            assert_scatter_back_equal(
                original, model, result, inputs, rtol=tolerance, atol=tolerance
            )
            record.update(holds=True, tolerance=tolerance)
            break
        except Exception as e:  # noqa: BLE001
            record.update(holds=False, error=_short(e))
    return record


REFERENCE = "ResNet-50 (reference)"  # not a model type: the prune every other is compared with


def reference_prune() -> dict:
    """A prune of transformers' ResNet-50 (default config) on 1 x 3 x 224 x 224, after one to
    warm up, as the workers prune (one thread): what the slowest model types compare with."""
    import warnings

    import torch
    import transformers

    def model():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return transformers.ResNetForImageClassification(transformers.ResNetConfig()).eval()

    x = torch.randn(1, 3, 224, 224)
    _prune(model(), x)
    result, warned = _prune(model(), x)
    return {"type": REFERENCE, "build": "reference", "prune": {"ok": True, **_timed(result)}}


def _without_cache(build):
    """``build`` whose example inputs also say ``use_cache=False`` where the model's forward
    takes it: a decoder's layers then read no ``layer_idx`` for a KV cache, and are replayed
    from the first one's trace (graph/repeats.py)."""
    import inspect

    def built(model_type):
        z = build(model_type)
        takes = "use_cache" in inspect.signature(z.model.forward).parameters
        if isinstance(z.inputs, dict) and takes:
            z.inputs = dict(z.inputs, use_cache=False)
        return z

    return built


def sweep_one(
    model_type: str, head: str | None = None, attn: str | None = None, no_cache: bool = False
) -> dict:
    import functools

    import zoo_transformers as zoo

    if model_type == REFERENCE:
        return reference_prune()
    build = functools.partial(zoo.build, head=head, attn=attn)
    if no_cache:
        build = _without_cache(build)
    record: dict = {"type": model_type}
    t0 = time.perf_counter()
    try:
        z = build(model_type)
    except zoo.Unbuildable as e:
        record.update(build="unbuildable", reason=str(e))
        return record
    record.update(build="ok", task=z.task, composite=z.composite, model=type(z.model).__name__)
    del z
    record["prune"] = _default_prune(build, model_type)
    record["oracle"] = _oracle(build, model_type)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def _worker(conn) -> None:
    import torch

    torch.set_num_threads(1)
    import sweep_layers

    sweep_layers.stand_ins_if_asked()
    while (job := conn.recv()) is not None:
        model_type, head, attn, no_cache = job
        try:
            record = sweep_one(model_type, head, attn, no_cache)
        except BaseException as e:  # noqa: BLE001
            record = {"type": model_type, "build": "crash", "reason": _short(e)}
            record["traceback"] = traceback.format_exc()[-1500:]
        conn.send(record)


def run(
    types: list[str],
    workers: int,
    timeout: float,
    done: dict,
    out: str,
    head: str | None = None,
    attn: str | None = None,
    no_cache: bool = False,
) -> dict:
    ctx = mp.get_context("spawn")
    pending = [t for t in types if t not in done]
    running: dict = {}  # connection -> (process, type, start)

    def start():
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker, args=(child,), daemon=True)
        process.start()
        return parent, process

    idle = [start() for _ in range(min(workers, len(pending)))]
    while pending or running:
        while idle and pending:
            conn, process = idle.pop()
            model_type = pending.pop(0)
            conn.send((model_type, head, attn, no_cache))
            running[conn] = (process, model_type, time.monotonic())
        for conn in mp.connection.wait(list(running), timeout=1.0):
            process, model_type, _ = running.pop(conn)
            try:
                done[model_type] = conn.recv()
            except EOFError:  # the worker died (a crash in native code of some model)
                done[model_type] = {"type": model_type, "build": "crash", "reason": "died"}
                conn, process = start()
            idle.append((conn, process))
            print(f"{len(done):4d} {model_type}: {verdict(done[model_type])}", flush=True)
            _save(done, out)
        for conn, (process, model_type, started) in list(running.items()):
            if time.monotonic() - started > timeout:
                process.kill()
                running.pop(conn)
                done[model_type] = {"type": model_type, "build": "timeout", "reason": f"{timeout}s"}
                print(f"{len(done):4d} {model_type}: timeout", flush=True)
                idle.append(start())
    for conn, _ in idle:
        conn.send(None)
    return done


def _save(done: dict, out: str) -> None:
    with open(out + ".tmp", "w") as f:
        json.dump(done, f, indent=1, sort_keys=True)
    os.replace(out + ".tmp", out)


def verdict(record: dict) -> str:
    if record.get("build") == "reference":
        return f"pruned in {record['prune']['seconds']:.2f} s"
    if record.get("build") != "ok":
        return f"{record.get('build')} ({record.get('reason', '')[:90]})"
    prune, oracle = record["prune"], record["oracle"]
    if not prune.get("ok"):
        first = f"prune fails: {prune['error'][:90]}"
    elif not prune.get("runs"):
        first = f"pruned model does not run: {prune['error'][:90]}"
    elif not prune.get("shapes_kept"):
        first = "output shapes changed"
    else:
        trip = prune.get("round_trip", {})
        reload = (
            "plain"
            if trip.get("plain_loads")
            else "dx"
            if trip.get("dx_loads")
            else f"no reload ({trip.get('error', trip.get('plain_error', ''))[:60]})"
        )
        first = f"prunes, runs, shapes kept, reloads {reload}"
    if not oracle.get("ok"):
        second = f"exact_only fails: {oracle['error'][:90]}"
    elif oracle["params"][0] == oracle["params"][1]:
        second = "no exact group to prune"
    else:
        second = (
            f"oracle holds to {oracle.get('tolerance')}"
            if oracle.get("holds")
            else f"ORACLE FAILS: {oracle['error'][:90]}"
        )
    return f"{first}; {second} [{oracle.get('dtype')}]"


def counts(done: dict) -> dict:
    """The README's table: per kind of config, how many types reach each stage."""
    table: dict = {}
    for record in done.values():
        if record.get("build") == "reference":
            continue
        if record.get("build") != "ok":
            table.setdefault("not built", collections.Counter())[record.get("build")] += 1
            continue
        kind = "with sub-configs" if record["composite"] else "single config"
        c = table.setdefault(kind, collections.Counter())
        prune, oracle = record["prune"], record["oracle"]
        c["built"] += 1
        c["pruned"] += bool(prune.get("ok") and prune["params"][1] < prune["params"][0])
        c["runs, shapes kept"] += bool(prune.get("runs") and prune.get("shapes_kept"))
        c["declares function-changing groups"] += bool(prune.get("function_changing"))
        trip = prune.get("round_trip", {})
        c["reloads: plain transformers"] += bool(trip.get("plain") and trip.get("plain_loads"))
        c["reloads: dx.from_pretrained"] += bool(trip.get("dx_loads"))
        c["reloads: neither"] += bool(prune.get("runs") and not trip.get("dx_loads"))
        exact = oracle.get("ok") and oracle["params"][1] < oracle["params"][0]
        c["exact_only prunes"] += bool(exact)
        c["oracle holds"] += bool(exact and oracle.get("holds"))
        c["oracle holds (to float32 precision)"] += bool(
            exact and oracle.get("holds") and oracle.get("tolerance") == 1e-5
        )
        c["ORACLE FAILS"] += bool(exact and not oracle.get("holds"))
    return {k: dict(v) for k, v in table.items()}


FAMILY_COLUMNS = (
    "built",
    "pruned, runs, shapes kept",
    "function-changing groups declared",
    "exact_only: oracle holds",
    "reloads: plain",
    "reloads: dx only",
    "reloads: neither",
)


def family_table(done: dict) -> str:
    """The README's per-family table (markdown): the model types built, by the task the
    sweep built them for."""
    rows: dict = {}
    for record in done.values():
        if record.get("build") != "ok":
            continue
        prune, oracle = record["prune"], record["oracle"]
        trip = prune.get("round_trip", {})
        runs = bool(prune.get("ok") and prune.get("runs") and prune.get("shapes_kept"))
        plain = bool(trip.get("plain") and trip.get("plain_loads"))
        exact = oracle.get("ok") and oracle["params"][1] < oracle["params"][0]
        values = (
            1,
            runs,
            bool(prune.get("function_changing")),
            bool(exact and oracle.get("holds")),
            plain,
            bool(trip.get("dx_loads")) and not plain,
            runs and not trip.get("dx_loads"),
        )
        for task in (record.get("task", "?"), "all"):
            row = rows.setdefault(task, [0] * len(values))
            for i, v in enumerate(values):
                row[i] += int(v)
    lines = ["| family | " + " | ".join(FAMILY_COLUMNS) + " |", "|---" * 8 + "|"]
    for task in sorted(rows, key=lambda t: (t == "all", -rows[t][0])):
        lines.append(f"| {task} | " + " | ".join(str(v) for v in rows[task]) + " |")
    return "\n".join(lines)


def slowest(done: dict, n: int = 10) -> str:
    """The ``n`` slowest default prunes, with their stages and their ratio to the reference."""
    timed = [
        (r["prune"]["seconds"], t, r["prune"]["stages"])
        for t, r in done.items()
        if r.get("build") == "ok" and "seconds" in r.get("prune", {})
    ]
    reference = done.get(REFERENCE, {}).get("prune", {}).get("seconds")
    lines = [
        f"slowest {min(n, len(timed))} of {len(timed)} prunes"
        + (f" (ResNet-50 in the same run: {reference:.2f} s)" if reference else "")
    ]
    for seconds, model_type, stages in sorted(timed, reverse=True)[:n]:
        ratio = f" = {seconds / reference:.2f}x ResNet-50" if reference else ""
        parts = ", ".join(f"{k} {stages[k]:.2f}" for k in ("trace", "score", "plan") if k in stages)
        lines.append(f"  {model_type:<28} {seconds:6.2f} s{ratio} ({parts})")
    return "\n".join(lines)


def main() -> None:
    import sweep_layers  # (the --stand-ins switch the layer sweeps share)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per model type")
    parser.add_argument("--only", default="", help="comma-separated model types")
    parser.add_argument("--out", default="sweep_transformers.json")
    parser.add_argument("--resume", action="store_true", help="keep the records in --out")
    parser.add_argument(
        "--head",
        default=None,
        help="each type with this task head instead of its default class: "
        "seq-cls, token-cls or qa (types without one are recorded unbuildable)",
    )
    parser.add_argument(
        "--attn",
        default=None,
        choices=["eager", "sdpa"],
        help="each type with this attn_implementation instead of the first of SDPA and eager "
        "its class builds with",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="use_cache=False among the inputs of every type whose forward takes it (its "
        "decoder layers replayed from the first one's trace)",
    )
    parser.add_argument("--stand-ins", action="store_true", help=sweep_layers.STAND_INS_HELP)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.stand_ins:
        sweep_layers.ask_for_stand_ins()
    import zoo_transformers as zoo

    if args.head is not None and args.head not in zoo.TASK_HEADS:
        parser.error(f"--head must be one of {', '.join(zoo.TASK_HEADS)}, not {args.head!r}")

    types = [REFERENCE] + (args.only.split(",") if args.only else zoo.model_types())
    done = {}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as f:
            done = {t: r for t, r in json.load(f).items() if t in types}
    t0 = time.perf_counter()
    done = run(
        types, args.workers, args.timeout, done, args.out, args.head, args.attn, args.no_cache
    )
    types_done = len(done) - (REFERENCE in done)
    print(f"\n{types_done} model types in {time.perf_counter() - t0:.0f} s ({args.out})")
    for kind, c in counts(done).items():
        print(f"{kind}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    print(family_table(done))
    print(slowest(done))


if __name__ == "__main__":
    main()
