"""rlpo.penalties.kl_penalty against torch autograd of Schulman's estimators (d = logp − ref)."""

import numpy as np
import pytest
import torch

import rlpo
from conftest import DTYPES, aggregate, check, masked_mean, t64, tokens


def estimate(name, d):
    delta = -d
    if name in ("kl", "k1"):
        return d
    if name == "abs":
        return d.abs()
    if name in ("mse", "k2"):
        return 0.5 * d * d
    if name in ("low_var_kl", "k3"):
        return torch.exp(delta) - delta - 1
    raise ValueError(name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"])
def test_estimators(dtype, name):
    logp, _, ref, _, m = tokens(dtype=dtype, seed=11)
    lp = t64(logp).requires_grad_()
    k = estimate(name, lp - t64(ref))
    loss = aggregate(k, t64(m))
    loss.backward()
    r = rlpo.penalties.kl_penalty(logp, ref, m, estimator=name)
    check(r, dtype, loss.item(), lp.grad.numpy(), {"kl": masked_mean(k.detach(), t64(m))})


@pytest.mark.parametrize("dtype", DTYPES)
def test_straight_through_and_coef(dtype):
    # k3+: value of k3, gradient of k2; coef scales value and gradient
    logp, _, ref, _, m = tokens(dtype=dtype, seed=12)
    lp = t64(logp).requires_grad_()
    d = lp - t64(ref)
    k2 = 0.5 * d * d
    k = k2 - k2.detach() + estimate("k3", d).detach()
    loss = 0.04 * aggregate(k, t64(m), mode="seq-mean-token-mean")
    loss.backward()
    r = rlpo.penalties.kl_penalty(logp, ref, m, estimator="k3+", coef=0.04,
                                  aggregation="seq-mean-token-mean")
    check(r, dtype, loss.item(), lp.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_importance_corrected(dtype):
    # TRL use_bias_correction_kl: w·k3 with w = exp(logp − old_logp), w not detached
    logp, old, ref, _, m = tokens(dtype=dtype, seed=13)
    lp = t64(logp).requires_grad_()
    w = torch.exp(lp - t64(old))
    loss = aggregate(w * estimate("k3", lp - t64(ref)), t64(m))
    loss.backward()
    r = rlpo.penalties.kl_penalty(logp, ref, m, old_logp=old, preset="trl")
    check(r, dtype, loss.item(), lp.grad.numpy())


def test_clamps_verl_vs_trl():
    logp, _, ref, _, m = tokens(seed=14)
    ref = ref.copy()
    ref[0, 0] = logp[0, 0] + 30.0  # δ = 30: verl clamps δ to 20 and the value to 10
    r = rlpo.penalties.kl_penalty(logp, ref, m, preset="verl", aggregation="token-sum")
    r_trl = rlpo.penalties.kl_penalty(logp, ref, m, preset="trl", aggregation="token-sum")
    assert r.grad[0, 0] == 0.0
    assert r_trl.value - r.value == pytest.approx(np.exp(30.0) - 31.0 - 10.0, rel=1e-12)
