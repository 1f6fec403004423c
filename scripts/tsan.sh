#!/usr/bin/env bash
# ThreadSanitizer over rlpo's thread pool and its heaviest user: tests/core/threads.cpp (teams
# whoever comes, barriers, exceptions across members, concurrent callers, the long-row split
# and its fallback) at 2 and 3 threads, and tests/distill/divergences_pipeline.cpp (the
# vocabulary kernels' row split with its per-step barriers, forced fallbacks, every kind) at 3
# threads, built with -fsanitize=thread. Two test cases of the first are left out: the one
# inside the caller's own OpenMP region (libgomp is not instrumented, so its synchronisation
# is invisible to the sanitizer) and the forked child (the sanitizer does not support fork in
# a multithreaded process).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${RLPO_TSAN_DIR:-build-tsan}
mkdir -p "$out"
catch_flags=()
if [ -f /usr/include/catch2/catch_all.hpp ]; then
  catch_flags=(-DRLPO_CATCH_V3 -lCatch2Main -lCatch2)
fi
build() {
  ${CXX:-g++} -std=c++17 -O1 -g -fsanitize=thread -fopenmp -DRLPO_USE_OPENMP \
    -Itests -Iinclude -I/usr/include/eigen3 "$1" tests/support/main.cpp \
    -o "$out/$2" -lfmt "${catch_flags[@]}"
}
build tests/core/threads.cpp test_core_threads_tsan
build tests/distill/divergences_pipeline.cpp test_distill_divergences_pipeline_tsan
for t in 2 3; do
  echo "--- $t threads"
  TSAN_OPTIONS="halt_on_error=1 exitcode=66" OMP_NUM_THREADS=$t \
    "$out/test_core_threads_tsan" "~*caller's parallel region*" "~*fork*"
done
echo "--- the row split, 3 threads"
TSAN_OPTIONS="halt_on_error=1 exitcode=66" OMP_NUM_THREADS=3 \
  "$out/test_distill_divergences_pipeline_tsan"
