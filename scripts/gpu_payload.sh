#!/usr/bin/env bash
# Prepares gpu_payload/ (git-ignored), what scripts/gpu_check.sh needs on a bare GPU machine:
#   gpu_payload/wheels/   pure-Python wheels for CPython 3.12 / manylinux x86-64: torch-pruning
#                         (missing from the GPU image) and fallbacks for the test tools (pytest,
#                         hypothesis, xdist, tqdm and their deps), installed there only if missing
#   gpu_payload/cifar10/  train.npz + test.npz (CIFAR-10 as JPEG npz, ~54 MiB) from ../shared
# and checks that everything that travels (tracked + untracked-not-ignored files + gpu_payload)
# stays under the device tool's 64 MiB limit.
#
#   bash scripts/gpu_payload.sh              # wheels + data
#   bash scripts/gpu_payload.sh --no-data    # wheels only (the headline then uses synthetic data)
# Env: CIFAR10_SRC (default ../shared/data/cifar10), PYTHON (default .venv/bin/python or python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=1
for a in "$@"; do
  case "$a" in
    --no-data) DATA=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
PAY=$ROOT/gpu_payload
mkdir -p "$PAY/wheels"

# Pinned like requirements.txt (torch-pruning); the rest are fallbacks (the image has them).
WHEELS=(
  torch-pruning==1.6.1
  pytest pluggy iniconfig packaging
  hypothesis sortedcontainers attrs
  pytest-xdist execnet
  tqdm
)
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
echo "[gpu_payload] downloading wheels for CPython 3.12 manylinux x86-64 into gpu_payload/wheels"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" -d "$PAY/wheels" "${WHEELS[@]}"
# Keep one version per project (two would stop pip's install): newest file wins.
"$PY" - "$PAY/wheels" <<'PYEOF'
import os, re, sys
d = sys.argv[1]
seen = {}
for f in sorted(os.listdir(d), key=lambda f: os.path.getmtime(os.path.join(d, f)), reverse=True):
    if not f.endswith(".whl"):
        continue
    name = re.sub(r"[-_.]+", "-", f.split("-")[0]).lower()
    if name in seen:
        os.remove(os.path.join(d, f))
        print(f"[gpu_payload] removed older duplicate {f} (keeping {seen[name]})")
    else:
        seen[name] = f
PYEOF

if [ "$DATA" = 1 ]; then
  SRC=${CIFAR10_SRC:-$ROOT/../shared/data/cifar10}
  if [ -f "$SRC/train.npz" ] && [ -f "$SRC/test.npz" ]; then
    mkdir -p "$PAY/cifar10"
    for f in train.npz test.npz; do
      if ! cmp -s "$SRC/$f" "$PAY/cifar10/$f"; then cp "$SRC/$f" "$PAY/cifar10/$f"; fi
    done
    chmod -R u+w "$PAY/cifar10"
  else
    echo "[gpu_payload] WARNING: no CIFAR-10 npz under $SRC; the headline will use synthetic data" >&2
  fi
fi

# Size of everything that travels: tracked + untracked-not-ignored files, plus the carried folder.
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | \
               xargs -0 -r stat -c %s 2>/dev/null || true) | awk '{s+=$1} END {print s+0}')
pay_bytes=$(find "$PAY" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
total=$((tree_bytes + pay_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "[gpu_payload] wheels:"
ls -1 "$PAY/wheels" | sed 's/^/    /'
echo "[gpu_payload] working tree $(mib "$tree_bytes") MiB + gpu_payload $(mib "$pay_bytes") MiB" \
     "= $(mib "$total") MiB carried (limit 64 MiB)"
if [ "$total" -gt $((63 * 1048576)) ]; then
  echo "[gpu_payload] ERROR: over the 64 MiB the device tool carries (keep 1 MiB of margin);" \
       "use --no-data or remove untracked files" >&2
  exit 1
fi
