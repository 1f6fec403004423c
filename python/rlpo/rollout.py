"""Advantages from per-response scores (values only, no gradient).

``grpo_advantages(scores, *, group_size=None, group_ids=None, preset=None|"verl"|"trl"|
"openrlhf"|"dr_grpo"|"dler", scale="group"|"batch"|"none", std_kind="sample"|"population",
epsilon=1e-6, std_floor=0.0, singleton="zero"|"raw_score", nan_scores="throw"|"as_zero")``,
``rloo_advantages(scores, *, group_size=None, group_ids=None, preset=None|"verl"|"trl",
singleton=..., nan_scores=...)``: ``scores`` is 1-D ``[N]``; groups are contiguous, given by an
equal size or by per-response ids. Both return a new 1-D array of the scores' dtype.

``broadcast_to_tokens(seq_values, mask)``: ``[B]`` values → ``[B, T]`` (0 where the mask is 0).
"""

from . import _rlpo
from ._common import wrap

grpo_advantages = wrap(_rlpo.rollout.grpo_advantages, "rollout.grpo_advantages", ("scores",),
                       result=False)
rloo_advantages = wrap(_rlpo.rollout.rloo_advantages, "rollout.rloo_advantages", ("scores",),
                       result=False)
broadcast_to_tokens = wrap(_rlpo.rollout.broadcast_to_tokens, "rollout.broadcast_to_tokens",
                           ("seq_values", "mask"), result=False)
