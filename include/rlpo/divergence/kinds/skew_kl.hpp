#pragma once
/// \file
/// Skew KL(p‖m), m = αp + (1−α)q (DistiLLM), ∂/∂z = q (g − Σ q g)/τ with g = −(1−α) p/m:
/// the math of the kind in the vocabulary pipeline (internal;
/// divergence/detail/kind_math.hpp has the interface). Three stages; the value sweep reads
/// the teacher's logits.

#include <rlpo/divergence/detail/kind_math.hpp>

#include <cmath>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::SkewKL> : GradThreeStage {
    static constexpr int kStage2LogitRows = 1;  // the teacher's

    /// m = αp + (1−α)q; value p (log p − log m); factor −(1−α) p/m
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage2(const O& o, T eq, T ep, T, T yv, T& o2, T& v1, T& v2) {
        const T q = o.mul(eq, o.set1(o.k.fq)), p = o.mul(ep, o.set1(o.k.fp));
        const T m = o.add(o.mul(o.set1(o.k.al), p), o.mul(o.set1(o.k.oma), q));
        const T lp = o.lin(yv, o.k.cp);
        v1 = o.madd(p, o.sub(lp, o.log(m)), v1);
        const T h = o.div(o.times(o.set1(-o.k.oma), p), m);
        v2 = o.madd(q, h, v2);
        o2 = h;
    }
    /// the value lacks e·Σp = e (log p's row constant rounded to float, kFusedArg)
    template <class A>
    static EIGEN_ALWAYS_INLINE bool finish2(Finish2& f) {
        f.L = f.u1 + f.ecp;
        return true;
    }
    template <class X>
    static EIGEN_ALWAYS_INLINE double exact(const X& x) {
        using A = typename X::Scalar;
        // L = Σ p (log p − log m), m = αp + (1−α)q (log m: `log_mix`);  h = −(1−α) p/m
        const auto lm = x.log_mix(x.o.alpha, 1.0 - x.o.alpha);
        x.normalise();
        const double L = x.p_log_ratio(lm);
        if (!std::isfinite(L)) return L;
        const A oma = static_cast<A>(1.0 - x.o.alpha);
        x.ep = x.keep(x.ep > A(0), -oma * (x.lp() - lm).exp());
        x.set_centred();
        return L;
    }
};

}  // namespace rlpo::distill::detail
