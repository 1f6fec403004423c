"""rlpo.distill.divergence against torch autograd of the divergences over softmax(z/τ)."""

import numpy as np
import pytest
import torch

import rlpo
from conftest import DTYPES, aggregate, check, t64


def kl(a_log, b_log):
    return (a_log.exp() * (a_log - b_log)).sum(-1)


def reference(name, z, y, tau=1.0, beta=0.5, alpha=0.1):
    lq = torch.log_softmax(z / tau, -1)  # student
    lp = torch.log_softmax(y / tau, -1)  # teacher
    if name == "forward_kl":
        return kl(lp, lq)
    if name == "reverse_kl":
        return kl(lq, lp)
    if name == "jsd":
        lm = torch.log(beta * lp.exp() + (1 - beta) * lq.exp())
        return beta * kl(lp, lm) + (1 - beta) * kl(lq, lm)
    if name == "tvd":
        return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)
    if name == "skew_kl":
        lm = torch.log(alpha * lp.exp() + (1 - alpha) * lq.exp())
        return kl(lp, lm)
    raise ValueError(name)


def logits(B, T, V, dtype, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, size=(B, T, V)).astype(dtype)
    y = rng.normal(0, 2, size=(B, T, V)).astype(dtype)
    m = (rng.random((B, T)) < 0.7).astype(dtype)
    m[0, 0] = 1
    return z, y, m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,opts", [
    ("forward_kl", {}), ("reverse_kl", {"temperature": 0.7}), ("jsd", {"beta": 0.3}),
    ("tvd", {}), ("skew_kl", {"alpha": 0.2})])
def test_divergences(dtype, name, opts):
    B, T, V = 3, 4, 37
    z, y, m = logits(B, T, V, dtype, seed=21)
    zt = t64(z).requires_grad_()
    L = reference(name, zt, t64(y), tau=opts.get("temperature", 1.0),
                  beta=opts.get("beta", 0.5), alpha=opts.get("alpha", 0.1))
    loss = aggregate(L, t64(m), mode="seq-mean-token-mean")
    loss.backward()
    # [B, T, V] logits with a [B, T] mask
    r = rlpo.distill.divergence(z, y, m, divergence=name, aggregation="seq-mean-token-mean",
                                **opts)
    check(r, dtype, loss.item(), zt.grad.numpy())
    assert name in r.metrics
    # [N, V] rows with the same mask
    r = rlpo.distill.divergence(z.reshape(B * T, V), y.reshape(B * T, V), m, divergence=name,
                                aggregation="seq-mean-token-mean", **opts)
    check(r, dtype, loss.item(), zt.grad.numpy().reshape(B * T, V))


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_mask_and_presets(dtype):
    z, y, _ = logits(2, 3, 11, dtype, seed=22)
    z, y = z.reshape(6, 11), y.reshape(6, 11)
    zt = t64(z).requires_grad_()
    loss = reference("jsd", zt, t64(y), tau=0.9).mean()  # TRL GKD: JSD β 0.5, τ 0.9
    loss.backward()
    check(rlpo.distill.divergence(z, y, preset="trl"), dtype, loss.item(), zt.grad.numpy())
    zt = t64(z).requires_grad_()
    loss = 4.0 * reference("forward_kl", zt, t64(y), tau=2.0).mean()  # Hinton: τ² scaling
    loss.backward()
    r = rlpo.distill.divergence(z, y, preset="hinton", temperature=2.0)
    check(r, dtype, loss.item(), zt.grad.numpy())


def test_names_and_errors():
    z, y, m = logits(2, 2, 5, np.float64, seed=23)
    for name in rlpo.distill.DIVERGENCE_NAMES:
        assert np.isfinite(rlpo.distill.divergence(z, y, m, divergence=name).value)
    with pytest.raises(ValueError, match="unknown divergence 'kld'"):
        rlpo.distill.divergence(z, y, m, divergence="kld")
    with pytest.raises(ValueError, match="temperature"):
        rlpo.distill.divergence(z, y, m, temperature=0.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        rlpo.distill.divergence(z, y[:, :, :4].copy(), m)
