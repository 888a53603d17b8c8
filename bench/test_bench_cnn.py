"""The CNN family: trace, group resolution and the whole prune; native vs python backend vs
Torch-Pruning (its graph build, and graph + pruning step), in one run.

    make bench     (or: .venv/bin/python -m pytest bench -q)
"""

from __future__ import annotations

import warnings

import pytest

import depgraph_ext as dx
from depgraph_ext.graph.resolve import resolve
from depgraph_ext.graph.trace import trace
from measuring import classifier_of, fresh, image_model, measure, torch_pruning

MODELS = ["densenet121", "resnet50", "mobilenet_v2", "resnext"]
BACKENDS = ["native", "python"]

warnings.filterwarnings("ignore", category=dx.OpaqueOpWarning)


@pytest.fixture(scope="module", params=MODELS)
def workload(request):
    model, x = image_model(request.param)
    return request.param, model, x


def test_trace(benchmark, workload):
    name, model, x = workload
    measure(benchmark, (name, "trace", "native"), lambda: trace(model, x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resolve(benchmark, workload, backend):
    if backend == "native" and not dx.native_available():
        pytest.skip("native core not built")
    name, model, x = workload
    couplings = dx.DependencyGraph(model, x).couplings
    measure(
        benchmark,
        (name, "resolve groups", backend),
        lambda: resolve(couplings, backend),
        rounds=20 if backend == "native" else 5,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_dependency_graph(benchmark, workload, backend):
    """Trace + rules + resolution + groups: what Torch-Pruning's graph build also does."""
    if backend == "native" and not dx.native_available():
        pytest.skip("native core not built")
    name, model, x = workload
    measure(
        benchmark,
        (name, "dependency graph", backend),
        lambda: dx.DependencyGraph(model, x, backend=backend).groups,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune(benchmark, workload, backend):
    if backend == "native" and not dx.native_available():
        pytest.skip("native core not built")
    name, model, x = workload
    measure(
        benchmark,
        (name, "prune 50% end to end", backend),
        lambda m: dx.prune(m, x, ratio=0.5, backend=backend),
        setup=fresh(model),
    )


def _tp_pruner(model, x):
    tp = torch_pruning
    return tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[classifier_of(model)],
    )


@pytest.mark.skipif(torch_pruning is None, reason="torch-pruning not installed")
def test_torch_pruning_graph(benchmark, workload):
    name, model, x = workload
    measure(
        benchmark,
        (name, "dependency graph", "torch-pruning"),
        lambda m: _tp_pruner(m, x),
        setup=fresh(model),
    )


@pytest.mark.skipif(torch_pruning is None, reason="torch-pruning not installed")
def test_torch_pruning_prune(benchmark, workload):
    name, model, x = workload
    measure(
        benchmark,
        (name, "prune 50% end to end", "torch-pruning"),
        lambda m: _tp_pruner(m, x).step(),
        setup=fresh(model),
    )
