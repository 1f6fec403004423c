#pragma once
/// \file
/// ACE: asymmetric confidence-aware error penalty — negative advantages are scaled up for
/// rollouts the policy has become over-confident in.
///
/// Per row i with |y_i| > 0, the confidence shift is the sequence log-ratio against the
/// reference policy, computed from the log-probs passed in (a constant: no gradient flows
/// through it):
///
///     c_i  = Σ_t m_it·(logp_it − ref_logp_it)          = log π(y_i|x) / π_ref(y_i|x)
///     Â_it = A_it · (1 + α·softplus(c_i))   if A_it < 0
///     Â_it = A_it                            otherwise
///
/// The modified advantages feed any surrogate (`policy_loss(opts, logp, old, Â, mask, …)`); ACE
/// itself is this one-line change to the advantage of wrong rollouts. softplus keeps the extra
/// penalty smooth: errors the policy has *not* moved towards (c ≪ 0) keep their advantage,
/// errors it has reinforced (c > 0) are pushed down harder.
///
/// **Metrics**: `ace_scale_mean` — mean of the factor (1 + α·softplus(c_i)) over unmasked tokens
/// with A < 0; `ace_confidence_mean` — mean of c_i over unmasked tokens.
///
/// **Source and decisions** [verify]: Xu et al. 2026, "Overconfident Errors Need Stronger
/// Correction: Asymmetric Confidence Penalties for Reinforcement Learning" (arXiv 2602.21420).
/// From the paper's abstract and summaries: c_i = log(π_θ(y_i|x)/π_ref(y_i|x)) per rollout (a
/// sum over the sequence, not a mean), a softplus modulation of negative advantages only,
/// applied as an advantage change inside GRPO/DAPO (c is therefore treated as a constant). The
/// value of α could not be confirmed from the text available while writing this; α = 1 is
/// the default here (set it explicitly). Pass the log-probs of the policy that generated the
/// rollout (old_logp) to compute c once per batch, or the current ones to recompute it.
///
/// **Bad input**: shape mismatches, α < 0 → rlpo::invalid_argument; NaN under a non-zero mask
/// → rlpo::invalid_argument naming the input; a row whose log-ratio sum is undefined (−inf − −inf)
/// is reported. Masked entries are never read and are 0 in the output.

#include <rlpo/core/math.hpp>
#include <rlpo/policy/detail/common.hpp>

namespace rlpo::policy {

struct ACEOptions {
    double alpha = 1.0;  ///< α ≥ 0: strength of the confidence penalty (0 = plain advantages)
};

/// Modified advantages and the metrics of the modulation.
template <class S>
struct ModifiedAdvantages {
    Mat<S> advantages;
    Metrics metrics;
};

/// ACE-modulated advantages. All inputs `[B, T]`.
template <class DA, class DL, class DR, class DM>
ModifiedAdvantages<::rlpo::detail::scalar_t<DA>> ace_advantages(
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DL>& logp,
    const Eigen::MatrixBase<DR>& ref_logp, const Eigen::MatrixBase<DM>& mask,
    const ACEOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DA>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "policy::ace_advantages";
    const ConstMatRef<S> A(advantages.derived()), lp(logp.derived()), rl(ref_logp.derived()),
        m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "logp", lp, "advantages", A);
    ::rlpo::detail::check_same_shape(fn, "ref_logp", rl, "advantages", A);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "advantages", A);
    ::rlpo::detail::check_nonnegative(fn, "alpha", opts.alpha);
    ::rlpo::detail::check_mask(fn, m);
    ModifiedAdvantages<S> out;
    out.advantages = Mat<S>::Zero(A.rows(), A.cols());
    double neg = 0, scale_sum = 0, count = 0, conf_sum = 0;
    for (Index i = 0; i < A.rows(); ++i) {
        detail::check_row_nan<S>(fn, m, i, {{"advantages", &A}, {"logp", &lp}, {"ref_logp", &rl}});
        double c = 0, len = 0;
        for (Index t = 0; t < A.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            len += mk;
            c += mk * (static_cast<double>(lp(i, t)) - static_cast<double>(rl(i, t)));
        }
        if (len == 0) continue;
        if (std::isnan(c))
            ::rlpo::detail::fail(fn, "inputs of row ", i,
                                 " give an undefined (NaN) sequence log-ratio");
        const double scale = 1.0 + opts.alpha * ::rlpo::softplus(c);
        for (Index t = 0; t < A.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double a = static_cast<double>(A(i, t));
            count += mk;
            conf_sum += mk * c;
            if (a < 0) {
                out.advantages(i, t) = static_cast<S>(a * scale);
                neg += mk;
                scale_sum += mk * scale;
            } else {
                out.advantages(i, t) = static_cast<S>(a);
            }
        }
    }
    out.metrics.add("ace_scale_mean", scale_sum, neg);
    out.metrics.add("ace_confidence_mean", conf_sum, count);
    return out;
}

}  // namespace rlpo::policy
