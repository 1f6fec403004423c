#pragma once
/// \file
/// The arithmetic conventions of the pipelined divergence kernels (internal): the contraction
/// rule (`rounded`, `madd_as_packet`), the sign by class, the chunk maxima, and the shifted
/// exponential of the softmax sweeps (`ShiftedExp`).

#include <rlpo/core/simd/fast_math.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/distill/detail/rows.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

/// Forces `x` to be rounded to its type here (core/simd/packet.hpp).
#define RLPO_DISTILL_ROUNDED(x) RLPO_SIMD_ROUNDED(x)

/// Unroll the next loop by two where the compiler has a pragma for it.
#if defined(__clang__)
#define RLPO_DISTILL_UNROLL2 _Pragma("unroll 2")
#elif defined(__GNUC__)
#define RLPO_DISTILL_UNROLL2 _Pragma("GCC unroll 2")
#else
#define RLPO_DISTILL_UNROLL2
#endif

namespace rlpo::distill::detail {

/// **Contraction.** GCC fuses a product into a later sum (`-ffp-contract=fast`, its default
/// outside ISO mode) across statements and inlined calls, packet intrinsics included, and
/// not necessarily in the same way in every copy of a function: `fused_chunk` is instantiated
/// once per combination of stages, so the same row would round differently with and without
/// a gradient, or with one thread and two. (Seen: forward KL in double, tuned for AMD Zen,
/// summed a row tail's Σ ep·(dy − dz) fused in one copy and not in the other.) So every
/// product that meets a sum in these kernels is either an explicit multiply-add (`pmadd`,
/// `std::fma`, `madd_as_packet`) or rounded first (`rounded`); none is left to the compiler.

/// `x`, rounded to its type at this point (a product so marked is never fused into a sum).
using ::rlpo::detail::simd::rounded;

/// a·b + c rounded as the build's `pmadd` on packets rounds it (fused with a hardware
/// multiply-add, else a product and a sum), so that a row's tail entries match its packets.
template <class A>
inline A madd_as_packet(A a, A b, A c) {
#if defined(__FMA__) || defined(EIGEN_VECTORIZE_FMA)
    return std::fma(a, b, c);
#else
    A p = a * b;
    RLPO_DISTILL_ROUNDED(p);
    return p + c;
#endif
}

/// sign(t) ∈ {−1, 0, +1}, 0 for ±0 and NaN (a NaN t makes the value NaN anyway), exact for
/// subnormal t: on AVX-512 float packets one `vfixupimmps`, which maps each class of t to a
/// constant; elsewhere two comparisons.
template <class T>
inline T sign_of(const T& t) {
    namespace ei = Eigen::internal;
    if constexpr (std::is_floating_point<T>::value) {
        return static_cast<T>((t > T(0)) - (t < T(0)));
    } else {
#if defined(__AVX512F__)
        using Tr = ei::unpacket_traits<T>;
        if constexpr (std::is_same<typename Tr::type, float>::value && Tr::size == 16)
            return ::rlpo::detail::simd::avx512::sign_by_class(t);
#endif
        using A = typename ei::unpacket_traits<T>::type;
        const T zero = ei::pzero(t), one = ei::pset1<T>(A(1));
        return ei::psub(ei::pand(ei::pcmp_lt(zero, t), one), ei::pand(ei::pcmp_lt(t, zero), one));
    }
}

/// The maxima and minima of one chunk of both logit rows, in one vectorised sweep. (NaN is
/// not looked for here: it makes a row sum or the value non-finite and the row is then redone
/// on the exact path; a +inf shows up as the maximum, a −inf as the minimum.)
template <class A>
inline void chunk_range(const A* z, const A* y, Index len, A& zmax, A& ymax, A& zmin, A& ymin) {
    namespace ei = Eigen::internal;
    using P = Packet<A>;
    constexpr Index W = kPacket<A>;
    constexpr A inf = std::numeric_limits<A>::infinity();
    const Index lv = len - len % W;
    zmax = ymax = -inf;
    zmin = ymin = inf;
    if (lv > 0) {
        P pz = ei::ploadu<P>(z), py = ei::ploadu<P>(y), lz = pz, ly = py;
        for (Index j = W; j < lv; j += W) {
            const P vz = ei::ploadu<P>(z + j), vy = ei::ploadu<P>(y + j);
            pz = ei::pmax(pz, vz);
            py = ei::pmax(py, vy);
            lz = ei::pmin(lz, vz);
            ly = ei::pmin(ly, vy);
        }
        zmax = ei::predux_max(pz);
        ymax = ei::predux_max(py);
        zmin = ei::predux_min(lz);
        ymin = ei::predux_min(ly);
    }
    for (Index j = lv; j < len; ++j) {
        zmax = std::max(zmax, z[j]);
        ymax = std::max(ymax, y[j]);
        zmin = std::min(zmin, z[j]);
        ymin = std::min(ymin, y[j]);
    }
}

/// exp((x − max)/τ) of the softmax sweeps: for float the short base-2 exponential of
/// core/simd/fast_math.hpp of (x − max)·a with a = log2(e)/τ, for double Eigen's `pexp` of
/// (x − max)/τ. The subtraction comes first (`packet_shifted`), or, with a hardware
/// multiply-add, the argument is one instruction (`packet_fused`): t = fma(x, a, −fl(max·a)).
/// There x·a is exact inside the multiply-add; the constant's rounding δ = max·a − fl(max·a)
/// (`delta`, exact in double) is the same for the whole chunk, exp2(t) = 2^((x − max)·a + δ),
/// and the caller divides its chunk factor by 2^δ. (Rounding max·a without that correction
/// would be an absolute error in the exponent that grows with the size of the logits.)
template <class A>
struct ShiftedExp {
    A m, a, nc;  // nc = −fl(m·a)
    static A scale(A invT) {
        return std::is_same<A, float>::value
                   ? static_cast<A>(1.4426950408889634 * static_cast<double>(invT))
                   : invT;
    }
    ShiftedExp(A max, A invT) : m(max), a(scale(invT)), nc(-(max * a)) {}
    /// δ = max·a − fl(max·a) of `packet_fused` (0 for a non-finite max)
    static double delta(A max, A invT) {
        const A a = scale(invT), r = max * a;
        const double d = static_cast<double>(max) * static_cast<double>(a) - static_cast<double>(r);
        return std::isfinite(d) ? d : 0.0;
    }
    /// 2^(x·a − fl(max·a)) for float with a fused multiply-add (see above).
    template <class P>
    P packet_arg(const P& x) const {
        namespace ei = Eigen::internal;
        return ei::pmadd(x, ei::pset1<P>(a), ei::pset1<P>(nc));
    }
    A scalar_arg(A x) const { return std::fma(x, a, nc); }
    template <class P>
    P packet_fused(const P& x) const {
        return ::rlpo::detail::pexp2(packet_arg(x));
    }
    A scalar_fused(A x) const { return ::rlpo::detail::exp2_scalar(scalar_arg(x)); }
    /// exp of d/τ for an already shifted d = x − max.
    template <class P>
    P packet_shifted(const P& d) const {
        namespace ei = Eigen::internal;
        const P t = ei::pmul(d, ei::pset1<P>(a));
        if constexpr (std::is_same<A, float>::value)
            return ::rlpo::detail::pexp2(t);
        else
            return ::rlpo::detail::simd::pexp(t);
    }
    A scalar_shifted(A d) const {
        if constexpr (std::is_same<A, float>::value)
            return ::rlpo::detail::exp2_scalar(d * a);
        else
            return std::exp(d * a);
    }
};

}  // namespace rlpo::distill::detail
