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
