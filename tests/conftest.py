"""Fixtures of the test suite (helpers live in helpers.py)."""

from __future__ import annotations

import pytest

from depgraph_ext.graph import trace
from depgraph_ext.pruning import configs, validate
from helpers import BACKENDS, PRUNE_TIMINGS


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def check_skipped_traces(monkeypatch):
    """Every plan judged to run without a second trace is traced all the same, and a plan that
    does not run then fails the test: the whole suite checks that judgement."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", True)


@pytest.fixture(autouse=True)
def check_skipped_builds(monkeypatch):
    """Every config field the config search skips, because the model's build did not read
    it, is tried all the same, and the test fails where that build differs."""
    monkeypatch.setattr(configs, "CHECK_SKIPPED_BUILDS", True)


@pytest.fixture(autouse=True)
def check_replayed_layers(monkeypatch):
    """Every graph whose repeated layers were replayed (graph/repeats.py) is traced again
    without replays, and the test fails where the two records differ in anything."""
    monkeypatch.setattr(trace, "CHECK_REPEATS", True)


def pytest_terminal_summary(terminalreporter):
    """The ten slowest prunes the zoo tests recorded, with their stages."""
    if not PRUNE_TIMINGS:
        return
    slowest = sorted(PRUNE_TIMINGS, key=lambda record: -record[1].get("total", 0.0))[:10]
    terminalreporter.write_sep("=", f"slowest prunes ({len(PRUNE_TIMINGS)} recorded)")
    for what, timings in slowest:
        stages = ", ".join(
            f"{k} {timings[k]:.2f}" for k in ("trace", "score", "plan", "apply") if k in timings
        )
        terminalreporter.write_line(f"{timings.get('total', 0.0):7.2f} s  {what} ({stages})")
