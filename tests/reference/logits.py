"""PyTorch references for include/rlpo/logits/ (independently written formulas + autograd).

token_logps: the log-probability of the taken token as TRL's selective_log_softmax forms it
(logsumexp of the row, then a gather of the label's logit), the entropy as verl's
entropy_from_logits forms it (logsumexp − Σ softmax · logits), both of the logits divided by the
temperature. The gradient is autograd's of Σ_unmasked (g·logp + h·H). Everything in float64 from
the given (possibly float- or bf16-rounded) inputs; masked rows (which may hold NaN and any
label) never enter the graph.
"""
import torch


def token_logps(inp, p, s):
    z = inp["logits"]
    mask = inp["mask"].reshape(-1)
    labels = inp["labels"].reshape(-1).to(torch.int64)
    g = inp["g"].reshape(-1)
    h = inp["h"].reshape(-1) if "h" in inp else torch.zeros_like(g)
    temp = float(p["temperature"])
    keep = mask != 0
    leaf = z.clone().requires_grad_(True)
    rows = leaf[keep] / temp
    lab = labels[keep]
    # selective_log_softmax: gather the label's logit, subtract the row's logsumexp
    lse = torch.logsumexp(rows, dim=-1)
    picked = torch.gather(rows, 1, lab.unsqueeze(1)).squeeze(1)
    logp = picked - lse
    # entropy_from_logits: logsumexp − Σ softmax · logits (zero-probability entries add 0)
    pd = torch.softmax(rows, dim=-1)
    pz = torch.where(pd > 0, pd * torch.where(pd > 0, rows, torch.zeros_like(rows)),
                     torch.zeros_like(rows))
    ent = lse - pz.sum(dim=-1)
    loss = (g[keep] * logp).sum() + (h[keep] * ent).sum()
    (grad,) = torch.autograd.grad(loss, leaf)
    full_logp = torch.zeros_like(mask)
    full_ent = torch.zeros_like(mask)
    full_logp[keep] = logp.detach()
    full_ent[keep] = ent.detach()
    shape = inp["mask"].shape
    return {"logp": full_logp.reshape(shape), "entropy": full_ent.reshape(shape),
            "value": loss.detach(), "grad": grad}
