"""rlpo.preference.dpo_loss against torch autograd of TRL's loss types."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rlpo
from conftest import DTYPES, check, t64


def pairs(B, dtype, seed):
    rng = np.random.default_rng(seed)
    pc, pr = -rng.uniform(5, 40, size=B), -rng.uniform(5, 40, size=B)
    rc, rr = pc + rng.normal(0, 2, size=B), pr + rng.normal(0, 2, size=B)
    return [np.ascontiguousarray(x, dtype=dtype) for x in (pc, pr, rc, rr)]


def reference(kind, pc, pr, rc, rr, beta=0.1, eps=0.0, lc=None, lr=None):
    pct, prt = t64(pc).requires_grad_(), t64(pr).requires_grad_()
    uc, ur = pct - t64(rc), prt - t64(rr)
    h = beta * (uc - ur)
    if kind == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)
    elif kind == "hinge":
        losses = torch.relu(1 - h)
    elif kind == "ipo":
        lc_, lr_ = t64(lc).clamp(min=1), t64(lr).clamp(min=1)
        losses = (uc / lc_ - ur / lr_ - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(kind)
    loss = losses.mean()
    loss.backward()
    grad = np.stack([pct.grad.numpy(), prt.grad.numpy()])
    rc_, rr_ = beta * uc.detach(), beta * ur.detach()
    metrics = {"rewards/chosen": rc_.mean(), "rewards/rejected": rr_.mean(),
               "rewards/accuracies": (rc_ > rr_).double().mean(),
               "rewards/margins": (rc_ - rr_).mean(), "logps/chosen": t64(pc).mean(),
               "logps/rejected": t64(pr).mean()}
    return loss.item(), grad, metrics


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_and_cdpo(dtype):
    x = pairs(6, dtype, seed=41)
    check(rlpo.preference.dpo_loss(*x), dtype, *reference("sigmoid", *x))
    r = rlpo.preference.dpo_loss(*x, beta=0.5, label_smoothing=0.1)
    check(r, dtype, *reference("sigmoid", *x, beta=0.5, eps=0.1))
    # current TRL ignores label_smoothing for sigmoid
    r = rlpo.preference.dpo_loss(*x, beta=0.5, label_smoothing=0.1, preset="trl")
    check(r, dtype, *reference("sigmoid", *x, beta=0.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hinge_ipo_and_weights(dtype):
    x = pairs(5, dtype, seed=42)
    check(rlpo.preference.dpo_loss(*x, loss_type="hinge", beta=0.2), dtype,
          *reference("hinge", *x, beta=0.2))
    lc, lr = np.array([3, 7, 1, 0, 12.0]), np.array([5, 2, 9, 4, 1.0])
    r = rlpo.preference.dpo_loss(*x, loss_type="ipo", chosen_lengths=lc, rejected_lengths=lr)
    check(r, dtype, *reference("ipo", *x, lc=lc, lr=lr))
    # a list of loss types with weights: Σ w_j·mean(ℓ_j)
    v1, g1, _ = reference("sigmoid", *x)
    v2, g2, _ = reference("hinge", *x)
    r = rlpo.preference.dpo_loss(*x, loss_type=["sigmoid", "hinge"], loss_weights=[0.7, 0.3])
    check(r, dtype, 0.7 * v1 + 0.3 * v2, 0.7 * g1 + 0.3 * g2)


def test_names_and_errors():
    x = pairs(4, np.float64, seed=43)
    with pytest.raises(ValueError, match="unknown DPO loss type 'dpo'"):
        rlpo.preference.dpo_loss(*x, loss_type="dpo")
    with pytest.raises(ValueError, match="lengths"):
        rlpo.preference.dpo_loss(*x, loss_type="ipo")
    with pytest.raises(ValueError, match="beta"):
        rlpo.preference.dpo_loss(*x, beta=0.0)
    assert "sigmoid" in rlpo.preference.DPO_LOSS_NAMES


def test_tensor_lengths():
    x = [torch.from_numpy(a) for a in pairs(3, np.float64, seed=44)]
    lc, lr = torch.tensor([3.0, 4.0, 5.0]), torch.tensor([2.0, 6.0, 1.0])
    r = rlpo.preference.dpo_loss(*x, loss_type="ipo", chosen_lengths=lc, rejected_lengths=lr)
    ref = reference("ipo", *[a.numpy() for a in x], lc=lc.numpy(), lr=lr.numpy())
    check(r, np.float64, *ref)
