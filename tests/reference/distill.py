"""PyTorch references for include/rlpo/distill/ (independently written formulas + autograd).

Rows of [N, V] logits are token rows; the row mask is [B, T] with B*T = N. Every reference
computes in float64 from the given (possibly float- or bf16-rounded) inputs, takes the gradient
with autograd, and never lets masked rows (which may hold NaN) into the graph.
"""
import math

import torch

from common import aggregate, grad_of, masked_mean


def _rows(x, mask):
    """Student leaf and a copy whose masked rows are zero (garbage never enters the graph)."""
    keep = (mask.reshape(-1) != 0).unsqueeze(1)
    leaf = x.clone().requires_grad_(True)
    return leaf, torch.where(keep, leaf, torch.zeros_like(leaf))


def _clean_rows(x, mask):
    keep = (mask.reshape(-1) != 0).unsqueeze(1)
    return torch.where(keep, x, torch.zeros_like(x))


def _xlogy_terms(w, a, b):
    """Σ w (a − b) with the convention 0·(anything) = 0 (zero-probability entries). a and b
    are sanitised where w = 0 so that no 0·inf reaches autograd."""
    pos = w > 0
    z = torch.zeros_like(w)
    a2, b2 = torch.where(pos, a, z), torch.where(pos, b, z)
    return torch.where(pos, w * (a2 - b2), z).sum(dim=-1)


def _safe_log(m, keep):
    return torch.log(torch.where(keep, m, torch.ones_like(m)))


def _kl(lp, lq):
    """KL(P‖Q) from log-probabilities, per row."""
    return _xlogy_terms(lp.exp(), lp, lq)


def row_divergence(z, y, kind, tau, beta, alpha):
    lq = torch.log_softmax(z / tau, dim=-1)
    lp = torch.log_softmax(y / tau, dim=-1)
    if kind == "forward_kl":
        return _kl(lp, lq)
    if kind == "reverse_kl":
        return _kl(lq, lp)
    if kind == "jsd":
        # TRL-style: the mixture's log via logsumexp of the two weighted log-probs; endpoints
        # special-cased exactly as TRL's generalized_jsd_loss does.
        if beta == 0.0:
            return _kl(lp, lq)
        if beta == 1.0:
            return _kl(lq, lp)
        dead = (lq == -math.inf) & (lp == -math.inf)
        z0 = torch.zeros_like(lq)
        lm = torch.logsumexp(torch.stack([torch.where(dead, z0, lq) + math.log(1 - beta),
                                          torch.where(dead, z0, lp) + math.log(beta)]), dim=0)
        return beta * _kl(lp, lm) + (1 - beta) * _kl(lq, lm)
    if kind == "skew_kl":
        p, q = lp.exp(), lq.exp()
        m = alpha * p + (1 - alpha) * q
        return _xlogy_terms(p, lp, _safe_log(m, p > 0))
    if kind == "skew_reverse_kl":
        p, q = lp.exp(), lq.exp()
        m = (1 - alpha) * p + alpha * q
        return _xlogy_terms(q, lq, _safe_log(m, q > 0))
    if kind == "tvd":
        return 0.5 * (lp.exp() - lq.exp()).abs().sum(dim=-1)
    raise ValueError(kind)


def divergence(x, p, s):
    mask = x["mask"]
    leaf, z = _rows(x["student"], mask)
    y = _clean_rows(x["teacher"], mask)
    tau = float(p["temperature"])
    L = row_divergence(z, y, s["kind"], tau, float(p["beta"]), float(p["alpha"]))
    if float(p["tsq"]) != 0:
        L = L * tau * tau
    L = L.reshape(mask.shape)
    L = torch.where(mask != 0, L, torch.zeros_like(L))
    value = aggregate(L, mask, p, s)
    return {"value": value.detach(), "grad": grad_of(value, leaf),
            "metric": masked_mean(L.detach(), mask)}


