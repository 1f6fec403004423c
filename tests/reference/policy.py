"""PyTorch references for include/rlpo/policy/ (independently written formulas + autograd)."""
import math

import torch

from common import aggregate, clean, grad_of, leaf_under_mask, masked_mean


def ppo_clip(x, p, s):
    """PPO clip as verl's compute_policy_loss_vanilla writes it: clamp the log-ratio, take
    max(−A r, −A clip(r)), and for A < 0 min(that, −A c) when dual-clip is on; with
    `two_sided_delta` the unclipped ratio is min(r, δ) as in TRL's GRPO loss."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    eps_l, eps_h = float(p["clip_low"]), float(p["clip_high"])
    L = float(p["log_ratio_clamp"])
    dual = float(p["dual_clip"]) if "dual_clip" in p else None

    delta = float(p["two_sided_delta"]) if "two_sided_delta" in p else None

    neg_kl = logp - old
    if math.isfinite(L):
        neg_kl = torch.clamp(neg_kl, min=-L, max=L)
    ratio = torch.exp(neg_kl)
    # INTELLECT-2 / TRL `delta`: the unclipped branch's ratio is capped at δ (for every token)
    unclipped = torch.clamp(ratio, max=delta) if delta is not None else ratio
    loss1 = -adv * unclipped
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


# ---------------------------------------------------------------------------------------------
# Surrogates beyond PPO clip. Each is written from the paper / anchor formula with torch ops and
# differentiated by autograd; "is_weights" (optional input) multiplies the per-token loss.
# ---------------------------------------------------------------------------------------------


def _weights(x, mask):
    if "is_weights" in x:
        return clean(x["is_weights"], mask)
    return torch.ones_like(mask)


def _finish(per_token, leaf, mask, p, s, metrics):
    per_token = torch.where(mask != 0, per_token, torch.zeros_like(per_token))
    value = aggregate(per_token, mask, p, s)
    out = {"value": value.detach(), "grad": grad_of(value, leaf)}
    out.update(_verl_means(metrics, mask, p))
    return out


def _verl_means(metrics, mask, p):
    """verl's masked_mean divides by the mask sum + ε: the token means given as masked_mean
    become sum / (n + ε) when the case carries a count_epsilon."""
    eps = float(p.get("count_epsilon", 0.0))
    n = float(mask.sum())
    return {k: (v * n / (n + eps) if n > 0 else v) for k, v in metrics.items()}


def reinforce(x, p, s):
    """GPG / REINFORCE: the score-function surrogate −A·log π."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    adv = clean(x["advantages"], mask)
    return _finish(-adv * logp * _weights(x, mask), leaf, mask, p, s, {})


def cispo(x, p, s):
    """CISPO: the IS weight is bounded and detached; the gradient is that of −w·A·log π."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    L = float(p["log_ratio_clamp"])
    log_ratio = logp - old
    if math.isfinite(L):
        log_ratio = log_ratio.clamp(-L, L)
    ratio = log_ratio.exp()
    if s["bound"] == "clip":
        bounded = ratio.clamp(1.0 - float(p["clip_low"]), 1.0 + float(p["clip_high"]))
    else:
        bounded = ratio.clamp(max=float(p["cap"]))
    is_weight = bounded.detach()
    per_token = -(is_weight * adv * logp) * _weights(x, mask)
    metrics = {
        "pg_clipfrac": masked_mean((ratio != bounded).double(), mask),
        "pg_clipfrac_lower": torch.zeros(()),
        "ppo_kl": masked_mean(-log_ratio.detach(), mask),
    }
    if s["bound"] == "cap":
        metrics["cispo_clip_ratio"] = masked_mean(((ratio > float(p["cap"])) & (adv > 0)).double(), mask)
    return _finish(per_token, leaf, mask, p, s, metrics)


def gspo(x, p, s):
    """GSPO: s_i = exp(mean_t log-ratio), PPO-clipped. Token level: the value of s_i with the
    gradient of the token's own log-prob (log ŝ = logp − sg(logp) + sg(log s_i)); sequence
    level: s_i with its full gradient."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    K = float(p["log_ratio_cap"])
    log_ratio = logp - old
    lens = mask.sum(dim=1, keepdim=True)
    seq_log_ratio = (log_ratio * mask).sum(dim=1, keepdim=True) / lens.clamp(min=1e-300)
    if s["level"] == "token":
        log_s = logp - logp.detach() + seq_log_ratio.detach()
    else:
        log_s = seq_log_ratio.expand_as(logp)
    if math.isfinite(K):
        log_s = log_s.clamp(max=K)
    ratio = log_s.exp()
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - float(p["clip_low"]), 1.0 + float(p["clip_high"]))
    per_token = torch.maximum(loss1, loss2) * _weights(x, mask)
    metrics = {
        "pg_clipfrac": masked_mean((loss2 > loss1).double(), mask),
        "pg_clipfrac_lower": torch.zeros(()),
        "ppo_kl": masked_mean(-log_ratio.detach(), mask),
    }
    return _finish(per_token, leaf, mask, p, s, metrics)



