#!/usr/bin/env bash
# Creates ./.venv (if missing), installs the pinned dependencies and builds gcnprune_fast in place
# (CUDA kernels too when a CUDA toolkit is present; GCNPRUNE_CUDA=0 forces CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip "setuptools>=64" wheel
python -m pip install -q -r requirements-dev.txt
export CFLAGS="${CFLAGS:--g0}"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if python -m pip show -q gcnprune_fast >/dev/null 2>&1; then
  # Already installed (editable): an incremental ninja rebuild of what changed is enough.
  python setup.py -q build_ext --inplace
else
  # First time: editable install (registers the package and the `gcnprune` console script).
  python -m pip install -q -e . --no-build-isolation --no-deps
fi
python -c "import gcnprune_fast.ops as o; print('gcnprune_fast native kernels:', o.native_available())"
