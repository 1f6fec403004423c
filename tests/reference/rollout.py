"""PyTorch references for include/rlpo/rollout/ (independently written formulas).

Advantages and shaped rewards are not differentiated, so these return values only. Groups come
as a column of group ids (contiguous runs); every function here works from its paper / anchor
definition with torch tensor ops, not by transcribing the C++ loops.
"""
import math

import torch


def _groups(ids):
    """List of index tensors, one per contiguous run of equal ids."""
    ids = ids.reshape(-1).tolist()
    out, start = [], 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or ids[k] != ids[start]:
            out.append(torch.arange(start, k))
            start = k
    return out


def _col(x):
    return x.reshape(-1)


def _flag(p, name, default=0.0):
    return float(p[name]) if name in p else default


def grpo(x, p, s):
    scores = _col(x["scores"]).clone()
    if s.get("nan", "throw") == "zero":
        scores = torch.nan_to_num(scores, nan=0.0)
    eps, floor = float(p["epsilon"]), _flag(p, "std_floor")
    unbiased = s.get("std", "sample") == "sample"
    scale = s.get("scale", "group")
    raw_singleton = s.get("singleton", "zero") == "raw"
    adv = torch.zeros_like(scores)
    batch_std = torch.std(scores, unbiased=unbiased) if scores.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
    for idx in _groups(x["group_ids"]):
        g = scores[idx]
        if g.numel() == 1:
            mean, std = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
            if not raw_singleton:
                continue
        else:
            mean, std = g.mean(), torch.std(g, unbiased=unbiased)
            if bool((g == g[0]).all()):
                continue
        if scale == "group":
            a = (g - mean) / (torch.clamp(std, min=floor) + eps)
        elif scale == "batch":
            a = (g - mean) / (torch.clamp(batch_std, min=floor) + eps)
        else:
            a = g - mean
        adv[idx] = a
    return {"adv": adv}


def rloo(x, p, s):
    scores = _col(x["scores"]).clone()
    raw_singleton = s.get("singleton", "zero") == "raw"
    adv = torch.zeros_like(scores)
    for idx in _groups(x["group_ids"]):
        g = scores[idx]
        n = g.numel()
        if n == 1:
            if raw_singleton:
                adv[idx] = g
            continue
        # baseline: mean of the other n − 1 samples, via an explicit leave-one-out matrix
        others = (torch.ones(n, n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64)) / (n - 1)
        adv[idx] = g - others @ g
    return {"adv": adv}


def _whiten(v, mask, unbiased=True, eps=1e-8, floor=False):
    n = mask.sum()
    if n <= 1:
        return torch.zeros_like(v)
    mean = (v * mask).sum() / n
    var = ((v - mean) ** 2 * mask).sum() / n
    if unbiased:
        var = var * n / (n - 1)
    denom = torch.sqrt(torch.clamp(var, min=eps)) if floor else torch.sqrt(var + eps)
    return (v - mean) / denom * (mask != 0)


def _whiten_from(p, s, v, mask):
    return _whiten(v, mask, unbiased=s.get("whiten_std", "sample") == "sample",
                   eps=_flag(p, "whiten_eps", 1e-8), floor=s.get("whiten_floor", "no") == "yes")


def reinforce_pp(x, p, s):
    r, mask = x["token_rewards"], x["mask"]
    r = torch.where(mask != 0, r, torch.zeros_like(r))
    gamma = float(p["gamma"])
    B, T = r.shape
    # discounted sum within each maximal run of unmasked tokens: G_t = Σ_{k≥t, same run} γ^{k−t} r_k
    G = torch.zeros_like(r)
    for i in range(B):
        for t in range(T):
            if mask[i, t] == 0:
                continue
            acc, k = 0.0, t
            while k < T and mask[i, k] != 0:
                acc += gamma ** (k - t) * float(r[i, k])
                k += 1
            G[i, t] = acc
    adv = _whiten_from(p, s, G, mask) if s.get("whiten", "yes") == "yes" else G
    return {"adv": adv, "returns": G}


def reinforce_pp_baseline(x, p, s):
    scores = _col(x["scores"])
    mask = x["mask"]
    raw_singleton = s.get("singleton", "zero") == "raw"
    a = torch.zeros_like(scores)
    for idx in _groups(x["group_ids"]):
        g = scores[idx]
        if g.numel() == 1:
            if raw_singleton:
                a[idx] = g
            continue
        a[idx] = g - g.mean()
    A = a.reshape(-1, 1) * (mask != 0)
    return {"adv": _whiten_from(p, s, A, mask)}


def gae(x, p, s):
    """GAE from its definition Â_t = Σ_l (γλ)^l δ_{t+l} over the sequence of unmasked positions
    (masked positions skipped), V = 0 after the last one."""
    r, v, mask = x["token_rewards"], x["values"], x["mask"]
    gamma, lam = float(p["gamma"]), float(p["lambda"])
    B, T = r.shape
    A = torch.zeros_like(r)
    R = torch.zeros_like(r)
    for i in range(B):
        pos = [t for t in range(T) if mask[i, t] != 0]
        vals = [float(v[i, t]) for t in pos] + [0.0]
        deltas = [float(r[i, t]) + gamma * vals[j + 1] - vals[j] for j, t in enumerate(pos)]
        for j, t in enumerate(pos):
            A[i, t] = sum((gamma * lam) ** l * deltas[j + l] for l in range(len(pos) - j))
            R[i, t] = A[i, t] + vals[j]
    adv = _whiten_from(p, s, A, mask) if s.get("whiten", "yes") == "yes" else A
    return {"adv": adv, "returns": R}


def overlong(x, p, s):
    L = _col(x["lengths"])
    Lmax, Lc, f = float(p["max_length"]), float(p["cache_length"]), float(p["penalty_factor"])
    clip = s.get("clip", "yes") == "yes"
    soft = torch.clamp((Lmax - Lc - L) / Lc, max=0.0) * f
    if clip:
        soft = torch.where(L > Lmax, torch.full_like(L, -f), soft)
    return {"penalty": soft}