def luspo(x, p, s):
    """LUSPO as TRL's GRPOTrainer writes loss_type="luspo" with importance_sampling_level=
    "sequence": per row the ratio exp(masked mean log-ratio), the sequence loss
    −min(ratio·A, clip(ratio)·A) with the row's advantage (the advantages are row-constant here),
    times the row length mask.sum(1), averaged over the rows: all rows when "num_seqs" gives
    their count (TRL's .mean() over B), else the non-empty ones. is_weights scale each token's
    share of its row's loss (the length becomes Σ_t m·w)."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    lens = mask.sum(1, keepdim=True)
    log_ratio = logp - old
    seq_log_ratio = (log_ratio * mask).sum(1, keepdim=True) / lens.clamp(min=1.0)
    coef_1 = torch.exp(seq_log_ratio)
    coef_2 = torch.clamp(coef_1, 1.0 - float(p["clip_low"]), 1.0 + float(p["clip_high"]))
    row_adv = (adv * mask).sum(1, keepdim=True) / lens.clamp(min=1.0)
    seq_loss = -torch.minimum(coef_1 * row_adv, coef_2 * row_adv)
    length = (mask * _weights(x, mask)).sum(1, keepdim=True)
    rows = float(p["num_seqs"]) if "num_seqs" in p else float((lens > 0).sum())
    value = (seq_loss * length).sum() / rows if rows > 0 else (seq_loss * 0.0).sum()
    clipped = (-coef_2 * row_adv > -coef_1 * row_adv).double().expand_as(mask)
    out = {"value": value.detach(), "grad": grad_of(value, leaf)}
    out.update(
        {
            "pg_clipfrac": masked_mean(clipped, mask),
            "pg_clipfrac_lower": torch.zeros(()),
            "ppo_kl": masked_mean(-log_ratio.detach(), mask),
        }
    )
    return out

def weighted_ppo_clip(x, p, s):
    """PPO clip (verl's vanilla, dual-clip optional) with the per-token loss multiplied by the
    rollout IS weights afterwards, as verl applies rollout_is_weights."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    L = float(p["log_ratio_clamp"])
    log_ratio = logp - old
    if math.isfinite(L):
        log_ratio = log_ratio.clamp(-L, L)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - float(p["clip_low"]), 1.0 + float(p["clip_high"]))
    per_token = torch.maximum(unclipped, clipped)
    if "dual_clip" in p:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * float(p["dual_clip"])), per_token)
    return _finish(per_token * _weights(x, mask), leaf, mask, p, s,
                   {"ppo_kl": masked_mean(-log_ratio.detach(), mask)})


def sapo(x, p, s):
    """SAPO: the soft gate (4/τ)·σ(τ(r − 1)) replaces the clipped ratio; τ by the sign of A."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    L = float(p["log_ratio_clamp"])
    log_ratio = logp - old
    if math.isfinite(L):
        log_ratio = log_ratio.clamp(-L, L)
    ratio = log_ratio.exp()
    tau = torch.where(adv > 0, torch.full_like(adv, float(p["tau_pos"])), torch.full_like(adv, float(p["tau_neg"])))
    gate = torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau
    metrics = {"pg_clipfrac": torch.zeros(()), "pg_clipfrac_lower": torch.zeros(()),
               "ppo_kl": masked_mean(-log_ratio.detach(), mask)}
    return _finish(-gate * adv * _weights(x, mask), leaf, mask, p, s, metrics)


def dppo(x, p, s):
    """DPPO binary-TV / binary-KL: a detached, truncated IS weight times −A·log π, kept only
    inside the divergence trust region in the direction of the advantage."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    log_ratio = (logp - old).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    c = float(p["ratio_cap"])
    trunc = ratio.clamp(max=c).detach()
    prob, old_prob = logp.detach().exp(), old.exp()
    lo, hi = float(p["delta_low"]), float(p["delta_high"])
    if s["divergence"] == "tv":
        keep_pos = (prob - old_prob) <= hi
        keep_neg = (prob - old_prob) >= -lo
    else:
        bkl = old_prob * (old - logp.detach()) + (1 - old_prob) * torch.log((1 - old_prob + 1e-8) / (1 - prob + 1e-8))
        keep_pos = (bkl <= hi) | (prob <= old_prob)
        keep_neg = (bkl <= lo) | (prob >= old_prob)
    keep = torch.where(adv > 0, keep_pos, keep_neg).double()
    per_token = -adv * trunc * logp * keep * _weights(x, mask)
    metrics = {"pg_clipfrac": masked_mean(1.0 - keep, mask),
               "pg_clipfrac_lower": masked_mean((ratio.detach() > c).double() * keep, mask),
               "ppo_kl": masked_mean(-log_ratio.detach(), mask)}
    return _finish(per_token, leaf, mask, p, s, metrics)


