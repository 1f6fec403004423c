#pragma once
/// \file
/// A short float exponential and logarithm for the vocabulary sweeps (internal).
///
/// `pexp2<P>(t)` = 2^t on a float packet, for the arguments a softmax produces: t = (x − max)·
/// log2(e)/τ ≤ 0 (it is also correct for t up to 127). Method: n = floor(t), f = t − n ∈
/// [0, 1), 2^f by a degree-6 polynomial with p(0) = 1, then 2^n·p(f) by an exponent scaling.
/// The coefficients are a near-minimax fit of the relative error of 2^f on [0, 1) (Lawson's
/// iteratively reweighted least squares in double precision, rounded to float): 2.0e−9 in exact
/// arithmetic, ≤ 8.5e−8 (≈ 1.4 ulp) evaluated in float. On AVX-512 the whole exponential is
/// eight instructions (`vreduceps`, six multiply-adds, `vscalefps`), about 2× faster than Eigen
/// 3.4's `pexp`; the caller forms t = (x − max)·log2(e)/τ (subtraction first, see divergences.hpp).
///
/// Edge cases, which the distillation kernels rely on: t = −inf (a −inf logit) and t < −150
/// give exactly 0 (not Eigen's clamped ~1e−38); t = NaN gives NaN (the clamp keeps NaN, so a NaN
/// logit shows up in the row sums); t = +inf is not used (a +inf logit is rejected before).
///
/// On AVX-512 the reduction and the scaling are `vreduceps` / `vscalefps`; elsewhere Eigen's
/// `pfloor` / `pldexp` after a NaN-keeping clamp at −160. `exp2_scalar` is the same computation on one float (row tails), so a
/// row gives the same result whatever its alignment.
///
/// `plog<P>(x)` = ln x on a float packet, for the strictly positive arguments of the mixture
/// divergences (JSD's M = βp + (1−β)q, skew KL's m). Method: x = m·2^e with m ∈ [√½, √2)
/// (AVX-512 `vgetmantps` / `vgetexpps`, one masked halving), f = m − 1 (exact), ln(1 + f) =
/// f·Q(f) with Q of degree 8 (near-minimax fit of ln(1+f)/f on [√½ − 1, √2 − 1], relative error
/// 3.0e−8 in exact arithmetic, ≤ 1.4e−7 evaluated in float), then e·ln 2 added in two parts.
/// x = 0 gives −inf, +inf gives +inf and NaN stays NaN; subnormal x are exact (getexp/getmant
/// handle them). Without AVX-512 this is Eigen's `plog`.

#include <Eigen/Core>

#include <cmath>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rlpo::detail {

/// Polynomial coefficients of 2^f, f ∈ [0, 1), degree 1..6 (degree 0 is exactly 1).
struct Exp2Poly {
    static constexpr float c1 = 0.6931470632553101f;
    static constexpr float c2 = 0.2402293086051941f;
    static constexpr float c3 = 0.055485282093286514f;
    static constexpr float c4 = 0.009675451554358006f;
    static constexpr float c5 = 0.0012467846972867846f;
    static constexpr float c6 = 0.00021612914861179888f;
    /// Below this 2^t is 0 in float (the smallest subnormal is 2^−149).
    static constexpr float lo = -160.0f;
};

/// p(f) ≈ 2^f on [0, 1), Horner's scheme (the packet type's multiply-add).
template <class P>
inline P pexp2_poly(const P& f) {
    namespace ei = Eigen::internal;
    using C = Exp2Poly;
    P p = ei::pset1<P>(C::c6);
    p = ei::pmadd(p, f, ei::pset1<P>(C::c5));
    p = ei::pmadd(p, f, ei::pset1<P>(C::c4));
    p = ei::pmadd(p, f, ei::pset1<P>(C::c3));
    p = ei::pmadd(p, f, ei::pset1<P>(C::c2));
    p = ei::pmadd(p, f, ei::pset1<P>(C::c1));
    return ei::pmadd(p, f, ei::pset1<P>(1.0f));
}

