#!/usr/bin/env bash
# The README's main command: installs dependencies, builds (Release, into build/), and runs the
# built-in quickstart pipeline end to end into runs/quickstart (override with RUN_DIR=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
GEN=""
if command -v ninja >/dev/null; then GEN="-G Ninja"; fi
cmake -S . -B build $GEN -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
RUN_DIR="${RUN_DIR:-runs/quickstart}"
./build/rlhf pipeline run examples/quickstart/pipeline.pbtxt --run-dir "$RUN_DIR" "$@"
echo "summary: $RUN_DIR/summary.json    report: $RUN_DIR/report.html"
