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
/// **Data-parallel** (the trailing `red`, dist/reductions.hpp): with a mini-batch sharded over
/// ranks (rank r holds a contiguous block of rows, blocks in rank order), pass the reductions
/// and the global `Normalizer` (dist::global_normalizer): the means, N, k and the selection are
/// then those of the whole batch, exactly — KL-Cov's top-k gathers each rank's own first k
/// tokens as (cov, global position) pairs and takes the global k-th (ties broken by the global
/// position, as one process does); Clip-Cov runs the same seeded Fisher–Yates draw on every
/// rank over the global candidate ordinals. Each rank gets the gradient of its rows; the value
/// and metrics are the rank's part (dist::reduce sums them). Communication: a sum of three
/// values (the means), a gather of two values per rank, and for KL-Cov a gather of
/// 2·min(k, n_r) values (16 bytes per selected token at most per rank).
///
/// **Bad input**: shapes differing from `logp`, ε ≤ 0, ρ ∉ (0, 1], cov_lb ≥ cov_ub, β < 0 →
/// rlpo::invalid_argument; NaN under a non-zero mask → rlpo::invalid_argument naming the input;
/// non-finite log-probs or advantages (the covariance would be undefined) →
/// rlpo::invalid_argument. Any finite inputs give finite covariance means (overflowing sums are
/// redone as weighted means) and a well-defined ranking (a covariance that overflows is ±inf,
/// a zero factor gives 0, never NaN). Neither surrogate clamps the log-ratio: where r = e^lr
/// overflows (e.g. finite log-ratios of ±1e30) the per-token loss is not finite and the call
/// throws rlpo::invalid_argument listing the inputs at that position. The value and metrics are
/// checked finite (rlpo::numerical_error). An empty mask gives value 0, gradient 0 and metrics 0.
///
/// **Allocates**: Clip-Cov: the candidate tokens' indices (one per candidate) for the random
/// draw, kept for the k selected (looked up by binary search in the pass); KL-Cov: one index per
/// unmasked token for the top-k selection (nth_element; the selection is then a threshold on
/// (cov, position)). No `[B, T]` temporaries; `clip_cov_selection` returns its `[B, T]` mask.

#include <rlpo/dist/reductions.hpp>
#include <rlpo/policy/detail/driver.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <unordered_map>
#include <utility>
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

/// The detached means of the covariance, cov_t = (A_t − mean A)·(logp_t − mean logp), over the
/// unmasked tokens (weighted by the mask or plain). Checks NaN / non-finite inputs. Any finite
/// inputs and weights give finite means (sums that overflow are redone as Σ (w/Σw)·x with the
/// weights divided by their maximum). `at` evaluates cov_t on demand (no `[B, T]` matrix); a
/// factor that is exactly 0 gives 0 (never ∞·0), an overflowing product ±inf (ordered).
struct CovMeans {
    double ma = 0.0, ml = 0.0;
    double at(double a, double x) const {
        const double da = a - ma, dl = x - ml;
        return (da == 0 || dl == 0) ? 0.0 : da * dl;
    }
};
template <class S>
inline CovMeans token_covariance(const char* fn, const ConstMatRef<S>& lp, const ConstMatRef<S>& A,
                                 const ConstMatRef<S>& m, bool weighted_means,
                                 const ::rlpo::dist::Reductions& red = ::rlpo::dist::local()) {
    double sm = 0, sa = 0, sl = 0, wmax = 0;
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
            RLPO_CHECK(std::isfinite(a), fn, "advantages: non-finite value ", a, " at [", i, ", ",
                       t, "]: the covariance selection needs finite advantages");
            const double wgt = weighted_means ? mk : 1.0;
            wmax = std::max(wmax, wgt);
            sm += wgt;
            sa += wgt * a;
            sl += wgt * x;
        }
    if (!red.local()) {  // the means over all ranks' tokens
        double sums[3] = {sm, sa, sl};
        red.sum(sums, 3);
        sm = sums[0], sa = sums[1], sl = sums[2];
    }
    CovMeans c;
    if (sm == 0) return c;
    c.ma = sa / sm;
    c.ml = sl / sm;
    if (std::isfinite(c.ma) && std::isfinite(c.ml)) return c;
    // rare path: a sum overflowed; weights w/wmax ≤ 1, then each term (w/Σw)·x ≤ |x|
    wmax = red.max(wmax);
    double sw = 0;
    for (Index i = 0; i < m.rows(); ++i)
        for (Index t = 0; t < m.cols(); ++t)
            if (m(i, t) != 0) sw += (weighted_means ? static_cast<double>(m(i, t)) : 1.0) / wmax;
    sw = red.sum(sw);
    c.ma = c.ml = 0;
    for (Index i = 0; i < m.rows(); ++i)
        for (Index t = 0; t < m.cols(); ++t)
            if (m(i, t) != 0) {
                const double q = (weighted_means ? static_cast<double>(m(i, t)) : 1.0) / wmax / sw;
                c.ma += q * static_cast<double>(A(i, t));
                c.ml += q * static_cast<double>(lp(i, t));
            }
    if (!red.local()) {
        double means[2] = {c.ma, c.ml};
        red.sum(means, 2);
        c.ma = means[0], c.ml = means[1];
    }
    return c;
}

