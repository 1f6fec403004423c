"""PyTorch references for include/rlpo/penalties/ (independently written formulas + autograd)."""
import math

import torch

from common import aggregate, clean, grad_of, leaf_under_mask, masked_mean


def kl_estimator_value(logp, ref, name, L, vmax):
    """Schulman's estimators of KL(π‖π_ref) from x ~ π, in verl's spelling and clamps."""
    if name in ("k1", "kl"):
        return logp - ref
    if name == "abs":
        return (logp - ref).abs()
    if name in ("k2", "mse"):
        return 0.5 * (logp - ref).square()
    if name in ("k3", "low_var_kl"):
        delta = ref - logp
        if math.isfinite(L):
            delta = torch.clamp(delta, min=-L, max=L)
        v = torch.exp(delta) - delta - 1
        if math.isfinite(vmax):
            v = torch.clamp(v, min=-vmax, max=vmax)
        return v
    raise ValueError(name)


def kl_penalty(x, p, s):
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    ref = clean(x["ref_logp"], mask)
    v = kl_estimator_value(logp, ref, s["estimator"], float(p["log_ratio_clamp"]), float(p["value_clamp"]))
    v = torch.where(mask != 0, v, torch.zeros_like(v))
    value = aggregate(v, mask, p, s)
    return {"value": value.detach(), "grad": grad_of(value, leaf), "kl": masked_mean(v.detach(), mask)}
