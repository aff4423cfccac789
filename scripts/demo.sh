#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: `gcnprune demo` (extra arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
gcnprune demo "$@"
