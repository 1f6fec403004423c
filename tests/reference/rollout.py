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
        # verl's singleton rule (mean 0, std 1) keeps the singleton's std 1 under batch scaling
        if scale == "group" or (scale == "batch" and g.numel() == 1):
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


# ----------------------------------------------------------------------------------------------
# more advantage estimators
# ----------------------------------------------------------------------------------------------

def opo(x, p, s):
    scores, lens = _col(x["scores"]), _col(x["lengths"])
    raw_singleton = s.get("singleton", "zero") == "raw"
    adv = torch.zeros_like(scores)
    for idx in _groups(x["group_ids"]):
        g, l = scores[idx], lens[idx]
        if g.numel() == 1:
            if raw_singleton:
                adv[idx] = g
            continue
        if bool((g == g[0]).all()):
            continue
        base = (l * g).sum() / l.sum() if float(l.sum()) > 0 else g.mean()
        adv[idx] = g - base
    return {"adv": adv}


def grpo_passk(x, p, s):
    scores = _col(x["scores"])
    eps = float(p["epsilon"])
    norm = s.get("norm", "yes") == "yes"
    adv = torch.zeros_like(scores)
    for idx in _groups(x["group_ids"]):
        g = scores[idx]
        if bool((g == g[0]).all()):
            continue
        srt, order = torch.sort(g, descending=True, stable=True)
        a = srt[0] - srt[1]
        if norm:
            a = a / (torch.std(g, unbiased=True) + eps)
        adv[idx[order[0]]] = a
    return {"adv": adv}


def passk_enumerated(x, p, s):
    """pass@k advantage by brute force: for each response, the mean over all k-subsets of its
    group that contain it of (max over the subset − mean over all subsets) / std over subsets."""
    import itertools
    scores = _col(x["scores"])
    k = int(p["k"])
    adv = torch.zeros_like(scores)
    for idx in _groups(x["group_ids"]):
        g = scores[idx].tolist()
        n = len(g)
        subsets = list(itertools.combinations(range(n), k))
        vals = torch.tensor([max(g[j] for j in c) for c in subsets], dtype=torch.float64)
        mean = vals.mean()
        std = torch.sqrt(((vals - mean) ** 2).mean())
        if float(std) == 0.0:
            continue
        for i in range(n):
            mine = torch.tensor([float(v) for c, v in zip(subsets, vals) if i in c], dtype=torch.float64)
            adv[idx[i]] = ((mine - mean) / std).mean()
    return {"adv": adv}


def gdpo(x, p, s):
    R = x["rewards"]
    eps = float(p["epsilon"])
    weights = _col(p["weights"]) if "weights" in p else torch.ones(R.shape[1], dtype=torch.float64)
    total = torch.zeros(R.shape[0], dtype=torch.float64)
    for k in range(R.shape[1]):
        col = R[:, k]
        a = torch.zeros_like(col)
        for idx in _groups(x["group_ids"]):
            g = col[idx]
            if g.numel() == 1 or bool((g == g[0]).all()):
                continue
            a[idx] = (g - g.mean()) / (torch.std(g, unbiased=True) + eps)
        total = total + weights[k] * a
    if bool((total == total[0]).all()):
        return {"adv": torch.zeros_like(total)}
    out = (total - total.mean()) / (torch.std(total, unbiased=True) + float(p["batch_epsilon"]))
    return {"adv": out}


def remax(x, p, s):
    r, mask, b = x["token_rewards"], x["mask"], _col(x["baseline"])
    r = torch.where(mask != 0, r, torch.zeros_like(r)) * mask
    togo = torch.flip(torch.cumsum(torch.flip(r, dims=[1]), dim=1), dims=[1])
    adv = (togo - b.reshape(-1, 1)) * (mask != 0)
    return {"adv": adv, "returns": togo * (mask != 0)}


# ----------------------------------------------------------------------------------------------
# shaping
# ----------------------------------------------------------------------------------------------

def kimi(x, p, s):
    L, c = _col(x["lengths"]), _col(x["correct"])
    out = torch.zeros_like(L)
    for idx in _groups(x["group_ids"]):
        l = L[idx]
        lo, hi = l.min(), l.max()
        if float(hi - lo) == 0:
            continue
        lam = 0.5 - (l - lo) / (hi - lo)
        out[idx] = torch.where(c[idx] != 0, lam, torch.clamp(lam, max=0.0))
    return {"reward": out}


