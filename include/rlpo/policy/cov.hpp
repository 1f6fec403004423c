#pragma once
/// \file
/// Clip-Cov and KL-Cov: covariance-based token selection against entropy collapse.
///
/// Both rank tokens by the centred covariance between advantage and log-probability over the
/// unmasked tokens of the call (detached; means weighted by the mask):
///
///     cov_t = (A_t − mean A)·(logp_t − mean logp)
///
/// **Clip-Cov** (`clip_cov`): per token the PPO clip loss with r = exp(lr) (no log-ratio clamp,
/// no dual-clip), l = max(−A·r, −A·clip(r, 1 − ε_l, 1 + ε_h)). Among the tokens that PPO did not
/// clip and whose covariance lies strictly inside (cov_lb, cov_ub), k = max(1, ⌊ρ·N⌋) are drawn
/// uniformly at random (N = Σ m) and their loss and gradient are set to 0. The draw is a partial
/// Fisher–Yates shuffle of the candidates in row-major order driven by `std::mt19937_64(seed)`
/// (index j picked from the remaining n by `engine() % n`): the same inputs and seed always
/// select the same tokens. verl draws with `torch.randperm`; the selected set differs but has
/// the same distribution (uniform k-subset of the candidates). `clip_cov_selection` returns it.
///
/// **KL-Cov** (`kl_cov`): per token l = −A·r (no clipping); the k = max(1, ⌊ρ·N⌋) tokens with the
/// largest covariance (N = number of unmasked tokens) get an extra β·|lr|. Ties in the
/// covariance are broken by row-major position (earlier first), so the selection is
/// deterministic.
///
/// **Gradient** w.r.t. `logp` (the selection is a constant): Clip-Cov: PPO's clip gradient
/// (0 on selected tokens); KL-Cov: −A·r + β·sign(lr)·[selected] (sign(0) = 0).
///
/// **Metrics**: Clip-Cov: `pg_clipfrac` = fraction of tokens zeroed by the covariance clip
/// (verl's definition), `ppo_kl` = mean of −lr. KL-Cov: `ppo_kl` = mean of |lr| (verl logs the
/// absolute log-ratio under this name for kl_cov).
///
/// **Defaults**: Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
/// Language Models" (arXiv 2505.22617) and verl's `clip_cov` / `kl_cov`: ρ = 2e-4, cov bounds
/// (1, 5), ε 0.2 / 0.2, β (`ppo_kl_coef`) = 1. The selection is local to the call: like verl, the
/// means, N and k come from this (micro-)batch, so Clip-Cov / KL-Cov are *not* micro-batch
/// invariant (the only surrogates here that are not).
///
/// **Bad input**: shapes differing from `logp`, ε ≤ 0, ρ ∉ (0, 1], cov_lb ≥ cov_ub, β < 0 →
/// rlpo::invalid_argument; NaN under a non-zero mask → rlpo::invalid_argument naming the input;
/// non-finite log-probs (the covariance would be undefined) → rlpo::invalid_argument. An empty
/// mask gives value 0, gradient 0 and metrics 0.

#include <rlpo/policy/detail/driver.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace rlpo::policy {

struct ClipCovOptions {
    double clip_low = 0.2;   ///< ε_l of the PPO clip
    double clip_high = 0.2;  ///< ε_h of the PPO clip
    double ratio = 2e-4;     ///< ρ: fraction of tokens to zero (at least one)
    double cov_lb = 1.0;     ///< candidates have cov_lb < cov < cov_ub
    double cov_ub = 5.0;
    std::uint64_t seed = 0;  ///< seed of the random selection
};

struct KLCovOptions {
    double ratio = 2e-4;   ///< ρ: fraction of tokens that get the KL term (at least one)
    double kl_coef = 1.0;  ///< β (verl `ppo_kl_coef`)
};

