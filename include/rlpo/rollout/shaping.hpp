#pragma once
/// \file
/// Reward shaping: rules that turn raw per-response rewards (and lengths, groups, reference
/// log-probs) into the scores the advantage estimators take.
///
/// Every function returns a new vector (or `[B, T]` array); none is differentiated (rewards are
/// constants of the loss). Lengths are per-response token counts (`lengths_from_mask(mask)`);
/// `correct` is one 0/1 flag per response (non-zero = the verifier accepted the answer).
///
/// The length-aware rules (Kimi, GRPO-λ, DOT, STCR, ARLCP, GRPO-CARE) live in
/// `rlpo/rollout/length_shaping.hpp`, which this header includes.
///
/// | rule | shaped value | function |
/// |---|---|---|
/// | reward components | Σ_k w_k·R_ik (TRL: NaN components skipped, `nansum`) | `combine_rewards` |
/// | DAPO overlong | 0 / −f·(L − (L_max − L_c))/L_c / −f by zone | `overlong_penalty` |
/// | DLER truncation | r·c if the response was cut at the cap (c = 0 in DLER), else r | `truncation_penalty` |
/// | Kimi length reward | λ = ½ − (L − L_min,g)/(L_max,g − L_min,g); correct: λ, wrong: min(0, λ) | `kimi_length_reward` |
/// | GRPO-λ | top-λ fraction of groups by accuracy: length-shaped reward, others 0/1 | `grpo_lambda_rewards` |
/// | DOT | in all-correct groups, L > μ_L + k·σ_L ⇒ score := outlier score | `dot_outlier_truncation` |
/// | STCR | wrong and longer than the correct mean: A·(1 + (1 − b^(−Δ))) | `stcr_scale_advantages` |
/// | ARLCP | correct: 1 − w_r·σ(z_refl) − (w − w_r)·σ(z_len) over the group's correct responses | `arlcp_rewards` |
/// | GRPO-CARE | + λ_b·acc for accurate responses with consistency ≥ mean_accurate − m | `care_consistency_bonus` |
/// | ensembles | WCO min_k R_k; UWO mean_k R_k − λ·Var_k R_k (population or sample, explicit) | `ensemble_reward` |
/// | InfAlign CTRL | u = F̂_base(r); BoN exp(t·u), WoN −exp(−t·u) | `ctrl_calibrate`, `ctrl_transform` |
/// | KL in reward | r_it − β·k(old_logp − ref_logp) per token (or summed into the score) | `kl_in_reward` |
///
/// **Bad input** (rlpo::invalid_argument): size mismatches, NaN / ±inf rewards, negative
/// lengths, hyperparameters outside their domain (each function's comment lists its own).

#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/penalties/kl_estimators.hpp>
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/detail/scores.hpp>
#include <rlpo/rollout/groups.hpp>
#include <rlpo/rollout/length_shaping.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace rlpo::rollout {

// ---------------------------------------------------------------------------------------------
// Reward components
// ---------------------------------------------------------------------------------------------