def grpo_lambda(x, p, s):
    c, r = _col(x["correct"]), _col(x["length_rewards"])
    frac = float(p["top_fraction"])
    groups = _groups(x["group_ids"])
    acc = [float((c[idx] != 0).double().mean()) for idx in groups]
    ranked = sorted(range(len(groups)), key=lambda g: (-acc[g], g))
    top = set(ranked[:math.ceil(frac * len(groups) - 1e-9)])
    out = (c != 0).double()
    for g, idx in enumerate(groups):
        if g in top:
            out[idx] = r[idx]
    return {"reward": out}


def grpo_lambda_length(x, p, s):
    """GRPO-λ's length reward: correct responses get 1 − α·sigmoid of their length's z-score
    among the group's correct responses (population std, 1e-4 when it is 0); wrong ones 0."""
    c, L = _col(x["correct"]), _col(x["lengths"])
    alpha = float(p["alpha"])
    out = torch.zeros_like(L)
    for idx in _groups(x["group_ids"]):
        ok = idx[c[idx] != 0]
        if ok.numel() == 0:
            continue
        mu = L[ok].mean()
        sd = torch.std(L[ok], unbiased=False) if ok.numel() > 1 else torch.tensor(0.0, dtype=L.dtype)
        if float(sd) == 0.0:
            sd = torch.tensor(1e-4, dtype=L.dtype)
        out[ok] = 1.0 - alpha * torch.sigmoid((L[ok] - mu) / sd)
    return {"reward": out}


def dot_truncation(x, p, s):
    """The DOT authors' cut: groups with success rate >= threshold (and a correct response);
    T = int(mean + a*stdev) over all the group's lengths (sample stdev, 0 for one response);
    a response longer than T by at least the effective margin is cut to T."""
    L, c = _col(x["lengths"]), _col(x["correct"])
    thr, a, m = float(p["success_threshold"]), float(p["std_multiplier"]), float(p["min_truncation_margin"])
    kept, cut = L.clone(), torch.zeros_like(L)
    num, tokens = 0.0, 0.0
    for idx in _groups(x["group_ids"]):
        lens = [float(v) for v in L[idx]]
        ok = [float(v) != 0 for v in c[idx]]
        if sum(ok) == 0 or sum(ok) / len(ok) < thr:
            continue
        mu = sum(lens) / len(lens)
        sd = math.sqrt(sum((v - mu) ** 2 for v in lens) / (len(lens) - 1)) if len(lens) > 1 else 0.0
        T = int(mu + a * sd)
        for j, i in enumerate(idx.tolist()):
            n = lens[j]
            if not T < n:
                continue
            eff = max(int(n * m), 16) if 0 < m < 1 else int(m)
            if n - T >= eff:
                kept[i], cut[i] = T, 1.0
                num, tokens = num + 1, tokens + (n - T)
    return {"lengths": kept, "truncated": cut, "num_truncated": torch.tensor(num, dtype=torch.float64),
            "total_tokens_truncated": torch.tensor(tokens, dtype=torch.float64)}


def dot(x, p, s):
    sc, L, c = _col(x["scores"]).clone(), _col(x["lengths"]), _col(x["correct"])
    k, outlier = float(p["k_sigma"]), float(p["outlier_score"])
    for idx in _groups(x["group_ids"]):
        if idx.numel() < 2 or not bool((c[idx] != 0).all()):
            continue
        l = L[idx]
        thr = l.mean() + k * torch.std(l, unbiased=False)
        sc[idx] = torch.where(l > thr, torch.full_like(l, outlier), sc[idx])
    return {"scores": sc}


def stcr(x, p, s):
    a, L, c = _col(x["adv"]).clone(), _col(x["lengths"]), _col(x["correct"])
    base = float(p["base"])
    for idx in _groups(x["group_ids"]):
        ok = c[idx] != 0
        if not bool(ok.any()):
            continue
        delta = L[idx] - L[idx][ok].mean()
        scale = torch.where((~ok) & (delta > 0), 2.0 - base ** (-delta), torch.ones_like(delta))
        a[idx] = a[idx] * scale
    return {"adv": a}


