#pragma once
/// \file
/// Token-level advantage estimators over `[B, T]` token rewards: masked whitening, discounted
/// returns, REINFORCE++ and REINFORCE++-baseline, and GAE.
///
/// | estimator | advantage | function |
/// |---|---|---|
/// | REINFORCE++ | whiten(G), G_t = r_t + γ·G_{t+1} within the response | `reinforce_pp_advantages` |
/// | REINFORCE++-baseline | whiten(s_i − μ_g broadcast over tokens) | `reinforce_pp_baseline_advantages` |
/// | GAE | Â_t = δ_t + γλ·Â_{t+1}, δ_t = r_t + γ·V_{t+1} − V_t; returns Â + V; then whiten(Â) | `gae_advantages` (a whole batch, or a piece with a `gae_plan`) |
/// | ReMax | Σ_{t'≥t} r_t' − b_i, b_i the reward of the greedy response to the same prompt | `remax_advantages` |
///
/// Papers: REINFORCE++ (Hu 2025, arXiv:2501.03262: discounted token returns, global batch
/// advantage normalisation; "++-baseline" subtracts the group mean first); GAE (Schulman et al.
/// 2016, arXiv:1506.02438). Anchor: verl `compute_reinforce_plus_plus_outcome_advantage`,
/// `compute_reinforce_plus_plus_baseline_outcome_advantage`, `compute_gae_advantage_return`,
/// `masked_whiten`.
///
/// Masks: only unmasked positions (m ≠ 0) are read; outputs are exactly 0 where m = 0. The
/// recursions run over the unmasked positions of a row in order and *skip* masked ones (verl:
/// "skip values and TD-error on observation tokens", so a multi-turn mask with holes chains the
/// response segments); after the last unmasked token the return / value is 0 (terminal). The
/// exception is REINFORCE++'s discounted return, which verl resets at a masked position
/// (G_t = r_t + γ·m_{t+1}·G_{t+1}) and rlpo does the same. For prefix masks both rules agree.
///
/// Whitening (verl `masked_whiten`): (x − μ)/sqrt(v + ε) with μ, v the mask-weighted mean and
/// variance over all unmasked tokens of the batch; v is unbiased (× N/(N−1), N = Σ m) in verl,
/// population in OpenRLHF, which also takes sqrt(max(v, ε)) instead of sqrt(v + ε)
/// (`WhitenOptions::openrlhf()`). With N ≤ 1 (where verl raises) the whitened values are 0.
/// Any finite values and mask weights are accepted: when Σ m·x or Σ m·(x − μ)² would overflow,
/// the statistics are taken on x / max|x| with weights m / max m (exact up to rounding); a
/// whitened value beyond the storage type, or a recursion (returns, GAE) that overflows, →
/// rlpo::numerical_error.
///
/// Precision and threads: recursions and whitening statistics run in double; outputs are stored
/// in the caller's scalar type, and the whitening mean and variance are those of the stored
/// values (each row's moments taken in the pass that writes it, `row_moments`). Rows run in
/// parallel with OpenMP and per-row partial sums are combined in row order, so results are
/// bitwise identical for any thread count (tested).
///
/// **Data-parallel** (the trailing `red`, dist/reductions.hpp): with the batch's rows sharded
/// over ranks, the whitening statistics are those of all ranks' unmasked tokens (a sum of two
/// values for μ, one for the variance; the overflow path adds a max of two and two sums), so
/// each rank gets its rows of one call on the whole batch; the recursions stay per row. Every
/// rank calls with the same options; a rank may hold no rows or no valid token.
/// REINFORCE++-baseline's groups must be whole on each rank
/// (`dist::reinforce_pp_baseline_advantages` checks it).
///
/// **Bad input** (rlpo::invalid_argument): shape mismatch, NaN / ±inf reward or value under a
/// non-zero mask, bad mask, γ or λ outside [0, 1], ε < 0.

#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/dist/reductions.hpp>
#include <rlpo/rollout/advantages.hpp>
#include <rlpo/rollout/detail/scores.hpp>
#include <rlpo/rollout/groups.hpp>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <vector>

