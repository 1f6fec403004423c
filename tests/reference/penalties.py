"""PyTorch references for include/rlpo/penalties/ (independently written formulas + autograd)."""
import math

import torch

from common import aggregate, clean, grad_of, leaf_under_mask, masked_mean


def kl_estimator_value(logp, ref, name, L, vmax):
    """Schulman's estimators of KL(π‖π_ref) from x ~ π, in verl's spelling and clamps. A name
    ending in '+' is the straight-through form: value of the base estimator, gradient of k2."""
    if name.endswith("+"):
        base = kl_estimator_value(logp, ref, name[:-1], L, vmax)
        k2 = 0.5 * (logp - ref).square()
        return k2 - k2.detach() + base.detach()
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
    return {"value": value.detach(), "grad": grad_of(value, leaf), "kl": masked_mean(v.detach(), mask),
            "token_values": v.detach()}


def kl_penalty_corrected(x, p, s):
    """TRL use_bias_correction_kl: the estimate times exp(logp − old_logp), the ratio not
    detached; the log-ratio clamped at ±L when L is finite (TRL: no clamp)."""
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    ref, old = clean(x["ref_logp"], mask), clean(x["old_logp"], mask)
    L = float(p["log_ratio_clamp"])
    k = kl_estimator_value(logp, ref, s["estimator"], L, float(p["value_clamp"]))
    lr = logp - old
    if math.isfinite(L):
        lr = torch.clamp(lr, min=-L, max=L)
    v = torch.where(mask != 0, torch.exp(lr) * k, torch.zeros_like(k))
    value = aggregate(v, mask, p, s)
    return {"value": value.detach(), "grad": grad_of(value, leaf), "kl": masked_mean(v.detach(), mask),
            "token_values": v.detach()}


def kl_in_reward(x, p, s):
    """verl apply_kl_penalty: token rewards = scores − β·k(old_logp, ref_logp) under the mask;
    the logged penalty is the batch mean of the per-sequence token means."""
    mask = x["mask"]
    old, ref, scores = clean(x["old_logp"], mask), clean(x["ref_logp"], mask), clean(x["scores"], mask)
    beta = float(p["beta"])
    k = kl_estimator_value(old, ref, s["estimator"], float(p["log_ratio_clamp"]), float(p["value_clamp"]))
    k = torch.where(mask != 0, k, torch.zeros_like(k))
    rewards = torch.where(mask != 0, scores - beta * k, torch.zeros_like(k))
    lens = mask.sum(dim=1)
    seq = (k * mask).sum(dim=1)
    rows = lens > 0
    penalty = (seq[rows] / lens[rows]).mean() if bool(rows.any()) else torch.zeros(())
    return {"rewards": rewards, "kl": k, "seq_kl": seq, "reward_kl_penalty": penalty}


def _row_divergence(lp, lq, name):
    """Per-row divergence from log-probabilities, written from the textbook definitions. Zero
    probabilities are kept out of the graph (0·log 0 = 0) so autograd does not form 0·inf."""
    p, q = lp.exp(), lq.exp()
    zero = torch.zeros_like(p)
    lp_s = torch.where(p > 0, lp, zero)
    lq_s = torch.where(q > 0, lq, zero)
    if name == "kl":
        return torch.where(p > 0, p * (lp_s - lq_s), zero).sum(-1)
    if name == "forward_kl":
        return torch.where(q > 0, q * (lq_s - lp_s), zero).sum(-1)
    if name == "chi2":
        q_s = torch.where(q > 0, q, torch.ones_like(q))
        return torch.where(q > 0, (p - q).square() / q_s, zero).sum(-1)
    if name == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "js":
        m = 0.5 * (p + q)
        lm = torch.log(torch.where(m > 0, m, torch.ones_like(m)))
        return (0.5 * torch.where(p > 0, p * (lp_s - lm), zero).sum(-1)
                + 0.5 * torch.where(q > 0, q * (lq_s - lm), zero).sum(-1))
    raise ValueError(name)


def vocab_divergence(x, p, s):
    """Full-vocabulary divergence between softmax(z/τ) and softmax(z_ref/τ) per token row, rows
    aggregated with the token mask [B, T] (row n = i·T + t); autograd w.r.t. the policy logits."""
    mask = x["mask"]
    B, T = mask.shape
    rows = mask.reshape(-1) != 0
    tau = float(p["temperature"])
    leaf = x["logits"].clone().requires_grad_(True)
    z = torch.where(rows.unsqueeze(1), leaf, torch.zeros_like(leaf))
    zr = torch.where(rows.unsqueeze(1), x["ref_logits"], torch.zeros_like(x["ref_logits"]))
    lp = torch.log_softmax(z / tau, dim=-1)
    lq = torch.log_softmax(zr / tau, dim=-1)
    D = _row_divergence(lp, lq, s["divergence"]).reshape(B, T)
    D = torch.where(mask != 0, D, torch.zeros_like(D))
    value = aggregate(D, mask, p, s)
    return {"value": value.detach(), "grad": grad_of(value, leaf), "metric": masked_mean(D.detach(), mask)}


