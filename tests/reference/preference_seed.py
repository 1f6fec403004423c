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
