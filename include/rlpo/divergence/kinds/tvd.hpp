#pragma once
/// \file
/// Total variation ½ Σ |q − p|, ∂/∂z = q (h − Σ q h)/τ with h = ½ sign(q − p): the math of
/// the kind in the vocabulary pipeline (internal; divergence/detail/kind_math.hpp has the
/// interface). Three stages; the value sweep reads no logits and is cheap enough to run on
/// its own when two pairs of work rows overflow L2 (`kValueSweepAlone`).

#include <rlpo/core/result.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/arith.hpp>
#include <rlpo/divergence/detail/kind_math.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <Eigen/Core>

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
    template <bool Safe, class S, class A, class ZS, class YS>
    static EIGEN_ALWAYS_INLINE double exact(const ExactRow<S, A, ZS, YS>& x) {
        auto& eq = x.eq;
        auto& ep = x.ep;
        const A invT = x.invT, iq = x.iq, ip = x.ip;
        eq *= iq;
        ep *= ip;
        const double L = 0.5 * (ep - eq).abs().template cast<double>().sum();
        const A half(0.5);
        ep = half * (eq - ep).sign();
        const A sg = (eq * ep).sum();
        x.rg.set(eq * (ep - sg) * invT);
        return L;
    }
};

}  // namespace rlpo::distill::detail
