"""token/ workloads: the PyTorch eager side (forward + backward), same shapes and work as
benchmarks/compare_token.cpp. The formulas follow verl's compute_policy_loss_vanilla (dual-clip)
and kl_penalty("low_var_kl"), aggregated token-mean, written here independently."""
import torch

from common import Workload


def _inputs(B, T, seed=11):
    g = torch.Generator().manual_seed(seed)
    lp = -(torch.randn(B, T, generator=g).abs() * 2.0)
    old = lp + 0.3 * torch.randn(B, T, generator=g)
    ref = lp + 0.5 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, 1, generator=g).expand(B, T).contiguous()
    lens = (T * (0.25 + 0.75 * torch.rand(B, generator=g))).long()
    mask = (torch.arange(T).unsqueeze(0) < lens.unsqueeze(1)).float()
    return lp.float(), old.float(), ref.float(), adv.float(), mask


def _ppo_dual_k3_setup(B=256, T=4096, eps=0.2, c=3.0, beta=0.001):
    lp0, old, ref, adv, mask = _inputs(B, T)
    logp = lp0.clone().requires_grad_(True)

    def step():
        logp.grad = None
        neg_kl = torch.clamp(logp - old, min=-20.0, max=20.0)
        ratio = torch.exp(neg_kl)
        l1 = -adv * ratio
        l2 = -adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps)
        clipped = torch.maximum(l1, l2)
        l3 = -adv * c
        pg = torch.where(adv < 0, torch.minimum(l3, clipped), clipped)
        n = mask.sum()
        pg_loss = (pg * mask).sum() / n
        delta = torch.clamp(ref - logp, min=-20.0, max=20.0)
        k3 = torch.clamp(torch.exp(delta) - delta - 1, min=-10.0, max=10.0)
        kl_loss = (k3 * mask).sum() / n
        loss = pg_loss + beta * kl_loss
        loss.backward()
        # the metrics verl logs alongside (pg_clipfrac, pg_clipfrac_lower, ppo_kl, kl)
        with torch.no_grad():
            _ = ((torch.gt(l2, l1).float() * mask).sum() / n,
                 ((torch.gt(clipped, l3) & (adv < 0)).float() * mask).sum() / n,
                 (-neg_kl * mask).sum() / n, (k3 * mask).sum() / n)
        return loss.item()

    return step


def _ppo_dual_k3_python_setup(B=256, T=4096, beta=0.001):
    """The same loss through rlpo's Python module (rlpo.torch: verl's PPO clip with dual clip,
    k3 clamped as verl, token-mean), forward + backward, metrics returned as verl logs them."""
    import rlpo.torch as rt
    lp0, old, ref, adv, mask = _inputs(B, T)
    logp = lp0.clone().requires_grad_(True)

    def step():
        logp.grad = None
        pg, m1 = rt.ppo_clip(logp, old, adv, mask, preset="verl", return_metrics=True)
        kl, m2 = rt.kl_penalty(logp, ref, mask, preset="verl", estimator="low_var_kl",
                               return_metrics=True)
        loss = pg + beta * kl
        loss.backward()
        return loss.item()

    return step


WORKLOADS = [
    Workload("token/ppo_dual_k3_token_mean_256x4096", "compare_token", _ppo_dual_k3_setup, reps=5,
             python_setup=_ppo_dual_k3_python_setup),
]