/// The score of each response from K reward components (`rewards`, N × K, e.g. correctness and
/// format): r_i = Σ_k w_k·R_ik, weights default to 1. NaN policy: `NanScores::Throw` (default)
/// rejects a NaN component naming it; `NanScores::AsZero` skips it, as TRL's GRPO/RLOO trainers
/// do (`nansum` over the weighted reward functions, so a function that returned None for a
/// sample contributes nothing, and a sample with no reward at all scores 0). ±inf is always an
/// error. Bad input: K = 0, weights of the wrong length or non-finite. Finite rewards and
/// weights whose weighted sum overflows the output type (w = 1e300, r = 1e30) are
/// rlpo::numerical_error naming the row (never ±inf, or inf − inf = NaN).
template <class D>
Vec<::rlpo::detail::scalar_t<D>> combine_rewards(const Eigen::MatrixBase<D>& rewards,
                                                 const std::vector<double>& weights = {},
                                                 NanScores nan = NanScores::Throw) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::combine_rewards";
    const auto& R = rewards.derived();
    const Index N = R.rows(), K = R.cols();
    RLPO_CHECK(K >= 1, fn, "rewards: expected at least one reward component (column), given 0");
    RLPO_CHECK(weights.empty() || static_cast<Index>(weights.size()) == K, fn, "weights: expected ",
               K, " entries (columns of rewards), given ", weights.size());
    for (double w : weights) ::rlpo::detail::check_finite_param(fn, "weights", w);
    Vec<S> out(N);
    for (Index i = 0; i < N; ++i) {
        double sum = 0.0;
        for (Index k = 0; k < K; ++k) {
            const double r = static_cast<double>(R(i, k));
            if (std::isnan(r)) {
                RLPO_CHECK(
                    nan == NanScores::AsZero, fn, "rewards: NaN at [", i, ", ", k,
                    "] (NaN rewards are rejected; NanScores::AsZero skips them, as TRL does)");
                continue;
            }
            RLPO_CHECK(std::isfinite(r), fn, "rewards: non-finite value ", r, " at [", i, ", ", k,
                       "]");
            sum += (weights.empty() ? 1.0 : weights[static_cast<std::size_t>(k)]) * r;
        }
        out(i) = static_cast<S>(sum);
        if (!std::isfinite(static_cast<double>(out(i))))
            ::rlpo::detail::fail_numerical(fn, "rewards: the weighted sum of row ", i,
                                           " overflows (", sum, ")");
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// DAPO overlong soft penalty
// ---------------------------------------------------------------------------------------------

/// Options of `overlong_penalty`: L_max (the generation cap), L_cache (the soft zone before it)
/// and the penalty factor. DAPO's paper uses L_max = 20480, L_cache = 4096; these must be set
/// by the caller (no default fits every cap).
struct OverlongOptions {
    double max_length = 0.0;      ///< L_max > 0
    double cache_length = 0.0;    ///< L_cache in (0, L_max]
    double penalty_factor = 1.0;  ///< verl `overlong_buffer.penalty_factor` (≥ 0)
    /// Beyond L_max: −factor (paper, TRL) or the linear ramp continued (verl, whose lengths
    /// never exceed L_max, so it never clips).
    bool clip_beyond_max = true;

    /// DAPO paper / TRL `get_soft_overlong_punishment(max_completion_len, soft_punish_cache)`.
    static OverlongOptions dapo(double max_length, double cache_length) {
        OverlongOptions o;
        o.max_length = max_length;
        o.cache_length = cache_length;
        return o;
    }
    /// verl DAPO reward manager: `max_resp_len`, `overlong_buffer.len`, `penalty_factor`.
    static OverlongOptions verl(double max_resp_len, double buffer_len,
                                double penalty_factor = 1.0) {
        OverlongOptions o = dapo(max_resp_len, buffer_len);
        o.penalty_factor = penalty_factor;
        o.clip_beyond_max = false;
        return o;
    }
};

/// DAPO overlong soft penalty (Yu et al. 2025, arXiv:2503.14476, eq. 13), to be *added* to the
/// task reward:
///
///   R_len(L) = 0                                   if L ≤ L_max − L_cache
///            = −f·(L − (L_max − L_cache)) / L_cache if L_max − L_cache < L ≤ L_max
///            = −f                                  if L > L_max (clip_beyond_max)
///
/// f = penalty_factor (1 in the paper). Bad input: L_max ≤ 0, L_cache ∉ (0, L_max], f < 0,
/// lengths negative or non-finite. A penalty that overflows the output type (f = 1e300 in
/// float, or beyond L_max without the clip) is rlpo::numerical_error.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> overlong_penalty(const Eigen::MatrixBase<D>& lengths,
                                                  const OverlongOptions& opts) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::overlong_penalty";
    ::rlpo::detail::check_positive(fn, "max_length", opts.max_length);
    RLPO_CHECK(opts.cache_length > 0 && opts.cache_length <= opts.max_length, fn,
               "cache_length: must be in (0, max_length = ", opts.max_length, "], given ",
               opts.cache_length);
    ::rlpo::detail::check_nonnegative(fn, "penalty_factor", opts.penalty_factor);
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    const double expected = opts.max_length - opts.cache_length;
    std::vector<double> out(L.size(), 0.0);
    for (std::size_t k = 0; k < L.size(); ++k) {
        if (L[k] <= expected) continue;
        if (L[k] > opts.max_length && opts.clip_beyond_max)
            out[k] = -opts.penalty_factor;
        else
            out[k] = -opts.penalty_factor * ((L[k] - expected) / opts.cache_length);
        if (!std::isfinite(static_cast<double>(static_cast<S>(out[k]))))
            ::rlpo::detail::fail_numerical(fn, "the penalty of response ", k, " (length ", L[k],
                                           ", penalty_factor ", opts.penalty_factor,
                                           ") overflows the output type");
    }
    return detail::to_vec<S>(out);
}

// ---------------------------------------------------------------------------------------------
// DLER truncation penalty
// ---------------------------------------------------------------------------------------------

