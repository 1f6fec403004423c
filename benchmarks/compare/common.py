"""Workload declaration shared by the benchmarks/compare/*.py modules."""


class Workload:
    """name: printed name (token/..., vocab/...); binary: the rlpo C++ timing binary under
    build/benchmarks/ (called with --workload NAME --reps N, prints "ms X" per repetition);
    torch_setup: a function that allocates the inputs and returns a closure doing one
    forward + backward in PyTorch eager; reps: repetitions per round on each side;
    python_setup (optional): the same, but the same work done by rlpo through its Python module
    (rlpo.torch autograd Functions on the same tensors), for compare_pytorch.py --python."""

    def __init__(self, name, binary, torch_setup, reps=5, python_setup=None):
        self.name = name
        self.binary = binary
        self.torch_setup = torch_setup
        self.reps = reps
        self.python_setup = python_setup
