#pragma once
/// \file
/// Reverse KL(q‖p) = Σ q (log q − log p), ∂/∂z = q (log q − log p − L)/τ: the math of the
/// kind in the vocabulary pipeline (internal; divergence/detail/kind_math.hpp has the
/// interface). Two stages: stage 1 sums Σ e_q (dz − dy) and stores dz − dy, stage 3 writes
/// q ((z − y)/τ + k)/τ.

#include <rlpo/core/result.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/kind_math.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <Eigen/Core>

#include <cmath>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::ReverseKL> {
    static constexpr int kStages = 2;
    static constexpr bool kLean = false;
    static constexpr int kStage2LogitRows = 0;
    static constexpr bool kValueSweepAlone = false;

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
    template <bool Safe, class S, class A, class ZS, class YS>
    static EIGEN_ALWAYS_INLINE double exact(const ExactRow<S, A, ZS, YS>& x) {
        auto& eq = x.eq;
        const auto& zs = x.zs;
        const auto& ys = x.ys;
        const A invT = x.invT, cq = x.cq, cp = x.cp, iq = x.iq;
        const A zero(0);
        const double b = keep_if<Safe>(eq > zero, eq * (zs - ys)).template cast<double>().sum();
        const double L = b * iq * invT + static_cast<double>(cq) - static_cast<double>(cp);
        if (!std::isfinite(L)) return L;
        const A k = static_cast<A>(static_cast<double>(cq) - static_cast<double>(cp) - L);
        x.rg.set(keep_if<Safe>(eq > zero, eq * iq * ((zs - ys) * invT + k)) * invT);
        return L;
    }
};

}  // namespace rlpo::distill::detail
