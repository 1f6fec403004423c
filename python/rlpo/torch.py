"""torch.autograd.Function wrappers: each returns a 0-d loss tensor whose ``backward()`` puts
rlpo's exact gradient, times the upstream gradient, into the differentiable input's ``.grad``.

``ppo_clip(logp, old_logp, advantages, mask, **kw)``, ``policy_loss(name, logp, old_logp,
advantages, mask, **kw)``, ``kl_penalty(logp, ref_logp, mask, **kw)`` (gradient to ``logp``),
``divergence(student_logits, teacher_logits, mask=None, **kw)`` (to the student logits),
``dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
**kw)`` (to the two policy inputs). Keywords are those of the NumPy functions (``rlpo.policy``,
...), less ``out`` / ``compute_grad``; ``return_metrics=True`` returns ``(loss, metrics)``.
CPU tensors only (float32 / float64, contiguous); a CUDA tensor is a ValueError naming its
device. No double backward.
"""

import torch
from torch.autograd.function import once_differentiable

from . import distill as _distill
from . import penalties as _penalties
from . import policy as _policy
from . import preference as _preference

__all__ = ["ppo_clip", "policy_loss", "kl_penalty", "divergence", "dpo_loss"]

_N = 4  # leading non-tensor arguments of _Objective.forward


class _Objective(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, diff, sink, kwargs, *inputs):
        need = any(ctx.needs_input_grad[_N + i] for i in diff)
        r = call(*inputs, compute_grad=need, **kwargs)
        sink.append(r.metrics)
        ctx.diff = diff
        ctx.num_inputs = len(inputs)
        if need:
            ctx.save_for_backward(torch.from_numpy(r.grad))
        return torch.tensor(r.value, dtype=inputs[diff[0]].dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grads = [None] * (_N + ctx.num_inputs)
        if not ctx.saved_tensors:
            return tuple(grads)
        (g,) = ctx.saved_tensors
        for k, i in enumerate(ctx.diff):
            if ctx.needs_input_grad[_N + i]:
                gi = g if len(ctx.diff) == 1 else g[k]
                grads[_N + i] = gi * grad_output
        return tuple(grads)


def _apply(call, diff, inputs, kwargs):
    for k in ("out", "compute_grad", "accumulate"):
        if k in kwargs:
            raise TypeError(f"rlpo.torch: '{k}' is not accepted here (autograd owns the gradient)")
    return_metrics = kwargs.pop("return_metrics", False)
    sink = []
    loss = _Objective.apply(call, diff, sink, kwargs, *inputs)
    return (loss, sink[0]) if return_metrics else loss


def ppo_clip(logp, old_logp, advantages, mask, **kwargs):
    """PPO clip loss (rlpo.policy.ppo_clip); gradient to ``logp``."""
    return _apply(_policy.ppo_clip, (0,), (logp, old_logp, advantages, mask), kwargs)


def policy_loss(name, logp, old_logp, advantages, mask, **kwargs):
    """Any surrogate by name (rlpo.policy.policy_loss); gradient to ``logp``."""

    def call(*t, **k):
        return _policy.policy_loss(name, *t, **k)

    return _apply(call, (0,), (logp, old_logp, advantages, mask), kwargs)


def kl_penalty(logp, ref_logp, mask, **kwargs):
    """KL penalty by estimator name (rlpo.penalties.kl_penalty); gradient to ``logp``."""
    return _apply(_penalties.kl_penalty, (0,), (logp, ref_logp, mask), kwargs)


def divergence(student_logits, teacher_logits, mask=None, **kwargs):
    """Distillation divergence (rlpo.distill.divergence); gradient to the student logits."""
    return _apply(_distill.divergence, (0,), (student_logits, teacher_logits, mask), kwargs)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             **kwargs):
    """DPO-family loss (rlpo.preference.dpo_loss); gradients to the two policy inputs."""
    return _apply(_preference.dpo_loss, (0, 1),
                  (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps), kwargs)