/// Clip-Cov's draw on a sharded batch: the same partial Fisher–Yates shuffle as one process,
/// run on every rank over the global candidate ordinals (rank r's candidates follow those of
/// ranks 0..r−1, in row-major order within the rank), the shuffled array kept sparse (only the
/// swapped entries). Returns the rank's picked local indices, sorted. One gather of two values.
inline std::vector<Index> sharded_draw(const std::vector<Index>& cand, double N,
                                       const ClipCovOptions& opts,
                                       const ::rlpo::dist::Reductions& red) {
    const auto all = red.gather({N, static_cast<double>(cand.size())});
    double N_all = 0.0;
    std::size_t C = 0, offset = 0;
    for (int r = 0; r < static_cast<int>(all.size()); ++r) {
        N_all += all[static_cast<std::size_t>(r)][0];
        if (r == red.rank()) offset = C;
        C += static_cast<std::size_t>(all[static_cast<std::size_t>(r)][1]);
    }
    if (N_all == 0 || C == 0) return {};
    const double want = std::max(1.0, std::floor(opts.ratio * N_all));
    const std::size_t k = want >= static_cast<double>(C) ? C : static_cast<std::size_t>(want);
    std::unordered_map<std::size_t, std::size_t> moved;  // position → ordinal, where swapped
    const auto at = [&](std::size_t q) {
        const auto it = moved.find(q);
        return it == moved.end() ? q : it->second;
    };
    std::mt19937_64 eng(opts.seed);
    std::vector<Index> picked;
    for (std::size_t j = 0; j < k; ++j) {
        const std::size_t pick = j + static_cast<std::size_t>(eng() % (C - j));
        const std::size_t a = at(j), b = at(pick);
        moved[j] = b;
        moved[pick] = a;
        if (b >= offset && b < offset + cand.size()) picked.push_back(cand[b - offset]);
    }
    std::sort(picked.begin(), picked.end());
    return picked;
}

/// KL-Cov's boundary on a sharded batch: the k-th token of the whole batch in the order
/// "cov descending, then global row-major position" (k = max(1, ⌊ρ·N⌋), N the valid tokens of
/// all ranks). Each rank sends its own first min(k, n_r) tokens in that order as (cov, global
/// position) pairs; the k-th of the union is the global k-th (a token among the global first k
/// is among its rank's first k), found identically on every rank. Exact, ties included. One
/// gather of two values per rank, one gather of 2·min(k, n_r) values.
struct TopKBoundary {
    Index position = -1;  ///< global row-major position of the k-th token (−1: no token)
    double cov = 0.0;
    Index offset = 0;  ///< global position of this rank's first token
};
template <class At>
inline TopKBoundary sharded_top_k(std::vector<Index>& valid, Index rows, Index T, double ratio,
                                  At&& at, const ::rlpo::dist::Reductions& red) {
    const auto sizes = red.gather({static_cast<double>(rows), static_cast<double>(valid.size())});
    TopKBoundary out;
    double N = 0.0, before_rows = 0.0;
    for (int r = 0; r < static_cast<int>(sizes.size()); ++r) {
        if (r < red.rank()) before_rows += sizes[static_cast<std::size_t>(r)][0];
        N += sizes[static_cast<std::size_t>(r)][1];
    }
    out.offset = static_cast<Index>(before_rows) * T;
    const auto k = static_cast<std::size_t>(
        std::min(N, std::max(1.0, std::floor(N * ratio))));  // N = 0 ⇒ k = 0
    const auto before = [&](Index a, Index b) {
        const double ca = at(a), cb = at(b);
        return ca > cb || (ca == cb && a < b);
    };
    const std::size_t mine = std::min(k, valid.size());
    if (mine > 0 && mine < valid.size())
        std::nth_element(valid.begin(), valid.begin() + static_cast<std::ptrdiff_t>(mine - 1),
                         valid.end(), before);
    std::vector<double> send;
    send.reserve(2 * mine);
    for (std::size_t j = 0; j < mine; ++j) {
        send.push_back(at(valid[j]));
        send.push_back(static_cast<double>(out.offset + valid[j]));
    }
    const auto all = red.gather(send);
    if (k == 0) return out;
    std::vector<std::pair<double, double>> cand;  // (cov, global position)
    for (const auto& part : all)
        for (std::size_t j = 0; j + 1 < part.size(); j += 2)
            cand.emplace_back(part[j], part[j + 1]);
    std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k - 1), cand.end(),
                     [](const std::pair<double, double>& a, const std::pair<double, double>& b) {
                         return a.first > b.first || (a.first == b.first && a.second < b.second);
                     });
    out.cov = cand[k - 1].first;
    out.position = static_cast<Index>(cand[k - 1].second);
    return out;
}

