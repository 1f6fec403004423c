"""Shared pieces of the PyTorch references: aggregation modes, written from their definitions."""
import torch


def aggregate(loss, mask, p, s):
    """Σ_i c_i Σ_t m L with the row factors of each mode (see include/rlpo/core/aggregation.hpp).

    Written row by row from the textbook definitions (not vectorised like the C++ code):
    token-mean = Σ mL / N_tok, token-sum = Σ mL, seq-mean-token-sum = Σ_i (Σ_t mL) / N_seq,
    seq-mean-token-mean = Σ_i (Σ_t mL / |y_i|) / N_seq, seq-mean-token-sum-norm = Σ mL / (N_seq C).
    """
    mode = s.get("agg", "token-mean")
    lens = mask.sum(dim=1)
    n_tok = float(p["num_tokens"]) if "num_tokens" in p else float(mask.sum())
    n_seq = float(p["num_seqs"]) if "num_seqs" in p else float((lens > 0).sum())
    C = float(p["norm_constant"]) if "norm_constant" in p else float(mask.shape[1])
    # verl's agg_loss: |y_i| + 1e-8 in seq-mean-token-mean; seq-mean-token-sum-norm is Σ mL / C
    eps = float(p.get("length_epsilon", 0.0))
    sum_norm_mean = s.get("sum_norm", "seq_mean") == "seq_mean"
    masked = torch.where(mask != 0, loss, torch.zeros_like(loss)) * mask
    total = torch.zeros((), dtype=torch.float64)
    for i in range(loss.shape[0]):
        if lens[i] <= 0:
            continue
        row = masked[i].sum()
        if mode == "token-mean":
            total = total + row / n_tok
        elif mode == "token-sum":
            total = total + row
        elif mode == "seq-mean-token-sum":
            total = total + row / n_seq
        elif mode == "seq-mean-token-mean":
            total = total + row / (lens[i] + eps) / n_seq
        elif mode == "seq-mean-token-sum-norm":
            total = total + (row / (n_seq * C) if sum_norm_mean else row / C)
        else:
            raise ValueError("unknown aggregation " + mode)
    return total


def masked_mean(x, mask):
    n = mask.sum()
    if n == 0:
        return torch.zeros((), dtype=torch.float64)
    return (torch.where(mask != 0, x, torch.zeros_like(x)) * mask).sum() / n


def grad_of(value, x):
    """∂value/∂x with zeros where x did not influence value."""
    (g,) = torch.autograd.grad(value, x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def leaf_under_mask(x, mask):
    """A leaf tensor requiring grad, and its copy with masked entries replaced by 0, so that
    garbage (NaN) at masked positions never enters the graph — as the C++ side never reads it."""
    leaf = x.clone().requires_grad_(True)
    return leaf, torch.where(mask != 0, leaf, torch.zeros_like(leaf))


def clean(x, mask):
    return torch.where(mask != 0, x, torch.zeros_like(x))
