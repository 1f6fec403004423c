#!/usr/bin/python3
"""Thread scaling of rlpo's vocabulary kernels: each kernel at 1, 2, ..., nproc threads.

Usage: /usr/bin/python3 benchmarks/thread_scaling.py [--build DIR] [--threads 1,2,4]
                                                      [--rounds K] [--filter REGEX]
                                                      [--min-time SECONDS]

Runs the Google Benchmarks of bench_distill (the distillation divergences and the vocabulary
penalties), bench_logits (the fused log-prob call), bench_token (the token-level PPO + k3 call
of the comparison's `token/` workload) and bench_step (the GRPO training step) from
DIR/benchmarks (build them with `cmake --build DIR --target bench_distill bench_logits
bench_token bench_step`, RLPO_BENCH_NATIVE on) once per thread
count and round, the thread counts interleaved within each round so that all of them see the
same machine. For every kernel it prints, per thread count, the median time over the rounds
(of each run's median call where the benchmark reports one, `median_ms`),
the speed-up over one thread and the median roofline counters (the call's bytes per second over
the bandwidth of a triad pass run just before each call in the same process, with the same
threads: the ordinary triad, then the streamed one, whose streaming stores write as the kernels
write their gradients: see benchmarks/bench_bandwidth.cpp), as a Markdown table, and in its
last rows the two triad bandwidths at each count:

    | kernel | 1 thread | 2 threads | ...
    | BM_distill_forward_kl/2048/32768 | 27.1 ms (1.00×, 0.52 / 0.40) | 14.0 ms (1.94×, 0.97 / 0.75) | ...

A kernel that is bound by memory stops scaling once its streamed roofline nears 1; one that is
bound by arithmetic keeps scaling with the cores until it meets the bandwidth.
"""
import argparse
import json
import os
import re
import statistics
import subprocess

BINARIES = ["bench_distill", "bench_logits", "bench_token", "bench_step"]


def run(build, binary, threads, regex, min_time):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(
        [os.path.join(build, "benchmarks", binary), f"--benchmark_filter={regex}",
         f"--benchmark_min_time={min_time}", "--benchmark_format=json"],
        env=env, check=True, capture_output=True, text=True).stdout
    res = {}
    if not out.strip():  # no benchmark of this binary matches the filter
        return res
    for b in json.loads(out)["benchmarks"]:
        if b.get("run_type", "iteration") != "iteration":
            continue
        name = b["name"].replace("/real_time", "")
        if name.startswith("BM_bandwidth"):
            continue
        # the median call where the benchmark reports one (the time column is the mean over
        # the iterations, with the first call's page faults in it)
        ms = b.get("median_ms") or (
            b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]])
        name = re.sub(r"/iterations:\d+", "", name)  # (bench_step fixes its iteration count)
        res[name] = (ms, b.get("roofline"), b.get("roofline_nt"), b.get("triad_GBps"),
                     b.get("triad_nt_GBps"))
    return res


def main():
    cores = os.cpu_count() or 2
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.environ.get("RLPO_BENCH_BUILD_DIR", "build"))
    ap.add_argument("--threads", default=",".join(str(t) for t in range(1, cores + 1)))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--filter", default="BM_distill|BM_penalty|BM_token_logps_vjp|"
                    "BM_ppo_dual_k3_token_mean<float>|BM_grpo_advantage_and_step")
    ap.add_argument("--min-time", default="0.5")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    times, roofs, triads = {}, {}, {}
    for _ in range(args.rounds):
        for t in threads:
            for binary in BINARIES:
                for name, (ms, roof, roof_nt, triad, triad_nt) in run(
                        args.build, binary, t, args.filter, args.min_time).items():
                    times.setdefault(name, {}).setdefault(t, []).append(ms)
                    if roof is not None:
                        roofs.setdefault(name, {}).setdefault(t, []).append((roof, roof_nt))
                    if triad is not None:
                        triads.setdefault(t, []).append((triad, triad_nt))
    print("| kernel | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads) + " |")
    print("|---" * (len(threads) + 1) + "|")
    for name, per in times.items():
        base = statistics.median(per[threads[0]]) if threads[0] in per else None
        cells = []
        for t in threads:
            if t not in per:
                cells.append("–")
                continue
            ms = statistics.median(per[t])
            speed = f"{base / ms:.2f}×" if base else "–"
            roof = roofs.get(name, {}).get(t)
            if roof:
                r = statistics.median(x for x, _ in roof)
                rn = statistics.median(y for _, y in roof)
                cells.append(f"{ms:.1f} ms ({speed}, {r:.2f} / {rn:.2f})")
            else:
                cells.append(f"{ms:.1f} ms ({speed})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for label, i in (("triad", 0), ("streamed triad", 1)):
        print(f"| {label} bandwidth (median beside the calls) | " + " | ".join(
            f"{statistics.median(x[i] for x in triads[t]):.1f} GB/s" if t in triads else "–"
            for t in threads) + " |")


if __name__ == "__main__":
    main()