namespace rlpo::rollout {

/// How `whiten` normalises.
struct WhitenOptions {
    bool unbiased = true;   ///< variance × N/(N−1) (verl) or population (OpenRLHF)
    double epsilon = 1e-8;  ///< ε of sqrt(v + ε) (or of sqrt(max(v, ε)) with eps_as_floor)
    bool eps_as_floor = false;
    bool shift_mean = true;  ///< false: add the mean back (verl's shift_mean=False)
    static WhitenOptions verl() { return {}; }
    static WhitenOptions openrlhf() {
        WhitenOptions o;
        o.unbiased = false;
        o.eps_as_floor = true;
        return o;
    }
};

/// A `[B, T]` advantage and the returns it came from (the value target of a critic).
template <class S>
struct TokenAdvantages {
    Mat<S> advantages;
    Mat<S> returns;
};

namespace detail {

inline void check_unit(const char* fn, const char* name, double v) {
    RLPO_CHECK(v >= 0 && v <= 1, fn, name, ": must be in [0, 1], given ", v);
}

/// Per-row scratch of the fused passes: the first non-finite input under the mask (input index
/// and position) and the mask-weighted partial sums of the row.
struct RowScan {
    int bad_input = -1;  ///< index into the caller's input list, −1 when clean
    Index bad_t = -1;
    double bad_value = 0.0;
    double weight = 0.0;    ///< Σ_t m
    double sum = 0.0;       ///< Σ_t m·x
    Index overflow_t = -1;  ///< first position whose recursion overflowed (finite inputs)
    double sq = 0.0;        ///< Σ_t m·(x − x̄)², x̄ = sum / weight
};

/// A row's whitening moments from its stored values `x` (the outputs, 0 where m = 0) and mask
/// weights `m` over n positions: Σ m, Σ m·x and the centred Σ m·(x − x̄)², each in eight fixed
/// lanes (the same order whatever the thread). Every producer of whitened values calls it at
/// the end of its row pass, while the row is still in cache; `whiten_in_place` combines the
/// rows exactly, so whitening reads the batch once more only to normalise it.
template <class S>
inline void row_moments(const S* m, const S* x, Index n, RowScan& sc) {
    using A8 = Eigen::Array<double, 8, 1>;
    using M8 = Eigen::Map<const Eigen::Array<S, 8, 1>>;
    A8 wp = A8::Zero(), sp = A8::Zero();
    Index t = 0;
    for (; t + 8 <= n; t += 8) {
        const A8 mk = M8(m + t).template cast<double>();
        wp += mk;
        sp += mk * M8(x + t).template cast<double>();
    }
    for (Index j = 0; t + j < n; ++j) {
        const double mk = static_cast<double>(m[t + j]);
        wp(j) += mk;
        sp(j) += mk * static_cast<double>(x[t + j]);
    }
    double w = 0.0, s = 0.0;
    for (Index j = 0; j < 8; ++j) w += wp(j), s += sp(j);
    const double mu = w > 0 ? s / w : 0.0;
    A8 qp = A8::Zero();
    for (t = 0; t + 8 <= n; t += 8)
        qp += M8(m + t).template cast<double>() * (M8(x + t).template cast<double>() - mu).square();
    for (Index j = 0; t + j < n; ++j) {
        const double d = static_cast<double>(x[t + j]) - mu;
        qp(j) += static_cast<double>(m[t + j]) * d * d;
    }
    double q = 0.0;
    for (Index j = 0; j < 8; ++j) q += qp(j);
    sc.weight = w, sc.sum = s, sc.sq = q;
}

/// Flag a recursion value that is not finite in double or in the storage type S (its inputs
/// are finite: the input check comes first).
template <class S>
inline void flag_overflow(RowScan& sc, Index t, double v) {
    if (sc.overflow_t < 0 && !(std::abs(static_cast<S>(v)) < std::numeric_limits<S>::infinity()))
        sc.overflow_t = t;
}

/// Run `f(i, scan)` for every row of the mask (in parallel with OpenMP; rows are independent
/// and the partial sums are combined in row order afterwards, so results do not depend on the
/// thread count), checking each row's mask weights (finite, ≥ 0) first, in the same pass;
/// then report a bad mask as `check_mask` does (the first bad entry), else the first
/// non-finite input a row flagged, naming it and its position, else the first overflow.
template <class S, class F>
inline std::vector<RowScan> scan_rows(const char* fn, const ConstMatRef<S>& mask,
                                      std::initializer_list<const char*> names, F&& f) {
    const Index B = mask.rows(), T = mask.cols();
    std::vector<RowScan> rows(static_cast<std::size_t>(B));
    std::vector<char> bad_mask(static_cast<std::size_t>(B), 0);
    ::rlpo::detail::parallel_for(B, B > 64, [&](Index i) {
        const S* mr = mask.data() + i * mask.outerStride();
        int ok = 1;  // check_mask's test, branch-free; NaN fails both compares
        for (Index t = 0; t < T; ++t)
            ok &= static_cast<int>(mr[t] >= S(0)) &
                  static_cast<int>(mr[t] <= std::numeric_limits<S>::max());
        if (!ok) {  // the row is not processed; check_mask below names the entry
            bad_mask[static_cast<std::size_t>(i)] = 1;
            return;
        }
        f(i, rows[static_cast<std::size_t>(i)]);
    });
    for (Index i = 0; i < B; ++i)
        if (bad_mask[static_cast<std::size_t>(i)]) ::rlpo::detail::check_mask(fn, mask);
    for (Index i = 0; i < B; ++i) {
        const RowScan& r = rows[static_cast<std::size_t>(i)];
        if (r.bad_input >= 0)
            ::rlpo::detail::fail(fn, *(names.begin() + r.bad_input), ": non-finite value ",
                                 r.bad_value, " at [", i, ", ", r.bad_t, "] under a non-zero mask");
    }
    for (Index i = 0; i < B; ++i)
        if (rows[static_cast<std::size_t>(i)].overflow_t >= 0)
            ::rlpo::detail::fail_numerical(fn, "the return / advantage recursion overflows at [", i,
                                           ", ", rows[static_cast<std::size_t>(i)].overflow_t,
                                           "] (finite inputs whose discounted sum exceeds the "
                                           "storage type)");
    return rows;
}

/// The whitening's map of unmasked entries, x ↦ (x·s − μ)·k + add: s = 1 (or 1/M on the
/// rescaled path below), k = 1/σ (verl multiplies by rsqrt(v + ε): a multiply per entry, not
/// a division), 0 when the statistics are degenerate (then every whitened value is `add`);
/// add = μ/s without shift_mean, else 0.
struct WhitenMap {
    double s = 1.0, mu = 0.0, k = 0.0, add = 0.0;
};

/// A whitened value at [i, t] beyond the storage type (a tiny spread: ε = 0 with one heavy
/// weight), reported under the calling function's name `fn`.
[[noreturn]] inline void fail_whitened(const char* fn, Index i, Index t) {
    ::rlpo::detail::fail_numerical(fn, "the whitened value at [", i, ", ", t,
                                   "] overflows the storage type");
}

/// The whitening map when the sums overflow (values or mask weights near the double range):
/// the same statistics with the values divided by M = max |x| and the weights by W = max m
/// over the unmasked entries, so every sum stays finite; (x − μ)/sqrt(v + ε) = (x/M − μ/M) /
/// sqrt(v/M² + ε/M²) is then exact up to rounding. Serial, over the stored values (a rare
/// path); over all ranks of `red` (a max of two, sums of three and one).
template <class S>
inline WhitenMap whiten_scaled_map(const ConstMatRef<S>& x, const ConstMatRef<S>& mask,
                                   const WhitenOptions& o, const ::rlpo::dist::Reductions& red) {
    const Index B = x.rows(), T = x.cols();
    double M = 0.0, W = 0.0;
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t)
            if (mask(i, t) != 0) {
                M = std::max(M, std::abs(static_cast<double>(x(i, t))));
                W = std::max(W, static_cast<double>(mask(i, t)));
            }
    double MW[2] = {M, W};
    red.max(MW, 2);  // over ranks (a rank without tokens has 0, 0)
    M = MW[0], W = MW[1];
    double n = 0.0, sum = 0.0, cnt = 0.0;
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t)
            if (mask(i, t) != 0) {
                const double m = static_cast<double>(mask(i, t)) / W;
                n += m;
                sum += m * (static_cast<double>(x(i, t)) / M);
                cnt += static_cast<double>(mask(i, t));  // the unscaled Σ m (may be +inf)
            }
    double sums[3] = {n, sum, cnt};
    red.sum(sums, 3);
    n = sums[0], sum = sums[1], cnt = sums[2];
    const double mu_s = n > 0 ? sum / n : 0.0;
    double ss = 0.0;
    for (Index i = 0; i < B; ++i)
        for (Index t = 0; t < T; ++t)
            if (mask(i, t) != 0) {
                const double d = static_cast<double>(x(i, t)) / M - mu_s;
                ss += static_cast<double>(mask(i, t)) / W * d * d;
            }
    ss = red.sum(ss);
    double var_s = n > 0 ? ss / n : 0.0;
    const bool degenerate = !(cnt > 1);
    // n/(n − 1) in unscaled counts (→ 1 where Σ m itself overflows)
    if (o.unbiased && !degenerate && std::isfinite(cnt)) var_s *= cnt / (cnt - 1);
    const double eps_s = o.epsilon / M / M;
    const double denom_s =
        o.eps_as_floor ? std::sqrt(std::max(var_s, eps_s)) : std::sqrt(var_s + eps_s);
    const bool zero = degenerate || !(denom_s > 0);
    return WhitenMap{1.0 / M, mu_s, zero ? 0.0 : 1.0 / denom_s, o.shift_mean ? 0.0 : M * mu_s};
}