def dro(x, p, s):
    """DRO per token: −(A·log π − ½β·(log π − log π_old)²)."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    beta = float(p["beta"])
    per_token = -(adv * logp - 0.5 * beta * (logp - old) ** 2)
    return _finish(per_token * _weights(x, mask), leaf, mask, p, s,
                   {"ppo_kl": masked_mean(-(logp - old).detach(), mask)})


def gmpo(x, p, s):
    """GMPO: per row, −mean(A)·exp(mean of the sign-clipped log-ratios); broadcast to tokens for
    the aggregation; token weights combined per row by their geometric mean."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    log_ratio = logp - old
    sgn = torch.sign(adv)
    clamped = log_ratio.clamp(-float(p["clip_low"]), float(p["clip_high"]))
    clipped_lr = sgn * torch.min(sgn * log_ratio, sgn * clamped)
    lens = mask.sum(dim=1, keepdim=True)
    eps = float(p.get("length_epsilon", 0.0))  # verl: the row means divide by |y_i| + 1e-8
    safe = lens.clamp(min=1e-300) + eps
    rho = torch.exp((clipped_lr * mask).sum(dim=1, keepdim=True) / safe)
    abar = (adv * mask).sum(dim=1, keepdim=True) / safe
    seq_loss = -abar * rho
    if "is_weights" in x:
        w = torch.where(mask != 0, clean(x["is_weights"], mask), torch.ones_like(mask))
        seq_loss = seq_loss * torch.exp((torch.log(w) * mask).sum(dim=1, keepdim=True) / safe)
    is_clipped = (log_ratio != clamped).detach()
    metrics = {"pg_clipfrac": masked_mean((is_clipped & (adv > 0)).double(), mask),
               "pg_clipfrac_lower": masked_mean((is_clipped & (adv < 0)).double(), mask),
               "ppo_kl": masked_mean(-log_ratio.detach(), mask)}
    if eps > 0 and s.get("agg") == "seq-mean-token-mean":
        # verl: pg_loss = torch.mean over the rows of the row losses (not agg_loss)
        n_seq = float(p["num_seqs"]) if "num_seqs" in p else float((lens > 0).sum())
        value = torch.where(lens > 0, seq_loss, torch.zeros_like(seq_loss)).sum() / n_seq
    else:
        per_token = seq_loss.expand_as(logp)
        value = aggregate(torch.where(mask != 0, per_token, torch.zeros_like(per_token)), mask, p, s)
    out = {"value": value.detach(), "grad": grad_of(value, leaf)}
    out.update(_verl_means(metrics, mask, p))
    return out


def _covariance(adv, logp, mask, weighted):
    valid = mask != 0
    wts = mask if weighted else valid.double()
    n = wts.sum()
    mean_a = (adv * wts).sum() / n
    mean_l = (logp * wts).sum() / n
    return (adv - mean_a) * (logp - mean_l)


