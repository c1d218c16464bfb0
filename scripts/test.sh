#!/usr/bin/env bash
# Installs dependencies, configures, builds from scratch (into build/) and runs the test suite.
# This is the README's test command and what CI runs. RLHF_WERROR=ON (set by .ci/run) makes
# compiler warnings errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
GEN=""
if command -v ninja >/dev/null; then GEN="-G Ninja"; fi
cmake -S . -B build $GEN -DCMAKE_BUILD_TYPE=Release -DRLHF_WERROR="${RLHF_WERROR:-OFF}"
cmake --build build -j"$(nproc)"
cd build
RLHF_NO_PROGRESS=1 ctest --output-on-failure -j"$(nproc)" "$@"
