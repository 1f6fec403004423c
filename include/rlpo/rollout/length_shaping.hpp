#pragma once
/// \file
/// Length-aware reward shaping (rollout module; values only, no gradient): rules that use the
/// responses' lengths and correctness flags within their groups. Included by
/// `rlpo/rollout/shaping.hpp`, whose file comment has the table of every shaping rule and the
/// common bad-input rules.
///
/// | rule | shaped value | function |
/// |---|---|---|
/// | Kimi length reward | λ = ½ − (L − L_min,g)/(L_max,g − L_min,g); correct: λ, wrong: min(0, λ) | `kimi_length_reward` |
/// | GRPO-λ | top-λ fraction of groups by accuracy: length-shaped reward, others 0/1 | `grpo_lambda_rewards` |
/// | GRPO-λ length reward | correct: 1 − α·σ((L − μ_correct,g)/σ_correct,g), wrong: 0 | `grpo_lambda_length_rewards`, `grpo_lambda` |
/// | DOT (authors' rule) | groups with success ≥ 1: cut L_i to ⌊μ + 3σ⌋ if it overshoots by ≥ 32; re-score | `dot_truncation`, `dot_truncate_mask` |
/// | DOT (simple) | in all-correct groups, L > μ_L + k·σ_L ⇒ score := outlier score | `dot_outlier_truncation` |
/// | STCR | wrong and longer than the correct mean: A·(1 + (1 − b^(−Δ))) | `stcr_scale_advantages` |
/// | ARLCP | correct: 1 − w_r·σ(z_refl) − (w − w_r)·σ(z_len) over the group's correct responses | `arlcp_rewards` |
/// | GRPO-CARE | + λ_b·acc for accurate responses with consistency ≥ mean_accurate − m | `care_consistency_bonus` |

#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/detail/scores.hpp>
#include <rlpo/rollout/groups.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace rlpo::rollout {
// ---------------------------------------------------------------------------------------------
// Kimi k1.5 length reward
// ---------------------------------------------------------------------------------------------

/// Kimi k1.5 length reward (Kimi Team 2025, arXiv:2501.12599, §2.3.3): within each group, with
/// L_min, L_max the shortest and longest response lengths,
///
///   λ_i = 0.5 − (L_i − L_min)/(L_max − L_min);   reward_i = λ_i if correct, min(0, λ_i) if wrong,
///
/// so short correct answers gain up to +0.5, long ones lose up to −0.5, and wrong answers are
/// only ever penalised. The paper adds it to the task reward with a weight (warmed up during
/// training); this function returns the length reward alone. A group whose lengths are all
/// equal (L_max = L_min, including singletons) gets 0.
template <class DL, class DC>
Vec<::rlpo::detail::scalar_t<DL>> kimi_length_reward(const Eigen::MatrixBase<DL>& lengths,
                                                     const Eigen::MatrixBase<DC>& correct,
                                                     const Groups& groups) {
    using S = ::rlpo::detail::scalar_t<DL>;
    constexpr const char* fn = "rollout::kimi_length_reward";
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    const std::vector<double> c = detail::read_scores(fn, "correct", correct);
    detail::check_groups(fn, "lengths", groups, L.size());
    detail::check_groups(fn, "correct", groups, c.size());
    std::vector<double> out(L.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g);
        const auto lo = *std::min_element(L.begin() + b, L.begin() + e);
        const auto hi = *std::max_element(L.begin() + b, L.begin() + e);
        if (!(hi > lo)) continue;
        for (Index k = b; k < e; ++k) {
            const auto i = static_cast<std::size_t>(k);
            const double lam = 0.5 - (L[i] - lo) / (hi - lo);
            out[i] = c[i] != 0 ? lam : std::min(0.0, lam);
        }
    }
    return detail::to_vec<S>(out);
}

// ---------------------------------------------------------------------------------------------
// GRPO-λ switching
// ---------------------------------------------------------------------------------------------

