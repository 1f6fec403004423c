"""USKD references (tests/distill/uskd.cpp), written after the paper's formulas and its
authors' reference loss: the squared target probability centred on the batch mean as the target
label, Zipf labels from a ranking of the classes for the non-target entries, and a
label-smoothed cross-entropy for the weak head. The labels are constants (detached)."""
import torch

from common import aggregate, grad_of, masked_mean


def _keep(mask):
    return (mask.reshape(-1) != 0).unsqueeze(1)


def _labels(x, mask):
    keep = mask.reshape(-1) != 0
    t = x["targets"][:, 0]
    return torch.where(keep, t, torch.zeros_like(t)).long().unsqueeze(1)


def uskd(x, p, s):
    mask = x["mask"]
    keep = _keep(mask)
    leaf = x["student"].clone().requires_grad_(True)
    z = torch.where(keep, leaf, torch.zeros_like(leaf))
    label = _labels(x, mask)
    alpha, beta = float(p["alpha"]), float(p["beta"])
    m = mask.reshape(-1, 1)
    prob = torch.softmax(z, dim=1)
    s_t = prob.gather(1, label)
    if "target_sq_mean" in p:
        mean_sq = p["target_sq_mean"]
    else:
        mean_sq = (s_t ** 2 * m).sum() / m.sum()
    p_t = (s_t ** 2 + 1 - mean_sq).detach()
    logp = torch.log_softmax(z, dim=1)
    logp_t = logp.gather(1, label)
    loss_t = -(p_t * logp_t).squeeze(1)
    rank = logp / (1 - logp_t + 1e-6)
    if "weak" in x:
        u = torch.where(keep, x["weak"], torch.zeros_like(x["weak"]))
        w = torch.softmax(u, dim=1)
        w_t = w.gather(1, label)
        rank = rank + w / (1 - w_t + 1e-6)
    rank = rank.detach()
    order = torch.sort(rank, dim=1, descending=True, stable=True).indices
    position = torch.argsort(order, dim=1)
    zipf = 1.0 / (position + 1).double()
    n, c = z.shape
    non = torch.ones_like(z, dtype=torch.bool).scatter(1, label, False)
    nz = zipf[non].reshape(n, c - 1)
    nz = nz / nz.sum(dim=1, keepdim=True)
    ns = torch.log_softmax(z[non].reshape(n, c - 1), dim=1)
    loss_non = -(nz * ns).sum(dim=1)
    L = (alpha * loss_t + beta * loss_non).reshape(mask.shape)
    L = torch.where(mask != 0, L, torch.zeros_like(L))
    value = aggregate(L, mask, p, s)
    return {"value": value.detach(), "grad": grad_of(value, leaf),
            "metric": masked_mean(L.detach(), mask),
            "target": masked_mean(loss_t.detach().reshape(mask.shape), mask),
            "sq": masked_mean((s_t ** 2).detach().reshape(mask.shape), mask)}


def uskd_weak(x, p, s):
    mask = x["mask"]
    keep = _keep(mask)
    leaf = x["weak"].clone().requires_grad_(True)
    u = torch.where(keep, leaf, torch.zeros_like(leaf))
    label = _labels(x, mask)
    mu, ls = float(p["mu"]), float(p["weak_smoothing"])
    n, c = u.shape
    target = torch.zeros_like(u).scatter(1, label, 1 - ls) + ls / c
    L = -(mu * target * torch.log_softmax(u, dim=1)).sum(dim=1).reshape(mask.shape)
    L = torch.where(mask != 0, L, torch.zeros_like(L))
    value = aggregate(L, mask, p, s)
    return {"value": value.detach(), "grad": grad_of(value, leaf),
            "metric": masked_mean(L.detach(), mask)}
