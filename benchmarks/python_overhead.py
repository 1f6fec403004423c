#!/usr/bin/python3
"""What the Python module adds to the C++ call, and how rlpo from Python compares with the same
loss written in PyTorch eager (forward + backward).

Usage: PYTHONPATH=build/python /usr/bin/python3 benchmarks/python_overhead.py [--threads K]

Prints, per workload, the best and the median (best/median) over repetitions of: `rlpo` (rlpo.<module>.<fn> on NumPy
views, value + gradient), `rlpo.torch` (the autograd Function, forward + backward) and `torch`
(the formula in PyTorch eager, forward + backward), in microseconds. The tiny workload shows the
fixed cost of a call (argument checks, keyword parsing, GIL release, result packing). The same
comparison against the native C++ binaries, on the large token and vocab workloads, is
`benchmarks/compare_pytorch.py --python`.
"""
import argparse
import os
import statistics
import time

import numpy as np
import torch

import rlpo
import rlpo.torch as rt


def timing(f, reps):
    """'best/median' microseconds (the best is the robust figure on a shared machine)."""
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return f"{1e6 * min(times):.1f}/{1e6 * statistics.median(times):.1f}"


def ppo_workload(B, T):
    rng = np.random.default_rng(0)
    logp = (-np.abs(rng.normal(1, 0.5, (B, T)))).astype(np.float32)
    old = (logp + 0.1 * rng.normal(size=(B, T))).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    mask = np.ones((B, T), np.float32)
    tl, to, ta, tm = map(torch.from_numpy, (logp, old, adv, mask))

    def np_call():
        rlpo.policy.ppo_clip(logp, old, adv, mask)

    def rt_call():
        x = tl.clone().requires_grad_()
        rt.ppo_clip(x, to, ta, tm).backward()

    def torch_call():
        x = tl.clone().requires_grad_()
        r = torch.exp(torch.clamp(x - to, -20, 20))
        loss = torch.maximum(-ta * r, -ta * torch.clamp(r, 0.8, 1.2))
        ((loss * tm).sum() / tm.sum()).backward()

    return np_call, rt_call, torch_call


def kl_workload(N, V):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (N, V)).astype(np.float32)
    y = rng.normal(0, 2, (N, V)).astype(np.float32)
    tz, ty = torch.from_numpy(z), torch.from_numpy(y)

    def np_call():
        rlpo.distill.divergence(z, y)

    def rt_call():
        x = tz.clone().requires_grad_()
        rt.divergence(x, ty).backward()

    def torch_call():
        x = tz.clone().requires_grad_()
        lq, lp = torch.log_softmax(x, -1), torch.log_softmax(ty, -1)
        (lp.exp() * (lp - lq)).sum(-1).mean().backward()

    return np_call, rt_call, torch_call


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    workloads = [("ppo_clip [1, 8]", ppo_workload(1, 8), 2000),
                 ("ppo_clip [64, 4096]", ppo_workload(64, 4096), 50),
                 ("forward_kl [256, 32000]", kl_workload(256, 32000), 10)]
    for name, (a, b, c), reps in workloads:
        print(f"{name}: rlpo={timing(a, reps)}us rlpo.torch={timing(b, reps)}us "
              f"torch={timing(c, reps)}us", flush=True)


if __name__ == "__main__":
    main()