/// GRPO-λ (Dai et al. 2025, "Stable Reinforcement Learning for Efficient Reasoning",
/// arXiv:2505.18086): length penalties destabilise training on prompts the policy still gets
/// wrong, so the reward switches per group on the group's correctness ratio. The groups are
/// ranked by accuracy (fraction of `correct` responses; ties keep batch order) and the top
/// ⌈λ·G⌉ groups take the length-shaped reward `length_rewards` (GRPO-λ's own is
/// `grpo_lambda_length_rewards` below; `grpo_lambda(correct, lengths, groups, options)` composes
/// the two), all other groups the plain 0/1 correctness reward. λ = 0.2 by default (the
/// paper's setting as its public reimplementation carries it, `acc_top_lambda = 0.2`); λ must be
/// in [0, 1]. For λ > 0 and G ≥ 1, ⌈λ·G⌉ ≥ 1, so the reimplementation's "at least one group"
/// only differs at λ = 0, where rlpo shapes no group.
template <class DC, class DR>
Vec<::rlpo::detail::scalar_t<DR>> grpo_lambda_rewards(const Eigen::MatrixBase<DC>& correct,
                                                      const Eigen::MatrixBase<DR>& length_rewards,
                                                      const Groups& groups,
                                                      double top_fraction = 0.2) {
    using S = ::rlpo::detail::scalar_t<DR>;
    constexpr const char* fn = "rollout::grpo_lambda_rewards";
    RLPO_CHECK(top_fraction >= 0 && top_fraction <= 1, fn,
               "top_fraction: must be in [0, 1], given ", top_fraction);
    const std::vector<double> c = detail::read_scores(fn, "correct", correct);
    const std::vector<double> r = detail::read_scores(fn, "length_rewards", length_rewards);
    detail::check_groups(fn, "correct", groups, c.size());
    detail::check_groups(fn, "length_rewards", groups, r.size());
    const Index G = groups.num_groups();
    std::vector<double> acc(static_cast<std::size_t>(G), 0.0);
    for (Index g = 0; g < G; ++g) {
        double n = 0;
        for (Index k = groups.begin(g); k < groups.end(g); ++k)
            n += c[static_cast<std::size_t>(k)] != 0 ? 1 : 0;
        acc[static_cast<std::size_t>(g)] = n / static_cast<double>(groups.size(g));
    }
    std::vector<Index> order(static_cast<std::size_t>(G));
    std::iota(order.begin(), order.end(), Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) {
        return acc[static_cast<std::size_t>(a)] > acc[static_cast<std::size_t>(b)];
    });
    const auto top = static_cast<Index>(std::ceil(top_fraction * static_cast<double>(G) - 1e-9));
    std::vector<char> shaped(static_cast<std::size_t>(G), 0);
    for (Index k = 0; k < std::min(top, G); ++k)
        shaped[static_cast<std::size_t>(order[static_cast<std::size_t>(k)])] = 1;
    std::vector<double> out(c.size());
    for (Index g = 0; g < G; ++g)
        for (Index k = groups.begin(g); k < groups.end(g); ++k) {
            const auto i = static_cast<std::size_t>(k);
            out[i] = shaped[static_cast<std::size_t>(g)] ? r[i] : (c[i] != 0 ? 1.0 : 0.0);
        }
    return detail::to_vec<S>(out);
}

