#pragma once
/// \file
/// Group-relative advantage estimators over per-response scores (outcome rewards). The helpers
/// that move between per-response and per-token (`[B, T]`) quantities are in
/// rollout/tokens.hpp (included here).
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
/// | pass@k (analytic, binary) | correct: (1 − R̄)/σ; wrong: (1 − R̄ − C(n_neg−1, k−1)/C(n−1, k−1))/σ | `passk_advantages` |
/// | GDPO | whiten_B(Σ_k w_k·GRPO_g(r_k)) over K reward components | `gdpo_advantages` |
/// | DLER | (s_i − μ_g)/(σ_B + ε): GRPO with batch std (`GRPOOptions::dler()`) | `grpo_advantages` |
///
/// Degenerate groups (documented, never NaN or a blow-up): a group whose scores are all
/// bitwise equal gets advantage exactly 0 in every estimator; a singleton group gets 0 by
/// default (no baseline can be formed from one sample), or its raw score under the verl presets
/// (`SingletonGroups::RawScore`: verl takes mean 0 and std 1 for a group of one; the std 1
/// stays the singleton's under `AdvantageScale::Batch` too, so all-equal singletons give
/// s/(1 + ε), never s/ε).
///
/// **Range**: any finite scores (and lengths). Means fall back to Σ x/n and stds to a scaled
/// sum of squares (divided by the largest deviation) when the plain sums overflow or underflow,
/// and s − μ is formed at half scale when it would overflow, so GRPO's (s − μ)/σ is scale
/// invariant up to rounding (scores × 1e200 give the advantages of the unscaled scores). Where
/// the true result exceeds the double (or the storage) range — RLOO's n/(n−1)·(s − μ) or OPO's
/// s − b beyond ~1.8e308, a std beyond it — → rlpo::numerical_error.
///
/// **Bad input** (rlpo::invalid_argument): scores not a vector, scores/groups size mismatch,
/// NaN score (unless `NanScores::AsZero`), ±inf score, ε < 0, σ_floor < 0, lengths < 0.

#include <rlpo/core/error.hpp>
#include <rlpo/core/names.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/dist/reductions.hpp>
#include <rlpo/rollout/detail/scores.hpp>
#include <rlpo/rollout/groups.hpp>
#include <rlpo/rollout/tokens.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace rlpo::rollout {

/// Sample (unbiased, n − 1; torch.std's default, used by verl, TRL, OpenRLHF) or population (n)
/// standard deviation.
enum class StdKind { Sample, Population };

/// What divides the centred score in GRPO.
enum class AdvantageScale {
    Group,  ///< σ_g, the std of the response's group (GRPO)
    Batch,  ///< σ_B, the std of all scores of the batch (TRL `scale_rewards="batch"`)
    None  ///< no division (Dr.GRPO; TRL `scale_rewards="none"`, verl `norm_adv_by_std_in_grpo=False`)
};

/// Advantage of a group with one response.
enum class SingletonGroups {
    Zero,     ///< 0 (rlpo default): no baseline can be formed from one sample
    RawScore  ///< verl: mean taken as 0 and std as 1, so the score itself (÷(1 + ε) under Group)
};

