#pragma once
/// \file
/// The shared plumbing of element-wise token-level objectives (internal).
///
/// An objective supplies a functor `f(i, t, stats) -> LossGrad` for one unmasked token
/// returning the per-token loss L and ∂L/∂x of its
/// differentiable input, and adding its metric contributions (unweighted) to `stats`. The pass:
///   * skips masked tokens entirely (their inputs are never read, their gradient is exactly 0);
///   * weights by the aggregation factor c_i · m_it (see aggregation.hpp) and the
///     GradientOut coefficient, accumulates the value in double;
///   * processes rows in parallel when OpenMP is enabled, with per-row partial sums combined in
///     row order, so the result is bitwise identical for any number of threads;
///   * flags a non-finite (NaN or ±inf) per-token loss or gradient at an unmasked token and
///     then names the offending input and position (`rlpo::invalid_argument`): a NaN input by
///     name, else the inputs at that position, which give a loss the formula cannot take;
///   * flags a weighted gradient entry c_i·m_it·∂L (times the GradientOut coefficient) that
///     overflows the storage type although ∂L is finite (`rlpo::numerical_error`).
/// Both flags are fused into the pass (a compare per token, diagnosed after the loop). The
/// value and the metrics the objective builds from the sums are checked by its caller
/// (`check_finite_result`: a sum of finite losses can still overflow).

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/core/types.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <vector>