/// GRPO-λ's length reward (arXiv:2505.18086; formula and constants as its public
/// reimplementation writes them): in each group, with μ_g and σ_g the mean and population
/// standard deviation of the lengths of the group's *correct* responses,
///
///     r_i = 1 − α·σ((L_i − μ_g) / σ_g)   if response i is correct,   0 otherwise,
///
/// σ the logistic function, so a correct response of the group's mean correct length gets
/// 1 − α/2, shorter ones more, longer ones less (never below 1 − α). σ_g = 1e-4 when it is 0
/// (one correct response, or all of equal length: z = 0), the reimplementation's guard for a
/// single correct response. α = 0.6 by default: the reimplementation's `length_penalty_alpha`;
/// the paper's own value could not be confirmed. Deliberate difference: the reimplementation
/// also gives wrong responses of a shaped group 1 − α·σ(z) (and fails on a shaped group with no
/// correct response); rlpo gives them 0, the wrong-answer reward of the 0/1 scheme it replaces.
/// Bad input: α outside [0, 1], size mismatch, negative or non-finite lengths, non-finite
/// `correct`.
template <class DC, class DL>
Vec<::rlpo::detail::scalar_t<DL>> grpo_lambda_length_rewards(const Eigen::MatrixBase<DC>& correct,
                                                             const Eigen::MatrixBase<DL>& lengths,
                                                             const Groups& groups,
                                                             double alpha = 0.6) {
    using S = ::rlpo::detail::scalar_t<DL>;
    constexpr const char* fn = "rollout::grpo_lambda_length_rewards";
    RLPO_CHECK(alpha >= 0 && alpha <= 1, fn, "alpha: must be in [0, 1], given ", alpha);
    const std::vector<double> c = detail::read_scores(fn, "correct", correct);
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    detail::check_groups(fn, "correct", groups, c.size());
    detail::check_groups(fn, "lengths", groups, L.size());
    std::vector<double> out(c.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        std::vector<double> cl;
        for (Index k = groups.begin(g); k < groups.end(g); ++k)
            if (c[static_cast<std::size_t>(k)] != 0) cl.push_back(L[static_cast<std::size_t>(k)]);
        const auto n = static_cast<Index>(cl.size());
        if (n == 0) continue;
        const double mean = detail::mean(cl, 0, n);
        double sd = detail::stddev(cl, 0, n, mean, false);
        if (sd == 0) sd = 1e-4;
        for (Index k = groups.begin(g); k < groups.end(g); ++k) {
            const auto i = static_cast<std::size_t>(k);
            if (c[i] != 0) out[i] = 1.0 - alpha / (1.0 + std::exp(-(L[i] - mean) / sd));
        }
    }
    return detail::to_vec<S>(out);
}

/// GRPO-λ's options: λ (`top_fraction`) and α (`alpha`), defaults as documented above.
struct GRPOLambdaOptions {
    double top_fraction = 0.2;  ///< λ: fraction of groups (by accuracy) that get the length reward
    double alpha = 0.6;         ///< α: strength of the length reward
};

/// GRPO-λ end to end: `grpo_lambda_rewards(correct, grpo_lambda_length_rewards(correct,
/// lengths, groups, α), groups, λ)`. Returns one reward per response, before the GRPO
/// normalisation (`grpo_advantages`).
template <class DC, class DL>
Vec<::rlpo::detail::scalar_t<DL>> grpo_lambda(const Eigen::MatrixBase<DC>& correct,
                                              const Eigen::MatrixBase<DL>& lengths,
                                              const Groups& groups,
                                              const GRPOLambdaOptions& options = {}) {
    const Vec<::rlpo::detail::scalar_t<DL>> shaped =
        grpo_lambda_length_rewards(correct, lengths, groups, options.alpha);
    return grpo_lambda_rewards(correct, shaped, groups, options.top_fraction);
}

// ---------------------------------------------------------------------------------------------
// DOT: dynamic outlier truncation
// ---------------------------------------------------------------------------------------------

struct DOTOptions {
    double k_sigma = 3.0;  ///< outlier if L > μ_L + k·σ_L (three-sigma rule)
    StdKind std_kind = StdKind::Population;
    double outlier_score = 0.0;  ///< the score an outlier gets (the wrong-answer reward)
};

/// DOT, dynamic outlier truncation (Wu et al. 2026, "Anti-Length Shift", arXiv:2601.03969):
/// only in groups where every response is correct (`correct` all non-zero, ≥ 2 responses), a
/// response whose length exceeds μ_L + k·σ_L of its group becomes a negative: its score is
/// replaced by `outlier_score`. Other groups and responses keep their scores, so long
/// reasoning on hard prompts (groups with a wrong answer) is never penalised.
/// [verify] The paper's abstract fixes the scope (the extreme length tail of fully correct
/// groups); the three-sigma threshold over the group's lengths comes from secondary summaries
/// of the method, and the auxiliary KL term and predictive dynamic sampling of the paper are
/// not part of this rule. Bad input: k_sigma < 0, size mismatch, non-finite values.
template <class DS, class DL, class DC>
Vec<::rlpo::detail::scalar_t<DS>> dot_outlier_truncation(const Eigen::MatrixBase<DS>& scores,
                                                         const Eigen::MatrixBase<DL>& lengths,
                                                         const Eigen::MatrixBase<DC>& correct,
                                                         const Groups& groups,
                                                         const DOTOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    constexpr const char* fn = "rollout::dot_outlier_truncation";
    ::rlpo::detail::check_nonnegative(fn, "k_sigma", opts.k_sigma);
    ::rlpo::detail::check_finite_param(fn, "outlier_score", opts.outlier_score);
    std::vector<double> s = detail::read_scores(fn, "scores", scores);
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    const std::vector<double> c = detail::read_scores(fn, "correct", correct);
    detail::check_groups(fn, "scores", groups, s.size());
    detail::check_groups(fn, "lengths", groups, L.size());
    detail::check_groups(fn, "correct", groups, c.size());
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g);
        if (e - b < 2) continue;
        bool all_correct = true;
        for (Index k = b; k < e; ++k) all_correct &= c[static_cast<std::size_t>(k)] != 0;
        if (!all_correct) continue;
        const double mu = detail::mean(L, b, e);
        const double sd = detail::stddev(L, b, e, mu, opts.std_kind == StdKind::Sample);
        for (Index k = b; k < e; ++k)
            if (L[static_cast<std::size_t>(k)] > mu + opts.k_sigma * sd)
                s[static_cast<std::size_t>(k)] = opts.outlier_score;
    }
    return detail::to_vec<S>(s);
}

