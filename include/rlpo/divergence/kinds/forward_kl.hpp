#pragma once
/// \file
/// Forward KL(p‖q) = Σ p (log p − log q), ∂/∂z = (q − p)/τ: the math of the kind in the
/// vocabulary pipeline (internal; divergence/detail/kind_math.hpp has the interface). Two
/// stages: stage 1 sums the value terms Σ e_p (dy − dz), stage 3 writes q/τ − p/τ.

#include <rlpo/divergence/detail/kind_math.hpp>

#include <cmath>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::ForwardKL> : TwoStage {
    /// Σ e_p (dy − dz) on logits shifted by their chunk maxima; stores e_p
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE T stage1(const O& o, T, T ep, T dz, T dy, T& s3) {
        s3 = o.madd(ep, o.sub(dy, dz), s3);
        return ep;
    }
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage1_fused(const O&, T, T, T, T&) {}
    /// Σ p (y − z) = Σ e_p (dy − dz) + (my_k − mz_k) Σ e_p
    template <bool Fused>
    static EIGEN_ALWAYS_INLINE double merge1(double x, const Merge1Chunk& k) {
        return std::fma(k.ey, std::fma(k.s1, k.dyk - k.dzk, k.s2), x);
    }
    /// Σ p (log p − log q) = Σ p (y − z)/τ + (mz − my)/τ + log sq − log sp
    static EIGEN_ALWAYS_INLINE double value1(double x, const Merge1Row& r) {
        return std::fma(x / r.sp, r.invT, r.lsq) - r.lsp;
    }
    /// the chunk factor of p (scaled by 1/τ and the row's scale in `ip`)
    template <class A>
    static EIGEN_ALWAYS_INLINE A factor1(const Merge1Row&, double s1, double ip, double, double,
                                         double) {
        return static_cast<A>(s1 * ip);
    }
    /// q/τ − p/τ
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE T grad(const O& o, T x0, T x1) {
        return o.sub(o.mul(x0, o.set1(o.k.h0)), o.mul(x1, o.set1(o.k.h1)));
    }
    template <class X>
    static EIGEN_ALWAYS_INLINE double exact(const X& x) {
        using A = typename X::Scalar;
        // L = Σ p ((y − my) − (z − mz))/τ + (cp − cq)
        const double a = x.keep(x.ep > A(0), x.ep * (x.ys - x.zs)).template cast<double>().sum();
        const double L = a * x.ip * x.invT + static_cast<double>(x.cp) - static_cast<double>(x.cq);
        if (!std::isfinite(L)) return L;
        x.rg.set((x.eq * x.iq - x.ep * x.ip) * x.invT);
        return L;
    }
};

}  // namespace rlpo::distill::detail
