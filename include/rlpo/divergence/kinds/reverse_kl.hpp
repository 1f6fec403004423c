#pragma once
/// \file
/// Reverse KL(q‖p) = Σ q (log q − log p), ∂/∂z = q (log q − log p − L)/τ: the math of the
/// kind in the vocabulary pipeline (internal; divergence/detail/kind_math.hpp has the
/// interface). Two stages: stage 1 sums Σ e_q (dz − dy) and stores dz − dy, stage 3 writes
/// q ((z − y)/τ + k)/τ.

#include <rlpo/divergence/detail/kind_math.hpp>

#include <cmath>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::ReverseKL> : TwoStage {
    /// Σ e_q (dz − dy); stores dz − dy
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE T stage1(const O& o, T eq, T, T dz, T dy, T& s3) {
        const T d = o.sub(dz, dy);
        s3 = o.madd(eq, d, s3);
        return d;
    }
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage1_fused(const O&, T, T, T, T&) {}
    template <bool Fused>
    static EIGEN_ALWAYS_INLINE double merge1(double x, const Merge1Chunk& k) {
        return std::fma(k.ez, std::fma(k.s0, k.dzk - k.dyk, k.s2), x);
    }
    static EIGEN_ALWAYS_INLINE double value1(double x, const Merge1Row& r) {
        return std::fma(x / r.sq, r.invT, r.lsp) - r.lsq;
    }
    /// log q − log p − L = (dz − dy)/τ + f1_k
    template <class A>
    static EIGEN_ALWAYS_INLINE A factor1(const Merge1Row& r, double, double, double dzk, double dyk,
                                         double L) {
        return static_cast<A>(std::fma(dzk - dyk, r.invT, r.lsp) - r.lsq - L);
    }
    /// q ((z − y)/τ + k)/τ
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE T grad(const O& o, T x0, T x1) {
        return o.times(o.times(x0, o.set1(o.k.h0)), o.madd(x1, o.set1(o.k.invT), o.set1(o.k.h1)));
    }
    template <class X>
    static EIGEN_ALWAYS_INLINE double exact(const X& x) {
        using A = typename X::Scalar;
        // L = Σ q ((z − mz) − (y − my))/τ + (cq − cp);  ∂L/∂z = q (log(q/p) − L)/τ
        const double b = x.keep(x.eq > A(0), x.eq * (x.zs - x.ys)).template cast<double>().sum();
        const double L = b * x.iq * x.invT + static_cast<double>(x.cq) - static_cast<double>(x.cp);
        if (!std::isfinite(L)) return L;
        const A k = static_cast<A>(static_cast<double>(x.cq) - static_cast<double>(x.cp) - L);
        x.rg.set(x.keep(x.eq > A(0), x.eq * x.iq * ((x.zs - x.ys) * x.invT + k)) * x.invT);
        return L;
    }
};

}  // namespace rlpo::distill::detail