/// Options of `dot_truncation` (defaults: the DOT authors' `apply_length_truncation`).
struct DOTTruncationOptions {
    double success_threshold = 1.0;  ///< apply to groups whose fraction correct is ≥ this
    double std_multiplier = 3.0;     ///< α in T(q) = ⌊mean(L) + α·std(L)⌋ (sample std)
    /// m: cut only when L_i − T(q) ≥ m; m ≥ 1 is a token count (truncated to an integer), 0 < m
    /// < 1 a fraction of the response: m_eff = max(⌊L_i·m⌋, 16).
    double min_truncation_margin = 32.0;
};

/// Result of `dot_truncation`.
template <class S>
struct DOTTruncation {
    Vec<S> lengths;    ///< the kept length of each response (its own length when not cut)
    Vec<S> truncated;  ///< 1 where the response was cut, else 0
    Metrics metrics;   ///< `truncation/num_truncated`, `truncation/total_tokens_truncated`
};

/// DOT, the authors' rule (U-rara/DOT, `projects/dot/length_truncation.py`,
/// `apply_length_truncation`): in each group whose fraction of correct responses is at least
/// `success_threshold` (1: all correct) and that has a correct response, with μ and σ the mean
/// and *sample* standard deviation of all the group's lengths (σ = 0 for a single response),
/// T(q) = ⌊μ + α·σ⌋; a response with L_i > T(q) and L_i − T(q) ≥ m_eff is cut to T(q) tokens.
/// The caller then drops the tail from the loss (`dot_truncate_mask`) and re-scores the cut
/// responses with its own reward function (the authors recompute the task reward; a cut answer
/// usually scores 0, but it is re-evaluated, not set). The simpler rule that only zeroes the
/// score of L > μ + 3σ (population σ, no margin, no cut) is `dot_outlier_truncation` above.
/// Bad input: success_threshold outside [0, 1], α < 0, m < 0, size mismatch, negative or
/// non-finite lengths, non-finite `correct`.
template <class DL, class DC>
DOTTruncation<::rlpo::detail::scalar_t<DL>> dot_truncation(const Eigen::MatrixBase<DL>& lengths,
                                                           const Eigen::MatrixBase<DC>& correct,
                                                           const Groups& groups,
                                                           const DOTTruncationOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DL>;
    constexpr const char* fn = "rollout::dot_truncation";
    RLPO_CHECK(opts.success_threshold >= 0 && opts.success_threshold <= 1, fn,
               "success_threshold: must be in [0, 1], given ", opts.success_threshold);
    ::rlpo::detail::check_nonnegative(fn, "std_multiplier", opts.std_multiplier);
    ::rlpo::detail::check_nonnegative(fn, "min_truncation_margin", opts.min_truncation_margin);
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    const std::vector<double> c = detail::read_scores(fn, "correct", correct);
    detail::check_groups(fn, "lengths", groups, L.size());
    detail::check_groups(fn, "correct", groups, c.size());
    std::vector<double> kept = L, cut(L.size(), 0.0);
    double num = 0, tokens = 0;
    const double m = opts.min_truncation_margin;
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g);
        double n_ok = 0;
        for (Index k = b; k < e; ++k) n_ok += c[static_cast<std::size_t>(k)] != 0 ? 1 : 0;
        if (n_ok == 0 || n_ok / static_cast<double>(e - b) < opts.success_threshold) continue;
        const double mu = detail::mean(L, b, e);
        const double sd = e - b > 1 ? detail::stddev(L, b, e, mu, true) : 0.0;
        const double T = std::trunc(mu + opts.std_multiplier * sd);
        for (Index k = b; k < e; ++k) {
            const auto i = static_cast<std::size_t>(k);
            if (!(T < L[i])) continue;
            const double eff =
                m > 0 && m < 1 ? std::max(std::trunc(L[i] * m), 16.0) : std::trunc(m);
            if (L[i] - T < eff) continue;
            tokens += L[i] - T;
            num += 1;
            kept[i] = T;
            cut[i] = 1;
        }
    }
    DOTTruncation<S> res{detail::to_vec<S>(kept), detail::to_vec<S>(cut), {}};
    res.metrics.set("truncation/num_truncated", num);
    res.metrics.set("truncation/total_tokens_truncated", tokens);
    return res;
}

