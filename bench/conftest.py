"""The benchmark suites' configuration: the tests' helpers on the path, and the table of
medians and ratios printed at the end of a run (helpers live in measuring.py)."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from measuring import EXTRA, RESULTS, TORCH_PRUNING_VERSION  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tools = ["native", "python", "torch-pruning"]
    extra_tools = sorted({t for _, _, t in RESULTS} - set(tools))
    rows = sorted({(w, s) for w, s, _ in RESULTS})
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"torch-pruning {TORCH_PRUNING_VERSION}, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| workload | stage | native | python | torch-pruning | python / native | "
        "torch-pruning / native |",
        "|---|---|---|---|---|---|---|",
    ]
    for w, s in rows:
        t = {tool: RESULTS.get((w, s, tool)) for tool in tools}
        cells = [f"{t[x] * 1e3:.1f} ms" if t[x] is not None else "-" for x in tools]
        ratios = [
            f"{t[x] / t['native']:.1f}x" if t[x] and t["native"] else "-"
            for x in ("python", "torch-pruning")
        ]
        lines.append(f"| {w} | {s} | " + " | ".join(cells + ratios) + " |")
        for tool in extra_tools:
            if (w, s, tool) in RESULTS:
                t_x = RESULTS[(w, s, tool)]
                lines.append(f"| {w} | {s}, {tool} | {t_x * 1e3:.1f} ms | | | | |")
    lines += [""] + [f"- {line}" for line in EXTRA] if EXTRA else []
    text = "\n".join(lines)
    terminalreporter.write_sep("=", "depgraph_ext: medians and ratios (same run)")
    terminalreporter.write_line(text)
    out = Path(__file__).parent / ".results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(text + "\n")