def clip_cov(x, p, s):
    """Clip-Cov given the selected tokens (input "selected"): PPO clip (no clamp) with the
    selected tokens' loss zeroed. Also returns the candidate set computed independently, so the
    test can check that the selection is a subset of it."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    ratio = (logp - old).exp()
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - float(p["clip_low"]), 1.0 + float(p["clip_high"]))
    cov = _covariance(adv, logp.detach(), mask, True)
    candidates = (mask != 0) & ~(loss2 > loss1) & (cov > float(p["cov_lb"])) & (cov < float(p["cov_ub"]))
    keep = 1.0 - clean(x["selected"], mask)
    per_token = torch.maximum(loss1, loss2) * keep * _weights(x, mask)
    metrics = {"pg_clipfrac": masked_mean(1.0 - keep, mask), "ppo_kl": masked_mean(-(logp - old).detach(), mask)}
    out = _finish(per_token, leaf, mask, p, s, metrics)
    out["candidates"] = candidates.double()
    out["k"] = torch.tensor(float(max(1, int(math.floor(float(p["ratio"]) * float(mask.sum()))))))
    return out


def kl_cov(x, p, s):
    """KL-Cov: −A·r everywhere, plus β·|log r| on the top-k tokens by covariance."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    log_ratio = logp - old
    valid = (mask != 0).reshape(-1)
    cov = _covariance(adv, logp.detach(), mask, False).reshape(-1)[valid]
    k = max(1, int(math.floor(cov.numel() * float(p["ratio"]))))
    top = torch.topk(cov, k).indices
    flat_idx = torch.nonzero(valid).reshape(-1)[top]
    selected = torch.zeros(logp.numel(), dtype=torch.float64)
    selected[flat_idx] = 1.0
    selected = selected.reshape(logp.shape)
    per_token = (-adv * log_ratio.exp() + float(p["kl_coef"]) * log_ratio.abs() * selected) * _weights(x, mask)
    return _finish(per_token, leaf, mask, p, s, {"ppo_kl": masked_mean(log_ratio.abs().detach(), mask)})


def rollout_correction(x, p, s):
    """Truncated / masked IS weights between the trainer's old log-probs and the rollout
    engine's, at token, sequence or geometric-mean sequence level (no gradient: constants)."""
    mask = x["mask"]
    old, roll = clean(x["old_logp"], mask), clean(x["rollout_logp"], mask)
    L, upper = float(p["log_ratio_clamp"]), float(p["upper"])
    mask_mode = s["mode"] == "mask"
    lower = float(p["lower"]) if "lower" in p else (1.0 / upper if mask_mode else 0.0)
    lower_metric = float(p["lower"]) if "lower" in p else 1.0 / upper
    log_ratio = old - roll
    lens = mask.sum(dim=1, keepdim=True)
    if s["level"] == "token":
        w = log_ratio.clamp(-L, L).exp()
    elif s["level"] == "sequence":
        w = ((log_ratio * mask).sum(dim=1, keepdim=True).clamp(-L, L)).exp().expand_as(old)
    else:
        w = (((log_ratio * mask).sum(dim=1, keepdim=True) / lens.clamp(min=1e-300)).clamp(-L, L)).exp().expand_as(old)
    valid = mask != 0
    if mask_mode:
        keep = (w >= lower) & (w <= upper) & valid
        weights = torch.where(keep, w, torch.zeros_like(w))
        new_mask = torch.where(keep, mask, torch.zeros_like(mask))
    else:
        weights = torch.where(valid, w.clamp(lower, upper), torch.zeros_like(w))
        new_mask = mask
    out = {"weights": weights, "mask": new_mask,
           "rollout_is_mean": masked_mean(w, mask),
           "rollout_is_ratio_fraction_high": masked_mean((w > upper).double(), mask),
           "rollout_is_ratio_fraction_low": masked_mean((w < lower_metric).double(), mask)}
    if mask_mode:
        out["rollout_rs_masked_fraction"] = masked_mean((valid & ~keep).double(), mask)
    return out


def off_policy_sequence_mask(x, p, s):
    """DeepSeek-V3.2: drop A < 0 tokens of sequences whose mean (rollout − current) log-prob
    exceeds δ."""
    mask = x["mask"]
    logp, roll, adv = clean(x["logp"], mask), clean(x["rollout_logp"], mask), clean(x["advantages"], mask)
    lens = mask.sum(dim=1, keepdim=True).clamp(min=1e-300)
    mean_kl = ((roll - logp) * mask).sum(dim=1, keepdim=True) / lens
    keep = ((adv >= 0) | (mean_kl <= float(p["delta"]))) & (mask != 0)
    return {"mask": torch.where(keep, mask, torch.zeros_like(mask)),
            "off_policy_masked_fraction": masked_mean(((mask != 0) & ~keep).double(), mask)}