/// Drops the cut tails from a `[B, T]` response mask: entries of row i at columns ≥ lengths(i)
/// become 0 (as the DOT authors cut `response_mask[i, T(q):]`, responses left-aligned). Bad
/// input: lengths not one per row, negative or non-finite.
template <class DM, class DL>
void dot_truncate_mask(Eigen::MatrixBase<DM>& mask, const Eigen::MatrixBase<DL>& lengths) {
    constexpr const char* fn = "rollout::dot_truncate_mask";
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    RLPO_CHECK(static_cast<Index>(L.size()) == mask.rows(), fn, "lengths: expected ", mask.rows(),
               " entries (one per mask row), given ", L.size());
    for (Index i = 0; i < mask.rows(); ++i) {
        const double keep = std::ceil(L[static_cast<std::size_t>(i)]);
        for (Index t = 0; t < mask.cols(); ++t)
            if (static_cast<double>(t) >= keep) mask(i, t) = 0;
    }
}

// ---------------------------------------------------------------------------------------------
// STCR advantage scaling
// ---------------------------------------------------------------------------------------------

/// STCR length-aware scaling of wrong answers' advantages, from APO (arXiv 2506.21655; the
/// same paper as `dads_weights`), authors' code Indolent-Kawhi/View-R1,
/// `openrlhf/trainer/ppo_utils/experience_maker.py` (the `group_norm` advantage branch): in a
/// group with at least one correct response, a wrong response longer than the mean correct
/// length by Δ = L_i − mean_{j correct} L_j > 0 gets A_i·(1 + w),
/// w = 1 − b^(−Δ), b = 1.00001 — its (negative) advantage grows towards 2× with the excess
/// length. Other responses, and every response of a group with no correct one, keep A_i.
/// Bad input: base ≤ 1, size mismatch, non-finite values.
template <class DA, class DL, class DC>
Vec<::rlpo::detail::scalar_t<DA>> stcr_scale_advantages(const Eigen::MatrixBase<DA>& advantages,
                                                        const Eigen::MatrixBase<DL>& lengths,
                                                        const Eigen::MatrixBase<DC>& correct,
                                                        const Groups& groups,
                                                        double base = 1.00001) {
    using S = ::rlpo::detail::scalar_t<DA>;
    constexpr const char* fn = "rollout::stcr_scale_advantages";
    RLPO_CHECK(std::isfinite(base) && base > 1, fn, "base: must be > 1, given ", base);
    std::vector<double> a = detail::read_scores(fn, "advantages", advantages);
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    const std::vector<double> c = detail::read_scores(fn, "correct", correct);
    detail::check_groups(fn, "advantages", groups, a.size());
    detail::check_groups(fn, "lengths", groups, L.size());
    detail::check_groups(fn, "correct", groups, c.size());
    for (Index g = 0; g < groups.num_groups(); ++g) {
        double sum = 0, n = 0;
        for (Index k = groups.begin(g); k < groups.end(g); ++k)
            if (c[static_cast<std::size_t>(k)] != 0) sum += L[static_cast<std::size_t>(k)], n += 1;
        if (n == 0) continue;
        const double mean_correct = sum / n;
        for (Index k = groups.begin(g); k < groups.end(g); ++k) {
            const auto i = static_cast<std::size_t>(k);
            const double delta = L[i] - mean_correct;
            if (c[i] == 0 && delta > 0) a[i] *= 1.0 + (1.0 - std::pow(base, -delta));
        }
    }
    return detail::to_vec<S>(a);
}