namespace detail {
/// The mean of all scores of the batch over the ranks of `red` (rank r holds its block of
/// responses): Σ s / N from two summed values, and Σ (s/N) where Σ s overflows (as `mean`).
inline double batch_mean(const std::vector<double>& s, const dist::Reductions& red) {
    const Index n = static_cast<Index>(s.size());
    if (red.local()) return mean(s, 0, n);
    double a[2] = {0.0, static_cast<double>(n)};
    for (double x : s) a[0] += x;
    red.sum(a, 2);
    if (!(a[1] > 0)) return 0.0;
    if (std::isfinite(a[0])) return a[0] / a[1];
    double q = 0.0;  // rare path: the sum overflowed
    for (double x : s) q += x / a[1];
    return red.sum(q);
}

/// The std of all scores of the batch around `mu` over the ranks of `red`, as D·r
/// (`stddev_scaled` of the whole batch): one sum of three values; the rare path (a sum of
/// squares that overflows or underflows) adds a max of two values and a sum.
inline ScaledStd batch_stddev(const std::vector<double>& s, double mu, bool sample,
                              const dist::Reductions& red) {
    const Index n_local = static_cast<Index>(s.size());
    if (red.local()) return stddev_scaled(s, 0, n_local, mu, sample);
    double a[3] = {0.0, 0.0, static_cast<double>(n_local)};  // Σ d², any d ≠ 0, N
    for (double x : s) {
        const double d = x - mu;
        a[0] += d * d;
        a[1] = (a[1] > 0 || d != 0) ? 1.0 : 0.0;
    }
    red.sum(a, 3);
    const double n = a[2] - (sample ? 1.0 : 0.0);
    if (!(n > 0) || !(a[1] > 0)) return {};
    if (std::isfinite(a[0]) && a[0] >= 1e-280) return {1.0, std::sqrt(a[0] / n)};
    double hd[2] = {0.0, 0.0};  // half scale needed anywhere, largest |deviation|
    for (double x : s) hd[0] = std::max(hd[0], centred(x, mu).scale != 1.0 ? 1.0 : 0.0);
    red.max(hd, 1);
    const bool half = hd[0] > 0;
    const auto dev = [&](double x) { return half ? x / 2 - mu / 2 : x - mu; };
    for (double x : s) hd[1] = std::max(hd[1], std::abs(dev(x)));
    const double D = red.max(hd[1]);
    double q = 0.0;
    for (double x : s) {
        const double d = dev(x) / D;
        q += d * d;
    }
    q = red.sum(q);
    return {half ? 2.0 * D : D, std::sqrt(q / n)};
}

/// The group loop of the baseline estimators: a singleton group gets its raw score
/// (`SingletonGroups::RawScore`) or 0, a group whose scores are bitwise equal gets exactly 0,
/// and `body(b, e)` fills a[b, e) for every other group. Returns a, zero-initialised.
template <class F>
std::vector<double> per_varied_group(const Groups& groups, const std::vector<double>& s,
                                     SingletonGroups singleton, F&& body) {
    std::vector<double> a(s.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g);
        if (e - b == 1) {
            if (singleton == SingletonGroups::RawScore)
                a[static_cast<std::size_t>(b)] = s[static_cast<std::size_t>(b)];
            continue;
        }
        if (all_equal(s, b, e)) continue;
        body(b, e, a);
    }
    return a;
}
}  // namespace detail

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
    /// DLER (Liu et al. 2025, arXiv:2510.15110) "batch-wise reward normalisation": centre by
    /// the group mean, divide by the std of the whole batch's rewards — against the large
    /// group-std variance that a truncation penalty causes.
    static GRPOOptions dler() {
        GRPOOptions o;
        o.scale = AdvantageScale::Batch;
        return o;
    }
};

