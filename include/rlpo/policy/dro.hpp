#pragma once
/// \file
/// DRO: direct reward optimisation — REINFORCE with a quadratic penalty on the log-ratio.
///
/// Per unmasked token, with lr = logp − old_logp (not clamped):
///
///     l = −(A·logp − ½·β·lr²)          (times the optional per-token weight w)
///
/// The quadratic term is a proximal penalty that keeps π near the sampling policy without a
/// reference model; at lr = 0 it vanishes with its gradient, so the first step is REINFORCE.
/// Its gradient equals that of DRO's squared loss (A − β·lr)²/(2β) per token (with π_old as the
/// reference and the advantage as r − V): the two differ by A²/(2β), a constant in logp.
///
/// **Gradient** w.r.t. `logp`: ∂l/∂logp = w·(−A + β·lr).
///
/// **Metrics**: `ppo_kl` = mean of −lr (an rlpo addition, as for the other surrogates).
///
/// **Sources and defaults**: Richemond et al. 2024, "Offline Regularised Reinforcement Learning
/// for Large Language Models Alignment" (DRO, arXiv 2405.19107) — its quadratic regulariser in the
/// policy log-ratio; the per-token form used by trainers registering policy loss "dro"
/// (verl-style registries), β = 0.1 (`dro_beta`).
///
/// **Bad input**: shapes differing from `logp`, β < 0 → rlpo::invalid_argument; NaN under a
/// non-zero mask → rlpo::invalid_argument naming the input; ±inf log-probs give ±inf losses or,
/// when undefined (both −inf), an error. An empty mask gives value 0 and gradient 0.

#include <rlpo/policy/detail/common.hpp>

namespace rlpo::policy {

struct DROOptions {
    double beta = 0.1;  ///< β: strength of the quadratic log-ratio penalty (≥ 0)
};

namespace detail {
inline void validate(const char* fn, const DROOptions& o) {
    ::rlpo::detail::check_nonnegative(fn, "beta", o.beta);
}
}  // namespace detail

/// DRO loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> dro(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const DROOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<DL>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "policy::dro";
    const ConstMatRef<S> lp(logp.derived()), olp(old_logp.derived()), A(advantages.derived()),
        m(mask.derived());
    ::rlpo::detail::check_surrogate_shapes(fn, lp, olp, A, m);
    detail::validate(fn, opts);
    detail::check_weights(fn, is_weights, m);

    Result<S> res;
    const RowWeights w = row_weights(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, lp.rows(), lp.cols());
    const double beta = opts.beta;
    const auto pass = ::rlpo::detail::token_pass<1, S>(
        fn, m, w, g, {{"logp", &lp}, {"old_logp", &olp}, {"advantages", &A}},
        [&](Index i, Index t, std::array<double, 1>& st) -> ::rlpo::detail::LossGrad {
            const double a = static_cast<double>(A(i, t)), x = static_cast<double>(lp(i, t));
            const double lr = x - static_cast<double>(olp(i, t));
            const double wt = detail::weight_at(is_weights, i, t);
            st[0] = -lr;
            return {-wt * (a * x - 0.5 * beta * lr * lr), wt * (-a + beta * lr)};
        });
    res.value = g.coef() * pass.value;
    res.metrics.add("ppo_kl", pass.stats[0], pass.count);
    return res;
}

}  // namespace rlpo::policy
