#pragma once
/// \file
/// Every x86 intrinsic of rlpo, behind small inline functions (internal), as Eigen keeps its
/// own in Core/arch/: the rest of the library spells no `_mm*` and no `__m512`.
///
/// What is here, and the portable fallback where the instruction set lacks it:
///   * streaming (non-temporal) stores of float packets and of a float chunk, and the store
///     fence that orders them (`kStreamingStores`: SSE2; elsewhere `store_fence` does nothing
///     and the callers take their ordinary stores);
///   * software prefetches into L1 and L2 (`prefetch_l1`, `prefetch_l2`: SSE2; elsewhere
///     nothing);
///   * the lane masks of the AVX-512 float and double packets (compares into mask registers,
///     blends, zero-masked moves: `simd::LaneMask` in core/simd/packet.hpp);
///   * Eigen's double exponential with its last step in one `vscalefpd` (`avx512::exp`, the
///     same bits as Eigen's `pexp`);
///   * the AVX-512 pieces of the fast math and of the divergence kernels on `Packet16f`:
///     `vreduceps` / `vrndscaleps` (the fraction t − floor(t)), `vscalefps` (2^n scaling),
///     the 32-cell table logarithm (`vgetmantps`, `vgetexpps`, `vpermt2ps`) and the sign by
///     class (`vfixupimmps`). Their callers (core/simd/fast_math.hpp, divergence/) select them
///     with `kAvx512` and use Eigen's generic packet math otherwise.
/// Each function issues exactly the instructions its call site used to spell out, on the same
/// data, so moving them here changed no result (`avx512::exp` replaces Eigen's last step by
/// one instruction with the same result: its comment has why).

#include <Eigen/Core>

#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rlpo::detail::simd {

/// Whether float rows can be written with non-temporal stores (SSE2).
inline constexpr bool kStreamingStores =
#if defined(__SSE2__)
    true;
#else
    false;
#endif

/// The size (bytes) from which the training step's single pass writes a `[B, T]` gradient
/// with streaming stores: 8 MiB. A smaller one, e.g. a micro-batch's, stays in cache for
/// whoever reads it next.
inline constexpr double kStreamMinBytes = 8.0 * 1024 * 1024;

/// Whether the AVX-512 float kernels of this file are available.
inline constexpr bool kAvx512 =
#if defined(__AVX512F__)
    true;
#else
    false;
#endif

#if defined(__SSE2__)
/// Non-temporal store of one packet (dst aligned to the packet size).
EIGEN_ALWAYS_INLINE void stream_packet(float* dst, const __m128& v) { _mm_stream_ps(dst, v); }
#if defined(__AVX__)
EIGEN_ALWAYS_INLINE void stream_packet(float* dst, const __m256& v) { _mm256_stream_ps(dst, v); }
#endif
#if defined(__AVX512F__)
EIGEN_ALWAYS_INLINE void stream_packet(float* dst, const __m512& v) { _mm512_stream_ps(dst, v); }
#endif
#endif

/// Stream entries [0, len) of `src` (16-byte aligned) to `dst` (16-byte aligned): four floats
/// at a time with non-temporal stores, the tail with plain ones. Without SSE2: plain copies.
EIGEN_ALWAYS_INLINE void stream_floats(float* dst, const float* src, Eigen::Index len) {
    Eigen::Index j = 0;
#if defined(__SSE2__)
    for (; j + 4 <= len; j += 4) _mm_stream_ps(dst + j, _mm_load_ps(src + j));
#endif
    for (; j < len; ++j) dst[j] = src[j];
}

