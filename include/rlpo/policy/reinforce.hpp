#pragma once
/// \file
/// REINFORCE / GPG: the plain policy-gradient surrogate, no ratio and no clipping.
///
/// Per unmasked token:   l = −A·logp  (times the optional per-token weight w, a constant)
///
/// and the loss is the aggregation (core/aggregation.hpp) of l over the mask.
///
/// **Gradient** w.r.t. `logp`: ∂l/∂logp = −w·A (the score-function estimator: on samples of π
/// its expectation is −∇E_π[A]).
///
/// **Metrics**: none (verl's `gpg` loss reports none; `ppo_kl` needs old log-probs, which this
/// surrogate does not read).
///
/// **Sources**: Williams 1992 (REINFORCE); GPG, Chu et al. 2025, "GPG: A Simple and Strong
/// Reinforcement Learning Baseline for Model Reasoning" (arXiv 2504.02546), whose loss is this
/// one with a group-normalised advantage; verl's `compute_policy_loss_gpg` (policy loss "gpg").
/// GPG's corrections live in the advantage (its α = B / B_valid factor is a rollout-side
/// scaling of A), not in this loss. No hyperparameters.
///
/// **Bad input**: shapes differing from `logp`, negative/non-finite mask or weights →
/// rlpo::invalid_argument; a NaN in any input under a non-zero mask → rlpo::invalid_argument
/// naming the input and position. logp = −inf gives l = ±inf when A ≠ 0 (a zero-probability
/// token cannot have been sampled) and is reported as undefined when A = 0. An empty mask
/// gives value 0 and gradient 0.

#include <rlpo/policy/detail/common.hpp>

namespace rlpo::policy {

/// REINFORCE / GPG loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> reinforce(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DA>& advantages,
    const Eigen::MatrixBase<DM>& mask, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<DL>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "policy::reinforce";
    const ConstMatRef<S> lp(logp.derived()), A(advantages.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "advantages", A, "logp", lp);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "logp", lp);
    detail::check_weights(fn, is_weights, m);

    Result<S> res;
    const RowWeights w = row_weights(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, lp.rows(), lp.cols());
    const auto pass = ::rlpo::detail::token_pass<1, S>(
        fn, m, w, g, {{"logp", &lp}, {"advantages", &A}},
        [&](Index i, Index t, std::array<double, 1>&) -> ::rlpo::detail::LossGrad {
            const double a = static_cast<double>(A(i, t)), x = static_cast<double>(lp(i, t));
            const double wt = detail::weight_at(is_weights, i, t);
            return {-wt * a * x, -wt * a};
        });
    res.value = g.coef() * pass.value;
    return res;
}

}  // namespace rlpo::policy
