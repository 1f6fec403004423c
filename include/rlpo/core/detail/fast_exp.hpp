#pragma once
/// \file
/// A short float exponential for softmax sweeps (internal).
///
/// `pexp2<P>(t)` = 2^t on a float packet, for the arguments a softmax produces: t = (x − max)·
/// log2(e)/τ ≤ 0 (it is also correct for t up to 127). Method: n = floor(t), f = t − n ∈
/// [0, 1), 2^f by a degree-6 polynomial with p(0) = 1, then 2^n·p(f) by an exponent scaling.
/// The coefficients are a near-minimax fit of the relative error of 2^f on [0, 1) (Lawson's
/// iteratively reweighted least squares in double precision, rounded to float): 2.0e−9 in exact
/// arithmetic, ≤ 8.5e−8 (≈ 1.4 ulp) evaluated in float. On AVX-512 the whole exponential is
/// eight instructions (`vreduceps`, six multiply-adds, `vscalefps`), about 2× faster than Eigen
/// 3.4's `pexp`; the caller folds the shift and the 1/τ into the one multiply-add forming t.
///
/// Edge cases, which the distillation kernels rely on: t = −inf (a −inf logit) and t < −150
/// give exactly 0 (not Eigen's clamped ~1e−38); t = NaN gives NaN (the clamp keeps NaN, so a NaN
/// logit shows up in the row sums); t = +inf is not used (a +inf logit is rejected before).
///
/// On AVX-512 the reduction and the scaling are `vreduceps` / `vscalefps`; elsewhere Eigen's
/// `pfloor` / `pldexp` after a NaN-keeping clamp at −160. `exp2_scalar` is the same computation on one float (row tails), so a
/// row gives the same result whatever its alignment.

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

}  // namespace rlpo::detail