def top_entropy_mask(x, p, s):
    mask = x["mask"]
    ent = clean(x["entropy"], mask)
    valid = mask != 0
    thr = torch.quantile(ent[valid], 1.0 - float(p["keep_fraction"]))
    keep = (ent >= thr) & valid
    return {"mask": torch.where(keep, mask, torch.zeros_like(mask)),
            "entropy_mask_kept_fraction": masked_mean(keep.double(), mask)}


def value_loss(x, p, s):
    """verl's clipped value loss: ½·agg(max((v − R)², (clamp(v, v_old ± c) − R)²))."""
    mask = x["mask"]
    leaf, v = leaf_under_mask(x["values"], mask)
    vo, R = clean(x["old_values"], mask), clean(x["returns"], mask)
    l1 = (v - R) ** 2
    if "clip" in p:
        c = float(p["clip"])
        vc = torch.max(torch.min(v, vo + c), vo - c)
        l2 = (vc - R) ** 2
        per_token = torch.max(l1, l2)
        clipfrac = masked_mean((l2 > l1).double(), mask)
    else:
        per_token = l1
        clipfrac = torch.zeros(())
    per_token = torch.where(mask != 0, per_token, torch.zeros_like(per_token))
    value = 0.5 * aggregate(per_token, mask, p, s)
    out = {"value": value.detach(), "grad": grad_of(value, leaf)}
    out.update(_verl_means({"vf_clipfrac": clipfrac, "vpred_mean": masked_mean(v.detach(), mask)}, mask, p))
    return out


def safe_critic_loss(x, p, s):
    """SAFE: V = soft-min of two heads; ½(Huber(V − R) + Huber(V_c − R)), V_c clipped around V_old."""
    mask = x["mask"]
    leaf1, v1 = leaf_under_mask(x["v1"], mask)
    leaf2, v2 = leaf_under_mask(x["v2"], mask)
    vo, R = clean(x["old_values"], mask), clean(x["returns"], mask)
    alpha, delta, c = float(p["alpha"]), float(p["huber_delta"]), float(p["clip"])
    V = -alpha * (torch.logsumexp(torch.stack([-v1 / alpha, -v2 / alpha], -1), -1) - math.log(2.0))
    Vc = vo + torch.clamp(V - vo, -c, c)
    hub = torch.nn.functional.huber_loss
    per_token = 0.5 * (hub(V, R, reduction="none", delta=delta) + hub(Vc, R, reduction="none", delta=delta))
    per_token = torch.where(mask != 0, per_token, torch.zeros_like(per_token))
    value = aggregate(per_token, mask, p, s)
    g1, g2 = torch.autograd.grad(value, [leaf1, leaf2])
    return {"value": value.detach(), "grad_v1": g1, "grad_v2": g2,
            "vf_clipfrac": masked_mean(((V - vo).abs() > c).double().detach(), mask),
            "vpred_mean": masked_mean(V.detach(), mask)}


def entropy_bonus(x, p, s):
    """Aggregated categorical entropy of softmax(logits) per unmasked position."""
    mask = x["mask"]
    B, T = mask.shape
    logits = x["logits"].clone().requires_grad_(True)
    row_mask = mask.reshape(-1) != 0
    z = torch.where(row_mask[:, None], logits, torch.zeros_like(logits))
    # H = logsumexp(z) − Σ softmax(z)·z, with −inf entries (probability 0) left out of the sum
    finite = torch.where(torch.isinf(z), torch.zeros_like(z), z)
    ent = (torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * finite).sum(-1)).reshape(B, T)
    value = aggregate(torch.where(mask != 0, ent, torch.zeros_like(ent)), mask, p, s)
    (g,) = torch.autograd.grad(value, logits)
    return {"value": value.detach(), "grad": g, "entropy": masked_mean(ent.detach(), mask)}


def ace_advantages(x, p, s):
    """ACE: negative advantages scaled by 1 + α·softplus(c_i), c_i = Σ_t (log π − log π_ref)."""
    mask = x["mask"]
    adv = clean(x["advantages"], mask)
    logp, ref = clean(x["logp"], mask), clean(x["ref_logp"], mask)
    c = ((logp - ref) * mask).sum(dim=1, keepdim=True)
    scale = 1.0 + float(p["alpha"]) * torch.nn.functional.softplus(c)
    out = torch.where(adv < 0, adv * scale, adv)
    neg = (adv < 0) & (mask != 0)
    scale_full = scale.expand_as(adv)
    n_neg = (mask * neg.double()).sum()
    return {"advantages": torch.where(mask != 0, out, torch.zeros_like(out)),
            "ace_scale_mean": (scale_full * mask * neg.double()).sum() / n_neg if n_neg > 0 else torch.zeros(()),
            "ace_confidence_mean": masked_mean(c.expand_as(adv), mask)}


