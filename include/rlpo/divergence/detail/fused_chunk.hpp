#pragma once
/// \file
/// One chunk of the pipelined fast path (internal): stage 1 (exponentials, sums, KL value
/// terms), stage 2 (the value sweep of the three-stage divergences) and stage 3 (the gradient
/// write) of up to three rows in one fused sweep, and the dispatch over the stages present.
/// The per-entry math of each kind is its `KindMath` (divergence/kinds/).

#include <rlpo/core/simd/fast_math.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/divergence/detail/arith.hpp>
#include <rlpo/divergence/detail/kind_math.hpp>
#include <rlpo/divergence/detail/kind_registry.hpp>
#include <rlpo/divergence/detail/slot.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace rlpo::distill::detail {

/// One chunk of up to three rows in one fused sweep (the pipelined fast path):
///   * stage 1 on row `a`: exponentials of both rows (stored to the work rows), their sums
///     and the KL value terms, and the maxima and minima of the next chunk (read one chunk
///     ahead);
///   * stage 2 on row `b` (three-stage divergences): q and p normalised, the value terms, and
///     the per-entry factor of the gradient (work rows, in cache);
///   * stage 3 on row `g`: the gradient, written once.
/// Entries [lv, len) — at most one packet, in the last chunk — are done entry by entry.
template <Divergence D, bool St1, bool St2, bool St3, bool Lean, class S, class A>
inline void fused_chunk(const DenseCtx<A>& c, Index k, Index kbeg, Index kend, Slot<S, A>* a,
                        Slot<S, A>* b, Slot<S, A>* g) {
    namespace ei = Eigen::internal;
    using P = Packet<A>;
    constexpr Index W = kPacket<A>;
    constexpr Index C = kRowChunk;
    constexpr A inf = std::numeric_limits<A>::infinity();
    const Index off = k * C, len = std::min(C, c.V - off), lv = len - len % W;
    const auto kk = static_cast<std::size_t>(k);
    const P zero = ei::pset1<P>(A(0));
    // stage 1
    const bool la = St1 && k + 1 < kend;  // the next chunk's maxima (same thread's range)
    const Index nlen = la ? std::min(C, c.V - off - C) : 0, nlv = nlen - nlen % W;
    const ShiftedExp<A> ez(St1 ? a->mz[kk] : A(0), c.invT), ey(St1 ? a->my[kk] : A(0), c.invT);
    const P pmz = ei::pset1<P>(ez.m), pmy = ei::pset1<P>(ey.m);
    const A* za = St1 ? a->z + off : nullptr;
    // the last chunk of the thread's range prefetches the first of the next row
    const A* pz = St1 && !la && a->nz ? a->nz + kbeg * C : nullptr;
    const A* py = St1 && !la && a->ny ? a->ny + kbeg * C : nullptr;
    const Index plv = pz ? std::min(C, c.V - kbeg * C) : 0;
    const A* ya = St1 ? a->y + off : nullptr;
    A* wa0 = St1 ? a->w0 + off : nullptr;
    A* wa1 = St1 ? a->w1 + off : nullptr;
    P s1 = zero, s2 = zero, s3 = zero, nz = ei::pset1<P>(-inf), ny = nz;
    P lz = ei::pset1<P>(inf), ly = lz;  // the next chunk's minima
    P tmn = ei::pset1<P>(inf);          // lean: the least exponent argument of the student
    // stage 2
    A* wb0 = St2 ? b->w0 + off : nullptr;
    A* wb1 = St2 ? b->w1 + off : nullptr;
    const A* zb = St2 ? b->z + off : nullptr;
    const A* yb = St2 ? b->y + off : nullptr;
    const A fq = St2 ? b->f0[kk] : A(0), fp = St2 ? b->f1[kk] : A(0);
    const A mq = c.omb * fq, mp = c.beta * fp;  // JSD's mixture weights of eq, ep
    // log q = (z − mz_k)/τ + cq_k: small terms only, no cancellation of large logits. With a
    // hardware multiply-add (kFusedArg) log q = fma(z, 1/τ, fl(cq)) on the raw logit instead:
    // z/τ is exact inside it, and fl(cq)'s rounding, the same for the whole row, comes back
    // in `finish_stage2`.
    constexpr bool kRawLog = kFusedArg<D, A>;
    const A mzb = St2 && !kRawLog ? b->mz[kk] : A(0), myb = St2 && !kRawLog ? b->my[kk] : A(0);
    const double it = static_cast<double>(c.invT);
    const A cq = St2 ? static_cast<A>(b->cq + static_cast<double>(mzb) * it) : A(0);
    const A cp = St2 ? static_cast<A>(b->cp + static_cast<double>(myb) * it) : A(0);
    P u1 = zero, u2 = zero;
    A v1 = 0, v2 = 0;  // (entry-by-entry tail)
    // lean: l = log((1−β) + c_k e_p/e_q), or the log form for a chunk marked by c_k < 0
    const A ckk = St2 && Lean ? b->ck[kk] : A(0);
    const bool logform = St2 && Lean && ckk < A(0);
    const A omb = c.omb;  // (a local: the stores below could alias c)
    // stage 3
    const A* wg0 = St3 ? g->w0 + off : nullptr;
    const A* wg1 = St3 ? g->w1 + off : nullptr;
    const A h0 = St3 ? g->f0[kk] : A(0), h1 = St3 ? g->f1[kk] : A(0);
    const A k0 = St3 ? g->c0 : A(0), k1 = St3 ? g->c1 : A(0), hk = h0 * k1, nk = -(k0 * hk);
    // the gradient row's packet view from this chunk on (streamed when overwritten and aligned)
    GradRow<S> sink;
    if constexpr (St3) sink = g->rg.template from<P>(off);
    const A invT = c.invT;
    // software prefetch distance (entries) ahead of the next-chunk reads
    constexpr Index kPf = 512;
    // the kind's per-entry math (`KindMath`), on packets (op) and on the tail's scalars (os)
    using K = KindMath<D>;
    const ChunkConsts<A> kc{invT, fq, fp, mq, mp, cq, cp, c.al, c.oma, ckk, omb, h0, h1, hk, nk};
    const EntryOps<A, true, kRawLog> op{kc};
    const EntryOps<A, false, kRawLog> os{kc};

    // Stage 2 (`KindMath::stage2`) takes the unnormalised exponentials eq, ep of the chunk
    // (q = eq·fq, p = ep·fp) and the shifted logits zv, yv; it gives the per-entry gradient
    // factor `o2` (stored to w1) and two value sums v1, v2 that `finish_stage2` scales by the
    // chunk factors where they are sums of eq·(…) or ep·(…) (JSD, TVD: two multiplies fewer
    // per entry).

    // Lean, log form (rare: see `kLeanCapable`): l = log M − log q, log q = t·ln 2 + fl(log
    // f_q) with t recomputed from the student's logits exactly as stage 1 formed it; the
    // rounding of fl(log f_q) goes to s2 for `finish_stage2` (0 for the other chunks). The
    // chunk's stage 2 is done here and skipped in the fused loop below (its rows are not
    // touched by the other two stages).
    if constexpr (St2 && Lean) {
        double lqe = 0;
        if (logform) {
            const A lqk = lean_log_factor(fq, lqe);
            const ShiftedExp<A> eb(b->mz[kk], c.invT);
            for (Index j = 0; j < lv; j += W) {
                const P eq = ei::ploadu<P>(wb0 + j), ep = ei::ploadu<P>(wb1 + j);
                const P l = K::lean_log(op, eq, ep, eb.packet_arg(ei::ploadu<P>(zb + j)), lqk);
                u1 = ei::pmadd(ep, l, u1);
                u2 = ei::pmadd(eq, l, u2);
                ei::pstoreu(wb1 + j, l);
            }
            for (Index j = lv; j < len; ++j) {
                const A l = K::lean_log(os, wb0[j], wb1[j], eb.scalar_arg(zb[j]), lqk);
                v1 = madd_as_packet(wb1[j], l, v1);
                v2 = madd_as_packet(wb0[j], l, v2);
                wb1[j] = l;
            }
        }
        b->s2[kk] = lqe;
    }

    // Stage 3 reads its entries before stage 1 overwrites them: rows two stages apart share
    // one pair of work buffers. (Unrolled by two: 2–3 % faster in paired runs at
    // 2048 × 32768, all four benchmarked divergences; the same arithmetic in the same order.)
    RLPO_DISTILL_UNROLL2
    for (Index j = 0; j < lv; j += W) {
        if constexpr (St3) {
            const P x0 = ei::ploadu<P>(wg0 + j), x1 = ei::ploadu<P>(wg1 + j);
            sink.packet(j, K::grad(op, x0, x1));
        }
        if constexpr (St2 && Lean) {
            // l = log((1−β) + c_k e_p/e_q) = −r over e_p; e_q stays for stage 3
            if (!logform) {
                const P eq = ei::ploadu<P>(wb0 + j), ep = ei::ploadu<P>(wb1 + j);
                const P l = K::lean_ratio(op, eq, ep);
                u1 = ei::pmadd(ep, l, u1);
                u2 = ei::pmadd(eq, l, u2);
                ei::pstoreu(wb1 + j, l);
            }
        } else if constexpr (St2) {
            P o2;
            P zv = ei::ploadu<P>(zb + j), yv = ei::ploadu<P>(yb + j);
            if constexpr (!kRawLog) {
                zv = ei::psub(zv, ei::pset1<P>(mzb));
                yv = ei::psub(yv, ei::pset1<P>(myb));
            }
            K::stage2(op, ei::ploadu<P>(wb0 + j), ei::ploadu<P>(wb1 + j), zv, yv, o2, u1, u2);
            // e_q stays (stage 3 multiplies by the chunk factor again)
            ei::pstoreu(wb1 + j, o2);
        }
        if constexpr (St1) {
            if (la && j < nlv) {
                simd::prefetch_l1(za + C + kPf + j);
                simd::prefetch_l1(ya + C + kPf + j);
                const P vz = ei::ploadu<P>(za + C + j), vy = ei::ploadu<P>(ya + C + j);
                nz = ei::pmax(nz, vz);
                ny = ei::pmax(ny, vy);
                lz = ei::pmin(lz, vz);
                ly = ei::pmin(ly, vy);
            }
            if (j < plv) {
                simd::prefetch_l1(pz + j);
                simd::prefetch_l1(py + j);
            }
            if constexpr (kFusedArg<D, A>) {
                const P tz = ez.packet_arg(ei::ploadu<P>(za + j));
                const P ty = ey.packet_arg(ei::ploadu<P>(ya + j));
                const P eq = ::rlpo::detail::pexp2(tz), ep = ::rlpo::detail::pexp2(ty);
                s1 = ei::padd(s1, eq);
                s2 = ei::padd(s2, ep);
                K::stage1_fused(op, ep, tz, ty, s3);  // (JSD: Σ ep (log2 ep − log2 eq))
                if constexpr (Lean) tmn = ei::pmin(tmn, tz);
                ei::pstoreu(wa0 + j, eq);
                ei::pstoreu(wa1 + j, ep);
                continue;
            }
            // logits shifted by their chunk maxima: the value terms below use these small
            // differences, never the raw (possibly large) logits
            const P dz = ei::psub(ei::ploadu<P>(za + j), pmz);
            const P dy = ei::psub(ei::ploadu<P>(ya + j), pmy);
            const P eq = ez.packet_shifted(dz), ep = ey.packet_shifted(dy);
            s1 = ei::padd(s1, eq);
            s2 = ei::padd(s2, ep);
            ei::pstoreu(wa0 + j, eq);
            ei::pstoreu(wa1 + j, K::stage1(op, eq, ep, dz, dy, s3));
        }
    }
    A t1 = 0, t2 = 0, t3 = 0, tm = inf;
    for (Index j = lv; j < len; ++j) {
        if constexpr (St3) sink.scalar(j, K::grad(os, wg0[j], wg1[j]));
        if constexpr (St2 && Lean) {
            if (!logform) {
                const A eq = wb0[j], ep = wb1[j];
                const A l = K::lean_ratio(os, eq, ep);
                v1 = madd_as_packet(ep, l, v1);
                v2 = madd_as_packet(eq, l, v2);
                wb1[j] = l;
            }
        } else if constexpr (St2) {
            A o2;
            K::stage2(os, wb0[j], wb1[j], zb[j] - mzb, yb[j] - myb, o2, v1, v2);
            wb1[j] = o2;
        }
        if constexpr (St1 && kFusedArg<D, A>) {
            const A tz = ez.scalar_arg(za[j]), ty = ey.scalar_arg(ya[j]);
            const A eq = ::rlpo::detail::exp2_scalar(tz), ep = ::rlpo::detail::exp2_scalar(ty);
            t1 += eq;
            t2 += ep;
            K::stage1_fused(os, ep, tz, ty, t3);
            if constexpr (Lean) tm = std::min(tm, tz);
            wa0[j] = eq;
            wa1[j] = ep;
        } else if constexpr (St1) {
            const A dz = za[j] - ez.m, dy = ya[j] - ey.m;
            const A eq = ez.scalar_shifted(dz), ep = ey.scalar_shifted(dy);
            t1 += eq;
            t2 += ep;
            wa0[j] = eq;
            wa1[j] = K::stage1(os, eq, ep, dz, dy, t3);
        }
    }
    if constexpr (St1) {
        a->s0[kk] = static_cast<double>(ei::predux(s1) + t1);
        a->s1[kk] = static_cast<double>(ei::predux(s2) + t2);
        a->s2[kk] = static_cast<double>(ei::predux(s3) + t3);
        if constexpr (Lean) a->tmin[kk] = std::min(lv > 0 ? ei::predux_min(tmn) : inf, tm);
        if (la) {
            A mzn = nlv > 0 ? ei::predux_max(nz) : -inf, myn = nlv > 0 ? ei::predux_max(ny) : -inf;
            A lzn = nlv > 0 ? ei::predux_min(lz) : inf, lyn = nlv > 0 ? ei::predux_min(ly) : inf;
            for (Index j = nlv; j < nlen; ++j) {
                mzn = std::max(mzn, za[C + j]);
                myn = std::max(myn, ya[C + j]);
                lzn = std::min(lzn, za[C + j]);
                lyn = std::min(lyn, ya[C + j]);
            }
            a->mz[kk + 1] = mzn;
            a->my[kk + 1] = myn;
            a->lz[kk + 1] = lzn;
            a->ly[kk + 1] = lyn;
        }
    }
    if constexpr (St2) {
        b->s0[kk] = static_cast<double>(ei::predux(u1) + v1);
        b->s1[kk] = static_cast<double>(ei::predux(u2) + v2);
    }
}

