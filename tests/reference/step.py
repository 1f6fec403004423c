"""PyTorch reference for include/rlpo/train/step.hpp: the whole training-step loss written as one
torch expression (PPO clip + β·k3 + entropy bonus + clipped value loss), differentiated by
autograd with respect to logp, logits and values at once."""
import math

import torch

from common import aggregate, clean, grad_of, leaf_under_mask, masked_mean


def training_step(x, p, s):
    mask = x["mask"]
    B, T = mask.shape
    lp_leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv, ref = clean(x["old_logp"], mask), clean(x["advantages"], mask), clean(x["ref_logp"], mask)
    eps_l, eps_h, L = float(p["clip_low"]), float(p["clip_high"]), float(p["log_ratio_clamp"])
    beta, c_h, c_v, eps_v = float(p["kl_coef"]), float(p["entropy_coef"]), float(p["value_coef"]), float(p["value_clip"])
    dual = float(p["dual_clip"]) if "dual_clip" in p else None

    # policy surrogate (verl compute_policy_loss_vanilla)
    log_ratio = torch.clamp(logp - old, min=-L, max=L)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - eps_l, 1 + eps_h)
    pg = torch.maximum(unclipped, clipped)
    if dual is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual), pg)
    pg = torch.where(mask != 0, pg, torch.zeros_like(pg))
    pg_loss = aggregate(pg, mask, p, s)

    # low_var_kl with verl's clamps (δ ±20, value ≤ 10)
    delta = torch.clamp(ref - logp, min=-20.0, max=20.0)
    k3 = torch.clamp(torch.exp(delta) - delta - 1, min=-10.0, max=10.0)
    k3 = torch.where(mask != 0, k3, torch.zeros_like(k3))
    kl_loss = aggregate(k3, mask, p, s)

    total = pg_loss + beta * kl_loss
    out = {}
    ent_mean = torch.zeros((), dtype=torch.float64)
    if "logits" in x:
        z_leaf = x["logits"].clone().requires_grad_(True)
        z = z_leaf.reshape(B, T, -1)
        logq = torch.log_softmax(z, dim=-1)
        H = -(logq.exp() * logq).sum(dim=-1)
        H = torch.where(mask != 0, H, torch.zeros_like(H))
        total = total - c_h * aggregate(H, mask, p, s)
        ent_mean = masked_mean(H.detach(), mask)
    vf_clipfrac = torch.zeros((), dtype=torch.float64)
    if "values" in x:
        v_leaf, v = leaf_under_mask(x["values"], mask)
        v_old, R = clean(x["old_values"], mask), clean(x["returns"], mask)
        lo, hi = v_old - eps_v, v_old + eps_v  # verl clip_by_value(v, v_old − ε, v_old + ε)
        v_clip = torch.where(v > hi, hi, torch.where(v < lo, lo, v))
        l1, l2 = (v - R) ** 2, (v_clip - R) ** 2
        vf = 0.5 * torch.maximum(l1, l2)
        vf = torch.where(mask != 0, vf, torch.zeros_like(vf))
        total = total + c_v * aggregate(vf, mask, p, s)
        vf_clipfrac = masked_mean(torch.gt(l2, l1).double(), mask)

    leaves = [lp_leaf] + ([z_leaf] if "logits" in x else []) + ([v_leaf] if "values" in x else [])
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    out["loss"] = total.detach()
    out["grad_logp"] = grads[0] if grads[0] is not None else torch.zeros_like(lp_leaf)
    k = 1
    if "logits" in x:
        out["grad_logits"] = grads[k]
        k += 1
    if "values" in x:
        out["grad_values"] = grads[k]
    out["pg_clipfrac"] = masked_mean(torch.gt(clipped, unclipped).double().detach(), mask)
    out["ppo_kl"] = masked_mean(-log_ratio.detach(), mask)
    out["kl_loss"] = masked_mean(k3.detach(), mask)
    out["entropy"] = ent_mean
    out["vf_clipfrac"] = vf_clipfrac
    return out


def dpo_from_logits(x, p, s):
    """DPO (+ SFT) from logits, as TRL's DPOTrainer computes it on the concatenated batch: the
    token log-probs log_softmax(z/τ) gathered at the labels, summed per completion (rows 0..B−1
    chosen, B..2B−1 rejected), the sigmoid loss with label smoothing ε (cDPO) averaged over the
    pairs, plus w_sft times the chosen tokens' mean NLL; autograd w.r.t. the logits."""
    mask = x["mask"]
    R, T = mask.shape
    B = R // 2
    z = x["logits"].clone().requires_grad_(True)
    tau, beta, eps, w_sft = float(p["temperature"]), float(p["beta"]), float(p["label_smoothing"]), float(p["sft_weight"])
    labels = x["labels"].reshape(-1).to(torch.int64).clamp(min=0, max=z.shape[1] - 1)
    logp_all = torch.log_softmax(z / tau, dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1).reshape(R, T)
    logp = torch.where(mask != 0, logp_all, torch.zeros_like(logp_all)) * mask
    seq = logp.sum(dim=1)
    pc, pr = seq[:B], seq[B:]
    rc, rr = x["ref_chosen"].reshape(-1), x["ref_rejected"].reshape(-1)
    h = beta * ((pc - rc) - (pr - rr))
    dpo = (-(1 - eps) * torch.nn.functional.logsigmoid(h) - eps * torch.nn.functional.logsigmoid(-h)).mean()
    nll = -pc.sum() / mask[:B].sum()
    loss = dpo + w_sft * nll
    (g,) = torch.autograd.grad(loss, z)
    rew_c, rew_r = beta * (pc - rc), beta * (pr - rr)
    return {"value": loss.detach(), "grad_logits": g,
            "rewards/chosen": rew_c.mean().detach(), "rewards/margins": (rew_c - rew_r).mean().detach(),
            "logps/rejected": pr.mean().detach()}
