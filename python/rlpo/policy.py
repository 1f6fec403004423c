"""Policy-gradient surrogates; the gradient is w.r.t. ``logp``.

``policy_loss(name, logp, old_logp, advantages, mask, *, preset="verl", importance_sampling=
"token", <the chosen surrogate's options>, <normaliser>, out=None, accumulate=False, coef=1.0,
compute_grad=True, is_weights=None)``: ``name`` is any verl ``loss_mode`` / TRL ``loss_type``
the C++ parser accepts (``POLICY_LOSS_NAMES``); ``preset`` is the anchor of
``make_policy_loss`` (``"verl"``, ``"trl"``, ``"paper"``); the options are the C++ member
names of the chosen surrogate's options struct (PPO: ``clip_low``, ``clip_high``,
``dual_clip``, ``log_ratio_clamp``, ``two_sided_delta``; GSPO: ``clip_low``, ``clip_high``,
``level``, ``log_ratio_cap``, ``forced_aggregation``; ...).

``ppo_clip(logp, old_logp, advantages, mask, *, preset="paper"|"verl"|"trl"|"openrlhf"|"dapo"|
"intellect2", clip_low=0.2, clip_high=0.2, dual_clip=None, log_ratio_clamp=20.0,
two_sided_delta=None, <normaliser>, out=None, ...)``.

Normaliser keywords: ``aggregation`` (``"token-mean"``, ``"seq-mean-token-mean"``, TRL names
``"grpo"``, ``"dr_grpo"``, ``"dapo"`` ...), ``num_tokens``, ``num_seqs``, ``norm_constant``,
``length_epsilon``, ``count_epsilon``, ``sum_norm_seq_mean``.
"""

from . import _rlpo
from ._common import wrap

_T = ("logp", "old_logp", "advantages", "mask")
POLICY_LOSS_NAMES = list(_rlpo.policy.POLICY_LOSS_NAMES)
policy_loss = wrap(_rlpo.policy.policy_loss, "policy.policy_loss", ("name",) + _T)
ppo_clip = wrap(_rlpo.policy.ppo_clip, "policy.ppo_clip", _T)