/// GRPO group-normalised advantages, one per response (see the file comment for the formula,
/// presets and degenerate groups). Under `AdvantageScale::Batch`, σ_B is the std (same
/// flavour) of all N scores around their batch mean, as TRL computes it; the centring stays
/// per group. When the denominator is 0 (ε = 0 and σ = 0), the advantage is 0.
///
/// **Data-parallel** (`red`, dist/reductions.hpp): with the batch sharded over ranks, σ_B is
/// the std over all ranks' scores (three summed values; the group statistics stay local). Each
/// rank must hold whole groups, which `Groups` cannot show: `dist::grpo_advantages` takes
/// global group ids and rejects a group split across ranks — prefer it.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> grpo_advantages(const Eigen::MatrixBase<D>& scores,
                                                 const Groups& groups, const GRPOOptions& opts = {},
                                                 const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<D>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: scores must be float or double");
    constexpr const char* fn = "rollout::grpo_advantages";
    ::rlpo::detail::check_nonnegative(fn, "epsilon", opts.epsilon);
    ::rlpo::detail::check_nonnegative(fn, "std_floor", opts.std_floor);
    const std::vector<double> s = detail::read_scores(fn, "scores", scores, opts.nan_scores);
    detail::check_groups(fn, "scores", groups, s.size());
    const bool sample = opts.std_kind == StdKind::Sample;
    detail::ScaledStd batch_std;
    if (opts.scale == AdvantageScale::Batch)
        batch_std = detail::batch_stddev(s, detail::batch_mean(s, red), sample, red);
    std::vector<double> a(s.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g), n = e - b;
        double mu = 0.0;
        detail::ScaledStd sigma{1.0, 1.0};  // singleton RawScore: verl's mean 0, std 1
        if (n == 1) {
            if (opts.singleton == SingletonGroups::Zero) continue;
        } else {
            if (detail::all_equal(s, b, e)) continue;  // exactly 0, never noise / ε
            mu = detail::mean(s, b, e);
            sigma = detail::stddev_scaled(s, b, e, mu, sample);
        }
        // verl's singleton rule takes the group's std as 1 whatever the scale: under Batch the
        // batch std is not the singleton's (all-equal singletons would give s/ε otherwise)
        if (opts.scale == AdvantageScale::Batch && n > 1) sigma = batch_std;
        if (opts.scale == AdvantageScale::None) {
            for (Index k = b; k < e; ++k) {
                const auto i = static_cast<std::size_t>(k);
                const detail::Centred c = detail::centred(s[i], mu);
                a[i] = c.d * c.scale;  // overflows only where s − μ does (reported below)
            }
            continue;
        }
        const double sd = sigma.value();
        const double denom = std::max(sd, opts.std_floor) + opts.epsilon;
        if (!(denom > 0)) continue;
        for (Index k = b; k < e; ++k) {
            const auto i = static_cast<std::size_t>(k);
            if (std::isfinite(denom)) {
                a[i] = detail::centred_ratio(s[i], mu, denom);
            } else {  // σ beyond the double range (ε, σ_floor negligible): (s − μ)/D / r
                const detail::Centred c = detail::centred(s[i], mu);
                a[i] = c.d / (sigma.D / c.scale) / sigma.r;
            }
        }
    }
    return detail::to_vec_checked<S>(fn, a);
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
    const auto a = detail::per_varied_group(
        groups, s, opts.singleton, [&](Index b, Index e, std::vector<double>& a) {
            double sum = 0.0;
            for (Index k = b; k < e; ++k) sum += s[static_cast<std::size_t>(k)];
            if (!std::isfinite(sum)) {  // rare path: n/(n − 1)·(s_i − μ_g) with a finite mean
                const double mu = detail::mean(s, b, e), n = static_cast<double>(e - b);
                for (Index k = b; k < e; ++k) {
                    const auto i = static_cast<std::size_t>(k);
                    const detail::Centred c = detail::centred(s[i], mu);
                    a[i] = n / (n - 1) * c.d * c.scale;
                }
                return;
            }
            for (Index k = b; k < e; ++k) {
                const auto i = static_cast<std::size_t>(k);
                a[i] = s[i] - (sum - s[i]) / static_cast<double>(e - b - 1);
            }
        });
    return detail::to_vec_checked<S>(fn, a);
}

/// Options of `opo_advantages`.
struct OPOOptions {
    SingletonGroups singleton = SingletonGroups::Zero;  ///< verl: RawScore
    NanScores nan_scores = NanScores::Throw;
    static OPOOptions verl() {
        OPOOptions o;
        o.singleton = SingletonGroups::RawScore;
        return o;
    }
};

