#pragma once
/// \file
/// The portable packet vocabulary of rlpo's SIMD kernels (internal): `simd::Packet<S>` (the
/// widest packet of S that Eigen has for the build), `simd::width<S>` (its lanes), set1 / load
/// / store helpers that never touch memory past the end of a row, and the lane masks. The
/// token-level kernels (policy/, penalties/) and the vocabulary kernels (distill/, divergence/)
/// speak this one vocabulary; the operations are Eigen's own packet primitives, portable to
/// every instruction set Eigen supports. The few x86 instructions Eigen has no primitive for
/// (streaming stores, prefetch, mask registers, the AVX-512 pieces of the fast math) are in
/// arch/avx512.hpp.

#include <rlpo/core/simd/arch/avx512.hpp>
#include <rlpo/core/types.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

/// Forces `x` to be rounded to its type here (keeps the compiler from fusing the product
/// that made it into a later sum; see docs/architecture.md, Contraction).
#if defined(__GNUC__) && defined(__SSE2__)
#define RLPO_SIMD_ROUNDED(x) __asm__ volatile("" : "+v"(x))
#elif defined(EIGEN_OPTIMIZATION_BARRIER)
#define RLPO_SIMD_ROUNDED(x) EIGEN_OPTIMIZATION_BARRIER(x)
#else
#define RLPO_SIMD_ROUNDED(x) (void)0
#endif

/// On a row body, `[&](Index i) RLPO_SIMD_FLATTEN { … }`: every call in it is inlined into it,
/// Eigen's `pexp` included, which GCC otherwise leaves out of line. A call inside a packet loop
/// spills every live packet around it (the x86-64 ABI keeps no vector register across a call):
/// in cache, the training step's pass took about 8% longer. Define it empty before including
/// rlpo to turn it off; the results are the same either way.
#ifndef RLPO_SIMD_FLATTEN
#if defined(__GNUC__)
#define RLPO_SIMD_FLATTEN __attribute__((flatten))
#else
#define RLPO_SIMD_FLATTEN
#endif
#endif

