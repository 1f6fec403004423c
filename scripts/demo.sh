#!/usr/bin/env bash
# Build and run the rlpo demo: a tiny policy learns a verifiable task (the two digits of a + b)
# with GRPO through rlpo's training step. Extra flags go to the demo (try --help, --compare,
# --objective ppo). Writes build/demo/metrics.csv and build/demo/demo.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)" --target rlpo_demo rlpo_quickstart
./build/examples/rlpo_demo --out build/demo "$@"