def _safe_indices(idx, mask):
    """Masked rows may hold garbage indices: replace them by 0..k-1."""
    keep = (mask.reshape(-1) != 0).unsqueeze(1)
    ar = torch.arange(idx.shape[1], dtype=torch.float64).expand_as(idx)
    return torch.where(keep, idx, ar).long()


def _topk_rows(lq, idx, lp, tail):
    lq_k = lq.gather(1, idx)
    if tail == "renormalize":
        lpn = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
        return _xlogy_terms(lpn.exp(), lpn, lq_k)
    # bucket: the (k+1)-category coarsening of teacher and student
    pk = lp.exp()
    pt = torch.clamp(1 - pk.sum(dim=-1), min=0)
    in_k = torch.zeros_like(lq, dtype=torch.bool).scatter(1, idx, True)
    qt = torch.where(in_k, torch.zeros_like(lq), lq.exp()).sum(dim=-1)
    head = _xlogy_terms(pk, lp, lq_k)
    tail_term = torch.where(pt > 0, pt * (torch.log(torch.where(pt > 0, pt, torch.ones_like(pt)))
                                          - torch.log(qt)), torch.zeros_like(pt))
    return head + tail_term


def _finish(L, mask, p, s, leaf, extra):
    tau = float(p["temperature"])
    if float(p["tsq"]) != 0:
        L = L * tau * tau
    L = L.reshape(mask.shape)
    L = torch.where(mask != 0, L, torch.zeros_like(L))
    value = aggregate(L, mask, p, s)
    out = {"value": value.detach(), "grad": grad_of(value, leaf),
           "metric": masked_mean(L.detach(), mask)}
    out.update(extra)
    return out


def forward_kl_topk(x, p, s):
    mask = x["mask"]
    leaf, z = _rows(x["student"], mask)
    idx = _safe_indices(x["idx"], mask)
    lp = _clean_rows(x["lp"], mask)
    tau = float(p["temperature"])
    lq = torch.log_softmax(z / tau, dim=-1)
    L = _topk_rows(lq, idx, lp, s["tail"])
    mass = lp.exp().sum(dim=-1).reshape(mask.shape)
    return _finish(L, mask, p, s, leaf, {"mass": masked_mean(mass, mask)})


def dac_kl(x, p, s):
    """Top-p region of the teacher (smallest top set reaching top_p), teacher renormalised."""
    mask = x["mask"]
    leaf, z = _rows(x["student"], mask)
    y = _clean_rows(x["teacher"], mask)
    tau, top_p = float(p["temperature"]), float(p["top_p"])
    lq = torch.log_softmax(z / tau, dim=-1)
    lpt = torch.log_softmax(y / tau, dim=-1)
    sorted_lp, order = torch.sort(lpt, dim=-1, descending=True)
    before = torch.cumsum(sorted_lp.exp(), dim=-1) - sorted_lp.exp()
    keep_sorted = (before < top_p) & (sorted_lp > -math.inf)
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    lp_r = torch.where(keep, lpt, torch.full_like(lpt, -math.inf))
    lpn = lp_r - torch.logsumexp(lp_r, dim=-1, keepdim=True)
    L = _xlogy_terms(lpn.exp(), lpn, lq)
    size = keep.sum(dim=-1).to(torch.float64).reshape(mask.shape)
    return _finish(L, mask, p, s, leaf, {"size": masked_mean(size, mask)})


def taid(x, p, s):
    mask = x["mask"]
    leaf, z = _rows(x["student"], mask)
    y = _clean_rows(x["teacher"], mask)
    tau, t = float(p["temperature"]), float(p["t"])
    zd = z.detach()
    if t == 1.0:
        u = y
    elif t == 0.0:
        u = zd
    else:  # −inf in either logit is −inf in the interpolation (never 0·inf)
        dead = torch.isinf(zd) | torch.isinf(y)
        u = torch.where(dead, torch.full_like(y, -math.inf),
                        (1 - t) * torch.where(dead, torch.zeros_like(zd), zd)
                        + t * torch.where(dead, torch.zeros_like(y), y))
    target = torch.softmax(u / tau, dim=-1)
    lq = torch.log_softmax(z / tau, dim=-1)
    L = -_xlogy_terms(target, lq, torch.zeros_like(lq))
    return _finish(L, mask, p, s, leaf, {})


