#pragma once
/// \file
/// χ²(q‖p) = Σ q²/p − 1 = Σ q (q/p − 1), ∂/∂z = 2 q (h − Σ q h)/τ with h = q/p − 1: the math
/// of the kind in the vocabulary pipeline (internal; divergence/detail/kind_math.hpp has the
/// interface). Three stages; the value sweep's one sum is both the value and the gradient's
/// shift.

#include <rlpo/divergence/detail/kind_math.hpp>

#include <cmath>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::ChiSquared> : GradThreeStage {
    /// (stage 2 reads both logit rows, for their −inf only: counted as one)
    static constexpr int kStage2LogitRows = 1;
    /// h = q/p − 1 is exact only where both exponentials are (`finish_stage1`)
    static constexpr bool kMassRatio = true;

    /// r = q/p, h = r − 1; v1 = Σ q h, the value and the gradient's shift Σ q h. A −inf
    /// logit need not give an exponential of exactly 0 (Eigen's exp clamps): h + 0·(z + y),
    /// NaN there, sends such rows to the exact path (h itself is unchanged).
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage2(const O& o, T eq, T ep, T zv, T yv, T& o2, T& v1, T&) {
        const T q = o.mul(eq, o.set1(o.k.fq)), p = o.mul(ep, o.set1(o.k.fp));
        const T h = o.add(o.sub(o.div(q, p), o.set1(1)), o.times(o.add(zv, yv), o.set1(0)));
        v1 = o.madd(q, h, v1);
        o2 = h;
    }
    /// L = Σ q (r − 1); ∂L/∂z = 2 q (h − Σ q h)/τ, h = r − 1: the shift is the value sum
    template <class A>
    static EIGEN_ALWAYS_INLINE bool finish2(Finish2& f) {
        f.L = f.u1;
        f.u2 = f.u1;
        f.factor *= 2.0;
        return true;
    }
    template <class X>
    static EIGEN_ALWAYS_INLINE double exact(const X& x) {
        using A = typename X::Scalar;
        // L = Σ q²/p − 1 = Σ q (r − 1), r = q/p = exp(log q − log p) (+inf where p = 0 < q:
        // an infinite divergence); ∂L/∂z = 2 q (h − Σ q h)/τ with h = r − 1
        x.eq *= x.iq;
        x.ep = x.keep(x.eq > A(0), ((x.zs - x.ys) * x.invT + (x.cq - x.cp)).exp() - A(1));
        const double L = (x.eq * x.ep).template cast<double>().sum();
        if (!std::isfinite(L)) return L;
        x.set_centred(A(2));
        return L;
    }
};

}  // namespace rlpo::distill::detail
