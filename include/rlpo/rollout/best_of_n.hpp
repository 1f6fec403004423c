#pragma once
/// \file
/// Best-of-N utilities: the KL bound of best-of-N sampling, the exact best-of-N distribution
/// from a base distribution and a reward, and the KL-regularised (tilted) optimum.
///
/// | utility | value | function |
/// |---|---|---|
/// | KL bound | KL(π_BoN ‖ π) ≤ log N − (N − 1)/N | `bon_kl_bound` |
/// | BoN pmf | P_BoN(block b) = F(b)^N − F(b⁻)^N, split within a tie block ∝ p | `bon_distribution` |
/// | exact KL | Σ_y P_BoN(y)·log(P_BoN(y)/p(y)) | `bon_kl` |
/// | tilted optimum | π*(y) = p(y)·exp(r(y)/β)/Z | `tilted_distribution` |
///
/// Sources: Stiennon et al. 2020 / Hilton's analytic formula log N − (N−1)/N for the KL of
/// best-of-N, shown to be an upper bound (tight for continuous reward distributions, i.e. no
/// ties) by Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy",
/// arXiv:2401.01879, which also gives the exact BoN pmf used here (the best of N i.i.d.
/// draws lies at or below outcome y with probability F(y)^N). The tilted optimum is the
/// solution of max_π E_π[r] − β·KL(π ‖ p) (e.g. Rafailov et al. 2023, arXiv:2305.18290, eq. 4).
///
/// Distributions are vectors over K outcomes (float or double), computed in double.
/// **Bad input** (rlpo::invalid_argument): N < 1, β ≤ 0, size mismatch, p not a distribution
/// (negative, non-finite, or not summing to 1 within 1e-6), non-finite rewards.

#include <rlpo/core/error.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/rollout/detail/scores.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace rlpo::rollout {

/// log N − (N − 1)/N, the best-of-N KL bound (0 for N = 1).
inline double bon_kl_bound(Index n) {
    RLPO_CHECK(n >= 1, "rollout::bon_kl_bound", "n: must be >= 1, given ", n);
    const double N = static_cast<double>(n);
    return std::log(N) - (N - 1.0) / N;
}

namespace detail {
inline std::vector<double> read_pmf(const char* fn, const std::vector<double>& p) {
    double sum = 0.0;
    for (std::size_t k = 0; k < p.size(); ++k) {
        RLPO_CHECK(p[k] >= 0, fn, "p: probabilities must be >= 0, given ", p[k], " at outcome ", k);
        sum += p[k];
    }
    RLPO_CHECK(std::abs(sum - 1.0) <= 1e-6, fn, "p: must sum to 1, sums to ", sum);
    return p;
}
}  // namespace detail

/// The best-of-N distribution over K outcomes with base probabilities `p` and rewards `r`:
/// sort outcomes by reward; a block of outcomes with equal reward and base mass q, preceded by
/// mass F⁻ of strictly lower rewards, gets (F⁻ + q)^N − (F⁻)^N, split within the block in
/// proportion to p (ties are broken uniformly at random among equal rewards). N = 1 returns p.
template <class DP, class DR>
Vec<::rlpo::detail::scalar_t<DP>> bon_distribution(const Eigen::MatrixBase<DP>& p,
                                                   const Eigen::MatrixBase<DR>& rewards, Index n) {
    using S = ::rlpo::detail::scalar_t<DP>;
    constexpr const char* fn = "rollout::bon_distribution";
    RLPO_CHECK(n >= 1, fn, "n: must be >= 1, given ", n);
    const std::vector<double> pm = detail::read_pmf(fn, detail::read_scores(fn, "p", p));
    const std::vector<double> r = detail::read_scores(fn, "rewards", rewards);
    RLPO_CHECK(r.size() == pm.size(), fn, "rewards: expected ", pm.size(),
               " entries (one per outcome), given ", r.size());
    std::vector<std::size_t> order(pm.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return r[a] < r[b]; });
    std::vector<double> out(pm.size(), 0.0);
    double below = 0.0;
    const double N = static_cast<double>(n);
    for (std::size_t k = 0; k < order.size();) {
        std::size_t e = k;
        double q = 0.0;
        while (e < order.size() && r[order[e]] == r[order[k]]) q += pm[order[e++]];
        const double mass =
            std::pow(std::min(below + q, 1.0), N) - std::pow(std::min(below, 1.0), N);
        for (std::size_t j = k; j < e; ++j) out[order[j]] = q > 0 ? mass * pm[order[j]] / q : 0.0;
        below += q;
        k = e;
    }
    return detail::to_vec<S>(out);
}

/// Exact KL(π_BoN ‖ p) of `bon_distribution(p, rewards, n)` (outcomes with p = 0 carry no
/// mass under either and are skipped).
template <class DP, class DR>
double bon_kl(const Eigen::MatrixBase<DP>& p, const Eigen::MatrixBase<DR>& rewards, Index n) {
    const Vec<double> q = bon_distribution(p, rewards, n).template cast<double>();
    const std::vector<double> pm = detail::read_scores("rollout::bon_kl", "p", p);
    double kl = 0.0;
    for (std::size_t k = 0; k < pm.size(); ++k) {
        const double qk = q(static_cast<Index>(k));
        if (pm[k] > 0 && qk > 0) kl += qk * std::log(qk / pm[k]);
    }
    return kl;
}

/// The KL-regularised optimum π*(y) = p(y)·exp(r(y)/β)/Z, computed with a max-shift (no
/// overflow for large r/β). Outcomes with p = 0 get 0. The log-partition log Z is returned
/// through `log_partition` when given.
template <class DP, class DR>
Vec<::rlpo::detail::scalar_t<DP>> tilted_distribution(const Eigen::MatrixBase<DP>& p,
                                                      const Eigen::MatrixBase<DR>& rewards,
                                                      double beta,
                                                      double* log_partition = nullptr) {
    using S = ::rlpo::detail::scalar_t<DP>;
    constexpr const char* fn = "rollout::tilted_distribution";
    ::rlpo::detail::check_positive(fn, "beta", beta);
    const std::vector<double> pm = detail::read_pmf(fn, detail::read_scores(fn, "p", p));
    const std::vector<double> r = detail::read_scores(fn, "rewards", rewards);
    RLPO_CHECK(r.size() == pm.size(), fn, "rewards: expected ", pm.size(),
               " entries (one per outcome), given ", r.size());
    double mx = -std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < pm.size(); ++k)
        if (pm[k] > 0) mx = std::max(mx, r[k] / beta);
    double z = 0.0;
    std::vector<double> w(pm.size(), 0.0);
    for (std::size_t k = 0; k < pm.size(); ++k)
        if (pm[k] > 0) z += (w[k] = pm[k] * std::exp(r[k] / beta - mx));
    for (auto& x : w) x = z > 0 ? x / z : 0.0;
    if (log_partition)
        *log_partition = z > 0 ? mx + std::log(z) : -std::numeric_limits<double>::infinity();
    return detail::to_vec<S>(w);
}

}  // namespace rlpo::rollout