def nkd(x, p, s):
    """Written after the NKD reference: target term at T = 1, non-target softmaxes at τ."""
    mask = x["mask"]
    leaf, z = _rows(x["student"], mask)
    v = _clean_rows(x["teacher"], mask)
    tau, gamma = float(p["temperature"]), float(p["gamma"])
    if "targets" in x:
        label = _safe_indices(x["targets"], mask)[:, :1]
    else:
        label = v.argmax(dim=-1, keepdim=True)
    s_t = torch.log_softmax(z, dim=-1).gather(1, label)
    w_t = torch.softmax(v, dim=-1).gather(1, label)
    loss_t = -(w_t * s_t).squeeze(1)
    keep = torch.ones_like(z, dtype=torch.bool).scatter(1, label, False)
    n, c = z.shape
    zs = z[keep].reshape(n, c - 1)
    vs = v[keep].reshape(n, c - 1)
    S_i = torch.log_softmax(zs / tau, dim=-1)
    T_i = torch.softmax(vs / tau, dim=-1)
    loss_non = -gamma * tau * tau * _xlogy_terms(T_i, S_i, torch.zeros_like(S_i))
    L = loss_t + loss_non
    out = _finish(L, mask, {**p, "tsq": torch.tensor(0.0)}, s, leaf, {})
    out["target"] = masked_mean(loss_t.detach().reshape(mask.shape), mask)
    return out


def sinkhorn(x, p, s):
    mask = x["mask"].reshape(-1)
    sel = (mask != 0).nonzero().squeeze(1)
    leaf = x["student"].clone().requires_grad_(True)
    tau, eps, iters, scale = float(p["temperature"]), float(p["epsilon"]), int(p["iterations"]), float(p["scale"])
    P = torch.softmax(leaf[sel] / tau, dim=-1)
    Q = torch.softmax(x["teacher"][sel] / tau, dim=-1)
    W = (P.unsqueeze(1) - Q.unsqueeze(0)).abs().sum(dim=-1)
    K = torch.exp(-W / eps)
    for _ in range(iters):
        K = K / K.sum(dim=1, keepdim=True)
        K = K / K.sum(dim=0, keepdim=True)
    dist = (K * W).sum()
    value = scale * dist
    return {"value": value.detach(), "grad": grad_of(value, leaf), "sinkhorn": dist.detach()}


def kdrl(x, p, s):
    """GRPO clipped surrogate (token-mean) + β · k-estimator of KL(π‖π_T) on the KD mask."""
    mask = x["mask"]
    leaf = x["logp"].clone().requires_grad_(True)
    logp = torch.where(mask != 0, leaf, torch.zeros_like(leaf))
    old = torch.where(mask != 0, x["old_logp"], torch.zeros_like(leaf))
    teacher = torch.where(mask != 0, x["teacher_logp"], torch.zeros_like(leaf))
    adv = torch.where(mask != 0, x["adv"], torch.zeros_like(leaf))
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 0.8, 1.2))
    pg = torch.where(mask != 0, pg, torch.zeros_like(pg))
    kd_mask = mask * (1 - x["correct"]) if "correct" in x else mask
    d = logp - teacher
    est = s["estimator"]
    k = d if est == "k1" else (0.5 * d * d if est == "k2" else torch.exp(-d) + d - 1)
    k = torch.where(kd_mask != 0, k, torch.zeros_like(k))
    beta = float(p["beta"])
    value = aggregate(pg, mask, p, s) + beta * aggregate(k, kd_mask, p, s)
    return {"value": value.detach(), "grad": grad_of(value, leaf), "kd_kl": masked_mean(k.detach(), kd_mask)}