/// The whitening map of the batch from each row's moments of pass one (`row_moments`): the
/// mean and variance in double, over all ranks of `red` (two sums, of two values and of one).
/// Nothing when Σ m·x or Σ m·d² overflows (the caller then takes `whiten_scaled_map`; every
/// rank decides on the same sums).
inline std::optional<WhitenMap> whiten_map(const std::vector<RowScan>& rows, const WhitenOptions& o,
                                           const ::rlpo::dist::Reductions& red) {
    double n = 0.0, sum = 0.0;
    for (const auto& r : rows) n += r.weight, sum += r.sum;
    if (!red.local()) {
        double ns[2] = {n, sum};
        red.sum(ns, 2);
        n = ns[0], sum = ns[1];
    }
    const double mu = n > 0 ? sum / n : 0.0;
    // the rows' centred sums moved to the batch mean (exact: Σ m·(x − μ)² over a row is its
    // Σ m·(x − x̄)² + Σ m·(x̄ − μ)²), added in row order
    double ss = 0.0;
    for (const auto& r : rows)
        if (r.weight > 0) {
            const double d = r.sum / r.weight - mu;
            ss += r.sq + r.weight * d * d;
        }
    if (!red.local()) ss = red.sum(ss);
    if (!(std::isfinite(n) && std::isfinite(mu) && std::isfinite(ss))) return std::nullopt;
    double var = n > 0 ? ss / n : 0.0;
    const bool degenerate = !(n > 1);
    if (o.unbiased && !degenerate) var *= n / (n - 1);
    const double denom =
        o.eps_as_floor ? std::sqrt(std::max(var, o.epsilon)) : std::sqrt(var + o.epsilon);
    const bool zero = degenerate || !(denom > 0);
    return WhitenMap{1.0, mu, zero ? 0.0 : 1.0 / denom, o.shift_mean ? 0.0 : mu};
}

/// One row of the whitening's pass two, in place: x ↦ (x·s − μ)·k + add in double, rounded
/// to S, where m ≠ 0; 0 where m = 0. Branch-free, sixteen entries at a time. Returns the first
/// column whose whitened value does not fit S (a tiny spread, e.g. ε = 0 with one heavy
/// weight), or −1.
template <class S>
inline Index whiten_row(const S* m, S* x, Index n, const WhitenMap& f) {
    namespace simd = ::rlpo::detail::simd;
    using P = simd::Packet<S>;
    constexpr Index W = simd::width<S>, L = 16 > W ? 16 : W;
    const P zero = simd::set1<S>(S(0)), all = simd::pcmp_eq(zero, zero);
    P chk = zero;  // o·0 accumulated: NaN once an entry is ±inf
    alignas(64) double w[L];
    alignas(64) S out[L];
    for (Index t0 = 0; t0 < n; t0 += L) {
        const Index len = std::min<Index>(L, n - t0);
        for (Index j = 0; j < L; ++j)  // the tail's extra lanes are never stored
            w[j] = (static_cast<double>(x[t0 + std::min(j, len - 1)]) * f.s - f.mu) * f.k + f.add;
        for (Index j = 0; j < L; ++j) out[j] = static_cast<S>(w[j]);
        for (Index j = 0; j < len; j += W) {
            const P keep = simd::pandnot(all, simd::pcmp_eq(simd::load(m, t0 + j, n), zero));
            const P o = simd::pand(Eigen::internal::pload<P>(out + j), keep);
            chk = Eigen::internal::pmadd(o, zero, chk);
            simd::store_n(x, t0 + j, n, o);
        }
    }
    if (std::abs(Eigen::internal::predux(chk)) < std::numeric_limits<S>::infinity()) return -1;
    for (Index t = 0; t < n; ++t)  // rare: the first entry beyond the storage type
        if (!(std::abs(x[t]) < std::numeric_limits<S>::infinity())) return t;
    return -1;
}

/// Every row of x whitened in place by the map f (`whiten_row`), in parallel; the first entry
/// beyond the storage type (in row order) → rlpo::numerical_error under `fn`'s name.
template <class S>
inline void whiten_rows(const char* fn, Mat<S>& x, const ConstMatRef<S>& mask, const WhitenMap& f) {
    const Index B = x.rows(), T = x.cols();
    std::vector<Index> overflow(static_cast<std::size_t>(B), -1);
    ::rlpo::detail::parallel_for(B, B > 64, [&](Index i) {
        overflow[static_cast<std::size_t>(i)] =
            whiten_row(mask.data() + i * mask.outerStride(), x.data() + i * x.outerStride(), T, f);
    });
    for (Index i = 0; i < B; ++i)
        if (overflow[static_cast<std::size_t>(i)] >= 0)
            fail_whitened(fn, i, overflow[static_cast<std::size_t>(i)]);
}

