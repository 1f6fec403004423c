#pragma once
/// \file
/// The interface between the vocabulary pipeline and the math of one divergence kind
/// (internal). `KindMath<D>` is declared here and specialised once per kind under
/// divergence/kinds/ (the registry, divergence/detail/kind_registry.hpp, includes them all);
/// the pipeline (fused_chunk.hpp, merge.hpp, exact_row.hpp, driver.hpp) calls its members and
/// never branches on the kind. A specialisation holds:
///   * traits: `kStages` (2: stage 1 forms the value and the gradient factors; 3: a value
///     sweep between the exponentials and the gradient), `kLean` (JSD's lean value sweep,
///     `kLeanCapable`), `kStage2LogitRows` (logit rows its stage 2 keeps in cache, for the
///     working set), `kValueSweepAlone` (a value sweep cheap enough to run on its own when
///     two pairs of work rows overflow L2: TVD);
///   * `stage1` / `stage1_fused`: what stage 1 stores to the second work row and adds to the
///     third sum (the KL value terms), on shifted logits or exponent arguments;
///   * `merge1` (and `value1` / `factor1` for two stages, `merge1_row` for three): its terms
///     of `finish_stage1`;
///   * `stage2`, `v1_weight` / `v2_weight` and `finish2`: the value sweep's per-entry value and
///     gradient factor, and the value and gradient constants formed from its sums;
///   * `grad`: the per-entry gradient of stage 3 (`GradThreeStage::grad` for three stages);
///   * `exact`: the row on the exact path (`dense_row_impl`).
/// The per-entry members are generic over a packet or a scalar through `EntryOps`, which
/// rounds exactly as the pipeline's contraction rule asks (arith.hpp): `mul` is a rounded
/// product, `madd` the packet multiply-add or `madd_as_packet`, `times` a product that meets
/// no sum. Every member is EIGEN_ALWAYS_INLINE: the generated code is the pipeline's own.
/// A kind's file includes this header (and the standard headers it uses), nothing else.

#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/fast_math.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/core/types.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/arith.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <Eigen/Core>

#include <cmath>
#include <type_traits>

namespace rlpo::distill::detail {

/// The math of one divergence kind (one specialisation per kind, divergence/kinds/).
template <Divergence D>
struct KindMath;

/// The constants of one chunk that the per-entry math reads (zero where a stage is absent).
template <class A>
struct ChunkConsts {
    A invT = 0;         ///< 1/τ
    A fq = 0, fp = 0;   ///< stage 2: the chunk factors, q = e_q f_q, p = e_p f_p
    A mq = 0, mp = 0;   ///< stage 2: JSD's mixture weights (1−β) f_q, β f_p
    A cq = 0, cp = 0;   ///< stage 2: log q = lin(z, cq), log p = lin(y, cp)
    A al = 0, oma = 0;  ///< skew α and 1 − α
    A ck = 0, omb = 0;  ///< JSD's lean sweep: c_k of the chunk, and 1 − β
    A h0 = 0, h1 = 0;   ///< stage 3: the row's chunk factors (two stages)
    A hk = 0, nk = 0;   ///< stage 3 (three stages): f·c1 and −c0·f·c1
};

/// The entry type of `EntryOps`: a packet of A or A. (A packet type is never a class
/// template's argument here: GCC would warn that its attributes are ignored.)
template <class A, bool IsPacket>
struct EntryType {
    using type = A;
};
template <class A>
struct EntryType<A, true> {
    using type = Packet<A>;
};

/// The per-entry arithmetic of the pipeline on a packet of A (`IsPacket`) or a scalar A, with
/// the chunk's constants `k`. `RawLog`: `lin` of a scalar is an explicit fma (the logits are
/// raw, `kFusedArg`), else `madd_as_packet`.
template <class A, bool IsPacket, bool RawLog>
struct EntryOps {
    using T = typename EntryType<A, IsPacket>::type;
    static constexpr bool kIsPacket = IsPacket;
    ChunkConsts<A> k;

