"""PyTorch references for the unpaired preference losses (include/rlpo/preference/kto.hpp, bco.hpp).

Written after TRL: KTO from `KTOTrainer._compute_loss` (trl/trainer/kto_trainer.py) and BCO from
`BCOTrainer.bco_loss` (trl/experimental/bco/bco_trainer.py); torch autograd gives the gradients.
Chosen and rejected examples are separate tensors of independent sizes (possibly empty); the
loss is the mean of the concatenated weighted losses. TRL's `1 - sigmoid(x)` is written
`sigmoid(-x)`, the same function, so that float64 keeps its relative precision where the
sigmoid saturates.
"""
import torch
import torch.nn.functional as F


def _col(x):
    return x.reshape(-1)


def _scalar(p, name, default):
    return float(p[name].reshape(-1)[0]) if name in p else default


def _side_metrics(out, beta, pc, rc, pr, rr):
    nc, nr = pc.numel(), pr.numel()
    chosen_rewards = beta * (pc - rc).detach()
    rejected_rewards = beta * (pr - rr).detach()
    if nc > 0:
        out["rewards/chosen"] = chosen_rewards.sum() / nc
        out["logps/chosen"] = pc.detach().sum() / nc
    if nr > 0:
        out["rewards/rejected"] = rejected_rewards.sum() / nr
        out["logps/rejected"] = pr.detach().sum() / nr
    if nc > 0 and nr > 0:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    return out


def _finish(pc, pr, losses, n):
    loss = losses.sum() / n if losses.numel() > 0 else torch.zeros((), dtype=torch.float64)
    if losses.numel() > 0:
        gc, gr = torch.autograd.grad(loss, (pc, pr), allow_unused=True)
    else:
        gc, gr = None, None
    gc = torch.zeros_like(pc) if gc is None else gc
    gr = torch.zeros_like(pr) if gr is None else gr
    return loss.detach(), torch.cat((gc, gr)).reshape(1, -1)


def kto(x, p, s):
    """KTO (loss_type "kto") or unpaired APO-zero ("apo_zero_unpaired"); the KL baseline from
    p["kl"] or from the KL log-probs x["policy_KL_logps"], x["ref_KL_logps"]."""
    pc = _col(x["policy_chosen_logps"]).clone().requires_grad_(True)
    pr = _col(x["policy_rejected_logps"]).clone().requires_grad_(True)
    rc = _col(x["ref_chosen_logps"])
    rr = _col(x["ref_rejected_logps"])
    beta = _scalar(p, "beta", 0.1)
    wd = _scalar(p, "desirable_weight", 1.0)
    wu = _scalar(p, "undesirable_weight", 1.0)
    loss_type = s.get("loss_type", "kto")
    if loss_type == "kto":
        if "kl" in p:
            kl = torch.tensor(_scalar(p, "kl", 0.0), dtype=torch.float64).clamp(min=0)
        else:
            kl = (_col(x["policy_KL_logps"]) - _col(x["ref_KL_logps"])).mean().detach().clamp(min=0)
    else:
        kl = torch.zeros((), dtype=torch.float64)
    chosen_logratios = pc - rc
    rejected_logratios = pr - rr
    if loss_type == "kto":
        chosen_losses = torch.sigmoid(-beta * (chosen_logratios - kl))  # 1 - σ(β(u - z0))
        rejected_losses = torch.sigmoid(-beta * (kl - rejected_logratios))  # 1 - σ(β(z0 - u))
    elif loss_type == "apo_zero_unpaired":
        chosen_losses = torch.sigmoid(-beta * chosen_logratios)
        rejected_losses = torch.sigmoid(beta * rejected_logratios)
    else:
        raise ValueError("unknown KTO loss type " + loss_type)
    losses = torch.cat((wd * chosen_losses, wu * rejected_losses), 0)
    n = _scalar(p, "num_examples", float(losses.numel()))
    value, grad = _finish(pc, pr, losses, n)
    out = {"value": value, "grad": grad, "kl": kl}
    return _side_metrics(out, beta, pc, rc, pr, rr)


def bco(x, p, s):
    """BCO with a given reward shift delta and optional per-example weights."""
    pc = _col(x["policy_chosen_logps"]).clone().requires_grad_(True)
    pr = _col(x["policy_rejected_logps"]).clone().requires_grad_(True)
    rc = _col(x["ref_chosen_logps"])
    rr = _col(x["ref_rejected_logps"])
    beta = _scalar(p, "beta", 0.1)
    delta = torch.tensor(_scalar(p, "delta", 0.0), dtype=torch.float64)
    chosen_rewards = beta * (pc - rc)
    rejected_rewards = beta * (pr - rr)
    chosen_losses = -F.logsigmoid(chosen_rewards - delta)
    rejected_losses = -F.logsigmoid(-(rejected_rewards - delta))
    cw = _col(x["chosen_weights"]) if "chosen_weights" in x else torch.ones_like(chosen_losses)
    rw = _col(x["rejected_weights"]) if "rejected_weights" in x else torch.ones_like(rejected_losses)
    losses = torch.cat((cw * chosen_losses, rw * rejected_losses), dim=0)
    n = _scalar(p, "num_examples", float(losses.numel()))
    value, grad = _finish(pc, pr, losses, n)
    out = {"value": value, "grad": grad, "delta": delta}
    return _side_metrics(out, beta, pc, rc, pr, rr)