/// Chunks [k0, k1) of one pipeline step with the given stages present (all chunks, or one
/// thread's share of the rows in the row-split mode). Stage 1 expects the maxima and minima of
/// chunk k0 to be set (`chunk_range`); it finds those of the following chunks itself.
///
/// With double arithmetic the chunks' loop is flattened (`RLPO_SIMD_FLATTEN`): GCC leaves Eigen's
/// double `pexp` out of line, and each call spilled the sweep's live packets around it. On AVX-512
/// the exponential is rlpo's always-inline `avx512::exp` (arch/avx512.hpp) instead; other
/// instruction sets still call Eigen's. The float kernels call only the inlined fast math of
/// core/simd/fast_math.hpp. The same instructions either way, so the same results.
template <Divergence D, bool St1, bool St2, bool St3, bool Lean, class S, class A>
inline void fused_row_step_loop(const DenseCtx<A>& c, Index k0, Index k1, Slot<S, A>* a,
                                Slot<S, A>* b, Slot<S, A>* g) {
    for (Index k = k0; k < k1; ++k)
        fused_chunk<D, St1, St2, St3, Lean, S, A>(c, k, k0, k1, a, b, g);
}

template <Divergence D, bool St1, bool St2, bool St3, bool Lean, class S, class A>
RLPO_SIMD_FLATTEN void fused_row_step_flat(const DenseCtx<A>& c, Index k0, Index k1, Slot<S, A>* a,
                                           Slot<S, A>* b, Slot<S, A>* g) {
    fused_row_step_loop<D, St1, St2, St3, Lean, S, A>(c, k0, k1, a, b, g);
}