def ensemble(x, p, s):
    R = x["rewards"]
    mode = s["mode"]
    if mode == "mean":
        return {"reward": R.mean(dim=1)}
    if mode == "wco":
        return {"reward": R.min(dim=1).values}
    var = torch.var(R, dim=1, unbiased=(s["variance"] == "sample"))
    return {"reward": R.mean(dim=1) - float(p["lambda"]) * var}


def ctrl(x, p, s):
    r, B = _col(x["rewards"]), x["base"]
    less = (B < r.reshape(-1, 1)).double().mean(dim=1)
    eq = (B == r.reshape(-1, 1)).double().mean(dim=1)
    u = less + eq if s["ties"] == "le" else less + 0.5 * eq
    t = float(p["t"])
    return {"u": u, "bon": torch.exp(t * u), "won": -torch.exp(-t * u)}


def kl_in_reward(x, p, s):
    from penalties import kl_estimator_value
    mask = x["mask"]
    sc = torch.where(mask != 0, x["token_scores"], torch.zeros_like(mask))
    old = torch.where(mask != 0, x["old_logp"], torch.zeros_like(mask))
    ref = torch.where(mask != 0, x["ref_logp"], torch.zeros_like(mask))
    k = kl_estimator_value(old, ref, s["estimator"], float(p["log_ratio_clamp"]), float(p["value_clamp"]))
    k = torch.where(mask != 0, k, torch.zeros_like(k))
    beta = float(p["beta"])
    rows = mask.sum(dim=1)
    per_row = (k * mask).sum(dim=1)
    nonempty = rows > 0
    metric = (per_row[nonempty] / rows[nonempty]).mean() if bool(nonempty.any()) else torch.tensor(0.0, dtype=torch.float64)
    return {"token_rewards": (sc - beta * k) * (mask != 0), "seq_kl": per_row, "reward_kl_penalty": metric}


def truncation(x, p, s):
    r, f = _col(x["rewards"]), _col(x["truncated"])
    return {"rewards": torch.where(f != 0, r * float(p["factor"]), r)}


# ----------------------------------------------------------------------------------------------
# best of N
# ----------------------------------------------------------------------------------------------

def bon_enumerated(x, p, s):
    """Best-of-N by enumerating all K^N draws: the winner is the highest reward, ties broken
    uniformly among the tied draws (each tied position equally likely)."""
    import itertools
    pm, r = _col(x["p"]).tolist(), _col(x["rewards"]).tolist()
    n, K = int(p["n"]), len(pm)
    out = [0.0] * K
    for draw in itertools.product(range(K), repeat=n):
        prob = 1.0
        for d in draw:
            prob *= pm[d]
        if prob == 0.0:
            continue
        best = max(r[d] for d in draw)
        winners = [d for d in draw if r[d] == best]
        for d in winners:
            out[d] += prob / len(winners)
    q = torch.tensor(out, dtype=torch.float64)
    pt = torch.tensor(pm, dtype=torch.float64)
    nz = (q > 0) & (pt > 0)
    kl = (q[nz] * torch.log(q[nz] / pt[nz])).sum()
    return {"q": q, "kl": kl}


def tilt(x, p, s):
    pm, r = _col(x["p"]), _col(x["rewards"])
    beta = float(p["beta"])
    w = torch.where(pm > 0, torch.log(pm) + r / beta, torch.full_like(pm, -math.inf))
    logz = torch.logsumexp(w, dim=0)
    return {"q": torch.exp(w - logz), "logz": logz}


def arlcp(x, p, s):
    import statistics
    c, rc, L = _col(x["correct"]).tolist(), _col(x["reflections"]).tolist(), _col(x["lengths"]).tolist()
    out = torch.zeros(len(c), dtype=torch.float64)
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))
    for idx in _groups(x["group_ids"]):
        ids = idx.tolist()
        good = [i for i in ids if c[i] != 0]
        counts, lens = [rc[i] for i in good], [L[i] for i in good]
        mc = statistics.mean(counts) if counts else 0.0
        sc = statistics.stdev(counts) if len(counts) > 1 else 1.0
        ml = statistics.mean(lens) if lens else 0.0
        sl = statistics.stdev(lens) if len(lens) > 1 else 1.0
        for i in good:
            w1 = 0.05 if rc[i] <= 40 else (0.1 if rc[i] <= 80 else 0.15)
            out[i] = 1 - w1 * sig((rc[i] - mc) / (sc + 1e-6)) - (0.2 - w1) * sig((L[i] - ml) / (sl + 1e-6))
    return {"reward": out}


