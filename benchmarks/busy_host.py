#!/usr/bin/python3
"""rlpo's kernels on a busy host: each workload timed quiet and beside CPU-bound processes.

Usage: /usr/bin/python3 benchmarks/busy_host.py [--build DIR] [--baseline DIR] [--loads 0,1,2]
                                               [--reps N] [--rounds K] [--threads T]
                                               [--filter SUBSTR]

A trainer's machine is never quiet: data loading, an inference engine, the logger and other
ranks run beside the loss. For each load L in `--loads` (default 0, 1 and the number of cores),
L processes of `yes > /dev/null` are started, and every workload (the rlpo side of
compare_pytorch.py: DIR/benchmarks/compare_distill and compare_token, built by
`cmake --build DIR --target compare_distill compare_token`) runs `--reps` timed calls after one
warm-up, `--rounds` times, with T threads (default: the number of cores, OMP_NUM_THREADS). With
`--baseline B` the same binaries built from another commit run in the same rounds, interleaved,
so both sides see the same load. Prints one line per (load, workload, side) with the median
and the maximum over all calls, and the ratio to the quiet median of the same side:

    load=1 vocab/jsd0.5_256x151936 side=after median_ms=33.1 max_ms=55.2 median_over_quiet=1.5

Losing k of c cores should cost about c / (c − k) (2x for one of two cores); the maximum
shows what a trainer sees in its worst steps.
"""
import argparse
import os
import statistics
import subprocess
import sys

WORKLOADS = [
    "vocab/jsd0.5_256x151936",
    "vocab/forward_kl_256x151936",
    "vocab/forward_kl_2048x32768",
    "token/ppo_dual_k3_token_mean_256x4096",
]


def binary(build, workload):
    name = "compare_distill" if workload.startswith("vocab/") else "compare_token"
    return os.path.join(build, "benchmarks", name)


def run(build, workload, reps, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([binary(build, workload), "--workload", workload, "--reps", str(reps)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return [float(line.split()[1]) for line in out.splitlines() if line.startswith("ms ")]


def main():
    cores = os.cpu_count() or 2
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.environ.get("RLPO_BENCH_BUILD_DIR", "build"))
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--loads", default=f"0,1,{cores}")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=cores)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    sides = [("after", args.build)] + ([("before", args.baseline)] if args.baseline else [])
    workloads = [w for w in WORKLOADS if args.filter in w]
    for _, b in sides:
        for w in workloads:
            if not os.path.exists(binary(b, w)):
                sys.exit(f"busy_host: {binary(b, w)} missing: cmake --build {b} "
                         "--target compare_distill compare_token")
    loads = [int(x) for x in args.loads.split(",")]
    quiet = {}
    print(f"cores={cores} threads={args.threads} reps={args.reps} rounds={args.rounds}")
    for load in loads:
        hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(load)]
        try:
            times = {(w, s): [] for w in workloads for s, _ in sides}
            for _ in range(args.rounds):
                for w in workloads:
                    for s, b in sides:
                        times[(w, s)] += run(b, w, args.reps, args.threads)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        for w in workloads:
            for s, _ in sides:
                t = times[(w, s)]
                med = statistics.median(t)
                if load == 0:
                    quiet[(w, s)] = med
                line = f"load={load} {w} side={s} median_ms={med:.2f} max_ms={max(t):.2f}"
                if (w, s) in quiet:
                    line += f" median_over_quiet={med / quiet[(w, s)]:.2f}"
                    line += f" max_over_quiet={max(t) / quiet[(w, s)]:.2f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