namespace detail {
inline void validate(const char* fn, const ClipCovOptions& o) {
    ::rlpo::detail::check_positive(fn, "clip_low", o.clip_low);
    ::rlpo::detail::check_positive(fn, "clip_high", o.clip_high);
    RLPO_CHECK(o.ratio > 0 && o.ratio <= 1, fn, "ratio: must be in (0, 1], given ", o.ratio);
    RLPO_CHECK(std::isfinite(o.cov_lb) && std::isfinite(o.cov_ub) && o.cov_lb < o.cov_ub, fn,
               "cov_lb, cov_ub: need finite cov_lb < cov_ub, given ", o.cov_lb, ", ", o.cov_ub);
}
inline void validate(const char* fn, const KLCovOptions& o) {
    RLPO_CHECK(o.ratio > 0 && o.ratio <= 1, fn, "ratio: must be in (0, 1], given ", o.ratio);
    ::rlpo::detail::check_nonnegative(fn, "kl_coef", o.kl_coef);
}

/// KL-Cov's entry in the shared preamble (policy/detail/driver.hpp).
struct KLCovRows {
    using Options = KLCovOptions;
    static constexpr const char* name = "policy::kl_cov";
    static constexpr bool reads_old_logp = true;
    explicit KLCovRows(const KLCovOptions& o) { validate(name, o); }
};

/// cov_t over the unmasked tokens (NaN where masked). Checks NaN / non-finite inputs.
template <class S>
inline Mat<double> token_covariance(const char* fn, const ConstMatRef<S>& lp,
                                    const ConstMatRef<S>& A, const ConstMatRef<S>& m,
                                    bool weighted_means) {
    double sm = 0, sa = 0, sl = 0;
    for (Index i = 0; i < m.rows(); ++i)
        for (Index t = 0; t < m.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            const double a = static_cast<double>(A(i, t)), x = static_cast<double>(lp(i, t));
            if (std::isnan(x))
                ::rlpo::detail::fail(fn, "logp: NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
            if (std::isnan(a))
                ::rlpo::detail::fail(fn, "advantages: NaN at [", i, ", ", t,
                                     "] under a non-zero mask (NaN inputs are rejected)");
            RLPO_CHECK(std::isfinite(x), fn, "logp: non-finite value ", x, " at [", i, ", ", t,
                       "]: the covariance selection needs finite log-probs");
            const double wgt = weighted_means ? mk : 1.0;
            sm += wgt;
            sa += wgt * a;
            sl += wgt * x;
        }
    Mat<double> cov =
        Mat<double>::Constant(m.rows(), m.cols(), std::numeric_limits<double>::quiet_NaN());
    if (sm == 0) return cov;
    const double ma = sa / sm, ml = sl / sm;
    for (Index i = 0; i < m.rows(); ++i)
        for (Index t = 0; t < m.cols(); ++t)
            if (m(i, t) != 0)
                cov(i, t) =
                    (static_cast<double>(A(i, t)) - ma) * (static_cast<double>(lp(i, t)) - ml);
    return cov;
}
}  // namespace detail

/// The tokens Clip-Cov zeroes (1 = selected), `[B, T]`.
template <class DL, class DO, class DA, class DM>
Mat<::rlpo::detail::scalar_t<DL>> clip_cov_selection(const Eigen::MatrixBase<DL>& logp,
                                                     const Eigen::MatrixBase<DO>& old_logp,
                                                     const Eigen::MatrixBase<DA>& advantages,
                                                     const Eigen::MatrixBase<DM>& mask,
                                                     const ClipCovOptions& opts = {}) {
    using S = ::rlpo::detail::scalar_t<DL>;
    constexpr const char* fn = "policy::clip_cov";
    const ConstMatRef<S> lp(logp.derived()), olp(old_logp.derived()), A(advantages.derived()),
        m(mask.derived());
    ::rlpo::detail::check_surrogate_shapes(fn, lp, olp, A, m);
    detail::validate(fn, opts);
    ::rlpo::detail::check_mask(fn, m);
    const Mat<double> cov = detail::token_covariance<S>(fn, lp, A, m, true);
    const double lo = 1.0 - opts.clip_low, hi = 1.0 + opts.clip_high;
    std::vector<Index> cand;
    double N = 0;
    for (Index i = 0; i < lp.rows(); ++i)
        for (Index t = 0; t < lp.cols(); ++t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) continue;
            N += mk;
            const double a = static_cast<double>(A(i, t));
            const double r =
                std::exp(static_cast<double>(lp(i, t)) - static_cast<double>(olp(i, t)));
            if (std::isnan(r))
                ::rlpo::detail::fail_nan_at<S>(fn, i, t, {{"logp", &lp}, {"old_logp", &olp}});
            const bool ppo_clipped = -a * std::clamp(r, lo, hi) > -a * r;
            const double cv = cov(i, t);
            if (!ppo_clipped && cv > opts.cov_lb && cv < opts.cov_ub)
                cand.push_back(i * lp.cols() + t);
        }
    Mat<S> sel = Mat<S>::Zero(lp.rows(), lp.cols());
    if (N == 0 || cand.empty()) return sel;
    // k = ⌊ρ·N⌋ (at least 1), compared in double before the conversion: with mask weights ~1e30
    // ρ·N exceeds any size_t (converting it would be undefined), and k is the candidates' count
    const double want = std::max(1.0, std::floor(opts.ratio * N));
    const std::size_t k =
        want >= static_cast<double>(cand.size()) ? cand.size() : static_cast<std::size_t>(want);
    std::mt19937_64 eng(opts.seed);
    for (std::size_t j = 0; j < k; ++j) {
        const std::size_t pick = j + static_cast<std::size_t>(eng() % (cand.size() - j));
        std::swap(cand[j], cand[pick]);
        sel(cand[j] / lp.cols(), cand[j] % lp.cols()) = S(1);
    }
    return sel;
}

