#pragma once
/// \file
/// The portable packet vocabulary of rlpo's SIMD kernels (internal): `simd::Packet<S>` (the
/// widest packet of S that Eigen has for the build), `simd::width<S>` (its lanes), set1 / load
/// / store helpers that never touch memory past the end of a row, and the blend idioms. The
/// token-level kernels (policy/, penalties/) and the vocabulary kernels (distill/, divergence/)
/// speak this one vocabulary; the operations are Eigen's own packet primitives, portable to
/// every instruction set Eigen supports. The few x86 instructions Eigen has no primitive for
/// (streaming stores, prefetch, the AVX-512 pieces of the fast math) are in arch/avx512.hpp.

#include <rlpo/core/simd/arch/avx512.hpp>
#include <rlpo/core/types.hpp>

#include <Eigen/Core>

#include <cstddef>

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
/// a packet of S, loads that zero-pad past the end of a row, and the usual blend idioms.
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
using Eigen::internal::pexp;
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
/// `load` with the lanes where `keep` is clear set to 0 (masked positions never reach the math).
template <class S>
inline Packet<S> load_kept(const S* p, Index k, Index n, const Packet<S>& keep) {
    return pand(load(p, k, n), keep);
}
/// All-ones lanes where x is not NaN.
template <class S>
inline Packet<S> not_nan(const Packet<S>& x) {
    return pcmp_eq(x, x);
}
/// 1 where mask, else 0.
template <class S>
inline Packet<S> indicator(const Packet<S>& mask) {
    return pand(mask, set1<S>(S(1)));
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