/// OPO, on-policy RL with the optimal reward baseline (Hao et al. 2025, arXiv:2505.23585):
/// A_i = s_i − b_g with the length-weighted baseline b_g = Σ_{j∈g} l_j s_j / Σ_{j∈g} l_j
/// (the variance-minimising baseline when the gradient norm grows with the length), as verl's
/// `compute_opo_outcome_advantage`. `lengths` are the response lengths (≥ 0). A group whose
/// lengths are all 0 uses the plain mean. Singleton groups: 0, or the raw score under `verl()`.
template <class DS, class DL>
Vec<::rlpo::detail::scalar_t<DS>> opo_advantages(const Eigen::MatrixBase<DS>& scores,
                                                 const Eigen::MatrixBase<DL>& lengths,
                                                 const Groups& groups,
                                                 const OPOOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DS>;
    constexpr const char* fn = "rollout::opo_advantages";
    const std::vector<double> s = detail::read_scores(fn, "scores", scores, opts.nan_scores);
    const std::vector<double> l = detail::read_nonnegative(fn, "lengths", lengths);
    detail::check_groups(fn, "scores", groups, s.size());
    detail::check_groups(fn, "lengths", groups, l.size());
    const auto a = detail::per_varied_group(
        groups, s, opts.singleton, [&](Index b, Index e, std::vector<double>& a) {
            double num = 0.0, den = 0.0;
            for (Index k = b; k < e; ++k) {
                num += l[static_cast<std::size_t>(k)] * s[static_cast<std::size_t>(k)];
                den += l[static_cast<std::size_t>(k)];
            }
            double base = den > 0 ? num / den : detail::mean(s, b, e);
            if (!std::isfinite(num) || !std::isfinite(den)) {
                // rare path: Σ l·s or Σ l overflowed; weights l/Σl ≤ 1 from l / max l
                double L = 0.0;
                for (Index k = b; k < e; ++k) L = std::max(L, l[static_cast<std::size_t>(k)]);
                double d2 = 0.0;
                for (Index k = b; k < e; ++k) d2 += l[static_cast<std::size_t>(k)] / L;
                base = 0.0;
                for (Index k = b; k < e; ++k)
                    base +=
                        l[static_cast<std::size_t>(k)] / L / d2 * s[static_cast<std::size_t>(k)];
            }
            for (Index k = b; k < e; ++k) {
                const auto i = static_cast<std::size_t>(k);
                const detail::Centred c = detail::centred(s[i], base);
                a[i] = c.d * c.scale;
            }
        });
    return detail::to_vec_checked<S>(fn, a);
}

/// Options of `grpo_passk_advantages`.
struct GRPOPassKOptions {
    bool norm_by_std = true;  ///< divide by σ_g + ε (verl `norm_adv_by_std_in_grpo`)
    double epsilon = 1e-6;
    StdKind std_kind = StdKind::Sample;
};

/// verl's GRPO pass@k advantage (`compute_grpo_passk_outcome_advantage`): only the best response
/// of each group gets a non-zero advantage, s_max − s_2nd (divided by σ_g + ε when
/// `norm_by_std`); ties for the maximum give 0 (s_max − s_2nd = 0), and the first of the tied
/// responses is taken as "the best". Every group needs at least 2 responses (as in verl);
/// all-equal groups give 0. The ratio is formed without rounding σ_g first (scores in the
/// denormal range stay finite); s_max − s_2nd beyond the storage type (without
/// `norm_by_std`) → rlpo::numerical_error.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> grpo_passk_advantages(const Eigen::MatrixBase<D>& scores,
                                                       const Groups& groups,
                                                       const GRPOPassKOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::grpo_passk_advantages";
    ::rlpo::detail::check_nonnegative(fn, "epsilon", opts.epsilon);
    const std::vector<double> s = detail::read_scores(fn, "scores", scores);
    detail::check_groups(fn, "scores", groups, s.size());
    std::vector<double> a(s.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g);
        RLPO_CHECK(e - b >= 2, fn, "groups: group ", g, " has ", e - b,
                   " response(s); pass@k needs at least 2 per group");
        if (detail::all_equal(s, b, e)) continue;
        Index best = b;
        for (Index k = b + 1; k < e; ++k)
            if (s[static_cast<std::size_t>(k)] > s[static_cast<std::size_t>(best)]) best = k;
        double second = -std::numeric_limits<double>::infinity();
        for (Index k = b; k < e; ++k)
            if (k != best) second = std::max(second, s[static_cast<std::size_t>(k)]);
        // s_max − s_2nd, at half scale where it overflows; divided by σ_g + ε without
        // rounding σ_g first (a std in the denormal range would give ±inf)
        const detail::Centred d = detail::centred(s[static_cast<std::size_t>(best)], second);
        double adv = d.d * d.scale;  // overflows only where s_max − s_2nd does (reported)
        if (opts.norm_by_std) {
            const double mu = detail::mean(s, b, e);
            adv = detail::ratio_to_std(
                d, detail::stddev_scaled(s, b, e, mu, opts.std_kind == StdKind::Sample),
                opts.epsilon);
        }
        a[static_cast<std::size_t>(best)] = adv;
    }
    return detail::to_vec_checked<S>(fn, a);
}

