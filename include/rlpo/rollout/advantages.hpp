#pragma once
/// \file
/// Group-relative advantage estimators over per-response scores (outcome rewards), and the
/// helpers that move between per-response and per-token (`[B, T]`) quantities.
///
/// Inputs: `scores` is one scalar per response (an `Eigen` vector, float or double, e.g.
/// `rlpo::Vec<S>`), `groups` says which responses answer the same prompt
/// (`rlpo::rollout::Groups`, contiguous). Outputs are one advantage per response (`Vec<S>`,
/// computed in double); `broadcast_to_tokens(adv, mask)` turns them into the `[B, T]` advantages
/// a policy surrogate takes. Advantages are constants of the loss (no gradient flows through
/// them), so these functions return values only.
///
/// | estimator | advantage of response i in group g (n = |g|) | function |
/// |---|---|---|
/// | GRPO | (s_i − μ_g) / (max(σ, σ_floor) + ε), σ = σ_g (group), σ_B (batch) or none | `grpo_advantages` |
/// | Dr.GRPO | s_i − μ_g (`GRPOOptions::dr_grpo()`; pair with SeqMeanTokenSumNorm) | `grpo_advantages` |
/// | RLOO | s_i − (Σ_g s − s_i)/(n − 1) = n/(n−1)·(s_i − μ_g) | `rloo_advantages` |
/// | OPO | s_i − Σ_g l_j s_j / Σ_g l_j (length-weighted baseline) | `opo_advantages` |
/// | GRPO pass@k (verl) | best response of the group: (s_max − s_2nd) [/ (σ_g + ε)], others 0 | `grpo_passk_advantages` |
///
/// Degenerate groups (documented, never NaN or a blow-up): a group whose scores are all
/// bitwise equal gets advantage exactly 0 in every estimator; a singleton group gets 0 by
/// default (no baseline can be formed from one sample), or its raw score under the verl presets
/// (`SingletonGroups::RawScore`: verl takes mean 0 and std 1 for a group of one).
///
/// **Bad input** (rlpo::invalid_argument): scores not a vector, scores/groups size mismatch,
/// NaN score (unless `NanScores::AsZero`), ±inf score, ε < 0, σ_floor < 0, lengths < 0.

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/detail/scores.hpp>
#include <rlpo/rollout/groups.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

namespace rlpo::rollout {

/// Sample (unbiased, n − 1; torch.std's default, used by verl, TRL, OpenRLHF) or population (n)
/// standard deviation.
enum class StdKind { Sample, Population };

/// What divides the centred score in GRPO.
enum class AdvantageScale {
    Group,  ///< σ_g, the std of the response's group (GRPO)
    Batch,  ///< σ_B, the std of all scores of the batch (TRL `scale_rewards="batch"`)
    None    ///< no division (Dr.GRPO; TRL `scale_rewards="none"`, verl `norm_adv_by_std_in_grpo=False`)
};

/// Advantage of a group with one response.
enum class SingletonGroups {
    Zero,     ///< 0 (rlpo default): no baseline can be formed from one sample
    RawScore  ///< verl: mean taken as 0 and std as 1, so the score itself (÷(1 + ε) under Group)
};

/// Options of `grpo_advantages`.
///
/// Defaults are verl's (the GRPO paper, Shao et al. 2024, arXiv:2402.03300 §4.1.2, gives
/// (r − mean)/std without ε): sample std, ε = 1e-6, scaled by the group std — except singleton
/// groups, which give 0 here and the raw score in verl (`verl()` reproduces it).
struct GRPOOptions {
    AdvantageScale scale = AdvantageScale::Group;
    StdKind std_kind = StdKind::Sample;
    /// ε added to the std (≥ 0).
    double epsilon = 1e-6;
    /// σ_floor: the std used is max(σ, σ_floor) (≥ 0; 0 disables). Bounds the amplification of
    /// nearly-equal groups.
    double std_floor = 0.0;
    SingletonGroups singleton = SingletonGroups::Zero;
    NanScores nan_scores = NanScores::Throw;

