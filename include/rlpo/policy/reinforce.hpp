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
/// naming the input and position. A per-token loss that is not finite → rlpo::invalid_argument
/// listing the inputs at that position: logp = −inf (l = ±inf when A ≠ 0 — a zero-probability
/// token cannot have been sampled — undefined when A = 0) and finite extremes whose −A·logp
/// overflows. A value sum or a weighted gradient entry that overflows → rlpo::numerical_error.
/// An empty mask gives value 0 and gradient 0. Through `policy_loss` (GPG) `old_logp` must have
/// the shape of `logp` although its values are not read.

#include <rlpo/policy/detail/driver.hpp>

namespace rlpo::policy {

/// No hyperparameters: the (empty) options of the `policy_loss` registry row.
struct ReinforceOptions {};

namespace detail {
/// −w·A·logp per token (run by `run_tokens`, policy/detail/driver.hpp); no metrics.
struct ReinforceKernel {
    using Options = ReinforceOptions;
    static constexpr const char* name = "policy::reinforce";
    static constexpr std::size_t stats = 1;
    static constexpr bool reads_old_logp = false;

    explicit ReinforceKernel(const ReinforceOptions&) {}
    ::rlpo::detail::LossGrad operator()(const Token& tok, std::array<double, 1>&) const {
        const double a = tok.adv, x = tok.logp, wt = tok.weight;
        return {-wt * a * x, -wt * a};
    }
    void report(Metrics&, const std::array<double, 1>&, double) const {}
};
}  // namespace detail

/// REINFORCE / GPG loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> reinforce(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DA>& advantages,
    const Eigen::MatrixBase<DM>& mask, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    // old_logp is not read: logp stands in for it
    return detail::run_tokens<detail::ReinforceKernel>(logp, logp, advantages, mask, {}, norm, out,
                                                       is_weights);
}

}  // namespace rlpo::policy