/// Whitening in place over the mask (weights m), given each row's moments of pass one
/// (`row_moments`): the map from the batch statistics (`whiten_map`), then each row
/// normalised (`whiten_row`); masked entries set to 0.
template <class S>
inline void whiten_in_place(const char* fn, Mat<S>& x, const ConstMatRef<S>& mask,
                            const std::vector<RowScan>& rows, const WhitenOptions& o,
                            const ::rlpo::dist::Reductions& red = ::rlpo::dist::local()) {
    std::optional<WhitenMap> f = whiten_map(rows, o, red);
    if (!f) f = whiten_scaled_map<S>(x, mask, o, red);  // the sums overflowed: rare path
    whiten_rows<S>(fn, x, mask, *f);
}

}  // namespace detail

/// Masked whitening of a `[B, T]` array (see the file comment); 0 where the mask is 0.
template <class DX, class DM>
Mat<::rlpo::detail::scalar_t<DX>> whiten(const Eigen::MatrixBase<DX>& x,
                                         const Eigen::MatrixBase<DM>& mask,
                                         const WhitenOptions& opts = {},
                                         const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<DX>;
    constexpr const char* fn = "rollout::whiten";
    const ConstMatRef<S> xv(x.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "mask", m, "x", xv);
    ::rlpo::detail::check_nonnegative(fn, "epsilon", opts.epsilon);
    Mat<S> w(xv.rows(), xv.cols());
    const auto rows = detail::scan_rows(fn, m, {"x"}, [&](Index i, detail::RowScan& sc) {
        for (Index t = 0; t < xv.cols(); ++t) {
            if (m(i, t) == 0) {
                w(i, t) = S(0);  // never read as a value
                continue;
            }
            const double v = static_cast<double>(xv(i, t));
            if (!std::isfinite(v) && sc.bad_input < 0)
                sc.bad_input = 0, sc.bad_t = t, sc.bad_value = v;
            w(i, t) = xv(i, t);
        }
        detail::row_moments(m.data() + i * m.outerStride(), w.data() + i * w.outerStride(),
                            xv.cols(), sc);
    });
    detail::whiten_in_place<S>(fn, w, m, rows, opts, red);
    return w;
}

/// Options of `reinforce_pp_advantages`.
struct ReinforcePPOptions {
    double gamma = 1.0;  ///< discount (verl algorithm.gamma, 1.0)
    bool whiten = true;  ///< global batch normalisation (the "++")
    WhitenOptions whitening{};
};

/// REINFORCE++ (verl semantics): discounted returns G_t = r_t + γ·m_{t+1}·G_{t+1} per row, then
/// whitened over all unmasked tokens of the batch. `returns` holds G (0 where m = 0).
template <class DR, class DM>
TokenAdvantages<::rlpo::detail::scalar_t<DR>> reinforce_pp_advantages(
    const Eigen::MatrixBase<DR>& token_rewards, const Eigen::MatrixBase<DM>& mask,
    const ReinforcePPOptions& opts = {}, const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<DR>;
    constexpr const char* fn = "rollout::reinforce_pp_advantages";
    const ConstMatRef<S> r(token_rewards.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "mask", m, "token_rewards", r);
    detail::check_unit(fn, "gamma", opts.gamma);
    ::rlpo::detail::check_nonnegative(fn, "whitening.epsilon", opts.whitening.epsilon);
    TokenAdvantages<S> out;
    out.returns.resize(r.rows(), r.cols());
    const auto rows =
        detail::scan_rows(fn, m, {"token_rewards"}, [&](Index i, detail::RowScan& sc) {
            double next = 0.0;  // G_{t+1}·m_{t+1}
            for (Index t = r.cols() - 1; t >= 0; --t) {
                const double mk = static_cast<double>(m(i, t));
                if (mk == 0) {
                    out.returns(i, t) = S(0);
                    next = 0.0;
                    continue;
                }
                const double rt = static_cast<double>(r(i, t));
                if (!std::isfinite(rt) && sc.bad_input < 0)
                    sc.bad_input = 0, sc.bad_t = t, sc.bad_value = rt;
                const double G = rt + opts.gamma * next;
                detail::flag_overflow<S>(sc, t, G);
                out.returns(i, t) = static_cast<S>(G);
                next = G;
            }
            detail::row_moments(m.data() + i * m.outerStride(),
                                out.returns.data() + i * out.returns.outerStride(), r.cols(), sc);
        });
    out.advantages = out.returns;
    if (opts.whiten) detail::whiten_in_place<S>(fn, out.advantages, m, rows, opts.whitening, red);
    return out;
}

/// Options of `reinforce_pp_baseline_advantages`.
struct ReinforcePPBaselineOptions {
    SingletonGroups singleton = SingletonGroups::Zero;  ///< verl: RawScore
    NanScores nan_scores = NanScores::Throw;
    WhitenOptions whitening{};
    static ReinforcePPBaselineOptions verl() {
        ReinforcePPBaselineOptions o;
        o.singleton = SingletonGroups::RawScore;
        return o;
    }
};

/// REINFORCE++-baseline: a_i = s_i − μ_g (group mean baseline), broadcast over the response's
/// tokens, then whitened over all unmasked tokens of the batch (so each response weighs by its
/// length, as in verl). Singleton groups: 0, or the raw score under `verl()`.
template <class DS, class DM>
Mat<::rlpo::detail::scalar_t<DM>> reinforce_pp_baseline_advantages(
    const Eigen::MatrixBase<DS>& scores, const Groups& groups, const Eigen::MatrixBase<DM>& mask,
    const ReinforcePPBaselineOptions& opts = {}, const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<DM>;
    constexpr const char* fn = "rollout::reinforce_pp_baseline_advantages";
    const std::vector<double> s = detail::read_scores(fn, "scores", scores, opts.nan_scores);
    detail::check_groups(fn, "scores", groups, s.size());
    const ConstMatRef<S> m(mask.derived());
    RLPO_CHECK(m.rows() == static_cast<Index>(s.size()), fn, "mask: expected ", s.size(),
               " rows (one per score), given ", m.rows());
    ::rlpo::detail::check_nonnegative(fn, "whitening.epsilon", opts.whitening.epsilon);
    std::vector<double> a(s.size(), 0.0);
    for (Index g = 0; g < groups.num_groups(); ++g) {
        const Index b = groups.begin(g), e = groups.end(g);
        if (e - b == 1) {
            if (opts.singleton == SingletonGroups::RawScore)
                a[static_cast<std::size_t>(b)] = s[static_cast<std::size_t>(b)];
            continue;
        }
        if (detail::all_equal(s, b, e)) continue;
        const double mu = detail::mean(s, b, e);
        for (Index k = b; k < e; ++k)
            a[static_cast<std::size_t>(k)] = s[static_cast<std::size_t>(k)] - mu;
    }
    Mat<S> A(m.rows(), m.cols());
    const auto rows = detail::scan_rows(fn, m, {"scores"}, [&](Index i, detail::RowScan& sc) {
        const double ai = a[static_cast<std::size_t>(i)];
        for (Index t = 0; t < m.cols(); ++t) A(i, t) = m(i, t) != 0 ? static_cast<S>(ai) : S(0);
        detail::row_moments(m.data() + i * m.outerStride(), A.data() + i * A.outerStride(),
                            m.cols(), sc);
    });
    detail::whiten_in_place<S>(fn, A, m, rows, opts.whitening, red);
    return A;
}

