#pragma once
/// \file
/// Skew reverse KL(q‖m), m = (1−α)p + αq (DistiLLM), ∂/∂z = q (g − Σ q g)/τ with
/// g = log(q/m) + 1 − αq/m: the math of the kind in the vocabulary pipeline (internal;
/// divergence/detail/kind_math.hpp has the interface). Three stages; the value sweep reads
/// the student's logits.

#include <rlpo/core/result.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/kind_math.hpp>
#include <rlpo/divergence/kinds.hpp>

#include <Eigen/Core>

#include <cmath>

namespace rlpo::distill::detail {

template <>
struct KindMath<Divergence::SkewReverseKL> : GradThreeStage {
    static constexpr int kStage2LogitRows = 1;  // the student's

    /// m = (1−α)p + αq; r = log(q/m); factor r − α q/m
    template <class O, class T>
    static EIGEN_ALWAYS_INLINE void stage2(const O& o, T eq, T ep, T zv, T, T& o2, T& v1, T& v2) {
        const T q = o.mul(eq, o.set1(o.k.fq)), p = o.mul(ep, o.set1(o.k.fp));
        const T m = o.add(o.mul(o.set1(o.k.oma), p), o.mul(o.set1(o.k.al), q));
        const T r = o.sub(o.lin(zv, o.k.cq), o.log(m));
        v1 = o.madd(q, r, v1);
        const T h = o.sub(r, o.div(o.times(o.set1(o.k.al), q), m));
        v2 = o.madd(q, h, v2);
        o2 = h;
    }
    /// the value lacks e·Σq = e (log q's row constant rounded to float, kFusedArg)
    template <class A>
    static EIGEN_ALWAYS_INLINE bool finish2(Finish2& f) {
        f.L = f.u1 + f.ecq;
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
        // m = (1−α)p + αq (log m: `log_mix`);  L = Σ q log(q/m);  ∂L/∂q = log(q/m) + 1 −
        // αq/m
        const ArrMap<A> lm = mix_row(x.ws, x.V);
        log_mix<A>(lm, ys * invT + cp, zs * invT + cq, 1.0 - o.alpha, o.alpha);
        eq *= iq;
        ep *= ip;
        ep = keep_if<Safe>(eq > zero, (zs * invT + cq) - lm);
        const double L = (eq * ep).template cast<double>().sum();
        if (!std::isfinite(L)) return L;
        // g − 1 = log(q/m) − α q/m, with α q/m = exp(log α + log(q/m)) ≤ 1 (m ≥ αq): no
        // 0·inf at α = 0, where q/m overflows when p underflows (small τ)
        if (o.alpha > 0) {
            const A lal = static_cast<A>(std::log(o.alpha));
            ep = keep_if<Safe>(eq > zero, ep - (ep + lal).exp());
        }
        const A sg = (eq * ep).sum();
        x.rg.set(eq * (ep - sg) * invT);
        return L;
    }
};

}  // namespace rlpo::distill::detail