template <Divergence D, bool St1, bool St2, bool St3, bool Lean, class S, class A>
inline void fused_row_step(const DenseCtx<A>& c, Index k0, Index k1, Slot<S, A>* a, Slot<S, A>* b,
                           Slot<S, A>* g) {
    if constexpr (std::is_same<A, double>::value)
        fused_row_step_flat<D, St1, St2, St3, Lean, S, A>(c, k0, k1, a, b, g);
    else
        fused_row_step_loop<D, St1, St2, St3, Lean, S, A>(c, k0, k1, a, b, g);
}

template <Divergence D, bool Lean, class S, class A>
inline void fused_step_as(const DenseCtx<A>& c, Index k0, Index k1, Slot<S, A>* a, Slot<S, A>* b,
                          Slot<S, A>* g) {
    const int m = (a ? 4 : 0) | (b ? 2 : 0) | (g ? 1 : 0);
    if constexpr (!kThreeStage<D>) {
        switch (m & 5) {
            case 5: return fused_row_step<D, true, false, true, Lean>(c, k0, k1, a, b, g);
            case 4: return fused_row_step<D, true, false, false, Lean>(c, k0, k1, a, b, g);
            case 1: return fused_row_step<D, false, false, true, Lean>(c, k0, k1, a, b, g);
            default: return;
        }
    } else {
        switch (m) {
            case 7: return fused_row_step<D, true, true, true, Lean>(c, k0, k1, a, b, g);
            case 6: return fused_row_step<D, true, true, false, Lean>(c, k0, k1, a, b, g);
            case 5: return fused_row_step<D, true, false, true, Lean>(c, k0, k1, a, b, g);
            case 4: return fused_row_step<D, true, false, false, Lean>(c, k0, k1, a, b, g);
            case 3: return fused_row_step<D, false, true, true, Lean>(c, k0, k1, a, b, g);
            case 2: return fused_row_step<D, false, true, false, Lean>(c, k0, k1, a, b, g);
            case 1: return fused_row_step<D, false, false, true, Lean>(c, k0, k1, a, b, g);
            default: return;
        }
    }
}

/// Chunks [k0, k1) of the rows in stages 1, 2, 3 (a, b, g; null where none).
template <Divergence D, class S, class A>
inline void fused_step(const DenseCtx<A>& c, Index k0, Index k1, Slot<S, A>* a, Slot<S, A>* b,
                       Slot<S, A>* g) {
    if constexpr (kLeanCapable<D, A>)
        if (c.lean) return fused_step_as<D, true, S, A>(c, k0, k1, a, b, g);
    fused_step_as<D, false, S, A>(c, k0, k1, a, b, g);
}

}  // namespace rlpo::distill::detail