/// Options of `gae_advantages`. Defaults are verl's (γ = 1, λ = 1, whitened); the PPO paper
/// uses γ 0.99, λ 0.95 (`ppo_paper()`), OpenRLHF γ 1, λ 0.95 with its whitening
/// (`openrlhf()`).
struct GAEOptions {
    double gamma = 1.0;
    double lambda = 1.0;
    bool whiten = true;
    WhitenOptions whitening{};
    static GAEOptions verl() { return {}; }
    static GAEOptions openrlhf() {
        GAEOptions o;
        o.lambda = 0.95;
        o.whitening = WhitenOptions::openrlhf();
        return o;
    }
    static GAEOptions ppo_paper() {
        GAEOptions o;
        o.gamma = 0.99;
        o.lambda = 0.95;
        return o;
    }
};

namespace detail {

/// What GAE's row pass makes of each row: the `[B, T]` outputs (Â and returns) with the row's
/// whitening moments (`gae_advantages`); only the moments (`gae_plan`); or the outputs with
/// Â already whitened by the batch's map (the training step's in-pass GAE).
enum class GAERowOut { Store, Moments, Whitened };

/// GAE's fast row: when the row's unmasked tokens form one contiguous segment [a, b) (a
/// response, or a prompt-and-response layout) with finite rewards and values: the TD errors
/// in one vectorised pass, then one backward pass over blocks of eight tokens forms the
/// recursion, the outputs (by `Out`, see `gae_row`) and the checks (a hole, a non-finite
/// input, an overflow), vectorised; then, unless whitened, the row's whitening moments of the
/// stored Â (`row_moments`, while the row is in cache). Returns false (what it wrote is
/// overwritten) for any other row, which the general loop then handles (and names what it
/// finds). `seq`: `r` holds one outcome reward per row
/// (column 0), the reward of the segment's last token.
///
/// The recursion Â_t = δ_t + c·Â_{t+1} (c = γλ) is Â_t = Σ_k c^k·δ_{t+k}; by blocks of eight
/// from the end, a block's partial sums y_j = Σ_{k≥j} c^{k−j}·δ_k do not depend on the later
/// blocks (a triangular matrix of powers of c times the block's δ: eight vector multiply-adds)
/// and Â_{t+j} = y_j + c^{8−j}·Â_{t+8}: one multiply-add per block on the serial chain, so
/// rows run at the speed of memory rather than of the FMA latency. The same sums as the
/// token-by-token recursion up to rounding in double.
template <class S, GAERowOut Out = GAERowOut::Store>
inline bool gae_segment_row(const ConstMatRef<S>& r, bool seq, const ConstMatRef<S>& v,
                            const ConstMatRef<S>& m, const GAEOptions& opts, Index i, S* ar, S* gr,
                            RowScan& sc, const WhitenMap* wm = nullptr) {
    const Index T = m.cols();
    const S* mr = m.data() + i * m.outerStride();
    const S* rr = r.data() + i * r.outerStride();
    const S* vr = v.data() + i * v.outerStride();
    namespace simd = ::rlpo::detail::simd;
    if (i + 1 < m.rows()) {  // the next row's inputs (most often this thread's next row)
        const auto bytes = static_cast<std::size_t>(T) * sizeof(S);
        simd::prefetch_span_l2(mr + m.outerStride(), bytes);
        simd::prefetch_span_l2(vr + v.outerStride(), bytes);
        if (!seq) simd::prefetch_span_l2(rr + r.outerStride(), bytes);
    }
    using P = simd::Packet<S>;
    constexpr Index W = simd::width<S>;
    const P zero = simd::set1<S>(S(0)), all = simd::pcmp_eq(zero, zero);
    const auto any_nonzero = [&](const S* p) {
        return Eigen::internal::predux_any(
            simd::pandnot(all, simd::pcmp_eq(Eigen::internal::ploadu<P>(p), zero)));
    };
    // the segment [a, b) from its first to its last unmasked token
    Index a = 0, b = T;
    while (b >= W && !any_nonzero(mr + b - W)) b -= W;
    while (b > 0 && mr[b - 1] == S(0)) --b;
    while (a + W <= b && !any_nonzero(mr + a)) a += W;
    while (a < b && mr[a] == S(0)) ++a;
    const Index n = b - a;
    if (seq && n > 0 && !(std::abs(rr[0]) < std::numeric_limits<S>::infinity())) return false;
    // δ_t = r_t + γ·V_{t+1} − V_t into a row of doubles (V_b = 0: terminal after the last
    // unmasked token); a non-finite input makes a non-finite δ, found in the outputs below
    using ArrS = Eigen::Array<S, Eigen::Dynamic, 1>;
    using ArrD = Eigen::Array<double, Eigen::Dynamic, 1>;
    const Eigen::Map<const ArrS> vs(vr + a, n);
    thread_local std::vector<double> buf;
    if (static_cast<Index>(buf.size()) < T) buf.resize(static_cast<std::size_t>(T));
    double* q = buf.data();
    Eigen::Map<ArrD> d(q, n);
    const double g = opts.gamma, c = opts.gamma * opts.lambda;
    if (n > 0) {
        if (seq) {
            d.head(n - 1) =
                g * vs.tail(n - 1).template cast<double>() - vs.head(n - 1).template cast<double>();
            d(n - 1) = static_cast<double>(rr[0]) - static_cast<double>(vs(n - 1));
        } else {
            const Eigen::Map<const ArrS> rs(rr + a, n);
            d.head(n - 1) = rs.head(n - 1).template cast<double>() +
                            g * vs.tail(n - 1).template cast<double>() -
                            vs.head(n - 1).template cast<double>();
            d(n - 1) = static_cast<double>(rs(n - 1)) - static_cast<double>(vs(n - 1));
        }
    }
    // The recursion and the outputs in one backward pass over blocks of eight. A block's
    // partial sums y_j = Σ_{k≥j} c^{k−j}·δ_k are a triangular matrix C of powers of c times
    // its δ (eight vector multiply-adds of broadcast δ_k), and Â_j = y_j + c^{8−j}·Â_8.
    using A8 = Eigen::Array<double, 8, 1>;
    using S8 = Eigen::Array<S, 8, 1>;
    Eigen::Array<double, 8, 8> C = Eigen::Array<double, 8, 8>::Zero();  // C(j, k) = c^{k−j}
    A8 pw;                                                              // c^{8−j}
    {
        double cp[9];
        cp[0] = 1.0;
        for (int j = 1; j <= 8; ++j) cp[j] = cp[j - 1] * c;
        for (int k = 0; k < 8; ++k)
            for (int j = 0; j <= k; ++j) C(j, k) = cp[k - j];
        for (int j = 0; j < 8; ++j) pw(j) = cp[8 - j];
    }
    constexpr bool kMoments = Out != GAERowOut::Whitened;
    const WhitenMap f = Out == GAERowOut::Whitened ? *wm : WhitenMap{};
    // the stored Â (rounded to S) whitened by f, in double, rounded to S
    const auto whiten8 = [&](const S8& x) {
        return (((x.template cast<double>() * f.s - f.mu) * f.k) + f.add).template cast<S>();
    };
    double carry = 0.0;    // Â after the current block
    S8 flag = S8::Zero();  // x·0 of the outputs: NaN once one is not finite
    S8 mmin = S8::Ones();  // the smallest mask weight: 0 where there is a hole
    Index t0 = b - 8;
    for (; t0 >= a; t0 -= 8) {
        const double* qb = q + (t0 - a);
        A8 y = C.col(7) * qb[7];
        for (int k = 6; k >= 0; --k) y += C.col(k) * qb[k];
        const A8 adv = y + pw * carry;
        carry = adv(0);
        const S8 as = adv.template cast<S>();
        const S8 gs =
            (adv + Eigen::Map<const S8>(vr + t0).template cast<double>()).template cast<S>();
        const S8 mb = Eigen::Map<const S8>(mr + t0);
        if constexpr (Out == GAERowOut::Whitened) {
            const S8 ws = whiten8(as);
            Eigen::Map<S8>(ar + t0) = ws;
            flag += ws * S(0);
        } else {  // Store, and Moments into the scratch row `row_moments` reads
            Eigen::Map<S8>(ar + t0) = as;
        }
        if constexpr (Out != GAERowOut::Moments) Eigen::Map<S8>(gr + t0) = gs;
        flag += as * S(0) + gs * S(0);
        mmin = mmin.min(mb);
    }
    for (Index t = t0 + 7; t >= a; --t) {  // the first n mod 8 tokens, one at a time
        carry = q[t - a] + c * carry;
        const S as = static_cast<S>(carry);
        const S gs = static_cast<S>(carry + static_cast<double>(vr[t]));
        if constexpr (Out == GAERowOut::Whitened) {
            const S ws = static_cast<S>((static_cast<double>(as) * f.s - f.mu) * f.k + f.add);
            ar[t] = ws;
            flag(0) += ws * S(0);
        } else {
            ar[t] = as;
        }
        if constexpr (Out != GAERowOut::Moments) gr[t] = gs;
        flag(0) += as * S(0) + gs * S(0);
        mmin(0) = std::min(mmin(0), mr[t]);
    }
    // a hole, a non-finite input or an overflow: the general loop names it
    if (!(mmin.minCoeff() > S(0)) || !(flag.sum() == S(0))) return false;
    if constexpr (kMoments) row_moments(mr + a, ar + a, n, sc);  // the stored Â, in cache
    if constexpr (Out == GAERowOut::Moments) return true;
    std::fill(ar, ar + a, S(0));
    std::fill(gr, gr + a, S(0));
    std::fill(ar + b, ar + T, S(0));
    std::fill(gr + b, gr + T, S(0));
    return true;
}

/// One row of GAE (the fast segment row when it applies, else the token-by-token recursion
/// over the unmasked positions) into `ar` (Â) and `gr` (returns), T entries each, 0 where
/// m = 0, with its first non-finite input or overflow in `sc`, and by `Out`: Store — Â as is
/// and the row's whitening moments in `sc`; Moments — only the moments (`ar`, `gr` are then
/// scratch); Whitened — Â whitened by `*wm` (a whitened value beyond S counts as an
/// overflow). `gae_advantages`, `gae_plan` and the training step's in-pass GAE form every row
/// with it, so they agree bit for bit.
template <class S, GAERowOut Out = GAERowOut::Store>
inline void gae_row(const ConstMatRef<S>& r, bool seq, const ConstMatRef<S>& v,
                    const ConstMatRef<S>& m, const GAEOptions& opts, Index i, S* ar, S* gr,
                    RowScan& sc, const WhitenMap* wm = nullptr) {
    if (gae_segment_row<S, Out>(r, seq, v, m, opts, i, ar, gr, sc, wm)) return;
    const Index T = m.cols();
    double next_value = 0.0, next_adv = 0.0;
    bool last = true;  // the row's last unmasked token (its outcome reward when seq)
    for (Index t = T - 1; t >= 0; --t) {
        const double mk = static_cast<double>(m(i, t));
        if (mk == 0) {
            ar[t] = S(0);
            gr[t] = S(0);
            continue;
        }
        const double rt =
            seq ? (last ? static_cast<double>(r(i, 0)) : 0.0) : static_cast<double>(r(i, t));
        const double vt = static_cast<double>(v(i, t));
        if (sc.bad_input < 0 && !std::isfinite(rt))
            sc.bad_input = 0, sc.bad_t = seq ? 0 : t, sc.bad_value = rt;
        if (sc.bad_input < 0 && !std::isfinite(vt))
            sc.bad_input = 1, sc.bad_t = t, sc.bad_value = vt;
        last = false;
        const double delta = rt + opts.gamma * next_value - vt;
        next_adv = delta + opts.gamma * opts.lambda * next_adv;
        next_value = vt;
        flag_overflow<S>(sc, t, next_adv);
        flag_overflow<S>(sc, t, next_adv + vt);
        ar[t] = static_cast<S>(next_adv);
        gr[t] = static_cast<S>(next_adv + vt);
    }
    const S* mr = m.data() + i * m.outerStride();
    if constexpr (Out == GAERowOut::Whitened) {  // a whitened value beyond S: an overflow
        if (sc.bad_input < 0 && sc.overflow_t < 0) {
            const Index t = whiten_row(mr, ar, T, *wm);
            if (t >= 0) sc.overflow_t = t;
        }
    } else {
        row_moments(mr, ar, T, sc);
    }
}

/// GAE's checks of its inputs and options under `fn`, the mask's values too unless
/// `mask_values` is false (where the caller's own pass over the mask checks them: `scan_rows`,
/// the training step's row weights); true when the rewards are one outcome reward per row
/// (`[B, 1]`).
template <class S>
inline bool gae_check(const char* fn, const ConstMatRef<S>& r, const ConstMatRef<S>& v,
                      const ConstMatRef<S>& m, const GAEOptions& opts, bool mask_values = true) {
    const Index B = v.rows(), T = v.cols();
    const bool seq = r.cols() == 1 && T != 1;
    if (seq)
        RLPO_CHECK(r.rows() == B, fn, "token_rewards: expected [B, T] or [B, 1] with B = ", B,
                   " (rows of values), given [", r.rows(), ", 1]");
    else
        ::rlpo::detail::check_same_shape(fn, "values", v, "token_rewards", r);
    ::rlpo::detail::check_same_shape(fn, "mask", m, "values", v);
    if (mask_values) ::rlpo::detail::check_mask(fn, m);
    check_unit(fn, "gamma", opts.gamma);
    check_unit(fn, "lambda", opts.lambda);
    ::rlpo::detail::check_nonnegative(fn, "whitening.epsilon", opts.whitening.epsilon);
    return seq;
}

/// Every row of GAE into `out` (resized only when its shape differs), before whitening: the
/// checks, then `gae_row` per row in parallel; a non-finite input or an overflow is reported
/// under `fn`. Returns the rows' whitening moments.
template <class S>
inline std::vector<RowScan> gae_rows(const char* fn, const ConstMatRef<S>& r,
                                     const ConstMatRef<S>& v, const ConstMatRef<S>& m,
                                     const GAEOptions& opts, TokenAdvantages<S>& out) {
    const bool seq = gae_check<S>(fn, r, v, m, opts, false);  // scan_rows checks the mask
    const Index B = v.rows(), T = v.cols();
    if (out.advantages.rows() != B || out.advantages.cols() != T) out.advantages.resize(B, T);
    if (out.returns.rows() != B || out.returns.cols() != T) out.returns.resize(B, T);
    return scan_rows(fn, m, {"token_rewards", "values"}, [&](Index i, RowScan& sc) {
        gae_row<S>(r, seq, v, m, opts, i, out.advantages.row(i).data(), out.returns.row(i).data(),
                   sc);
    });
}

}  // namespace detail

