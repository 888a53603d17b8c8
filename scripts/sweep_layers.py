"""What the layer sweeps (sweep_pyg.py, sweep_torch_nn.py) share: short error lines, output
shapes, snapshots of a model that an error must leave as they were, and the summary of their
records (prunes, oracle, refusals by reason, warnings, failures); and the ``--stand-ins``
switch they and sweep_transformers.py pass on to the processes that prune."""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import re
import time
import warnings

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN = (int, float, str, bool, type(None), torch.dtype, torch.device)
STAND_INS = "SWEEP_STAND_INS"  # (in the environment, which the pruning processes inherit)
STAND_INS_HELP = (
    "trace every model on meta tensors standing in for CPU ones, as a model over the real "
    "trace's size is (the records should be the default sweep's)"
)


def ask_for_stand_ins() -> None:
    """``--stand-ins``, for the processes started from now on."""
    os.environ[STAND_INS] = "1"


def stand_ins_if_asked() -> None:
    """In a pruning process: where ``--stand-ins`` was asked for, trace every model as one
    over the real trace's size is."""
    if os.environ.get(STAND_INS) == "1":
        from depgraph_ext.graph import trace

        trace.REAL_TRACE_MAX_BYTES = 0


def short(e: BaseException, n: int = 1000) -> str:
    """The error's type and its message's first line, paths shortened to the package's."""
    first = (str(e).strip().splitlines() or [""])[0]
    first = re.sub(r"\S*/site-packages/", "", first).replace(ROOT + os.sep, "")
    return f"{type(e).__name__}: {first}"[:n]


def output_shapes(model, example_inputs) -> list:
    from depgraph_ext.testing import outputs_of

    return [list(t.shape) for t in outputs_of(model, example_inputs)]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


def snapshot(model: nn.Module) -> dict:
    """What an error must leave as it was: each tensor (object, bits, requires_grad) by every
    name, and the plain attributes of each module (numbers, strings and tuples of them)."""
    named = list(model.named_parameters(remove_duplicate=False))
    named += list(model.named_buffers(remove_duplicate=False))
    tensors = {n: (id(t), t.dtype, t.shape, bits(t).clone(), t.requires_grad) for n, t in named}
    attributes = {
        f"{name}.{key}": repr(value)
        for name, module in model.named_modules(remove_duplicate=False)
        for key, value in vars(module).items()
        if not key.startswith("_")
        and (
            isinstance(value, PLAIN)
            or isinstance(value, (tuple, list))
            and all(isinstance(v, PLAIN) for v in value)
        )
    }
    return {"tensors": tensors, "attributes": attributes}


def changes(before: dict, after: dict) -> list[str]:
    """How ``after`` differs from ``before`` (two snapshots), one line per tensor or attribute."""
    t0, t1 = before["tensors"], after["tensors"]
    out = [f"tensor {name} added or removed" for name in t0.keys() ^ t1.keys()]
    for name in t0.keys() & t1.keys():
        (id0, dtype0, shape0, bits0, grad0) = t0[name]
        (id1, dtype1, shape1, bits1, grad1) = t1[name]
        if id0 != id1:
            out.append(f"{name}: another tensor object")
        if (dtype0, shape0, grad0) != (dtype1, shape1, grad1) or not torch.equal(bits0, bits1):
            out.append(f"{name}: {list(shape0)} -> {list(shape1)}, or its values")
    a0, a1 = before["attributes"], after["attributes"]
    out += [f"{k}: {a0.get(k)} -> {a1.get(k)}" for k in a0.keys() | a1 if a0.get(k) != a1.get(k)]
    return sorted(out)


def reason_of(error: str) -> str:
    """The general cause of a refusal: its type and the message up to the first ':' or ';'."""
    kind, _, message = error.partition(": ")
    return f"{kind}: {re.split(r'[:;(]', message, maxsplit=1)[0].strip()}"


