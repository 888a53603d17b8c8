"""Fixtures of the test suite (helpers live in helpers.py)."""

from __future__ import annotations

import pytest

from depgraph_ext.pruning import validate
from helpers import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def check_skipped_traces(monkeypatch):
    """Every plan judged to run without a second trace is traced all the same, and a plan that
    does not run then fails the test: the whole suite checks that judgement."""
    monkeypatch.setattr(validate, "CHECK_SKIPPED_TRACES", True)
