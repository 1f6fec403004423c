#pragma once
/// \file
/// SPAE: step-potential advantage estimation (Wu et al. 2026, arXiv 2601.03823; values only,
/// no gradient). A response's reasoning is split into steps (the paper splits at ".\n\n"
/// inside the thinking); after each step the caller probes the model N times for the final
/// answer and measures its accuracy Acc and confidence Conf ∈ [0, 1]. Per response i, step k:
///
///     Φ_ik      = 1.5·Acc·Conf + 0.5·Acc − Conf                  (`step_potential`, ∈ [−1, 1])
///     C_ik      = #{t < k : Φ_it > ε_sat}                        (earlier saturated steps)
///     f_ik      = 1 − α·(1 − e^{−C_ik})                           (1 → 1 − α as steps saturate)
///     ΔΦ_ik     = Φ_ik − Φ_i,k−1,   ΔΦ_i0 = 0
///     ΔΦ̃_ik     = (ΔΦ_ik − min ΔΦ) / (max ΔΦ − min ΔΦ)            (min-max over the batch's steps;
///                                                                 0 when they are all equal)
///     Â_i       = R_i − mean_{group(i)} R                          (no division by the std)
///     Â_ij      = Â_i·f_{i,M(j)} + ξ·(e^{ΔΦ̃_{i,M(j)}} − E)          (E = mean of e^{ΔΦ̃_{i,M(j)}}
///                                                                 over the batch's tokens)
///     A_ij      = whiten(Â) over the batch's unmasked tokens       (`WhitenOptions`, verl's)
///
/// with M(j) the step of token j (`token_step`, `[B, T]`: a step index in [0, K), or −1 for a
/// token outside every step, e.g. the summary after the thinking: it gets Â_i, i.e. f = 1 and
/// no potential term, and does not enter E).
///
/// **Sources and what is inferred**: the shape Â = Â_group·f(Φ) + ξ·g(ΔΦ) and the potential
/// Φ = 1.5·Acc·Conf + 0.5·Acc − Conf are the authors' (cii030/SPAE-RL, README at `dd7c0c6` and
/// `inference/probe_mechanism_example.py`); f, g, the group advantage without std, the batch
/// standardisation and ξ = α = 0.5 are from reading notes of the paper's full text. Not given
/// there, and choices of rlpo: ε_sat (default 0.9, the probe code's "solved" test
/// `step_potential > 0.9`; an option), the scope of the min-max normalisation and of the mean E
/// (the batch: over all steps, resp. all tokens with a step), ΔΦ of the first step (0, as the
/// probe code), and tokens outside every step (Â_i). The probing itself (N = 5 samples of ≤ 10
/// tokens after "**Final Answer**\n\boxed{") is the caller's.
///
/// **Bad input** (rlpo::invalid_argument): sizes (scores: one per row of the mask; potentials
/// and step_mask `[B, K]`; token_step `[B, T]`), a token mapped to a step outside [0, K) or to a
/// step whose `step_mask` is 0, non-finite scores or potentials under the masks, α ∉ [0, 1],
/// ξ < 0, non-finite ε_sat, Acc or Conf outside [0, 1] (`step_potential`).

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/detail/scores.hpp>
#include <rlpo/rollout/groups.hpp>
#include <rlpo/rollout/returns.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace rlpo::rollout {

/// SPAE's options (defaults: ξ = α = 0.5 from the paper, ε_sat = 0.9 inferred; verl's
/// whitening for the final batch standardisation).
struct SPAEOptions {
    double alpha = 0.5;       ///< α: how far f decays as earlier steps saturate
    double xi = 0.5;          ///< ξ: weight of the potential-difference term
    double saturation = 0.9;  ///< ε_sat: a step with Φ > ε_sat counts as saturated
    WhitenOptions whiten{};   ///< the final standardisation over the batch's tokens
};

/// Φ = 1.5·Acc·Conf + 0.5·Acc − Conf, the step potential of SPAE (Acc, Conf ∈ [0, 1]).
inline double step_potential(double accuracy, double confidence) {
    constexpr const char* fn = "rollout::step_potential";
    RLPO_CHECK(accuracy >= 0 && accuracy <= 1, fn, "accuracy: must be in [0, 1], given ", accuracy);
    RLPO_CHECK(confidence >= 0 && confidence <= 1, fn, "confidence: must be in [0, 1], given ",
               confidence);
    return 1.5 * accuracy * confidence + 0.5 * accuracy - confidence;
}

