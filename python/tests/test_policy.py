"""rlpo.policy against PyTorch autograd of the surrogates' formulas (PPO clip as verl's
compute_policy_loss_vanilla, REINFORCE, DRO, GSPO token level as verl's compute_policy_loss_gspo)."""

import numpy as np
import pytest
import torch

import rlpo
from conftest import DTYPES, aggregate, check, masked_mean, t64, tokens

MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
         "seq-mean-token-sum-norm"]


def ppo_reference(logp, old, adv, m, clip_low=0.2, clip_high=0.2, dual_clip=None, clamp=20.0,
                  **agg):
    lp = t64(logp).requires_grad_()
    old, A, m = t64(old), t64(adv), t64(m)
    lr = lp - old
    lr_c = torch.clamp(lr, -clamp, clamp) if clamp != float("inf") else lr
    r = torch.exp(lr_c)
    l1 = -A * r
    l2 = -A * torch.clamp(r, 1 - clip_low, 1 + clip_high)
    l = torch.maximum(l1, l2)
    lower = torch.zeros_like(l)
    if dual_clip is not None:
        l3 = -A * dual_clip
        lower = ((A < 0) & (l3 < l)).double()
        l = torch.where(A < 0, torch.minimum(l, l3), l)
    loss = aggregate(l, m, **agg)
    loss.backward()
    metrics = {"pg_clipfrac": masked_mean((l2 > l1).double(), m),
               "pg_clipfrac_lower": masked_mean(lower, m),
               "ppo_kl": masked_mean(-lr_c, m)}
    return loss.item(), lp.grad.numpy(), metrics


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_ppo_clip_modes(dtype, mode):
    logp, old, _, adv, m = tokens(dtype=dtype)
    r = rlpo.policy.ppo_clip(logp, old, adv, m, aggregation=mode)
    check(r, dtype, *ppo_reference(logp, old, adv, m, mode=mode))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ppo_clip_presets_and_options(dtype):
    logp, old, _, adv, m = tokens(dtype=dtype, seed=3)
    r = rlpo.policy.ppo_clip(logp, old, adv, m, preset="verl")
    check(r, dtype, *ppo_reference(logp, old, adv, m, dual_clip=3.0))
    r = rlpo.policy.ppo_clip(logp, old, adv, m, preset="trl", clip_high=0.28)
    check(r, dtype, *ppo_reference(logp, old, adv, m, clip_high=0.28, clamp=float("inf")))
    r = rlpo.policy.ppo_clip(logp, old, adv, m, preset="openrlhf", clip_low=0.1, dual_clip=2.0)
    check(r, dtype, *ppo_reference(logp, old, adv, m, clip_low=0.1, dual_clip=2.0,
                            clamp=float("inf")))


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_counts(dtype):
    logp, old, _, adv, m = tokens(dtype=dtype, seed=5)
    for mode, kw, ref in [
            ("token-mean", dict(num_tokens=50.0), dict(num_tokens=50.0)),
            ("seq-mean-token-mean", dict(num_seqs=7.0), dict(num_seqs=7.0)),
            ("seq-mean-token-sum-norm", dict(num_seqs=6.0, norm_constant=16.0),
             dict(num_seqs=6.0, norm_constant=16.0))]:
        r = rlpo.policy.ppo_clip(logp, old, adv, m, aggregation=mode, **kw)
        check(r, dtype, *ppo_reference(logp, old, adv, m, mode=mode, **ref))
    # TRL names of the modes
    r = rlpo.policy.ppo_clip(logp, old, adv, m, aggregation="dr_grpo", norm_constant=9.0)
    check(r, dtype, *ppo_reference(logp, old, adv, m, mode="seq-mean-token-sum-norm",
                            norm_constant=9.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_loss_vanilla_is_verl_ppo(dtype):
    logp, old, _, adv, m = tokens(dtype=dtype, seed=1)
    r = rlpo.policy.policy_loss("vanilla", logp, old, adv, m)
    check(r, dtype, *ppo_reference(logp, old, adv, m, dual_clip=3.0))
    # TRL's names take TRL's preset (no dual-clip, no clamp)
    r = rlpo.policy.policy_loss("dapo", logp, old, adv, m, clip_high=0.28)
    check(r, dtype, *ppo_reference(logp, old, adv, m, clip_high=0.28, clamp=float("inf")))


@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_loss_gpg_and_dro(dtype):
    logp, old, _, adv, m = tokens(dtype=dtype, seed=2)
    lp = t64(logp).requires_grad_()
    loss = aggregate(-t64(adv) * lp, t64(m))
    loss.backward()
    check(rlpo.policy.policy_loss("gpg", logp, old, adv, m), dtype, loss.item(), lp.grad.numpy())
    lp = t64(logp).requires_grad_()
    lr = lp - t64(old)
    loss = aggregate(-(t64(adv) * lp - 0.5 * 0.3 * lr * lr), t64(m), mode="seq-mean-token-mean")
    loss.backward()
    r = rlpo.policy.policy_loss("dro", logp, old, adv, m, beta=0.3,
                                aggregation="seq-mean-token-mean")
    check(r, dtype, loss.item(), lp.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_loss_gspo_token_level(dtype):
    # verl compute_policy_loss_gspo: s_it = sg(s_i)·π/sg(π), s_i = exp(mean_t m·lr), clamp ≤ 10
    # in log space, ε 3e-4 / 4e-4, seq-mean-token-mean forced
    logp, old, _, adv, m = tokens(dtype=dtype, seed=4)
    old = (logp + 1e-4 * (old - logp)).astype(dtype)  # ratios near 1: both branches occur
    lp = t64(logp).requires_grad_()
    mt, A = t64(m), t64(adv)
    lr = torch.where(mt > 0, lp - t64(old), torch.zeros_like(lp))
    lens = mt.sum(1).clamp(min=1)
    seq = (mt * lr).sum(1) / lens
    log_s = seq.detach()[:, None] + lp - lp.detach()
    s = torch.exp(torch.clamp(log_s, max=10.0))
    l1 = -A * s
    l2 = -A * torch.clamp(s, 1 - 3e-4, 1 + 4e-4)
    loss = aggregate(torch.maximum(l1, l2), mt, mode="seq-mean-token-mean")
    loss.backward()
    r = rlpo.policy.policy_loss("gspo", logp, old, adv, m, aggregation="token-sum")
    check(r, dtype, loss.item(), lp.grad.numpy())


@pytest.mark.parametrize("name", rlpo.policy.POLICY_LOSS_NAMES)
def test_every_name_runs(name):
    logp, old, _, adv, m = tokens(B=8, T=16, seed=6)
    kw = {"importance_sampling": "sequence"} if name in ("bnpo",) else {}
    r = rlpo.policy.policy_loss(name, logp, old, adv, m, **kw)
    assert np.isfinite(r.value) and r.grad.shape == logp.shape
    assert np.all(r.grad[m == 0] == 0)
    for preset in ("verl", "trl", "paper"):
        rlpo.policy.policy_loss(name, logp, old, adv, m, preset=preset, compute_grad=False)


def test_is_weights_scale_the_loss():
    logp, old, _, adv, m = tokens(seed=7)
    w = np.full_like(logp, 0.5)
    r1 = rlpo.policy.policy_loss("gpg", logp, old, adv, m)
    r2 = rlpo.policy.policy_loss("gpg", logp, old, adv, m, is_weights=w)
    assert r2.value == pytest.approx(0.5 * r1.value, rel=1e-12)


def test_unknown_name_and_option():
    logp, old, _, adv, m = tokens()
    with pytest.raises(ValueError, match="unknown policy loss 'ppo2'.*vanilla"):
        rlpo.policy.policy_loss("ppo2", logp, old, adv, m)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tau_pos'"):
        rlpo.policy.policy_loss("vanilla", logp, old, adv, m, tau_pos=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        rlpo.policy.ppo_clip(logp, old, adv, m, clip_low=1.5)
    with pytest.raises(ValueError, match="unknown value 'x'.*'verl'"):
        rlpo.policy.ppo_clip(logp, old, adv, m, preset="x")
    with pytest.raises(ValueError, match="aggregation"):
        rlpo.policy.ppo_clip(logp, old, adv, m, aggregation="mean")
