#!/usr/bin/env bash
# Compile every .cu file with nvcc against the installed torch's headers, so CUDA code never
# rots on machines without a GPU or a CUDA torch. Usage: scripts/compile_cuda.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
read -r TORCH_INC PY_INC TORCH_VERSION ABI < <("$PY" - <<'PYEOF'
import sysconfig, torch, torch.utils.cpp_extension as ce
inc = ce.include_paths()
print(":".join(inc), sysconfig.get_paths()["include"], torch.__version__,
      int(torch._C._GLIBCXX_USE_CXX11_ABI))
PYEOF
)
INCLUDES=(-I csrc/ops -I "$PY_INC")
IFS=: read -ra DIRS <<< "$TORCH_INC"
for d in "${DIRS[@]}"; do INCLUDES+=(-I "$d"); done
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# A CPU torch wheel lacks the one header its CUDA build generates at configure time; it only
# says that c10_cuda is a shared library.
if [ ! -f "${DIRS[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$OUT/shim/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' \
    > "$OUT/shim/c10/cuda/impl/cuda_cmake_macros.h"
  INCLUDES+=(-I "$OUT/shim")
fi
status=0
for cu in csrc/ops/cuda/*.cu; do
  if "$NVCC" -std=c++17 -O2 -c "$cu" -o "$OUT/$(basename "$cu").o" "${INCLUDES[@]}" \
      -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DDEPGRAPH_WITH_CUDA -DDEPGRAPH_CUDA_VERSION='"check"' \
      -DDEPGRAPH_TORCH_VERSION="\"$TORCH_VERSION\"" --expt-relaxed-constexpr \
      -gencode arch=compute_90,code=sm_90 -Xcudafe --diag_suppress=20012,--diag_suppress=20011,--diag_suppress=3306 \
      -Xcompiler -Wno-c++20-extensions; then
    echo "nvcc: $cu compiles"
  else
    echo "nvcc: $cu FAILED"; status=1
  fi
done
exit $status