/// Clip-Cov's selected tokens as sorted row-major indices (see `clip_cov_selection`).
template <class S>
inline std::vector<Index> clip_cov_selected(
    const char* fn, const ConstMatRef<S>& lp, const ConstMatRef<S>& olp, const ConstMatRef<S>& A,
    const ConstMatRef<S>& m, const ClipCovOptions& opts,
    const ::rlpo::dist::Reductions& red = ::rlpo::dist::local()) {
    ::rlpo::detail::check_surrogate_shapes(fn, lp, olp, A, m);
    validate(fn, opts);
    ::rlpo::detail::check_mask(fn, m);
    const CovMeans cov = token_covariance<S>(fn, lp, A, m, true, red);
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
            const double cv = cov.at(a, static_cast<double>(lp(i, t)));
            if (!ppo_clipped && cv > opts.cov_lb && cv < opts.cov_ub)
                cand.push_back(i * lp.cols() + t);
        }
    if (!red.local()) return sharded_draw(cand, N, opts, red);
    if (N == 0 || cand.empty()) return {};
    // k = ⌊ρ·N⌋ (at least 1), compared in double before the conversion: with mask weights ~1e30
    // ρ·N exceeds any size_t (converting it would be undefined), and k is the candidates' count
    const double want = std::max(1.0, std::floor(opts.ratio * N));
    const std::size_t k =
        want >= static_cast<double>(cand.size()) ? cand.size() : static_cast<std::size_t>(want);
    std::mt19937_64 eng(opts.seed);
    for (std::size_t j = 0; j < k; ++j) {
        const std::size_t pick = j + static_cast<std::size_t>(eng() % (cand.size() - j));
        std::swap(cand[j], cand[pick]);
    }
    cand.resize(k);
    std::sort(cand.begin(), cand.end());
    return cand;
}
}  // namespace detail

/// The tokens Clip-Cov zeroes (1 = selected), `[B, T]`.
template <class DL, class DO, class DA, class DM>
Mat<::rlpo::detail::scalar_t<DL>> clip_cov_selection(const Eigen::MatrixBase<DL>& logp,
                                                     const Eigen::MatrixBase<DO>& old_logp,
                                                     const Eigen::MatrixBase<DA>& advantages,
                                                     const Eigen::MatrixBase<DM>& mask,
                                                     const ClipCovOptions& opts = {},
                                                     const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<DL>;
    const ConstMatRef<S> lp(logp.derived()), olp(old_logp.derived()), A(advantages.derived()),
        m(mask.derived());
    const std::vector<Index> picked =
        detail::clip_cov_selected<S>("policy::clip_cov", lp, olp, A, m, opts, red);
    Mat<S> sel = Mat<S>::Zero(lp.rows(), lp.cols());
    for (Index q : picked) sel(q / lp.cols(), q % lp.cols()) = S(1);
    return sel;
}