/// DLER's truncation length penalty (Liu et al. 2025, arXiv:2510.15110): a response cut at the
/// length cap keeps `factor` times its reward, r'_i = factor·r_i, others keep r_i. DLER gives a
/// truncated response reward 0 (factor = 0, the default); a softer factor (e.g. 0.1) is an
/// option. `truncated`: one flag per response (non-zero = cut; see `truncated_by_length`).
/// Bad input: size mismatch, NaN / ±inf rewards, factor outside [0, 1].
template <class DR, class DF>
Vec<::rlpo::detail::scalar_t<DR>> truncation_penalty(const Eigen::MatrixBase<DR>& rewards,
                                                     const Eigen::MatrixBase<DF>& truncated,
                                                     double factor = 0.0) {
    using S = ::rlpo::detail::scalar_t<DR>;
    constexpr const char* fn = "rollout::truncation_penalty";
    RLPO_CHECK(factor >= 0 && factor <= 1, fn, "factor: must be in [0, 1], given ", factor);
    std::vector<double> r = detail::read_scores(fn, "rewards", rewards);
    const std::vector<double> f = detail::read_scores(fn, "truncated", truncated);
    RLPO_CHECK(f.size() == r.size(), fn, "truncated: expected ", r.size(),
               " entries (one per reward), given ", f.size());
    for (std::size_t k = 0; k < r.size(); ++k)
        if (f[k] != 0) r[k] *= factor;
    return detail::to_vec<S>(r);
}

// ---------------------------------------------------------------------------------------------
// Reward-model ensembles
// ---------------------------------------------------------------------------------------------

/// How an ensemble of K reward models scores one response.
struct EnsembleOptions {
    enum class Mode { Mean, WorstCase, UncertaintyWeighted };
    Mode mode = Mode::Mean;
    double uncertainty_coef = 0.0;           ///< λ of UWO (≥ 0)
    StdKind variance = StdKind::Population;  ///< UWO's variance flavour

    static EnsembleOptions mean() { return {}; }
    /// WCO: min_k R_k.
    static EnsembleOptions worst_case() { return {Mode::WorstCase, 0.0, StdKind::Population}; }
    /// UWO: mean_k R_k − λ·Var_k R_k; the variance flavour is a required argument because the
    /// paper's (1/K)Σ(R_k − R̄)² (population) and torch.var's default (sample, 1/(K−1)) differ.
    static EnsembleOptions uncertainty_weighted(double lambda, StdKind variance) {
        return {Mode::UncertaintyWeighted, lambda, variance};
    }
};

