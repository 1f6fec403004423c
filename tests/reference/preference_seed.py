"""PyTorch references for the seed preference methods (rpo.hpp, inpo.hpp, reward_aware.hpp,
hypo.hpp): formulas written from the papers and the anchors' trainers, gradients by autograd.

- rpo: the authors' trainer (YSLIU627/Regularized-Preference-Optimization, rpo_trainer.py):
  per-pair loss-type losses, minus beta * eta * (summed chosen log-prob), mean over the pairs.
- inpo: ntlfi/ENPO's INPOTrainer.compute_loss (mean of (h - 1/(2 eta))^2).
- reward_aware: NeMo-Aligner's MegatronGPTDPOModel.loss_func / sft_loss_func.
- hypo: DPO sigmoid on the offline pairs + lam * RLOO surrogate on the on-policy samples.
"""
import torch
import torch.nn.functional as F

import preference


def _v(x):
    return x.reshape(-1)


def _scalar(p, name, default=None):
    if name in p:
        return float(p[name].reshape(-1)[0])
    return default


def rpo(x, p, s):
    pc = _v(x["policy_chosen_logps"]).clone().requires_grad_(True)
    pr = _v(x["policy_rejected_logps"]).clone().requires_grad_(True)
    rc = _v(x["ref_chosen_logps"])
    rr = _v(x["ref_rejected_logps"])
    lens = (_v(x["len_chosen"]), _v(x["len_rejected"])) if "len_chosen" in x else None
    beta = _scalar(p, "beta")
    eta = _scalar(p, "eta")
    if eta < 1e-6:  # the authors' trainer
        eta = 0.0
    n = _scalar(p, "num_pairs", float(pc.shape[0]))
    # the DPO part: the loss type's per-pair losses (tests/reference/preference.py)
    (losses,) = preference._loss_terms(pc, pr, rc, rr, p, s, [s["loss"]], lens)
    if eta:
        losses = losses - pc * beta * eta
    value = losses.sum() / n
    gc, gr = torch.autograd.grad(value, (pc, pr), allow_unused=True)
    gc = torch.zeros_like(pc) if gc is None else gc
    gr = torch.zeros_like(pr) if gr is None else gr
    cr = beta * (pc - rc).detach()
    rj = beta * (pr - rr).detach()
    return {
        "value": value.detach(),
        "grad": torch.stack([gc, gr], dim=0),
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rj.mean(),
        "rewards/accuracies": (cr > rj).double().mean(),
        "rewards/margins": (cr - rj).mean(),
        "logps/chosen": pc.detach().mean(),
        "logps/rejected": pr.detach().mean(),
    }


def inpo(x, p, s):
    pc = _v(x["policy_chosen_logps"]).clone().requires_grad_(True)
    pr = _v(x["policy_rejected_logps"]).clone().requires_grad_(True)
    delta_ref = _v(x["ref_chosen_logps"]) - _v(x["ref_rejected_logps"])
    delta_t = _v(x["prev_chosen_logps"]) - _v(x["prev_rejected_logps"])
    eta = _scalar(p, "eta")
    tau = _scalar(p, "tau")
    n = _scalar(p, "num_pairs", float(pc.shape[0]))
    delta_pi = pc - pr
    h = delta_pi - (tau / eta) * delta_ref - ((eta - tau) / eta) * delta_t
    target = 1.0 / (2.0 * eta)
    value = ((h - target) ** 2).sum() / n
    gc, gr = torch.autograd.grad(value, (pc, pr))
    return {
        "value": value.detach(),
        "grad": torch.stack([gc, gr], dim=0),
        "delta_pi_mean": delta_pi.detach().mean(),
        "delta_ref_mean": delta_ref.mean(),
        "delta_t_mean": delta_t.mean(),
        "h_mean": h.detach().mean(),
        "h_minus_target": (h.detach() - target).mean(),
        "logps/chosen": pc.detach().mean(),
        "logps/rejected": pr.detach().mean(),
    }