namespace rlpo::detail {

/// SIMD helpers over Eigen's packet primitives (the same ones Eigen's own array code uses):
/// a packet of S, loads that zero-pad past the end of a row, and the lane masks (`LaneMask`).
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
using Eigen::internal::pmax;
using Eigen::internal::pmin;
using Eigen::internal::pmul;
using Eigen::internal::pnegate;
using Eigen::internal::por;
using Eigen::internal::pselect;
using Eigen::internal::psub;
/// `x`, rounded to its type at this point (a product so marked is never fused into a sum).
template <class T>
EIGEN_ALWAYS_INLINE T rounded(T x) {
    RLPO_SIMD_ROUNDED(x);
    return x;
}
/// e^x on a packet: Eigen's `pexp`, bit for bit. On AVX-512 double packets it is
/// `avx512::exp` (arch/avx512.hpp), Eigen's operations with the final scaling by 2^n in one
/// instruction, the same bits for every input (about a third off the vocabulary penalties,
/// which compute in double). Every packet exponential of the kernels goes through here.
template <class P>
EIGEN_ALWAYS_INLINE P pexp(const P& x) {
    return Eigen::internal::pexp(x);
}
#if defined(__AVX512F__)
EIGEN_ALWAYS_INLINE Eigen::internal::Packet8d pexp(const Eigen::internal::Packet8d& x) {
    return avx512::exp(x);
}
#endif
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
/// Store entries [k, min(k + width, n)) into a caller's buffer (never writes past n).
template <class S>
inline void store_n(S* p, Index k, Index n, const Packet<S>& v) {
    constexpr Index W = width<S>;
    if (k + W <= n) return Eigen::internal::pstoreu(p + k, v);
    S buf[W];
    Eigen::internal::pstoreu(buf, v);
    for (Index j = 0; k + j < n; ++j) p[k + j] = buf[j];
}
/// Flags in `bad` (an accumulator started at 0) every lane where x or y is not finite: x·0 +
/// y·0 is NaN exactly then, and a NaN stays in the accumulator. Two multiply-adds per packet
/// instead of compares and masks; `any_flagged` tells after the loop.
template <class S>
inline void flag_non_finite(Packet<S>& bad, const Packet<S>& x, const Packet<S>& y) {
    const Packet<S> zero = set1<S>(S(0));
    bad = Eigen::internal::pmadd(y, zero, Eigen::internal::pmadd(x, zero, bad));
}
/// Whether `flag_non_finite` flagged a lane of `bad`.
template <class S>
inline bool any_flagged(const Packet<S>& bad) {
    return !(std::abs(static_cast<double>(Eigen::internal::predux(bad))) <
             std::numeric_limits<double>::infinity());
}
/// Whether packets of S have AVX-512 mask registers for their lane masks (float, double).
template <class S>
inline constexpr bool kMaskRegisters =
#if defined(__AVX512F__)
    std::is_same<S, float>::value || std::is_same<S, double>::value;
#else
    false;
#endif

/// The lanes of a packet of S where a compare holds (`mask_lt`, `mask_le`, `mask_eq`,
/// `mask_neq`, `mask_not_nan`), combined by `mask_and` and `mask_andnot`, tested by
/// `mask_any` and used by `mask_select`, `mask_zero_unless`, `mask_indicator` and `load_kept`.
/// Generically the all-ones / zero lanes of a packet, as Eigen's compares give them; for
/// AVX-512's float and double packets (`kMaskRegisters`) a mask register, so that a compare and
/// a select are one instruction each instead of two (Eigen's compares move their mask into a
/// vector, which its `pselect` tests again). The lanes, and so every result, are the same
/// either way: the compares are ordered (false where either side is NaN), as Eigen's.
/// (Templates on the scalar: a vector type as a template argument loses its attributes.)
template <class S, bool K = kMaskRegisters<S>>
struct LaneMask {
    Packet<S> v;
};
#if defined(__AVX512F__)
template <>
struct LaneMask<float, true> {
    __mmask16 k;
};
template <>
struct LaneMask<double, true> {
    __mmask8 k;
};
#endif
template <class S>
inline LaneMask<S> mask_lt(const Packet<S>& a, const Packet<S>& b) {
#if defined(__AVX512F__)
    if constexpr (kMaskRegisters<S>) {
        return {avx512::cmp_lt(a, b)};
    } else
#endif
    {
        return {pcmp_lt(a, b)};
    }
}
template <class S>
inline LaneMask<S> mask_le(const Packet<S>& a, const Packet<S>& b) {
#if defined(__AVX512F__)
    if constexpr (kMaskRegisters<S>) {
        return {avx512::cmp_le(a, b)};
    } else
#endif
    {
        return {pcmp_le(a, b)};
    }
}
template <class S>
inline LaneMask<S> mask_eq(const Packet<S>& a, const Packet<S>& b) {
#if defined(__AVX512F__)
    if constexpr (kMaskRegisters<S>) {
        return {avx512::cmp_eq(a, b)};
    } else
#endif
    {
        return {pcmp_eq(a, b)};
    }
}
/// The lanes where a ≠ b or either side is NaN: exactly those where `mask_eq` is clear.
template <class S>
inline LaneMask<S> mask_neq(const Packet<S>& a, const Packet<S>& b) {
#if defined(__AVX512F__)
    if constexpr (kMaskRegisters<S>) {
        return {avx512::cmp_neq(a, b)};
    } else
#endif
    {
        return {pandnot(Eigen::internal::ptrue(a), pcmp_eq(a, b))};
    }
}
/// The lanes where x is not NaN.
template <class S>
inline LaneMask<S> mask_not_nan(const Packet<S>& x) {
    return mask_eq<S>(x, x);
}
template <class S>
inline LaneMask<S> mask_and(const LaneMask<S>& a, const LaneMask<S>& b) {
    if constexpr (kMaskRegisters<S>)
        return {static_cast<decltype(a.k)>(a.k & b.k)};
    else
        return {pand(a.v, b.v)};
}
/// The lanes of a that are not in b.
template <class S>
inline LaneMask<S> mask_andnot(const LaneMask<S>& a, const LaneMask<S>& b) {
    if constexpr (kMaskRegisters<S>)
        return {static_cast<decltype(a.k)>(a.k & ~b.k)};
    else
        return {pandnot(a.v, b.v)};
}
/// Whether any lane is set.
template <class S>
inline bool mask_any(const LaneMask<S>& m) {
    if constexpr (kMaskRegisters<S>)
        return m.k != 0;
    else
        return Eigen::internal::predux_any(m.v);
}
/// a where the mask holds, else b.
template <class S>
inline Packet<S> mask_select(const LaneMask<S>& m, const Packet<S>& a, const Packet<S>& b) {
#if defined(__AVX512F__)
    if constexpr (kMaskRegisters<S>) {
        return avx512::blend(m.k, a, b);
    } else
#endif
    {
        return pselect(m.v, a, b);
    }
}
/// x where the mask holds, else 0.
template <class S>
inline Packet<S> mask_zero_unless(const LaneMask<S>& m, const Packet<S>& x) {
#if defined(__AVX512F__)
    if constexpr (kMaskRegisters<S>) {
        return avx512::zero_unless(m.k, x);
    } else
#endif
    {
        return pand(x, m.v);
    }
}
/// `load` with the lanes where `keep` is clear set to 0 (masked positions never reach the math).
template <class S>
inline Packet<S> load_kept(const S* p, Index k, Index n, const LaneMask<S>& keep) {
    return mask_zero_unless<S>(keep, load(p, k, n));
}
/// 1 where the mask holds, else 0.
template <class S>
inline Packet<S> mask_indicator(const LaneMask<S>& m) {
#if defined(__AVX512F__)
    if constexpr (kMaskRegisters<S>) {
        return avx512::zero_unless(m.k, set1<S>(S(1)));
    } else
#endif
    {
        return pand(m.v, set1<S>(S(1)));
    }
}
/// K packets (a plain array member: std::array of a vector type would drop its alignment
/// attributes in the template argument).
template <class S, std::size_t K>
struct Packets {
    Packet<S> p[K];
    Packet<S>& operator[](std::size_t j) { return p[j]; }
    const Packet<S>& operator[](std::size_t j) const { return p[j]; }
    void fill(const Packet<S>& v) {
        for (std::size_t j = 0; j < K; ++j) p[j] = v;
    }
};
}  // namespace simd

}  // namespace rlpo::detail