def trrd(x, p, s):
    """TRRD (RLAD, arXiv 2602.22495 Eq. 3-5): PPO clip of r = (π/π_old)^α·(π/π_T)^(1−α), α the
    weight of the old student, with log(π/π_T) clamped to [−c, c] (Appendix B); or, as an
    option, of π/π_mix with π_mix = α·π_old + (1−α)·π_T."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, teacher, adv = clean(x["old_logp"], mask), clean(x["teacher_logp"], mask), clean(x["advantages"], mask)
    alpha = float(p["old_weight"])
    c = float(p["teacher_log_ratio_clamp"])
    if s["mixture"] == "geometric":
        anchor = alpha * old + (1 - alpha) * teacher
        to_teacher = logp - teacher
        if math.isfinite(c):
            to_teacher = to_teacher.clamp(-c, c)
        log_ratio = alpha * (logp - old) + (1 - alpha) * to_teacher
        clamped = ((logp.detach() - teacher).abs() > c).double()
    else:
        if alpha == 1:
            anchor = old
        elif alpha == 0:
            anchor = teacher
        else:
            anchor = torch.logaddexp(math.log(alpha) + old, math.log(1 - alpha) + teacher)
        log_ratio = logp - anchor
        clamped = torch.zeros_like(logp)
    L = float(p["log_ratio_clamp"])
    if math.isfinite(L):
        log_ratio = log_ratio.clamp(-L, L)
    ratio = log_ratio.exp()
    l1 = -adv * ratio
    l2 = -adv * ratio.clamp(1 - float(p["clip_low"]), 1 + float(p["clip_high"]))
    per_token = torch.maximum(l1, l2)
    if "dual_clip" in p:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * float(p["dual_clip"])), per_token)
    return _finish(per_token, leaf, mask, p, s,
                   {"ppo_kl": masked_mean(-log_ratio.detach(), mask),
                    "trrd_anchor_shift": masked_mean(anchor - old, mask),
                    "trrd_teacher_clipfrac": masked_mean(clamped, mask)})


def vespo(x, p, s):
    """VESPO as TRL's GRPOTrainer writes loss_type="vespo" (get_gamma_weights): the sequence
    log-weight is the masked SUM of the per-token log-ratios clamped to [-20, 20], plus the sum
    of the clamped log IS weights (here over the unmasked tokens: padding would hold ratio 1),
    clamped to [log 1e-8, 20]; phi = exp(lambda + k log w - lambda w) with (k, lambda) chosen by
    the sign of the advantage, lambda floored at 1e-4, non-finite phi set to 0, detached;
    per-token loss -phi * A * logp, aggregated by the case's normaliser."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    old, adv = clean(x["old_logp"], mask), clean(x["advantages"], mask)
    floor = math.log(1e-8)
    with torch.no_grad():
        log_ratio = torch.clamp(logp.detach() - old, -20.0, 20.0)
        seq = (log_ratio * mask).sum(-1, keepdim=True)
        if "is_weights" in x:
            w_tok = torch.where(mask != 0, x["is_weights"], torch.ones_like(mask))
            seq = seq + torch.clamp(torch.log(w_tok), floor, 20.0).sum(-1, keepdim=True)
        log_w = torch.clamp(seq, floor, 20.0)
        w_seq = torch.exp(log_w)
        nonneg = adv >= 0
        k = torch.where(nonneg, torch.full_like(adv, float(p["k_pos"])), torch.full_like(adv, float(p["k_neg"])))
        lam = torch.where(
            nonneg, torch.full_like(adv, float(p["lambda_pos"])), torch.full_like(adv, float(p["lambda_neg"]))
        ).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * w_seq).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    per_token = -phi * adv * logp
    lens = mask.sum(-1, keepdim=True)
    rows = lens > 0
    row_phi = (phi * mask).sum(-1, keepdim=True) / lens.clamp(min=1e-300)
    n_rows = float(rows.sum())
    eps = float(p.get("count_epsilon", 0.0))
    out = _finish(per_token, leaf, mask, p, s, {"ppo_kl": masked_mean(-log_ratio, mask)})
    out["vespo/phi_seq_mean"] = row_phi[rows].sum() / (n_rows + eps) if n_rows > 0 else torch.zeros(())
    return out
