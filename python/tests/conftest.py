"""Shared helpers: random token batches and the reference aggregation, written from the
formulas of docs/contract.md and include/rlpo/core/aggregation.hpp (not from rlpo's code)."""

import numpy as np
import pytest
import torch

import rlpo  # noqa: F401  (fails early when the package is not on PYTHONPATH)

DTYPES = [np.float64, np.float32]
# value / gradient tolerances per dtype: float64 ~1e-10, float32 ~1e-5 (against the float64
# formula on the same float32-rounded inputs)
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def tokens(B=4, T=7, dtype=np.float64, seed=0, empty_row=True):
    """logp, old_logp, ref_logp, advantages, mask as C-contiguous arrays of `dtype`."""
    rng = np.random.default_rng(seed)
    logp = -np.abs(rng.normal(1.0, 0.7, size=(B, T)))
    old = logp + rng.normal(0, 0.3, size=(B, T))
    ref = logp + rng.normal(0, 0.3, size=(B, T))
    adv = rng.normal(0, 1, size=(B, T))
    mask = (rng.random((B, T)) < 0.8).astype(np.float64)
    mask[0, :] = 1.0
    if empty_row:
        mask[-1, :] = 0.0
    return [np.ascontiguousarray(a, dtype=dtype) for a in (logp, old, ref, adv, mask)]


def t64(a):
    """A float64 leaf tensor of the (possibly float32-rounded) values of `a`."""
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)


def aggregate(L, m, mode="token-mean", num_tokens=None, num_seqs=None, norm_constant=None):
    """Σ_it c_i m_it L_it for the five aggregation modes (torch, differentiable in L)."""
    L = torch.where(m > 0, L, torch.zeros_like(L))
    row = (m * L).sum(1)
    n_tok = m.sum() if num_tokens is None else num_tokens
    lens = m.sum(1)
    nonempty = lens > 0
    n_seq = nonempty.sum() if num_seqs is None else num_seqs
    C = m.shape[1] if norm_constant is None else norm_constant
    if mode == "token-mean":
        return row.sum() / n_tok
    if mode == "token-sum":
        return row.sum()
    if mode == "seq-mean-token-sum":
        return row.sum() / n_seq
    if mode == "seq-mean-token-mean":
        safe = torch.where(nonempty, lens, torch.ones_like(lens))
        return (torch.where(nonempty, row / safe, torch.zeros_like(row))).sum() / n_seq
    if mode == "seq-mean-token-sum-norm":
        return row.sum() / (n_seq * C)
    raise ValueError(mode)


def masked_mean(x, m):
    return float((m * torch.where(m > 0, x, torch.zeros_like(x))).sum() / m.sum())


def check(r, dtype, value, grad, metrics=None):
    """rlpo Result `r` against the reference value (float), gradient (array) and metrics."""
    tol = TOL[dtype]
    assert isinstance(r.value, float)
    assert r.value == pytest.approx(float(value), rel=tol, abs=tol)
    if grad is not None:
        g = np.asarray(grad, dtype=np.float64)
        assert r.grad.dtype == dtype and r.grad.shape == g.shape
        scale = max(1.0, float(np.abs(g).max()))
        np.testing.assert_allclose(r.grad.astype(np.float64), g, rtol=tol, atol=tol * scale)
    for k, v in (metrics or {}).items():
        assert r.metrics[k] == pytest.approx(float(v), rel=tol, abs=tol), k