    /// verl `compute_grpo_outcome_advantage`: sample std, ε 1e-6, singleton → raw score.
    static GRPOOptions verl(bool norm_adv_by_std = true) {
        GRPOOptions o;
        o.singleton = SingletonGroups::RawScore;
        if (!norm_adv_by_std) o.scale = AdvantageScale::None;
        return o;
    }
    /// TRL GRPOTrainer: sample std, ε 1e-4, NaN rewards count as 0 (`nansum`); `scale` is TRL's
    /// `scale_rewards` ("group", "batch", "none").
    static GRPOOptions trl(AdvantageScale scale = AdvantageScale::Group) {
        GRPOOptions o;
        o.epsilon = 1e-4;
        o.scale = scale;
        o.nan_scores = NanScores::AsZero;
        return o;
    }
    /// OpenRLHF `group_norm`: sample std, ε 1e-9.
    static GRPOOptions openrlhf() {
        GRPOOptions o;
        o.epsilon = 1e-9;
        return o;
    }
    /// Dr.GRPO (Liu et al. 2025, arXiv:2503.20783): no std division (s − μ_g); pair with
    /// `Aggregation::SeqMeanTokenSumNorm` in the loss.
    static GRPOOptions dr_grpo() {
        GRPOOptions o;
        o.scale = AdvantageScale::None;
        return o;
    }
};

/// GRPO group-normalised advantages, one per response (see the file comment for the formula,
/// presets and degenerate groups). Under `AdvantageScale::Batch`, σ_B is the std (same
/// flavour) of all N scores around their batch mean, as TRL computes it; the centring stays
/// per group. When the denominator is 0 (ε = 0 and σ = 0), the advantage is 0.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> grpo_advantages(const Eigen::MatrixBase<D>& scores,
                                                  const Groups& groups,
                                                  const GRPOOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<D>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: scores must be float or double");
    constexpr const char* fn = "rollout::grpo_advantages";
    ::rlpo::detail::check_nonnegative(fn, "epsilon", opts.epsilon);
    ::rlpo::detail::check_nonnegative(fn, "std_floor", opts.std_floor);
    const std::vector<double> s = detail::read_scores(fn, "scores", scores, opts.nan_scores);
    detail::check_groups(fn, "scores", groups, s.size());
    const bool sample = opts.std_kind == StdKind::Sample;
    double batch_std = 0.0;
    if (opts.scale == AdvantageScale::Batch) {
        const Index N = static_cast<Index>(s.size());
        batch_std = detail::stddev(s, 0, N, detail::mean(s, 0, N), sample);
    }
    std::vector<double> a(s.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g), n = e - b;
        double mu = 0.0, sigma = 1.0;  // singleton RawScore: verl's mean 0, std 1
        if (n == 1) {
            if (opts.singleton == SingletonGroups::Zero) continue;
        } else {
            if (detail::all_equal(s, b, e)) continue;  // exactly 0, never noise / ε
            mu = detail::mean(s, b, e);
            sigma = detail::stddev(s, b, e, mu, sample);
        }
        double denom = 1.0;
        if (opts.scale == AdvantageScale::Group)
            denom = std::max(sigma, opts.std_floor) + opts.epsilon;
        else if (opts.scale == AdvantageScale::Batch)
            denom = std::max(batch_std, opts.std_floor) + opts.epsilon;
        if (!(denom > 0)) continue;
        for (Index k = b; k < e; ++k) {
            const auto i = static_cast<std::size_t>(k);
            a[i] = (s[i] - mu) / denom;
        }
    }
    return detail::to_vec<S>(a);
}

/// Options of `rloo_advantages`.
struct RLOOOptions {
    SingletonGroups singleton = SingletonGroups::Zero;
    NanScores nan_scores = NanScores::Throw;
    /// verl `compute_rloo_outcome_advantage`: a singleton group keeps its raw score.
    static RLOOOptions verl() {
        RLOOOptions o;
        o.singleton = SingletonGroups::RawScore;
        return o;
    }
    /// TRL RLOOTrainer: NaN rewards count as 0 (`nansum` over reward functions).
    static RLOOOptions trl() {
        RLOOOptions o;
        o.nan_scores = NanScores::AsZero;
        return o;
    }
};

