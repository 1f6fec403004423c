"""Workload declaration shared by the benchmarks/compare/*.py modules."""


class Workload:
    """name: printed name (token/..., vocab/...); binary: the rlpo C++ timing binary under
    build/benchmarks/ (called with --workload NAME --reps N, prints "ms X" per repetition);
    torch_setup: a function that allocates the inputs and returns a closure doing one
    forward + backward in PyTorch eager; reps: repetitions per round on each side."""

    def __init__(self, name, binary, torch_setup, reps=5):
        self.name = name
        self.binary = binary
        self.torch_setup = torch_setup
        self.reps = reps
