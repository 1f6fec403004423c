"""Preference losses; the gradient is w.r.t. the policy's summed log-probs.

``dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
*, loss_type="sigmoid", loss_weights=None, beta=0.1, label_smoothing=0.0, preset=None|"trl",
sigmoid_label_smoothing=True, discopop_tau=0.05, bco_delta=0.0, f_divergence="reverse_kl",
f_alpha=0.5, num_pairs=None, num_sft_tokens=None, chosen_lengths=None, rejected_lengths=None,
pair_weights=None, out=None, accumulate=False, coef=1.0, compute_grad=True)``: inputs ``[B]``;
``loss_type`` is a TRL ``DPOTrainer`` loss type or a list of them (``DPO_LOSS_NAMES``) with
``loss_weights``. The gradient is one ``[2, B]`` array: row 0 = ∂loss/∂policy_chosen_logps,
row 1 = ∂loss/∂policy_rejected_logps (TRL's concatenated [chosen; rejected] layout).
``preset="trl"`` is current TRL (``sigmoid`` ignores label_smoothing); the default applies it
(cDPO, TRL ≤ 0.24).
"""

from . import _rlpo
from ._common import wrap

DPO_LOSS_NAMES = list(_rlpo.preference.DPO_LOSS_NAMES)
dpo_loss = wrap(_rlpo.preference.dpo_loss, "preference.dpo_loss",
                ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                 "ref_rejected_logps"))