/// REINFORCE leave-one-out (Ahmadian et al. 2024, arXiv:2402.14740; Kool et al. 2019):
/// A_i = s_i − (Σ_{j∈g} s_j − s_i)/(n − 1), the mean of the *other* responses as baseline —
/// equal to n/(n−1)·(s_i − μ_g), which is how verl writes it. Sums to 0 over each group.
/// Singleton groups: 0 (default) or the raw score (`RLOOOptions::verl()`).
template <class D>
Vec<::rlpo::detail::scalar_t<D>> rloo_advantages(const Eigen::MatrixBase<D>& scores,
                                                  const Groups& groups,
                                                  const RLOOOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<D>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: scores must be float or double");
    constexpr const char* fn = "rollout::rloo_advantages";
    const std::vector<double> s = detail::read_scores(fn, "scores", scores, opts.nan_scores);
    detail::check_groups(fn, "scores", groups, s.size());
    std::vector<double> a(s.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g), n = e - b;
        if (n == 1) {
            if (opts.singleton == SingletonGroups::RawScore) a[static_cast<std::size_t>(b)] = s[static_cast<std::size_t>(b)];
            continue;
        }
        if (detail::all_equal(s, b, e)) continue;
        double sum = 0.0;
        for (Index k = b; k < e; ++k) sum += s[static_cast<std::size_t>(k)];
        for (Index k = b; k < e; ++k) {
            const auto i = static_cast<std::size_t>(k);
            a[i] = s[i] - (sum - s[i]) / static_cast<double>(n - 1);
        }
    }
    return detail::to_vec<S>(a);
}

/// Number of unmasked tokens (m ≠ 0) of each row of a `[B, T]` mask: the response lengths.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> lengths_from_mask(const Eigen::MatrixBase<D>& mask) {
    using S = ::rlpo::detail::scalar_t<D>;
    ::rlpo::detail::check_mask("rollout::lengths_from_mask", mask.derived());
    Vec<S> len(mask.rows());
    for (Index i = 0; i < mask.rows(); ++i) {
        Index n = 0;
        for (Index t = 0; t < mask.cols(); ++t) n += mask.derived()(i, t) != 0 ? 1 : 0;
        len(i) = static_cast<S>(n);
    }
    return len;
}

/// Per-response advantages broadcast over the tokens of each response: A_it = a_i where
/// m_it ≠ 0, and exactly 0 where m_it = 0 (verl multiplies by the 0/1 response mask; a
/// fractional mask weight is the loss's business and is not folded in here).
template <class DA, class DM>
Mat<::rlpo::detail::scalar_t<DM>> broadcast_to_tokens(const Eigen::MatrixBase<DA>& seq_values,
                                                       const Eigen::MatrixBase<DM>& mask) {
    using S = ::rlpo::detail::scalar_t<DM>;
    constexpr const char* fn = "rollout::broadcast_to_tokens";
    const std::vector<double> a = detail::read_scores(fn, "seq_values", seq_values);
    RLPO_CHECK(static_cast<Index>(a.size()) == mask.rows(), fn, "seq_values: expected ",
               mask.rows(), " entries (rows of mask), given ", a.size());
    ::rlpo::detail::check_mask(fn, mask.derived());
    Mat<S> out = Mat<S>::Zero(mask.rows(), mask.cols());
    for (Index i = 0; i < mask.rows(); ++i)
        for (Index t = 0; t < mask.cols(); ++t)
            if (mask.derived()(i, t) != 0) out(i, t) = static_cast<S>(a[static_cast<std::size_t>(i)]);
    return out;
}

/// Outcome scores placed as token-level rewards: r_it = s_i at the last unmasked token of row i
/// (where verl's reward manager puts it), 0 elsewhere; an empty row gets no reward.
template <class DA, class DM>
Mat<::rlpo::detail::scalar_t<DM>> outcome_token_rewards(const Eigen::MatrixBase<DA>& scores,
                                                         const Eigen::MatrixBase<DM>& mask) {
    using S = ::rlpo::detail::scalar_t<DM>;
    constexpr const char* fn = "rollout::outcome_token_rewards";
    const std::vector<double> s = detail::read_scores(fn, "scores", scores);
    RLPO_CHECK(static_cast<Index>(s.size()) == mask.rows(), fn, "scores: expected ", mask.rows(),
               " entries (rows of mask), given ", s.size());
    ::rlpo::detail::check_mask(fn, mask.derived());
    Mat<S> out = Mat<S>::Zero(mask.rows(), mask.cols());
    for (Index i = 0; i < mask.rows(); ++i)
        for (Index t = mask.cols() - 1; t >= 0; --t)
            if (mask.derived()(i, t) != 0) {
                out(i, t) = static_cast<S>(s[static_cast<std::size_t>(i)]);
                break;
            }
    return out;
}

}  // namespace rlpo::rollout
