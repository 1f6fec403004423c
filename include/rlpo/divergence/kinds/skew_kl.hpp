#pragma once
/// \file
/// Skew KL(p‖m), m = αp + (1−α)q (DistiLLM), ∂/∂z = q (g − Σ q g)/τ with g = −(1−α) p/m:
/// the math of the kind in the vocabulary pipeline (internal;
/// divergence/detail/kind_math.hpp has the interface). Three stages; the value sweep reads
/// the teacher's logits.

#include <rlpo/core/result.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/kind_math.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <Eigen/Core>

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
    template <bool Safe, class S, class A, class ZS, class YS>
    static EIGEN_ALWAYS_INLINE double exact(const ExactRow<S, A, ZS, YS>& x) {
        const DistillOptions& o = x.o;
        auto& eq = x.eq;
        auto& ep = x.ep;
        const auto& zs = x.zs;
        const auto& ys = x.ys;
        const A invT = x.invT, cq = x.cq, cp = x.cp, iq = x.iq, ip = x.ip;
        const A zero(0);
        const A oma = static_cast<A>(1.0 - o.alpha);
        // L = Σ p (log p − log m), m = αp + (1−α)q (log m: `log_mix`);  g = −(1−α) p/m
        const ArrMap<A> lm = mix_row(x.ws, x.V);
        log_mix<A>(lm, ys * invT + cp, zs * invT + cq, o.alpha, 1.0 - o.alpha);
        eq *= iq;
        ep *= ip;
        const double L =
            keep_if<Safe>(ep > zero, ep * ((ys * invT + cp) - lm)).template cast<double>().sum();
        if (!std::isfinite(L)) return L;
        ep = keep_if<Safe>(ep > zero, -oma * ((ys * invT + cp) - lm).exp());
        const A sg = (eq * ep).sum();
        x.rg.set(eq * (ep - sg) * invT);
        return L;
    }
};

}  // namespace rlpo::distill::detail
