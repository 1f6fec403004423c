#pragma once
/// \file
/// The merge stages of the pipelined fast path (internal): after stage 1 a row's chunk maxima
/// and sums are merged as in an online softmax (`finish_stage1`), after stage 2 the value and
/// the gradient constants are formed (`finish_stage2`), and JSD's lean sweep picks the form
/// of each chunk (`lean_chunk_forms`). The terms of each kind are its `KindMath`
/// (divergence/kinds/).

#include <rlpo/divergence/detail/arith.hpp>
#include <rlpo/divergence/detail/kind_math.hpp>
#include <rlpo/divergence/detail/kind_registry.hpp>
#include <rlpo/divergence/detail/slot.hpp>

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <type_traits>

namespace rlpo::distill::detail {

/// The largest |logit/τ| of a row that the divergences take on the fast path, for every
/// logit of both rows (its maxima and its minima: `finish_stage1`); rows beyond take the exact
/// path.
inline constexpr double kFastLogitRange = 1048576.0;  // 2^20

/// The largest spread of a row over τ (row maximum minus row minimum) for which double's
/// fast exponential of every entry (relative to its row maximum) is exact rather than clamped:
/// the kinds with a ratio of probabilities (`KindMath::kMassRatio`) need no more.
inline constexpr double kExactExpRange = 700.0;

/// JSD's lean sweep: c_k = β f_p/f_q per chunk for l = log((1−β) + c_k e_p/e_q), or −1 where
/// that form is not safe and the chunk takes the log form (see `kLeanCapable`): e_q may be
/// subnormal (t_min < −125), f_q is 0, or c_k ρ may overflow (log2 c_k − t_min ≥ 120).
template <class S, class A>
inline void lean_chunk_forms(const DenseCtx<A>& c, Slot<S, A>& a) {
    const bool all_log = c.lean_log_form;
    for (Index k = 0; k < c.nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double fq = static_cast<double>(a.f0[kk]), fp = static_cast<double>(a.f1[kk]);
        const double ck = static_cast<double>(c.beta) * fp / fq,
                     tm = static_cast<double>(a.tmin[kk]);
        // (ilogb(c_k) ≤ log2 c_k < ilogb(c_k) + 1; ilogb(0) is FP_ILOGB0, negative)
        const bool ok = !all_log && fq > 0 && tm >= -125.0 && std::isfinite(ck) &&
                        (ck == 0 || std::ilogb(ck) + 1 - tm < 120.0);
        a.ck[kk] = ok ? static_cast<A>(ck) : A(-1);
    }
}

/// After stage 1 of row `a`: merge the chunk maxima and sums (as an online softmax), and set
/// up the next stage (for forward / reverse KL the value and the gradient factors, with the
/// row's gradient scale folded in). False when the row needs the exact path (a non-finite
/// maximum, sum or value: NaN, ±inf or a −inf logit somewhere).
template <Divergence D, class S, class A>
inline bool finish_stage1(const DenseCtx<A>& c, Slot<S, A>& a) {
    constexpr double kLn2 = 0.6931471805599453;
    const double invT = static_cast<double>(c.invT);
    double mz = -std::numeric_limits<double>::infinity(), my = mz;
    double lo = std::numeric_limits<double>::infinity();  // the least logit of both rows
    for (Index k = 0; k < c.nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double zk = static_cast<double>(a.mz[kk]), yk = static_cast<double>(a.my[kk]);
        if (!(std::abs(zk) < std::numeric_limits<double>::infinity()) ||
            !(std::abs(yk) < std::numeric_limits<double>::infinity()))
            return false;
        mz = std::max(mz, zk);
        my = std::max(my, yk);
        lo = std::min(lo, std::min(static_cast<double>(a.lz[kk]), static_cast<double>(a.ly[kk])));
    }
    // The value sweep of the three-stage divergences forms log q = z/τ + c_q from the raw
    // logit (and their exponent arguments z·a − fl(max·a)): the rounding is relative to
    // |z/τ|, not to the logits' differences. Beyond |logit/τ| = 2^20 (about 1e6) that costs
    // more than the float / double tolerance of the value (identical rows at 1e14 gave
    // log V, a JSD at 1e17 came out negative), so such rows take the exact path, which
    // subtracts the row maximum first. Forward and reverse KL subtract the chunk maxima
    // (x − max), so their rounding needs no bound, but their per-entry terms do: with logits
    // near float's maximum and a small τ, (x − max)/τ overflows (a NaN value or gradient), and
    // reverse KL's q (h − E_q h)/τ grows with |logit/τ|. The bound holds for the minima too:
    // a row's spread over τ, not only its maxima, sizes the per-entry log-ratios (x − max)/τ
    // (a teacher logit of −3e38 beside ordinary ones at τ = 1e−3 made reverse KL's gradient
    // inf, and a student one NaN, with a finite value; double's exponential, which clamps its
    // argument near −709 to e^−709 instead of 0, turned such a ratio into a wrong value). The
    // same bound for every kind keeps the fast path's per-entry terms below 2^21/τ
    // (`GradWriter::factor_at_risk`); rows beyond take the exact path, which checks its written
    // gradient. (A −inf logit fails it as well: the exact path gives it probability 0.)
    if (std::max(std::max(std::abs(mz), std::abs(my)), std::abs(lo)) * invT > kFastLogitRange)
        return false;
    // A ratio of the two probabilities (χ²'s q/p, `KindMath::kMassRatio`) is exact only where
    // both exponentials are, however small. In double the fast exponential clamps arguments
    // below about −708 to a positive minimum instead of 0 (float's flushes to 0, and the ratio
    // then comes out non-finite and sends the row to the exact path by itself): a row spread
    // over τ beyond that gave a finite, wrong value and an inf gradient (e.g. a teacher logit
    // of −120 beside −2 at τ = 1e−3; found by fuzzing). Such rows take the exact path.
    if constexpr (KindMath<D>::kMassRatio && std::is_same<A, double>::value)
        if ((std::max(mz, my) - lo) * invT > kExactExpRange) return false;
    // Stage 1 summed the KL terms over logits shifted by their chunk maxima (dz = z − mz_k,
    // dy = y − my_k); the shifts come back here in double, as differences of maxima only, so
    // that large logits (rows offset by hundreds) cost no float digits. The chunk factors
    // e^(dz_k/τ) (with kFusedArg over 2^δ, `ShiftedExp::delta`) in one vectorised pass first,
    // m0 and m1 holding their exponents: the merge is serial in the row split.
    using K = KindMath<D>;
    const auto nck = static_cast<std::size_t>(c.nc);
    auto delta = [&](A m) {
        if constexpr (kFusedArg<D, A>) {
            return ShiftedExp<A>::delta(m, c.invT);
        } else {
            static_cast<void>(m);
            return 0.0;
        }
    };
    // (explicit multiply-adds: this loop may be vectorised, and a compiler must not contract
    // its head, body and tail differently — which entries fall where depends on allocation)
    for (std::size_t kk = 0; kk < nck; ++kk) {
        a.m0[kk] = std::fma(static_cast<double>(a.mz[kk]) - mz, invT, -(delta(a.mz[kk]) * kLn2));
        a.m1[kk] = std::fma(static_cast<double>(a.my[kk]) - my, invT, -(delta(a.my[kk]) * kLn2));
    }
    Eigen::Map<Eigen::ArrayXd, Eigen::AlignedMax> e0(a.m0.data(), c.nc), e1(a.m1.data(), c.nc);
    e0 = e0.exp();
    e1 = e1.exp();
    double sq = 0, sp = 0, x = 0;
    for (Index k = 0; k < c.nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double dzk = static_cast<double>(a.mz[kk]) - mz,
                     dyk = static_cast<double>(a.my[kk]) - my;
        const double ez = a.m0[kk], ey = a.m1[kk];
        const double dlz = delta(a.mz[kk]), dly = delta(a.my[kk]);
        // (explicit multiply-adds throughout, here and in the kinds' `merge1`: a compiler
        // free to contract would not have to do it the same way in every copy of this code,
        // and results must not depend on the copy that runs)
        using std::fma;
        x = K::template merge1<kFusedArg<D, A>>(
            x, Merge1Chunk{ez, ey, a.s0[kk], a.s1[kk], a.s2[kk], dzk, dyk, dlz, dly, invT});
        sq = fma(a.s0[kk], ez, sq);
        sp = fma(a.s1[kk], ey, sp);
        a.m0[kk] = a.s0[kk] * ez;  // the chunk's masses, normalised below
        a.m1[kk] = a.s1[kk] * ey;
        a.s0[kk] = ez;  // keep the chunk factors
        a.s1[kk] = ey;
    }
    if (!std::isfinite(sq + sp + x)) return false;
    const double lsq = std::log(sq), lsp = std::log(sp);
    const double scale = a.rg.scale;
    const Merge1Row row{invT, sq, sp, lsq, lsp};
    if constexpr (!kThreeStage<D>) {
        // the value, and the gradient's chunk factors with the row's scale folded in
        const double L = K::value1(x, row);
        if (!std::isfinite(L)) return false;
        a.L = L;
        const double iq = scale * invT / sq, ip = scale * invT / sp;
        for (Index k = 0; k < c.nc; ++k) {
            const auto kk = static_cast<std::size_t>(k);
            a.f0[kk] = static_cast<A>(a.s0[kk] * iq);
            const double dzk = static_cast<double>(a.mz[kk]) - mz,
                         dyk = static_cast<double>(a.my[kk]) - my;
            a.f1[kk] = K::template factor1<A>(row, a.s1[kk], ip, dzk, dyk, L);
        }
    } else {
        a.cq = std::fma(-mz, invT, -lsq);
        a.cp = std::fma(-my, invT, -lsp);
        K::merge1_row(x, row, a.kpq);
        const double iq = 1 / sq, ip = 1 / sp;
        for (Index k = 0; k < c.nc; ++k) {
            const auto kk = static_cast<std::size_t>(k);
            a.f0[kk] = static_cast<A>(a.s0[kk] * iq);
            a.f1[kk] = static_cast<A>(a.s1[kk] * ip);
            a.m0[kk] *= iq;
            a.m1[kk] *= ip;
        }
        if constexpr (kLeanCapable<D, A>)
            if (c.lean) lean_chunk_forms(c, a);
    }
    return true;
}

/// After stage 2 of row `b` (three-stage divergences): the value, and the gradient constants
/// q_j (h_j − c0) · c1. False when the value is not finite (the exact path decides).
template <Divergence D, class S, class A>
inline bool finish_stage2(const DenseCtx<A>& c, Slot<S, A>& b) {
    using K = KindMath<D>;
    // the value sweep's sums, times the chunk factors where the kind summed e_q·(…) or
    // e_p·(…) (JSD, TVD; explicit multiply-adds, as in `finish_stage1`)
    double u1 = 0, u2 = 0;
    for (Index k = 0; k < c.nc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double f0 = static_cast<double>(b.f0[kk]), f1 = static_cast<double>(b.f1[kk]);
        u1 = std::fma(K::v1_weight(f0, f1), b.s0[kk], u1);
        u2 = std::fma(K::v2_weight(f0, f1), b.s1[kk], u2);
    }
    // With kFusedArg, stage 2 formed log q and log p with the row constants rounded to float,
    // off by e = c − fl(c) at every entry: the value sums lack e·Σq = e (log q) or e·Σp = e
    // (log p). The gradient needs no correction: it uses h − Σ q h, in which e cancels.
    double eq = 0, ep = 0;
    if constexpr (kFusedArg<D, A>) {
        eq = b.cq - static_cast<double>(static_cast<A>(b.cq));
        ep = b.cp - static_cast<double>(static_cast<A>(b.cp));
    }
    // JSD: r = log q − log M lacks eq at every entry, so Σ q r lacks eq·Σq = eq and Σ p r
    // lacks eq·Σp = eq. The lean sweep sums l = −r instead (negated below); in its log-form
    // chunks r = −l lacks e_k = log f_k − fl(log f_k): Σ_k e_k × the chunk's mass of q (of p).
    double rq = eq, rp = eq;
    bool lean = false;
    if constexpr (kLeanCapable<D, A>) {
        lean = c.lean;
        if (lean) {
            rq = rp = 0;
            for (Index k = 0; k < c.nc; ++k) {  // s2: e_k, left by stage 2 (0: ratio form)
                const auto kk = static_cast<std::size_t>(k);
                rq = std::fma(b.s2[kk], b.m0[kk], rq);
                rp = std::fma(b.s2[kk], b.m1[kk], rp);
            }
            u1 = -u1;  // Σ p r, Σ q r
            u2 = -u2;
        }
    }
    // the kind's value and gradient constants (`KindMath::finish2`); false: the exact path
    Finish2 f{};
    f.u1 = f.L = u1;
    f.u2 = u2;
    f.rq = rq;
    f.rp = rp;
    f.ecq = eq;
    f.ecp = ep;
    f.kpq = b.kpq;
    f.beta = static_cast<double>(c.beta);
    f.omb = static_cast<double>(c.omb);
    f.lean = lean;
    f.factor = static_cast<double>(c.invT);
    if (!K::template finish2<A>(f)) return false;
    if (!std::isfinite(f.L) || !std::isfinite(f.u2)) return false;
    b.L = f.L;
    b.c0 = static_cast<A>(lean ? -f.u2 : f.u2);  // Σ q × the stored factor (r, or l = −r)
    b.c1 = static_cast<A>(f.factor * b.rg.scale);
    return true;
}

}  // namespace rlpo::distill::detail