    static EIGEN_ALWAYS_INLINE T set1(A x) {
        if constexpr (kIsPacket)
            return Eigen::internal::pset1<T>(x);
        else
            return x;
    }
    /// x·y, rounded (it may meet a sum later)
    static EIGEN_ALWAYS_INLINE T mul(T x, T y) {
        if constexpr (kIsPacket)
            return rounded(Eigen::internal::pmul(x, y));
        else
            return rounded(x * y);
    }
    /// x·y that meets no sum (a factor of a product or a quotient)
    static EIGEN_ALWAYS_INLINE T times(T x, T y) {
        if constexpr (kIsPacket)
            return Eigen::internal::pmul(x, y);
        else
            return x * y;
    }
    static EIGEN_ALWAYS_INLINE T add(T x, T y) {
        if constexpr (kIsPacket)
            return Eigen::internal::padd(x, y);
        else
            return x + y;
    }
    static EIGEN_ALWAYS_INLINE T sub(T x, T y) {
        if constexpr (kIsPacket)
            return Eigen::internal::psub(x, y);
        else
            return x - y;
    }
    static EIGEN_ALWAYS_INLINE T div(T x, T y) {
        if constexpr (kIsPacket)
            return Eigen::internal::pdiv(x, y);
        else
            return x / y;
    }
    /// x·y + z as the build's packet multiply-add rounds it
    static EIGEN_ALWAYS_INLINE T madd(T x, T y, T z) {
        if constexpr (kIsPacket)
            return Eigen::internal::pmadd(x, y, z);
        else
            return madd_as_packet(x, y, z);
    }
    static EIGEN_ALWAYS_INLINE T log(T x) {
        if constexpr (kIsPacket)
            return ::rlpo::detail::plog(x);
        else
            return std::log(x);
    }
    /// v/τ + c: log q, log p from the (shifted or raw) logits; fused for raw logits
    EIGEN_ALWAYS_INLINE T lin(T v, A c) const {
        if constexpr (kIsPacket)
            return Eigen::internal::pmadd(v, Eigen::internal::pset1<T>(k.invT),
                                          Eigen::internal::pset1<T>(c));
        else if constexpr (RawLog)
            return std::fma(v, k.invT, c);
        else
            return madd_as_packet(v, k.invT, c);
    }
};

/// The row quantities of `finish_stage1` that a kind's terms read (double).
struct Merge1Row {
    double invT;      ///< 1/τ
    double sq, sp;    ///< Σ e_q, Σ e_p over the row (each chunk's sum × its factor)
    double lsq, lsp;  ///< their logs
};

/// One chunk of `finish_stage1`: its factors, sums and shifts (double).
struct Merge1Chunk {
    double ez, ey;      ///< the chunk factors e^(dz_k/τ), e^(dy_k/τ) (over 2^δ with kFusedArg)
    double s0, s1, s2;  ///< the chunk's sums of e_q, e_p and the KL value terms
    double dzk, dyk;    ///< the chunk maxima minus the row maxima
    double dlz, dly;    ///< δ of `ShiftedExp::delta` (0 without kFusedArg)
    double invT;        ///< 1/τ
};

/// The sums and constants of `finish_stage2` that a kind turns into its value (`L`) and its
/// gradient constants (`u2`, the shift Σ q h, and `factor`, the gradient's factor).
struct Finish2 {
    double u1, u2;    ///< the value sweep's two sums, weighted by `v1_weight` / `v2_weight`
    double rq, rp;    ///< JSD: the rounding corrections of Σ q r and Σ p r
    double ecq, ecp;  ///< cq − fl(cq), cp − fl(cp) (kFusedArg; else 0)
    double kpq;       ///< JSD: KL(p‖q), from stage 1
    double beta, omb;
    bool lean;      ///< JSD's lean sweep summed l = −r
    double L;       ///< in: u1
    double factor;  ///< in: 1/τ
};

/// The row of the exact path (`dense_row_impl`): the options, the exponentials e_q, e_p (work
/// rows, unnormalised), the logits shifted by their row maxima (`zs`, `ys`: Eigen
/// expressions), log q = zs/τ + cq, log p = ys/τ + cp, the normalisers iq = 1/Σe_q,
/// ip = 1/Σe_p, and the gradient row; with the steps the kinds' `exact` rows share. `Safe`:
/// the row may hold −inf logits (zero probabilities), which `keep` masks exactly.
template <bool Safe, class S, class A, class ZS, class YS>
struct ExactRow {
    using Scalar = A;
    const DistillOptions& o;
    A invT;
    ArrMap<A>& eq;
    ArrMap<A>& ep;
    const ZS& zs;
    const YS& ys;
    A cq, cp, iq, ip;
    Scratch<A>& ws;
    Index V;
    const GradRow<S>& rg;

