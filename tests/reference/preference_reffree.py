"""PyTorch references for the reference-free preference losses (include/rlpo/preference/cpo.hpp,
orpo.hpp): independently written formulas + autograd.

CPO / SimPO / AlphaPO after TRL's CPOTrainer (trl/experimental/cpo/cpo_trainer.py: `cpo_loss`,
`concatenated_forward`, `get_batch_loss_metrics`) and ORPO after TRL's ORPOTrainer
(trl/experimental/orpo/orpo_trainer.py: `log1mexp`, `odds_ratio_loss`). Inputs are the summed
completion log-probs and the completion lengths; the averaged log-probs are sum / length (the
length clamped at 1), the NLL is the token mean over the chosen completions (TRL's
CrossEntropyLoss), -sum(pc) / sum(len_c) unless a global token count is given.
"""
import torch
import torch.nn.functional as F


def _col(x):
    return x.reshape(-1)


def _scalar(p, name, default):
    return float(p[name].reshape(-1)[0]) if name in p else default


def _inputs(x):
    pc = _col(x["policy_chosen_logps"]).clone().requires_grad_(True)
    pr = _col(x["policy_rejected_logps"]).clone().requires_grad_(True)
    lc = _col(x["len_chosen"]) if "len_chosen" in x else None
    lr = _col(x["len_rejected"]) if "len_rejected" in x else None
    return pc, pr, lc, lr


def _grads(value, pc, pr):
    gc, gr = torch.autograd.grad(value, (pc, pr), allow_unused=True)
    gc = torch.zeros_like(pc) if gc is None else gc
    gr = torch.zeros_like(pr) if gr is None else gr
    return torch.stack([gc, gr], dim=0)


def cpo(x, p, s):
    pc, pr, lc, lr = _inputs(x)
    beta = _scalar(p, "beta", 0.1)
    eps = _scalar(p, "label_smoothing", 0.0)
    cpo_alpha = _scalar(p, "cpo_alpha", 1.0)
    gamma = _scalar(p, "simpo_gamma", 0.5)
    alpha = _scalar(p, "alpha", 0.0)
    loss_type = s["loss_type"]
    if loss_type in ("ipo", "simpo"):  # TRL: get_batch_logps(average_log_prob=True)
        chosen = pc / lc.clamp(min=1.0)
        rejected = pr / lr.clamp(min=1.0)
    else:
        chosen, rejected = pc, pr
    if alpha != 0.0:  # AlphaPO reward, written as TRL does: (1 - p^(-alpha)) / alpha
        rew_c = (1 - torch.exp(chosen).pow(-alpha)) / alpha
        rew_r = (1 - torch.exp(rejected).pow(-alpha)) / alpha
    else:
        rew_c, rew_r = chosen, rejected
    logits = rew_c - rew_r
    if loss_type == "simpo":
        logits = logits - gamma / beta
        losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    elif loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError("unknown CPO loss type " + loss_type)
    n = _scalar(p, "num_pairs", float(pc.shape[0]))
    if cpo_alpha == 0.0:
        nll = torch.zeros((), dtype=torch.float64)
    else:
        ntok = _scalar(p, "num_nll_tokens", float(lc.sum()) if lc is not None else 0.0)
        nll = -pc.sum() / ntok
    value = losses.sum() / n + cpo_alpha * nll
    cr = beta * rew_c.detach()
    rj = beta * rew_r.detach()
    return {
        "value": value.detach(),
        "grad": _grads(value, pc, pr),
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rj.mean(),
        "rewards/accuracies": (cr > rj).double().mean(),
        "rewards/margins": (cr - rj).mean(),
        "logps/chosen": chosen.detach().mean(),
        "logps/rejected": rejected.detach().mean(),
        "nll_loss": nll.detach(),
    }


def _log1mexp(a):
    # log(1 - exp(a)), a < 0, split at -log 2 (Maechler)
    return torch.where(a < -0.6931471805599453, torch.log1p(-torch.exp(a)), torch.log(-torch.expm1(a)))


