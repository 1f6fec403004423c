#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz, clang-14 with ASan + UBSan) in build-fuzz/ and run
# each one for a while, starting from its seed corpus.
#   scripts/fuzz.sh [seconds] [targets...]   default: 600 s each, every target
# Prints per target the total execs and execs/s (libFuzzer's -print_final_stats=1); exits
# non-zero when a target found a violation (the reproducer is in build-fuzz/artifacts/<target>/).
# Extra environment: RLPO_FUZZ_SEED (libFuzzer -seed, default 1), RLPO_FUZZ_JOBS (build jobs,
# default 2), RLPO_FUZZ_DIR (build directory, default build-fuzz), RLPO_FUZZ_BUILD_ONLY=1
# (build, run nothing).
# Inputs that reach new code are added to build-fuzz/corpus/<target>/ (never to the repo's seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
all=(policy_loss kl_penalty entropy distill_dense distill_sparse rollout train_step preference)
secs=${1:-600}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

# clang-14 and its runtime libraries (libFuzzer, sanitizers)
if ! command -v clang++-14 >/dev/null ||
  ! ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "rlpo: installing clang-14 libclang-rt-14-dev"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    clang-14 libclang-rt-14-dev >/dev/null
fi
dpkg-query -W -f='${Status}' libeigen3-dev 2>/dev/null | grep -q "install ok installed" ||
  bash scripts/deps.sh

dir=${RLPO_FUZZ_DIR:-build-fuzz}
# -O1 without NDEBUG: Eigen's assertions stay on (an empty-matrix reduction aborts).
cmake -S . -B "$dir" -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS_RELEASE="-O1" -DRLPO_BUILD_FUZZ=ON -DRLPO_USE_OPENMP=OFF \
  -DRLPO_BUILD_TESTS=OFF -DRLPO_BUILD_EXAMPLES=OFF -DRLPO_BUILD_BENCHMARKS=OFF \
  -DRLPO_INSTALL=OFF -DRLPO_BUILD_TORCH=OFF >/dev/null
start=$(date +%s)
cmake --build "$dir" -j"${RLPO_FUZZ_JOBS:-2}" --target "${targets[@]/#/fuzz_}"
echo "fuzz: built ${#targets[@]} target(s) in $(($(date +%s) - start)) s"
[ "${RLPO_FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

failed=()
summary=()
for t in "${targets[@]}"; do
  mkdir -p "$dir/corpus/$t" "$dir/artifacts/$t"
  log="$dir/fuzz_$t.log"
  echo "=== fuzz_$t: ${secs} s"
  rc=0
  "$dir/tests/fuzz/fuzz_$t" -max_total_time="$secs" -seed="${RLPO_FUZZ_SEED:-1}" \
    -print_final_stats=1 -timeout=25 -rss_limit_mb=2048 \
    -artifact_prefix="$dir/artifacts/$t/" "$dir/corpus/$t" "tests/fuzz/corpus/$t" \
    >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  line=$(printf '%-16s %10s execs %8s execs/s' "$t" "${execs:-?}" "${rate:-?}")
  if [ $rc -ne 0 ]; then
    failed+=("$t")
    line="$line  FAILED (rc $rc)"
    sed -n '/RULE VIOLATED/,/end of case/p' "$log" | head -60
    grep -E '^SUMMARY|Test unit written' "$log" || tail -20 "$log"
  fi
  grep -E '^fuzz: skipping known issue' "$log" || true
  echo "$line"
  summary+=("$line")
done
echo "=== fuzz summary (${secs} s per target, seed ${RLPO_FUZZ_SEED:-1})"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: violations in ${failed[*]} (reproducers under $dir/artifacts/)"
  exit 1
fi
