#pragma once
/// \file
/// The shared plumbing of the row-level (vocabulary) losses of rlpo/distill (internal).
///
/// A distillation loss has one value L_n per token row n of `[N, V]` logits. The rows belong
/// to sequences through a `[B, T]` row mask with B·T = N (row n ↔ sequence n / T, position
/// n % T), so the five aggregation modes of core/aggregation.hpp apply unchanged: the loss is
/// Σ_n c_{b(n)} m_n L_n. The driver here
///   * builds the row factors from the mask and the Normalizer (global counts supported);
///   * runs the objective's row kernel on every row with m_n ≠ 0, in parallel with OpenMP
///     (blocks of rows taken by whichever thread is free, per-thread scratch rows of V
///     entries: no `[N, V]` temporaries);
///   * hands the kernel a `GradRow` (the GradWriter's row view) that writes scale · (gradient expression) straight into the
///     caller's buffer (overwrite or add), fused with the kernel's last pass over the row;
///   * zeroes (Write) or leaves untouched (Add) the gradient of masked rows, never reading them;
///   * stores per-row values and combines them in row order (bitwise identical results for any
///     thread count) and reports the first bad row after the parallel loop.
/// The dense divergences (divergences.hpp) run their own pipelined driver over the same plan,
/// row gradients and combine step.

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/error.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace rlpo::distill::detail {

/// Storage types accepted for logits: float, double and Eigen::bfloat16.
template <class S>
inline constexpr bool is_logit_scalar_v =
    std::is_same<S, float>::value || std::is_same<S, double>::value ||
    std::is_same<S, Eigen::bfloat16>::value;

/// Arithmetic type: double for double logits, float otherwise (bfloat16 is widened to float).
template <class S>
using acc_t = std::conditional_t<std::is_same<S, double>::value, double, float>;

/// Logit rows need at least one vocabulary entry: `[N, 0]` with N > 0 is rejected
/// (`rlpo::invalid_argument`, "logits: V = 0"), whatever the mask. `[0, V]` (no rows, any V)
/// is a legal empty batch: value 0, empty gradient, metrics 0.
inline void check_vocabulary(const char* fn, const char* name, Index N, Index V) {
    RLPO_CHECK(V > 0 || N == 0, fn, name, ": V = 0 (no vocabulary entries) in [", N, ", ", V,
               "]: a distribution needs at least one entry");
}

/// The student and teacher logits of a distillation objective, `[N, V]` each, viewed in place:
/// the same scalar type (float, double or Eigen::bfloat16, checked at compile time) and the
/// same shape (`rlpo::invalid_argument` otherwise). The entry of every objective that compares
/// two full logit rows (`divergence`, `dac_kl`, `taid`, `nkd`, `sinkhorn`).
template <class DS, class DT>
struct LogitPair {
    using S = ::rlpo::detail::scalar_t<DS>;
    static_assert(is_logit_scalar_v<S>,
                  "rlpo::distill: logits must be float, double or Eigen::bfloat16");
    static_assert(std::is_same<S, ::rlpo::detail::scalar_t<DT>>::value,
                  "rlpo::distill: student and teacher logits must have the same scalar type");
    const ConstMatRef<S> z, y;  ///< student, teacher
    const Index N, V;
    LogitPair(const char* fn, const Eigen::MatrixBase<DS>& student,
              const Eigen::MatrixBase<DT>& teacher)
        : z(student.derived()), y(teacher.derived()), N(z.rows()), V(z.cols()) {
        ::rlpo::detail::check_same_shape(fn, "teacher_logits", y, "student_logits", z);
        check_vocabulary(fn, "student_logits", N, V);
    }
};

template <class A>
using Arr = Eigen::Array<A, Eigen::Dynamic, 1>;
template <class A>
using ArrMap = Eigen::Map<Arr<A>>;
template <class A>
using CArrMap = Eigen::Map<const Arr<A>>;

/// What went wrong in a row (`RowError::fault`), for front ends that word their own messages
/// (penalties/vocab_divergence.hpp).
/// `Overflow`: the row's value is finite but its gradient overflows the storage type (reported
/// as rlpo::numerical_error, after every row's input errors).
enum class RowFault { Other, NaN, PosInf, NoDistribution, Infinite, Overflow };

/// An error found inside the parallel loop, reported after it (exceptions cannot leave an
/// OpenMP region). `what` is a static string; `col` the column or −1; `arg` which logits of a
/// dense divergence (0 the student's, 1 the teacher's; −1 both or none).
struct RowError {
    const char* input = nullptr;
    const char* what = nullptr;
    Index col = -1;
    RowFault fault = RowFault::Other;
    int arg = -1;
    RowError() = default;
    RowError(const char* in, const char* w, Index c, RowFault f = RowFault::Other)
        : input(in), what(w), col(c), fault(f) {}
    bool set() const { return what != nullptr; }
};

/// After a row's gradient was written by a slow path (the exact dense path): an entry that is
/// not finite means the gradient overflows the storage type (its terms are finite in the
/// arithmetic; e.g. float logits near 3e38 at a small τ) — a `RowFault::Overflow` error naming
/// the column. Nothing is checked without a gradient.
template <class S>
inline void check_written_row(const ::rlpo::detail::GradRow<S>& rg, RowError& err) {
    if (!rg.active() || err.set()) return;
    for (Index j = 0; j < rg.V; ++j)
        if (!std::isfinite(static_cast<double>(rg.dst[j]))) {
            err = {"gradient", "is not finite: the row's gradient overflows the storage type", j,
                   RowFault::Overflow};
            return;
        }
}

/// Per-thread scratch: two work rows and two widened copies (bf16 input).
template <class A>
struct Scratch {
    Arr<A> a, b, z, y, s;           ///< work rows a, b; widened logits z, y; streaming chunk s
    Arr<A> m;                       ///< a mixture's log (the exact dense path)
    std::vector<A> saved;           ///< a few saved entries (top-k rows)
    std::vector<Index> order, idx;  ///< DAC-KL: the teacher's order, its top-p region
    std::vector<double> lp;         ///< DAC-KL: the region's log-probs
    void ensure(Index V) {
        if (a.size() != V) {
            a.resize(V);
            b.resize(V);
        }
    }
};

/// The scratch row for a mixture's log, sized V.
template <class A>
inline ArrMap<A> mix_row(Scratch<A>& ws, Index V) {
    if (ws.m.size() != V) ws.m.resize(V);
    return ArrMap<A>(ws.m.data(), V);
}

namespace simd = ::rlpo::detail::simd;

/// SIMD packet of the arithmetic type (core/simd/packet.hpp) and its width.
using simd::Packet;
template <class A>
inline constexpr Index kPacket = simd::width<A>;

/// Chunk length of the online pass: 2 logit chunks + 2 work chunks of floats stay in L1.
inline constexpr Index kRowChunk = 2048;

/// A row of the gradient (core/result.hpp: `GradWriter::row_view`).
using ::rlpo::detail::GradRow;

/// Widen row `r` of `x` into `buf` if S is not the arithmetic type; return a pointer to A data.
template <class A, class S>
inline const A* widen(const ConstMatRef<S>& x, Index r, Arr<A>& buf) {
    if constexpr (std::is_same<S, A>::value) {
        return x.row(r).data();
    } else {
        const Index V = x.cols();
        if (buf.size() != V) buf.resize(V);
        buf = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(x.row(r).data(), V)
                  .template cast<A>();
        return buf.data();
    }
}

/// First NaN column of a row (called only after a NaN was flagged).
template <class A>
inline Index first_nan(const A* x, Index V) {
    for (Index j = 0; j < V; ++j)
        if (std::isnan(x[j])) return j;
    return -1;
}

/// Check a logit row: NaN, +inf and "all −inf" are errors. Returns the row max.
template <class A>
inline A check_row(const A* x, Index V, const char* name, RowError& err) {
    const A mx = CArrMap<A>(x, V).template maxCoeff<Eigen::PropagateNaN>();
    if (std::isnan(mx)) {
        err = {name, "NaN (NaN logits are rejected)", first_nan(x, V), RowFault::NaN};
    } else if (mx == std::numeric_limits<A>::infinity()) {
        Index c = 0;
        while (c < V && !(x[c] == std::numeric_limits<A>::infinity())) ++c;
        err = {name, "+inf logit (the softmax is undefined)", c, RowFault::PosInf};
    } else if (mx == -std::numeric_limits<A>::infinity()) {
        err = {name, "every logit is -inf (no distribution)", -1, RowFault::NoDistribution};
    }
    return mx;
}

/// e = exp((x − max)/T). `Safe`: exact 0 at −inf logits (Eigen's vectorised exp clamps its
/// argument, so exp(−inf) would be ~1e−38, not 0); this uses `select`, which Eigen 3.4 does
/// not vectorise, so it is only taken for rows that contain a −inf. Returns Σ e.
template <bool Safe, class A>
inline A exp_row(const A* x, Index V, A mx, A invT, A* e) {
    const CArrMap<A> xa(x, V);
    ArrMap<A> ea(e, V);
    if constexpr (Safe)
        ea = (xa == -std::numeric_limits<A>::infinity()).select(A(0), ((xa - mx) * invT).exp());
    else
        ea = ((xa - mx) * invT).exp();
    return ea.sum();
}

/// `cond ? e : 0` in the safe path, `e` in the fast path (rows without −inf, where the
/// condition always holds): keeps the fast path free of (scalar) selects.
template <bool Safe, class C, class E>
inline auto keep_if(const C& cond, const E& e) {
    if constexpr (Safe) {
        return cond.select(e, typename E::Scalar(0));
    } else {
        (void)cond;
        return e;
    }
}

/// Whether a row holds a −inf entry (its max is already known to be finite).
template <class A>
inline bool has_neg_inf(const A* x, Index V) {
    return CArrMap<A>(x, V).minCoeff() == -std::numeric_limits<A>::infinity();
}

/// Σ of a vector expression: float (vectorised) within chunks, double across chunks.
template <class E>
inline double sum_chunks(const E& e) {
    double s = 0.0;
    const Index V = e.size();
    for (Index off = 0; off < V; off += kRowChunk)
        s += static_cast<double>(e.segment(off, std::min(kRowChunk, V - off)).sum());
    return s;
}

/// The flattened row mask, the row factors and the counts.
struct RowPlan {
    std::vector<double> m;  ///< m_n (0 = skip)
    std::vector<double> w;  ///< c_{b(n)} · m_n
    double local_rows = 0.0;
};

template <class DM>
inline RowPlan plan_rows(const char* fn, Index N, const Eigen::MatrixBase<DM>& mask,
                         const Normalizer& norm) {
    const auto& mk = mask.derived();
    RLPO_CHECK(mk.rows() * mk.cols() == N, fn, "mask: expected [B, T] with B*T = ", N,
               " (the number of logit rows), given [", mk.rows(), ", ", mk.cols(), "]");
    const RowWeights rw = row_weights(fn, mask, norm);
    RowPlan p;
    p.m.resize(static_cast<std::size_t>(N));
    p.w.resize(static_cast<std::size_t>(N));
    const Index T = mk.cols();
    for (Index n = 0; n < N; ++n) {
        const Index b = T > 0 ? n / T : 0, t = T > 0 ? n % T : 0;
        const double mv = static_cast<double>(mk(b, t));
        p.m[static_cast<std::size_t>(n)] = mv;
        p.w[static_cast<std::size_t>(n)] = rw.c[static_cast<std::size_t>(b)] * mv;
    }
    p.local_rows = rw.local_tokens;
    return p;
}

/// What an entry point over N rows of V entries holds through its pass: the row plan
/// (`plan_rows`), the result, and the writer of its `[N, V]` gradient. Entry points end with
/// `return std::move(c.res);`.
template <class S>
struct RowCall {
    RowPlan plan;
    Result<S> res;
    ::rlpo::detail::GradWriter<S> g;
    template <class DM>
    RowCall(const char* fn, Index N, Index V, const Eigen::MatrixBase<DM>& mask,
            const Normalizer& norm, const GradientOut<S>& out)
        : plan(plan_rows(fn, N, mask, norm)), res(), g(fn, res, out, N, V) {}
    RowCall(const RowCall&) = delete;
    RowCall& operator=(const RowCall&) = delete;
};

/// Result of a driven pass.
struct PassResult {
    double value = 0.0;   ///< Σ_n c m L_n (before the GradientOut coefficient)
    double metric = 0.0;  ///< Σ_n m L_n
    double aux = 0.0;     ///< Σ_n m aux_n (an objective's second statistic)
    double count = 0.0;   ///< Σ_n m
};

/// The infinite-divergence error of a row whose value is not finite.
inline RowError infinite_divergence_error() {
    return {"inputs",
            "the divergence is infinite or undefined (the student or teacher puts "
            "zero probability where the other has mass)",
            -1, RowFault::Infinite};
}

/// The first row overflow (`RowFault::Overflow`) as rlpo::numerical_error. Called after every
/// row's input errors were reported: an invalid_argument of any row outranks an overflow.
inline void report_overflows(const char* fn, const std::vector<RowError>& errs, Index N) {
    for (Index n = 0; n < N; ++n) {
        const RowError& e = errs[static_cast<std::size_t>(n)];
        if (e.set() && e.fault == RowFault::Overflow)
            ::rlpo::detail::fail_numerical(fn, e.input, ": entry [", n, ", ", e.col, "] ", e.what);
    }
}

/// Combine per-row results in row order (identical for any thread count); report the first
/// bad row under a non-zero mask.
inline PassResult combine_rows(const char* fn, const RowPlan& plan, Index N,
                               const std::vector<double>& loss, const std::vector<double>& aux,
                               const std::vector<RowError>& errs, double row_scale) {
    PassResult out;
    for (Index n = 0; n < N; ++n) {
        const auto k = static_cast<std::size_t>(n);
        if (errs[k].set()) {
            if (errs[k].fault == RowFault::Overflow) continue;  // reported below
            if (errs[k].col >= 0)
                ::rlpo::detail::fail(fn, errs[k].input, ": ", errs[k].what, " at [", n, ", ",
                                     errs[k].col, "] (row under a non-zero mask)");
            ::rlpo::detail::fail(fn, errs[k].input, ": ", errs[k].what, " in row ", n,
                                 " (row under a non-zero mask)");
        }
        if (plan.m[k] == 0) continue;
        out.value += plan.w[k] * loss[k] * row_scale;
        out.metric += plan.m[k] * loss[k] * row_scale;
        out.aux += plan.m[k] * aux[k];
    }
    out.count = plan.local_rows;
    report_overflows(fn, errs, N);
    return out;
}

/// After a pass: the gradient rows written under an at-risk row factor (`GradWriter::
/// factor_at_risk`: a Normalizer count near 0, an extreme mask weight) must be finite, else
/// rlpo::numerical_error. Serial, O(N) when no row is at risk. Called after the rows' input
/// errors were reported (an invalid_argument outranks an overflow).
template <class S>
inline void check_risky_rows(const char* fn, const RowPlan& plan, Index N, Index V,
                             const ::rlpo::detail::GradWriter<S>& g, double row_scale) {
    if (!g.active()) return;
    for (Index n = 0; n < N; ++n) {
        const auto k = static_cast<std::size_t>(n);
        const double f = g.coef() * plan.w[k] * row_scale;
        if (plan.m[k] != 0 && g.factor_at_risk(f)) g.check_row_finite(fn, n, V, f);
    }
}

/// The gradient row n as the kernels write it (`GradWriter::row_view`): scale = coef · c · m ·
/// `row_scale`, with the scratch's chunk buffer for streaming stores.
template <class S, class A>
inline GradRow<S> make_row_grad(const ::rlpo::detail::GradWriter<S>& g, const RowPlan& plan,
                                Index n, Index V, double row_scale, Scratch<A>& ws) {
    GradRow<S> rg = g.row_view(n, V, plan.w[static_cast<std::size_t>(n)], row_scale);
    if constexpr (std::is_same<S, float>::value && std::is_same<A, float>::value) {
        if (ws.s.size() < kRowChunk) ws.s.resize(kRowChunk);
        rg.stream_buf = ws.s.data();
        rg.stream_len = kRowChunk;
    }
    return rg;
}

/// Run `kernel(n, scratch, grad, err, aux) -> L_n` over the unmasked rows. `grad.set(expr)`
/// must be called exactly once per row when `grad.active()`; the scale it applies is
/// coef · c · m · `row_scale`. A non-finite L_n is an error ("infinite divergence").
template <class S, class A, class K>
inline PassResult drive_rows(const char* fn, const RowPlan& plan, Index N, Index V,
                             const ::rlpo::detail::GradWriter<S>& g, double row_scale, K&& kernel) {
    std::vector<double> loss(static_cast<std::size_t>(N), 0.0),
        aux(static_cast<std::size_t>(N), 0.0);
    std::vector<RowError> errs(static_cast<std::size_t>(N));
    const bool add = g.mode() == GradMode::Add;
    ::rlpo::detail::parallel_region(N * V > 32768 && N > 1, [&](const ::rlpo::detail::Team& team) {
        Scratch<A> ws;
        team.for_blocks(N, [&](Index lo, Index hi) {
            for (Index n = lo; n < hi; ++n) {
                const auto k = static_cast<std::size_t>(n);
                S* dst = g.row(n);
                if (plan.m[k] == 0) {
                    if (dst && !add)
                        Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>(dst, V).setZero();
                    continue;
                }
                ws.ensure(V);
                const GradRow<S> rg = make_row_grad<S, A>(g, plan, n, V, row_scale, ws);
                RowError err;
                double ax = 0.0;
                const double L = kernel(n, ws, rg, err, ax);
                if (!err.set() && !std::isfinite(L)) err = infinite_divergence_error();
                errs[k] = err;
                loss[k] = L;
                aux[k] = ax;
            }
        });
        simd::store_fence();  // order the streaming stores before the results are used
    });
    const PassResult out = combine_rows(fn, plan, N, loss, aux, errs, row_scale);
    check_risky_rows(fn, plan, N, V, g, row_scale);
    return out;
}

}  // namespace rlpo::distill::detail