def orpo(x, p, s):
    pc, pr, lc, lr = _inputs(x)
    beta = _scalar(p, "beta", 0.1)
    compute_nll = _scalar(p, "compute_nll", 1.0) != 0.0
    ac = pc / lc.clamp(min=1.0)
    ar = pr / lr.clamp(min=1.0)
    # log odds(y_c) - log odds(y_l), odds = P / (1 - P) with P = exp(mean token log-prob)
    log_odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
    ratio = F.logsigmoid(log_odds)
    n = _scalar(p, "num_pairs", float(pc.shape[0]))
    ntok = _scalar(p, "num_nll_tokens", float(lc.sum()))
    nll = -pc.sum() / ntok if compute_nll else torch.zeros((), dtype=torch.float64)
    value = nll - beta * ratio.sum() / n
    cr = beta * ac.detach()
    rj = beta * ar.detach()
    return {
        "value": value.detach(),
        "grad": _grads(value, pc, pr),
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rj.mean(),
        "rewards/accuracies": (cr > rj).double().mean(),
        "rewards/margins": (cr - rj).mean(),
        "logps/chosen": ac.detach().mean(),
        "logps/rejected": ar.detach().mean(),
        "nll_loss": (-pc.sum() / float(lc.sum())).detach() if compute_nll else torch.zeros(()),
        "log_odds_ratio": ratio.detach().mean(),
        "log_odds_chosen": log_odds.detach().mean(),
    }


def dpo_sft(x, p, s):
    """TRL DPOTrainer with loss_type = [sigmoid, sft] (loss_weights w_sig, w_sft), written as TRL
    writes it: the sigmoid term on u = pi - ref, the sft term one cross-entropy over the chosen
    completion tokens (here -sum(pc) / N) expanded to every pair; optional WPO pair weights
    multiply both per-sequence losses before the mean."""
    pc, pr, lc, lr = _inputs(x)
    rc = _col(x["ref_chosen_logps"])
    rr = _col(x["ref_rejected_logps"])
    beta = _scalar(p, "beta", 0.1)
    w_sig = _scalar(p, "w_sigmoid", 1.0)
    w_sft = _scalar(p, "w_sft", 1.0)
    n = _scalar(p, "num_pairs", float(pc.shape[0]))
    ntok = _scalar(p, "num_sft_tokens", float(lc.sum()) if lc is not None else 0.0)
    omega = _col(x["pair_weights"]) if "pair_weights" in x else torch.ones_like(pc.detach())
    logits = (pc - rc) - (pr - rr)
    sig = -F.logsigmoid(beta * logits)
    # TRL: the scalar NLL expanded to every pair, times omega, averaged over the pairs. With a
    # global token count the NLL is this call's share -sum(pc)/N of the batch's token mean, and it
    # is not divided by the global pair count again.
    sft = (-pc.sum() / ntok).expand(pc.shape[0])
    value = w_sig * (sig * omega).sum() / n + w_sft * (sft * omega).mean()
    return {"value": value.detach(), "grad": _grads(value, pc, pr)}


def ld_logps(x, p, s):
    """TRL's LD-DPO sequence log-probs (`ld_alpha`), written as TRL writes them (cumsum positions,
    shared / tail masks on log-probs zeroed outside the completion mask), and the token gradient
    of <g, logps> by autograd (the VJP with the given [2, B] g)."""
    logp = x["token_logps"].clone()
    mask = x["mask"]
    g = x["g"]
    alpha = _scalar(p, "ld_alpha", 1.0)
    logp = torch.where(mask == 0, torch.zeros_like(logp), logp).requires_grad_(True)
    per_token = logp * (mask != 0)
    comp_pos = mask.cumsum(dim=1)
    comp_lens = mask.sum(dim=1)
    chosen_lens, rejected_lens = comp_lens.chunk(2, dim=0)
    shared = torch.minimum(chosen_lens, rejected_lens)
    shared = torch.cat([shared, shared], dim=0)
    shared_mask = (comp_pos > 0) & (comp_pos <= shared.unsqueeze(1))
    tail_mask = comp_pos > shared.unsqueeze(1)
    logps = (per_token * shared_mask).sum(dim=1) + alpha * (per_token * tail_mask).sum(dim=1)
    c, r = logps.chunk(2, dim=0)
    out = torch.stack([c, r], dim=0)
    (grad,) = torch.autograd.grad((out * g).sum(), (logp,))
    return {"logps": out.detach(), "token_grad": grad}