// ---------------------------------------------------------------------------------------------
// ARLCP: adaptive reflection and length coordinated penalty
// ---------------------------------------------------------------------------------------------

/// Options of `arlcp_rewards`; defaults are the paper's released reward function.
struct ARLCPOptions {
    /// Reflection-count tiers: c ≤ t0 → w_r = w0, t0 < c ≤ t1 → w1, c > t1 → w2.
    double tier_low = 40, tier_high = 80;
    double weight_low = 0.05, weight_mid = 0.10, weight_high = 0.15;
    /// w: total penalty weight; the length weight is w − w_r.
    double total_weight = 0.2;
    /// ε added to the stds.
    double epsilon = 1e-6;
};

/// ARLCP (Yu et al. 2026, "Stop Unnecessary Reflection", arXiv:2602.12113), as its released
/// reward function computes it. Per group, over the *correct* responses only, take the mean and
/// sample std of the reflection counts c (μ_c, σ_c) and of the lengths L (μ_L, σ_L) — with one
/// correct response σ := 1, with none μ := 0, σ := 1. A correct response gets
///
///   1 − w_r·sigmoid((c − μ_c)/(σ_c + ε)) − (w − w_r)·sigmoid((L − μ_L)/(σ_L + ε)),
///
/// with the reflection weight w_r chosen by the response's own reflection count (complexity
/// proxy: 0.05 up to 40 reflections, 0.10 up to 80, 0.15 above), w = 0.2; a wrong response gets
/// 0. Reflection counts are an input (the paper counts keywords such as "wait", "hmm").
/// Bad input: size mismatches, negative / non-finite counts or lengths, weights outside
/// [0, total_weight], tier_low > tier_high, ε < 0.
template <class DC, class DR, class DL>
Vec<::rlpo::detail::scalar_t<DL>> arlcp_rewards(const Eigen::MatrixBase<DC>& correct,
                                                const Eigen::MatrixBase<DR>& reflection_counts,
                                                const Eigen::MatrixBase<DL>& lengths,
                                                const Groups& groups,
                                                const ARLCPOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DL>;
    constexpr const char* fn = "rollout::arlcp_rewards";
    ::rlpo::detail::check_nonnegative(fn, "total_weight", opts.total_weight);
    for (double w : {opts.weight_low, opts.weight_mid, opts.weight_high})
        RLPO_CHECK(w >= 0 && w <= opts.total_weight, fn,
                   "weights: each reflection weight must be in [0, total_weight = ",
                   opts.total_weight, "], given ", w);
    RLPO_CHECK(opts.tier_low <= opts.tier_high, fn, "tier_low: must be <= tier_high, given ",
               opts.tier_low, " > ", opts.tier_high);
    ::rlpo::detail::check_nonnegative(fn, "epsilon", opts.epsilon);
    const std::vector<double> c = detail::read_scores(fn, "correct", correct);
    const std::vector<double> rc =
        detail::read_nonnegative(fn, "reflection_counts", reflection_counts);
    const std::vector<double> L = detail::read_nonnegative(fn, "lengths", lengths);
    detail::check_groups(fn, "correct", groups, c.size());
    detail::check_groups(fn, "reflection_counts", groups, rc.size());
    detail::check_groups(fn, "lengths", groups, L.size());
    const auto sigmoid = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
    std::vector<double> out(c.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        std::vector<double> cc, cl;
        for (Index k = groups.begin(g); k < groups.end(g); ++k)
            if (c[static_cast<std::size_t>(k)] != 0)
                cc.push_back(rc[static_cast<std::size_t>(k)]),
                    cl.push_back(L[static_cast<std::size_t>(k)]);
        const Index n = static_cast<Index>(cc.size());
        if (n == 0) continue;
        const double mc = detail::mean(cc, 0, n), ml = detail::mean(cl, 0, n);
        const double sc = n > 1 ? detail::stddev(cc, 0, n, mc, true) : 1.0;
        const double sl = n > 1 ? detail::stddev(cl, 0, n, ml, true) : 1.0;
        for (Index k = groups.begin(g); k < groups.end(g); ++k) {
            const auto i = static_cast<std::size_t>(k);
            if (c[i] == 0) continue;
            const double wr = rc[i] <= opts.tier_low    ? opts.weight_low
                              : rc[i] <= opts.tier_high ? opts.weight_mid
                                                        : opts.weight_high;
            out[i] = 1.0 - wr * sigmoid((rc[i] - mc) / (sc + opts.epsilon)) -
                     (opts.total_weight - wr) * sigmoid((L[i] - ml) / (sl + opts.epsilon));
        }
    }
    return detail::to_vec<S>(out);
}

