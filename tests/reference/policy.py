"""PyTorch references for include/rlpo/policy/ (independently written formulas + autograd)."""
import math

import torch

from common import aggregate, clean, grad_of, leaf_under_mask, masked_mean


def ppo_clip(x, p, s):
    """PPO clip as verl's compute_policy_loss_vanilla writes it: clamp the log-ratio, take
    max(−A r, −A clip(r)), and for A < 0 min(that, −A c) when dual-clip is on."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    eps_l, eps_h = float(p["clip_low"]), float(p["clip_high"])
    L = float(p["log_ratio_clamp"])
    dual = float(p["dual_clip"]) if "dual_clip" in p else None

    neg_kl = logp - old
    if math.isfinite(L):
        neg_kl = torch.clamp(neg_kl, min=-L, max=L)
    ratio = torch.exp(neg_kl)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1.0 - eps_l, 1.0 + eps_h)
    clipped = torch.maximum(loss1, loss2)
    clipfrac = masked_mean(torch.gt(loss2, loss1).double(), mask)
    if dual is not None:
        loss3 = -adv * dual
        lower = torch.minimum(loss3, clipped)
        clipfrac_lower = masked_mean((torch.gt(clipped, loss3) & (adv < 0)).double(), mask)
        per_token = torch.where(adv < 0, lower, clipped)
    else:
        clipfrac_lower = torch.zeros((), dtype=torch.float64)
        per_token = clipped
    # masked positions may hold anything: keep them out of the graph
    per_token = torch.where(mask != 0, per_token, torch.zeros_like(per_token))
    value = aggregate(per_token, mask, p, s)
    return {
        "value": value.detach(),
        "grad": grad_of(value, leaf),
        "pg_clipfrac": clipfrac,
        "pg_clipfrac_lower": clipfrac_lower,
        "ppo_kl": masked_mean(-neg_kl.detach(), mask),
    }