/// Generalised advantage estimation over the unmasked positions of each row (masked positions
/// skipped, terminal value 0 after the last one): δ_t = r_t + γ·V_next − V_t,
/// Â_t = δ_t + γλ·Â_next. `returns` = Â + V (before whitening; the critic's target);
/// `advantages` = whiten(Â) when `whiten`, else Â. λ = 1 gives Â_t = G_t − V_t (discounted
/// return minus value); λ = 0 gives the TD error δ_t.
///
/// `token_rewards` is `[B, T]`, or `[B, 1]`: one outcome reward per response (a scorer's
/// output), which is the reward of the row's last unmasked token and 0 elsewhere — the same
/// as `outcome_token_rewards(scores, mask)` (verl's reward manager) without its `[B, T]`
/// matrix. A row without unmasked tokens does not read its reward.
///
/// The overload with `out` writes into `out.advantages` and `out.returns` (resized only when
/// their shape differs, so a trainer's buffers are reused from step to step: no fresh
/// `[B, T]` allocations and their page faults).
template <class DR, class DV, class DM>
void gae_advantages(const Eigen::MatrixBase<DR>& token_rewards, const Eigen::MatrixBase<DV>& values,
                    const Eigen::MatrixBase<DM>& mask, const GAEOptions& opts,
                    TokenAdvantages<::rlpo::detail::scalar_t<DR>>& out,
                    const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<DR>;
    constexpr const char* fn = "rollout::gae_advantages";
    const ConstMatRef<S> r(token_rewards.derived()), v(values.derived()), m(mask.derived());
    const auto rows = detail::gae_rows<S>(fn, r, v, m, opts, out);
    if (opts.whiten) detail::whiten_in_place<S>(fn, out.advantages, m, rows, opts.whitening, red);
}