def reward_aware(x, p, s):
    """NeMo-Aligner MegatronGPTDPOModel: loss_func (preference_loss) + sft_loss_func, weighted."""
    pc = _v(x["policy_chosen_logps"]).clone().requires_grad_(True)
    pr = _v(x["policy_rejected_logps"]).clone().requires_grad_(True)
    rc = _v(x["ref_chosen_logps"])
    rr = _v(x["ref_rejected_logps"])
    kl_penalty = _scalar(p, "beta")
    scale = _scalar(p, "gt_reward_scale", 1.0)
    w_pref = _scalar(p, "preference_loss_weight", 1.0)
    w_sft = _scalar(p, "sft_loss_weight", 0.0)
    n = _scalar(p, "num_pairs", float(pc.shape[0]))
    chosen_rewards = pc - rc
    reject_rewards = pr - rr
    rewards_delta = chosen_rewards - reject_rewards
    kind = s["loss"]

    def gt_delta():
        return scale * (_v(x["rewards_chosen"]) - _v(x["rewards_rejected"]))

    if kind == "dpo":
        per_pair = -F.logsigmoid(kl_penalty * rewards_delta)
    elif kind == "ipo":
        per_pair = (chosen_rewards - reject_rewards - 1.0 / (2.0 * kl_penalty)) ** 2
    elif kind == "rpo_sq":
        per_pair = (kl_penalty * rewards_delta - gt_delta()) ** 2
    elif kind in ("rpo_bwd_kl", "rpo_fwd_kl"):
        logbeta_c = F.logsigmoid(kl_penalty * rewards_delta)
        logbeta_r = F.logsigmoid(-kl_penalty * rewards_delta)
        logalpha_c = F.logsigmoid(gt_delta())
        logalpha_r = F.logsigmoid(-gt_delta())
        if kind == "rpo_bwd_kl":
            per_pair = torch.exp(logalpha_c) * (logalpha_c - logbeta_c) + torch.exp(logalpha_r) * (
                logalpha_r - logbeta_r
            )
        else:
            per_pair = torch.exp(logbeta_c) * (logbeta_c - logalpha_c) + torch.exp(logbeta_r) * (
                logbeta_r - logalpha_r
            )
    else:
        raise ValueError("unknown preference_loss " + kind)
    preference_loss = per_pair.sum() / n
    sft_loss = -pc.sum() / n
    loss = w_pref * preference_loss + w_sft * sft_loss
    gc, gr = torch.autograd.grad(loss, (pc, pr), allow_unused=True)
    gc = torch.zeros_like(pc) if gc is None else gc
    gr = torch.zeros_like(pr) if gr is None else gr
    out_c = chosen_rewards.detach()
    out_r = reject_rewards.detach()
    rewards_all = torch.cat((out_c, out_r))
    return {
        "value": loss.detach(),
        "grad": torch.stack([gc, gr], dim=0),
        "loss": loss.detach(),
        "preference_loss": preference_loss.detach(),
        "sft_loss": sft_loss.detach(),
        "acc": (out_c > out_r).double().mean(),
        "rewards_chosen_mean": out_c.mean(),
        "rewards_rejected_mean": out_r.mean(),
        "rewards_all_mean": rewards_all.mean(),
        "rewards_all_std": rewards_all.std(),
    }


def hypo(x, p, s):
    """HyPO: the DPO loss type on the offline pairs + lam * KL estimate on the online samples,
    whose gradient is the RLOO estimator: surrogate mean_j (r_j - leave-one-out mean) * logp_j
    with r = logp - ref_logp detached."""
    pc = _v(x["policy_chosen_logps"]).clone().requires_grad_(True)
    pr = _v(x["policy_rejected_logps"]).clone().requires_grad_(True)
    rc = _v(x["ref_chosen_logps"])
    rr = _v(x["ref_rejected_logps"])
    n = _scalar(p, "num_pairs", float(pc.shape[0]))
    lam = _scalar(p, "lambda")
    (losses,) = preference._loss_terms(pc, pr, rc, rr, p, s, [s["loss"]], None)
    dpo_value = losses.sum() / n
    logp = x["online_logps"].clone().requires_grad_(True)  # [P, k]
    ref_logp = x["online_ref_logps"]
    num_prompts, k = logp.shape
    m = _scalar(p, "num_prompts", float(num_prompts))
    r = (logp - ref_logp).detach()
    loo_baseline = (r.sum(dim=1, keepdim=True) - r) / (k - 1)
    advantage = r - loo_baseline
    surrogate = lam * (advantage * logp).sum() / (m * k)
    kl_estimate = r.sum() / (m * k)
    gc, gr = torch.autograd.grad(dpo_value, (pc, pr), allow_unused=True)
    gc = torch.zeros_like(pc) if gc is None else gc
    gr = torch.zeros_like(pr) if gr is None else gr
    (g_online,) = torch.autograd.grad(surrogate, (logp,))
    beta = _scalar(p, "beta")
    cr = beta * (pc - rc).detach()
    rj = beta * (pr - rr).detach()
    return {
        "value": dpo_value.detach() + lam * kl_estimate,
        "grad_pairs": torch.stack([gc, gr], dim=0),
        "grad_online": g_online,
        "objective/kl": r.mean(),
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rj.mean(),
        "rewards/accuracies": (cr > rj).double().mean(),
        "rewards/margins": (cr - rj).mean(),
        "logps/chosen": pc.detach().mean(),
        "logps/rejected": pr.detach().mean(),
    }
