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
///   * flags a NaN loss or gradient and then names the offending input and position.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
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
    double value = 0.0;           ///< Σ_i c_i Σ_t m L (before the GradientOut coefficient)
    std::array<double, K> stats{};  ///< Σ over unmasked tokens of m · (per-token stats)
    double count = 0.0;           ///< Σ m (local)
};

/// Diagnose a NaN produced at row-major index k: name a NaN input, else list the inputs'
/// values (a NaN that arose from ±inf inputs the formula cannot take).
template <class S>
[[noreturn]] inline void fail_nan_at(const char* function, Index i, Index t,
                                     std::initializer_list<NamedInput<S>> inputs) {
    for (const auto& in : inputs)
        if (std::isnan(static_cast<double>((*in.x)(i, t))))
            fail(function, in.name, ": NaN at [", i, ", ", t,
                 "] under a non-zero mask (NaN inputs are rejected)");
    std::ostringstream os;
    for (const auto& in : inputs) os << ' ' << in.name << '=' << (*in.x)(i, t);
    fail(function, "inputs at [", i, ", ", t, "] give an undefined (NaN) loss:", os.str());
}

template <std::size_t K, class S, class F>
inline TokenPassResult<K> token_pass(const char* function, const ConstMatRef<S>& mask,
                                     const RowWeights& w, const GradWriter<S>& g,
                                     std::initializer_list<NamedInput<S>> inputs, F&& f) {
    const Index B = mask.rows(), T = mask.cols();
    std::vector<double> row_value(static_cast<std::size_t>(B), 0.0);
    std::vector<std::array<double, K>> row_stats(static_cast<std::size_t>(B));
    std::vector<Index> row_nan(static_cast<std::size_t>(B), -1);
#if defined(RLPO_USE_OPENMP)
#pragma omp parallel for schedule(static) if (B * T > 32768)
#endif
    for (Index i = 0; i < B; ++i) {
        const auto r = static_cast<std::size_t>(i);
        const double c = w.c[r];
        double acc = 0.0;
        std::array<double, K> st{};
        for (Index t = 0; t < T; ++t) {
            const double mk = static_cast<double>(mask(i, t));
            if (mk == 0) {
                g.zero(i, t);
                continue;
            }
            std::array<double, K> local{};
            const LossGrad lg = f(i, t, local);
            if (std::isnan(lg.loss) || std::isnan(lg.grad)) {
                if (row_nan[r] < 0) row_nan[r] = t;
                continue;
            }
            acc += mk * lg.loss;
            for (std::size_t j = 0; j < K; ++j) st[j] += mk * local[j];
            g.put(i, t, c * mk * lg.grad);
        }
        row_value[r] = c * acc;
        row_stats[r] = st;
    }
    TokenPassResult<K> out;
    for (Index i = 0; i < B; ++i) {
        const auto r = static_cast<std::size_t>(i);
        if (row_nan[r] >= 0) fail_nan_at<S>(function, i, row_nan[r], inputs);
        out.value += row_value[r];
        for (std::size_t j = 0; j < K; ++j) out.stats[j] += row_stats[r][j];
    }
    out.count = w.local_tokens;
    return out;
}

}  // namespace rlpo::detail

// ---------------------------------------------------------------------------------------------
// Vectorised row kernels
// ---------------------------------------------------------------------------------------------
//
// `token_pass_vec` keeps the contract of `token_pass` (masked tokens never influence anything,
// gradient exactly 0 there, aggregation weights c_i·m_it, per-row partial sums combined in row
// order, NaN diagnosis) but calls the objective once per *chunk* of a row: the functor fills
// arrays with the per-token loss, ∂loss/∂x and its K statistics for `n` consecutive tokens,
// computed in the storage precision S with SIMD packets (Eigen's packet primitives: exp, min,
// max, compares; masks are blends, never branches). The driver then weights, masks (a blend,
// so garbage at masked positions never propagates), sums and writes the gradient.