def care(x, p, s):
    acc, conf = _col(x["accuracy"]), _col(x["consistency"])
    lam, margin = float(p["bonus_coef"]), float(p["margin"])
    out = torch.zeros_like(acc)
    for idx in _groups(x["group_ids"]):
        a, c = acc[idx], conf[idx]
        accurate = (a > 0.1) & (a >= a.mean())
        if not bool(accurate.any()):
            continue
        mu = c[accurate].mean()
        bonus = torch.where(accurate & (c >= mu - margin), a * lam, torch.zeros_like(a))
        out[idx] = bonus
    return {"bonus": out}


def combine(x, p, s):
    R = x["rewards"]
    w = _col(p["weights"]) if "weights" in p else torch.ones(R.shape[1], dtype=torch.float64)
    return {"reward": torch.nansum(R * w.reshape(1, -1), dim=1)}


def gdpo_trl(x, p, s):
    """TRL's normalize_then_sum, from its definition: per component nanmean / sample nanstd over
    the group (1e-4), weighted nansum, then batch (x − mean)/(std + 1e-4)."""
    R = x["rewards"]
    w = _col(p["weights"]) if "weights" in p else torch.ones(R.shape[1], dtype=torch.float64)
    total = torch.zeros(R.shape[0], dtype=torch.float64)
    for k in range(R.shape[1]):
        for idx in _groups(x["group_ids"]):
            g = R[idx, k]
            ok = ~torch.isnan(g)
            vals = g[ok]
            if vals.numel() < 2 or bool((vals == vals[0]).all()):
                continue
            mean = vals.mean()
            std = torch.sqrt(((vals - mean) ** 2).sum() / (vals.numel() - 1))
            norm = torch.where(ok, (g - mean) / (std + 1e-4), torch.zeros_like(g))
            total[idx] = total[idx] + w[k] * norm
    if bool((total == total[0]).all()):
        return {"adv": torch.zeros_like(total)}
    return {"adv": (total - total.mean()) / (torch.std(total, unbiased=True) + 1e-4)}


def spae(x, p, s):
    """SPAE (arXiv 2601.03823): Â_ij = (R_i − group mean)·f + ξ·(exp(min-max ΔΦ) − its token mean),
    f = 1 − α(1 − exp(−#earlier steps with Φ > ε_sat)), ΔΦ of the first step 0; tokens outside
    every step keep R_i − group mean; then verl's masked whitening over the batch's tokens."""
    R, mask = _col(x["scores"]), x["mask"]
    phi, smask, tstep = x["potentials"], x["step_mask"], x["token_step"]
    alpha, xi, sat = float(p["alpha"]), float(p["xi"]), float(p["saturation"])
    B, T = mask.shape
    adv = torch.zeros(B, dtype=torch.float64)
    for idx in _groups(x["group_ids"]):
        adv[idx] = R[idx] - R[idx].mean()
    f = {}
    d = {}
    for i in range(B):
        steps = [k for k in range(phi.shape[1]) if float(smask[i, k]) != 0]
        count = 0
        for n, k in enumerate(steps):
            f[(i, k)] = 1 - alpha * (1 - math.exp(-count))
            d[(i, k)] = 0.0 if n == 0 else float(phi[i, k] - phi[i, steps[n - 1]])
            if float(phi[i, k]) > sat:
                count += 1
    lo, hi = min(d.values()), max(d.values())
    g = {key: math.exp((v - lo) / (hi - lo) if hi > lo else 0.0) for key, v in d.items()}
    toks = [(i, t) for i in range(B) for t in range(T) if float(mask[i, t]) != 0 and int(tstep[i, t]) >= 0]
    wsum = sum(float(mask[i, t]) for i, t in toks)
    E = sum(float(mask[i, t]) * g[(i, int(tstep[i, t]))] for i, t in toks) / wsum if wsum > 0 else 0.0
    a = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        for t in range(T):
            if float(mask[i, t]) == 0:
                continue
            k = int(tstep[i, t])
            a[i, t] = adv[i] if k < 0 else adv[i] * f[(i, k)] + xi * (g[(i, k)] - E)
    return {"advantages": _whiten(a, mask)}
