"""Build of depgraph_ext's native parts.

    pip install --no-build-isolation -e .     # isolation would fetch another torch

Extensions:
- depgraph_ext._core: csrc/core, torch-free C++17 group resolution (pybind11). Always built.
- depgraph_ext._ops:  csrc/ops, the torch op library (grouped_norm, gather_slices, compact_,
  build_info). CPU kernels always; CUDA kernels when torch is a CUDA build whose CUDA major
  version matches nvcc's.

Environment flags:
- FORCE_CUDA=1         build the CUDA kernels or fail loudly saying why not.
- DEPGRAPH_CPU_ONLY=1  never build the CUDA kernels.
- DEPGRAPH_DEBUG=1     build with -O0 -g.
- MAX_JOBS=N           parallel compile jobs (read by torch's ninja builder).
"""

import glob
import os
import re
import shutil
import subprocess

import pybind11
import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

DEBUG = os.environ.get("DEPGRAPH_DEBUG", "0") == "1"
FORCE_CUDA = os.environ.get("FORCE_CUDA", "0") == "1"
CPU_ONLY = os.environ.get("DEPGRAPH_CPU_ONLY", "0") == "1"
OPT = ["-O0", "-g"] if DEBUG else ["-O3", "-DNDEBUG"]


def nvcc_major() -> int | None:
    nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"),
                                                "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    match = re.search(r"release (\d+)\.", out)
    return int(match.group(1)) if match else None


def cuda_decision() -> tuple[bool, str]:
    if CPU_ONLY:
        return False, "DEPGRAPH_CPU_ONLY=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    major = nvcc_major()
    if major is None:
        return False, "nvcc not found"
    if major != int(torch.version.cuda.split(".")[0]):
        return False, f"nvcc is CUDA {major}, torch was built with CUDA {torch.version.cuda}"
    return True, f"torch CUDA {torch.version.cuda} matches nvcc {major}"


WITH_CUDA, WHY = cuda_decision()
if FORCE_CUDA and not WITH_CUDA:
    raise RuntimeError(f"FORCE_CUDA=1 but the CUDA kernels cannot be built: {WHY}")

core = CppExtension(
    name="depgraph_ext._core",
    sources=["csrc/core/resolve.cpp", "csrc/core/bindings.cpp"],
    include_dirs=["csrc/core", pybind11.get_include()],
    extra_compile_args={"cxx": ["-std=c++17", *OPT]},
)
# CppExtension adds torch's libraries; the core is torch-free and links none of them.
core.libraries, core.library_dirs, core.runtime_library_dirs = [], [], []

defines = [f'-DDEPGRAPH_TORCH_VERSION="{torch.__version__}"']
# at::parallel_for is a header template that uses OpenMP when ATen does: without -fopenmp the
# kernels would silently run on one thread.
OPENMP = ["-fopenmp"] if "OpenMP" in torch.__config__.parallel_info() else []
op_sources = ["csrc/ops/ops.cpp", *sorted(glob.glob("csrc/ops/cpu/*.cpp"))]
if WITH_CUDA:
    defines += ["-DDEPGRAPH_WITH_CUDA", f'-DDEPGRAPH_CUDA_VERSION="{torch.version.cuda}"']
    ops = CUDAExtension(
        name="depgraph_ext._ops",
        sources=op_sources + sorted(glob.glob("csrc/ops/cuda/*.cu")),
        include_dirs=["csrc/ops"],
        extra_compile_args={"cxx": ["-std=c++17", *OPT, *OPENMP, *defines],
                            "nvcc": ["-std=c++17", *OPT, *defines]},
        extra_link_args=OPENMP,
    )
else:
    ops = CppExtension(
        name="depgraph_ext._ops",
        sources=op_sources,
        include_dirs=["csrc/ops"],
        extra_compile_args={"cxx": ["-std=c++17", *OPT, *OPENMP, *defines]},
        extra_link_args=OPENMP,
    )

print(f"depgraph_ext build: _core (C++17, {'debug' if DEBUG else 'release'}); _ops with CPU "
      f"kernels{' and CUDA kernels' if WITH_CUDA else ''} ({WHY})")

setup(
    ext_modules=[core, ops],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
