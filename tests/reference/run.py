#!/usr/bin/python3
"""Differential-test driver: rlpo's C++ tests write cases, this computes PyTorch references.

Usage: /usr/bin/python3 run.py MODULE IN OUT

MODULE names a file beside this one (policy.py, penalties.py, ...) whose functions take
(inputs: dict[str, torch.Tensor], params: dict[str, torch.Tensor], strings: dict[str, str])
and return dict[str, torch.Tensor | float]. Every reference computes in float64 (the exact
answer for the given, possibly float-rounded, inputs) and takes gradients with autograd of an
independently written formula. The exchange format is documented in
tests/support/torch_reference.hpp. Any failure, including a missing torch, exits non-zero.
"""
import importlib
import os
import struct
import sys

try:
    import torch
except ImportError as exc:  # a missing torch is a failure, not a skip
    sys.stderr.write("torch is required for the differential tests (apt-get install python3-torch): %s\n" % exc)
    sys.exit(3)

torch.set_num_threads(1)


def read_cases(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:7] != b"RLPOX1\n":
        raise ValueError("bad magic")
    pos = 7
    (n,) = struct.unpack_from("<I", data, pos)
    pos += 4
    cases = {}
    for _ in range(n):
        kind = data[pos]
        pos += 1
        (ln,) = struct.unpack_from("<I", data, pos)
        pos += 4
        name = data[pos:pos + ln].decode()
        pos += ln
        if kind == 0:
            rows, cols = struct.unpack_from("<QQ", data, pos)
            pos += 16
            vals = struct.unpack_from("<%dd" % (rows * cols), data, pos)
            pos += 8 * rows * cols
            value = torch.tensor(vals, dtype=torch.float64).reshape(rows, cols)
        else:
            (sl,) = struct.unpack_from("<I", data, pos)
            pos += 4
            value = data[pos:pos + sl].decode()
            pos += sl
        case, _, rest = name.partition("/")
        c = cases.setdefault(int(case), {"in": {}, "p": {}, "s": {}})
        if rest in ("fn", "dtype"):
            c[rest] = value
        else:
            group, _, key = rest.partition("/")
            c[group][key] = value
    return cases


def write_outputs(path, outputs):
    with open(path, "wb") as f:
        f.write(b"RLPOX1\n")
        f.write(struct.pack("<I", len(outputs)))
        for name, t in outputs:
            t = torch.as_tensor(t, dtype=torch.float64).detach()
            if t.dim() == 0:
                t = t.reshape(1, 1)
            elif t.dim() == 1:
                t = t.reshape(-1, 1)
            enc = name.encode()
            f.write(b"\x00")
            f.write(struct.pack("<I", len(enc)))
            f.write(enc)
            f.write(struct.pack("<QQ", t.shape[0], t.shape[1]))
            f.write(struct.pack("<%dd" % t.numel(), *t.reshape(-1).tolist()))


def main():
    module_name, in_path, out_path = sys.argv[1:4]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    module = importlib.import_module(module_name)
    cases = read_cases(in_path)
    outputs = []
    for idx in sorted(cases):
        c = cases[idx]
        fn = getattr(module, c["fn"])
        params = {k: v for k, v in c["p"].items()}
        result = fn(c["in"], params, c["s"])
        for key, val in result.items():
            outputs.append(("%d/%s" % (idx, key), val))
    write_outputs(out_path, outputs)


if __name__ == "__main__":
    main()
