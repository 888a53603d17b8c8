"""Build of depgraph_ext's native parts.

    pip install --no-build-isolation -e .     # isolation would fetch another torch

Extensions:
- depgraph_ext._core: csrc/core, torch-free C++17 group resolution (pybind11). Always built.

Environment flags:
- DEPGRAPH_DEBUG=1   build with -O0 -g and assertions.
- MAX_JOBS=N         parallel compile jobs (read by torch's ninja builder).
"""

import os

import pybind11
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

DEBUG = os.environ.get("DEPGRAPH_DEBUG", "0") == "1"
CXX_FLAGS = ["-std=c++17", "-O0", "-g"] if DEBUG else ["-std=c++17", "-O3", "-DNDEBUG"]

core = CppExtension(
    name="depgraph_ext._core",
    sources=["csrc/core/resolve.cpp", "csrc/core/bindings.cpp"],
    include_dirs=["csrc/core", pybind11.get_include()],
    extra_compile_args={"cxx": CXX_FLAGS},
    # torch-free: the core links against nothing but the C++ runtime.
    libraries=[],
    library_dirs=[],
)
# CppExtension adds torch's libraries; the core does not need them.
core.libraries = []
core.library_dirs = []
core.runtime_library_dirs = []

print(f"depgraph_ext build: _core (C++17, {'debug' if DEBUG else 'release'})")

setup(
    ext_modules=[core],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