namespace detail {
/// C(n−a, k)/C(n, k) = Π_{j=0}^{k−1} (n − a − j)/(n − j): the probability that k draws without
/// replacement from n items avoid a marked ones (0 when a > n − k).
inline double avoid_prob(Index n, Index a, Index k) {
    double p = 1.0;
    for (Index j = 0; j < k; ++j) {
        if (n - a - j <= 0) return 0.0;
        p *= static_cast<double>(n - a - j) / static_cast<double>(n - j);
    }
    return p;
}
}  // namespace detail

/// Analytic pass@k advantages for binary rewards (Chen et al. 2025, "Pass@k Training for
/// Adaptively Balancing Exploration and Exploitation", arXiv:2508.10751). With n responses in
/// the group of which n_neg are wrong, the group's pass@k reward (a k-subset scores 1 iff it
/// contains a correct response) has mean R̄ = 1 − C(n_neg, k)/C(n, k) and std σ = sqrt(R̄(1 − R̄));
/// each response's advantage is the mean over the k-subsets containing it:
///
///   correct: A_pos = (1 − R̄)/σ,   wrong: A_neg = (1 − R̄ − C(n_neg − 1, k − 1)/C(n − 1, k − 1))/σ.
///
/// Scores must be 0/1 (> 0.5 counts as correct is *not* assumed: any other value is an error);
/// all-correct or all-wrong groups (σ = 0) give 0; k must satisfy 1 ≤ k ≤ n for every group.
/// k = 1 reduces to GRPO with population std and ε = 0 (tested).
template <class D>
Vec<::rlpo::detail::scalar_t<D>> passk_advantages(const Eigen::MatrixBase<D>& scores,
                                                  const Groups& groups, Index k) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::passk_advantages";
    const std::vector<double> s = detail::read_scores(fn, "scores", scores);
    detail::check_groups(fn, "scores", groups, s.size());
    RLPO_CHECK(k >= 1, fn, "k: must be >= 1, given ", k);
    for (std::size_t i = 0; i < s.size(); ++i)
        RLPO_CHECK(s[i] == 0.0 || s[i] == 1.0, fn,
                   "scores: must be 0 or 1 (binary rewards), given ", s[i], " at response ", i);
    std::vector<double> a(s.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g), n = e - b;
        RLPO_CHECK(k <= n, fn, "k: ", k, " exceeds the size ", n, " of group ", g);
        Index neg = 0;
        for (Index j = b; j < e; ++j) neg += s[static_cast<std::size_t>(j)] == 0.0 ? 1 : 0;
        if (neg == 0 || neg == n) continue;
        const double rbar = 1.0 - detail::avoid_prob(n, n - neg, k);  // C(neg,k)/C(n,k)
        const double sigma = std::sqrt(rbar * (1.0 - rbar));
        if (!(sigma > 0)) continue;
        // C(neg−1, k−1)/C(n−1, k−1): the other k−1 drawn from n−1 all wrong
        const double others_wrong = detail::avoid_prob(n - 1, n - neg, k - 1);
        const double a_pos = (1.0 - rbar) / sigma;
        const double a_neg = (1.0 - rbar - others_wrong) / sigma;
        for (Index j = b; j < e; ++j)
            a[static_cast<std::size_t>(j)] = s[static_cast<std::size_t>(j)] == 1.0 ? a_pos : a_neg;
    }
    return detail::to_vec<S>(a);
}

/// Options of `gdpo_advantages`.
struct GDPOOptions {
    /// Per-component group normalisation (each column of the rewards, GRPO with these options;
    /// its `scale` must be Group or None).
    GRPOOptions component{};
    /// Weights w_k of the components (empty = all 1).
    std::vector<double> weights{};
    /// Final batch normalisation (x − mean_B)/(std_B + ε_B) of the summed advantages.
    bool batch_normalize = true;
    StdKind batch_std_kind = StdKind::Sample;
    double batch_epsilon = 1e-6;
    /// NaN components (a reward function that abstained) are left out of their component's
    /// group mean and std and contribute 0 to the sum (TRL's nanmean / nanstd / nansum);
    /// false: `component.nan_scores` decides (an error by default).
    bool skip_nan_components = false;

    /// TRL GRPOTrainer `multi_objective_aggregation="normalize_then_sum"`: sample stds,
    /// ε 1e-4 for the components and the batch, NaN components skipped.
    static GDPOOptions trl() {
        GDPOOptions o;
        o.component.epsilon = 1e-4;
        o.batch_epsilon = 1e-4;
        o.skip_nan_components = true;
        return o;
    }
};

