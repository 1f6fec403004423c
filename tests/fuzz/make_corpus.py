#!/usr/bin/env python3
"""Write the seed corpus of every fuzz target: tests/fuzz/corpus/<target>/seed-NN.

The targets decode their input with libFuzzer's FuzzedDataProvider (choices from the end of
the input, values from the front), so any bytes are a valid case; the seeds are
deterministic pseudo-random inputs of several lengths plus a few patterns (all zero, all
0xff, ramps), enough to start every target on small and larger shapes. Stdlib only;
re-running it rewrites the same files.
"""
import os
import random

TARGETS = ["policy_loss", "kl_penalty", "entropy", "distill_dense", "distill_sparse",
           "rollout", "train_step", "preference"]
LENGTHS = [4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048]


def seeds(target):
    rng = random.Random("rlpo-fuzz-" + target)
    out = [bytes(64), b"\xff" * 64, bytes(range(256)), bytes(range(255, -1, -1))]
    for n in LENGTHS:
        for _ in range(2):
            out.append(bytes(rng.getrandbits(8) for _ in range(n)))
    # small bytes only (ordinary values, small shapes, first table rows)
    for n in (64, 256, 1024):
        out.append(bytes(rng.randrange(0, 16) for _ in range(n)))
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    for t in TARGETS:
        d = os.path.join(root, t)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if f.startswith("seed-"):
                os.remove(os.path.join(d, f))
        for k, data in enumerate(seeds(t)):
            with open(os.path.join(d, "seed-%02d" % k), "wb") as fh:
                fh.write(data)


if __name__ == "__main__":
    main()