/// 2^t for one float (same steps as the generic packet version).
inline float exp2_scalar(float t) {
    using C = Exp2Poly;
    t = (t < C::lo) ? C::lo : t;  // NaN compares false and is kept
    const float n = std::floor(t);
    const float f = t - n;
    float p = C::c6;
    p = p * f + C::c5;
    p = p * f + C::c4;
    p = p * f + C::c3;
    p = p * f + C::c2;
    p = p * f + C::c1;
    p = p * f + 1.0f;
    return std::isnan(n) ? n : std::ldexp(p, static_cast<int>(n));
}

/// 2^t on a float packet: n = floor(t), f = t − n ∈ [0, 1), 2^n · p(f) (see the file comment).
template <class P>
inline P pexp2(const P& t_in) {
    namespace ei = Eigen::internal;
    const P t = ei::pmax<Eigen::PropagateNaN>(t_in, ei::pset1<P>(Exp2Poly::lo));
    const P n = ei::pfloor(t);
    return ei::pldexp(pexp2_poly(ei::psub(t, n)), n);
}

#if defined(__AVX512F__)
/// AVX-512: `vreduceps` gives f = t − floor(t) in one instruction (AVX512DQ; `vrndscaleps` and
/// a subtraction otherwise) and `vscalefps` multiplies by 2^floor(t) itself. No clamp is
/// needed: t = −inf gives f = 0 (or NaN with `vrndscaleps`, which then propagates) and
/// 2^−inf · 1 = 0; below 2^−149 `vscalefps` underflows to 0; NaN propagates.
template <>
inline Eigen::internal::Packet16f pexp2<Eigen::internal::Packet16f>(
    const Eigen::internal::Packet16f& t) {
#if defined(__AVX512DQ__)
    const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#else
    const __m512 f =
        _mm512_sub_ps(t, _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
#endif
    return _mm512_scalef_ps(pexp2_poly(f), t);
}
#endif

/// Coefficients of Q(f) ≈ ln(1 + f)/f, f ∈ [√½ − 1, √2 − 1], degree 1..8 (Q(0) = 1).
struct LogPoly {
    static constexpr float c1 = -0.49999991059303284f;
    static constexpr float c2 = 0.33333951234817505f;
    static constexpr float c3 = -0.25001755356788635f;
    static constexpr float c4 = 0.19962072372436523f;
    static constexpr float c5 = -0.1657050997018814f;
    static constexpr float c6 = 0.14917971193790436f;
    static constexpr float c7 = -0.1430751085281372f;
    static constexpr float c8 = 0.08734840154647827f;
    /// ln 2 in two parts: the first has 16 significant bits, so e·ln2_hi is exact for |e| < 2^8.
    static constexpr float ln2_hi = 0.693145751953125f;
    static constexpr float ln2_lo = 1.428606765330187e-06f;
};

/// ln x on a float packet (see the file comment); Eigen's `plog` without AVX-512.
template <class P>
inline P plog(const P& x) {
    return Eigen::internal::plog(x);
}

#if defined(__AVX512F__)
template <>
inline Eigen::internal::Packet16f plog<Eigen::internal::Packet16f>(
    const Eigen::internal::Packet16f& x) {
    using C = LogPoly;
    __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
    __m512 e = _mm512_getexp_ps(x);                                         // floor(log2 x)
    const __mmask16 hi = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, hi, m, _mm512_set1_ps(0.5f));  // [√½, √2)
    e = _mm512_mask_add_ps(e, hi, e, _mm512_set1_ps(1.0f));
    const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
    __m512 q = _mm512_set1_ps(C::c8);
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(C::c7));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(C::c6));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(C::c5));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(C::c4));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(C::c3));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(C::c2));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(C::c1));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.0f));
    // e ln2_lo + f Q(f), then + e ln2_hi
    const __m512 r = _mm512_fmadd_ps(e, _mm512_set1_ps(C::ln2_lo), _mm512_mul_ps(f, q));
    return _mm512_fmadd_ps(e, _mm512_set1_ps(C::ln2_hi), r);
}
#endif

}  // namespace rlpo::detail
