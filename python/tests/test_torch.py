"""rlpo.torch: loss.backward() fills the input's .grad with rlpo's gradient times the upstream
gradient, against torch autograd of the same formulas."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rlpo.torch as rt
from conftest import aggregate, tokens

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def leaves(dtype, seed=0):
    arrays = tokens(dtype=np.float64, seed=seed)
    return [torch.tensor(a, dtype=dtype) for a in arrays]


def assert_close(a, b, dtype):
    torch.testing.assert_close(a.double(), b.double(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ppo_clip_and_policy_loss_backward(dtype):
    logp, old, _, adv, m = leaves(dtype)
    x = logp.clone().requires_grad_()
    loss, metrics = rt.ppo_clip(x, old, adv, m, preset="trl", aggregation="seq-mean-token-mean",
                                return_metrics=True)
    assert loss.dim() == 0 and loss.dtype == dtype and "pg_clipfrac" in metrics
    (3.0 * loss).backward()
    y = logp.double().clone().requires_grad_()
    r = torch.exp(y - old.double())
    A = adv.double()
    ref = aggregate(torch.maximum(-A * r, -A * torch.clamp(r, 0.8, 1.2)), m.double(),
                    mode="seq-mean-token-mean")
    (3.0 * ref).backward()
    assert_close(loss.detach(), ref.detach(), dtype)
    assert_close(x.grad, y.grad, dtype)
    x2 = logp.clone().requires_grad_()
    rt.policy_loss("grpo", x2, old, adv, m, aggregation="seq-mean-token-mean").backward()
    assert_close(x2.grad, y.grad / 3.0, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kl_penalty_backward(dtype):
    logp, _, ref, _, m = leaves(dtype, seed=1)
    x = logp.clone().requires_grad_()
    pg = (x * 0.5).sum()  # another term in the same graph
    (pg + rt.kl_penalty(x, ref, m, estimator="low_var_kl", coef=0.1)).backward()
    y = logp.double().clone().requires_grad_()
    d = ref.double() - y
    ((y * 0.5).sum() + 0.1 * aggregate(torch.exp(d) - d - 1, m.double())).backward()
    assert_close(x.grad, y.grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_divergence_backward(dtype):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 17, generator=g, dtype=dtype)
    t = torch.randn(2, 3, 17, generator=g, dtype=dtype)
    m = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=dtype)
    x = z.clone().requires_grad_()
    loss = rt.divergence(x, t, m, divergence="jsd", beta=0.5)
    (loss * -2.0).backward()
    y = z.double().clone().requires_grad_()
    lq, lp = torch.log_softmax(y, -1), torch.log_softmax(t.double(), -1)
    lm = torch.log(0.5 * lp.exp() + 0.5 * lq.exp())
    L = 0.5 * (lp.exp() * (lp - lm)).sum(-1) + 0.5 * (lq.exp() * (lq - lm)).sum(-1)
    (aggregate(L, m.double()) * -2.0).backward()
    assert_close(x.grad, y.grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dpo_backward(dtype):
    g = torch.Generator().manual_seed(1)
    pc, pr = -20 * torch.rand(5, generator=g, dtype=dtype), -20 * torch.rand(5, generator=g,
                                                                            dtype=dtype)
    rc, rr = pc + torch.randn(5, generator=g, dtype=dtype), pr + torch.randn(5, generator=g,
                                                                           dtype=dtype)
    a, b = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    rt.dpo_loss(a, b, rc, rr, beta=0.2).backward()
    a2, b2 = pc.double().clone().requires_grad_(), pr.double().clone().requires_grad_()
    (-F.logsigmoid(0.2 * ((a2 - rc.double()) - (b2 - rr.double())))).mean().backward()
    assert_close(a.grad, a2.grad, dtype)
    assert_close(b.grad, b2.grad, dtype)
    # only one side requires grad
    c = pc.clone().requires_grad_()
    rt.dpo_loss(c, pr, rc, rr, beta=0.2).backward()
    assert_close(c.grad, a2.grad, dtype)


def test_refusals():
    logp, old, _, adv, m = leaves(torch.float64)
    x = logp.clone().requires_grad_()
    with pytest.raises(ValueError, match="advantages: tensors on device 'meta'"):
        rt.ppo_clip(x, old, adv.to("meta"), m)
    with pytest.raises(TypeError, match="'out' is not accepted"):
        rt.ppo_clip(x, old, adv, m, out=torch.zeros_like(x))
    with pytest.raises(ValueError, match="clip_low"):
        rt.ppo_clip(x, old, adv, m, clip_low=-1.0)