    /// log q and log p (Eigen expressions)
    auto lq() const { return zs * invT + cq; }
    auto lp() const { return ys * invT + cp; }
    /// `cond ? e : 0` where the row may hold zero probabilities (`keep_if`), else e
    template <class C, class E>
    static auto keep(const C& cond, const E& e) {
        return keep_if<Safe>(cond, e);
    }
    /// e_q ← q, e_p ← p
    void normalise() const {
        eq *= iq;
        ep *= ip;
    }
    /// log(w_p p + w_q q) in the mixture's scratch row (`log_mix`)
    ArrMap<A> log_mix(double wp, double wq) const;
    /// Σ_{p>0} p (log p − l) in double, with p in e_p
    template <class E>
    double p_log_ratio(const E& l) const {
        return keep(ep > A(0), ep * (lp() - l)).template cast<double>().sum();
    }
    /// the gradient s·q (h − Σ q h)/τ, with q in e_q and h in e_p
    void set_centred(A s = A(1)) const {
        const A sg = (eq * ep).sum();
        rg.set(s * eq * (ep - sg) * invT);
    }
};

/// out = log(w1·e^l1 + w2·e^l2) entry by entry, from log-probabilities l1, l2: max(u, v) +
/// log1p(e^−|u − v|) with u = l1 + log w1, v = l2 + log w2. The log of a mixture such as
/// JSD's M = βp + (1−β)q, formed this way, never sees the mixture underflow: M itself
/// rounds to 0 where p is subnormal and q is 0 (logit ranges beyond about 103/τ in float),
/// and log 0 would make a finite divergence infinite. Entries where both l1 and l2 are −inf
/// give NaN; callers mask them (both probabilities are 0 there).
template <class A, class E1, class E2>
inline void log_mix(ArrMap<A> out, const E1& l1, const E2& l2, double w1, double w2) {
    const A a1 = static_cast<A>(std::log(w1)), a2 = static_cast<A>(std::log(w2));
    out = (l1 + a1).max(l2 + a2);
    out += (-((l1 + a1) - (l2 + a2)).abs()).exp().log1p();
}

template <bool Safe, class S, class A, class ZS, class YS>
ArrMap<A> ExactRow<Safe, S, A, ZS, YS>::log_mix(double wp, double wq) const {
    const ArrMap<A> lm = mix_row(ws, V);
    ::rlpo::distill::detail::log_mix<A>(lm, lp(), lq(), wp, wq);
    return lm;
}

/// The traits of a two-stage kind (stage 1 forms the value terms, stage 3 the gradient).
struct TwoStage {
    static constexpr int kStages = 2;
    static constexpr bool kLean = false;
    static constexpr int kStage2LogitRows = 0;
    static constexpr bool kValueSweepAlone = false;
    static constexpr bool kMassRatio = false;  ///< see `GradThreeStage::kMassRatio`
};

/// The pieces every three-stage kind shares: stage 1 stores e_p and sums no value terms, the
/// merge adds none, and stage 3 writes q (h − Σ q h) · c1 = e_q · (h · hk − Σ q h · hk) with
/// the per-entry factor h left by stage 2 (`EntryOps`' constants hk = f_q·c1, nk = −Σ q h · hk).
struct GradThreeStage {
    static constexpr int kStages = 3;
    static constexpr bool kLean = false;
    static constexpr bool kValueSweepAlone = false;
    /// The kind's terms divide one probability by the other (χ²: q/p), so that an entry's
    /// exponential must be exact however small (`finish_stage1` bounds the row's spread).
    static constexpr bool kMassRatio = false;

    template <class O, class T>
    static EIGEN_ALWAYS_INLINE T stage1(const O&, T, T ep, T, T, T&) {
        return ep;
    }
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage1_fused(const O&, T, T, T, T&) {}
    template <bool Fused>
    static EIGEN_ALWAYS_INLINE double merge1(double x, const Merge1Chunk&) {
        return x;
    }
    static EIGEN_ALWAYS_INLINE void merge1_row(double, const Merge1Row&, double&) {}
    static EIGEN_ALWAYS_INLINE double v1_weight(double, double) { return 1.0; }
    static EIGEN_ALWAYS_INLINE double v2_weight(double, double) { return 1.0; }
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE T grad(const O& o, T x0, T x1) {
        return o.times(x0, o.madd(x1, o.set1(o.k.hk), o.set1(o.k.nk)));
    }
};

}  // namespace rlpo::distill::detail
