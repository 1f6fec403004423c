#!/usr/bin/python3
"""Side-by-side timing of rlpo and PyTorch eager (forward + backward) on the same work.

Usage: /usr/bin/python3 benchmarks/compare_pytorch.py [--filter SUBSTR] [--rounds N] [--threads K]
                                                   [--baseline BUILD_DIR] [--no-torch]
                                                   [--python]

Workloads are declared in benchmarks/compare/*.py (one module per area: token/, vocab/, ...);
each module exposes WORKLOADS, a list of `Workload` objects (see benchmarks/compare/common.py).
For every workload the rlpo side is a C++ binary built from benchmarks/ that prints one line
"ms <milliseconds>" per repetition; the torch side is a Python closure timed here. Both run with
the same number of threads (default 2), interleaved round by round so that machine noise hits
both alike. The script builds the binaries it needs (cmake, Release, in build/) when they are
missing, then prints one line per workload

    NAME rlpo_ms=X torch_ms=Y speedup=Z

(medians over all repetitions) and a last line `min_speedup=Z`.

`--baseline BUILD_DIR` adds a third side: the same binaries built from another commit (e.g. a
worktree of the commit before a refactor, built with `cmake --build BUILD_DIR --target
compare_distill compare_token`), run in the same rounds, interleaved with the two others; each
line then also carries `base_ms=B after_over_base=R` (R > 1: the current build is slower), and
the last line `max_after_over_base=R`. `--no-torch` leaves the PyTorch side out (a paired
before/after run of rlpo alone). Workloads the baseline's binary does not know are skipped.

`--python` adds the Python-binding path for the workloads that declare one (one token workload,
token/ppo_dual_k3_token_mean_256x4096, and one vocab workload, vocab/forward_kl_2048x32768):
the same work done by rlpo through its Python module (`rlpo.torch` autograd Functions over the
same tensors, forward + backward), timed here like the torch side, in the same rounds. Lines
then carry `py_ms=P py_over_native=R` (R: rlpo via Python over rlpo native; the overhead of
going through Python) and `torch_over_py=S` (PyTorch eager over rlpo via Python); the module is
imported from BUILD/python (built with the `rlpo_python` target when missing). Workloads
without a Python path are skipped under `--python`. The fixed cost of one small call (argument
checks, keyword parsing, result packing, in microseconds) is benchmarks/python_overhead.py's.
"""
import argparse
import glob
import importlib.util
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("RLPO_BENCH_BUILD_DIR", os.path.join(ROOT, "build"))
# appended, not prepended: a workload module must never shadow a standard module
sys.path.append(os.path.join(HERE, "compare"))


def load_workloads():
    out = []
    for path in sorted(glob.glob(os.path.join(HERE, "compare", "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name == "common":
            continue
        spec = importlib.util.spec_from_file_location("rlpo_compare_" + name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        out.extend(getattr(mod, "WORKLOADS", []))
    return out


def ensure_built(binaries):
    missing = [b for b in binaries if not os.path.exists(os.path.join(BUILD, "benchmarks", b))]
    if not missing:
        return
    if not os.path.exists(os.path.join(BUILD, "CMakeCache.txt")):
        subprocess.check_call(["cmake", "-S", ROOT, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release",
                               "-DRLPO_BUILD_BENCHMARKS=ON"], stdout=subprocess.DEVNULL)
    subprocess.check_call(["cmake", "--build", BUILD, "-j2", "--target"] + missing)


def run_rlpo(w, reps, threads, build=BUILD):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [os.path.join(build, "benchmarks", w.binary), "--workload", w.name, "--reps", str(reps)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return [float(line.split()[1]) for line in out.splitlines() if line.startswith("ms ")]


def ensure_python_module():
    if not os.path.exists(os.path.join(BUILD, "python", "rlpo", "__init__.py")):
        subprocess.check_call(["cmake", "--build", BUILD, "-j2", "--target", "rlpo_python"])
    sys.path.insert(0, os.path.join(BUILD, "python"))


def run_torch(w, reps, setup=None):
    import torch
    step = (setup or w.torch_setup)()
    step()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    del step
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filter", default="")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", default="", help="build dir of another commit, run alongside")
    ap.add_argument("--no-torch", action="store_true", help="leave the PyTorch side out")
    ap.add_argument("--python", action="store_true",
                    help="add rlpo via its Python module (workloads that declare that path)")
    args = ap.parse_args()
    if not args.no_torch:
        import torch
        torch.set_num_threads(args.threads)
    workloads = [w for w in load_workloads() if args.filter in w.name]
    if args.python:
        workloads = [w for w in workloads if w.python_setup is not None]
    if not workloads:
        sys.exit("no workloads match")
    ensure_built(sorted({w.binary for w in workloads}))
    if args.python:
        ensure_python_module()
    speedups, ratios = [], []
    for w in workloads:
        base = args.baseline and os.path.join(args.baseline, "benchmarks", w.binary)
        if base and not os.path.exists(base):
            print("%s skipped: %s missing" % (w.name, base), flush=True)
            continue
        r_all, t_all, b_all, p_all = [], [], [], []
        try:
            for _ in range(args.rounds):
                r_all += run_rlpo(w, w.reps, args.threads)
                if base:
                    b_all += run_rlpo(w, w.reps, args.threads, args.baseline)
                if not args.no_torch:
                    t_all += run_torch(w, w.reps)
                if args.python:
                    p_all += run_torch(w, w.reps, w.python_setup)
        except subprocess.CalledProcessError:
            print("%s skipped: the baseline does not run it" % w.name, flush=True)
            continue
        r = statistics.median(r_all)
        line = "%s rlpo_ms=%.3f" % (w.name, r)
        if not args.no_torch:
            t = statistics.median(t_all)
            speedups.append(t / r)
            line += " torch_ms=%.3f speedup=%.1f" % (t, t / r)
        if args.python:
            p = statistics.median(p_all)
            line += " py_ms=%.3f py_over_native=%.3f" % (p, p / r)
            if not args.no_torch:
                line += " torch_over_py=%.1f" % (statistics.median(t_all) / p)
        if base:
            b = statistics.median(b_all)
            ratios.append(r / b)
            line += " base_ms=%.3f after_over_base=%.3f" % (b, r / b)
        print(line, flush=True)
    if speedups:
        print("min_speedup=%.1f" % min(speedups))
    if ratios:
        print("max_after_over_base=%.3f" % max(ratios))


if __name__ == "__main__":
    main()
