"""vocab/ workloads: distillation divergences over [N, V] float logits, forward + backward.

The PyTorch side is the eager code trainers run (TRL / DistiLLM style): log_softmax of both
logit rows, the divergence per row, mean over rows, backward to the student logits. The rlpo
side is benchmarks/compare_distill.cpp (same shapes, same reduction, gradient written to a
preallocated buffer).
"""
import math

from common import Workload


def _torch_setup(kind, N, V):
    def setup():
        import torch
        g = torch.Generator().manual_seed(7)
        z = (torch.rand(N, V, generator=g) * 6 - 3).requires_grad_(True)
        y = torch.rand(N, V, generator=g) * 6 - 3
        F = torch.nn.functional

        def loss():
            lq = torch.log_softmax(z, dim=-1)
            lp = torch.log_softmax(y, dim=-1)
            if kind == "forward_kl":
                per_row = F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
            elif kind == "reverse_kl":
                per_row = F.kl_div(lp, lq, reduction="none", log_target=True).sum(-1)
            elif kind == "jsd0.5":
                beta = 0.5
                lm = torch.logsumexp(torch.stack([lq + math.log(1 - beta), lp + math.log(beta)]), dim=0)
                per_row = (beta * F.kl_div(lm, lp, reduction="none", log_target=True)
                           + (1 - beta) * F.kl_div(lm, lq, reduction="none", log_target=True)).sum(-1)
            elif kind == "tvd":
                per_row = 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)
            else:
                raise ValueError(kind)
            return per_row.mean()

        def step():
            z.grad = None
            loss().backward()

        return step
    return setup


def _python_setup(kind, N, V):
    """The same divergence through rlpo's Python module (rlpo.torch.divergence), forward +
    backward to the student logits."""
    def setup():
        import torch
        import rlpo.torch as rt
        g = torch.Generator().manual_seed(7)
        z = (torch.rand(N, V, generator=g) * 6 - 3).requires_grad_(True)
        y = torch.rand(N, V, generator=g) * 6 - 3

        def step():
            z.grad = None
            rt.divergence(z, y, divergence=kind).backward()

        return step
    return setup


WORKLOADS = []
for _kind in ("forward_kl", "reverse_kl", "jsd0.5", "tvd"):
    for _N, _V in ((2048, 32768), (256, 151936)):
        # one vocab workload also through the Python module (compare_pytorch.py --python)
        _py = _python_setup(_kind, _N, _V) if (_kind, _N) == ("forward_kl", 2048) else None
        WORKLOADS.append(Workload("vocab/%s_%dx%d" % (_kind, _N, _V), "compare_distill",
                                  _torch_setup(_kind, _N, _V), reps=3, python_setup=_py))
