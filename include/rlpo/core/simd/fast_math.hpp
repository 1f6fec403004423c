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
/// 3.4's `pexp`; the caller forms t = (x − max)·log2(e)/τ (subtraction first, see divergence/).
///
/// Edge cases, which the distillation kernels rely on: t = −inf (a −inf logit) and t < −150
/// give exactly 0 (not Eigen's clamped ~1e−38); t = NaN gives NaN (the clamp keeps NaN, so a NaN
/// logit shows up in the row sums); t = +inf is not used (a +inf logit is rejected before).
///
/// On AVX-512 the reduction and the scaling are `vreduceps` / `vscalefps`; elsewhere Eigen's
/// `pfloor` / `pldexp` after a NaN-keeping clamp to [−160, 160] (beyond, 2^t is 0 or +inf in
/// float). `exp2_scalar` is the same computation on one float (row tails), so a
/// row gives the same result whatever its alignment.
///
/// `plog<P>(x)` = ln x on a float packet, for the strictly positive arguments of the mixture
/// divergences (JSD's M = βp + (1−β)q, skew KL's m). Method (AVX-512): x = m·2^e with m ∈
/// [1, 2) (`vgetmantps` / `vgetexpps`); the top five mantissa bits pick one of 32 cells of
/// [1, 2) (`vpermt2ps` on two 16-entry tables: rcp_i = 1/c_i at the cell centre and
/// lnc_i = −ln rcp_i); r = m·rcp_i − 1 (|r| ≤ 0.0154, one multiply-add) and ln(1 + r) ≈
/// r + r²(a + b r); then ln x = e·ln 2 + lnc_i + ln(1 + r). Eleven instructions, against
/// sixteen for a polynomial on [√½, √2). Accuracy is absolute-relative: |error| ≤
/// 1e−7·max(1, |ln x|) (measured 9.4e−8; Eigen's plog 1.1e−7), about 6e−8 near x = 1, where
/// the result is not relatively accurate (ln 1 gives 2.8e−9). That is what the divergences
/// need: they use ln M only in differences such as log q − log M, whose float inputs carry an
/// absolute error of the same size. x = 0 gives −inf, +inf gives +inf and NaN stays NaN;
/// subnormal x are handled by getexp/getmant. Without AVX-512 this is Eigen's `plog`.

#include <Eigen/Core>

#include <cmath>

#include <rlpo/core/simd/arch/avx512.hpp>

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
    /// Above this 2^t is +inf in float (the largest finite is just below 2^128); the clamp keeps
    /// floor(t) in `int` range for `exp2_scalar`'s ldexp (a larger t would be undefined behaviour).
    static constexpr float hi = 160.0f;
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
    t = (t < C::lo) ? C::lo : (t > C::hi ? C::hi : t);  // NaN compares false and is kept
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
    const P t = ei::pmin<Eigen::PropagateNaN>(
        ei::pmax<Eigen::PropagateNaN>(t_in, ei::pset1<P>(Exp2Poly::lo)),
        ei::pset1<P>(Exp2Poly::hi));
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
    return simd::avx512::scalef(pexp2_poly(simd::avx512::floor_fraction(t)), t);
}
#endif

/// ln x on a float packet (see the file comment); Eigen's `plog` without AVX-512, and for
/// double packets (on AVX-512 with a shorter exponent split, the same bits: below).
template <class P>
inline P plog(const P& x) {
    return Eigen::internal::plog(x);
}

/// Table of the AVX-512 logarithm: 32 cells of [1, 2) (width 1/32, cell i from the top five
/// mantissa bits), rcp = 1/c_i rounded to float at the cell centre c_i = 1 + (i + ½)/32, and
/// lnc = −ln(rcp) in double rounded to float, so that m·rcp = 1 + r exactly and
/// ln m = lnc + ln(1 + r) with |r| ≤ 0.0154.
struct LogTable {
    alignas(64) static constexpr float rcp[32] = {
        9.846153855e-01f, 9.552238584e-01f, 9.275362492e-01f, 9.014084339e-01f, 8.767123222e-01f,
        8.533333540e-01f, 8.311688304e-01f, 8.101266026e-01f, 7.901234627e-01f, 7.710843086e-01f,
        7.529411912e-01f, 7.356321812e-01f, 7.191011310e-01f, 7.032967210e-01f, 6.881720424e-01f,
        6.736842394e-01f, 6.597937942e-01f, 6.464646459e-01f, 6.336633563e-01f, 6.213592291e-01f,
        6.095238328e-01f, 5.981308222e-01f, 5.871559381e-01f, 5.765765905e-01f, 5.663716793e-01f,
        5.565217137e-01f, 5.470085740e-01f, 5.378151536e-01f, 5.289255977e-01f, 5.203251839e-01f,
        5.120000243e-01f, 5.039370060e-01f};
    alignas(64) static constexpr float lnc[32] = {
        1.550418604e-02f, 4.580955952e-02f, 7.522340119e-02f, 1.037968099e-01f, 1.315763593e-01f,
        1.586050093e-01f, 1.849223375e-01f, 2.105647475e-01f, 2.355660647e-01f, 2.599575520e-01f,
        2.837681472e-01f, 3.070250452e-01f, 3.297532797e-01f, 3.519763947e-01f, 3.737164140e-01f,
        3.949937522e-01f, 4.158279300e-01f, 4.362367690e-01f, 4.562374353e-01f, 4.758459032e-01f,
        4.950772226e-01f, 5.139457583e-01f, 5.324648619e-01f, 5.506470799e-01f, 5.685047507e-01f,
        5.860490799e-01f, 6.032907963e-01f, 6.202403307e-01f, 6.369075179e-01f, 6.533012986e-01f,
        6.694306135e-01f, 6.853039861e-01f};
    /// ln(1 + r) ≈ r + r²(a + b r) on |r| ≤ 0.0154 (near-minimax, 2.4e−9 absolute)
    static constexpr float a = -0.50004893f;
    static constexpr float b = 0.33337702f;
    static constexpr float ln2 = 0.693147182f;
};

#if defined(__AVX512F__)
template <>
inline Eigen::internal::Packet16f plog<Eigen::internal::Packet16f>(
    const Eigen::internal::Packet16f& x) {
    using T = LogTable;
    return simd::avx512::log_cells(x, T::rcp, T::lnc, T::a, T::b, T::ln2);
}

/// ln x on a double packet: Eigen's `plog` bit for bit, its significand and exponent split in
/// two instructions (`avx512::log`, arch/avx512.hpp).
template <>
inline Eigen::internal::Packet8d plog<Eigen::internal::Packet8d>(
    const Eigen::internal::Packet8d& x) {
    return simd::avx512::log(x);
}
#endif

}  // namespace rlpo::detail
