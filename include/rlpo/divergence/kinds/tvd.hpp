#pragma once
/// \file
/// Total variation ½ Σ |q − p|, ∂/∂z = q (h − Σ q h)/τ with h = ½ sign(q − p): the math of
/// the kind in the vocabulary pipeline (internal; divergence/detail/kind_math.hpp has the
/// interface). Three stages; the value sweep reads no logits and is cheap enough to run on
/// its own when two pairs of work rows overflow L2 (`kValueSweepAlone`).

#include <rlpo/divergence/detail/kind_math.hpp>

#include <cmath>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::TVD> : GradThreeStage {
    static constexpr int kStage2LogitRows = 0;
    static constexpr bool kValueSweepAlone = true;

    /// s = sign(q − p) (h = s/2); v1 = Σ |q − p| = Σ (q − p) s, v2 = Σ e_q s (× f_q/2).
    /// q and p are rounded before the subtraction, so that equal rows give s = 0.
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage2(const O& o, T eq, T ep, T, T, T& o2, T& v1, T& v2) {
        T q = o.mul(eq, o.set1(o.k.fq)), p = o.mul(ep, o.set1(o.k.fp));
        RLPO_DISTILL_ROUNDED(q);
        RLPO_DISTILL_ROUNDED(p);
        const T t = o.sub(q, p);
        const T h = sign_of(t);
        v1 = o.madd(t, h, v1);
        v2 = o.madd(eq, h, v2);
        o2 = h;
    }
    /// v2 is a sum of e_q·sign: × f_q
    static EIGEN_ALWAYS_INLINE double v2_weight(double f0, double) { return f0; }
    /// L = ½ Σ |q − p|; ∂L/∂z = q (h − Σ q h)/τ with h = s/2 = ½ q (s − Σ q s)/τ
    template <class A>
    static EIGEN_ALWAYS_INLINE bool finish2(Finish2& f) {
        f.L = 0.5 * f.u1;
        f.factor *= 0.5;
        return true;
    }
    template <class X>
    static EIGEN_ALWAYS_INLINE double exact(const X& x) {
        using A = typename X::Scalar;
        // L = ½ Σ |p − q|;  h = ½ sign(q − p)
        x.normalise();
        const double L = 0.5 * (x.ep - x.eq).abs().template cast<double>().sum();
        x.ep = A(0.5) * (x.eq - x.ep).sign();
        x.set_centred();
        return L;
    }
};

}  // namespace rlpo::distill::detail
