"""The supported torch releases (depgraph_ext/torch_range.py): pyproject.toml claims the same
range, setup.py refuses to build against any other torch, and depgraph_ext imports under one
with its op library refused (naming both versions) and the python backend working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

from depgraph_ext import ops, torch_range

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_claims_the_supported_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = project["project"]["dependencies"] + project["build-system"]["requires"]
    assert [r for r in requirements if r.startswith("torch")] == [torch_range.REQUIREMENT] * 2
    assert torch_range.REQUIREMENT == "torch>=2.11,<2.16"


@pytest.mark.parametrize(
    "version", ["2.11.0", "2.11.0+cu130", "2.13.0+cpu", "2.15.0", "2.15.0a0+git1234"]
)
def test_supported_versions(version):
    assert torch_range.unsupported(version) is None


@pytest.mark.parametrize("version", ["2.10.1", "2.16.0", "2.16.0.dev20260101+cu130", "3.0.0", ""])
def test_unsupported_versions_are_named_with_the_range(version):
    message = torch_range.unsupported(version)
    assert message == (
        f"torch {version} is not supported: depgraph_ext supports torch 2.11 to 2.15 "
        "(pip install 'torch>=2.11,<2.16')"
    )


@pytest.mark.parametrize("version", ["2.10.0", "2.16.0"])
def test_the_op_library_is_not_loaded_under_an_unsupported_torch(monkeypatch, version):
    monkeypatch.setattr(torch, "__version__", version)
    message = ops._load()
    assert message is not None
    assert f"torch {version} is not supported" in message and "2.11 to 2.15" in message


# depgraph_ext imported under a torch that claims an unsupported version, in a fresh process
# (the op library must not even be loaded there).
OUTSIDE = """
import sys, torch
torch.__version__ = "2.10.0"
import depgraph_ext as dx
from depgraph_ext import ops
assert "depgraph_ext._ops" not in sys.modules, "the op library was loaded"
assert not dx.native_available()
print("ERROR:", ops.load_error())
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
result = dx.prune(model, torch.randn(3, 4), ratio=0.5, backend="python")
print("PRUNED:", model[0].out_features, model[2].in_features)
try:
    dx.prune(model, torch.randn(3, 4), ratio=0.5, backend="native")
except dx.BackendUnavailableError as exc:
    print("NATIVE:", exc)
"""


def test_depgraph_ext_imports_under_an_unsupported_torch_and_prunes_in_python():
    out = subprocess.run(
        [sys.executable, "-c", OUTSIDE], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert "torch 2.10.0 is not supported" in lines["ERROR"] and "2.11 to 2.15" in lines["ERROR"]
    assert lines["PRUNED"] == "4 4"
    assert lines["NATIVE"] == lines["ERROR"]


# setup.py run under a torch that claims an unsupported version: it stops before building.
BUILD_OUTSIDE = """
import runpy, sys, torch
torch.__version__ = "2.16.0"
sys.argv = ["setup.py", "--name"]
runpy.run_path("setup.py", run_name="__main__")
"""


def test_setup_refuses_to_build_against_an_unsupported_torch():
    out = subprocess.run(
        [sys.executable, "-c", BUILD_OUTSIDE], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode != 0
    assert (
        "RuntimeError: depgraph_ext cannot be built: torch 2.16.0 is not supported: "
        "depgraph_ext supports torch 2.11 to 2.15" in out.stderr
    )
    assert "depgraph_ext build:" not in out.stdout  # nothing was configured, let alone built


def test_attention_with_no_key_or_value_heads_fails_a_trace_without_killing_it():
    """torch 2.11 and 2.12 divide by the value's head count here (SIGFPE); a pruned candidate
    the plan validator traces can have none, so during a trace the call raises instead."""
    from depgraph_ext.graph import trace

    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 0, 8, 16)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with trace._attention_refusing_zero_heads():
        if trace._ATTENTION_DIVIDES_BY_HEADS:
            with pytest.raises(RuntimeError, match=r"needs key and value heads, got key \(2, 2"):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:  # later torches return; the guard is not installed
            assert torch.nn.functional.scaled_dot_product_attention is sdpa
            torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert torch.nn.functional.scaled_dot_product_attention is sdpa  # put back