namespace rlpo::detail {

struct LossGrad {
    double loss;
    double grad;
};

/// A named `[B, T]` input, so that a NaN can be attributed.
template <class S>
struct NamedInput {
    const char* name;
    const ConstMatRef<S>* x;
};

template <std::size_t K>
struct TokenPassResult {
    double value = 0.0;             ///< Σ_i c_i Σ_t m L (before the GradientOut coefficient)
    std::array<double, K> stats{};  ///< Σ over unmasked tokens of m · (per-token stats)
    double count = 0.0;             ///< Σ m (local)
};

/// Diagnose a non-finite (NaN or ±inf) per-token result at [i, t]: name a NaN input, else list
/// the inputs' values (a loss or gradient the formula cannot give a finite value for, e.g.
/// −inf log-probs where no clamp bounds the result).
template <class S>
[[noreturn]] inline void fail_nan_at(const char* function, Index i, Index t,
                                     std::initializer_list<NamedInput<S>> inputs) {
    for (const auto& in : inputs)
        if (std::isnan(static_cast<double>((*in.x)(i, t))))
            fail(function, in.name, ": NaN at [", i, ", ", t,
                 "] under a non-zero mask (NaN inputs are rejected)");
    std::ostringstream os;
    os.precision(std::numeric_limits<double>::max_digits10);
    for (const auto& in : inputs) os << ' ' << in.name << '=' << (*in.x)(i, t);
    fail(function, "inputs at [", i, ", ", t,
         "] give a non-finite loss or gradient (see the non-finite policy):", os.str());
}

/// A weighted gradient entry that overflows although the per-token gradient is finite.
[[noreturn]] inline void fail_grad_overflow(const char* function, Index i, Index t) {
    fail_numerical(function, "gradient at [", i, ", ", t,
                   "]: the weighted per-token gradient (aggregation factor x mask weight x "
                   "coefficient) overflows the storage type");
}

/// The end of a token pass: the rows' sums added in row order; the first row (in row order)
/// with a non-finite per-token result at token `row_nan[r]` ≥ 0 is diagnosed instead (an
/// overflowing weighted gradient is encoded as −2 − t and reported only when no row has a
/// non-finite per-token result: a bad input is the caller's error to fix first).
template <std::size_t K, class S>
inline TokenPassResult<K> combine_rows(const char* function, const RowWeights& w,
                                       std::initializer_list<NamedInput<S>> inputs,
                                       const std::vector<double>& row_value,
                                       const std::vector<std::array<double, K>>& row_stats,
                                       const std::vector<Index>& row_nan) {
    TokenPassResult<K> out;
    // input errors (invalid_argument) of any row first, then overflows (numerical_error)
    for (std::size_t r = 0; r < row_value.size(); ++r)
        if (row_nan[r] >= 0) fail_nan_at<S>(function, static_cast<Index>(r), row_nan[r], inputs);
    for (std::size_t r = 0; r < row_value.size(); ++r) {
        if (row_nan[r] < -1) fail_grad_overflow(function, static_cast<Index>(r), -2 - row_nan[r]);
        out.value += row_value[r];
        for (std::size_t j = 0; j < K; ++j) out.stats[j] += row_stats[r][j];
    }
    out.count = w.local_tokens;
    return out;
}

inline constexpr double kInf = std::numeric_limits<double>::infinity();

/// Where row r's loop over packets of W entries stops: its extent (`RowWeights::end`) rounded
/// up to a whole packet, at most T (T when the factors carry no extents). Entries from there on
/// are masked: their gradient is 0 and no input is read.
inline Index row_stop(const RowWeights& w, std::size_t r, Index T, Index W = 1) {
    if (w.end.empty()) return T;
    return std::min(T, (w.end[r] + W - 1) / W * W);
}

template <std::size_t K, class S, class F>
inline TokenPassResult<K> token_pass(const char* function, const ConstMatRef<S>& mask,
                                     const RowWeights& w, const GradWriter<S>& g,
                                     std::initializer_list<NamedInput<S>> inputs, F&& f) {
    const Index B = mask.rows(), T = mask.cols();
    std::vector<double> row_value(static_cast<std::size_t>(B), 0.0);
    std::vector<std::array<double, K>> row_stats(static_cast<std::size_t>(B));
    std::vector<Index> row_nan(static_cast<std::size_t>(B), -1);
    ::rlpo::detail::parallel_for(B, B * T > 32768, [&](Index i) {
        const auto r = static_cast<std::size_t>(i);
        const double c = w.c[r];
        double acc = 0.0;
        std::array<double, K> st{};
        const Index stop = row_stop(w, r, T);
        for (Index t = stop; t < T; ++t) g.zero(i, t);
        for (Index t = 0; t < stop; ++t) {
            const double mk = static_cast<double>(mask(i, t));
            if (mk == 0) {
                g.zero(i, t);
                continue;
            }
            std::array<double, K> local{};
            const LossGrad lg = f(i, t, local);
            if (!(std::abs(lg.loss) < kInf && std::abs(lg.grad) < kInf)) {
                if (row_nan[r] < 0) row_nan[r] = t;  // an input error outranks an overflow
                g.zero(i, t);
                continue;
            }
            acc += mk * lg.loss;
            for (std::size_t j = 0; j < K; ++j) st[j] += mk * local[j];
            const double gv = c * mk * lg.grad;
            if (g.active() && row_nan[r] == -1 &&
                !(std::abs(static_cast<S>(g.coef() * gv)) < std::numeric_limits<S>::infinity()))
                row_nan[r] = -2 - t;
            g.put(i, t, gv);
        }
        row_value[r] = c * acc;
        row_stats[r] = st;
    });
    return combine_rows<K, S>(function, w, inputs, row_value, row_stats, row_nan);
}

}  // namespace rlpo::detail

// ---------------------------------------------------------------------------------------------
// Vectorised row kernels
// ---------------------------------------------------------------------------------------------
//
// `token_pass_simd` keeps the contract of `token_pass` (masked tokens never influence anything,
// gradient exactly 0 there, aggregation weights c_i·m_it, per-row partial sums combined in row
// order, non-finite diagnosis) but calls the objective once per SIMD *packet* of a row, computed in
// the storage precision S with Eigen's packet primitives (min, max; the exponential through
// `simd::pexp`, Eigen's bit for bit) and rlpo's lane masks (core/simd/packet.hpp: compares and
// selects, never branches). The driver zeroes masked lanes as they are loaded (so garbage at masked
// positions never propagates), sums in registers and writes the gradient. `row_weights_fast`
// computes the aggregation factors of core/aggregation.hpp with vectorised row sums.

