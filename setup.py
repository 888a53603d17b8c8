"""Build of depgraph_ext's native parts.

    pip install --no-build-isolation -e .            # isolation would fetch another torch
    pip wheel --no-build-isolation --no-deps .       # a wheel for this very torch (below)

Extensions:
- depgraph_ext._core: csrc/core/*.cpp, torch-free group resolution, C++17. A plain pybind11
  extension: torch's headers are not on its include path, so the core cannot include them.
- depgraph_ext._ops: csrc/ops, the torch op library (grouped_norm, gather_slices, compact_,
  build_info). CPU kernels always; CUDA kernels when torch is a CUDA build whose CUDA major
  version matches nvcc's.

Supported torch: the releases in depgraph_ext/torch_range.py (2.11 to 2.15); a build against
any other torch stops here, naming the range.

C++ standard of _ops: the one the headers of the torch being built against require, read from
the `#error C++NN or later ...` line of its ATen/ATen.h (C++17 up to torch 2.13, C++20 from
torch 2.14), never below C++17. Kernels and core compile with -Wall -Wextra -Werror.

A wheel is tied to the torch it was built with: _ops links against that torch's libraries,
whose C++ ABI changes between releases, so it loads only under the same torch version (and,
with CUDA kernels, a torch of the same CUDA major version). The library carries that version
as a string (ops.cpp); depgraph_ext reads it from the file and refuses a library built for
another torch before loading it, naming the torch to install.

Environment flags:
- FORCE_CUDA=1         build the CUDA kernels or fail loudly saying why not.
- DEPGRAPH_CPU_ONLY=1  never build the CUDA kernels.
- DEPGRAPH_DEBUG=1     build with -O0 -g.
- TORCH_CUDA_ARCH_LIST GPU architectures to compile for (read by torch); without it, those of
                       the visible GPUs, or with none visible DEFAULT_CUDA_ARCHS (Ampere,
                       Hopper, Blackwell, and PTX for newer GPUs).
- MAX_JOBS=N           parallel compile jobs (read by torch's ninja builder).
"""

import glob
import os
import re
import runpy
import shutil
import subprocess


def cuda_home() -> str | None:
    """The CUDA toolkit: $CUDA_HOME, else /usr/local/cuda, else two levels above nvcc (torch's
    own guess, which a wrapper script in /usr/local/bin would mislead)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


if cuda_home():  # before torch.utils.cpp_extension reads it
    os.environ["CUDA_HOME"] = cuda_home()

import pybind11  # noqa: E402
import torch  # noqa: E402
from setuptools import Extension, setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

# The supported torch releases, read from the package's own file without importing the package.
TORCH_RANGE = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "depgraph_ext", "torch_range.py")
)
UNSUPPORTED_TORCH = TORCH_RANGE["unsupported"](torch.__version__)
if UNSUPPORTED_TORCH:
    raise RuntimeError(f"depgraph_ext cannot be built: {UNSUPPORTED_TORCH}")

DEBUG = os.environ.get("DEPGRAPH_DEBUG", "0") == "1"
FORCE_CUDA = os.environ.get("FORCE_CUDA", "0") == "1"
CPU_ONLY = os.environ.get("DEPGRAPH_CPU_ONLY", "0") == "1"
OPT = ["-O0", "-g"] if DEBUG else ["-O3", "-DNDEBUG"]
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
DEFAULT_CUDA_ARCHS = "8.0;9.0;10.0;12.0+PTX"


def torch_cxx_standard() -> tuple[int, str]:
    """The C++ standard the installed torch's headers require, and where that was read."""
    header = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "ATen.h")
    try:
        with open(header) as f:
            match = re.search(r"#error C\+\+(\d+) or later", f.read())
    except OSError:
        match = None
    if match is None:
        return 17, f"no requirement found in {header}: C++17"
    return max(17, int(match.group(1))), f"torch {torch.__version__}'s ATen.h requires it"


