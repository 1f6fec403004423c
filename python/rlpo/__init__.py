"""rlpo: RL post-training objectives — value, exact gradient and metrics in one call.

Submodules mirror the C++ namespaces: ``rlpo.policy`` (policy_loss, ppo_clip),
``rlpo.penalties`` (kl_penalty), ``rlpo.distill`` (divergence), ``rlpo.rollout``
(grpo_advantages, rloo_advantages, broadcast_to_tokens), ``rlpo.preference`` (dpo_loss), and
``rlpo.torch`` (torch.autograd.Function wrappers; imported on first use).

Inputs are NumPy arrays or torch CPU tensors, float32 or float64, C-contiguous, all of one
dtype; they are read in place (no copy). Errors: ``ValueError`` (rlpo::invalid_argument: a
shape, an option, a NaN; also a layout or device the bindings refuse), ``TypeError`` (a dtype or
type), ``rlpo.NumericalError`` (an ``ArithmeticError``: rlpo::numerical_error, a result that
would overflow).

Threads: each call uses ``rlpo.threads_per_call()`` threads (OpenMP's setting by default);
``with rlpo.thread_limit(n):`` sets n for the calls the current thread makes in the block. The
GIL is released during each call, so Python threads may call rlpo at once.
"""

from . import _rlpo
from ._common import NumericalError, Result
from ._rlpo import thread_limit, threads_per_call
from . import distill, penalties, policy, preference, rollout

__version__ = _rlpo.__version__

__all__ = ["NumericalError", "Result", "distill", "penalties", "policy", "preference", "rollout",
           "thread_limit", "threads_per_call", "torch"]


def __getattr__(name):
    if name == "torch":  # imports torch: only when asked for
        import importlib
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'rlpo' has no attribute {name!r}")
