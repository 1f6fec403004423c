"""KL penalties; the gradient is w.r.t. ``logp``.

``kl_penalty(logp, ref_logp, mask, *, estimator="k3", preset=None|"verl"|"trl",
log_ratio_clamp=20.0, value_clamp=10.0, old_logp=None, <normaliser>, out=None,
accumulate=False, coef=1.0, compute_grad=True)``: ``estimator`` is any name
``parse_kl_estimator`` accepts (``KL_ESTIMATOR_NAMES``: ``kl``/``k1``, ``abs``, ``mse``/``k2``,
``low_var_kl``/``k3`` and the ``+`` forms). With ``old_logp`` it is the importance-corrected
form (``kl_penalty_corrected``, TRL ``use_bias_correction_kl``). ``coef`` is the KL
coefficient (it scales the value and the gradient, as ``rlpo::add_to(g, coef)``).
"""

from . import _rlpo
from ._common import wrap

KL_ESTIMATOR_NAMES = list(_rlpo.penalties.KL_ESTIMATOR_NAMES)
kl_penalty = wrap(_rlpo.penalties.kl_penalty, "penalties.kl_penalty",
                  ("logp", "ref_logp", "mask"))
