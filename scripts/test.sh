#!/usr/bin/env bash
# Build and run the whole rlpo test suite (unit, differential vs PyTorch, consumer routes).
#   scripts/test.sh              Release build in build/, all tests
#   scripts/test.sh --sanitize   ASan + UBSan build in build-asan/ (consumer routes and the
#                                fixed-ISA kernel variants skipped; the mpirun tests, label mpi,
#                                run with LeakSanitizer off: Open MPI's runtime leaks by design)
# The mpirun tests (label mpi) are part of both runs when MPI is installed (deps.sh installs it).
# Extra environment: CXX (compiler), RLPO_CXX_STANDARD (17 or 20), RLPO_BUILD_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
std=${RLPO_CXX_STANDARD:-17}
if [ "${1:-}" = "--sanitize" ]; then
  dir=${RLPO_BUILD_DIR:-build-asan}
  # -g1 (line tables: the sanitizers' reports keep file and line) compiles about a fifth
  # faster than Debug's -g and writes a third of the object size; -Og instead of -O1 halves
  # the compile time of an instrumented test (41 -> 20 s of CPU for policy/policy_loss) and
  # leaves the heaviest test's run time about as it was (distill/divergences_pipeline: 79-103 s
  # against 82 s), as the kernels' hot loops are always-inline or flattened either way
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_STANDARD="$std" \
    -DRLPO_BUILD_BENCHMARKS=OFF -DRLPO_BUILD_EXAMPLES=ON -DRLPO_TEST_CONSUMERS=OFF \
    -DRLPO_TEST_ISA_VARIANTS=OFF -DRLPO_BUILD_TORCH=OFF -DCMAKE_CXX_FLAGS_DEBUG="-g1" \
    -DCMAKE_CXX_FLAGS="-Og -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
  label="-LE slow"
else
  dir=${RLPO_BUILD_DIR:-build}
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_STANDARD="$std" \
    -DRLPO_BUILD_BENCHMARKS=ON -DRLPO_BUILD_EXAMPLES=ON >/dev/null
  label=""
fi
cmake --build "$dir" -j"$jobs"
cd "$dir"
# shellcheck disable=SC2086
ctest --output-on-failure -j"$jobs" $label