def outcome_lines(records: list, steps, tolerance: float, failures) -> list[str]:
    """The summary of the cases' records (``steps``: the prunes each case ran, "exact" the
    exact_only one; ``failures(record)``: what looks like a bug of the library in it)."""
    built = [r for r in records if r["build"] == "ok"]
    lines = [f"built: {len(built)} of {len(records)}"]
    for r in records:
        if r["build"] == "not built":
            lines.append(f"  not built: {r['case']}: {r['reason'][:150]}")
    for step in steps:
        n = sum(r[step]["outcome"] == "pruned" for r in built)
        lines.append(f"pruned ({step}): {n} of {len(built)}")
    exact = [r for r in built if r["exact"]["outcome"] == "pruned"]
    holds = sum(r["exact"].get("oracle") == "holds" for r in exact)
    lines.append(f"oracle holds: {holds} of {len(exact)} exact_only prunes (to {tolerance})")
    refused: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in built:
        for step in steps:
            if r[step]["outcome"] == "refused":
                refused[reason_of(r[step]["error"])][r[step]["error"]].append((r["case"], step))
    total = sum(len(v) for by_message in refused.values() for v in by_message.values())
    lines.append(f"refused: {total} prunes of {len(built) * len(steps)}")
    for reason, by_message in sorted(refused.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {reason}")
        for message, where in by_message.items():
            cases = collections.defaultdict(list)
            for case, step in where:
                cases[case].append(step)
            names = ", ".join(f"{c} ({'/'.join(s)})" for c, s in cases.items())
            detail = message.partition(": ")[2].removeprefix(reason.partition(": ")[2])
            lines.append(f"    {names}: {detail.lstrip(':; ')[:300]}")
    categories = collections.Counter(
        c for r in built for step in steps for c in r[step].get("warning_categories", ())
    )
    warned = ", ".join(f"{c} {n}" for c, n in categories.most_common()) or "none"
    lines.append(f"warnings (in prunes): {warned}")
    found = {r["case"]: failures(r) for r in records if failures(r)}
    lines.append(f"failures: {sum(len(v) for v in found.values())} in {len(found)} cases")
    for case, flags in found.items():
        lines += [f"  {case}: {flag[:600]}" for flag in flags]
    return lines


def save(done: dict, out: str) -> None:
    """The records as JSON, written whole (a rename), so that a run cut short leaves them."""
    with open(out + ".tmp", "w") as f:
        json.dump(done, f, indent=1, sort_keys=True)
    os.replace(out + ".tmp", out)


def case_arguments(doc: str, out: str) -> argparse.ArgumentParser:
    """The options both layer sweeps take (``doc``: the script's docstring; ``out``: the
    default JSON file): --workers, --timeout, --cases, --out, and the hidden --child."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--out", default=out, help="JSON: one record per case")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    return parser


def chosen_cases(parser: argparse.ArgumentParser, cases: str, known) -> list[str]:
    """The case names --cases gives (every known one without it); an unknown name is refused."""
    names = cases.split(",") if cases else list(known)
    if unknown := [n for n in names if n not in known]:
        parser.error(f"no case named {', '.join(unknown)} (cases: {', '.join(known)})")
    return names


def collect(records, names: list[str], out: str, verdict) -> dict:
    """Each record as it comes, printed (``verdict(record)``) and saved; then all of them, in
    the order of ``names``."""
    done: dict = {}
    for record in records:
        done[record["case"]] = record
        print(f"{len(done):4d}/{len(names)} {record['case']}: {verdict(record)}", flush=True)
        save(done, out)
    done = {n: done[n] for n in names}
    save(done, out)
    return done


def check(record: dict, key: str, assertion) -> None:
    """``record[key]``: "holds", or the error with its whole message on one line (the oracle's
    differences are on the lines after its first)."""
    try:
        assertion()
        record[key] = "holds"
    except Exception as e:  # noqa: BLE001
        message = " ".join(str(e).replace(ROOT + os.sep, "").split())
        record[key] = f"{type(e).__name__}: {message}"[:600]


def prune_step(
    model, example_inputs, shapes, step: str, steps: dict, tolerance: float, inspect=None
) -> dict:
    """dx.prune(copy of model, ratio=0.5, steps[step]): its outcome, and what it left; the
    "exact" step also under the scatter-back oracle to ``tolerance``. ``inspect(pruned)``: more
    to record of a pruned model, before it runs (a dict)."""
    import depgraph_ext as dx
    from depgraph_ext.testing import assert_kept_bit_identical, assert_scatter_back_equal

    pruned = copy.deepcopy(model)
    before = snapshot(pruned)
    record: dict = {}
    error = None
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = dx.prune(pruned, example_inputs, ratio=0.5, progress=False, **steps[step])
        except Exception as e:  # noqa: BLE001
            error = e
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["warnings"] = sorted({short(w.message, 160) for w in caught})  # "Category: ..."
    record["warning_categories"] = sorted({w.category.__name__ for w in caught})
    if error is not None:
        # a refusal names its cause; an InternalError or any other exception is a bug, and so
        # is a VerificationError saying that groups claimed exact were not (one saying that the
        # exact groups do not run without the function-changing ones is a refusal)
        is_refusal = isinstance(error, dx.errors.PruningError) and not (
            isinstance(error, dx.errors.InternalError)
            or isinstance(error, dx.errors.VerificationError)
            and "does not compute what the original computes" in str(error)
        )
        record.update(outcome="refused" if is_refusal else "error", error=short(error))
        record["changes_after_error"] = changes(before, snapshot(pruned))[:20]
        return record
    record.update(
        outcome="pruned",
        params=[result.params_before, result.params_after],
        function_changing=len(getattr(result, "function_changing", ()) or ()),
    )
    # before the pruned model runs: a forward in train mode changes running statistics
    check(record, "kept_bit_identical", lambda: assert_kept_bit_identical(model, pruned, result))
    if inspect is not None:
        record.update(inspect(pruned))
    try:
        after = output_shapes(pruned, example_inputs)
        record.update(runs=True, shapes_kept=after == shapes, shapes=after)
    except Exception as e:  # noqa: BLE001
        record.update(runs=False, run_error=short(e))
    if step == "exact":
        check(
            record,
            "oracle",
            lambda: assert_scatter_back_equal(
                model, pruned, result, example_inputs, rtol=tolerance, atol=tolerance
            ),
        )
    return record


def failures(record: dict, steps) -> list[str]:
    """What looks like a bug: of the library (an error that is not a refusal, a crash or a
    timeout, a model changed by an error, a pruned model that does not run, changes its output
    shapes, holds slices that are not the original's or attributes its tensors contradict, the
    oracle) or of the case (it does not build)."""
    if record["build"] in ("error", "timeout", "crash"):
        return [f"{record['build']}: {record['reason']}"]
    if record["build"] != "ok":
        return []
    found = []
    for step in steps:
        s = record[step]
        if s["outcome"] in ("error", "timeout", "crash"):
            found.append(f"{step}: {s['outcome']}: {s['error']}")
        if s.get("changes_after_error"):
            found.append(f"{step}: model changed after the error: {s['changes_after_error']}")
        if s["outcome"] != "pruned":
            continue
        if not s["runs"]:
            found.append(f"{step}: the pruned model does not run: {s['run_error']}")
        elif not s["shapes_kept"]:
            found.append(f"{step}: output shapes {record['shapes']} -> {s['shapes']}")
        for check in ("kept_bit_identical", "oracle"):
            if s.get(check, "holds") != "holds":
                found.append(f"{step}: {check}: {s[check]}")
        if s.get("stale_attributes"):
            found.append(f"{step}: stale attributes: {'; '.join(s['stale_attributes'])}")
    return found


def verdict(record: dict, steps) -> str:
    if record["build"] != "ok":
        return f"{record['build']} ({record['reason'][:110]})"
    parts, said = [], set()
    for step in steps:
        s = record[step]
        if s["outcome"] == "pruned":
            before, after = s["params"]
            text = f"{step} pruned {before}->{after}"
            if step == "exact" and s.get("oracle") == "holds":
                text += ", oracle holds"
        elif s["outcome"] == "not run":
            text = f"{step} not run"
        else:
            error = s["error"] if s["error"] not in said else "the same"
            said.add(s["error"])
            text = f"{step} {s['outcome']} ({error[:200]})"
        parts.append(text)
    flags = failures(record, steps)
    return "; ".join(parts) + (f"  FAILURES: {len(flags)}" if flags else "")
