"""PyTorch references for include/rlpo/preference/ (independently written formulas + autograd).

Each loss is written after TRL's DPOTrainer (trl/trainer/dpo_trainer.py, `_compute_loss`), with
the cDPO label smoothing of TRL <= 0.24's `dpo_loss` on `sigmoid` and the running-mean delta of
its `bco_pair` given as a parameter; torch autograd gives the gradients.
"""
import torch
import torch.nn.functional as F


def _col(x):
    return x.reshape(-1)


def _loss_terms(pc, pr, rc, rr, p, s, names, lens):
    beta = float(p["beta"])
    eps = float(p.get("label_smoothing", torch.zeros(1, 1)).reshape(-1)[0])
    tau = float(p["discopop_tau"]) if "discopop_tau" in p else 0.05
    delta = float(p["bco_delta"]) if "bco_delta" in p else 0.0
    sig_eps = eps if float(p.get("sigmoid_smoothing", torch.ones(1, 1)).reshape(-1)[0]) != 0 else 0.0
    chosen_logratios = pc - rc
    rejected_logratios = pr - rr
    # f-DPO scores (TRL f_divergence_type); the loss types that read scores use these
    fdiv = s.get("f_divergence", "reverse_kl")
    if fdiv == "reverse_kl":
        chosen_scores, rejected_scores = chosen_logratios, rejected_logratios
    elif fdiv == "forward_kl":
        chosen_scores, rejected_scores = -torch.exp(-chosen_logratios), -torch.exp(-rejected_logratios)
    elif fdiv == "js_divergence":
        chosen_scores, rejected_scores = F.logsigmoid(chosen_logratios), F.logsigmoid(rejected_logratios)
    elif fdiv == "alpha_divergence":
        alpha = float(p["f_alpha"])
        if abs(alpha - 1.0) < 1e-6:
            chosen_scores, rejected_scores = chosen_logratios, rejected_logratios
        else:
            coef = 1.0 / (alpha - 1.0)
            chosen_scores = torch.exp(torch.clamp((alpha - 1.0) * chosen_logratios, max=80.0)) * coef
            rejected_scores = torch.exp(torch.clamp((alpha - 1.0) * rejected_logratios, max=80.0)) * coef
    else:
        raise ValueError("unknown f-divergence " + fdiv)
    delta_score = chosen_scores - rejected_scores
    out = []
    for name in names:
        if name == "sigmoid":
            losses = -F.logsigmoid(beta * delta_score) * (1 - sig_eps) - F.logsigmoid(-beta * delta_score) * sig_eps
        elif name == "hinge":
            losses = torch.relu(1 - beta * delta_score)
        elif name == "ipo":
            lc, lr = lens
            d = chosen_scores / lc.clamp(min=1.0) - rejected_scores / lr.clamp(min=1.0)
            losses = (d - 1 / (2 * beta)) ** 2
        elif name == "robust":
            losses = (
                -F.logsigmoid(beta * delta_score) * (1 - eps) + F.logsigmoid(-beta * delta_score) * eps
            ) / (1 - 2 * eps)
        elif name == "exo_pair":
            e = torch.tensor(eps, dtype=torch.float64)
            z = beta * delta_score
            losses = torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-e)) + torch.sigmoid(-z) * (
                F.logsigmoid(-z) - torch.log(e)
            )
        elif name == "nca_pair":
            cr = beta * chosen_scores
            rj = beta * rejected_scores
            losses = -F.logsigmoid(cr) - 0.5 * F.logsigmoid(-cr) - 0.5 * F.logsigmoid(-rj)
        elif name == "sppo_hard":
            losses = (chosen_scores - 0.5 / beta) ** 2 + (rejected_scores + 0.5 / beta) ** 2
        elif name == "aot":
            lr_sorted, _ = torch.sort(pc - pr, dim=0)
            ref_sorted, _ = torch.sort(rc - rr, dim=0)
            dlt = lr_sorted - ref_sorted
            losses = -F.logsigmoid(beta * dlt) * (1 - eps) - F.logsigmoid(-beta * dlt) * eps
        elif name in ("aot_unpaired", "aot_pair"):
            c_sorted, _ = torch.sort(chosen_logratios, dim=0)
            r_sorted, _ = torch.sort(rejected_logratios, dim=0)
            dlt = c_sorted - r_sorted
            losses = -F.logsigmoid(beta * dlt) * (1 - eps) - F.logsigmoid(-beta * dlt) * eps
        elif name == "apo_zero":
            losses = (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
        elif name == "apo_down":
            losses = torch.sigmoid(beta * chosen_logratios) + (1 - torch.sigmoid(beta * delta_score))
        elif name == "discopop":
            z = beta * delta_score
            mod = torch.sigmoid(z / tau)
            losses = -F.logsigmoid(z) * (1 - mod) + torch.exp(-z) * mod
        elif name == "bco_pair":
            losses = -F.logsigmoid(beta * chosen_scores - delta) - F.logsigmoid(-(beta * rejected_scores - delta))
        elif name == "sigmoid_norm":
            lc, lr = lens
            d = chosen_scores / lc.clamp(min=1.0) - rejected_scores / lr.clamp(min=1.0)
            losses = -F.logsigmoid(beta * d)
        else:
            raise ValueError("unknown DPO loss type " + name)
        out.append(losses)
    return out


def dpo(x, p, s):
    """Weighted sum of the per-pair means of the loss types named in s["losses"] (comma
    separated), weights p["weights"] (default 1); num_pairs (optional) replaces B in the mean."""
    pc = _col(x["policy_chosen_logps"]).clone().requires_grad_(True)
    pr = _col(x["policy_rejected_logps"]).clone().requires_grad_(True)
    rc = _col(x["ref_chosen_logps"])
    rr = _col(x["ref_rejected_logps"])
    lens = (_col(x["len_chosen"]), _col(x["len_rejected"])) if "len_chosen" in x else None
    names = s["losses"].split(",")
    weights = _col(p["weights"]).tolist() if "weights" in p else [1.0] * len(names)
    n = float(p["num_pairs"]) if "num_pairs" in p else float(pc.shape[0])
    terms = _loss_terms(pc, pr, rc, rr, p, s, names, lens)
    # WPO (TRL use_weighting): per_sequence_loss *= chosen_weights * rejected_weights, constants
    omega = _col(x["pair_weights"]) if "pair_weights" in x else torch.ones_like(pc.detach())
    value = torch.zeros((), dtype=torch.float64)
    for w, losses in zip(weights, terms):
        value = value + w * (losses * omega).sum() / n
    gc, gr = torch.autograd.grad(value, (pc, pr), allow_unused=True)
    gc = torch.zeros_like(pc) if gc is None else gc
    gr = torch.zeros_like(pr) if gr is None else gr
    beta = float(p["beta"])
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