/// GDPO, group reward-decoupled normalisation (Liu et al. 2026, arXiv:2601.05242): with K
/// reward components per response (`rewards`, N × K), each component is group-normalised on
/// its own (A_k = GRPO_g(r_k)), the normalised advantages are summed with weights
/// (Σ_k w_k A_k), and the sum is normalised over the whole batch, so distinct reward
/// combinations no longer collapse to one advantage as they do when GRPO normalises the summed
/// reward. Degenerate groups follow `component` (0 for all-equal / singleton components); a
/// batch whose summed advantages are all equal gives 0. Anchor: TRL's GRPOTrainer
/// `multi_objective_aggregation="normalize_then_sum"` (`GDPOOptions::trl()`: ε 1e-4 in both
/// steps, sample stds, abstaining (NaN) reward functions skipped); the defaults keep rlpo's
/// GRPO ε 1e-6 and reject NaN. Finite weights whose weighted sum of component advantages
/// overflows (w = 1e308), or a result beyond the storage type, is rlpo::numerical_error.
///
/// **Data-parallel** (`red`): the component normalisation stays per group; the final batch
/// normalisation takes its mean, std and all-equal test over all ranks' responses (a max of
/// two values and the sums of `grpo_advantages`' batch std). Whole groups per rank:
/// `dist::gdpo_advantages` checks them.
template <class D>
Vec<::rlpo::detail::scalar_t<D>> gdpo_advantages(const Eigen::MatrixBase<D>& rewards,
                                                 const Groups& groups, const GDPOOptions& opts = {},
                                                 const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<D>;
    constexpr const char* fn = "rollout::gdpo_advantages";
    const auto& R = rewards.derived();
    const Index N = R.rows(), K = R.cols();
    RLPO_CHECK(K >= 1, fn, "rewards: expected at least one reward component (column), given 0");
    RLPO_CHECK(opts.weights.empty() || static_cast<Index>(opts.weights.size()) == K, fn,
               "weights: expected ", K, " entries (columns of rewards), given ",
               opts.weights.size());
    for (std::size_t k = 0; k < opts.weights.size(); ++k)
        ::rlpo::detail::check_finite_param(fn, "weights", opts.weights[k]);
    RLPO_CHECK(opts.component.scale != AdvantageScale::Batch, fn,
               "component.scale: must be Group or None (the batch step is batch_normalize)");
    ::rlpo::detail::check_nonnegative(fn, "batch_epsilon", opts.batch_epsilon);
    detail::check_groups(fn, "rewards", groups, static_cast<std::size_t>(N));
    std::vector<double> sum(static_cast<std::size_t>(N), 0.0);
    for (Index k = 0; k < K; ++k) {
        const double w = opts.weights.empty() ? 1.0 : opts.weights[static_cast<std::size_t>(k)];
        if (!opts.skip_nan_components) {
            Vec<double> col(N);
            for (Index i = 0; i < N; ++i) col(i) = static_cast<double>(R(i, k));
            const Vec<double> a = grpo_advantages(col, groups, opts.component);
            for (Index i = 0; i < N; ++i) sum[static_cast<std::size_t>(i)] += w * a(i);
            continue;
        }
        // NaN-skipping path: statistics over the valid entries of each group only.
        for (Index g = 0; g < groups.num_groups(); ++g) {
            std::vector<double> v;
            std::vector<Index> at;
            for (Index i = groups.begin(g); i < groups.end(g); ++i) {
                const double r = static_cast<double>(R(i, k));
                if (std::isnan(r)) continue;
                RLPO_CHECK(std::isfinite(r), fn, "rewards: non-finite value ", r, " at [", i, ", ",
                           k, "]");
                v.push_back(r);
                at.push_back(i);
            }
            const Index n = static_cast<Index>(v.size());
            if (n < 2 || detail::all_equal(v, 0, n)) continue;
            const double mu = detail::mean(v, 0, n);
            double den = 1.0;
            if (opts.component.scale == AdvantageScale::Group)
                den = std::max(
                          detail::stddev(v, 0, n, mu, opts.component.std_kind == StdKind::Sample),
                          opts.component.std_floor) +
                      opts.component.epsilon;
            if (!(den > 0)) continue;
            for (Index j = 0; j < n; ++j)
                sum[static_cast<std::size_t>(at[static_cast<std::size_t>(j)])] +=
                    w * (v[static_cast<std::size_t>(j)] - mu) / den;
        }
    }
    for (Index i = 0; i < N; ++i)
        if (!std::isfinite(sum[static_cast<std::size_t>(i)]))
            ::rlpo::detail::fail_numerical(fn,
                                           "the weighted sum of the component advantages of "
                                           "response ",
                                           i, " overflows (", sum[static_cast<std::size_t>(i)],
                                           ")");
    if (opts.batch_normalize && !red.local()) {  // over all ranks (any may hold no rows)
        double hi_lo[2] = {-std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity()};  // max x, max −x
        for (double x : sum) hi_lo[0] = std::max(hi_lo[0], x), hi_lo[1] = std::max(hi_lo[1], -x);
        red.max(hi_lo, 2);
        if (hi_lo[0] == -hi_lo[1]) return Vec<S>::Zero(N);  // all equal (or no response)
        const double mu = detail::batch_mean(sum, red);
        const double sd =
            detail::batch_stddev(sum, mu, opts.batch_std_kind == StdKind::Sample, red).value();
        const double den = sd + opts.batch_epsilon;
        for (auto& x : sum) x = den > 0 ? (x - mu) / den : 0.0;
    } else if (opts.batch_normalize && N > 0) {
        if (detail::all_equal(sum, 0, N)) return Vec<S>::Zero(N);
        const double mu = detail::mean(sum, 0, N);
        const double sd = detail::stddev(sum, 0, N, mu, opts.batch_std_kind == StdKind::Sample);
        const double den = sd + opts.batch_epsilon;
        for (auto& x : sum) x = den > 0 ? (x - mu) / den : 0.0;
    }
    return detail::to_vec_checked<S>(fn, sum);
}

