"""The digits experiment (examples/digits.py) on a small subset: every method prunes to the
MACs target and the pruned networks still classify."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
digits = pytest.importorskip("digits")


def test_digits_experiment_on_a_subset():
    pytest.importorskip("sklearn")
    logs = []
    results = digits.run(seeds=1, epochs=4, extra=1, finetune=2, subset=600, width=12,
                         log=logs.append)
    assert results["dense"][0] > 0.3  # 10 classes: chance is 0.1
    for method in digits.METHODS:
        r = results[method]
        assert 0.3 < r["macs"][0] <= 0.5, method  # pruned to the target, not far below it
        assert 0.0 <= r["pruned"][0] <= 1.0 and 0.0 <= r["finetuned"][0] <= 1.0
    assert results["grouped"]["finetuned"][0] > 0.3
    assert len(logs) == 1 and "grouped+GS" in logs[0]
    table = digits.table(results)
    assert table.count("\n") == len(digits.METHODS) + 2