template <class DR, class DV, class DM>
TokenAdvantages<::rlpo::detail::scalar_t<DR>> gae_advantages(
    const Eigen::MatrixBase<DR>& token_rewards, const Eigen::MatrixBase<DV>& values,
    const Eigen::MatrixBase<DM>& mask, const GAEOptions& opts = {},
    const dist::Reductions& red = dist::local()) {
    TokenAdvantages<::rlpo::detail::scalar_t<DR>> out;
    gae_advantages(token_rewards, values, mask, opts, out, red);
    return out;
}

/// GAE with its whitening fixed over a whole (mini-)batch, so that the advantages can be
/// formed a piece at a time — per micro-batch (`gae_advantages(plan, …)`) or one row at a
/// time inside the training step's pass (`train::StepInputs::gae`) — each piece bit-equal to
/// its rows of one `gae_advantages(…, plan.options)` call on the whole batch. Made by
/// `gae_plan`.
struct GAEPlan {
    GAEOptions options{};
    detail::WhitenMap whitening{};  ///< the whole batch's map (unused without options.whiten)
};

/// The plan of a batch: `gae_advantages`'s first pass (each row's Â into the thread's scratch
/// row, its whitening moments from there) without the `[B, T]` outputs, so it reads the
/// rewards, values and mask once and writes nothing; the statistics are over all ranks of
/// `red`. Bad input and overflow: as `gae_advantages` (named under this function). Without
/// `opts.whiten` there is nothing to measure: the options are checked and kept.
template <class DR, class DV, class DM>
GAEPlan gae_plan(const Eigen::MatrixBase<DR>& token_rewards, const Eigen::MatrixBase<DV>& values,
                 const Eigen::MatrixBase<DM>& mask, const GAEOptions& opts = {},
                 const dist::Reductions& red = dist::local()) {
    using S = ::rlpo::detail::scalar_t<DR>;
    constexpr const char* fn = "rollout::gae_plan";
    const ConstMatRef<S> r(token_rewards.derived()), v(values.derived()), m(mask.derived());
    // the mask's values: here without whitening, else in the row pass (scan_rows)
    const bool seq = detail::gae_check<S>(fn, r, v, m, opts, !opts.whiten);
    GAEPlan plan{opts, {}};
    if (!opts.whiten) return plan;
    const Index T = v.cols();
    const auto rows =
        detail::scan_rows(fn, m, {"token_rewards", "values"}, [&](Index i, detail::RowScan& sc) {
            thread_local std::vector<S> a, g;  // the row's Â and returns, discarded
            if (static_cast<Index>(a.size()) < T)
                a.resize(static_cast<std::size_t>(T)), g.resize(static_cast<std::size_t>(T));
            detail::gae_row<S, detail::GAERowOut::Moments>(r, seq, v, m, opts, i, a.data(),
                                                           g.data(), sc);
        });
    if (auto f = detail::whiten_map(rows, opts.whitening, red)) {
        plan.whitening = *f;
    } else {  // the sums overflow (rare): the rescaled statistics of the stored Â
        TokenAdvantages<S> full;
        detail::gae_rows<S>(fn, r, v, m, opts, full);
        plan.whitening = detail::whiten_scaled_map<S>(full.advantages, m, opts.whitening, red);
    }
    return plan;
}

