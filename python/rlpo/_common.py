"""Shared pieces of the Python layer: torch CPU tensors to NumPy views, and the Result."""

import functools
import sys

import numpy as np

from . import _rlpo

NumericalError = _rlpo.NumericalError


class Result:
    """What every objective returns: ``value`` (float), ``grad`` (the gradient, an array of the
    differentiable input's shape and dtype, the ``out=`` buffer when one was given, or None with
    ``compute_grad=False``) and ``metrics`` (dict of the metrics, named as verl / TRL log them)."""

    __slots__ = ("value", "grad", "metrics")

    def __init__(self, value, grad, metrics):
        self.value = value
        self.grad = grad
        self.metrics = metrics

    def __iter__(self):
        return iter((self.value, self.grad, self.metrics))

    def __repr__(self):
        shape = None if self.grad is None else tuple(self.grad.shape)
        return f"Result(value={self.value!r}, grad=<shape {shape}>, metrics={self.metrics!r})"


def _is_tensor(x):
    torch = sys.modules.get("torch")  # never imports torch itself
    return torch is not None and isinstance(x, torch.Tensor)


def as_array(x, name, fn):
    """A NumPy view of a torch CPU tensor (shares memory), anything else unchanged (the
    compiled core checks the dtype and the layout)."""
    if not _is_tensor(x):
        return x
    if x.device.type != "cpu":
        raise ValueError(
            f"rlpo.{fn}: {name}: tensors on device '{x.device}' are not supported "
            "(rlpo reads CPU memory in place; move it with .cpu())")
    if x.dtype not in _TORCH_FLOATS():
        raise TypeError(f"rlpo.{fn}: {name}: expected dtype float32 or float64, given {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(
            f"rlpo.{fn}: {name}: must be C-contiguous (rlpo reads it in place; call .contiguous())")
    return x.detach().numpy()


@functools.lru_cache(maxsize=None)
def _TORCH_FLOATS():
    torch = sys.modules["torch"]
    return (torch.float32, torch.float64)


# keyword arguments that may be tensors (read as NumPy views)
_ARRAY_KEYWORDS = ("out", "is_weights", "old_logp", "chosen_lengths", "rejected_lengths",
                   "pair_weights", "group_ids")


def wrap(core, fn, arrays, result=True):
    """A Python function over `core` that turns the named array arguments (and ``out``) from
    torch tensors into NumPy views and wraps the (value, grad, metrics) tuple as a Result."""

    @functools.wraps(core)
    def f(*args, **kwargs):
        args = [as_array(a, arrays[i] if i < len(arrays) else f"argument {i}", fn)
                for i, a in enumerate(args)]
        out = kwargs.get("out")
        for k, v in kwargs.items():
            if k in arrays or k in _ARRAY_KEYWORDS:
                kwargs[k] = as_array(v, k, fn)
        r = core(*args, **kwargs)
        if not result:
            return r
        value, grad, metrics = r
        if out is not None:
            grad = out  # the caller's own buffer (tensor or array), written in place
        return Result(value, grad, metrics)

    f.__module__ = "rlpo." + fn.split(".")[0]
    f.__qualname__ = f.__name__ = fn.split(".")[1]
    return f
