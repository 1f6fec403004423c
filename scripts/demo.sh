#!/usr/bin/env bash
# Build and run the rlpo demo: a tiny policy learns a verifiable task (the two digits of a + b)
# with GRPO through rlpo's training step. Extra flags go to the demo (try --help, --compare,
# --objective ppo). Writes build/demo/metrics.csv and build/demo/demo.png.
#   scripts/demo.sh --ranks N [flags]   the same training data-parallel under mpirun -np N
#                                       (N = 1, 2 or 4; rlpo_demo_mpi, needs MPI): each rank
#                                       trains on its blocks of every mini-batch, gradients
#                                       all-gathered; writes build/demo-ranksN/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
ranks=""
if [ "${1:-}" = "--ranks" ]; then
  ranks=${2:?"--ranks needs a number of ranks (1, 2 or 4)"}
  shift 2
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
if [ -n "$ranks" ]; then
  cmake --build build -j"$(nproc 2>/dev/null || echo 2)" --target rlpo_demo_mpi
  # root may run mpirun (containers); --oversubscribe: more ranks than cores is allowed
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
  mpirun --oversubscribe -np "$ranks" ./build/examples/rlpo_demo_mpi --out "build/demo-ranks$ranks" "$@"
  exit
fi
cmake --build build -j"$(nproc 2>/dev/null || echo 2)" --target rlpo_demo rlpo_quickstart
./build/examples/rlpo_demo --out build/demo "$@"