/// SPAE token advantages `[B, T]` (0 where the mask is 0); see the file comment.
/// `scores` `[B]`: the outcome rewards R; `potentials`, `step_mask` `[B, K]`: Φ of each step
/// (row i's steps in order, `step_mask` 1 where the step exists); `token_step` `[B, T]`: the
/// step of each token (−1: none); `mask` `[B, T]`: the response mask.
template <class DS, class DP, class DK, class DT, class DM>
Mat<::rlpo::detail::scalar_t<DM>> spae_advantages(
    const Eigen::MatrixBase<DS>& scores, const Eigen::MatrixBase<DP>& potentials,
    const Eigen::MatrixBase<DK>& step_mask, const Eigen::MatrixBase<DT>& token_step,
    const Eigen::MatrixBase<DM>& mask, const Groups& groups, const SPAEOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DM>;
    constexpr const char* fn = "rollout::spae_advantages";
    RLPO_CHECK(opts.alpha >= 0 && opts.alpha <= 1, fn, "alpha: must be in [0, 1], given ",
               opts.alpha);
    ::rlpo::detail::check_nonnegative(fn, "xi", opts.xi);
    ::rlpo::detail::check_finite_param(fn, "saturation", opts.saturation);
    const std::vector<double> R = detail::read_scores(fn, "scores", scores);
    const Index B = mask.rows(), T = mask.cols(), K = potentials.cols();
    detail::check_groups(fn, "scores", groups, R.size());
    RLPO_CHECK(static_cast<Index>(R.size()) == B, fn, "scores: expected ", B,
               " entries (one per mask row), given ", R.size());
    RLPO_CHECK(potentials.rows() == B && step_mask.rows() == B && step_mask.cols() == K, fn,
               "potentials, step_mask: expected [", B, ", K] each, given [", potentials.rows(),
               ", ", K, "] and [", step_mask.rows(), ", ", step_mask.cols(), "]");
    RLPO_CHECK(token_step.rows() == B && token_step.cols() == T, fn, "token_step: expected shape [",
               B, ", ", T, "] (same as mask), given [", token_step.rows(), ", ", token_step.cols(),
               "]");
    const ConstMatRef<S> m(mask.derived());
    ::rlpo::detail::check_mask(fn, m);
    // group advantage without the std
    std::vector<double> adv(R.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const double mu = detail::mean(R, groups.begin(g), groups.end(g));
        for (Index k = groups.begin(g); k < groups.end(g); ++k)
            adv[static_cast<std::size_t>(k)] = R[static_cast<std::size_t>(k)] - mu;
    }
    // per step: f and ΔΦ; the batch's ΔΦ range
    Mat<double> f = Mat<double>::Ones(B, K), dphi = Mat<double>::Zero(B, K);
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (Index i = 0; i < B; ++i) {
        double saturated = 0, prev = 0;
        bool first = true;
        for (Index k = 0; k < K; ++k) {
            if (static_cast<double>(step_mask(i, k)) == 0) continue;
            const double phi = static_cast<double>(potentials(i, k));
            RLPO_CHECK(std::isfinite(phi), fn, "potentials: non-finite value ", phi, " at [", i,
                       ", ", k, "] under a non-zero step_mask");
            f(i, k) = 1.0 - opts.alpha * (1.0 - std::exp(-saturated));
            dphi(i, k) = first ? 0.0 : phi - prev;
            lo = std::min(lo, dphi(i, k));
            hi = std::max(hi, dphi(i, k));
            saturated += phi > opts.saturation ? 1.0 : 0.0;
            prev = phi;
            first = false;
        }
    }
    const double range = hi > lo ? hi - lo : 0.0;
    const auto step_of = [&](Index i, Index t) -> Index {
        const double s = static_cast<double>(token_step(i, t));
        if (s == -1) return -1;
        RLPO_CHECK(s >= 0 && s < static_cast<double>(K) && s == std::floor(s), fn,
                   "token_step: step ", s, " at [", i, ", ", t, "] is not in [0, ", K,
                   ") (or −1 for none)");
        const auto k = static_cast<Index>(s);
        RLPO_CHECK(static_cast<double>(step_mask(i, k)) != 0, fn, "token_step: token [", i, ", ", t,
                   "] is mapped to step ", k, ", whose step_mask is 0");
        return k;
    };
    const auto g_of = [&](Index i, Index k) {
        return std::exp(range > 0 ? (dphi(i, k) - lo) / range : 0.0);
    };
    // E: the mean of e^{ΔΦ̃} over the batch's tokens that belong to a step
    double e_sum = 0, e_n = 0;
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const Index k = step_of(i, t);
            if (k < 0) continue;
            e_sum += mk * g_of(i, k);
            e_n += mk;
        }
    const double E = e_n > 0 ? e_sum / e_n : 0.0;
    Mat<S> a = Mat<S>::Zero(B, T);
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) {
            if (static_cast<double>(m(i, t)) == 0) continue;
            const Index k = step_of(i, t);
            const double ai = adv[static_cast<std::size_t>(i)];
            a(i, t) = static_cast<S>(k < 0 ? ai : ai * f(i, k) + opts.xi * (g_of(i, k) - E));
        }
    return whiten(a, m, opts.whiten);
}

}  // namespace rlpo::rollout