/// Order the streaming stores before what follows (a no-op without SSE2).
EIGEN_ALWAYS_INLINE void store_fence() {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/// Prefetch the cache line of `p` into L1 (a no-op without SSE2).
EIGEN_ALWAYS_INLINE void prefetch_l1(const void* p) {
#if defined(__SSE2__)
    _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
#else
    static_cast<void>(p);
#endif
}

/// Prefetch the cache line of `p` into L2 (a no-op without SSE2).
EIGEN_ALWAYS_INLINE void prefetch_l2(const void* p) {
#if defined(__SSE2__)
    _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
#else
    static_cast<void>(p);
#endif
}

/// Prefetch every cache line of [p, p + bytes) into L2 (a no-op without SSE2): the row a
/// thread reads next, while it works on this one. Each row of a `[B, T]` input is a stream of
/// its own (a 4 KiB row is a page, where the hardware prefetchers stop), which they would pick
/// up only after a few misses.
EIGEN_ALWAYS_INLINE void prefetch_span_l2(const void* p, std::size_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (std::size_t k = 0; k < bytes; k += 64) prefetch_l2(c + k);
}

#if defined(__AVX512F__)
namespace avx512 {

using Packet16f = Eigen::internal::Packet16f;

/// f = t − floor(t) ∈ [0, 1): `vreduceps` (AVX512DQ), else `vrndscaleps` and a subtraction.
/// t = −inf gives 0 (`vreduceps`) or NaN (`vrndscaleps`).
EIGEN_ALWAYS_INLINE Packet16f floor_fraction(const Packet16f& t) {
#if defined(__AVX512DQ__)
    return _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
#else
    return _mm512_sub_ps(t, _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
#endif
}

/// p · 2^floor(t) (`vscalefps`): underflows to 0 below 2^−149, 0 at t = −inf, NaN propagates.
EIGEN_ALWAYS_INLINE Packet16f scalef(const Packet16f& p, const Packet16f& t) {
    return _mm512_scalef_ps(p, t);
}

/// e^x on a double packet: Eigen 3.4's `pexp` for double bit for bit (the Cephes rational
/// approximation exp(g) = 1 + 2·g·P(g²) / (Q(g²) − g·P(g²)) on g = x − n·ln2,
/// n = floor(x·log2(e) + 1/2), ln2 split in two, x clamped to ±709.784; the same operations
/// in the same order), with its final scaling by 2^n in one `vscalefpd` where Eigen's `pldexp`
/// multiplies by four powers of two. Each factor there is exact but the last, whose one
/// rounding is the rounding of the exact product e^g·2^n, as `vscalefpd`'s: the same bits for
/// every input, NaN and ±inf included (the final max with x as Eigen's).
EIGEN_ALWAYS_INLINE Eigen::internal::Packet8d exp(const Eigen::internal::Packet8d& x_in) {
    namespace ei = Eigen::internal;
    using P = ei::Packet8d;
    const P x0 = ei::pmax(ei::pmin(x_in, ei::pset1<P>(709.784)), ei::pset1<P>(-709.784));
    const P n =
        ei::pfloor(ei::pmadd(ei::pset1<P>(1.4426950408889634073599), x0, ei::pset1<P>(0.5)));
    P g = ei::psub(x0, ei::pmul(n, ei::pset1<P>(0.693145751953125)));
    g = ei::psub(g, ei::pmul(n, ei::pset1<P>(1.42860682030941723212e-6)));
    const P g2 = ei::pmul(g, g);
    P p = ei::pmadd(ei::pset1<P>(1.26177193074810590878e-4), g2,
                    ei::pset1<P>(3.02994407707441961300e-2));
    p = ei::pmul(ei::pmadd(p, g2, ei::pset1<P>(9.99999999999999999910e-1)), g);
    P q = ei::pmadd(ei::pset1<P>(3.00198505138664455042e-6), g2,
                    ei::pset1<P>(2.52448340349684104192e-3));
    q = ei::pmadd(q, g2, ei::pset1<P>(2.27265548208155028766e-1));
    q = ei::pmadd(q, g2, ei::pset1<P>(2.00000000000000000009e0));
    const P e = ei::pmadd(ei::pset1<P>(2.0), ei::pdiv(p, ei::psub(q, p)), ei::pset1<P>(1.0));
    return ei::pmax(_mm512_scalef_pd(e, n), x_in);
}

/// ln x on a double packet: Eigen 3.4's `plog` for double bit for bit (the Cephes rational
/// approximation log(1 + f) = f − f²/2 + f³·P(f)/Q(f) on the significand shifted into
/// [√½, √2), plus e·ln2; x first raised to the least normal double; the same operations in
/// the same order), with the split of x into significand and exponent in two instructions
/// (`vgetmantpd`, `vgetexppd`) where Eigen's generic `pfrexp` takes about a dozen. For the
/// normal x that reach it both give m ∈ [½, 1) and e with x = m·2^e exactly; the rest (0,
/// negative, ±inf, NaN) is overwritten by the same final selects as Eigen's.
EIGEN_ALWAYS_INLINE Eigen::internal::Packet8d log(const Eigen::internal::Packet8d& x_in) {
    namespace ei = Eigen::internal;
    using P = ei::Packet8d;
    const P one = ei::pset1<P>(1.0);
    const P x0 = ei::pmax(x_in, ei::pset1frombits<P>(std::uint64_t(0x0010000000000000ull)));
    P x = _mm512_getmant_pd(x0, _MM_MANT_NORM_p5_1, _MM_MANT_SIGN_src);
    P e = ei::padd(_mm512_getexp_pd(x0), one);
    const P below = ei::pcmp_lt(x, ei::pset1<P>(0.70710678118654752440E0));
    const P tmp = ei::pand(x, below);
    x = ei::psub(x, one);
    e = ei::psub(e, ei::pand(one, below));
    x = ei::padd(x, tmp);
    const P x2 = ei::pmul(x, x);
    const P x3 = ei::pmul(x2, x);
    P y = ei::pmadd(ei::pset1<P>(1.01875663804580931796E-4), x,
                    ei::pset1<P>(4.97494994976747001425E-1));
    P y1 = ei::pmadd(ei::pset1<P>(1.44989225341610930846E1), x,
                     ei::pset1<P>(1.79368678507819816313E1));
    y = ei::pmadd(y, x, ei::pset1<P>(4.70579119878881725854E0));
    y1 = ei::pmadd(y1, x, ei::pset1<P>(7.70838733755885391666E0));
    P num = ei::pmadd(y, x3, y1);
    y = ei::pmadd(one, x, ei::pset1<P>(1.12873587189167450590E1));
    y1 = ei::pmadd(ei::pset1<P>(8.29875266912776603211E1), x,
                   ei::pset1<P>(7.11544750618563894466E1));
    y = ei::pmadd(y, x, ei::pset1<P>(4.52279145837532221105E1));
    y1 = ei::pmadd(y1, x, ei::pset1<P>(2.31251620126765340583E1));
    y = ei::pmadd(y, x3, y1);
    num = ei::pmul(num, x3);
    y = ei::pdiv(num, y);
    y = ei::pmadd(ei::pset1<P>(-0.5), x2, y);
    x = ei::padd(x, y);
    x = ei::pmadd(e, ei::pset1<P>(static_cast<double>(EIGEN_LN2)), x);
    const P invalid = ei::pcmp_lt_or_nan(x_in, ei::pzero(x_in));
    const P zero = ei::pcmp_eq(x_in, ei::pzero(x_in));
    const P inf = ei::pset1frombits<P>(std::uint64_t(0x7ff0000000000000ull));
    const P pos_inf = ei::pcmp_eq(x_in, inf);
    return ei::pselect(zero, ei::pset1frombits<P>(std::uint64_t(0xfff0000000000000ull)),
                       ei::por(ei::pselect(pos_inf, inf, x), invalid));
}

/// ln x by 32 cells of [1, 2) (core/simd/fast_math.hpp has the method and the accuracy):
/// x = m·2^e, rcp_i and lnc_i picked by the top five mantissa bits of m from the 32-entry
/// tables `rcp` and `lnc` (64-byte aligned), r = m·rcp_i − 1, ln(1 + r) ≈ r + r²(a + b r),
/// ln x = e·ln2 + lnc_i + ln(1 + r).
EIGEN_ALWAYS_INLINE Packet16f log_cells(const Packet16f& x, const float* rcp, const float* lnc,
                                        float a, float b, float ln2) {
    const __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
    const __m512 e = _mm512_getexp_ps(x);                                         // floor(log2 x)
    const __m512i i = _mm512_srli_epi32(_mm512_castps_si512(m), 18);  // low 5 bits: the cell
    const __m512 rc = _mm512_permutex2var_ps(_mm512_load_ps(rcp), i, _mm512_load_ps(rcp + 16));
    const __m512 lc = _mm512_permutex2var_ps(_mm512_load_ps(lnc), i, _mm512_load_ps(lnc + 16));
    const __m512 r = _mm512_fmsub_ps(m, rc, _mm512_set1_ps(1.0f));
    const __m512 r2 = _mm512_mul_ps(r, r);
    const __m512 t = _mm512_fmadd_ps(r, _mm512_set1_ps(b), _mm512_set1_ps(a));
    const __m512 l = _mm512_fmadd_ps(r2, t, r);
    return _mm512_fmadd_ps(e, _mm512_set1_ps(ln2), _mm512_add_ps(lc, l));
}

/// sign(t) ∈ {−1, 0, +1} by class in one `vfixupimmps`: 4-bit responses per class, class 7
/// first: positive → +1 (A), negative → −1 (9), +inf → +1, −inf → −1, +1 → +1, zero → +0 (8),
/// SNaN and QNaN → 0 (8). Exact for subnormal t.
EIGEN_ALWAYS_INLINE Packet16f sign_by_class(const Packet16f& t) {
    return _mm512_fixupimm_ps(t, t, _mm512_set1_epi32(static_cast<int>(0xA9A9A888u)), 0);
}

/// Lane masks in mask registers (`simd::LaneMask`): the ordered compares (false where either
/// side is NaN) into a mask, a blend (a where the mask is set, else b) and a zero-masked move,
/// lane for lane what Eigen's vector compares and `pselect` give, in one instruction each.
EIGEN_ALWAYS_INLINE __mmask16 cmp_lt(const Packet16f& a, const Packet16f& b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ);
}
EIGEN_ALWAYS_INLINE __mmask16 cmp_le(const Packet16f& a, const Packet16f& b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ);
}
EIGEN_ALWAYS_INLINE __mmask16 cmp_eq(const Packet16f& a, const Packet16f& b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ);
}
/// a ≠ b, or either side NaN (unordered): the complement of `cmp_eq`
EIGEN_ALWAYS_INLINE __mmask16 cmp_neq(const Packet16f& a, const Packet16f& b) {
    return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ);
}
EIGEN_ALWAYS_INLINE Packet16f blend(__mmask16 m, const Packet16f& a, const Packet16f& b) {
    return _mm512_mask_blend_ps(m, b, a);
}
EIGEN_ALWAYS_INLINE Packet16f zero_unless(__mmask16 m, const Packet16f& a) {
    return _mm512_maskz_mov_ps(m, a);
}
using Packet8d = Eigen::internal::Packet8d;
EIGEN_ALWAYS_INLINE __mmask8 cmp_lt(const Packet8d& a, const Packet8d& b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ);
}
EIGEN_ALWAYS_INLINE __mmask8 cmp_le(const Packet8d& a, const Packet8d& b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ);
}
EIGEN_ALWAYS_INLINE __mmask8 cmp_eq(const Packet8d& a, const Packet8d& b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ);
}
EIGEN_ALWAYS_INLINE __mmask8 cmp_neq(const Packet8d& a, const Packet8d& b) {
    return _mm512_cmp_pd_mask(a, b, _CMP_NEQ_UQ);
}
EIGEN_ALWAYS_INLINE Packet8d blend(__mmask8 m, const Packet8d& a, const Packet8d& b) {
    return _mm512_mask_blend_pd(m, b, a);
}
EIGEN_ALWAYS_INLINE Packet8d zero_unless(__mmask8 m, const Packet8d& a) {
    return _mm512_maskz_mov_pd(m, a);
}

}  // namespace avx512
#endif

}  // namespace rlpo::detail::simd
