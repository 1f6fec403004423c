"""rlpo.rollout: GRPO / RLOO advantages and broadcast_to_tokens against their formulas."""

import numpy as np
import pytest
import torch

import rlpo
from conftest import DTYPES, TOL


def grpo(s, G, eps=1e-6):
    s = torch.tensor(s, dtype=torch.float64).view(-1, G)
    mu, sd = s.mean(1, keepdim=True), s.std(1, keepdim=True)  # torch.std: sample (n − 1)
    a = (s - mu) / (sd + eps)
    return torch.where(sd > 0, a, torch.zeros_like(a)).view(-1).numpy()


def rloo(s, G):
    s = torch.tensor(s, dtype=torch.float64).view(-1, G)
    return (s - (s.sum(1, keepdim=True) - s) / (G - 1)).view(-1).numpy()


@pytest.mark.parametrize("dtype", DTYPES)
def test_grpo(dtype):
    rng = np.random.default_rng(31)
    s = rng.normal(size=12).astype(dtype)
    s[8:12] = 1.0  # an all-equal group: 0
    a = rlpo.rollout.grpo_advantages(s, group_size=4)
    assert a.dtype == dtype and a.shape == (12,)
    np.testing.assert_allclose(a, grpo(s.astype(np.float64), 4), rtol=TOL[dtype],
                               atol=TOL[dtype])
    assert np.all(a[8:] == 0)
    a = rlpo.rollout.grpo_advantages(s, group_ids=[7] * 4 + [3] * 4 + [5] * 4, preset="trl")
    np.testing.assert_allclose(a, grpo(s.astype(np.float64), 4, eps=1e-4), rtol=TOL[dtype],
                               atol=TOL[dtype])
    a = rlpo.rollout.grpo_advantages(s, group_size=4, scale="none")
    ref = (s.astype(np.float64).reshape(3, 4) - s.astype(np.float64).reshape(3, 4).mean(1,
           keepdims=True)).reshape(-1)
    np.testing.assert_allclose(a, ref, rtol=TOL[dtype], atol=TOL[dtype])


def test_grpo_singletons_and_nan():
    s = np.array([2.0, 1.0, 3.0])
    a = rlpo.rollout.grpo_advantages(s, group_ids=np.array([0, 1, 1]))
    assert a[0] == 0.0
    a = rlpo.rollout.grpo_advantages(s, group_ids=[0, 1, 1], preset="verl")
    assert a[0] == pytest.approx(2.0 / (1 + 1e-6))
    with pytest.raises(ValueError, match="NaN"):
        rlpo.rollout.grpo_advantages(np.array([np.nan, 1.0]), group_size=2)
    a = rlpo.rollout.grpo_advantages(np.array([np.nan, 1.0]), group_size=2, nan_scores="as_zero")
    np.testing.assert_allclose(a, grpo([0.0, 1.0], 2), rtol=1e-12)
    with pytest.raises(ValueError, match="exactly one of group_size"):
        rlpo.rollout.grpo_advantages(s)
    with pytest.raises(ValueError, match="out of order"):
        rlpo.rollout.grpo_advantages(s, group_ids=[0, 1, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rloo(dtype):
    s = np.random.default_rng(32).normal(size=9).astype(dtype)
    a = rlpo.rollout.rloo_advantages(s, group_size=3)
    assert a.dtype == dtype
    np.testing.assert_allclose(a, rloo(s.astype(np.float64), 3), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_to_tokens(dtype):
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=dtype)
    a = np.array([0.5, -2.0, 3.0], dtype=dtype)
    out = rlpo.rollout.broadcast_to_tokens(a, mask)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, a[:, None] * mask)
    with pytest.raises(ValueError, match="seq_values"):
        rlpo.rollout.broadcast_to_tokens(a[:2].copy(), mask)
