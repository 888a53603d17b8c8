# The README's two commands (each sets everything up first, on a fresh machine too):
#   make demo   prune the built-in default model (ResNet-50) and print what changed
#   make test   run the whole test suite: the C++ core tests (CMake/CTest) and pytest
# Also: make bench (pytest-benchmark suites, see bench/README.md), make digits (the
# experiment of docs/digits.md), make clean.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
CORE_SOURCES := $(wildcard csrc/core/*.cpp csrc/core/*.hpp csrc/ops/*.cpp csrc/ops/*.h csrc/ops/cpu/*.cpp csrc/ops/cuda/*.cu csrc/ops/cuda/*.cuh) setup.py pyproject.toml

.PHONY: setup demo test test-core test-python bench digits clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and alone, so that nothing after it can ask for another torch.
$(VENV)/.deps: requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt "$(TORCH)"
	touch $@

# --no-build-isolation: an isolated build would fetch a different torch.
$(VENV)/.built: $(VENV)/.deps $(CORE_SOURCES)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.built

demo: setup
	$(PY) -m depgraph_ext

test: test-core test-python

test-core:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j 2
	ctest --test-dir build/cmake --output-on-failure

test-python: setup
	$(PY) -m pytest tests -q

bench: setup
	$(PY) -m pytest bench -q --benchmark-columns=min,median,rounds --benchmark-sort=name

digits: setup
	$(PY) examples/digits.py

clean:
	rm -rf build $(VENV) depgraph_ext/*.so *.egg-info
