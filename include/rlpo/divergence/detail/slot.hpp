#pragma once
/// \file
/// The state of the pipelined fast path (internal): a row in flight (`Slot`, its gradient a
/// `GradRow` of core/result.hpp), the constants of a pass (`DenseCtx`), and which form of the
/// pipeline a divergence takes (`kThreeStage`, `kFusedArg`, JSD's lean sweep `kLeanCapable`),
/// from the traits of its `KindMath` (divergence/kinds/).

#include <rlpo/core/simd/packet.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/arith.hpp>
#include <rlpo/divergence/detail/kind_registry.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace rlpo::distill::detail {

/// One row in flight through the pipelined fast path (`dense_rows_fast`).
template <class S, class A>
struct Slot {
    Index n = -1;          ///< the row; −1: empty
    const A* z = nullptr;  ///< its logits in the arithmetic type
    const A* y = nullptr;
    const A* nz = nullptr;           ///< the next row's logits, prefetched (from the
    const A* ny = nullptr;           ///< thread's first chunk) during the last chunk of stage 1
    Arr<A> zb, yb;                   ///< widened copies (bfloat16 input only)
    A* w0 = nullptr;                 ///< work rows (a pair of the thread's work buffers,
    A* w1 = nullptr;                 ///< shared in place with the row two stages ahead)
    std::vector<A> mz, my;           ///< chunk maxima
    std::vector<A> lz, ly;           ///< chunk minima (the row's spread, `finish_stage1`)
    std::vector<double> s0, s1, s2;  ///< per-chunk sums of the stage the row is in
    std::vector<A> f0, f1;           ///< per-chunk factors of the row's next stage
    /// per chunk: the exponents of the chunk factors, then their exponentials (every
    /// divergence, scratch of `finish_stage1`), then the probability masses of q and p (JSD).
    /// Aligned, so that the vectorised exp in `finish_stage1` treats every entry the same
    /// way whatever the allocation (a packet versus an unaligned head entry would differ)
    std::vector<double, Eigen::aligned_allocator<double>> m0, m1;
    std::vector<A> tmin;    ///< JSD lean: the chunk's least student exponent argument
    std::vector<A> ck;      ///< JSD lean: β f_p/f_q of the chunk; −1: log form
    A c0 = 0, c1 = 0;       ///< row constants of the row's next stage
    double cq = 0, cp = 0;  ///< log q = z/τ + cq, log p = y/τ + cp (row constants)
    double kpq = 0;         ///< JSD: KL(p‖q), from stage 1
    double L = 0.0;
    GradRow<S> rg;  ///< its gradient row (GradWriter::row_view)
    void size(Index nc) {
        const auto k = static_cast<std::size_t>(nc);
        mz.resize(k);
        my.resize(k);
        lz.resize(k);
        ly.resize(k);
        s0.resize(k);
        s1.resize(k);
        s2.resize(k);
        f0.resize(k);
        f1.resize(k);
        m0.resize(k);
        m1.resize(k);
        tmin.resize(k);
        ck.resize(k);
    }
};

/// Constants of a pass.
template <class A>
struct DenseCtx {
    A invT, beta, omb, al, oma;
    Index V, nc;
    bool lean = false;           ///< JSD's lean value sweep (`kLeanCapable`)
    bool lean_log_form = false;  ///< every lean chunk in log form (`FastPathTuning`)
};

/// Whether a divergence takes the three-stage pipeline (a value sweep between the
/// exponentials and the gradient; `KindMath<D>::kStages`).
template <Divergence D>
inline constexpr bool kThreeStage = KindMath<D>::kStages == 3;

/// Whether stage 1 forms the exponent in one multiply-add (`ShiftedExp::packet_fused`):
/// float, a hardware multiply-add (without one `pmadd` rounds the product), and a divergence
/// whose stage 1 needs only the exponentials (the three-stage ones).
template <Divergence D, class A>
inline constexpr bool kFusedArg =
#if defined(__FMA__) || defined(EIGEN_VECTORIZE_FMA)
    std::is_same<A, float>::value&& kThreeStage<D>;
#else
    false;
#endif

/// Whether JSD (`KindMath<D>::kLean`) can take the lean value sweep, chosen for long rows
/// (`dense_rows_fast`). Its
/// stage 2 reads no logits (4 rows in flight in a thread instead of 7). With q = e_q f_q and
/// p = e_p f_p (f the chunk factors), log(M/q) = log((1−β) + c_k ρ), ρ = e_p/e_q, c_k =
/// β f_p/f_q, so stage 2 forms l = −r = log(M/q) from the two stored exponentials alone: a
/// division and one log per entry, no exponential, and no cancellation of
/// log q against log M. That needs e_q normal and c_k ρ finite; stage 1 keeps the chunk's
/// least exponent argument t_min (ρ ≤ 2^−t_min, as the teacher's arguments are ≤ 0 up to
/// the rounding δ), and `finish_stage1` sends a chunk with t_min < −125, a zero f_q or
/// log2 c_k − t_min ≥ 120 to the log form l = log M − log q instead, with log q = t·ln 2 +
/// fl(log f_q) from the student's logits (re-read for that chunk only; the rounding of
/// fl(log f_q) comes back in `finish_stage2`). Which form a chunk takes depends on the row's
/// data only, never on the threads.
template <Divergence D, class A>
inline constexpr bool kLeanCapable = KindMath<D>::kLean&& kFusedArg<D, A>;

/// log f of a chunk factor of the lean sweep's log form, rounded to float, and its rounding
/// e = log f − fl(log f) (a factor 0 — the chunk's probabilities all underflow — takes the
/// log of the smallest subnormal: finite, and multiplied by zero probabilities only).
template <class A>
inline A lean_log_factor(A f, double& e) {
    const double l =
        std::log(static_cast<double>(f > A(0) ? f : std::numeric_limits<A>::denorm_min()));
    const A r = static_cast<A>(l);
    e = l - static_cast<double>(r);
    return r;
}

}  // namespace rlpo::distill::detail
