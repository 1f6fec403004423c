#pragma once
/// \file
/// ORPO's χ² occupancy-measure penalty (reward side): plain χ² and the √χ² normalised form.
///
/// Laidlaw, Singhal, Dragan, "Correlated Proxies: A New Definition and Improved Mitigation for
/// Reward Hacking" (ICLR 2025; ORPO, occupancy-regularized policy optimization). The policy is
/// regularised towards a reference by the χ² divergence between their *occupancy measures*
/// μ_π and μ_ref, estimated with a discriminator whose score d(s, a) ≈ log(μ_π/μ_ref)(s, a). With
/// χ²(μ_π‖μ_ref) = E_{μ_π}[e^d] − 1, the per-sample distances and rewards are
///
///     plain:  D = e^d − 1,                         reward += −λ·D
///     √χ²:    D = (e^d − 1) / sqrt(χ̂²)  if χ̂² > 0, reward += −λ·D   (gradient of λ·√χ²)
///             χ̂² = trimmed mean of e^d − 1 over the batch (drop ⌊0.01·n⌋ smallest and largest)
///
/// then non-finite distances are set to 0 and the reward term is clipped to ±`reward_clip`
/// (ORPO's `discriminator_reward_clip`, default +inf). The paper's regularised objective is
/// J(π, R̃) − λ·sqrt(χ²(μ_π‖μ_ref)) with λ = σ_R̃·sqrt(1 − r²) (r the proxy/true reward correlation
/// under the reference policy); ORPO implements its gradient through these per-sample rewards.
///
/// Here the samples are the unmasked tokens (LLM RL: state = prefix, action = token) and `d` is
/// the caller's discriminator score per token, `[B, T]`. The result is a reward term per token
/// (0 at masked tokens) for the advantage computation; there is no gradient (the discriminator
/// is trained separately, the policy is updated through the rewards). Metrics:
/// `occupancy_measure_chi2` (mean of e^d − 1 over unmasked tokens) and
/// `occupancy_measure_chi2_trimmed` (χ̂², √χ² variant only), as ORPO logs them.
///
/// **Deliberate difference**: ORPO's code trims with `sorted[i:-i]`, which is empty when
/// i = ⌊0.01·n⌋ = 0 (fewer than 100 samples), making χ̂² NaN and, after its non-finite filter,
/// every reward 0. Here i = 0 keeps every sample (the untrimmed mean).
///
/// **Bad input**: shape mismatch, λ < 0, trim outside [0, 0.5), reward_clip ≤ 0 →
/// rlpo::invalid_argument; NaN scores under a non-zero mask → invalid_argument naming [i, t].
/// With `reward_clip = +inf` a reward −λ·distance that overflows → rlpo::numerical_error naming
/// [i, t] (never stored as −inf). Allocates: one double per unmasked token (the χ terms; a
/// sorted copy for the trimmed mean).

#include <rlpo/core/error.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace rlpo::penalties {

enum class OccupancyDivergence { ChiSquared, SqrtChiSquared };

struct OccupancyChi2Options {
    OccupancyDivergence divergence = OccupancyDivergence::SqrtChiSquared;
    double coef = 1.0;   ///< λ (ORPO `om_divergence_coeffs`)
    double trim = 0.01;  ///< fraction dropped at each end for χ̂²
    double reward_clip = std::numeric_limits<double>::infinity();
};

template <class S>
struct OccupancyPenalty {
    Mat<S> rewards;  ///< −λ·D per unmasked token (clipped), 0 at masked tokens  `[B, T]`
    double chi2_trimmed = 0.0;  ///< χ̂² (√χ² variant), else 0
    Metrics metrics;
};

/// Per-token reward term of ORPO's χ² / √χ² occupancy regulariser from discriminator scores
/// `log_ratio` ≈ log(μ_π/μ_ref), `[B, T]`, under `mask`.
template <class DD, class DM>
OccupancyPenalty<::rlpo::detail::scalar_t<DD>> occupancy_chi2_penalty(
    const Eigen::MatrixBase<DD>& log_ratio, const Eigen::MatrixBase<DM>& mask,
    const OccupancyChi2Options& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DD>;
    constexpr const char* fn = "penalties::occupancy_chi2_penalty";
    const ConstMatRef<S> d(log_ratio.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "mask", m, "log_ratio", d);
    ::rlpo::detail::check_nonnegative(fn, "coef", opts.coef);
    RLPO_CHECK(opts.trim >= 0 && opts.trim < 0.5, fn, "trim: must be in [0, 0.5), given ",
               opts.trim);
    RLPO_CHECK(opts.reward_clip > 0 && !std::isnan(opts.reward_clip), fn,
               "reward_clip: must be > 0, given ", opts.reward_clip);
    ::rlpo::detail::check_mask(fn, m);
    const Index B = d.rows(), T = d.cols();
    std::vector<double> chi;  // e^d − 1 per unmasked token, row-major order
    double sum = 0.0, count = 0.0;
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double x = static_cast<double>(d(i, t));
            if (std::isnan(x))
                ::rlpo::detail::fail(fn, "log_ratio: NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN is rejected)");
            const double c = std::expm1(x);
            chi.push_back(c);
            if (std::isfinite(c)) sum += mk * c, count += mk;
        }
    OccupancyPenalty<S> res;
    res.rewards.setZero(B, T);
    double scale = 1.0;
    if (opts.divergence == OccupancyDivergence::SqrtChiSquared && !chi.empty()) {
        std::vector<double> sorted = chi;
        std::sort(sorted.begin(), sorted.end());
        const auto n = sorted.size();
        const auto k = static_cast<std::size_t>(opts.trim * static_cast<double>(n));
        double s = 0.0;
        for (std::size_t j = k; j < n - k; ++j) s += sorted[j];
        res.chi2_trimmed = s / static_cast<double>(n - 2 * k);
        if (res.chi2_trimmed > 0 && std::isfinite(res.chi2_trimmed))
            scale = 1.0 / std::sqrt(res.chi2_trimmed);
    }
    std::size_t j = 0;
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t) {
            if (static_cast<double>(m(i, t)) == 0) continue;
            double dist = chi[j++] * scale;
            if (!std::isfinite(dist)) dist = 0.0;
            const S r =
                static_cast<S>(std::clamp(-opts.coef * dist, -opts.reward_clip, opts.reward_clip));
            // reward_clip = +inf leaves −coef·dist unbounded: an overflow is reported, not stored
            if (!(std::abs(r) < std::numeric_limits<S>::infinity()))
                ::rlpo::detail::fail_numerical(
                    fn, "the reward at [", i, ", ", t,
                    "] overflows (coef x distance, reward_clip = ", opts.reward_clip, ")");
            res.rewards(i, t) = r;
        }
    res.metrics.add("occupancy_measure_chi2", sum, count);
    if (opts.divergence == OccupancyDivergence::SqrtChiSquared)
        res.metrics.set("occupancy_measure_chi2_trimmed", res.chi2_trimmed);
    return res;
}

}  // namespace rlpo::penalties
