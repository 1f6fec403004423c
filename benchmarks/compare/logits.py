"""vocab/token_logps_* workloads: per-token log-probabilities from [N, V] float logits,
forward + backward.

The PyTorch side is TRL's selective_log_softmax as TRL runs it for float32 logits of shape
[B, T, V] (gather the label's logit, subtract a logsumexp computed one sequence at a time to
bound the peak memory), then (logp · g).sum() with a fixed upstream g and backward to the
logits. N = B·T with B = 8 sequences. The rlpo side is benchmarks/compare_logits.cpp (one
token_logps_vjp call, gradient into a preallocated buffer).
"""
from common import Workload


def _torch_setup(N, V, B=8):
    def setup():
        import torch
        g = torch.Generator().manual_seed(7)
        z = (torch.rand(B, N // B, V, generator=g) * 6 - 3).requires_grad_(True)
        labels = torch.randint(0, V, (B, N // B), generator=g)
        up = torch.rand(B, N // B, generator=g) * 2 - 1

        def selective_log_softmax(logits, index):
            selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
            lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
            return selected - lse

        def step():
            z.grad = None
            (selective_log_softmax(z, labels) * up).sum().backward()

        return step
    return setup


WORKLOADS = [Workload("vocab/token_logps_%dx%d" % (_N, _V), "compare_logits",
                      _torch_setup(_N, _V), reps=3)
             for _N, _V in ((2048, 32768), (256, 151936))]
