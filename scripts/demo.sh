#!/usr/bin/env bash
# Build and run the rlpo demo (until the training demo lands: the quick-start example).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)" --target rlpo_quickstart
./build/examples/rlpo_quickstart "$@"
