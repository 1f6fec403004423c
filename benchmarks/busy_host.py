#!/usr/bin/python3
"""rlpo's kernels on a busy host: each workload timed quiet and beside other programs.

Usage: /usr/bin/python3 benchmarks/busy_host.py [--build DIR] [--baseline DIR] [--torch]
                                               [--loads 0,1,2,omp2] [--reps N] [--rounds K]
                                               [--threads T] [--filter SUBSTR]

A trainer's machine is never quiet: data loading, an inference engine, the logger and other
ranks run beside the loss. Each load in `--loads` (default `0,1,C,omp2` for C cores) is started
beside the timings and stopped after them:

  * an integer L: L CPU-bound processes (`yes > /dev/null`), single-threaded busy loops;
  * `ompK`: one PyTorch program running 512 x 512 float matmuls in a loop on K threads (an
    OpenMP program competing for the same cores, as an inference engine or a second trainer
    would).

Every `vocab/` and `token/` workload of compare_pytorch.py (benchmarks/compare/*.py) runs: the
rlpo side is DIR/benchmarks/compare_* (`--reps` timed calls after one warm-up, `--rounds`
times, T threads, default the number of cores); with `--baseline B` the same binaries built
from another commit run in the same rounds, interleaved, so both see the same load; with
`--torch` PyTorch eager (the workload's own forward + backward, T threads) runs in the same
rounds too. One line per (load, workload, side) with the median and the maximum over all
calls and their ratio to the quiet median of the same side, e.g.

    load=1 vocab/jsd0.5_256x151936 side=rlpo median_ms=33.1 max_ms=55.2 median_over_quiet=1.5 ...

and, with `--torch`, `rlpo_over_torch` (rlpo's median over PyTorch's under the same load). The
last lines give the worst ratios of each side. Losing k of c cores should cost about c / (c − k)
(2x for one of two cores); the maximum shows what a trainer sees in its worst steps.
"""
import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_pytorch  # noqa: E402  (the workloads and the timing of both sides)

MATMUL_LOOP = """
import torch, sys
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
while True:
    b = a @ a
"""


def start_load(spec):
    if spec.startswith("omp"):
        return [subprocess.Popen(["/usr/bin/python3", "-c", MATMUL_LOOP, spec[3:] or "2"],
                                 stdout=subprocess.DEVNULL)]
    return [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(int(spec))]


def main():
    cores = os.cpu_count() or 2
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=compare_pytorch.BUILD)
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--torch", action="store_true", help="time PyTorch eager under each load too")
    ap.add_argument("--loads", default=f"0,1,{cores},omp2")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=cores)
    ap.add_argument("--filter", default="")
    args = ap.parse_args()
    workloads = [w for w in compare_pytorch.load_workloads()
                 if w.name.split("/")[0] in ("vocab", "token") and args.filter in w.name]
    if not workloads:
        sys.exit("busy_host: no workload matches")
    sides = [("rlpo", args.build)] + ([("before", args.baseline)] if args.baseline else [])
    for _, b in sides:
        for w in workloads:
            path = os.path.join(b, "benchmarks", w.binary)
            if not os.path.exists(path):
                sys.exit(f"busy_host: {path} missing: cmake --build {b} --target "
                         "compare_distill compare_token compare_logits")
    names = [s for s, _ in sides] + (["torch"] if args.torch else [])
    if args.torch:
        import torch
        torch.set_num_threads(args.threads)
    loads = args.loads.split(",")
    quiet, worst = {}, {}
    print(f"cores={cores} threads={args.threads} reps={args.reps} rounds={args.rounds}",
          flush=True)
    for load in loads:
        hogs = start_load(load)
        try:
            times = {(w.name, s): [] for w in workloads for s in names}
            for _ in range(args.rounds):
                for w in workloads:
                    for s, b in sides:
                        times[(w.name, s)] += compare_pytorch.run_rlpo(w, args.reps,
                                                                       args.threads, b)
                    if args.torch:
                        times[(w.name, "torch")] += compare_pytorch.run_torch(w, args.reps)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        for w in workloads:
            for s in names:
                t = times[(w.name, s)]
                med = statistics.median(t)
                if load == "0":
                    quiet[(w.name, s)] = med
                line = f"load={load} {w.name} side={s} median_ms={med:.2f} max_ms={max(t):.2f}"
                if (w.name, s) in quiet:
                    q = quiet[(w.name, s)]
                    line += f" median_over_quiet={med / q:.2f} max_over_quiet={max(t) / q:.2f}"
                    key = (s, "median_over_quiet")
                    worst[key] = max(worst.get(key, 0.0), med / q)
                if args.torch and s != "torch":
                    r = med / statistics.median(times[(w.name, "torch")])
                    line += f" {s}_over_torch={r:.3f}"
                    key = (s, "over_torch")
                    worst[key] = max(worst.get(key, 0.0), r)
                print(line, flush=True)
    for (s, what), v in sorted(worst.items()):
        print(f"worst side={s} {what}={v:.3f}")


if __name__ == "__main__":
    main()
