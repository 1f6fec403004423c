#!/usr/bin/env bash
# ThreadSanitizer over rlpo's thread pool: tests/core/threads.cpp (teams whoever comes,
# barriers, exceptions across members, concurrent callers, the long-row split and its
# fallback) built with -fsanitize=thread and run at 2 and 3 threads. Two test cases are left
# out: the one inside the caller's own OpenMP region (libgomp is not instrumented, so its
# synchronisation is invisible to the sanitizer) and the forked child (the sanitizer does not
# support fork in a multithreaded process).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${RLPO_TSAN_DIR:-build-tsan}
mkdir -p "$out"
catch_flags=()
if [ -f /usr/include/catch2/catch_all.hpp ]; then
  catch_flags=(-DRLPO_CATCH_V3 -lCatch2Main -lCatch2)
fi
${CXX:-g++} -std=c++17 -O1 -g -fsanitize=thread -fopenmp -DRLPO_USE_OPENMP \
  -Itests -Iinclude -I/usr/include/eigen3 tests/core/threads.cpp tests/support/main.cpp \
  -o "$out/test_core_threads_tsan" -lfmt "${catch_flags[@]}"
for t in 2 3; do
  echo "--- $t threads"
  TSAN_OPTIONS="halt_on_error=1 exitcode=66" OMP_NUM_THREADS=$t \
    "$out/test_core_threads_tsan" "~*caller's parallel region*" "~*fork*"
done
