# The README's two commands (each sets everything up first, on a fresh machine too):
#   make demo   prune the built-in default model (ResNet-50) and print what changed
#   make test   run the whole test suite: the C++ core tests (CTest, plain and under ASan/UBSan)
#               and pytest; `make test TORCH=torch==2.11.0` runs it against another torch (any
#               of the supported 2.11 to 2.15), `make test-python TORCH=...` the pytest part
# Also: make wheel-check (a wheel in a fresh venv imports and prunes), make lint, make bench
# (pytest-benchmark suites, see bench/README.md), make gpu-check (on a machine with an NVIDIA
# GPU, with the python and torch found there), make digits (docs/digits.md), make clean.
PYTHON ?= python3
TORCH ?= torch==2.13.0
# One venv per torch: .venv for the default one, .venv-<version> for any other.
ifeq ($(TORCH),torch==2.13.0)
VENV ?= .venv
else
VENV ?= .venv-$(patsubst torch==%,%,$(TORCH))
endif
PY := $(VENV)/bin/python
# Every install below names the torch exactly, so a machine-wide pip cap on torch (this
# project's machines have `torch<=2.14.1` in /etc/xdg/pip) is lifted for them: it would only
# refuse a newer torch asked for by name.
PIP := PIP_CONSTRAINT=/dev/null $(PY) -m pip --disable-pip-version-check
# The extensions are built in place (depgraph_ext/*.so) for one venv's torch at a time; this
# stamp says for which, so switching torch rebuilds them.
BUILT := build/.built-for-$(notdir $(VENV))
NATIVE_SOURCES := $(wildcard csrc/core/*.cpp csrc/core/*.hpp csrc/ops/*.cpp csrc/ops/*.h \
	csrc/ops/cpu/*.cpp csrc/ops/cuda/*.cu csrc/ops/cuda/*.cuh) setup.py pyproject.toml

.PHONY: setup demo test test-core test-python wheel-check lint bench gpu-check digits clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and alone, so that nothing after it can ask for another torch.
$(VENV)/.deps: requirements-dev.txt | $(PY)
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -r requirements-dev.txt "$(TORCH)"
	touch $@

# --no-build-isolation: an isolated build would fetch a different torch.
$(BUILT): $(VENV)/.deps $(NATIVE_SOURCES)
	rm -f build/.built-for-*
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import depgraph_ext.ops as o; print(o.build_info())"
	mkdir -p build && touch $@

setup: $(BUILT)

demo: setup
	$(PY) -m depgraph_ext

test: test-core test-python

test-core:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j 2
	ctest --test-dir build/cmake --output-on-failure
	cmake -S . -B build/cmake-sanitize -DCMAKE_BUILD_TYPE=Debug -DDEPGRAPH_SANITIZE=ON > /dev/null
	cmake --build build/cmake-sanitize -j 2
	ctest --test-dir build/cmake-sanitize --output-on-failure

test-python: setup
	$(PY) -m pytest tests -q

WHEEL_PIP := PIP_CONSTRAINT=/dev/null build/wheel-venv/bin/python -m pip --disable-pip-version-check
# A wheel, installed into a fresh venv with the same torch and nothing of this checkout on the
# path, imports, finds its native parts and prunes (scripts/check_wheel.py).
wheel-check: $(VENV)/.deps
	rm -rf build/wheel build/wheel-venv
	$(PIP) wheel --quiet --no-build-isolation --no-deps -w build/wheel .
	$(PYTHON) -m venv build/wheel-venv
	$(WHEEL_PIP) install --quiet "$(TORCH)"
	$(WHEEL_PIP) install --quiet build/wheel/depgraph_ext-*.whl "$(TORCH)"
	cd build && wheel-venv/bin/python ../scripts/check_wheel.py

lint: $(VENV)/.deps
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

bench: setup
	$(PY) -m pytest bench -q --benchmark-columns=min,median,rounds --benchmark-sort=name

# Builds the CUDA kernels for the GPU present only, runs every CUDA test and prints the table
# of kernels and whole prunes (bench/gpu_check.py). No venv: a GPU machine brings its own torch.
# Without a GPU it says so and exits.
gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

digits: setup
	$(PY) examples/digits.py

clean:
	rm -rf build .venv .venv-* depgraph_ext/*.so *.egg-info