/// The advantage estimators, for config-driven trainers.
enum class AdvantageEstimator {
    GAE,
    GRPO,
    DrGRPO,
    RLOO,
    ReinforcePP,
    ReinforcePPBaseline,
    ReMax,
    OPO,
    GRPOPassK,
    PassK,
    GDPO
};

namespace detail {
/// One row per estimator: verl's `algorithm.adv_estimator` spelling (rlpo's own for those verl
/// lacks: `dr_grpo`, `passk`, `gdpo`).
inline constexpr NameRow<AdvantageEstimator> advantage_estimator_names[] = {
    {"gae", AdvantageEstimator::GAE},
    {"grpo", AdvantageEstimator::GRPO},
    {"dr_grpo", AdvantageEstimator::DrGRPO},
    {"rloo", AdvantageEstimator::RLOO},
    {"reinforce_plus_plus", AdvantageEstimator::ReinforcePP},
    {"reinforce_plus_plus_baseline", AdvantageEstimator::ReinforcePPBaseline},
    {"remax", AdvantageEstimator::ReMax},
    {"opo", AdvantageEstimator::OPO},
    {"grpo_passk", AdvantageEstimator::GRPOPassK},
    {"passk", AdvantageEstimator::PassK},
    {"gdpo", AdvantageEstimator::GDPO},
};
inline constexpr NameTable advantage_estimator_table{advantage_estimator_names};
}  // namespace detail

/// Name of an estimator as verl's `algorithm.adv_estimator` spells it (rlpo's own spelling for
/// those verl lacks: `dr_grpo`, `passk`, `gdpo`).
inline const char* to_string(AdvantageEstimator e) {
    return detail::advantage_estimator_table.name_of(e);
}

/// Parse verl's `adv_estimator` names (`gae`, `grpo`, `rloo`, `reinforce_plus_plus`,
/// `reinforce_plus_plus_baseline`, `remax`, `opo`, `grpo_passk`) and rlpo's (`dr_grpo`,
/// `passk`, `gdpo`). Unknown names throw with the list of valid names.
inline AdvantageEstimator parse_advantage_estimator(const std::string& name) {
    return detail::advantage_estimator_table.parse("rollout::parse_advantage_estimator",
                                                   "advantage estimator", name);
}

}  // namespace rlpo::rollout