/// Clip-Cov loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> clip_cov(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const ClipCovOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt,
    const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<DL>;
    static_assert(::rlpo::detail::is_supported_scalar_v<S>, "rlpo: inputs must be float or double");
    constexpr const char* fn = "policy::clip_cov";
    const ConstMatRef<S> lp(logp.derived()), olp(old_logp.derived()), A(advantages.derived()),
        m(mask.derived());
    // checks shapes, options, NaN; the selected tokens as sorted row-major indices
    const std::vector<Index> picked = detail::clip_cov_selected<S>(fn, lp, olp, A, m, opts, red);
    detail::check_weights(fn, is_weights, m);
    const Index T = lp.cols();
    const auto selected = [&](Index i, Index t) {
        return std::binary_search(picked.begin(), picked.end(), i * T + t);
    };
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
            if (selected(i, t)) {
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
    ::rlpo::detail::check_finite_result(fn, res.value, res.metrics);
    return res;
}

/// KL-Cov loss and its gradient w.r.t. `logp`. All inputs `[B, T]`.
template <class DL, class DO, class DA, class DM>
Result<::rlpo::detail::scalar_t<DL>> kl_cov(
    const Eigen::MatrixBase<DL>& logp, const Eigen::MatrixBase<DO>& old_logp,
    const Eigen::MatrixBase<DA>& advantages, const Eigen::MatrixBase<DM>& mask,
    const KLCovOptions& opts = {}, const Normalizer& norm = {},
    const GradientOut<::rlpo::detail::scalar_t<DL>>& out = {},
    const TokenWeights<::rlpo::detail::scalar_t<DL>>& is_weights = std::nullopt,
    const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<DL>;
    // the shared preamble (policy/detail/driver.hpp), then the selection and a token pass
    detail::SurrogateCall<S, detail::KLCovRows> call(logp, old_logp, advantages, mask, opts, norm,
                                                     out, is_weights, false);
    const ConstMatRef<S>& lp = call.lp;
    // Top-k by covariance over the valid tokens (plain means, as verl), ties by position: the
    // order "cov descending, then row-major position" is strict and total, so the k-th token
    // q_k of it (nth_element) decides the selection: a token is selected iff it is q_k or
    // precedes it. cov is evaluated on demand (no [B, T] matrix).
    const Index T = lp.cols();
    const detail::CovMeans cov =
        detail::token_covariance<S>(call.fn, lp, call.A, call.m, false, red);
    const auto at = [&](Index q) {
        return cov.at(static_cast<double>(call.A(q / T, q % T)),
                      static_cast<double>(lp(q / T, q % T)));
    };
    const auto before = [&](Index a, Index b) {
        const double ca = at(a), cb = at(b);
        return ca > cb || (ca == cb && a < b);
    };
    std::vector<Index> valid;
    for (Index k = 0; k < lp.size(); ++k)
        if (call.m(k / T, k % T) != 0) valid.push_back(k);
    Index boundary = -1;
    double boundary_cov = 0.0;
    Index offset = 0;  // global row-major position of this rank's first token
    if (!red.local()) {
        const auto b = detail::sharded_top_k(valid, lp.rows(), T, opts.ratio, at, red);
        boundary = b.position, boundary_cov = b.cov, offset = b.offset;
    } else if (!valid.empty()) {
        const auto k = std::min<std::size_t>(
            valid.size(), static_cast<std::size_t>(std::max(
                              1.0, std::floor(static_cast<double>(valid.size()) * opts.ratio))));
        std::nth_element(valid.begin(), valid.begin() + static_cast<std::ptrdiff_t>(k - 1),
                         valid.end(), before);
        boundary = valid[k - 1];
        boundary_cov = at(boundary);
    }
    const auto selected = [&](Index i, Index t) {
        if (boundary < 0) return false;
        const Index q = offset + i * T + t;
        const double c = cov.at(static_cast<double>(call.A(i, t)), static_cast<double>(lp(i, t)));
        return c > boundary_cov || (c == boundary_cov && q <= boundary);
    };
    const double beta = opts.kl_coef;
    const auto pass = call.template tokens<1>(
        [&](Index i, Index t, std::array<double, 1>& st) -> ::rlpo::detail::LossGrad {
            const double a = static_cast<double>(call.A(i, t));
            const double lr = static_cast<double>(lp(i, t)) - static_cast<double>(call.olp(i, t));
            const double r = std::exp(lr);
            st[0] = std::abs(lr);
            double l = -a * r, dl = -a * r;
            if (selected(i, t)) {
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