namespace rlpo::detail {

/// Tokens per chunk of the vectorised pass (a few KiB per array: stays in L1).
inline constexpr Index kTokenChunk = 512;

/// One chunk of per-token values (storage precision, at most kTokenChunk entries, no heap).
template <class S>
using ChunkArray = Eigen::Array<S, 1, Eigen::Dynamic, Eigen::RowMajor, 1, kTokenChunk>;

/// Read-only view of `n` consecutive entries of a row.
template <class S>
using ChunkSeg = Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>;

/// What a vectorised kernel writes for one chunk (sized `n` by the kernel's assignments).
template <class S, std::size_t K>
struct ChunkOut {
    ChunkArray<S> loss;
    ChunkArray<S> grad;
    std::array<ChunkArray<S>, K> stats;
};

/// The segment [t0, t0 + n) of row i of a row-major view.
template <class S>
inline ChunkSeg<S> chunk_of(const ConstMatRef<S>& x, Index i, Index t0, Index n) {
    return ChunkSeg<S>(x.data() + i * x.outerStride() + t0, n);
}

/// SIMD helpers over Eigen's packet primitives (the same ones Eigen's own array code uses):
/// a packet of S, loads that zero-pad past the end of a row, and the usual blend idioms.
namespace simd {
template <class S>
using Packet = typename Eigen::internal::packet_traits<S>::type;
template <class S>
inline constexpr Index width = Eigen::internal::unpacket_traits<Packet<S>>::size;
using Eigen::internal::padd;
using Eigen::internal::pand;
using Eigen::internal::pandnot;
using Eigen::internal::pcmp_eq;
using Eigen::internal::pcmp_le;
using Eigen::internal::pcmp_lt;
using Eigen::internal::pexp;
using Eigen::internal::pmax;
using Eigen::internal::pmin;
using Eigen::internal::pmul;
using Eigen::internal::pnegate;
using Eigen::internal::por;
using Eigen::internal::pselect;
using Eigen::internal::psub;
template <class S>
inline Packet<S> set1(S v) {
    return Eigen::internal::pset1<Packet<S>>(v);
}
/// Load entries [k, k + width) of p, zero past n (never reads beyond p[n − 1]).
template <class S>
inline Packet<S> load(const S* p, Index k, Index n) {
    constexpr Index W = width<S>;
    if (k + W <= n) return Eigen::internal::ploadu<Packet<S>>(p + k);
    S buf[W];
    for (Index j = 0; j < W; ++j) buf[j] = k + j < n ? p[k + j] : S(0);
    return Eigen::internal::ploadu<Packet<S>>(buf);
}
/// Store into a chunk buffer (capacity a multiple of the width: full packets are fine).
template <class S>
inline void store(S* p, Index k, const Packet<S>& v) {
    Eigen::internal::pstoreu(p + k, v);
}
/// Store entries [k, min(k + width, n)) into a caller's buffer (never writes past n).
template <class S>
inline void store_n(S* p, Index k, Index n, const Packet<S>& v) {
    constexpr Index W = width<S>;
    if (k + W <= n) return Eigen::internal::pstoreu(p + k, v);
    S buf[W];
    Eigen::internal::pstoreu(buf, v);
    for (Index j = 0; k + j < n; ++j) p[k + j] = buf[j];
}
/// All-ones lanes where x is not NaN.
template <class S>
inline Packet<S> not_nan(const Packet<S>& x) {
    return pcmp_eq(x, x);
}
/// 1 where mask, else 0.
template <class S>
inline Packet<S> indicator(const Packet<S>& mask) {
    return pand(mask, set1<S>(S(1)));
}
}  // namespace simd

static_assert(kTokenChunk % simd::width<float> == 0 && kTokenChunk % simd::width<double> == 0,
              "the chunk length must be a multiple of the packet widths");

/// Σ_k [m_k ≠ 0]·m_k·x_k over n entries (x at masked positions is never used, may be NaN):
/// packet partial sums over blocks of 32 entries in S, each block added to a double total in
/// order (a fixed order: results do not depend on the number of threads).
template <class S>
inline double masked_sum(const S* m, const S* x, Index n) {
    using namespace simd;
    constexpr Index W = width<S>;
    const Packet<S> zero = set1<S>(S(0));
    double total = 0.0;
    for (Index b = 0; b < n; b += 32) {
        const Index e = std::min<Index>(b + 32, n);
        Packet<S> acc = zero;
        for (Index k = b; k < e; k += W) {
            const Packet<S> mk = load(m, k, n);
            acc = padd(acc, pselect(pcmp_eq(mk, zero), zero, pmul(load(x, k, n), mk)));
        }
        total += static_cast<double>(Eigen::internal::predux(acc));
    }
    return total;
}

/// Vectorised token pass. `f(i, t0, n, ChunkOut<S, K>&)` must fill loss, grad and the K stats
/// (each sized n) for tokens [t0, t0 + n) of row i, masked positions included: their values
/// are discarded by a select, so they may be anything, NaN included. Kernels are written as
/// plain loops over the chunk (or Eigen array code) that the compiler vectorises; the only
/// transcendental calls go through Eigen's vectorised array functions. A NaN loss or gradient
/// at an unmasked position is diagnosed exactly as in `token_pass`. Sums use 8 double lanes
/// per chunk (a fixed order, so results do not depend on the number of threads).
template <std::size_t K, class S, class F>
inline TokenPassResult<K> token_pass_vec(const char* function, const ConstMatRef<S>& mask,
                                         const RowWeights& w, const GradWriter<S>& g,
                                         std::initializer_list<NamedInput<S>> inputs, F&& f) {
    const Index B = mask.rows(), T = mask.cols();
    std::vector<double> row_value(static_cast<std::size_t>(B), 0.0);
    std::vector<std::array<double, K>> row_stats(static_cast<std::size_t>(B));
    std::vector<Index> row_nan(static_cast<std::size_t>(B), -1);
    const GradMode gmode = g.mode();
#if defined(RLPO_USE_OPENMP)
#pragma omp parallel for schedule(dynamic, 4) if (B * T > 32768)
#endif
    for (Index i = 0; i < B; ++i) {
        const auto r = static_cast<std::size_t>(i);
        const double c = w.c[r];
        const S gscale = static_cast<S>(c * g.coef());
        S* grow = g.row(i);
        double acc = 0.0;
        std::array<double, K> st{};
        ChunkOut<S, K> o;
        for (Index t0 = 0; t0 < T; t0 += kTokenChunk) {
            const Index n = std::min(kTokenChunk, T - t0);
            const S* mk = mask.data() + i * mask.outerStride() + t0;
            S* gw = grow ? grow + t0 : nullptr;
            bool any = false;
            {
                using namespace simd;
                const Packet<S> zero = set1<S>(S(0));
                Packet<S> nz = zero;
                for (Index k = 0; k < n; k += width<S>)
                    nz = por(nz, pandnot(pcmp_eq(zero, zero), pcmp_eq(load(mk, k, n), zero)));
                S lanes[width<S>];
                Eigen::internal::pstoreu(lanes, nz);
                for (Index j = 0; j < width<S>; ++j) any = any || lanes[j] != S(0);
            }
            if (w.len[r] <= 0 || !any) {
                if (gw && gmode == GradMode::Write)
                    for (Index k = 0; k < n; ++k) gw[k] = S(0);
                continue;
            }
            f(i, t0, n, o);
            const S* L = o.loss.data();
            const S* G = o.grad.data();
            {
                using namespace simd;
                constexpr Index W = width<S>;
                const Packet<S> zero = set1<S>(S(0)), gs = set1<S>(gscale);
                Packet<S> bad = zero;
                for (Index k = 0; k < n; k += W) {
                    const Packet<S> mk_p = load(mk, k, n);
                    const Packet<S> inactive = pcmp_eq(mk_p, zero);
                    const Packet<S> gv = load(G, k, n);
                    const Packet<S> ok = pand(not_nan<S>(load(L, k, n)), not_nan<S>(gv));
                    bad = por(bad, pandnot(pandnot(pcmp_eq(zero, zero), ok), inactive));
                    if (gw) {
                        const Packet<S> gk = pmul(pmul(gv, mk_p), gs);
                        if (gmode == GradMode::Add) {
                            const Packet<S> old = load(static_cast<const S*>(gw), k, n);
                            store_n(gw, k, n, pselect(inactive, old, padd(old, gk)));
                        } else {
                            store_n(gw, k, n, pselect(inactive, zero, gk));
                        }
                    }
                }
                S lanes[W];
                Eigen::internal::pstoreu(lanes, bad);
                bool any_bad = false;
                for (Index j = 0; j < W; ++j) any_bad = any_bad || lanes[j] != S(0);
                if (any_bad) {
                    for (Index k = 0; k < n; ++k)
                        if (mk[k] != S(0) && (std::isnan(L[k]) || std::isnan(G[k]))) {
                            row_nan[r] = t0 + k;
                            break;
                        }
                    break;
                }
            }
            acc += masked_sum(mk, L, n);
            for (std::size_t j = 0; j < K; ++j) st[j] += masked_sum(mk, o.stats[j].data(), n);
        }
        row_value[r] = c * acc;
        row_stats[r] = st;
    }
    TokenPassResult<K> out;
    for (Index i = 0; i < B; ++i) {
        const auto r = static_cast<std::size_t>(i);
        if (row_nan[r] >= 0) fail_nan_at<S>(function, i, row_nan[r], inputs);
        out.value += row_value[r];
        for (std::size_t j = 0; j < K; ++j) out.stats[j] += row_stats[r][j];
    }
    out.count = w.local_tokens;
    return out;
}

/// Fast row factors: the same result as `row_weights` (core/aggregation.hpp) for any mask
/// whose row sums are exact (0/1 masks: partial sums of 32 entries are exact in S;
/// fractional masks may differ in the last bits of |y_i|), with the per-row sums in SIMD
/// packets and rows processed in parallel. Falls back
/// to `row_weights` (which validates and reports) as soon as an entry is not finite or < 0.
template <class S>
inline RowWeights row_weights_fast(const char* function, const ConstMatRef<S>& m,
                                   const Normalizer& norm) {
    const Index B = m.rows(), T = m.cols();
    std::vector<double> len(static_cast<std::size_t>(B), 0.0);
    std::vector<char> bad(static_cast<std::size_t>(B), 0);
#if defined(RLPO_USE_OPENMP)
#pragma omp parallel for schedule(dynamic, 8) if (B * T > 32768)
#endif
    for (Index i = 0; i < B; ++i) {
        using namespace simd;
        constexpr Index W = width<S>;
        const S* row = m.data() + i * m.outerStride();
        const Packet<S> zero = set1<S>(S(0)), big = set1<S>(std::numeric_limits<S>::max());
        Packet<S> okp = pcmp_eq(zero, zero);
        double s = 0.0;
        for (Index b0 = 0; b0 < T; b0 += 32) {
            const Index e = std::min<Index>(b0 + 32, T);
            Packet<S> acc = zero;
            for (Index k = b0; k < e; k += W) {
                const Packet<S> mk = load(row, k, T);
                okp = pand(okp, pand(pcmp_le(zero, mk), pcmp_le(mk, big)));
                acc = padd(acc, mk);
            }
            s += static_cast<double>(Eigen::internal::predux(acc));
        }
        S lanes[W];
        Eigen::internal::pstoreu(lanes, okp);
        bool b = false;
        for (Index j = 0; j < W; ++j) b = b || lanes[j] == S(0);
        len[static_cast<std::size_t>(i)] = s;
        bad[static_cast<std::size_t>(i)] = b ? 1 : 0;
    }
    for (Index i = 0; i < B; ++i)
        if (bad[static_cast<std::size_t>(i)]) return row_weights(function, m, norm);
    // Rebuild with the shared definition of the factors: a one-column "mask" holding the row
    // sums has exactly these lengths, and row_weights derives c_i, N_tok and N_seq from them.
    Mat<double> lens(B, 1);
    for (Index i = 0; i < B; ++i) lens(i, 0) = len[static_cast<std::size_t>(i)];
    Normalizer n2 = norm;
    if (norm.mode == Aggregation::SeqMeanTokenSumNorm && !norm.norm_constant)
        n2.norm_constant = static_cast<double>(T);  // C defaults to the columns of the real mask
    return row_weights(function, lens, n2);
}

}  // namespace rlpo::detail
