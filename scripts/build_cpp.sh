#!/usr/bin/env bash
# Configures and builds the C++ side (CMakeLists.txt: gcnprune_run, gcnprune_ops) into
# build-cmake/ against the torch of the active Python (./.venv when present).
#
#   bash scripts/build_cpp.sh                 # Release build, 2 jobs
#   BUILD_DIR=/tmp/b JOBS=4 bash scripts/build_cpp.sh -DGCNPRUNE_WITH_CUDA=ON
#   TARGETS=gcnprune_run bash scripts/build_cpp.sh   # build one target only
# Extra arguments go to the cmake configure step. Needs cmake >= 3.18 and a C++20 compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then . .venv/bin/activate; fi
PY=${PYTHON:-python}
BUILD_DIR=${BUILD_DIR:-build-cmake}
JOBS=${JOBS:-${MAX_JOBS:-2}}
TORCH_PREFIX=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
# CUDA wheels of torch: find_package(Torch) needs the CUDA toolkit (see CMakeLists.txt).
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
GENERATOR=()
if command -v ninja >/dev/null 2>&1 && [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then GENERATOR=(-G Ninja); fi
cmake -S . -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" "$@"
TARGET_ARGS=()
for t in ${TARGETS:-}; do TARGET_ARGS+=(--target "$t"); done
cmake --build "$BUILD_DIR" -j "$JOBS" "${TARGET_ARGS[@]}"
echo "built into $BUILD_DIR: $(ls "$BUILD_DIR" | grep -E '^(gcnprune_run|libgcnprune_ops)' | tr '\n' ' ')"