/// GAE of a piece of a batch (a micro-batch, or this rank's rows) whitened with the whole
/// batch's `plan` (no statistics of its own; no collective call): the rows equal those of one
/// `gae_advantages(…, plan.options)` call on the whole batch. `out` as in `gae_advantages`.
template <class DR, class DV, class DM>
void gae_advantages(const GAEPlan& plan, const Eigen::MatrixBase<DR>& token_rewards,
                    const Eigen::MatrixBase<DV>& values, const Eigen::MatrixBase<DM>& mask,
                    TokenAdvantages<::rlpo::detail::scalar_t<DR>>& out) {
    using S = ::rlpo::detail::scalar_t<DR>;
    constexpr const char* fn = "rollout::gae_advantages";
    const ConstMatRef<S> r(token_rewards.derived()), v(values.derived()), m(mask.derived());
    detail::gae_rows<S>(fn, r, v, m, plan.options, out);
    if (plan.options.whiten) detail::whiten_rows<S>(fn, out.advantages, m, plan.whitening);
}

/// ReMax (Li et al. 2023, arXiv:2310.10505), as verl's `compute_remax_outcome_advantage`: the
/// reward-to-go of each token minus the reward b_i of the greedy (argmax-decoded) response to the
/// same prompt, A_it = Σ_{t' ≥ t} m_it'·r_it' − b_i on unmasked tokens (0 elsewhere);
/// `returns` holds the reward-to-go. `greedy_baseline` has one entry per row (repeat the
/// prompt's greedy reward for each of its responses). With an outcome reward at the last token
/// every token of row i carries s_i − b_i. A reward-to-go or advantage beyond the storage type
/// (finite rewards and baselines, e.g. 1e300 + 1e300) is rlpo::numerical_error.
template <class DR, class DB, class DM>
TokenAdvantages<::rlpo::detail::scalar_t<DR>> remax_advantages(
    const Eigen::MatrixBase<DR>& token_rewards, const Eigen::MatrixBase<DB>& greedy_baseline,
    const Eigen::MatrixBase<DM>& mask) {
    using S = ::rlpo::detail::scalar_t<DR>;
    constexpr const char* fn = "rollout::remax_advantages";
    const ConstMatRef<S> r(token_rewards.derived()), m(mask.derived());
    ::rlpo::detail::check_same_shape(fn, "mask", m, "token_rewards", r);
    const std::vector<double> b = detail::read_scores(fn, "greedy_baseline", greedy_baseline);
    RLPO_CHECK(static_cast<Index>(b.size()) == r.rows(), fn, "greedy_baseline: expected ", r.rows(),
               " entries (rows of token_rewards), given ", b.size());
    TokenAdvantages<S> out;
    out.advantages.resize(r.rows(), r.cols());
    out.returns.resize(r.rows(), r.cols());
    detail::scan_rows(fn, m, {"token_rewards"}, [&](Index i, detail::RowScan& sc) {
        double togo = 0.0;
        for (Index t = r.cols() - 1; t >= 0; --t) {
            const double mk = static_cast<double>(m(i, t));
            if (mk == 0) {
                out.advantages(i, t) = S(0);
                out.returns(i, t) = S(0);
                continue;
            }
            const double rt = static_cast<double>(r(i, t));
            if (!std::isfinite(rt) && sc.bad_input < 0)
                sc.bad_input = 0, sc.bad_t = t, sc.bad_value = rt;
            togo += mk * rt;
            const double adv = togo - b[static_cast<std::size_t>(i)];
            detail::flag_overflow<S>(sc, t, togo);
            detail::flag_overflow<S>(sc, t, adv);
            out.returns(i, t) = static_cast<S>(togo);
            out.advantages(i, t) = static_cast<S>(adv);
        }
    });
    return out;
}

}  // namespace rlpo::rollout
