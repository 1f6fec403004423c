#!/usr/bin/env bash
# Peak resident memory of one forward-KL value + gradient at N = 2048, V = 32768 (float),
# rlpo versus PyTorch eager, each measured with /usr/bin/time -v in its own process.
# inputs + gradient = 3 × N × V × 4 bytes = 768 MiB is the floor any implementation needs.
#
# Usage: benchmarks/peak_memory.sh [BUILD_DIR]   (BUILD_DIR holds benchmarks/compare_distill;
#        default build/, built by compare_pytorch.py or `cmake --build BUILD_DIR --target
#        compare_distill`)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/../build}"
N=2048
V=32768
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
floor_kib=$(( 3 * N * V * 4 / 1024 ))

peak() {  # prints the peak RSS in KiB of the command
    /usr/bin/time -v "$@" 2>&1 >/dev/null | awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}'
}

rlpo_kib=$(peak "$build/benchmarks/compare_distill" --workload "vocab/forward_kl_${N}x${V}" --reps 1)
torch_kib=$(peak /usr/bin/python3 -c "
import sys
import torch  # before the compare/ folder joins sys.path (its modules must not shadow stdlib ones)
sys.path.append('$here/compare')
import vocab
torch.set_num_threads($OMP_NUM_THREADS)
step = [w for w in vocab.WORKLOADS if w.name == 'vocab/forward_kl_${N}x${V}'][0].torch_setup()
step(); step()
")
awk -v f="$floor_kib" -v r="$rlpo_kib" -v t="$torch_kib" 'BEGIN {
    printf "inputs+gradient_MiB=%.0f\n", f / 1024
    printf "rlpo_peak_MiB=%.0f ratio=%.2f\n", r / 1024, r / f
    printf "torch_peak_MiB=%.0f ratio=%.2f\n", t / 1024, t / f
}'