// ---------------------------------------------------------------------------------------------
// GRPO-CARE consistency bonus
// ---------------------------------------------------------------------------------------------

/// Options of `care_consistency_bonus` (defaults: the paper's λ_b = 0.5 and margin 0.01).
struct CAREOptions {
    double bonus_coef = 0.5;          ///< λ_b
    double margin = 0.01;             ///< m (0: at least the mean)
    double accuracy_threshold = 0.1;  ///< accurate ⇔ acc > threshold and acc ≥ the group's mean acc
    /// Upper bound applied to the consistency before the comparison (+inf: none).
    double consistency_cap = std::numeric_limits<double>::infinity();
};

/// GRPO-CARE consistency bonus (Chen et al. 2025, arXiv:2506.16141), as the released trainer
/// computes it within a group: a response is *accurate* when its accuracy reward acc_i exceeds
/// the threshold (0.1) and is at least the group's mean accuracy; its consistency p_i is the
/// slowly-updated (EMA) reference model's likelihood of the answer given the reasoning —
/// exp of the mean reference log-prob over the answer tokens, an input here (optionally capped).
/// With μ_p the mean consistency of the group's accurate responses, an accurate response with
/// p_i ≥ μ_p − m gets the bonus λ_b·acc_i; all others 0. The result is to be *added* to the
/// reward (the method replaces the KL penalty by this bonus). Bad input: size mismatches,
/// non-finite values, λ_b < 0, m < 0, consistency_cap ≤ 0.
template <class DA, class DP>
Vec<::rlpo::detail::scalar_t<DA>> care_consistency_bonus(const Eigen::MatrixBase<DA>& accuracy,
                                                         const Eigen::MatrixBase<DP>& consistency,
                                                         const Groups& groups,
                                                         const CAREOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DA>;
    constexpr const char* fn = "rollout::care_consistency_bonus";
    ::rlpo::detail::check_nonnegative(fn, "bonus_coef", opts.bonus_coef);
    ::rlpo::detail::check_nonnegative(fn, "margin", opts.margin);
    ::rlpo::detail::check_finite_param(fn, "accuracy_threshold", opts.accuracy_threshold);
    RLPO_CHECK(opts.consistency_cap > 0, fn, "consistency_cap: must be > 0, given ",
               opts.consistency_cap);
    const std::vector<double> acc = detail::read_scores(fn, "accuracy", accuracy);
    std::vector<double> p = detail::read_scores(fn, "consistency", consistency);
    detail::check_groups(fn, "accuracy", groups, acc.size());
    detail::check_groups(fn, "consistency", groups, p.size());
    for (auto& x : p) x = std::min(x, opts.consistency_cap);
    std::vector<double> out(acc.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g);
        const double mean_acc = detail::mean(acc, b, e);
        double psum = 0, n = 0;
        std::vector<char> accurate(static_cast<std::size_t>(e - b), 0);
        for (Index k = b; k < e; ++k) {
            const auto i = static_cast<std::size_t>(k);
            if (acc[i] > opts.accuracy_threshold && acc[i] >= mean_acc) {
                accurate[static_cast<std::size_t>(k - b)] = 1;
                psum += p[i];
                n += 1;
            }
        }
        if (n == 0) continue;
        const double mu = psum / n;
        for (Index k = b; k < e; ++k) {
            const auto i = static_cast<std::size_t>(k);
            if (accurate[static_cast<std::size_t>(k - b)] && p[i] >= mu - opts.margin)
                out[i] = opts.bonus_coef * acc[i];
        }
    }
    return detail::to_vec<S>(out);
}

}  // namespace rlpo::rollout