def nvcc_path() -> str:
    home = os.environ.get("CUDA_HOME")
    return os.path.join(home, "bin", "nvcc") if home else (shutil.which("nvcc") or "nvcc")


def nvcc_version() -> tuple[int, int] | None:
    try:
        out = subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def cuda_decision() -> tuple[bool, str]:
    if CPU_ONLY:
        return False, "DEPGRAPH_CPU_ONLY=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    version = nvcc_version()
    if version is None:
        return False, "nvcc not found"
    if version[0] != int(torch.version.cuda.split(".")[0]):
        return False, (
            f"nvcc is CUDA {version[0]}.{version[1]}, torch was built with CUDA "
            f"{torch.version.cuda}"
        )
    return True, f"torch CUDA {torch.version.cuda} matches nvcc {version[0]}.{version[1]}"


WITH_CUDA, WHY = cuda_decision()
if FORCE_CUDA and not WITH_CUDA:
    raise RuntimeError(f"FORCE_CUDA=1 but the CUDA kernels cannot be built: {WHY}")
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    # No GPU to read the architecture from (a build machine, CI): Ampere, Hopper and Blackwell,
    # plus PTX that newer GPUs compile at load time.
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
STD, STD_WHY = torch_cxx_standard()

core = Extension(
    name="depgraph_ext._core",
    sources=sorted(glob.glob("csrc/core/*.cpp")),
    include_dirs=["csrc/core", pybind11.get_include()],
    language="c++",
    extra_compile_args=["-std=c++17", "-fvisibility=hidden", *OPT, *WARNINGS],
)

defines = [f'-DDEPGRAPH_TORCH_VERSION="{torch.__version__}"']
# at::parallel_for is a header template that uses OpenMP when ATen does: without -fopenmp the
# kernels would silently run on one thread.
OPENMP = ["-fopenmp"] if "OpenMP" in torch.__config__.parallel_info() else []
if WITH_CUDA:
    defines += ["-DDEPGRAPH_WITH_CUDA", f'-DDEPGRAPH_CUDA_VERSION="{torch.version.cuda}"']
op_sources = ["csrc/ops/ops.cpp", *sorted(glob.glob("csrc/ops/cpu/*.cpp"))]
# No floating-point contraction: the CPU kernels take the same sums in two loops that must agree
# bit for bit (grouped_norm_kernel.cpp), and a fused multiply-add in one of them would round
# otherwise.
cxx_flags = [f"-std=c++{STD}", "-ffp-contract=off", *OPT, *WARNINGS, *OPENMP, *defines]
if WITH_CUDA:
    ops = CUDAExtension(
        name="depgraph_ext._ops",
        sources=op_sources + sorted(glob.glob("csrc/ops/cuda/*.cu")),
        include_dirs=["csrc/ops"],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": [
                f"-std=c++{STD}",
                *OPT,
                *defines,
                "--Werror",
                "all-warnings",
                "-Xcompiler",
                ",".join(WARNINGS),
            ],
        },
        extra_link_args=OPENMP,
    )
else:
    ops = CppExtension(
        name="depgraph_ext._ops",
        sources=op_sources,
        include_dirs=["csrc/ops"],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=OPENMP,
    )

# torch's headers as system headers: -Werror applies to this project's code, not to theirs.
torch_includes = [d for d in ops.include_dirs if d != "csrc/ops"]
ops.include_dirs = ["csrc/ops"]
for flags in ops.extra_compile_args.values():
    flags += [arg for d in torch_includes for arg in ("-isystem", d)]

print(
    f"depgraph_ext build: _core (C++17, {'debug' if DEBUG else 'release'}); _ops (C++{STD}: "
    f"{STD_WHY}) with CPU kernels{' and CUDA kernels' if WITH_CUDA else ''} ({WHY})"
)

setup(
    ext_modules=[core, ops],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
