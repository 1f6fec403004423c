#pragma once
/// \file
/// BCO: binary classifier optimisation on unpaired desirable / undesirable examples (arXiv
/// 2404.04656), with TRL's `BCOTrainer.bco_loss` semantics.
///
/// Inputs (`[n_c]` and `[n_r]`, float or double, any Eigen vector or map, N×1 or 1×N; either
/// side may be empty): the summed log-probs of the desirable (chosen) examples under the policy
/// and the reference (π_c, ref_c), and of the undesirable (rejected) ones (π_r, ref_r); the two
/// sides are unpaired (n_c, n_r independent). With the implicit reward r = β·(π − ref), δ the
/// reward shift (`delta`), σ the logistic function and optional constant per-example weights
/// w ≥ 0 (default 1), the losses are
///
///   ℓ_chosen = −logσ(r − δ),   ℓ_rejected = −logσ(−(r − δ)),
///   L = (Σ_chosen w·ℓ + Σ_rejected w·ℓ) / N,   N = n_c + n_r
///
/// (TRL: `torch.cat((chosen_losses, rejected_losses)).nanmean()`), or the sum over
/// `num_examples`, the global example count of a batch split into micro-batches (the parts then
/// add up exactly, given the same δ).
///
/// **δ**: TRL subtracts the running mean of the rewards (`RunningMoments`, updated with the
/// current batch's detached rewards, gathered over the ranks, *before* the loss; not updated in
/// evaluation). It is a constant of the loss; the caller keeps the running mean and passes it as
/// `BCOOptions::delta` (default 0, which is also the start of TRL's running mean).
///
/// **UDM weights** (TRL `match_underlying_distribution`): TRL multiplies each rejected loss by
/// the density ratio clamp(p/(1 − p + 1e-8), `min_density_ratio`, `max_density_ratio`) of a
/// prompt classifier trained on embeddings, and each chosen loss by 1. rlpo takes these as the
/// optional constants `ExampleWeights::rejected` (and, for generality, `::chosen`), computed
/// by the caller, who has the embeddings and the classifier.
///
/// **Gradient**: w.r.t. the policy log-probs of the examples only (reference, δ and weights are
/// constants), as one `[1, n_c + n_r]` row-major matrix: the n_c chosen entries, then the n_r
/// rejected ones (TRL's concatenation order): ∂L/∂π_c = −w·β·σ(−(r − δ))/N,
/// ∂L/∂π_r = w·β·σ(r − δ)/N.
///
/// **Metrics** (TRL's names): `rewards/chosen`, `logps/chosen` (means over the chosen
/// examples), `rewards/rejected`, `logps/rejected` (over the rejected), each stored as (sum,
/// count) as TRL's `rewards/chosen_sum` + `count/chosen` that its `log` divides (the count is
/// `metrics.at("rewards/chosen").count`); a side without examples reports none (TRL: only when
/// the gathered count is > 0); `rewards/margins` (difference of the two means of this call)
/// when both sides have examples; `delta` (δ). Unweighted, as TRL's. TRL's `logits/*` need the
/// logits and are not here.
///
/// **Defaults** (TRL BCOConfig): β 0.1, δ 0, no weights.
///
/// **Anchor**: TRL `trl/experimental/bco/bco_trainer.py`, `BCOTrainer.bco_loss`,
/// `RunningMoments`, `_get_udm_weight`, `get_batch_loss_metrics` (main, f2cd577, 2026-07);
/// `bco_config.py`. The paired variant is `bco_pair` of `dpo_loss`.
///
/// **Bad input** (rlpo::invalid_argument, reported as `preference::bco_loss`): an input not a
/// vector, a reference vector of a size other than its side's policy vector, NaN or ±inf entries
/// (naming the input and the entry), β ≤ 0, δ non-finite, `num_examples` ≤ 0, weights of the
/// wrong size, negative, NaN or ±inf. n_c = n_r = 0 gives value 0 and an empty gradient (TRL:
/// the `nanmean` of nothing, NaN).

#include <rlpo/core/error.hpp>
#include <rlpo/core/math.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/preference/detail/unpaired.hpp>

#include <optional>
#include <utility>
#include <vector>

namespace rlpo::preference {

struct BCOOptions {
    double beta = 0.1;   ///< β (TRL `beta`)
    double delta = 0.0;  ///< δ: TRL's running mean of the rewards (a constant here)
    /// Denominator of the mean: the global example count n_c + n_r of a batch split into
    /// micro-batches (unset: the local count).
    std::optional<double> num_examples{};

    /// TRL BCOConfig defaults (δ is TRL's running mean: set it per step).
    static BCOOptions trl() { return {}; }
};

/// Optional constant per-example weights (unset: all 1): TRL's UDM density ratios go in
/// `rejected`.
struct ExampleWeights {
    std::optional<Eigen::VectorXd> chosen{}, rejected{};
};

namespace detail {

inline void validate(const char* fn, const BCOOptions& o) {
    ::rlpo::detail::check_positive(fn, "beta", o.beta);
    ::rlpo::detail::check_finite_param(fn, "delta", o.delta);
    if (o.num_examples) ::rlpo::detail::check_positive(fn, "num_examples", *o.num_examples);
}

}  // namespace detail

/// The BCO loss (see the file comment), its gradient w.r.t. the policy log-probs as a
/// `[1, n_c + n_r]` matrix (chosen entries first) and TRL's metrics.
template <class D1, class D2, class D3, class D4>
Result<::rlpo::detail::scalar_t<D1>> bco_loss(
    const Eigen::MatrixBase<D1>& policy_chosen_logps,
    const Eigen::MatrixBase<D2>& policy_rejected_logps,
    const Eigen::MatrixBase<D3>& ref_chosen_logps, const Eigen::MatrixBase<D4>& ref_rejected_logps,
    const BCOOptions& opts = {}, const GradientOut<::rlpo::detail::scalar_t<D1>>& out = {},
    const ExampleWeights& weights = {}) {
    using S = ::rlpo::detail::scalar_t<D1>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "preference::bco_loss";
    const detail::UnpairedData d = detail::read_unpaired(
        fn, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps);
    const std::vector<double> wc = detail::read_example_weights(
        fn, "weights.chosen", weights.chosen, d.pc.size(), "policy_chosen_logps");
    const std::vector<double> wr = detail::read_example_weights(
        fn, "weights.rejected", weights.rejected, d.pr.size(), "policy_rejected_logps");
    detail::validate(fn, opts);
    const double beta = opts.beta, delta = opts.delta;
    Result<S> res = detail::run_unpaired<S>(
        fn, d, wc, wr, opts.num_examples, out,
        [&](double u) {  // −logσ(βu − δ)
            const double z = beta * u - delta;
            return std::pair<double, double>{-::rlpo::log_sigmoid(z), -beta * ::rlpo::sigmoid(-z)};
        },
        [&](double u) {  // −logσ(−(βu − δ))
            const double z = beta * u - delta;
            return std::pair<double, double>{-::rlpo::log_sigmoid(-z), beta * ::rlpo::sigmoid(z)};
        });
    detail::unpaired_metrics(res.metrics, d, opts.beta);
    res.metrics.set("delta", opts.delta);
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

}  // namespace rlpo::preference
