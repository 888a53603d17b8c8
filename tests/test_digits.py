"""The digits experiment (examples/digits.py) on a small subset: every method prunes to the
MACs target and the pruned networks train again."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
digits = pytest.importorskip("digits")


def test_digits_experiment_on_a_subset():
    pytest.importorskip("sklearn")
    logs = []
    results = digits.run(
        seeds=1, epochs=4, extra=1, finetune=2, subset=600, width=12, log=logs.append
    )
    assert results["dense"][0] > 0.3  # 10 classes: chance is 0.1
    for method in digits.METHODS:
        r = results[method]
        assert 0.3 < r["macs"][0] <= 0.5, method  # pruned to the target, not far below it
        # the pruned network still trains: two epochs take it well above chance (0.1) and
        # above where pruning left it
        assert r["finetuned"][0] > max(0.3, r["pruned"][0] + 0.1), method
    assert len(logs) == 1 and "grouped+GS" in logs[0]
    table = digits.table(results)
    assert table.count("\n") == len(digits.METHODS) + 2