/// Clip-Cov loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> clip_cov(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const ClipCovOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<DL>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "policy::clip_cov";
    const ConstMatRef<S> lp(logp.derived()), olp(old_logp.derived()), A(advantages.derived()),
        m(mask.derived());
    const Mat<S> sel = clip_cov_selection(lp, olp, A, m, opts);  // checks shapes, options, NaN
    detail::check_weights(fn, is_weights, m);
    Result<S> res;
    const RowWeights w = row_weights(fn, m, norm);
    const ::rlpo::detail::GradWriter<S> g(fn, res, out, lp.rows(), lp.cols());
    const double lo = 1.0 - opts.clip_low, hi = 1.0 + opts.clip_high;
    const auto pass = ::rlpo::detail::token_pass<2, S>(
        fn, m, w, g, {{"logp", &lp}, {"old_logp", &olp}, {"advantages", &A}},
        [&](Index i, Index t, std::array<double, 2>& st) -> ::rlpo::detail::LossGrad {
            const double a = static_cast<double>(A(i, t));
            const double lr = static_cast<double>(lp(i, t)) - static_cast<double>(olp(i, t));
            const double r = std::exp(lr);
            st[1] = -lr;
            if (sel(i, t) != 0) {
                st[0] = 1.0;
                return {0.0, 0.0};
            }
            const double l1 = -a * r, g1 = -a * r;
            const double l2 = -a * std::clamp(r, lo, hi), g2 = (r >= lo && r <= hi) ? g1 : 0.0;
            const ::rlpo::detail::LossGrad lg = detail::tie_max(l1, g1, l2, g2);
            const double wt = detail::weight_at(is_weights, i, t);
            return {wt * lg.loss, wt * lg.grad};
        });
    res.value = g.coef() * pass.value;
    res.metrics.add("pg_clipfrac", pass.stats[0], pass.count);
    res.metrics.add("ppo_kl", pass.stats[1], pass.count);
    res.metrics.with_count_epsilon(norm.count_epsilon);
    return res;
}

/// KL-Cov loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> kl_cov(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const KLCovOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt) {
    using S = ::rlpo::detail::scalar_t<DL>;
    // the shared preamble (policy/detail/driver.hpp), then the selection and a token pass
    detail::SurrogateCall<S, detail::KLCovRows> call(logp, old_logp, advantages, mask, opts, norm,
                                                     out, is_weights, false);
    const ConstMatRef<S>& lp = call.lp;
    // Top-k by covariance over the valid tokens (plain means, as verl), ties by position.
    const Mat<double> cov = detail::token_covariance<S>(call.fn, lp, call.A, call.m, false);
    std::vector<Index> valid;
    for (Index k = 0; k < lp.size(); ++k)
        if (call.m(k / lp.cols(), k % lp.cols()) != 0) valid.push_back(k);
    Mat<S> sel = Mat<S>::Zero(lp.rows(), lp.cols());
    if (!valid.empty()) {
        const auto k = std::min<std::size_t>(
            valid.size(), static_cast<std::size_t>(std::max(
                              1.0, std::floor(static_cast<double>(valid.size()) * opts.ratio))));
        const auto at = [&](Index q) { return cov(q / lp.cols(), q % lp.cols()); };
        std::partial_sort(
            valid.begin(), valid.begin() + static_cast<std::ptrdiff_t>(k), valid.end(),
            [&](Index a, Index b) { return at(a) > at(b) || (at(a) == at(b) && a < b); });
        for (std::size_t j = 0; j < k; ++j) sel(valid[j] / lp.cols(), valid[j] % lp.cols()) = S(1);
    }
    const double beta = opts.kl_coef;
    const auto pass = call.template tokens<1>(
        [&](Index i, Index t, std::array<double, 1>& st) -> ::rlpo::detail::LossGrad {
            const double a = static_cast<double>(call.A(i, t));
            const double lr = static_cast<double>(lp(i, t)) - static_cast<double>(call.olp(i, t));
            const double r = std::exp(lr);
            st[0] = std::abs(lr);
            double l = -a * r, dl = -a * r;
            if (sel(i, t) != 0) {
                l += beta * std::abs(lr);
                dl += beta * (lr > 0 ? 1.0 : (lr < 0 ? -1.0 : 0.0));
            }
            const double wt = call.weight_at(i, t);
            return {wt * l, wt * dl};
        });
    call.res.metrics.add("ppo_kl", pass.stats[0], pass.count);
    return call.finish(pass.value);
}

}  // namespace rlpo::policy