namespace rlpo::detail {

/// Per-packet token pass: the fastest form, used by ppo_clip and kl_penalty. The functor is
/// called once per SIMD packet of a row,
///     `f(i, k, T, keep, loss, grad, stats)`
///     (const simd::LaneMask<S>& keep, Packet<S>& loss, Packet<S>& grad,
///      simd::Packets<S, K>& stats)
/// for the tokens [k, k + width) of row i (T = row length). It must read its inputs with
/// `simd::load_kept(p, k, T, keep)`, which zero-pads past the end of the row and zeroes the
/// masked lanes, so that whatever a masked position holds (NaN included) never reaches the
/// arithmetic; on zero inputs a kernel must produce finite values. It returns loss, ∂loss/∂x
/// and the K statistics in registers. The driver loads the mask once per packet, skips packets
/// whose lanes are all masked, checks that loss and (weighted) gradient are finite (x·0 is NaN
/// exactly where x is not finite: two multiply-adds into an accumulator per packet), writes the
/// gradient and accumulates the sums (in S over 8 packets, then in double, in a fixed order).
/// Same contract as token_pass.
template <std::size_t K, class S, class F>
inline TokenPassResult<K> token_pass_simd(const char* function, const ConstMatRef<S>& mask,
                                          const RowWeights& w, const GradWriter<S>& g,
                                          std::initializer_list<NamedInput<S>> inputs, F&& f) {
    using namespace simd;
    using P = Packet<S>;
    constexpr Index W = width<S>;
    const Index B = mask.rows(), T = mask.cols();
    std::vector<double> row_value(static_cast<std::size_t>(B), 0.0);
    std::vector<std::array<double, K>> row_stats(static_cast<std::size_t>(B));
    std::vector<Index> row_nan(static_cast<std::size_t>(B), -1);
    const GradMode gmode = g.mode();
    ::rlpo::detail::parallel_for_dynamic(B, 4, B * T > 32768, [&](Index i) RLPO_SIMD_FLATTEN {
        const auto r = static_cast<std::size_t>(i);
        const double c = w.c[r];
        S* gw = g.row(i);
        const S* mk = mask.data() + i * mask.outerStride();
        if (w.len[r] <= 0) {
            if (gw && gmode == GradMode::Write) std::fill(gw, gw + T, S(0));
            return;
        }
        const P zero = set1<S>(S(0)), gs = set1<S>(static_cast<S>(c * g.coef()));
        P acc = zero, bad = zero;
        Packets<S, K> acc_st;
        acc_st.fill(zero);
        double total = 0.0;
        std::array<double, K> st{};
        int pending = 0;
        const auto flush = [&] {
            total += static_cast<double>(Eigen::internal::predux(acc));
            acc = zero;
            for (std::size_t j = 0; j < K; ++j) {
                st[j] += static_cast<double>(Eigen::internal::predux(acc_st[j]));
                acc_st[j] = zero;
            }
            pending = 0;
        };
        P loss, grad;
        Packets<S, K> stats;
        const Index stop = row_stop(w, r, T, W);
        if (gw && gmode == GradMode::Write) std::fill(gw + stop, gw + T, S(0));
        for (Index k = 0; k < stop; k += W) {
            const P m = load(mk, k, T);
            const LaneMask<S> keep = mask_neq<S>(m, zero);
            if (!mask_any<S>(keep)) {
                if (gw && gmode == GradMode::Write) store_n(gw, k, T, zero);
                continue;
            }
            f(i, k, T, keep, loss, grad, stats);
            // masked lanes saw zero inputs: their outputs are finite, and m = 0 zeroes them
            // (the weighted gradient rounded, and the sums explicit multiply-adds: a product
            // that meets a sum is never left for the compiler to fuse, which it may do in one
            // copy of a kernel and not in another: docs/architecture.md, Contraction)
            if (gw) {
                const P gk = rounded(pmul(pmul(grad, m), gs));
                flag_non_finite<S>(bad, loss, gk);
                if (gmode == GradMode::Add)
                    store_n(gw, k, T, padd(load(static_cast<const S*>(gw), k, T), gk));
                else
                    store_n(gw, k, T, gk);
            } else {
                flag_non_finite<S>(bad, loss, grad);
            }
            acc = Eigen::internal::pmadd(loss, m, acc);
            for (std::size_t j = 0; j < K; ++j)
                acc_st[j] = Eigen::internal::pmadd(stats[j], m, acc_st[j]);
            if (++pending == 8) flush();
        }
        flush();
        if (any_flagged<S>(bad)) {
            // find the first non-finite entry again, in scalar code (rare path: the call throws)
            const S sinf = std::numeric_limits<S>::infinity();
            // a non-finite per-token result (an input error) outranks an overflowing weighted
            // gradient found earlier in the row
            for (Index k = 0; k < stop && row_nan[r] < 0; k += W) {
                const P m = load(mk, k, T);
                f(i, k, T, mask_neq<S>(m, zero), loss, grad, stats);
                S lb[W], gb[W], mb[W], wb[W];
                Eigen::internal::pstoreu(lb, loss);
                Eigen::internal::pstoreu(gb, grad);
                Eigen::internal::pstoreu(mb, m);
                Eigen::internal::pstoreu(wb, pmul(pmul(grad, m), gs));
                for (Index j = 0; j < W && k + j < T; ++j) {
                    if (mb[j] == S(0)) continue;
                    if (!(std::abs(lb[j]) < sinf && std::abs(gb[j]) < sinf)) {
                        row_nan[r] = k + j;
                        break;
                    }
                    if (gw && row_nan[r] == -1 && !(std::abs(wb[j]) < sinf))
                        row_nan[r] = -2 - (k + j);
                }
            }
        }
        row_value[r] = c * total;
        row_stats[r] = st;
    });
    return combine_rows<K, S>(function, w, inputs, row_value, row_stats, row_nan);
}

/// Fast row factors: the same result as `row_weights` (core/aggregation.hpp) for any mask
/// whose row sums are exact (0/1 masks: partial sums of 32 entries are exact in S;
/// fractional masks may differ in the last bits of |y_i|), with the per-row sums in SIMD
/// packets, rows in parallel for large masks (blocks of rows handed out to whichever thread is
/// free, so a descheduled thread delays only its block). A row's extent `end` is the end of its
/// last block of 32 entries with a positive sum. Falls back to `row_weights` (which validates
/// and reports, and sums in double) as soon as an entry is not finite or < 0, or a block's sum
/// overflows S.
template <class S>
inline RowWeights row_weights_fast(const char* function, const ConstMatRef<S>& m,
                                   const Normalizer& norm) {
    const Index B = m.rows(), T = m.cols();
    RowWeights w;
    w.len.assign(static_cast<std::size_t>(B), 0.0);
    w.end.assign(static_cast<std::size_t>(B), 0);
    std::vector<char> bad(static_cast<std::size_t>(B), 0);
    ::rlpo::detail::parallel_for(B, B * T > (Index(1) << 20), [&](Index i) {
        using namespace simd;
        constexpr Index W = width<S>;
        const S* row = m.data() + i * m.outerStride();
        const Packet<S> zero = set1<S>(S(0)), big = set1<S>(std::numeric_limits<S>::max());
        Packet<S> okp = pcmp_eq(zero, zero);
        double s = 0.0;
        Index end = 0;
        bool over = false;
        for (Index b0 = 0; b0 < T; b0 += 32) {
            const Index e = std::min<Index>(b0 + 32, T);
            Packet<S> acc = zero;
            for (Index k = b0; k < e; k += W) {
                const Packet<S> mk = load(row, k, T);
                okp = pand(okp, pand(pcmp_le(zero, mk), pcmp_le(mk, big)));
                acc = padd(acc, mk);
            }
            // entries ≥ 0 (else the row falls back below): a block sums to 0 exactly when all
            // of its entries are 0
            const S block = Eigen::internal::predux(acc);
            s += static_cast<double>(block);
            if (block != S(0)) end = e;
            // a sum past max(S) (entries near it) is left to the exact path's double sums
            over = over || !(block <= std::numeric_limits<S>::max());
        }
        S lanes[W];
        Eigen::internal::pstoreu(lanes, okp);
        bool b = over;
        for (Index j = 0; j < W; ++j) b = b || lanes[j] == S(0);
        w.len[static_cast<std::size_t>(i)] = s;
        w.end[static_cast<std::size_t>(i)] = end;
        bad[static_cast<std::size_t>(i)] = b ? 1 : 0;
    });
    for (Index i = 0; i < B; ++i)
        if (bad[static_cast<std::size_t>(i)]) return row_weights(function, m, norm);
    finish_row_weights(function, w, T, norm);
    return w;
}

}  // namespace rlpo::detail