class _SafeState:
    """The SAFE controller's bookkeeping, replayed step by step from its description."""

    def __init__(self):
        self.ks, self.kl_long = 0.0, 0.0
        self.rewards = []
        self.r_ema = None
        self.integral, self.prev_err = 0.0, 0.0

    def threshold(self, reward):
        self.rewards.append(reward)
        h = self.rewards
        if len(h) < 50:
            phi = 1.5
        else:
            recent = h[-50:]
            old = h[-100:-50] if len(h) >= 100 else recent
            mr, mo = sum(recent) / 50.0, sum(old) / 50.0
            sd = math.sqrt(sum((v - mr) ** 2 for v in recent) / 50.0)
            phi = 1.2 if mr > mo + 0.01 else (1.0 if (sd < 0.02 and mr > 0.7) else 0.8)
        if self.r_ema is None:
            self.r_ema, u = reward, 0.0
        else:
            prev = self.r_ema
            self.r_ema = 0.95 * self.r_ema + 0.05 * reward
            err = (self.r_ema - prev) - 0.001
            self.integral = min(1.0, max(-1.0, self.integral + err))
            u = 0.3 * err + 0.01 * self.integral + 0.05 * (err - self.prev_err)
            self.prev_err = err
        return min(0.6, max(0.1, (0.3 + u) * phi))


def safe_penalty(x, p, s):
    """SAFE entropy-gated penalty with k = token-mean(logp − ref_logp) kept differentiable;
    the controller state comes from replaying `history` rows (kl, entropy, reward)."""
    st = _SafeState()
    for kl_h, _ent_h, rew_h in x["history"].tolist():
        st.ks = 0.9 * st.ks + 0.1 * kl_h
        st.threshold(rew_h)
    mask = x["mask"]
    leaf, logp = leaf_under_mask(x["logp"], mask)
    ref = clean(x["ref_logp"], mask)
    n = mask.sum()
    kl = ((logp - ref) * mask).sum() / n if n > 0 else (logp * 0).sum()  # empty mask: KL 0
    ks = 0.9 * st.ks + 0.1 * kl
    tau = st.threshold(float(p["reward"]))
    gate = max(0.5, 2.0 / (float(p["entropy"]) + 0.1))
    value = torch.where(ks > tau, 0.1 * (ks - tau) ** 2 * gate, torch.zeros((), dtype=torch.float64))
    return {"value": value.detach(), "grad": grad_of(value, leaf),
            "threshold": torch.tensor(tau, dtype=torch.float64), "kl_short": ks.detach()}


def occupancy_chi2_penalty(x, p, s):
    """ORPO's discriminator rewards: chi2 = e^d − 1 per sample; sqrt_chi2 divides by the square
    root of the batch mean of chi2 after dropping int(trim·n) samples at each end (all kept when
    that is 0), when that mean is positive; non-finite → 0; reward −λ·distance clipped."""
    mask = x["mask"]
    keep = mask != 0
    d = x["log_ratio"][keep]
    chi = torch.expm1(d)
    lam, trim, clip = float(p["coef"]), float(p["trim"]), float(p["reward_clip"])
    out = {"occupancy_measure_chi2": chi[torch.isfinite(chi)].mean() if keep.any() else torch.zeros(())}
    dist = chi
    if s["divergence"] == "sqrt_chi2":
        srt, _ = torch.sort(chi)
        n = srt.numel()
        k = int(trim * n)
        trimmed = srt[k:n - k].mean() if n > 0 else torch.zeros(())
        out["occupancy_measure_chi2_trimmed"] = trimmed
        if n > 0 and trimmed > 0 and math.isfinite(float(trimmed)):
            dist = chi / torch.sqrt(trimmed)
    dist = torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist))
    rewards = torch.zeros_like(x["log_ratio"])
    rewards[keep] = torch.clamp(-lam * dist, min=-clip, max=clip)
    out["rewards"] = rewards
    return out


def velocity_mse(x, p, s):
    """β_v · per-row mean (or sum) of (v − v_ref)² over the latent dimension, rows aggregated with
    the token mask [B, T]; autograd w.r.t. v."""
    mask = x["mask"]
    B, T = mask.shape
    rows = (mask.reshape(-1) != 0).unsqueeze(1)
    leaf = x["v"].clone().requires_grad_(True)
    v = torch.where(rows, leaf, torch.zeros_like(leaf))
    vr = torch.where(rows, x["v_ref"], torch.zeros_like(x["v_ref"]))
    sq = (v - vr).square()
    per_row = sq.mean(dim=1) if s["reduction"] == "mean" else sq.sum(dim=1)
    L = per_row.reshape(B, T)
    value = float(p["beta"]) * aggregate(L, mask, p, s)
    return {"value": value.detach(), "grad": grad_of(value, leaf), "velocity_mse": masked_mean(L.detach(), mask)}