/// Conservative reward-model ensembles (Coste et al. 2024, "Reward Model Ensembles Help
/// Mitigate Overoptimization", arXiv:2310.02743): `rewards` is N × K (K reward models), the
/// result one reward per response: mean, WCO = min over models, or UWO = mean − λ·variance
/// across models (population Σ(R_k − R̄)²/K or sample /(K − 1), chosen explicitly; the sample
/// flavour needs K ≥ 2). Bad input: K = 0, NaN / ±inf rewards, λ < 0, sample variance with
/// K = 1.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> ensemble_reward(const Eigen::MatrixBase<D>& rewards,
                                                 const EnsembleOptions& opts) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::ensemble_reward";
    const auto& R = rewards.derived();
    const Index N = R.rows(), K = R.cols();
    RLPO_CHECK(K >= 1, fn, "rewards: expected at least one reward model (column), given 0");
    ::rlpo::detail::check_nonnegative(fn, "uncertainty_coef", opts.uncertainty_coef);
    if (opts.mode == EnsembleOptions::Mode::UncertaintyWeighted && opts.variance == StdKind::Sample)
        RLPO_CHECK(K >= 2, fn,
                   "rewards: the sample variance needs at least 2 reward models, given 1");
    Vec<S> out(N);
    for (Index i = 0; i < N; ++i) {
        double sum = 0, lo = std::numeric_limits<double>::infinity();
        for (Index k = 0; k < K; ++k) {
            const double r = static_cast<double>(R(i, k));
            RLPO_CHECK(std::isfinite(r), fn, "rewards: non-finite value ", r, " at [", i, ", ", k,
                       "]");
            sum += r;
            lo = std::min(lo, r);
        }
        const double mu = sum / static_cast<double>(K);
        double v = 0.0;
        if (opts.mode == EnsembleOptions::Mode::UncertaintyWeighted) {
            for (Index k = 0; k < K; ++k)
                v += (static_cast<double>(R(i, k)) - mu) * (static_cast<double>(R(i, k)) - mu);
            v /= static_cast<double>(opts.variance == StdKind::Sample ? K - 1 : K);
        }
        switch (opts.mode) {
            case EnsembleOptions::Mode::Mean: out(i) = static_cast<S>(mu); break;
            case EnsembleOptions::Mode::WorstCase: out(i) = static_cast<S>(lo); break;
            case EnsembleOptions::Mode::UncertaintyWeighted:
                out(i) = static_cast<S>(mu - opts.uncertainty_coef * v);
                break;
        }
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// InfAlign CTRL: calibrate and transform
// ---------------------------------------------------------------------------------------------

/// How a tie between a response's reward and a base sample's reward counts in calibration.
enum class CalibrationTies {
    LessEqual,  ///< u = #{base ≤ r}/M (the CDF of the base policy's reward, InfAlign's definition)
    Midrank     ///< u = (#{base < r} + ½·#{base = r})/M
};

/// InfAlign's reward calibration (Balashankar et al. 2025, arXiv:2412.19792, §4): the
/// calibrated reward of response i is the base (reference) policy's reward CDF at r_i, estimated
/// from M reward samples of base-policy responses to the same prompt: u_i = F̂_i(r_i) ∈ [0, 1].
/// `base_rewards` is N × M (row i: the samples for response i's prompt). Calibration makes the
/// reward invariant to monotone transformations of the reward model. Bad input: row mismatch,
/// M = 0, non-finite values.
template <class DR, class DB>
Vec<::rlpo::detail::scalar_t<DR>> ctrl_calibrate(
    const Eigen::MatrixBase<DR>& rewards, const Eigen::MatrixBase<DB>& base_rewards,
    CalibrationTies ties = CalibrationTies::LessEqual) {
    using S = ::rlpo::detail::scalar_t<DR>;
    constexpr const char* fn = "rollout::ctrl_calibrate";
    const std::vector<double> r = detail::read_scores(fn, "rewards", rewards);
    const auto& B = base_rewards.derived();
    RLPO_CHECK(B.rows() == static_cast<Index>(r.size()), fn, "base_rewards: expected ", r.size(),
               " rows (one per reward), given ", B.rows());
    RLPO_CHECK(B.cols() >= 1 || r.empty(), fn,
               "base_rewards: need at least one base sample per row");
    Vec<S> out(static_cast<Index>(r.size()));
    for (Index i = 0; i < B.rows(); ++i) {
        double below = 0, equal = 0;
        for (Index j = 0; j < B.cols(); ++j) {
            const double b = static_cast<double>(B(i, j));
            RLPO_CHECK(std::isfinite(b), fn, "base_rewards: non-finite value ", b, " at [", i, ", ",
                       j, "]");
            below += b < r[static_cast<std::size_t>(i)] ? 1 : 0;
            equal += b == r[static_cast<std::size_t>(i)] ? 1 : 0;
        }
        const double u = ties == CalibrationTies::LessEqual ? below + equal : below + 0.5 * equal;
        out(i) = static_cast<S>(u / static_cast<double>(B.cols()));
    }
    return out;
}

/// InfAlign's transformations of a calibrated reward u ∈ [0, 1]: for best-of-N decoding
/// Φ(u) = exp(t·u), for worst-of-N (jailbreaking) Φ(u) = −exp(−t·u), t > 0 (the paper tunes t
/// for each N). Bad input: t ≤ 0, u outside [0, 1].
enum class CTRLTransform { BestOfN, WorstOfN };

template <class D>
Vec<::rlpo::detail::scalar_t<D>> ctrl_transform(const Eigen::MatrixBase<D>& calibrated, double t,
                                                CTRLTransform kind = CTRLTransform::BestOfN) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::ctrl_transform";
    ::rlpo::detail::check_positive(fn, "t", t);
    const std::vector<double> u = detail::read_scores(fn, "calibrated", calibrated);
    Vec<S> out(static_cast<Index>(u.size()));
    for (std::size_t k = 0; k < u.size(); ++k) {
        RLPO_CHECK(u[k] >= 0 && u[k] <= 1, fn, "calibrated: must be in [0, 1], given ", u[k],
                   " at response ", k);
        out(static_cast<Index>(k)) = static_cast<S>(
            kind == CTRLTransform::BestOfN ? std::exp(t * u[k]) : -std::exp(-t * u[k]));
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// KL in the reward
// ---------------------------------------------------------------------------------------------

/// KL penalty in the reward (PPO-RLHF, Ouyang et al. 2022; verl `apply_kl_penalty`) is
/// `rlpo::penalties::kl_in_reward` — one implementation, re-exported here where the other reward
/// shaping rules live: token rewards r_it − β·k(old_logp − ref_logp) on unmasked tokens, the
/// per-sequence Σ_t m·k (`seq_kl`: fold β·seq_kl into the score for outcome-reward estimators
/// such as GRPO / RLOO) and verl's metrics `reward_kl_penalty`, `reward_kl_penalty_coeff`.
using ::rlpo::penalties::kl_in_reward;
using ::rlpo::penalties::KLReward;

}  // namespace rlpo::rollout
